package restore

import (
	"testing"
	"time"
)

// TestBoottime: the engine's boottime (the vDSO's monotonic clock plus a
// calibrated offset) reads CLOCK_BOOTTIME as the system call does, to
// within the calibration's error, also long after the calibration.
func TestBoottime(t *testing.T) {
	calibrateBoottime()
	const slack = 2000 // ns: the calibration pairs readings a few tens of ns apart
	for i := range 5 {
		if i == 4 {
			time.Sleep(50 * time.Millisecond)
		}
		before := rawBoottime()
		got := boottime()
		after := rawBoottime()
		if before == 0 || after == 0 {
			t.Fatal("clock_gettime(CLOCK_BOOTTIME) failed")
		}
		if got+slack < before || got > after+slack {
			t.Errorf("boottime %d, the system call read %d before and %d after", got, before, after)
		}
	}
	// a restore calibrates anew; without one, the first call does
	bootClock.Store(nil)
	if b, got := rawBoottime(), boottime(); got+slack < b {
		t.Errorf("uncalibrated boottime %d, below the system call's %d", got, b)
	}
}
