package dump

import (
	"errors"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/internal/procfs"
)

// TestSeizeEnded: seize tells a zombie (errZombie) and a task that is
// gone (ESRCH) from one it may not trace (EPERM), on real children of the
// test: one that exited and was not waited for, one that was reaped, one
// that runs.
func TestSeizeEnded(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := func(t *testing.T, args ...string) *exec.Cmd {
		cmd := exec.Command(args[0], args[1:]...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	zombie := func(t *testing.T) int {
		cmd := start(t, "true")
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := procfs.ReadStat(procPath(cmd.Process.Pid, "stat"))
			if err != nil {
				t.Fatal(err)
			}
			if st.State == 'Z' {
				return cmd.Process.Pid
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d is no zombie after 10s", cmd.Process.Pid)
			}
			time.Sleep(time.Millisecond)
		}
	}
	gone := func(t *testing.T) int {
		cmd := start(t, "true")
		cmd.Wait()
		return cmd.Process.Pid
	}
	running := func(t *testing.T) int { return start(t, "sleep", "100").Process.Pid }
	for _, tc := range []struct {
		name string
		pid  func(*testing.T) int
		// seize, and exiting asked directly after an EPERM
		seize, exiting error
	}{
		{"zombie", zombie, errZombie, errZombie},
		{"gone", gone, syscall.ESRCH, syscall.ESRCH},
		{"running", running, nil, syscall.EPERM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid := tc.pid(t)
			err := seize(pid)
			if err == nil {
				t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
			}
			if tc.seize == nil && err != nil || tc.seize != nil && !errors.Is(err, tc.seize) {
				t.Errorf("seize(%d): %v, want %v", pid, err, tc.seize)
			}
			if err := exiting(pid, syscall.EPERM); !errors.Is(err, tc.exiting) {
				t.Errorf("exiting(%d, EPERM): %v, want %v", pid, err, tc.exiting)
			}
		})
	}
}
