package kerndat

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPidfdOpenNoSuchProcess(t *testing.T) {
	f := probePidfdOpen(1 << 30) // above any pid_max
	t.Log(f)
	if f.OK || !strings.Contains(f.Reason, "pidfd_open(1073741824): no such process (ESRCH)") {
		t.Errorf("got %v", f)
	}
}

// TestPidfdGetfdDeadProcess takes an fd through the pidfd of a child that
// has exited and been reaped: the kernel must refuse.
func TestPidfdGetfdDeadProcess(t *testing.T) {
	pid, pidfd, err := cloneExit(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	f := probePidfdGetfd(pidfd, 0)
	t.Log(f)
	if f.OK || !strings.Contains(f.Reason, "pidfd_getfd(pidfd, 0): no such process (ESRCH)") {
		t.Errorf("got %v", f)
	}
}
