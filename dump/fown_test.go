package dump_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// fownProgram is a workload whose files have owners for SIGIO, each with
// O_ASYNC and a signal of its own that its handler logs ("sigio sig S fd
// F P", T when the worker thread got it): the read end of a pipe (fd 4,
// the process, SIGUSR1), a unix stream socket (fd 6 of the pair 6-7, the
// process, SIGRTMIN), a pipe read end owned by the worker thread (fd 8,
// F_OWNER_TID, SIGUSR2), one owned by the process group (fd 10, no
// F_SETSIG: SIGIO) and one whose owner was set with euid 1000 (fd 12,
// SIGRTMIN+1). The worker thread blocks the process's signals, so that
// they go to the main thread.
func fownProgram(t *testing.T) *workloads.Process {
	t.Helper()
	p := workloads.StartTicking(t, "fown", "owners", workloads.TickSource{Includes: `#include <pthread.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
`, Funcs: `
static volatile int worker;

static void onio(int sig, siginfo_t *si, void *uc)
{
	char line[] = "sigio sig 00 fd 00 X\n";
	int fd = sig == SIGIO ? 0 : si->si_fd;

	(void)uc;
	line[10] = '0' + sig / 10;
	line[11] = '0' + sig % 10;
	line[16] = '0' + fd / 10 % 10;
	line[17] = '0' + fd % 10;
	line[19] = syscall(SYS_gettid) == getpid() ? 'P' : 'T';
	write(3, line, sizeof line - 1);
}

static void *work(void *arg)
{
	struct timespec s = { 1, 0 };
	sigset_t m;

	(void)arg;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR1);
	sigaddset(&m, SIGIO);
	sigaddset(&m, SIGRTMIN);
	sigaddset(&m, SIGRTMIN + 1);
	sigaddset(&m, SIGRTMIN + 2);
	pthread_sigmask(SIG_BLOCK, &m, NULL);
	worker = syscall(SYS_gettid);
	for (;;)
		nanosleep(&s, NULL);
	return NULL;
}

static void owned(int fd, int type, int pid, int sig)
{
	struct f_owner_ex o = { type, pid };

	if (fcntl(fd, F_SETOWN_EX, &o) || fcntl(fd, F_SETSIG, sig) ||
	    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC))
		_exit(2);
}
`, Decls: "struct sigaction sa; int p[2], s[2], q[2], g[2], e[2]; pthread_t th;", Setup: `memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = onio;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(SIGUSR1, &sa, NULL) || sigaction(SIGUSR2, &sa, NULL) || sigaction(SIGIO, &sa, NULL) ||
	    sigaction(SIGRTMIN, &sa, NULL) || sigaction(SIGRTMIN + 1, &sa, NULL) || sigaction(SIGRTMIN + 2, &sa, NULL))
		return 2;
	if (pipe(p) || p[0] != 4 || socketpair(AF_UNIX, SOCK_STREAM, 0, s) || s[0] != 6 ||
	    pipe(q) || q[0] != 8 || pipe(g) || g[0] != 10 || pipe(e) || e[0] != 12)
		return 2;
	/* an inotify (14) that signals when the file at 15 is written */
	if (inotify_init1(IN_NONBLOCK) != 14 || open("watched", O_RDWR | O_CREAT, 0600) != 15 ||
	    inotify_add_watch(14, "watched", IN_MODIFY) != 1)
		return 2;
	if (pthread_create(&th, NULL, work, NULL))
		return 2;
	while (!worker)
		nanosleep(&ms, NULL);
	owned(4, F_OWNER_PID, getpid(), SIGUSR1);
	owned(6, F_OWNER_PID, getpid(), SIGRTMIN);
	owned(8, F_OWNER_TID, worker, SIGUSR2);
	owned(10, F_OWNER_PGRP, getpgrp(), 0);
	owned(14, F_OWNER_PID, getpid(), SIGRTMIN + 2);
	/* this thread only: the raw system call, not glibc's setresuid */
	if (syscall(SYS_setresuid, -1, 1000, -1))
		return 2;
	owned(12, F_OWNER_PID, getpid(), SIGRTMIN + 1);
	if (syscall(SYS_setresuid, -1, 0, -1) || prctl(PR_SET_DUMPABLE, 1))
		return 2;`})
	waitLines(t, p, "out-fown.log", 3)
	return p
}

// fownCase is one owned file of fownProgram: its fd, the fd the test
// writes into to make it signal, and what the images and the log show.
type fownCase struct {
	fd, peer int
	typ      uint32 // F_OWNER_*
	sig      int
	euid     uint32
	line     string // the handler's line without the fd it reports
}

var fownCases = []fownCase{
	{4, 5, 1, int(unix.SIGUSR1), 0, "sigio sig 10 P"},
	{6, 7, 1, 34, 0, "sigio sig 34 P"},
	{8, 9, 0, int(unix.SIGUSR2), 0, "sigio sig 12 T"},
	{10, 11, 2, 0, 0, "sigio sig 29 P"},
	{12, 13, 1, 35, 1000, "sigio sig 35 P"},
	{14, 15, 1, 36, 0, "sigio sig 36 P"}, // an inotify; 15 is the watched file
}

// poke writes a byte into the file at fd of pid, which signals the owner
// of its other end: a pipe's write end reopened through /proc, a socket
// through a pidfd_getfd copy.
func poke(t *testing.T, pid, fd int) {
	t.Helper()
	c, err := unix.Open(fmt.Sprintf("/proc/%d/fd/%d", pid, fd), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err == unix.ENXIO { // a socket
		c, err = stealFD(pid, fd)
	}
	if err != nil {
		t.Fatalf("pid %d fd %d: %v", pid, fd, err)
	}
	defer unix.Close(c)
	if _, err := unix.Write(c, []byte{'x'}); err != nil {
		t.Fatalf("write to pid %d fd %d: %v", pid, fd, err)
	}
}

// drain reads what poke left in the file at fd of pid, so that the next
// write finds it empty.
func drain(t *testing.T, pid, fd int) {
	t.Helper()
	var b [64]byte
	c, err := unix.Open(fmt.Sprintf("/proc/%d/fd/%d", pid, fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Read(c, b[:])
		unix.Close(c)
		return
	}
	if c, err = stealFD(pid, fd); err != nil {
		t.Fatal(err)
	}
	if _, _, err := unix.Recvfrom(c, b[:], unix.MSG_DONTWAIT); err == unix.ENOTSOCK {
		unix.Read(c, b[:]) // an inotify (non-blocking)
	}
	unix.Close(c)
}

func stealFD(pid, fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pidfd)
	return unix.PidfdGetfd(pidfd, fd, 0)
}

// signalled pokes every case's peer and waits until the log has each
// case's line after the lines it had, at most 5 s. It returns the fd
// each line reported (si_fd; 0 for SIGIO, which has none), by the case's
// line, and the lines missing.
func signalled(t *testing.T, p *workloads.Process, pid int) (fds map[string]int, missing []string) {
	t.Helper()
	n := len(waitLines(t, p, "out-fown.log", 1))
	for _, c := range fownCases {
		poke(t, pid, c.peer)
	}
	fds = map[string]int{}
	deadline := time.Now().Add(5 * time.Second)
	for len(fds) < len(fownCases) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		for _, l := range waitLines(t, p, "out-fown.log", n)[n:] {
			var sig, fd int
			var who string
			if _, err := fmt.Sscanf(l, "sigio sig %d fd %d %s", &sig, &fd, &who); err == nil {
				fds[fmt.Sprintf("sigio sig %02d %s", sig, who)] = fd
			}
		}
	}
	for _, c := range fownCases {
		drain(t, pid, c.fd)
		if _, ok := fds[c.line]; !ok {
			missing = append(missing, c.line)
		}
	}
	return fds, missing
}

// ownerOf is the fown_entry of an image fd: a pipe's, an inotify's or a unix socket's.
func ownerOf(e imageFd) (*fown.FownEntry, uint32) {
	if e.file.GetIfy() != nil {
		return e.file.GetIfy().GetFown(), e.file.GetIfy().GetFlags()
	}
	if e.file.GetPipe() != nil {
		return e.file.GetPipe().GetFown(), e.file.GetPipe().GetFlags()
	}
	return e.file.GetUsk().GetFown(), e.file.GetUsk().GetFlags()
}

// liveOwner reads the owner of fd of pid through a pidfd_getfd copy:
// F_GETOWN_EX (pid in our namespace), F_GETSIG, F_GETOWNER_UIDS.
func liveOwner(t *testing.T, pid, fd int) (typ, owner int32, sig int, uids [2]uint32) {
	t.Helper()
	c, err := stealFD(pid, fd)
	if err != nil {
		t.Fatalf("pidfd_getfd %d fd %d: %v", pid, fd, err)
	}
	defer unix.Close(c)
	var ex [2]int32
	if _, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(c), unix.F_GETOWN_EX, uintptr(unsafe.Pointer(&ex))); e != 0 {
		t.Fatalf("F_GETOWN_EX: %v", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(c), 17, uintptr(unsafe.Pointer(&uids))); e != 0 {
		t.Fatalf("F_GETOWNER_UIDS: %v", e)
	}
	if sig, err = unix.FcntlInt(uintptr(c), unix.F_GETSIG, 0); err != nil {
		t.Fatal(err)
	}
	return ex[0], ex[1], sig, uids
}

// TestFownRoundTrip dumps fownProgram with crest dump, checks the owners
// in the images, restores it with crest restore -d, checks the owners of
// the restored files and that writing into each file's peer signals the
// restored process as it did the dumped one.
func TestFownRoundTrip(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	p := fownProgram(t)
	dumped := false
	t.Cleanup(func() {
		if !dumped { // we are the reaper of the workload
			unix.Kill(p.Pid, unix.SIGKILL)
			unix.Wait4(p.Pid, nil, unix.WALL, nil)
		}
	})
	fds, missing := signalled(t, p, p.Pid)
	if len(missing) > 0 {
		b, _ := os.ReadFile(filepath.Join(p.Dir, "out-fown.log"))
		t.Fatalf("the workload was not signalled before the dump: %v missing; got %v; log ends:\n%s", missing, fds, tail(string(b), 12))
	}
	for _, c := range fownCases {
		if want := c.fd * min(c.sig, 1); fds[c.line] != want {
			t.Errorf("before the dump: %q came through fd %d, want %d", c.line, fds[c.line], want)
		}
	}
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	imgs := dumpKilled(t, bin, p, live)
	dumped = true
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	threads := images.Threads(d.Pstree[0])
	if len(threads) != 2 {
		t.Fatalf("task 1 has threads %v, want 2", threads)
	}
	imgFds := imageFds(t, d, 1)
	for _, c := range fownCases {
		o, flags := ownerOf(imgFds[uint32(c.fd)])
		pid := uint32(1)
		if c.typ == 0 {
			pid = threads[1]
		}
		if o.GetPid() != pid || o.GetPidType() != c.typ || o.GetSignum() != uint32(c.sig) || o.GetUid() != 0 || o.GetEuid() != c.euid ||
			flags&unix.O_ASYNC == 0 {
			t.Errorf("fd %d: fown %v, flags %#o; want pid %d type %d signal %d euid %d, O_ASYNC", c.fd, o, flags, pid, c.typ, c.sig, c.euid)
		}
		if o, _ := ownerOf(imgFds[uint32(c.peer)]); o.GetPid() != 0 || o.GetSignum() != 0 {
			t.Errorf("fd %d: fown %v, want none", c.peer, o)
		}
	}

	root, tree := restoreTree(t, bin, imgs, d, p.Dir)
	worker := tree[1].Threads[int(threads[1])]
	for _, c := range fownCases {
		typ, owner, sig, uids := liveOwner(t, root, c.fd)
		want := int32(root)
		if c.typ == 0 {
			want = int32(worker)
		}
		if typ != int32(c.typ) || owner != want || sig != c.sig || uids != [2]uint32{0, c.euid} {
			t.Errorf("restored fd %d: owner type %d pid %d signal %d uids %v; want type %d pid %d signal %d uids [0 %d]",
				c.fd, typ, owner, sig, uids, c.typ, want, c.sig, c.euid)
		}
	}
	fds, missing = signalled(t, p, root)
	if len(missing) > 0 {
		b, _ := os.ReadFile(filepath.Join(p.Dir, "out-fown.log"))
		t.Errorf("restored: no signal for %v; log ends:\n%s", missing, tail(string(b), 12))
	}
	// si_fd is the fd number of whoever turned O_ASYNC on last (the
	// kernel's fasync_helper): the task itself does it again after
	// COMPLETE, on its own fd, after the engine set it on its copy.
	for _, c := range fownCases {
		if want := c.fd * min(c.sig, 1); fds[c.line] != want {
			t.Errorf("restored: %q came through fd %d, the task's is %d", c.line, fds[c.line], want)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestDumpRefusesFownOutside: a file whose owner for SIGIO is a process
// outside the tree (the test, which set it through a copy of the fd)
// fails the dump with the owner named; the tree runs on.
func TestDumpRefusesFownOutside(t *testing.T) {
	p := fownProgram(t)
	c, err := stealFD(p.Pid, 4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(c), unix.F_SETOWN, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	unix.Close(c)
	dir := filepath.Join(t.TempDir(), "images")
	_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir})
	want := "fd 4 (pipe:["
	why := fmt.Sprintf("an owner for SIGIO (F_SETOWN) outside the tree: process %d", os.Getpid())
	var ue *dump.UnsupportedError
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), why) || !errors.As(err, &ue) {
		t.Fatalf("dump: %v; want an UnsupportedError with %q and %q", err, want, why)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s left behind: %v", dir, err)
	}
	n := len(waitLines(t, p, "out-fown.log", 1))
	waitLines(t, p, "out-fown.log", n+3)
}
