package restore

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// Rlimit is one resource limit of a task (CRIU's rlimit_entry; the index
// in Task.Rlimits is the RLIMIT_* number).
type Rlimit struct{ Cur, Max uint64 }

// setRlimits gives every task its limits from outside with prlimit(2), as
// the engine can do it and the agent need not. It runs once the tasks'
// memory is restored, so that no limit (RLIMIT_AS, RLIMIT_STACK ...) gets in
// the restorer's way. Like CRIU, a limit the engine may not raise (EPERM:
// a hard limit above its own, without CAP_SYS_RESOURCE) is a warning, not a
// failure; it is returned in skipped.
//
// The tasks start with the engine's limits (inherited), read before the
// launch, so that only the limits that differ cost a call here, in the
// middle of the stages.
func (r *Restore) setRlimits() (skipped []string, err error) {
	for _, t := range r.plan.Tasks {
		host := r.hostPIDs[t.PID]
		for res, want := range t.Rlimits {
			cur, known := r.inherited.get(res)
			if !known {
				if err := prlimit(host, res, nil, &cur); err != nil {
					return skipped, fmt.Errorf("task %d: rlimit %d: %w", t.PID, res, err)
				}
			}
			if cur == want {
				continue
			}
			if err := prlimit(host, res, &want, nil); err != nil {
				if errors.Is(err, syscall.EPERM) {
					skipped = append(skipped, fmt.Sprintf("task %d: rlimit %d: %v", t.PID, res, err))
					continue
				}
				return skipped, fmt.Errorf("task %d: rlimit %d: %w", t.PID, res, err)
			}
		}
	}
	return skipped, nil
}

// inheritedRlimits are the limits every task starts with: the engine's
// own, which the launcher's exec and every fork keep. RLIMIT_NOFILE is not
// known: Go's runtime raised its own soft limit at start-up and puts the
// original back in the processes it starts.
type inheritedRlimits struct {
	lim   []Rlimit
	known []bool
}

// readInheritedRlimits reads the engine's first n limits.
func readInheritedRlimits(n int) inheritedRlimits {
	in := inheritedRlimits{lim: make([]Rlimit, n), known: make([]bool, n)}
	for res := range n {
		if res != syscall.RLIMIT_NOFILE && prlimit(0, res, nil, &in.lim[res]) == nil {
			in.known[res] = true
		}
	}
	return in
}

func (in inheritedRlimits) get(res int) (Rlimit, bool) {
	if res < len(in.known) && in.known[res] {
		return in.lim[res], true
	}
	return Rlimit{}, false
}

func prlimit(pid, resource int, set, get *Rlimit) error {
	_, _, errno := syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), uintptr(resource),
		uintptr(unsafe.Pointer(set)), uintptr(unsafe.Pointer(get)), 0, 0)
	if errno != 0 {
		return os.NewSyscallError("prlimit64", errno)
	}
	return nil
}
