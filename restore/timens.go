package restore

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/kerndat"
	"github.com/crest-restore/crest/restore/agent"
)

// Clocks are a tree's monotonic and boot-time clocks at the dump, as its
// time namespace showed them (timens-ID.img).
type Clocks struct {
	Monotonic, Boottime time.Duration
}

// loadClocks reads the clocks the restored tree's time namespace must
// continue from, as CRIU does: a tree in the dumping criu's time namespace
// gets a new one anyway, from timens-0.img (no image: no time namespace);
// a tree with a namespace of its own (every task in it) gets it from that
// namespace's image, which must be there. Nested time namespaces are
// refused.
func (p *Plan) loadClocks() error {
	d := p.Dir
	rootIDs := d.Inventory.GetRootIds()
	first := p.Tasks[0]
	own := first.IDs != nil && first.IDs.TimeNsId != nil && rootIDs != nil && rootIDs.TimeNsId != nil &&
		first.IDs.GetTimeNsId() != rootIDs.GetTimeNsId()
	for _, t := range p.Tasks {
		if t.IDs == nil || first.IDs == nil || t.IDs.GetTimeNsId() == first.IDs.GetTimeNsId() {
			continue
		}
		return &PlanError{PID: t.PID, File: fmt.Sprintf("ids-%d.img", t.PID),
			Msg: fmt.Sprintf("time namespace %d, not the root's %d: nested time namespaces are not restored", t.IDs.GetTimeNsId(), first.IDs.GetTimeNsId())}
	}
	id := uint32(0)
	if own {
		id = first.IDs.GetTimeNsId()
	}
	te, err := d.TimensOf(id)
	if err != nil {
		return &PlanError{Err: err}
	}
	if te == nil {
		if own {
			return &PlanError{File: fmt.Sprintf("timens-%d.img", id), Msg: fmt.Sprintf("the tree's own time namespace %d has no clocks image", id)}
		}
		return nil
	}
	ts := func(sec, nsec uint64) time.Duration { return time.Duration(sec)*time.Second + time.Duration(nsec) }
	c := &Clocks{Monotonic: ts(te.GetMonotonic().GetTvSec(), te.GetMonotonic().GetTvNsec()),
		Boottime: ts(te.GetBoottime().GetTvSec(), te.GetBoottime().GetTvNsec())}
	if c.Monotonic <= 0 || c.Boottime <= 0 || te.GetMonotonic().GetTvNsec() >= 1e9 || te.GetBoottime().GetTvNsec() >= 1e9 {
		return &PlanError{File: fmt.Sprintf("timens-%d.img", id), Msg: fmt.Sprintf("clocks monotonic %v boottime %v", c.Monotonic, c.Boottime)}
	}
	p.Clocks, p.OwnTimeNS = c, own
	return nil
}

// timeOffsets are the offsets of the restored tree's time namespace: what
// makes its monotonic and boot-time clocks read, from now on, what they
// read at the dump, and go on from there. As CRIU computes them: the dumped
// clock minus the host's (this process's clock minus the offsets of its
// own namespace, which a new one starts with).
type timeOffsets struct {
	Monotonic, Boottime time.Duration
	// engineBoottime is the boot-time offset of the engine's own time
	// namespace (0 on the host's): the tasks' step clock takes off the
	// difference, to read the engine's clock.
	engineBoottime time.Duration
	// byRoot: the tree has a user namespace of its own, which must own
	// its time namespace (CRIU's dump refuses a tree with a namespace
	// of another owner): the root makes it there once its maps are
	// written and writes these offsets itself (agent fork.c
	// root_time_ns, from the plan's text), as CRIU's prepare_timens
	// does; the launcher makes none.
	byRoot bool
}

func computeTimeOffsets(c *Clocks) (timeOffsets, error) {
	b, err := os.ReadFile("/proc/self/timens_offsets")
	if err != nil {
		return timeOffsets{}, err
	}
	var prev timeOffsets
	prev.Monotonic, prev.Boottime, err = kerndat.ParseTimensOffsets(string(b))
	if err != nil {
		return timeOffsets{}, fmt.Errorf("/proc/self/timens_offsets: %w", err)
	}
	var mono, boot unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono); err != nil {
		return timeOffsets{}, err
	}
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot); err != nil {
		return timeOffsets{}, err
	}
	return timeOffsets{
		Monotonic:      c.Monotonic - (time.Duration(mono.Nano()) - prev.Monotonic),
		Boottime:       c.Boottime - (time.Duration(boot.Nano()) - prev.Boottime),
		engineBoottime: prev.Boottime,
	}, nil
}

// String is the offsets as timens_offsets takes them: seconds and
// nanoseconds 0 to 999999999.
func (o timeOffsets) String() string {
	line := func(name string, d time.Duration) string {
		sec, nsec := int64(d/time.Second), int64(d%time.Second)
		if nsec < 0 {
			sec, nsec = sec-1, nsec+int64(time.Second)
		}
		return fmt.Sprintf("%s %d %d\n", name, sec, nsec)
	}
	return line("monotonic", o.Monotonic) + line("boottime", o.Boottime)
}

// setTimeOffsets gives the time namespace the launcher pid unshared for its
// children (the root and so the whole tree) its offsets, before any task
// enters it; nothing when the root makes the namespace and sets them
// (byRoot): the launcher made none.
func setTimeOffsets(pid int, o timeOffsets) error {
	if o.byRoot {
		return nil
	}
	path := fmt.Sprintf("/proc/%d/timens_offsets", pid)
	if err := os.WriteFile(path, []byte(o.String()), 0); err != nil {
		return fmt.Errorf("time namespace offsets %q: %w", o.String(), err)
	}
	return nil
}

// planText is the plan's time_offsets: the offsets as the root writes
// them into the namespace it makes (byRoot), zero when it makes none.
func (o *timeOffsets) planText() (b [agent.TimeOffsetsLen]byte, err error) {
	if o == nil || !o.byRoot {
		return b, nil
	}
	s := o.String()
	if len(s) >= len(b) {
		return b, fmt.Errorf("time namespace offsets %q: longer than the plan's %d bytes", s, len(b)-1)
	}
	copy(b[:], s)
	return b, nil
}

// haveTimeNamespaces: the kernel has time namespaces (CONFIG_TIME_NS).
// crest check's probe (kerndat.TimeNamespace) also makes one; a restore
// only looks, and the launcher's unshare says the rest.
var haveTimeNamespaces = sync.OnceValue(func() bool {
	_, err := os.Stat("/proc/self/ns/time")
	return err == nil
})

// timeNamespace returns the offsets of the time namespace the restore
// gives the tree, nil for none: when the images have clocks to continue
// from and the kernel has time namespaces. A tree that had one of its own
// needs one: without, that is an error.
func timeNamespace(p *Plan) (*timeOffsets, error) {
	if p.Clocks == nil {
		return nil, nil
	}
	if !haveTimeNamespaces() {
		if p.OwnTimeNS {
			return nil, fmt.Errorf("the tree had a time namespace of its own, and this kernel has none (%s)", kerndat.TimeNamespaceName)
		}
		return nil, nil
	}
	o, err := computeTimeOffsets(p.Clocks)
	if err != nil {
		return nil, err
	}
	o.byRoot = p.User != nil
	return &o, nil
}
