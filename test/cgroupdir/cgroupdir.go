// Package cgroupdir removes the cgroups tests make: what is still in them
// is killed first, and a cgroup that is still busy (a task killed but not
// gone yet) is tried again.
package cgroupdir

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Remove removes the cgroup dir and every cgroup below it, children
// first, killing the processes in each; it fails the test for one still
// there after 10 s. A dir that is gone already is no error.
func Remove(t testing.TB, dir string) {
	t.Helper()
	var dirs []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.Reverse(dirs)
	for _, d := range dirs {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			b, _ := os.ReadFile(d + "/cgroup.procs")
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			err := syscall.Rmdir(d)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("removing test cgroup %s: %v", d, err)
				break
			}
		}
	}
}
