package dump

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
)

// Seccomp state, dumped as CRIU 4.2 does (criu/seccomp.c): each thread's
// mode in its core, the filters of every thread of the tree in the one
// entry of seccomp.img, linked into one chain per thread.
//
// The kernel numbers a thread's filters from its oldest, the first
// installed (PTRACE_SECCOMP_GET_FILTER index 0), to its newest. In the
// image, each thread's filters are written newest first; the core's
// seccomp_filter is the index of the oldest, and each filter's prev the
// index of the one installed right after it (the entry before it), the
// newest having none. The restore installs from seccomp_filter along prev,
// so in the order they were installed. Threads come in the order of their
// host tids, as CRIU keeps them in a tree by real tid.

const (
	ptraceSeccompGetFilter   = 0x420c
	ptraceSeccompGetMetadata = 0x420d
	// ptraceOSuspendSeccomp lets a tracer with CAP_SYS_ADMIN run
	// syscalls in the tracee that its seccomp mode would refuse; it lasts
	// until the tracer detaches.
	ptraceOSuspendSeccomp = 1 << 21

	bpfMaxInsns      = 4096 // BPF_MAXINSNS
	sockFilterSize   = 8    // struct sock_filter {u16 code; u8 jt, jf; u32 k}
	seccompFlagTSYNC = 1    // SECCOMP_FILTER_FLAG_TSYNC

	bpfClassMask        = 0x07
	bpfRet              = 0x06
	bpfSrcMask          = 0x18 // BPF_RVAL: BPF_K, BPF_X or BPF_A
	bpfK                = 0x00
	seccompRetActFull   = 0xffff0000
	seccompRetUserNotif = 0x7fc00000
)

// threadSeccomp is one thread's seccomp state.
type threadSeccomp struct {
	// mode is the thread's Seccomp: at the freeze, as the core writes it
	// (CRIU's SeccompMode: 0 disabled, 1 strict, 2 filter); a thread whose
	// filters its leader restores with TSYNC is written disabled.
	mode uint32
	// chain is the thread's filters, oldest first.
	chain []seccompFilter
	// pos is the index in seccomp.img of the oldest filter of chain.
	pos uint32
}

type seccompFilter struct {
	prog  []byte // struct sock_filter[], as installed
	flags uint32 // SECCOMP_FILTER_FLAG_*
}

// suspendSeccomp reads the status of every thread of t, all of them
// frozen: its tid in the root's pid namespace (t's pid too, from the
// leader's), and its seccomp mode. It has the kernel let the dumper's
// syscalls through in the threads that have a mode, as compel does. Doing
// it once the whole task is frozen leaves no thread a TSYNC could give
// filters to afterwards. Only those threads: the option needs
// CAP_SYS_ADMIN and a dumper not in seccomp itself, which the dump of a
// tree without seccomp does not.
func suspendSeccomp(t *task) error {
	for _, th := range t.threads {
		st, err := readStatus(procPath(t.pid, "task", strconv.Itoa(th.tid), "status"))
		if err != nil {
			return fmt.Errorf("%s: thread %d: %w", t, th.tid, err)
		}
		tid, err := st.last("NSpid")
		if err != nil {
			return fmt.Errorf("%s: thread %d: status: %w", t, th.tid, err)
		}
		th.nsTid = uint32(tid)
		mode, err := seccompMode(st)
		if err != nil {
			return fmt.Errorf("%s: thread %d: status: %w", t, th.tid, err)
		}
		th.seccomp = threadSeccomp{mode: mode}
		if mode == 0 {
			continue
		}
		if err := unix.PtraceSetOptions(th.tid, ptraceOSuspendSeccomp); err != nil {
			return fmt.Errorf("%s: thread %d in seccomp mode %d: %w", t, th.tid, mode,
				os.NewSyscallError("ptrace(PTRACE_SETOPTIONS, PTRACE_O_SUSPEND_SECCOMP)", err))
		}
	}
	return nil
}

// seccompMode is the Seccomp: line of a status file; a kernel without
// seccomp has none.
func seccompMode(st procStatus) (uint32, error) {
	v, ok := st["Seccomp"]
	if !ok {
		return 0, nil
	}
	switch v {
	case "0", "1", "2":
		return uint32(v[0] - '0'), nil
	}
	return 0, fmt.Errorf("status line Seccomp: %q is not a mode crest knows", v)
}

// dumpSeccomp reads the filters of every thread in filter mode, keeps only
// the leader's of a process whose threads all have the same chain (with
// TSYNC), lays them out in seccomp.img's entry and gives each thread the
// index of its chain.
func dumpSeccomp(tr *tree) (*seccomp.SeccompEntry, error) {
	var withFilters []*thread
	for _, t := range tr.tasks {
		if t.dead != nil {
			continue // no filters left to read
		}
		for _, th := range t.threads {
			if th.seccomp.mode != uint32(criu_core.SeccompMode_filter) {
				continue
			}
			chain, err := readFilters(th.tid)
			if err != nil {
				return nil, fmt.Errorf("%s: thread %d: %w", t, th.nsTid, err)
			}
			for i, f := range chain {
				if notifies(f.prog) {
					// The listener is an fd of some process, the
					// restore would have none: syscalls the filter
					// hands to it would fail with ENOSYS instead.
					return nil, &UnsupportedError{Task: int(t.nsPid),
						Resource: fmt.Sprintf("thread %d: seccomp filter %d", th.nsTid, i),
						Why:      "filters that notify a user-space listener (SECCOMP_RET_USER_NOTIF) are not supported"}
				}
			}
			th.seccomp.chain = chain
		}
		useTSYNC(t)
		for _, th := range t.threads {
			if len(th.seccomp.chain) > 0 {
				withFilters = append(withFilters, th)
			}
		}
	}
	slices.SortFunc(withFilters, func(a, b *thread) int { return a.tid - b.tid })
	return layOutFilters(withFilters), nil
}

// useTSYNC: when every thread of t has the leader's chain, the filters
// may have come from one TSYNC install, or not; the kernel does not say.
// Like CRIU, crest then keeps the leader's chain only, with TSYNC on each
// filter, and writes the other threads disabled: they get the chain from
// the leader at the restore. Restoring TSYNC filters without the flag
// would make a later TSYNC install of the program's fail. A process of one
// thread qualifies.
func useTSYNC(t *task) {
	lead := &t.threads[0].seccomp
	if lead.mode != uint32(criu_core.SeccompMode_filter) {
		return
	}
	for _, th := range t.threads[1:] {
		s := &th.seccomp
		if s.mode != lead.mode || len(s.chain) != len(lead.chain) {
			return
		}
		for i := range s.chain {
			if string(s.chain[i].prog) != string(lead.chain[i].prog) {
				return
			}
		}
	}
	for i := range lead.chain {
		lead.chain[i].flags |= seccompFlagTSYNC
	}
	for _, th := range t.threads[1:] {
		th.seccomp = threadSeccomp{}
	}
}

// layOutFilters writes the chains of threads, in that order, into one
// SeccompEntry: each thread's newest first, each filter's prev the index
// of the one installed after it, and the thread's pos its oldest.
func layOutFilters(threads []*thread) *seccomp.SeccompEntry {
	e := &seccomp.SeccompEntry{}
	for _, th := range threads {
		chain := th.seccomp.chain
		for i := len(chain) - 1; i >= 0; i-- {
			f := &seccomp.SeccompFilter{Filter: chain[i].prog, Flags: proto.Uint32(chain[i].flags)}
			if i != len(chain)-1 {
				f.Prev = proto.Uint32(uint32(len(e.SeccompFilters) - 1))
			}
			e.SeccompFilters = append(e.SeccompFilters, f)
		}
		th.seccomp.pos = uint32(len(e.SeccompFilters) - 1)
	}
	return e
}

// setSeccomp writes th's mode, and its chain's index for filter mode,
// into its thread core; a disabled thread has neither, as in CRIU.
func setSeccomp(tc *criu_core.ThreadCoreEntry, th *thread) {
	s := th.seccomp
	if s.mode == uint32(criu_core.SeccompMode_disabled) {
		return
	}
	tc.SeccompMode = criu_core.SeccompMode(s.mode).Enum()
	if s.mode == uint32(criu_core.SeccompMode_filter) {
		tc.SeccompFilter = proto.Uint32(s.pos)
	}
}

// readFilters returns the filters of the frozen thread tid, oldest first,
// with the flags the kernel keeps of them.
func readFilters(tid int) ([]seccompFilter, error) {
	buf := make([]byte, bpfMaxInsns*sockFilterSize)
	metadata := true
	var chain []seccompFilter
	for i := 0; ; i++ {
		n, err := ptrace(ptraceSeccompGetFilter, tid, uintptr(i), uintptr(unsafe.Pointer(&buf[0])))
		if errors.Is(err, syscall.ENOENT) {
			return chain, nil
		}
		if err != nil {
			return nil, fmt.Errorf("filter %d: %w", i, os.NewSyscallError("ptrace(PTRACE_SECCOMP_GET_FILTER)", err))
		}
		if n == 0 || n > bpfMaxInsns {
			return nil, fmt.Errorf("filter %d: PTRACE_SECCOMP_GET_FILTER says %d instructions", i, n)
		}
		f := seccompFilter{prog: slices.Clone(buf[:n*sockFilterSize])}
		if metadata {
			// struct seccomp_metadata
			md := struct{ FilterOff, Flags uint64 }{FilterOff: uint64(i)}
			_, err := ptrace(ptraceSeccompGetMetadata, tid, unsafe.Sizeof(md), uintptr(unsafe.Pointer(&md)))
			switch {
			case errors.Is(err, syscall.EIO):
				metadata = false // a kernel before 4.16: no flags to read
			case err != nil:
				return nil, fmt.Errorf("filter %d: %w", i, os.NewSyscallError("ptrace(PTRACE_SECCOMP_GET_METADATA)", err))
			default:
				f.flags = uint32(md.Flags)
			}
		}
		chain = append(chain, f)
	}
}

// notifies reports whether prog can return SECCOMP_RET_USER_NOTIF: a
// "ret #k" of that action. The kernel tells neither whether a filter has
// a listener nor where it is, so a filter that may use one is refused.
// A "ret a" can return anything; no seccomp filter generator emits one
// for this action, and it is not looked into.
func notifies(prog []byte) bool {
	for i := 0; i+sockFilterSize <= len(prog); i += sockFilterSize {
		code, k := le16(prog[i:]), le32(prog[i+4:])
		if code&bpfClassMask == bpfRet && code&bpfSrcMask == bpfK && k&seccompRetActFull == seccompRetUserNotif {
			return true
		}
	}
	return false
}
