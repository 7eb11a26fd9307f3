package kerndat

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// CheckpointCap reports whether crest may choose pids (set_tid), take
// another process's fds and set its mm fields: CAP_CHECKPOINT_RESTORE or
// CAP_SYS_ADMIN in the effective set.
var CheckpointCap = NewProbe(CheckpointCapName, Restore|Dump, func() Feature {
	return probeCheckpointCap(0)
})

// SysResourceCap reports CAP_SYS_RESOURCE. Its absence is information, not
// a failure: without it a restore can not raise a hard rlimit above the
// current one or grow a pipe past fs.pipe-max-size.
var SysResourceCap = NewProbe(SysResourceCapName, 0, func() Feature {
	return probeSysResourceCap(0)
})

// effectiveCaps returns the effective capability set of thread tid (0: the
// calling thread; capabilities belong to threads).
func effectiveCaps(tid int) (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3, Pid: int32(tid)}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, fmt.Errorf("capget(%d): %w", tid, err)
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}

func hasCap(set uint64, c int) bool { return set&(1<<uint(c)) != 0 }

func probeCheckpointCap(tid int) Feature {
	eff, err := effectiveCaps(tid)
	if err != nil {
		return Missing("%s", ErrText(err))
	}
	cr, admin := hasCap(eff, unix.CAP_CHECKPOINT_RESTORE), hasCap(eff, unix.CAP_SYS_ADMIN)
	switch {
	case cr && admin:
		return OK("capget(%d): effective set %#x has CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN", tid, eff)
	case cr:
		return OK("capget(%d): effective set %#x has CAP_CHECKPOINT_RESTORE (not CAP_SYS_ADMIN)", tid, eff)
	case admin:
		return OK("capget(%d): effective set %#x has CAP_SYS_ADMIN (not CAP_CHECKPOINT_RESTORE)", tid, eff)
	}
	return Missing("capget(%d): effective set %#x has neither CAP_CHECKPOINT_RESTORE nor CAP_SYS_ADMIN", tid, eff)
}

func probeSysResourceCap(tid int) Feature {
	eff, err := effectiveCaps(tid)
	if err != nil {
		return Missing("%s", ErrText(err))
	}
	if hasCap(eff, unix.CAP_SYS_RESOURCE) {
		return OK("capget(%d): effective set %#x has CAP_SYS_RESOURCE", tid, eff)
	}
	bounding := "it is not in the bounding set either"
	if in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, unix.CAP_SYS_RESOURCE, 0, 0, 0); err == nil && in == 1 {
		bounding = "it is in the bounding set"
	}
	return Missing("capget(%d): effective set %#x lacks CAP_SYS_RESOURCE (%s): "+
		"a restore can not raise hard rlimits or grow pipes past fs.pipe-max-size", tid, eff, bounding)
}
