package restore

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"

	"github.com/crest-restore/crest/restore/agent"
)

// Seccomp is a thread's seccomp state: strict mode, or filters.
type Seccomp struct {
	Mode uint32 // agent.SeccompMode*
	// Filters are the filter mode's programs in the order the thread
	// installed them, oldest first: the agent installs them in this order.
	Filters []SeccompFilter
}

// SeccompFilter is one classic BPF program of a thread's seccomp filters.
type SeccompFilter struct {
	Prog  []byte // struct sock_filter[]: 8 bytes an instruction
	Flags uint32 // SECCOMP_FILTER_FLAG_* to install it with
}

const (
	seccompFlagTSYNC      = 1 << 0 // SECCOMP_FILTER_FLAG_TSYNC
	seccompFlagLog        = 1 << 1
	seccompFlagSpecAllow  = 1 << 2
	seccompFlagListener   = 1 << 3 // SECCOMP_FILTER_FLAG_NEW_LISTENER
	seccompFlagTSYNCESRCH = 1 << 4
	bpfMaxInsns           = 4096 // BPF_MAXINSNS
	capSysAdmin           = 21
)

// loadSeccomp reads the seccomp state of t's threads: the mode from each
// thread's core, the filters from seccomp.img. CRIU's layout: the thread
// core's seccomp_filter is the index of the filter the thread installed
// first, and each filter's prev the index of the one installed after it.
// Images from before per-thread seccomp hold the mode and filter in the
// task core (old_seccomp_*): the leader takes them, with TSYNC, as CRIU
// does.
func (p *Plan) loadSeccomp(t *Task) error {
	tc := t.Threads[0].Core.GetTc()
	for i := range t.Threads {
		th := &t.Threads[i]
		file := fmt.Sprintf("core-%d.img", th.TID)
		c := th.Core.GetThreadCore()
		mode, first, hasFirst := uint32(c.GetSeccompMode()), c.GetSeccompFilter(), c.SeccompFilter != nil
		tsync := uint32(0)
		if i == 0 && tc.OldSeccompMode != nil {
			mode = uint32(tc.GetOldSeccompMode())
			first, hasFirst = tc.GetOldSeccompFilter(), tc.OldSeccompFilter != nil
			tsync = seccompFlagTSYNC
			file = fmt.Sprintf("core-%d.img (old_seccomp_mode)", t.PID)
		}
		switch mode {
		case agent.SeccompModeDisabled:
			continue
		case agent.SeccompModeStrict:
			th.Seccomp = Seccomp{Mode: mode}
			continue
		case agent.SeccompModeFilter:
		default:
			return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("thread %d: seccomp mode %d", th.TID, mode)}
		}
		if !hasFirst {
			return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("thread %d: seccomp filter mode without a filter", th.TID)}
		}
		all, err := p.seccompFilters()
		if err != nil {
			return &PlanError{PID: t.PID, Err: err}
		}
		var chain []SeccompFilter
		seen := map[uint32]bool{}
		for at, more := first, true; more; {
			if int(at) >= len(all) {
				return &PlanError{PID: t.PID, File: "seccomp.img", Msg: fmt.Sprintf("thread %d: filter %d of %d", th.TID, at, len(all))}
			}
			if seen[at] {
				return &PlanError{PID: t.PID, File: "seccomp.img", Msg: fmt.Sprintf("thread %d: filter %d comes twice in its chain", th.TID, at)}
			}
			seen[at] = true
			f := all[at]
			n := len(f.GetFilter())
			if n == 0 || n%8 != 0 || n/8 > bpfMaxInsns {
				return &PlanError{PID: t.PID, File: "seccomp.img", Msg: fmt.Sprintf("filter %d: %d bytes, not 1 to %d instructions of 8", at, n, bpfMaxInsns)}
			}
			flags := f.GetFlags() | tsync
			if flags&^(seccompFlagTSYNC|seccompFlagLog|seccompFlagSpecAllow|seccompFlagTSYNCESRCH) != 0 {
				return &PlanError{PID: t.PID, File: "seccomp.img", Msg: fmt.Sprintf("filter %d: flags %#x (a user notification listener, or unknown) are not supported", at, flags)}
			}
			chain = append(chain, SeccompFilter{Prog: f.GetFilter(), Flags: flags})
			at, more = f.GetPrev(), f.Prev != nil
		}
		th.Seccomp = Seccomp{Mode: mode, Filters: chain}
		// The agent installs the filters with the task's own
		// credentials, which the kernel allows with no_new_privs or
		// CAP_SYS_ADMIN (a task may have dropped it since its filters).
		if !t.Creds.NoNewPrivs && t.Creds.CapEff&(1<<capSysAdmin) == 0 {
			return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("thread %d: seccomp filters on a task without no_new_privs or CAP_SYS_ADMIN are not restored yet", th.TID)}
		}
	}
	return nil
}

// seccompFilters are the filters of seccomp.img, read on first use, once
// for the whole plan.
func (p *Plan) seccompFilters() ([]*seccomp.SeccompFilter, error) {
	if p.seccomp == nil {
		se, err := p.Dir.Seccomp()
		if err != nil {
			return nil, err
		}
		p.seccomp = se
		if p.seccomp == nil {
			p.seccomp = &seccomp.SeccompEntry{}
		}
	}
	return p.seccomp.GetSeccompFilters(), nil
}
