package dump

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Remote syscalls: a frozen thread is made to run one syscall instruction
// with the registers the dumper chose, single-stepped over it, and its
// result read from rax. Signals are blocked in the thread meanwhile
// (PTRACE_SETSIGMASK) so that nothing but the syscall runs, and afterwards
// its mask, registers and any text the dumper wrote are put back, so the
// task shows no trace of it.

// poke is text overwritten with a syscall instruction.
type poke struct {
	addr uint64
	orig [8]byte
}

func (p *poke) undo(tid int) error {
	_, err := unix.PtracePokeText(tid, uintptr(p.addr), p.orig[:])
	return err
}

// remote runs syscalls inside one frozen task.
type remote struct {
	t       *task
	insn    uint64 // address of a syscall instruction in the task
	scratch uint64 // a page of the task's for syscall results, 0 until mapped
	masks   map[int]uint64
}

// newRemote finds a syscall instruction in t: where the leader sits in a
// syscall, the instruction it just ran; otherwise the dumper writes one at
// the leader's ip (and puts the text back at the end, as CRIU's parasite
// injection does; the page stays a private copy of the file page).
func newRemote(t *task) (*remote, error) {
	r := &remote{t: t, masks: map[int]uint64{}}
	lead := t.threads[0]
	ip := lead.regs.Rip
	if int64(lead.regs.Orig_rax) >= 0 && ip >= 2 {
		var b [2]byte
		if _, err := unix.PtracePeekText(lead.tid, uintptr(ip-2), b[:]); err == nil && b[0] == 0x0f && b[1] == 0x05 {
			r.insn = ip - 2
			return r, nil
		}
	}
	p := &poke{addr: ip}
	if _, err := unix.PtracePeekText(lead.tid, uintptr(ip), p.orig[:]); err != nil {
		return nil, fmt.Errorf("%s: reading text at %#x: %w", t, ip, os.NewSyscallError("ptrace(PTRACE_PEEKTEXT)", err))
	}
	code := p.orig
	code[0], code[1] = 0x0f, 0x05 // syscall
	if _, err := unix.PtracePokeText(lead.tid, uintptr(ip), code[:]); err != nil {
		return nil, fmt.Errorf("%s: writing a syscall at %#x: %w", t, ip, os.NewSyscallError("ptrace(PTRACE_POKETEXT)", err))
	}
	t.poke = p
	r.insn = ip
	return r, nil
}

// block blocks every signal in th for the time of the injection, keeping
// its own mask to put back.
func (r *remote) block(th *thread) error {
	if _, ok := r.masks[th.tid]; ok {
		return nil
	}
	m, err := getSigmask(th.tid)
	if err != nil {
		return err
	}
	all := ^uint64(0)
	if _, err := ptrace(unix.PTRACE_SETSIGMASK, th.tid, 8, uintptr(unsafe.Pointer(&all))); err != nil {
		return os.NewSyscallError("ptrace(PTRACE_SETSIGMASK)", err)
	}
	r.masks[th.tid] = m
	return nil
}

// call runs syscall nr with args in thread th and returns its result.
func (r *remote) call(th *thread, nr uintptr, args ...uint64) (uint64, error) {
	name := sysName(nr)
	if err := r.block(th); err != nil {
		return 0, fmt.Errorf("%s: thread %d: %s: %w", r.t, th.tid, name, err)
	}
	var a [6]uint64
	copy(a[:], args)
	regs := th.regs
	regs.Rax = uint64(nr)
	regs.Orig_rax = ^uint64(0) // no syscall restart when the thread resumes
	regs.Rip = r.insn
	regs.Rdi, regs.Rsi, regs.Rdx, regs.R10, regs.R8, regs.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	th.touched = true
	if err := unix.PtraceSetRegs(th.tid, &regs); err != nil {
		return 0, fmt.Errorf("%s: thread %d: %s: %w", r.t, th.tid, name, os.NewSyscallError("ptrace(PTRACE_SETREGS)", err))
	}
	if err := unix.PtraceSingleStep(th.tid); err != nil {
		return 0, fmt.Errorf("%s: thread %d: %s: %w", r.t, th.tid, name, os.NewSyscallError("ptrace(PTRACE_SINGLESTEP)", err))
	}
	rearmed := 0
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(th.tid, &ws, unix.WALL, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("%s: thread %d: %s: %w", r.t, th.tid, name, os.NewSyscallError("wait4", err))
		}
		if !ws.Stopped() {
			return 0, fmt.Errorf("%s: thread %d: %s: the thread ended (%v)", r.t, th.tid, name, ws)
		}
		if int(ws)>>16 == unix.PTRACE_EVENT_STOP && th.stopSig != 0 && ws.StopSignal() == th.stopSig && rearmed < 2 {
			// A thread in a group stop traps again for the interrupt
			// the freeze sent, when that came after the seize's own
			// trap. The trap comes before any instruction of the
			// thread's: step again.
			rearmed++
			if err := unix.PtraceSingleStep(th.tid); err != nil {
				return 0, fmt.Errorf("%s: thread %d: %s: %w", r.t, th.tid, name, os.NewSyscallError("ptrace(PTRACE_SINGLESTEP)", err))
			}
			continue
		}
		if ws.StopSignal() == syscall.SIGTRAP {
			break
		}
		// Only SIGKILL and SIGSTOP get through the blocked mask; a
		// stop here means someone else is acting on the task.
		return 0, fmt.Errorf("%s: thread %d: %s: stopped by %v instead of the single-step trap", r.t, th.tid, name, ws.StopSignal())
	}
	var out unix.PtraceRegs
	if err := unix.PtraceGetRegs(th.tid, &out); err != nil {
		return 0, fmt.Errorf("%s: thread %d: %s: %w", r.t, th.tid, name, os.NewSyscallError("ptrace(PTRACE_GETREGS)", err))
	}
	if out.Rip != r.insn+2 {
		return 0, fmt.Errorf("%s: thread %d: %s: stepped to %#x, want %#x", r.t, th.tid, name, out.Rip, r.insn+2)
	}
	if ret := int64(out.Rax); ret < 0 && ret > -4096 {
		return 0, fmt.Errorf("%s: thread %d: remote %s: %w", r.t, th.tid, name, syscall.Errno(-ret))
	}
	return out.Rax, nil
}

// mapScratch maps the page the remote calls write their results into.
func (r *remote) mapScratch() error {
	addr, err := r.call(r.t.threads[0], unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		return err
	}
	r.scratch = addr
	return nil
}

// read copies n bytes of the scratch page.
func (r *remote) read(n int) ([]byte, error) {
	b := make([]byte, n)
	if err := readRemote(r.t.pid, r.scratch, b); err != nil {
		return nil, fmt.Errorf("%s: %w", r.t, err)
	}
	return b, nil
}

// finish unmaps the scratch page and puts back masks, registers and text.
func (r *remote) finish() error {
	var first error
	if r.scratch != 0 {
		if _, err := r.call(r.t.threads[0], unix.SYS_MUNMAP, r.scratch, 4096); err != nil {
			first = err
		}
		r.scratch = 0
	}
	for _, th := range r.t.threads {
		if m, ok := r.masks[th.tid]; ok {
			if _, err := ptrace(unix.PTRACE_SETSIGMASK, th.tid, 8, uintptr(unsafe.Pointer(&m))); err != nil && first == nil {
				first = fmt.Errorf("%s: thread %d: %w", r.t, th.tid, os.NewSyscallError("ptrace(PTRACE_SETSIGMASK)", err))
			}
			delete(r.masks, th.tid)
		}
	}
	if r.t.poke != nil {
		if err := r.t.poke.undo(r.t.threads[0].tid); err != nil && first == nil {
			first = fmt.Errorf("%s: putting back text at %#x: %w", r.t, r.t.poke.addr, err)
		}
		r.t.poke = nil
	}
	for _, th := range r.t.threads {
		if th.touched {
			if err := unix.PtraceSetRegs(th.tid, &th.regs); err != nil && first == nil {
				first = fmt.Errorf("%s: thread %d: %w", r.t, th.tid, os.NewSyscallError("ptrace(PTRACE_SETREGS)", err))
			}
			th.touched = false
		}
	}
	return first
}

func sysName(nr uintptr) string {
	switch nr {
	case unix.SYS_MMAP:
		return "mmap"
	case unix.SYS_MUNMAP:
		return "munmap"
	case unix.SYS_RT_SIGACTION:
		return "rt_sigaction"
	case unix.SYS_GETITIMER:
		return "getitimer"
	case unix.SYS_SIGALTSTACK:
		return "sigaltstack"
	case unix.SYS_PRCTL:
		return "prctl"
	case unix.SYS_BRK:
		return "brk"
	}
	return fmt.Sprintf("syscall %d", nr)
}
