package restore

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

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
	// FaultWrongNS makes the engine, in PREPARE_NAMESPACES, join decoy
	// namespaces instead of the root's (namespaces: the engine's setns
	// joins the tree's own): it fills the decoys, which vanish once it
	// goes back, and the root's stay as they were born
	// (joinDecoyNamespaces). The engine alone has it: its bits start
	// above the agent's.
	FaultWrongNS Fault = 0x100
	// FaultTimeNSByLauncher makes the time namespace of a tree with a
	// user namespace of its own the old way, in the launcher, before the
	// root's user namespace exists, instead of by the root in it
	// (namespaces: the root makes and enters it itself; the namespace
	// is then crest's user namespace's, which CRIU's dump refuses).
	// The engine alone has it.
	FaultTimeNSByLauncher Fault = 0x200
	// FaultNoCgroupNS leaves out the root's unshare of the tree's
	// cgroup namespace (namespaces: the tasks the root forks are born
	// in a cgroup namespace it made; they are then in crest's). The
	// engine alone has it.
	FaultNoCgroupNS Fault = 0x400
)

var faultNames = []struct {
	f    Fault
	name string
}{
	{FaultNoSetTID, "no-set-tid"}, {FaultNoWait, "no-wait"},
	{FaultEarlySwitch, "early-switch"}, {FaultDropThread, "drop-thread"},
	{FaultWrongNS, "wrong-ns"}, {FaultTimeNSByLauncher, "timens-by-launcher"},
	{FaultNoCgroupNS, "no-cgroupns"},
}

// ParseFault returns the fault named as the monitor's tests name them
// (no-set-tid, no-wait, early-switch, drop-thread, wrong-ns,
// timens-by-launcher, no-cgroupns).
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

// decoyKinds are the /proc/PID/ns/ names of the namespace types the engine
// may fill.
var decoyKinds = []struct {
	flag int
	name string
}{{unix.CLONE_NEWUTS, "uts"}, {unix.CLONE_NEWIPC, "ipc"}, {unix.CLONE_NEWNET, "net"}}

// joinDecoyNamespaces stands in for joinTreeNamespaces under FaultWrongNS:
// the calling thread (locked, as prepareNamespaces' is) unshares new
// namespaces of the types in flags, the decoys, holds them by nsfs fds,
// goes back to the engine's and then joins the decoys with setns on those
// fds instead of the root's pidfd. joinTreeNamespaces' check that the
// namespaces joined are the root's is off; the one that they are not the
// engine's stays: a fault must never write into the engine's (the host's)
// namespaces. The decoys end when the thread goes back to its own and
// the fds are closed, with what was written into them.
func joinDecoyNamespaces(_, pid, flags int) (err error) {
	type ns struct {
		flag          int
		name          string
		engine, decoy int // fds
		engineIno     uint64
	}
	var all []*ns
	defer func() {
		for _, n := range all {
			for _, fd := range []int{n.engine, n.decoy} {
				if fd >= 0 {
					unix.Close(fd)
				}
			}
		}
	}()
	open := func(kind string) (int, uint64, error) {
		path := "/proc/thread-self/ns/" + kind
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, 0, &os.PathError{Op: "open", Path: path, Err: err}
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, 0, &os.PathError{Op: "fstat", Path: path, Err: err}
		}
		return fd, st.Ino, nil
	}
	rest := flags
	for _, k := range decoyKinds {
		rest &^= k.flag
	}
	if rest != 0 {
		return fmt.Errorf("fault wrong-ns: no decoys for namespace types %#x of the root %d", rest, pid)
	}
	for _, k := range decoyKinds {
		if flags&k.flag == 0 {
			continue
		}
		n := &ns{flag: k.flag, name: k.name, engine: -1, decoy: -1}
		all = append(all, n)
		if n.engine, n.engineIno, err = open(k.name); err != nil {
			return err
		}
	}
	if err := unix.Unshare(flags); err != nil {
		return fmt.Errorf("fault wrong-ns: unshare(%#x) for decoys of the root %d's namespaces: %w", flags, pid, os.NewSyscallError("unshare", err))
	}
	var errs []error
	for _, n := range all {
		var ino uint64
		if n.decoy, ino, err = open(n.name); err != nil {
			errs = append(errs, err)
		} else if ino == n.engineIno {
			errs = append(errs, fmt.Errorf("fault wrong-ns: the decoy %s namespace is the engine's %d", n.name, ino))
		}
	}
	for _, n := range all {
		if err := unix.Setns(n.engine, n.flag); err != nil {
			errs = append(errs, fmt.Errorf("fault wrong-ns: back to the engine's %s namespace: %w", n.name, os.NewSyscallError("setns", err)))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, n := range all {
		if err := unix.Setns(n.decoy, n.flag); err != nil {
			return fmt.Errorf("fault wrong-ns: setns(decoy %s namespace): %w", n.name, os.NewSyscallError("setns", err))
		}
		now, err := nsIno("/proc/thread-self/ns/" + n.name)
		if err != nil {
			return err
		}
		if now == n.engineIno {
			return fmt.Errorf("fault wrong-ns: %s namespace: still the engine's %d", n.name, now)
		}
	}
	return nil
}
