package restore

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/internal/procfs"
	"github.com/crest-restore/crest/restore/agent"
)

// Finishing (DESIGN step 5) removes the crest area from every task, so that
// its /proc/PID/maps is exactly what the images say. A task can not unmap
// the code it runs, so, as CRIU does, the engine does it with ptrace: it
// seizes every thread while they wait at the RESTORE_CREDS barrier, lets
// them run to the exit of their rt_sigreturn (they are then in their own
// registers), and once every thread of a task is there, points one of them
// at the restorer's syscall instruction to munmap the area, restores its
// registers at the munmap's exit stop, and detaches all.

const (
	ptraceOTraceSysgood = 0x1
	// PTRACE_O_SUSPEND_SECCOMP: the tracee's seccomp state does not
	// apply while it is traced (CAP_SYS_ADMIN)
	ptraceOSuspendSeccomp = 0x200000
	ptraceSeizeReq        = 0x4206
	ptraceInterruptReq    = 0x4207
	ptraceGetSyscallReq   = 0x420e
	ptraceSetSigmask      = 0x420b
	ptraceEventStop       = 128
	syscallInfoEntry      = 1
	sysRtSigreturn        = 15
	errRestartSys         = 512 // ERESTARTSYS: an interrupted call the kernel restarts
)

// tracee is one thread of a task during finishing.
type tracee struct {
	task        *Task
	tid         int                // host tid
	interrupted bool               // its interrupt stop was seen
	inSyscall   bool               // its last syscall stop was an entry
	inSigreturn bool               // stopped at the entry of rt_sigreturn
	index       int                // its thread's index in the task, from its restorer stack
	regs        syscall.PtraceRegs // at its rt_sigreturn exit
	unmap       unmapPhase         // where its task's munmap is, on the thread that runs it
	mask        uint64             // its own signal mask, put back after the munmap
}

// unmapPhase is how far the injected munmap of a task has come.
type unmapPhase int

const (
	unmapNone  unmapPhase = iota
	unmapEntry            // injected: the next stop is the munmap's entry
	unmapExit             // the next stop is its exit
)

// listThreads finds the host tids of every thread of every alive task,
// for finishing. Every thread exists once RESTORE is over, and none is
// added after it: the engine lists them while the tasks restore their
// credentials, out of the way of the switch to COMPLETE.
func (r *Restore) listThreads() (map[*Task][]int, error) {
	tids := map[*Task][]int{}
	for _, t := range r.plan.Tasks {
		if t.Kind != TaskAlive {
			continue // zombies and helpers ended after RESTORE
		}
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", r.hostPIDs[t.PID]))
		if err != nil {
			return nil, fmt.Errorf("task %d: %w", t.PID, err)
		}
		if len(ents) != len(t.Threads) {
			return nil, fmt.Errorf("task %d has %d threads, want %d", t.PID, len(ents), len(t.Threads))
		}
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				return nil, fmt.Errorf("task %d: thread %q: %w", t.PID, e.Name(), err)
			}
			tids[t] = append(tids[t], tid)
		}
	}
	return tids, nil
}

// seizeAll attaches to every thread listThreads found. They are parked at
// the RESTORE_CREDS barrier, so none can slip through before the switch.
// A thread with seccomp state is seized with its filters suspended: it
// installs them before its rt_sigreturn, and the munmap injected after it
// must not meet them (nor strict mode); they apply from the detach on.
func (r *Restore) seizeAll() ([]*tracee, error) {
	var ts []*tracee
	for _, t := range r.plan.Tasks {
		opts := uintptr(ptraceOTraceSysgood)
		for _, th := range t.Threads {
			if th.Seccomp.Mode != agent.SeccompModeDisabled {
				opts |= ptraceOSuspendSeccomp
			}
		}
		for _, tid := range r.threads[t] {
			if err := ptrace(ptraceSeizeReq, tid, 0, opts); err != nil {
				return ts, fmt.Errorf("task %d thread %d: %w", t.PID, tid, err)
			}
			ts = append(ts, &tracee{task: t, tid: tid})
			// stop it at once: from its next stop on it runs syscall to syscall
			if err := ptrace(ptraceInterruptReq, tid, 0, 0); err != nil {
				return ts, fmt.Errorf("task %d thread %d: %w", t.PID, tid, err)
			}
		}
	}
	return ts, nil
}

// finish switches to COMPLETE with every thread seized and removes the
// crest area from every task. It runs on one locked OS thread: ptrace
// requests must come from the thread that seized.
func (r *Restore) finish() (err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer quietStops()()
	ts, err := r.seizeAll()
	defer func() {
		if err != nil {
			for _, t := range ts {
				ptrace(syscall.PTRACE_DETACH, t.tid, 0, 0)
			}
		}
	}()
	if err != nil {
		return err
	}
	if err := r.switchTo(StageComplete); err != nil {
		return err
	}
	off, err := agent.SymbolOffset("crest_syscall")
	if err != nil {
		return err
	}
	// wait4 can not be cancelled: past the deadline the tree is killed,
	// which ends the wait with the tasks' exits.
	watchdog := time.AfterFunc(r.opts.StageTimeout, func() { pidfdSignal(r.rootPidfd, syscall.SIGKILL) })
	defer watchdog.Stop()
	syscallAddr := r.area.RestorerAddr + off

	byTid := map[int]*tracee{}
	left := map[*Task]int{}
	for _, t := range ts {
		byTid[t.tid] = t
		left[t.task]++
	}
	for len(byTid) > 0 {
		// Only this thread's tracees and children (__WNOTHREAD): the
		// tracees are this thread's, as ptrace wants, and a child that
		// another goroutine of the process started stays its own.
		var ws syscall.WaitStatus
		tid, err := syscall.Wait4(-1, &ws, syscall.WALL|wNothread, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("wait4", err)
		}
		t := byTid[tid]
		if t == nil {
			return fmt.Errorf("pid %d changed state (%#x) while finishing", tid, ws)
		}
		if ws.Exited() || ws.Signaled() {
			return fmt.Errorf("task %d thread %d ended while finishing (status %#x)", t.task.PID, tid, ws)
		}
		if !ws.Stopped() {
			continue
		}
		sig := ws.StopSignal()
		switch {
		case ws.TrapCause() == ptraceEventStop:
			// the interrupt, or a group stop: go on, syscall to syscall
			if !t.interrupted {
				t.interrupted = true
				if err := endBarrierWait(tid); err != nil {
					return fmt.Errorf("task %d thread %d: %w", t.task.PID, tid, err)
				}
			}
			if err := ptrace(syscall.PTRACE_SYSCALL, tid, 0, 0); err != nil {
				return err
			}
		case t.unmap != unmapNone:
			// The munmap runs with every signal blocked: only its
			// own two stops can come.
			if sig != syscall.SIGTRAP|0x80 {
				return fmt.Errorf("task %d thread %d: unexpected stop %#x while unmapping the crest area", t.task.PID, tid, ws)
			}
			if t.unmap == unmapEntry {
				t.unmap = unmapExit
				if err := ptrace(syscall.PTRACE_SYSCALL, tid, 0, 0); err != nil {
					return err
				}
				continue
			}
			if err := endUnmap(t); err != nil {
				return fmt.Errorf("task %d: unmapping the crest area: %w", t.task.PID, err)
			}
			if sig := r.stopSignal(t.task); sig != 0 {
				// Stopped at the dump, or --leave-stopped: the
				// signal waits while the threads are traced, and
				// stops the task as soon as they are let go, before
				// it runs any code of its own (CRIU sends it at the
				// same point).
				if r.stopSent == nil {
					r.stopSent = map[*Task]uint64{}
				}
				r.stopSent[t.task] = boottime()
				if err := syscall.Kill(r.hostPIDs[t.task.PID], sig); err != nil {
					return fmt.Errorf("task %d: stopping it again with %s: %w", t.task.PID, unix.SignalName(sig), os.NewSyscallError("kill", err))
				}
			}
			for tid2, t2 := range byTid {
				if t2.task == t.task {
					if err := ptrace(syscall.PTRACE_DETACH, tid2, 0, 0); err != nil {
						return err
					}
					delete(byTid, tid2)
				}
			}
		case sig == syscall.SIGTRAP|0x80:
			done, err := r.syscallStop(t)
			if err != nil {
				return fmt.Errorf("task %d thread %d: %w", t.task.PID, tid, err)
			}
			if !done {
				if err := ptrace(syscall.PTRACE_SYSCALL, tid, 0, 0); err != nil {
					return err
				}
				continue
			}
			// It runs its own code now: its arrival at COMPLETE (the
			// agent leaves the time to the engine, see leave_complete).
			r.shared.setArrival(t.task.Threads[t.index].Slot, StageComplete, boottime())
			left[t.task]--
			if left[t.task] > 0 {
				continue // wait for its siblings, stopped in their own code
			}
			// The munmap's two stops come back through this loop, so
			// that the other tasks go on meanwhile. rt_sigreturn gave
			// the thread its own mask, the plan's (the kernel never
			// blocks SIGKILL and SIGSTOP, nor does PTRACE_SETSIGMASK).
			t.mask = threadSigmask(t.task, t.task.Threads[t.index])
			if err := beginUnmap(t, syscallAddr, r.area.Start, r.area.Size); err != nil {
				return fmt.Errorf("task %d: unmapping the crest area: %w", t.task.PID, err)
			}
		default:
			// a signal for the task: deliver it
			if err := ptrace(syscall.PTRACE_SYSCALL, tid, 0, uintptr(sig)); err != nil {
				return err
			}
		}
	}
	return nil
}

// stopSignal is the signal that finishing sends task t: SIGSTOP to every
// alive task with Options.LeaveStopped, else the signal that had stopped
// it at the dump, else 0.
func (r *Restore) stopSignal(t *Task) syscall.Signal {
	switch {
	case t.Kind != TaskAlive:
		return 0
	case r.opts.LeaveStopped:
		return syscall.SIGSTOP
	}
	return t.StopSignal
}

// waitStopped waits until every thread of each task that finishing
// stopped (stopSignal) is in its group stop ('T' in /proc), and fails if
// one is not by the stage timeout: a restore whose stopped tasks run on
// is not the dumped tree. (SIGTSTP, SIGTTIN and SIGTTOU do not stop a
// task of an orphaned process group, nor does any signal but SIGSTOP stop
// a pid namespace's init.) Such a task is done with COMPLETE once
// stopped: its threads arrive then, after a "stop" step from the signal
// on.
func (r *Restore) waitStopped() error {
	deadline := time.Now().Add(r.opts.StageTimeout)
	for _, t := range r.plan.Tasks {
		sig := r.stopSignal(t)
		if sig == 0 {
			continue
		}
		for _, tid := range r.threads[t] {
			path := fmt.Sprintf("/proc/%d/task/%d/stat", r.hostPIDs[t.PID], tid)
			for {
				state, err := procState(path)
				if err != nil {
					return &StageError{Stage: StageComplete, PID: t.PID, Step: "stop", Err: err}
				}
				if state == 'T' {
					break
				}
				if time.Now().After(deadline) {
					return &StageError{Stage: StageComplete, PID: t.PID, Step: "stop",
						Err: fmt.Errorf("not stopped by %s %v after the restore (host tid %d in state %c)",
							unix.SignalName(sig), r.opts.StageTimeout, tid, state)}
				}
				time.Sleep(50 * time.Microsecond)
			}
		}
		now := boottime()
		for _, th := range t.Threads {
			r.shared.setArrival(th.Slot, StageComplete, now)
		}
		r.stopSteps = append(r.stopSteps, StepEvent{PID: t.PID, TID: t.PID, Step: "stop", Stage: StageComplete,
			Begin: r.stopSent[t], End: now, Succeeded: true})
	}
	return nil
}

// procState is the state letter of a /proc/PID[/task/TID]/stat file.
func procState(path string) (byte, error) {
	st, err := procfs.ReadStat(path)
	if err != nil {
		return 0, err
	}
	return st.State, nil
}

// endBarrierWait ends the futex wait that the interrupt broke off, if the
// thread was in one, as if it had been woken: the interrupt came while
// it waited for COMPLETE, which is switched now, and the kernel would
// restart the wait only for it to return at once, two stops more. The
// call returns -EINTR instead (the agent checks start again then) and
// is not restarted (orig_rax -1).
func endBarrierWait(tid int) error {
	var regs syscall.PtraceRegs
	if err := syscall.PtraceGetRegs(tid, &regs); err != nil {
		return err
	}
	if regs.Orig_rax != syscall.SYS_FUTEX || int64(regs.Rax) != -errRestartSys {
		return nil // not in a wait: it goes on as it would
	}
	regs.Orig_rax = ^uint64(0)
	eintr := -int64(syscall.EINTR)
	regs.Rax = uint64(eintr)
	return syscall.PtraceSetRegs(tid, &regs)
}

// syscallStop reports whether t stopped at the exit of its rt_sigreturn,
// keeping its registers then. The exit is known from the entry before it:
// rt_sigreturn sets orig_rax to -1, so the registers do not tell. Entry
// and exit stops alternate, the first after the interrupt stop being an
// entry (the thread was stopped outside any call, or in a wait it then
// leaves or restarts from its entry): only an entry is asked about.
func (r *Restore) syscallStop(t *tracee) (bool, error) {
	if t.inSyscall {
		t.inSyscall = false
		if !t.inSigreturn {
			return false, nil
		}
		if err := syscall.PtraceGetRegs(t.tid, &t.regs); err != nil {
			return false, err
		}
		return true, nil
	}
	// struct ptrace_syscall_info: op at 0, stack_pointer at 16, entry.nr at 24
	var info [88]byte
	if err := ptrace(ptraceGetSyscallReq, t.tid, uintptr(len(info)), uintptr(unsafe.Pointer(&info[0]))); err != nil {
		return false, err
	}
	switch info[0] {
	case syscallInfoEntry:
		t.inSyscall = true
		t.inSigreturn = *(*uint64)(unsafe.Pointer(&info[24])) == sysRtSigreturn
		if t.inSigreturn {
			// the frame is on the thread's own restorer stack
			// (sigreturn.c): which one tells the thread
			sp := *(*uint64)(unsafe.Pointer(&info[16]))
			if sp < r.area.StackAddr || r.area.StackSize == 0 {
				return false, fmt.Errorf("rt_sigreturn with the stack at %#x, below the restorer's stacks", sp)
			}
			t.index = int((sp - r.area.StackAddr) / r.area.StackSize)
			if t.index >= len(t.task.Threads) {
				return false, fmt.Errorf("rt_sigreturn on restorer stack %d of a task with %d threads", t.index, len(t.task.Threads))
			}
		}
		return false, nil
	default:
		return false, fmt.Errorf("syscall stop %d where an entry was due", info[0])
	}
}

// beginUnmap makes t run munmap(start, size) from the restorer's syscall
// instruction: it sets the registers and lets t go to the call's entry
// stop; endUnmap, at the exit stop, checks the result and puts t's
// registers back. As compel does for code it injects, every signal is
// blocked meanwhile: rt_sigreturn has just unblocked the task's own mask,
// and a pending signal (a restored one, or an interval timer's) must be
// delivered in the task's registers, after the detach, not in the middle
// of the injected call.
func beginUnmap(t *tracee, syscallAddr, start, size uint64) error {
	var all uint64 = ^uint64(0)
	if err := ptrace(ptraceSetSigmask, t.tid, 8, uintptr(unsafe.Pointer(&all))); err != nil {
		return err
	}
	inj := t.regs
	inj.Rip = syscallAddr
	inj.Rax = syscall.SYS_MUNMAP
	inj.Rdi = start
	inj.Rsi = size
	if err := syscall.PtraceSetRegs(t.tid, &inj); err != nil {
		return err
	}
	t.unmap = unmapEntry
	return ptrace(syscall.PTRACE_SYSCALL, t.tid, 0, 0)
}

// endUnmap finishes what beginUnmap started, at the munmap's exit stop.
func endUnmap(t *tracee) error {
	var regs syscall.PtraceRegs
	if err := syscall.PtraceGetRegs(t.tid, &regs); err != nil {
		return err
	}
	if errno := syscall.Errno(-int64(regs.Rax)); int64(regs.Rax) < 0 {
		return os.NewSyscallError("munmap", errno)
	}
	if err := syscall.PtraceSetRegs(t.tid, &t.regs); err != nil {
		return err
	}
	t.unmap = unmapNone
	return ptrace(ptraceSetSigmask, t.tid, 8, uintptr(unsafe.Pointer(&t.mask)))
}

func ptrace(req, pid int, addr, data uintptr) error {
	_, _, errno := syscall.Syscall6(syscall.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if errno != 0 {
		return os.NewSyscallError("ptrace", errno)
	}
	return nil
}

// kernelSigaction is the kernel's struct sigaction on x86-64 (what
// rt_sigaction takes): handler, flags, restorer, mask.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

const saNoCldStop = 0x1

// quietStops sets SA_NOCLDSTOP on the engine's SIGCHLD action, keeping
// Go's handler, and returns what puts the action back. Every ptrace stop
// of a tracee sends its tracer SIGCHLD unless the tracer has it set, and
// each one costs the engine a signal delivery into Go's handler; wait4
// is woken either way. If the action can not be read or set, nothing is
// changed.
func quietStops() (restore func()) {
	var old kernelSigaction
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGCHLD), 0,
		uintptr(unsafe.Pointer(&old)), 8, 0, 0); e != 0 || old.flags&saNoCldStop != 0 {
		return func() {}
	}
	quiet := old
	quiet.flags |= saNoCldStop
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGCHLD),
		uintptr(unsafe.Pointer(&quiet)), 0, 8, 0, 0); e != 0 {
		return func() {}
	}
	return func() {
		syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGCHLD),
			uintptr(unsafe.Pointer(&old)), 0, 8, 0, 0)
	}
}
