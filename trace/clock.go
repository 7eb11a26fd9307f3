package trace

import (
	"time"

	"golang.org/x/sys/unix"
)

// Clock converts CLOCK_BOOTTIME nanoseconds to wall time. Offset is
// REALTIME - BOOTTIME, read between two REALTIME readings; Uncertainty is
// half the distance between them, so the offset is good to within it.
type Clock struct {
	Offset      int64
	Uncertainty int64
}

// SampleClock reads REALTIME, BOOTTIME, REALTIME n times and keeps the
// tightest triple: a preemption between the readings only widens one of
// them.
func SampleClock(n int) Clock {
	best := Clock{Uncertainty: -1}
	for i := 0; i < max(n, 1); i++ {
		var r1, b, r2 unix.Timespec
		// These cannot fail for valid clock ids and pointers.
		_ = unix.ClockGettime(unix.CLOCK_REALTIME, &r1)
		_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &b)
		_ = unix.ClockGettime(unix.CLOCK_REALTIME, &r2)
		lo, hi := r1.Nano(), r2.Nano()
		if hi < lo { // REALTIME stepped back in between; try again
			continue
		}
		c := Clock{Offset: lo + (hi-lo)/2 - b.Nano(), Uncertainty: (hi - lo + 1) / 2}
		best = best.Tighter(c)
	}
	return best
}

// Tighter returns whichever of c and d has the smaller uncertainty (a
// Clock with negative uncertainty is unset).
func (c Clock) Tighter(d Clock) Clock {
	if c.Uncertainty < 0 || (d.Uncertainty >= 0 && d.Uncertainty < c.Uncertainty) {
		return d
	}
	return c
}

// Wall returns the wall time of boot-time instant ns.
func (c Clock) Wall(ns uint64) time.Time {
	return time.Unix(0, int64(ns)+c.Offset)
}

// Boottime reads CLOCK_BOOTTIME in nanoseconds.
func Boottime() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}
