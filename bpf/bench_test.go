package bpf

import (
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BenchmarkOpenClose: what the monitor costs a restore before and after
// it: load (BTF, verifier), attach, and Close (detach, drain, free).
func BenchmarkOpenClose(b *testing.B) {
	var load, attach, detach, closing time.Duration
	for b.Loop() {
		m, err := Open(Options{})
		if err != nil {
			b.Fatal(err)
		}
		begin := time.Now()
		if err := m.Close(); err != nil {
			b.Fatal(err)
		}
		closing += time.Since(begin)
		t := m.Timing()
		load += t.Load
		attach += t.Attach
		detach += t.Detach
	}
	n := float64(b.N)
	b.ReportMetric(float64(load.Microseconds())/n, "load-us/op")
	b.ReportMetric(float64(attach.Microseconds())/n, "attach-us/op")
	b.ReportMetric(float64(detach.Microseconds())/n, "detach-us/op")
	b.ReportMetric(float64(closing.Microseconds())/n, "close-us/op")
}

// BenchmarkFutexWake: one shared FUTEX_WAKE (nobody waiting) without the
// monitor, with it attached but this process untracked (what every other
// process on the machine pays), and tracked (two events per call).
func BenchmarkFutexWake(b *testing.B) {
	var word uint32
	wake := func(b *testing.B) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for b.Loop() {
			unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&word)), FutexWake, 1, 0, 0, 0)
		}
	}
	b.Run("no-monitor", wake)
	b.Run("untracked", func(b *testing.B) {
		m := openMonitor(b, Options{})
		wake(b)
		m.Close()
	})
	b.Run("tracked", func(b *testing.B) {
		m := openMonitor(b, Options{})
		if err := m.Track(os.Getpid()); err != nil {
			b.Fatal(err)
		}
		wake(b)
		m.Untrack(os.Getpid())
		m.Close()
		b.ReportMetric(float64(m.Dropped()), "dropped")
	})
}
