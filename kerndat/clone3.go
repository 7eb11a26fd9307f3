package kerndat

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Clone3SetTID reports whether clone3 gives a child the pid crest asks for,
// as the agent will for every restored task: it makes a child with
// CLONE_NEWPID and set_tid {1} and checks that the child is pid 1 of its
// new namespace.
var Clone3SetTID = NewProbe(Clone3SetTIDName, Restore, func() Feature {
	return probeClone3(unix.CLONE_NEWPID, []int32{1})
})

// probeClone3 makes a child with clone3(flags|CLONE_PIDFD, set_tid) that
// exits at once with its own getpid() as status, and checks both that
// status and the child's NSpid against set_tid.
func probeClone3(flags uint64, setTID []int32) Feature {
	if len(setTID) == 0 {
		return Missing("probeClone3: no set_tid to test")
	}
	call := fmt.Sprintf("clone3(%s, set_tid={%s})", cloneFlagString(flags|unix.CLONE_PIDFD),
		strings.Trim(strings.Join(strings.Fields(fmt.Sprint(setTID)), ","), "[]"))
	pid, pidfd, err := cloneExit(flags, setTID)
	if err != nil {
		return Missing("%s: %s", call, ErrText(err))
	}
	nspid, status, err := reapChild(pid, pidfd)
	if err != nil {
		return Missing("%s made pid %d: %s", call, pid, ErrText(err))
	}
	// NSpid lists the pid from our namespace inwards; set_tid from the
	// innermost namespace outwards.
	if len(nspid) < len(setTID) {
		return Missing("%s made pid %d with NSpid %v: fewer levels than set_tid", call, pid, nspid)
	}
	for i, want := range setTID {
		if got := nspid[len(nspid)-1-i]; got != int(want) {
			return Missing("%s made pid %d with NSpid %v: want %d at level -%d", call, pid, nspid, want, i)
		}
	}
	if want := int(setTID[0]) & 0xff; status != want {
		return Missing("%s made pid %d (NSpid %v), but the child's getpid() gave exit status %d, want %d",
			call, pid, nspid, status, want)
	}
	return OK("%s made pid %d, which is %d in its pid namespace (NSpid %s)",
		call, pid, setTID[0], strings.Trim(fmt.Sprint(nspid), "[]"))
}

// cloneArgs is struct clone_args (include/uapi/linux/sched.h), the 88-byte
// version with cgroup.
type cloneArgs struct {
	flags      uint64
	pidfd      uint64
	childTID   uint64
	parentTID  uint64
	exitSignal uint64
	stack      uint64
	stackSize  uint64
	tls        uint64
	setTID     uint64
	setTIDSize uint64
	cgroup     uint64
}

// cloneExit makes a child with clone3 whose only act is to exit with the
// low byte of its getpid(); setTID may be empty (any pid). It returns the child's pid (in our namespace)
// and a pidfd for it; the caller must reap it (reapChild).
func cloneExit(flags uint64, setTID []int32) (pid, pidfd int, err error) {
	if len(setTID) > 32 { // MAX_PID_NS_LEVEL
		return 0, -1, fmt.Errorf("set_tid: %d levels, the kernel nests at most 32", len(setTID))
	}
	args := &cloneArgs{
		flags:      flags | unix.CLONE_PIDFD,
		exitSignal: uint64(unix.SIGCHLD),
		setTIDSize: uint64(len(setTID)),
	}
	var tids *int32
	if len(setTID) > 0 {
		tids = &setTID[0]
	}
	var fd int32 = -1
	// The thread's signal mask is changed around the clone.
	runtime.LockOSThread()
	r, errno := rawClone3(args, &fd, tids)
	runtime.UnlockOSThread()
	runtime.KeepAlive(setTID)
	if errno != 0 {
		return 0, -1, errno
	}
	return int(r), int(fd), nil
}

// rawClone3 is the fork itself. A Go process can not run Go code in a forked
// child (the runtime's other threads, locks and heap are not there), so the
// child runs only raw system calls before exit_group, and, like the
// runtime's own forkAndExecInChild, it does so with every signal blocked so
// that no Go signal handler runs in the child. The function is nosplit so
// that neither parent nor child can grow (and move) the stack between
// taking the addresses below and the system call.
//
//go:nosplit
//go:norace
func rawClone3(args *cloneArgs, pidfd *int32, setTID *int32) (uintptr, syscall.Errno) {
	args.pidfd = uint64(uintptr(unsafe.Pointer(pidfd)))
	args.setTID = uint64(uintptr(unsafe.Pointer(setTID)))
	all, old := ^uint64(0), uint64(0)
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK,
		uintptr(unsafe.Pointer(&all)), uintptr(unsafe.Pointer(&old)), 8, 0, 0)
	pid, _, errno := syscall.RawSyscall6(unix.SYS_CLONE3,
		uintptr(unsafe.Pointer(args)), unsafe.Sizeof(*args), 0, 0, 0, 0)
	if errno == 0 && pid == 0 {
		// The child.
		self, _, _ := syscall.RawSyscall(syscall.SYS_GETPID, 0, 0, 0)
		for {
			syscall.RawSyscall(syscall.SYS_EXIT_GROUP, self&0xff, 0, 0)
		}
	}
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK,
		uintptr(unsafe.Pointer(&old)), 0, 8, 0, 0)
	return pid, errno
}

// reapChild waits for the child made by cloneExit to exit, reads its pid at
// every namespace level while it is a zombie, reaps it and closes pidfd.
func reapChild(pid, pidfd int) (nspid []int, status int, err error) {
	defer unix.Close(pidfd)
	// WNOWAIT: keep the zombie, whose NSpid is still in the pidfd's fdinfo.
	werr := ignoringEINTR(func() error {
		return unix.Waitid(unix.P_PIDFD, pidfd, nil, unix.WEXITED|unix.WNOWAIT, nil)
	})
	if werr != nil {
		werr = os.NewSyscallError("waitid", werr)
	} else {
		nspid, werr = pidfdNSpid(pidfd)
	}
	var ws unix.WaitStatus
	err = ignoringEINTR(func() error {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("reap pid %d: %w", pid, os.NewSyscallError("wait4", err))
	}
	if werr != nil {
		return nil, 0, werr
	}
	if !ws.Exited() {
		return nspid, 0, fmt.Errorf("child did not exit: wait status %#x", uint32(ws))
	}
	return nspid, ws.ExitStatus(), nil
}

// pidfdNSpid reads the NSpid line of a pidfd's fdinfo: the process's pid in
// our pid namespace and in each one nested below it.
func pidfdNSpid(pidfd int) ([]int, error) {
	path := fmt.Sprintf("/proc/self/fdinfo/%d", pidfd)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, found := strings.CutPrefix(sc.Text(), "NSpid:")
		if !found {
			continue
		}
		var pids []int
		for _, field := range strings.Fields(rest) {
			n, err := strconv.Atoi(field)
			if err != nil {
				return nil, fmt.Errorf("%s: NSpid %q: %w", path, rest, err)
			}
			pids = append(pids, n)
		}
		if len(pids) == 0 || pids[0] <= 0 {
			return nil, fmt.Errorf("%s: NSpid %q: the process is gone", path, strings.TrimSpace(rest))
		}
		return pids, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return nil, fmt.Errorf("%s: no NSpid line", path)
}

var cloneFlagNames = []struct {
	flag uint64
	name string
}{
	{unix.CLONE_NEWPID, "CLONE_NEWPID"},
	{unix.CLONE_NEWNS, "CLONE_NEWNS"},
	{unix.CLONE_NEWUSER, "CLONE_NEWUSER"},
	{unix.CLONE_NEWTIME, "CLONE_NEWTIME"},
	{unix.CLONE_PARENT, "CLONE_PARENT"},
	{unix.CLONE_PIDFD, "CLONE_PIDFD"},
}

func cloneFlagString(flags uint64) string {
	var names []string
	for _, f := range cloneFlagNames {
		if flags&f.flag != 0 {
			names = append(names, f.name)
			flags &^= f.flag
		}
	}
	if flags != 0 || len(names) == 0 {
		names = append(names, fmt.Sprintf("%#x", flags))
	}
	return strings.Join(names, "|")
}

// ignoringEINTR retries fn while a signal interrupts it.
func ignoringEINTR(fn func() error) error {
	for {
		err := fn()
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
