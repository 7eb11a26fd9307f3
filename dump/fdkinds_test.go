package dump_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// imageFd is one fd of a task as the images have it.
type imageFd struct {
	fdinfo *fdinfo.FdinfoEntry
	file   *fdinfo.FileEntry
}

// imageFds reads the fd table of task pid from the images, by fd.
func imageFds(t *testing.T, d *images.Dir, pid uint32) map[uint32]imageFd {
	t.Helper()
	ids, err := d.IDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	fis, err := d.Fdinfo(ids.GetFilesId())
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint32]imageFd{}
	for _, fi := range fis {
		f, err := d.File(fi.GetId())
		if err != nil {
			t.Fatalf("task %d fd %d: %v", pid, fi.GetFd(), err)
		}
		if f.GetType() != fi.GetType() {
			t.Errorf("task %d fd %d: fdinfo type %v, files.img entry %d type %v", pid, fi.GetFd(), fi.GetType(), f.GetId(), f.GetType())
		}
		out[fi.GetFd()] = imageFd{fi, f}
	}
	return out
}

// zeroOwner fails unless fown is there and all zero, as crest writes it
// for a file without an owner for SIGIO.
func zeroOwner(t *testing.T, what string, o *fown.FownEntry) {
	t.Helper()
	if o == nil || o.GetUid() != 0 || o.GetEuid() != 0 || o.GetSignum() != 0 || o.GetPidType() != 0 || o.GetPid() != 0 {
		t.Errorf("%s: fown %v, want all zero", what, o)
	}
}

// anonFd checks what the images have of fd in fds: the type, the
// close-on-exec flag of the fd, and that the entry in the type's field is
// there with the file's id, the open flags and a zero owner. It returns
// the file's id.
func anonFd(t *testing.T, fds map[uint32]imageFd, fd uint32, typ fdinfo.FdTypes, cloexec bool, flags uint32) uint32 {
	t.Helper()
	e, ok := fds[fd]
	if !ok {
		t.Fatalf("fd %d is not in the images", fd)
	}
	if e.fdinfo.GetType() != typ {
		t.Fatalf("fd %d: type %v, want %v", fd, e.fdinfo.GetType(), typ)
	}
	if got := e.fdinfo.GetFlags() == unix.FD_CLOEXEC; got != cloexec || e.fdinfo.GetFlags()&^unix.FD_CLOEXEC != 0 {
		t.Errorf("fd %d: fd flags %#x, want close-on-exec %v", fd, e.fdinfo.GetFlags(), cloexec)
	}
	var id, got uint32
	var owner *fown.FownEntry
	switch typ {
	case fdinfo.FdTypes_EVENTFD:
		id, got, owner = e.file.GetEfd().GetId(), e.file.GetEfd().GetFlags(), e.file.GetEfd().GetFown()
	case fdinfo.FdTypes_SIGNALFD:
		id, got, owner = e.file.GetSgfd().GetId(), e.file.GetSgfd().GetFlags(), e.file.GetSgfd().GetFown()
	case fdinfo.FdTypes_TIMERFD:
		id, got, owner = e.file.GetTfd().GetId(), e.file.GetTfd().GetFlags(), e.file.GetTfd().GetFown()
	}
	if id != e.file.GetId() || id != e.fdinfo.GetId() {
		t.Errorf("fd %d: entry id %d, file id %d, fdinfo id %d", fd, id, e.file.GetId(), e.fdinfo.GetId())
	}
	if got != flags {
		t.Errorf("fd %d: open flags %#o, want %#o", fd, got, flags)
	}
	zeroOwner(t, fmt.Sprintf("fd %d", fd), owner)
	return id
}

// lastTick is N of the last "fdkinds N" line of the fdkinds workload.
func lastTick(t *testing.T, p *workloads.Process) int {
	t.Helper()
	lines := waitLines(t, p, "out-fdkinds.log", 1)
	n, err := strconv.Atoi(strings.TrimPrefix(lines[len(lines)-1], "fdkinds "))
	if err != nil {
		t.Fatalf("out-fdkinds.log: %q", lines[len(lines)-1])
	}
	return n
}

// TestDumpFdKinds dumps test/workloads/src/fdkinds.c through the CLI,
// with --leave-running and then killing it, and reads its eventfd (fd 4),
// signalfd (fd 5) and timerfd (fd 6) back from each image set.
func TestDumpFdKinds(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	p, reaped := startReaped(t, "fdkinds")
	waitLines(t, p, "out-fdkinds.log", 3)
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}

	kept := filepath.Join(t.TempDir(), "kept")
	if res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(p.Pid), "-D", kept, "--leave-running"); res.Code != 0 {
		t.Fatalf("crest dump --leave-running: exit %d: %s", res.Code, res.Stderr)
	}
	t.Run("leave-running", func(t *testing.T) { checkFdKinds(t, kept, -1) })
	// The tree runs on, its checks passing: the dump took nothing out of
	// the eventfd, signalfd or timerfd.
	n := len(waitLines(t, p, "out-fdkinds.log", 1))
	waitLines(t, p, "out-fdkinds.log", n+5)
	noCorrupt(t, p, []string{"out-fdkinds.log"})
	if !workloads.Alive(p.Pid) {
		t.Fatalf("tree %d died after --leave-running", p.Pid)
	}

	imgs := dumpKilled(t, bin, p, live)
	reaped()
	noCorrupt(t, p, []string{"out-fdkinds.log"})
	// Killed while frozen: the log stops at the tick of the dump.
	t.Run("killed", func(t *testing.T) { checkFdKinds(t, imgs, lastTick(t, p)) })
}

// checkFdKinds checks the fds of the fdkinds workload in the images in
// dir. tick, if not -1, is the last tick its log has: the eventfd count
// must be the one of that tick or of the next one under way.
func checkFdKinds(t *testing.T, dir string, tick int) {
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	fds := imageFds(t, d, 1)
	const rdwrNonblock = unix.O_RDWR | unix.O_NONBLOCK
	ids := map[uint32]uint32{
		4: anonFd(t, fds, 4, fdinfo.FdTypes_EVENTFD, false, rdwrNonblock),
		5: anonFd(t, fds, 5, fdinfo.FdTypes_SIGNALFD, false, rdwrNonblock),
		6: anonFd(t, fds, 6, fdinfo.FdTypes_TIMERFD, false, unix.O_RDWR),
	}
	if ids[4] == ids[5] || ids[5] == ids[6] || ids[4] == ids[6] {
		t.Errorf("file ids of fds 4, 5, 6: %v, want three", ids)
	}
	for fd := range uint32(4) {
		if e, ok := fds[fd]; !ok || e.fdinfo.GetType() != fdinfo.FdTypes_REG {
			t.Errorf("fd %d: %v, want a regular file", fd, e.file)
		}
	}
	if len(fds) != 7 {
		t.Errorf("%d fds in the images, want 0-6", len(fds))
	}

	// The workload adds 1 every tick and takes 3 out every third: the
	// count is N%3 after tick N, 3 for a moment in ticks that take it out.
	count := fds[4].file.GetEfd().GetCounter()
	if count > 3 {
		t.Errorf("eventfd count %d, want 0-3", count)
	}
	if tick >= 0 {
		if after, next := uint64(tick%3), uint64(tick%3+1); count != after && count != next && count != uint64((tick+1)%3) {
			t.Errorf("eventfd count %d after tick %d, want %d (or %d, %d in the next tick)", count, tick, after, next, (tick+1)%3)
		}
	}

	if mask := fds[5].file.GetSgfd().GetSigmask(); mask != 1<<(syscall.SIGUSR1-1) {
		t.Errorf("signalfd mask %#x, want SIGUSR1 (%#x)", mask, 1<<(syscall.SIGUSR1-1))
	}

	tfd := fds[6].file.GetTfd()
	if tfd.GetClockid() != unix.CLOCK_MONOTONIC || tfd.GetSettimeFlags() != 0 {
		t.Errorf("timerfd clock %d, settime flags %#o, want CLOCK_MONOTONIC and 0", tfd.GetClockid(), tfd.GetSettimeFlags())
	}
	if tfd.GetIsec() != 0 || tfd.GetInsec() != 10_000_000 {
		t.Errorf("timerfd interval (%d, %d), want (0, 10000000)", tfd.GetIsec(), tfd.GetInsec())
	}
	// The time left to the next expiration of a running periodic timer,
	// less than an interval. The timer expired while the workload was
	// stopped for the dump, and fdinfo said (0, 0) until the dump
	// started it again.
	if tfd.GetVsec() != 0 || tfd.GetVnsec() == 0 || tfd.GetVnsec() >= 10_000_000 {
		t.Errorf("timerfd value (%d, %d), want (0, 1-9999999)", tfd.GetVsec(), tfd.GetVnsec())
	}
	// Expirations not read yet: those since the workload was stopped
	// in its read, one for each 10 ms the dump took.
	if tfd.GetTicks() > 1000 {
		t.Errorf("timerfd ticks %d", tfd.GetTicks())
	}
	t.Logf("eventfd count %d after tick %d; timerfd ticks %d, value (%d, %d)", count, tick, tfd.GetTicks(), tfd.GetVsec(), tfd.GetVnsec())
}

// anonProgram is a workload holding the fds that setup opens (the log is
// fd 3, the first of setup fd 4) and writing "tick N" to out-anon.log
// every millisecond.
func anonProgram(t *testing.T, name, setup string) *workloads.Process {
	t.Helper()
	p := workloads.StartTicking(t, "anon", name, workloads.TickSource{Includes: `#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
`, Setup: setup})
	waitLines(t, p, "out-anon.log", 3)
	return p
}

// TestDumpAnonFiles: the state of eventfds, signalfds and timerfds that
// fdkinds does not have, and their file ids. dup()ed fds and fds
// inherited by a child (another fd table) share the id of their open
// file; eventfds alike in all but their open file do not.
func TestDumpAnonFiles(t *testing.T) {
	p := anonProgram(t, "files", `sigset_t mask;
	struct timespec now;
	struct itimerspec once = { { 0, 0 }, { 0, 1 } }, later = { { 3, 500 }, { 0, 0 } };
	int a, b, s, expired, abs;

	a = eventfd(0x1234, EFD_CLOEXEC);            /* 4 */
	dup(a);                                      /* 5: the same file, without close-on-exec */
	b = eventfd(0x1234, EFD_NONBLOCK);           /* 6 */
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR2);
	sigaddset(&mask, SIGRTMIN + 2);
	s = signalfd(-1, &mask, SFD_CLOEXEC);        /* 7 */
	expired = timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK); /* 8 */
	abs = timerfd_create(CLOCK_REALTIME, 0);     /* 9 */
	clock_gettime(CLOCK_REALTIME, &now);
	later.it_value.tv_sec = now.tv_sec + 1000;
	if (a != 4 || b != 6 || s != 7 || expired != 8 || abs != 9 ||
	    timerfd_settime(expired, 0, &once, NULL) ||
	    timerfd_settime(abs, TFD_TIMER_ABSTIME, &later, NULL))
		return 2;
	nanosleep(&ms, NULL);                        /* the one-shot timer fires */
	if (fork() == 0) {
		if (eventfd(7, 0) != 10)             /* the child's own */
			_exit(2);
		for (;;)
			pause();
	}`)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	parent := imageFds(t, d, 1)
	a := anonFd(t, parent, 4, fdinfo.FdTypes_EVENTFD, true, unix.O_RDWR)
	if dup := anonFd(t, parent, 5, fdinfo.FdTypes_EVENTFD, false, unix.O_RDWR); dup != a {
		t.Errorf("fd 5, a dup of fd 4: file id %d, fd 4 has %d", dup, a)
	}
	b := anonFd(t, parent, 6, fdinfo.FdTypes_EVENTFD, false, unix.O_RDWR|unix.O_NONBLOCK)
	if b == a {
		t.Errorf("fds 4 and 6, two eventfds: one file id %d", a)
	}
	for _, fd := range []uint32{4, 6} {
		// The kernel prints the count in hexadecimal.
		if c := parent[fd].file.GetEfd().GetCounter(); c != 0x1234 {
			t.Errorf("fd %d: eventfd count %#x, want 0x1234", fd, c)
		}
	}

	anonFd(t, parent, 7, fdinfo.FdTypes_SIGNALFD, true, unix.O_RDWR)
	// glibc's SIGRTMIN is 34.
	if mask, want := parent[7].file.GetSgfd().GetSigmask(), uint64(1<<(12-1)|1<<(36-1)); mask != want {
		t.Errorf("signalfd mask %#x, want SIGUSR2 and SIGRTMIN+2 (%#x)", mask, want)
	}

	anonFd(t, parent, 8, fdinfo.FdTypes_TIMERFD, false, unix.O_RDWR|unix.O_NONBLOCK)
	// A one-shot timer that fired and was never read: one tick, disarmed.
	if tfd := parent[8].file.GetTfd(); tfd.GetClockid() != unix.CLOCK_BOOTTIME || tfd.GetTicks() != 1 || tfd.GetSettimeFlags() != 0 ||
		tfd.GetVsec() != 0 || tfd.GetVnsec() != 0 || tfd.GetIsec() != 0 || tfd.GetInsec() != 0 {
		t.Errorf("fd 8: timerfd %v, want CLOCK_BOOTTIME, 1 tick, disarmed", tfd)
	}
	anonFd(t, parent, 9, fdinfo.FdTypes_TIMERFD, false, unix.O_RDWR)
	// An absolute timer 1000 s ahead: the images have the time left.
	if tfd := parent[9].file.GetTfd(); tfd.GetClockid() != unix.CLOCK_REALTIME || tfd.GetTicks() != 0 ||
		tfd.GetSettimeFlags() != unix.TFD_TIMER_ABSTIME || tfd.GetVsec() < 900 || tfd.GetVsec() >= 1000 ||
		tfd.GetIsec() != 3 || tfd.GetInsec() != 500 {
		t.Errorf("fd 9: timerfd %v, want CLOCK_REALTIME, TFD_TIMER_ABSTIME, 900-999 s left, interval (3, 500)", tfd)
	}

	// The child: its own fd table, the parent's files in it with their
	// ids, and its own eventfd.
	if len(d.Pstree) != 2 {
		t.Fatalf("%d tasks in the images, want the workload and its child", len(d.Pstree))
	}
	child := d.Pstree[1].GetPid()
	ps, err1 := d.IDs(1)
	cs, err2 := d.IDs(child)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if cs.GetFilesId() == ps.GetFilesId() {
		t.Fatalf("task %d has the fd table of its parent (files id %d), want its own", child, cs.GetFilesId())
	}
	kid := imageFds(t, d, child)
	for fd, id := range map[uint32]uint32{4: a, 5: a, 6: b} {
		if got := kid[fd].fdinfo.GetId(); got != id {
			t.Errorf("child fd %d: file id %d, the parent's has %d", fd, got, id)
		}
	}
	for fd := uint32(7); fd <= 9; fd++ {
		if got, want := kid[fd].fdinfo.GetId(), parent[fd].fdinfo.GetId(); got != want {
			t.Errorf("child fd %d: file id %d, the parent's has %d", fd, got, want)
		}
	}
	own := anonFd(t, kid, 10, fdinfo.FdTypes_EVENTFD, false, unix.O_RDWR)
	for fd := uint32(4); fd <= 9; fd++ {
		if parent[fd].fdinfo.GetId() == own {
			t.Errorf("the child's eventfd has the id %d of the parent's fd %d", own, fd)
		}
	}
	if c := kid[10].file.GetEfd().GetCounter(); c != 7 {
		t.Errorf("child fd 10: eventfd count %d, want 7", c)
	}
}

// TestDumpRefusesAnonFiles: anonymous-inode files other than eventfds,
// signalfds and timerfds, and eventfds in semaphore mode, fail the dump
// with an error naming the task, the fd and the kind; the tree runs on.
func TestDumpRefusesAnonFiles(t *testing.T) {
	for _, tc := range []struct {
		name, setup string
		want        []string
	}{
		// An inotify dumps now (inotify_test.go), but not one watching
		// a file whose handle does not open (procfs).
		{"inotify", `inotify_add_watch(inotify_init1(0), "/proc/self/status", IN_MODIFY);`,
			[]string{"anon_inode:inotify", "inotify watch wd 1 on inode ", "open_by_handle_at through /proc: "}},
		{"pidfd", "syscall(SYS_pidfd_open, getpid(), 0);", []string{"anon_inode:[pidfd]", "pidfd files are not supported"}},
		{"semaphore", "eventfd(1, EFD_SEMAPHORE);", []string{"anon_inode:[eventfd]", "semaphore mode (EFD_SEMAPHORE)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := anonProgram(t, tc.name, tc.setup)
			parent := t.TempDir()
			_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
			refusedCleanly(t, err, p, parent, "out-anon.log", append([]string{"task 1", "fd 4"}, tc.want...)...)
		})
	}
}
