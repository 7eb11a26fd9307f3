package restore

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
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

// TestFinishLeavesOtherChildren: a child that another goroutine of the
// process started, ended and not yet waited for while a restore finishes,
// is not the restore's: finishing must neither fail on it nor reap it
// (finishing waits only for its own thread's tracees, __WNOTHREAD).
func TestFinishLeavesOtherChildren(t *testing.T) {
	needRoot(t)
	installFixture(t, "counter")
	started, reap, reaped := make(chan *exec.Cmd), make(chan struct{}), make(chan error)
	go func() {
		// forked from this goroutine's own thread, which no other
		// goroutine gets meanwhile
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd := exec.Command("/bin/true")
		if err := cmd.Start(); err != nil {
			reaped <- err
			return
		}
		started <- cmd
		<-reap
		reaped <- cmd.Wait()
	}()
	var cmd *exec.Cmd
	select {
	case cmd = <-started:
	case err := <-reaped:
		t.Fatal(err)
	}
	// a zombie, waitable, before the restore begins
	for i := 0; ; i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), ") Z ") {
			break
		}
		if i == 1000 {
			t.Fatalf("/bin/true (%d) did not end", cmd.Process.Pid)
		}
		time.Sleep(time.Millisecond)
	}
	p := loadPlan(t, "counter")
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Errorf("restore with another child of the process ended: %v", err)
	} else {
		abortAtCleanup(t, r, p)
	}
	close(reap)
	if err := <-reaped; err != nil {
		t.Errorf("the other child's own wait: %v", err)
	}
}
