package dump

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/internal/procfs"
)

// thread is one thread of a frozen task.
type thread struct {
	tid   int    // host tid
	nsTid uint32 // tid in the root's pid namespace
	// regs are the registers as the thread had them at the freeze; they
	// are put back before the thread is let go whenever the dumper ran
	// something in it.
	regs    unix.PtraceRegs
	touched bool
	// stopSig is the signal of the group stop the thread was in when
	// seized, 0 if it was not in one.
	stopSig syscall.Signal
	// seccomp is its seccomp mode from the freeze on, and its filters
	// once dumpSeccomp read them.
	seccomp threadSeccomp
}

// task is one process of the tree.
type task struct {
	pid      int // host pid
	nsPid    uint32
	parent   *task
	children []*task
	threads  []*thread // the leader first
	// poke, when set, is text the dumper overwrote to run syscalls and
	// must put back.
	poke *poke
	// seized: boot times the freeze of this task's threads began and
	// ended, for the Observer
	seized [2]uint64
	// stopSig is the signal that stopped the task (its leader in a group
	// stop when seized, CRIU's TASK_STOPPED), 0 if it ran.
	stopSig syscall.Signal
	// dead is set for a zombie: a child that ended and that its parent
	// has not waited for yet (CRIU's TASK_DEAD). It is never seized: it
	// has no memory, files or namespaces left to read, and its one
	// thread is its pid, as pstree.img lists it. It stays a zombie for
	// as long as its parent is frozen.
	dead *deadTask
}

// tree is the frozen process tree.
type tree struct {
	root  *task
	tasks []*task // pre-order: parents before children, as pstree.img
}

func (t *task) String() string {
	if t.nsPid != 0 {
		return fmt.Sprintf("task %d (host pid %d)", t.nsPid, t.pid)
	}
	return fmt.Sprintf("task %d", t.pid)
}

// freeze seizes and interrupts every thread of the tree rooted at pid.
// Threads and children are listed again after each round of seizing, until
// a round finds nobody new: a frozen thread cannot clone, so the tree is
// then complete. On error, whatever was seized is let go.
func freeze(pid int) (*tree, error) {
	tr := &tree{}
	root, err := tr.freezeTask(pid, nil)
	if err == nil {
		err = tr.adoptions()
	}
	if err != nil {
		tr.thaw()
		return nil, err
	}
	tr.root = root
	return tr, nil
}

// testChildrenListed, when set (tests), is called with each task once its
// children are listed and before they are frozen.
var testChildrenListed func(t *task)

// adoptions freezes the children that frozen tasks gained after their
// children were listed: a task that died meanwhile (a zombie now, its
// parent frozen) gave its own children to a reaper in the tree, the root
// of the pid namespace or a subreaper, which was listed already. Frozen
// tasks neither fork nor exit, so a pass that finds nobody new ends it.
func (tr *tree) adoptions() error {
	for {
		known := map[int]bool{}
		for _, t := range tr.tasks {
			known[t.pid] = true
		}
		fresh := 0
		for i := 0; i < len(tr.tasks); i++ { // it grows as adoptees are frozen
			t := tr.tasks[i]
			if t.dead != nil {
				continue
			}
			for _, th := range t.threads {
				kids, err := readChildren(t.pid, th.tid)
				if err != nil {
					return fmt.Errorf("%s: children of thread %d: %w", t, th.tid, err)
				}
				for _, k := range kids {
					if known[k] {
						continue
					}
					c, err := tr.freezeTask(k, t)
					if err != nil {
						return err
					}
					t.children = append(t.children, c)
					for _, n := range tr.tasks {
						known[n.pid] = true
					}
					fresh++
				}
			}
		}
		if fresh == 0 {
			return nil
		}
	}
}

func (tr *tree) freezeTask(pid int, parent *task) (*task, error) {
	t := &task{pid: pid, parent: parent}
	t.seized[0] = boottime()
	tr.tasks = append(tr.tasks, t)
	seen := map[int]bool{}
	for {
		tids, err := listTids(pid)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && len(t.threads) == 0 {
				return nil, fmt.Errorf("%s: no such process", t)
			}
			return nil, fmt.Errorf("%s: listing threads: %w", t, err)
		}
		fresh := 0
		for _, tid := range tids {
			if seen[tid] {
				continue
			}
			seen[tid] = true
			th := &thread{tid: tid}
			if err := seize(tid); err != nil {
				if tid != pid && errors.Is(err, syscall.ESRCH) {
					continue // the thread exited meanwhile
				}
				if tid == pid && errors.Is(err, errZombie) {
					return t, t.zombie(parent, tids)
				}
				return nil, fmt.Errorf("%s: thread %d: %w", t, tid, err)
			}
			t.threads = append(t.threads, th)
			fresh++
			if th.stopSig, err = waitInterrupted(tid); err != nil {
				return nil, fmt.Errorf("%s: thread %d: %w", t, tid, err)
			}
			if tid == pid {
				t.stopSig = th.stopSig
			}
			if err := unix.PtraceGetRegs(tid, &th.regs); err != nil {
				return nil, fmt.Errorf("%s: thread %d: %w", t, tid, os.NewSyscallError("ptrace(PTRACE_GETREGS)", err))
			}
		}
		if fresh == 0 {
			break
		}
	}
	if len(t.threads) == 0 || t.threads[0].tid != pid {
		return nil, fmt.Errorf("%s: could not seize the thread group leader", t)
	}
	if err := suspendSeccomp(t); err != nil {
		return nil, err
	}
	t.seized[1] = boottime()
	var kids []int
	for _, th := range t.threads {
		c, err := readChildren(pid, th.tid)
		if err != nil {
			return nil, fmt.Errorf("%s: children of thread %d: %w", t, th.tid, err)
		}
		kids = append(kids, c...)
	}
	if testChildrenListed != nil {
		testChildrenListed(t)
	}
	for _, k := range kids {
		c, err := tr.freezeTask(k, t)
		if err != nil {
			return nil, err
		}
		t.children = append(t.children, c)
	}
	return t, nil
}

// seize attaches to tid without stopping it and asks it to stop.
func seize(tid int) error {
	if err := unix.PtraceSeize(tid); err != nil {
		if errors.Is(err, syscall.EPERM) {
			err = exiting(tid, err)
		}
		if errors.Is(err, errZombie) {
			return err
		}
		return os.NewSyscallError("ptrace(PTRACE_SEIZE)", err)
	}
	if err := unix.PtraceInterrupt(tid); err != nil {
		unix.PtraceDetach(tid)
		return os.NewSyscallError("ptrace(PTRACE_INTERRUPT)", err)
	}
	return nil
}

// pfExiting is PF_EXITING in the flags of /proc/PID/stat (field 9).
const pfExiting = 0x4

// exiting tells why tid could not be seized (EPERM, err): a task that is
// ending can not be traced any more. A zombie gives errZombie; one on its
// way there is waited for (its parent is frozen, so it stays one), and one
// that goes away (a thread, or a child nobody waits for) gives ESRCH.
// Any other task gives err back.
func exiting(tid int, err error) error {
	deadline := time.Now().Add(time.Second)
	for {
		st, serr := procfs.ReadStat(procPath(tid, "stat"))
		switch {
		case errors.Is(serr, os.ErrNotExist):
			return syscall.ESRCH
		case serr != nil:
			return err
		case st.State == 'Z':
			return errZombie
		case st.State != 'X' && st.Field(9)&pfExiting == 0:
			return err
		case time.Now().After(deadline):
			return fmt.Errorf("still exiting after 1s: %w", err)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// waitInterrupted waits for the stop PTRACE_INTERRUPT asked for. A signal
// that arrives first is delivered as if the dumper were not there; the
// interrupt stays pending and stops the thread right after. A thread in a
// group stop (stopped by SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU) reports
// that stop instead, and its signal is returned: under ptrace it runs what
// the dumper makes it run all the same, and when the dumper detaches it
// goes back to the group stop, which lasts until a SIGCONT.
func waitInterrupted(tid int) (syscall.Signal, error) {
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(tid, &ws, unix.WALL, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return 0, os.NewSyscallError("wait4", err)
		}
		switch {
		case ws.Exited() || ws.Signaled():
			return 0, fmt.Errorf("exited during the freeze (%v)", ws)
		case !ws.Stopped():
			continue
		case int(ws)>>16 == unix.PTRACE_EVENT_STOP:
			switch sig := ws.StopSignal(); sig {
			case syscall.SIGTRAP:
				return 0, nil
			case syscall.SIGSTOP, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU:
				return sig, nil
			default:
				return 0, &UnsupportedError{Task: tid, Resource: "state",
					Why: fmt.Sprintf("a ptrace stop by %s", unix.SignalName(sig))}
			}
		default:
			if err := unix.PtraceCont(tid, int(ws.StopSignal())); err != nil {
				return 0, os.NewSyscallError("ptrace(PTRACE_CONT)", err)
			}
		}
	}
}

// thaw puts back what the dumper changed in each task and detaches from
// every thread, leaving the tree as it was.
func (tr *tree) thaw() {
	for _, t := range tr.tasks {
		if t.dead != nil {
			continue // never seized: it stays its parent's zombie
		}
		t.restore()
		for _, th := range t.threads {
			unix.PtraceDetach(th.tid)
		}
	}
}

// stop is thaw with every task stopped: SIGSTOP to each while its threads
// are still traced, which stops it as soon as they are let go, before it
// runs any code of its own.
func (tr *tree) stop() {
	var tids []int
	for _, t := range tr.tasks {
		if t.dead != nil {
			continue
		}
		t.restore()
		unix.Kill(t.pid, unix.SIGSTOP)
		for _, th := range t.threads {
			unix.PtraceDetach(th.tid)
			tids = append(tids, th.tid)
		}
	}
	// A detached thread runs until it takes the SIGSTOP: the tree is
	// left stopped only once every thread is in the group stop, so that
	// whoever looks after crest dump -s finds it stopped. Bounded: a
	// thread killed meanwhile never stops.
	for deadline := time.Now().Add(2 * time.Second); len(tids) > 0 && time.Now().Before(deadline); {
		st, err := procfs.ReadStat(procPath(tids[0], "stat"))
		if err != nil || st.State == 'T' || st.State == 'Z' || st.State == 'X' {
			tids = tids[1:]
			continue
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// restore puts back the registers and text of t's threads.
func (t *task) restore() {
	if t.poke != nil && len(t.threads) > 0 {
		t.poke.undo(t.threads[0].tid)
		t.poke = nil
	}
	for _, th := range t.threads {
		if th.touched {
			unix.PtraceSetRegs(th.tid, &th.regs)
			th.touched = false
		}
	}
}

// kill ends the frozen tree: SIGKILL to every task while still traced,
// then reap each thread's exit as its tracer. A dying tracee stays a
// zombie until its tracer waits for it, and the last thread of a pid
// namespace init waits for every task of the namespace, zombie threads
// included, so the threads are reaped in whatever order they die.
// Zombies are left alone: their parents die too, and whoever the kernel
// gives them to reaps them (a pid namespace's init as it dies).
func (tr *tree) kill() {
	left := map[int]bool{}
	for i := len(tr.tasks) - 1; i >= 0; i-- {
		if tr.tasks[i].dead != nil {
			continue
		}
		unix.Kill(tr.tasks[i].pid, unix.SIGKILL)
		for _, th := range tr.tasks[i].threads {
			left[th.tid] = true
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(left) > 0 && time.Now().Before(deadline) {
		for tid := range left {
			var ws unix.WaitStatus
			n, err := unix.Wait4(tid, &ws, unix.WALL|unix.WNOHANG, nil)
			if err != nil && !errors.Is(err, syscall.EINTR) || n == tid && (ws.Exited() || ws.Signaled()) {
				delete(left, tid)
			}
		}
		if len(left) > 0 {
			time.Sleep(100 * time.Microsecond)
		}
	}
}
