package restore

import (
	"syscall"
	"testing"
	"unsafe"
)

func sigchldAction(t *testing.T) kernelSigaction {
	t.Helper()
	var a kernelSigaction
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGCHLD), 0,
		uintptr(unsafe.Pointer(&a)), 8, 0, 0); e != 0 {
		t.Fatal(e)
	}
	return a
}

// TestQuietStops: finishing's SA_NOCLDSTOP is on while it steps and the
// engine's SIGCHLD action is exactly what it was afterwards.
func TestQuietStops(t *testing.T) {
	before := sigchldAction(t)
	if before.flags&saNoCldStop != 0 {
		t.Fatalf("SA_NOCLDSTOP already set: %+v", before)
	}
	restore := quietStops()
	during := sigchldAction(t)
	if during.flags&saNoCldStop == 0 || during.handler != before.handler || during.mask != before.mask {
		t.Fatalf("during finishing: %+v, before: %+v", during, before)
	}
	restore()
	if after := sigchldAction(t); after != before {
		t.Fatalf("after finishing: %+v, before: %+v", after, before)
	}
}
