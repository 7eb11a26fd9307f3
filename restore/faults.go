package restore

import (
	"fmt"
	"strings"

	"github.com/crest-restore/crest/restore/agent"
)

// Fault breaks one property of a restore on purpose, so that the
// kernel-side monitor's checks are shown to catch what they claim to
// (DESIGN: a check that can not fail is worthless). Never for real
// restores: a faulted restore may fail, hang until its stage timeout, or
// run on wrong.
type Fault uint32

const (
	// FaultNoSetTID forks the plan's last task without set_tid, before
	// its siblings: it gets the lowest free pid, not its own (PID
	// assignment); the sibling whose pid it took then fails with EEXIST.
	FaultNoSetTID Fault = agent.FaultNoSetTID
	// FaultNoWait makes the root go through RESTORE_SIGCHLD without
	// arriving or waiting, so it counts out of RESTORE_CREDS, 20 ms late,
	// before the switch to it (stage synchronization: nobody leaves
	// early); the restore then times out in RESTORE_CREDS.
	FaultNoWait Fault = agent.FaultNoWait
	// FaultEarlySwitch makes the engine switch from RESTORE_SIGCHLD to
	// RESTORE_CREDS with one arrival missing (stage synchronization:
	// every participant arrives before the switch): the plan's last
	// thread arrives 20 ms late and the engine polls for the stage.
	FaultEarlySwitch Fault = agent.FaultEarlySwitch
	// FaultDropThread leaves out each task's last thread (PID assignment
	// of threads; the RESTORE stage then never completes).
	FaultDropThread Fault = agent.FaultDropThread
)

var faultNames = []struct {
	f    Fault
	name string
}{
	{FaultNoSetTID, "no-set-tid"}, {FaultNoWait, "no-wait"},
	{FaultEarlySwitch, "early-switch"}, {FaultDropThread, "drop-thread"},
}

// ParseFault returns the fault named as the monitor's tests name them
// (no-set-tid, no-wait, early-switch, drop-thread).
func ParseFault(name string) (Fault, error) {
	for _, f := range faultNames {
		if f.name == name {
			return f.f, nil
		}
	}
	return 0, fmt.Errorf("restore: unknown fault %q", name)
}

func (f Fault) String() string {
	var names []string
	for _, n := range faultNames {
		if f&n.f != 0 {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}
