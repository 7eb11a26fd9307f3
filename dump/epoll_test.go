package dump_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventpoll"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// epollTarget is what the images must say of one target of an epoll.
type epollTarget struct {
	events uint32
	data   uint64
}

// TestDumpEpoll dumps test/workloads/src/epoll.c through the CLI, with
// --leave-running and then killing it: its epoll (fd 4) is in the images
// with its three targets as CRIU 4.2 writes them, and the workload, which
// checks every event it gets, runs on after the first dump.
func TestDumpEpoll(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	p, reaped := startReaped(t, "epoll")
	waitLines(t, p, "out-epoll.log", 3)
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32]epollTarget{
		5: {0x80000019, 0x7402}, // the eventfd, EPOLLIN|EPOLLET (and EPOLLERR|EPOLLHUP, always on)
		6: {0x19, 0x7401},       // the timerfd
		7: {0x19, 0x7403},       // the pipe's read end
	}
	// The targets' inodes and devices, while the workload is alive.
	files := map[uint32]unix.Stat_t{}
	for fd := range want {
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", p.Pid, fd), &st); err != nil {
			t.Fatal(err)
		}
		files[fd] = st
	}

	kept := filepath.Join(t.TempDir(), "kept")
	if res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(p.Pid), "-D", kept, "--leave-running"); res.Code != 0 {
		t.Fatalf("crest dump --leave-running: exit %d: %s", res.Code, res.Stderr)
	}
	t.Run("leave-running", func(t *testing.T) { checkEpoll(t, kept, 4, want, files) })
	n := len(waitLines(t, p, "out-epoll.log", 1))
	waitLines(t, p, "out-epoll.log", n+5)
	noCorrupt(t, p, []string{"out-epoll.log"})
	if !workloads.Alive(p.Pid) {
		t.Fatalf("tree %d died after --leave-running", p.Pid)
	}

	imgs := dumpKilled(t, bin, p, live)
	reaped()
	noCorrupt(t, p, []string{"out-epoll.log"})
	t.Run("killed", func(t *testing.T) { checkEpoll(t, imgs, 4, want, files) })
}

// checkEpoll checks that fd epfd of task 1 in the images in dir is an
// epoll (O_RDWR, no close-on-exec, zero owner) watching exactly the
// targets want, by fd number; files are the targets' stat, for the inode
// and device the kernel reports of each.
func checkEpoll(t *testing.T, dir string, epfd uint32, want map[uint32]epollTarget, files map[uint32]unix.Stat_t) {
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	fds := imageFds(t, d, 1)
	ep := epollFd(t, fds, epfd, 0)
	got := map[uint32]*eventpoll.EventpollTfdEntry{}
	for _, tfd := range ep.GetTfd() {
		if _, dup := got[tfd.GetTfd()]; dup {
			t.Errorf("fd %d: two targets of fd %d", epfd, tfd.GetTfd())
		}
		got[tfd.GetTfd()] = tfd
	}
	if len(got) != len(want) {
		t.Errorf("fd %d: targets %v, want fds %v", epfd, ep.GetTfd(), want)
	}
	for fd, w := range want {
		tfd, ok := got[fd]
		if !ok {
			t.Errorf("fd %d: no target fd %d", epfd, fd)
			continue
		}
		if tfd.GetId() != ep.GetId() || tfd.GetEvents() != w.events || tfd.GetData() != w.data {
			t.Errorf("fd %d: target %v, want id %d, events %#x, data %#x", epfd, tfd, ep.GetId(), w.events, w.data)
		}
		if _, ok := fds[fd]; !ok {
			t.Errorf("target fd %d is not in the images", fd)
		}
		// CRIU keeps the device as the kernel prints it, in its own
		// dev_t encoding (MKDEV: major << 20 | minor).
		st := files[fd]
		kdev := uint32(unix.Major(st.Dev))<<20 | uint32(unix.Minor(st.Dev))
		if tfd.Inode == nil || tfd.Dev == nil || tfd.Pos == nil ||
			tfd.GetInode() != st.Ino || tfd.GetDev() != kdev || tfd.GetPos() != 0 {
			t.Errorf("fd %d: target %v, want inode %d, dev %#x, pos 0", epfd, tfd, st.Ino, kdev)
		}
	}
}

// epollFd checks that fd in fds is an epoll with its file's id, O_RDWR,
// fd flags fdFlags and a zero owner, and returns its entry.
func epollFd(t *testing.T, fds map[uint32]imageFd, fd, fdFlags uint32) *eventpoll.EventpollFileEntry {
	t.Helper()
	e, ok := fds[fd]
	if !ok {
		t.Fatalf("fd %d is not in the images", fd)
	}
	if e.fdinfo.GetType() != fdinfo.FdTypes_EVENTPOLL || e.file.GetEpfd() == nil {
		t.Fatalf("fd %d: type %v, entry %v, want an EVENTPOLL", fd, e.fdinfo.GetType(), e.file)
	}
	ep := e.file.GetEpfd()
	if ep.GetId() != e.file.GetId() || ep.GetId() != e.fdinfo.GetId() {
		t.Errorf("fd %d: entry id %d, file id %d, fdinfo id %d", fd, ep.GetId(), e.file.GetId(), e.fdinfo.GetId())
	}
	if e.fdinfo.GetFlags() != fdFlags || ep.GetFlags() != unix.O_RDWR {
		t.Errorf("fd %d: fd flags %#x, open flags %#o, want %#x and O_RDWR", fd, e.fdinfo.GetFlags(), ep.GetFlags(), fdFlags)
	}
	zeroOwner(t, fmt.Sprintf("fd %d", fd), ep.GetFown())
	return ep
}

// TestDumpNestedEpoll: an epoll watched by another epoll is a target like
// any other.
func TestDumpNestedEpoll(t *testing.T) {
	p := anonProgram(t, "epoll-nested", `struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x51 };
	int inner = epoll_create1(0), e = eventfd(0, 0), outer = epoll_create1(EPOLL_CLOEXEC); /* 4, 5, 6 */

	if (inner != 4 || e != 5 || outer != 6 || epoll_ctl(inner, EPOLL_CTL_ADD, e, &ev))
		return 2;
	ev.data.u64 = 0x52;
	if (epoll_ctl(outer, EPOLL_CTL_ADD, inner, &ev))
		return 2;`)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	fds := imageFds(t, d, 1)
	for _, c := range []struct {
		epfd, target, fdFlags uint32
		data                  uint64
	}{{4, 5, 0, 0x51}, {6, 4, unix.FD_CLOEXEC, 0x52}} {
		ep := epollFd(t, fds, c.epfd, c.fdFlags)
		if tfd := ep.GetTfd(); len(tfd) != 1 || tfd[0].GetTfd() != c.target || tfd[0].GetEvents() != 0x19 || tfd[0].GetData() != c.data {
			t.Errorf("epoll fd %d: targets %v, want fd %d, events 0x19, data %#x", c.epfd, tfd, c.target, c.data)
		}
	}
}

// TestDumpRefusesEpollTargets: an epoll whose target is not the file at
// its fd number in the task (the fd closed while a dup keeps the file
// open, or the fd number given to another file since) fails the dump
// with an error naming the task, the epoll's fd and the target's; nothing
// is left of the dump and the program runs on.
func TestDumpRefusesEpollTargets(t *testing.T) {
	const watch = `struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 1 };
	int ep = epoll_create1(0), e = eventfd(0, 0); /* 4, 5 */

	if (ep != 4 || e != 5 || epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev) || dup(e) != 6 || close(e))
		return 2;
	`
	for _, tc := range []struct {
		name, setup string
		want        string
	}{
		{"closed", watch, "epoll target fd 5 is not open"},
		{"reused", watch + `if (eventfd(0, 0) != 5)
		return 2;`, "epoll target fd 5 is another file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := anonProgram(t, "epoll-"+tc.name, tc.setup)
			parent := t.TempDir()
			_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
			refusedCleanly(t, err, p, parent, "out-anon.log", "task 1", "fd 4", "anon_inode:[eventpoll]", tc.want)
		})
	}
}
