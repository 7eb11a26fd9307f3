package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The raw system calls of the engine, fenced into this file. Numbers that
// the syscall package lacks are x86-64's (sysnum_amd64.go); the agent is
// x86-64 only too.

const (
	futexWait   = 0 // FUTEX_WAIT, not private: the page is shared across processes
	futexWake   = 1
	futexWakeOp = 5
	futexOpSet  = 0

	clockBoottime = 7

	pWaitPidfd = 3 // P_PIDFD
	wNowait    = 0x01000000
	wNothread  = 0x20000000 // __WNOTHREAD: only the calling thread's children and tracees

	mfdCloexec = 0x1
)

// memfdCreate returns a new memfd as a file.
func memfdCreate(name string, flags uint) (*os.File, error) {
	fd, err := memfdCreateFD(name, flags)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "memfd:"+name), nil
}

// memfdCreateFD returns a new memfd as a raw fd.
func memfdCreateFD(name string, flags uint) (int, error) {
	p, err := syscall.BytePtrFromString(name)
	if err != nil {
		return -1, err
	}
	fd, _, errno := syscall.Syscall(sysMemfdCreate, uintptr(unsafe.Pointer(p)), uintptr(flags), 0)
	if errno != 0 {
		return -1, os.NewSyscallError("memfd_create", errno)
	}
	return int(fd), nil
}

// pidfdOpen returns a pidfd of pid.
func pidfdOpen(pid int) (int, error) {
	fd, _, errno := syscall.Syscall(sysPidfdOpen, uintptr(pid), 0, 0)
	if errno != 0 {
		return -1, os.NewSyscallError("pidfd_open", errno)
	}
	return int(fd), nil
}

// onOwnThread runs fn on a locked OS thread that ends with it (fn may
// leave it in other namespaces or another directory), one that is not
// the main thread, which Go parks for good instead of ending it, nor,
// with pidfd >= 0, the parent of that process (the restored root, whose
// parent-death signal is tied to the engine thread that forked the
// launcher): such a thread is held while another is tried. It returns
// once the thread is gone.
func onOwnThread(pidfd, tries int, fn func() error) error {
	done := make(chan error, 1)
	end := -1
	go func() {
		runtime.LockOSThread()
		parent, err := false, error(nil)
		if pidfd >= 0 {
			// waitid for the calling thread's own children only: the
			// root is one of them when this thread forked the launcher
			err = unix.Waitid(unix.P_PIDFD, pidfd, nil, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT|unix.WNOTHREAD, nil)
			parent = err == nil
		}
		if parent || unix.Gettid() == unix.Getpid() {
			defer runtime.UnlockOSThread()
			if tries <= 1 {
				done <- errors.New("no engine thread to end but the root's parent or the main thread")
				return
			}
			done <- onOwnThread(pidfd, tries-1, fn)
			return
		}
		if pidfd >= 0 && !errors.Is(err, unix.ECHILD) {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("is the root this thread's child: %w", os.NewSyscallError("waitid", err))
			return
		}
		// not unlocked: the thread ends with the goroutine
		end = threadEnd()
		done <- fn()
	}()
	err := <-done
	awaitThreadEnd(end)
	return err
}

// onReturningThread runs fn on a locked OS thread that fn leaves as it
// found it (its namespaces, its credentials): fn returns its error and,
// apart, why it could not put the thread back. A thread that was not
// put back stays locked and ends with its goroutine; onReturningThread
// returns once it is gone, with both errors.
func onReturningThread(fn func() (err, notBack error)) error {
	done := make(chan error, 1)
	end := -1
	go func() {
		runtime.LockOSThread()
		err, notBack := fn()
		if notBack != nil {
			// still locked: the thread ends with the goroutine
			end = threadEnd()
			done <- errors.Join(err, notBack)
			return
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	err := <-done
	awaitThreadEnd(end)
	return err
}

// threadEnd returns a pidfd of the calling thread, one that polls
// readable once the thread has ended, for a locked goroutine whose
// thread ends with it; -1 on the main thread (Go parks it instead) or
// when the kernel has no thread pidfds.
func threadEnd() int {
	tid := unix.Gettid()
	if tid == unix.Getpid() {
		return -1
	}
	fd, _, errno := syscall.Syscall(sysPidfdOpen, uintptr(tid), unix.PIDFD_THREAD, 0)
	if errno != 0 {
		return -1
	}
	return int(fd)
}

// awaitThreadEnd waits until the thread of fd, a threadEnd, has ended
// (at most a second) and closes fd. The goroutine hands back its result
// before its thread ends: until then the thread is still in the
// namespaces or directory it went into, which a failed restore must not
// leave behind, nor a done one leave to whoever looks next.
func awaitThreadEnd(fd int) {
	if fd < 0 {
		return
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(pfd, 1000); err != unix.EINTR {
			break
		}
	}
	unix.Close(fd)
}

// pidfdSignal sends sig to the process of pidfd.
func pidfdSignal(pidfd int, sig syscall.Signal) error {
	_, _, errno := syscall.Syscall6(sysPidfdSendSignal, uintptr(pidfd), uintptr(sig), 0, 0, 0, 0)
	if errno != 0 {
		return os.NewSyscallError("pidfd_send_signal", errno)
	}
	return nil
}

// exited reports whether the process of pidfd has exited, without reaping
// it, and how ("exit status 3", "killed by signal 11") when it has.
func exited(pidfd int) (string, error) {
	var info [128]byte // siginfo_t: si_code at 8, si_pid at 16, si_status at 24
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pWaitPidfd, uintptr(pidfd), uintptr(unsafe.Pointer(&info[0])),
			syscall.WEXITED|syscall.WNOHANG|wNowait, 0, 0)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 {
			return "", os.NewSyscallError("waitid", errno)
		}
		if *(*int32)(unsafe.Pointer(&info[16])) == 0 {
			return "", nil
		}
		code := *(*int32)(unsafe.Pointer(&info[8]))
		status := *(*int32)(unsafe.Pointer(&info[24]))
		if code == 1 { // CLD_EXITED
			return fmt.Sprintf("exit status %d", status), nil
		}
		return fmt.Sprintf("killed by signal %d (%v)", status, syscall.Signal(status)), nil
	}
}

// futexWaitTimeout waits while *addr == val, at most timeoutNs; wake-ups,
// timeouts and a changed value all return nil.
func futexWaitTimeout(addr *uint32, val uint32, timeoutNs int64) error {
	ts := syscall.NsecToTimespec(timeoutNs)
	_, _, errno := syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWait, uintptr(val),
		uintptr(unsafe.Pointer(&ts)), 0, 0)
	switch errno {
	case 0, syscall.EAGAIN, syscall.EINTR, syscall.ETIMEDOUT:
		return nil
	}
	return os.NewSyscallError("futex wait", errno)
}

// futexSetWakeAll stores val in *addr and wakes every waiter on addr, in
// one FUTEX_WAKE_OP, so that the kernel-side monitor sees the store inside
// the call (FUTEX_OP(FUTEX_OP_SET, val, FUTEX_OP_CMP_EQ, 0)).
func futexSetWakeAll(addr *uint32, val int32) error {
	op := uintptr(futexOpSet<<28 | (uint32(val)&0xfff)<<12)
	_, _, errno := syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeOp, 0x7fffffff, 0,
		uintptr(unsafe.Pointer(addr)), op)
	if errno != 0 {
		return os.NewSyscallError("futex wake_op", errno)
	}
	return nil
}

// futexWakeAll wakes every waiter on addr.
func futexWakeAll(addr *uint32) error {
	_, _, errno := syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWake, 0x7fffffff, 0, 0, 0)
	if errno != 0 {
		return os.NewSyscallError("futex wake", errno)
	}
	return nil
}

// boottime returns CLOCK_BOOTTIME in nanoseconds, the clock of the agent's
// readings and of the kernel-side monitor's events. It is the monotonic
// clock (read through the vDSO, no system call: the engine stamps every
// stage switch between the stages) plus the boot clock's offset, which
// changes only when the machine suspends; calibrateBoottime measures the
// offset, once per restore.
func boottime() uint64 {
	c := bootClock.Load()
	if c == nil {
		c = calibrateBoottime()
	}
	return c.boot + uint64(time.Since(c.mono))
}

// bootCalibration pairs a CLOCK_BOOTTIME reading with the time.Time
// whose monotonic reading was taken at the same moment.
type bootCalibration struct {
	mono time.Time
	boot uint64
}

var bootClock atomic.Pointer[bootCalibration]

// calibrateBoottime reads CLOCK_BOOTTIME between two monotonic readings
// a few times and keeps the closest pair, its monotonic time the middle
// of the two: the error is under half that gap, a few tens of ns.
func calibrateBoottime() *bootCalibration {
	var best *bootCalibration
	gap := time.Duration(1<<63 - 1)
	for range 5 {
		t1 := time.Now()
		b := rawBoottime()
		d := time.Since(t1)
		if b != 0 && d < gap {
			gap = d
			best = &bootCalibration{mono: t1.Add(d / 2), boot: b}
		}
	}
	if best == nil {
		best = &bootCalibration{mono: time.Now()}
	}
	bootClock.Store(best)
	return best
}

// rawBoottime reads CLOCK_BOOTTIME with the system call, 0 on error.
func rawBoottime() uint64 {
	var ts syscall.Timespec
	if _, _, errno := syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clockBoottime, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		return 0
	}
	return uint64(ts.Nano())
}

// pollReadable waits until fd is readable (a pidfd: its process exited),
// ctx ends, or a short while passed; it returns ctx's error only.
func pollReadable(ctx context.Context, fd int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	pfd := struct {
		fd             int32
		events, revent int16
	}{fd: int32(fd), events: 0x1} // POLLIN
	_, _, errno := syscall.Syscall(syscall.SYS_POLL, uintptr(unsafe.Pointer(&pfd)), 1, 100)
	if errno != 0 && errno != syscall.EINTR {
		return os.NewSyscallError("poll", errno)
	}
	return ctx.Err()
}

// ignoredSignals returns the signals this process ignores (bit sig-1),
// from the SigIgn line of /proc/self/status: execve keeps them ignored
// in the agent.
func ignoredSignals() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/self/status: SigIgn %q: %w", strings.TrimSpace(v), err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("/proc/self/status: no SigIgn line")
}

// fSetownEx is fcntl(fd, F_SETOWN_EX, &ex).
func fSetownEx(fd int, ex fOwnerEx) error {
	if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETOWN_EX, uintptr(unsafe.Pointer(&ex))); e != 0 {
		return os.NewSyscallError("fcntl(F_SETOWN_EX)", e)
	}
	return nil
}

// sockaddrCall calls bind(2) or connect(2) with the unix address name,
// byte for byte: x/sys's SockaddrUnix would take a path starting with '@'
// for an abstract name.
func sockaddrCall(nr uintptr, fd int, name []byte, op string) error {
	var sa unix.RawSockaddrUnix
	sa.Family = unix.AF_UNIX
	if len(name) > len(sa.Path) {
		return fmt.Errorf("%s: a name of %d bytes", op, len(name))
	}
	for i, c := range name {
		sa.Path[i] = int8(c)
	}
	n := len(name)
	if name[0] != 0 {
		n = len(unixPath(name)) // the kernel ends a path at its NUL
	}
	for {
		_, _, errno := unix.Syscall(nr, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(2+n))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return &os.PathError{Op: op, Path: unixNameString(name), Err: errno}
		}
		return nil
	}
}

// disconnect dissolves the association of a datagram socket with its peer
// (connect(2) to AF_UNSPEC).
func disconnect(fd int) error {
	sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
	if _, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa.Family)); errno != 0 {
		return os.NewSyscallError("connect(AF_UNSPEC)", errno)
	}
	return nil
}

// setresuidThread sets the real and effective uid of the calling thread
// only, the saved uid unchanged: syscall.Setresuid (and x/sys's, which
// calls it) changes every thread of the engine. The caller has locked its
// OS thread.
func setresuidThread(ruid, euid uint32) error {
	keep := uintptr(^uint32(0)) // -1: unchanged
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, uintptr(ruid), uintptr(euid), keep); e != 0 {
		return os.NewSyscallError("setresuid", e)
	}
	return nil
}

// timerfdSetTicks sets the expirations timerfd fd has not had read
// (TFD_IOC_SET_TICKS).
func timerfdSetTicks(fd int, ticks uint64) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), tfdIocSetTicks, uintptr(unsafe.Pointer(&ticks))); errno != 0 {
		return os.NewSyscallError("ioctl(TFD_IOC_SET_TICKS)", errno)
	}
	return nil
}
