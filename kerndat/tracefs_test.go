package kerndat

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTracefsMounted mounts a tracefs in a private mount namespace of a
// throw-away thread (the system's mounts stay as they are) and probes it.
func TestTracefsMounted(t *testing.T) {
	dir := t.TempDir()
	var f Feature
	var setupErr error
	onThrowawayThread(func() {
		if setupErr = unix.Unshare(unix.CLONE_NEWNS); setupErr != nil {
			return
		}
		if setupErr = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); setupErr != nil {
			return
		}
		// The system may have tracefs mounted already (CI mounts it):
		// hide it in this namespace so that the probe can only find ours.
		for _, m := range []string{tracefsDir, "/sys/kernel/debug/tracing"} {
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
				setupErr = err
				return
			}
		}
		if setupErr = unix.Mount("nodev", dir, "tracefs", 0, ""); setupErr != nil {
			return
		}
		f = probeTracefs("/proc/thread-self/mountinfo", tracefsDir)
		setupErr = unix.Unmount(dir, 0)
	})
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	t.Log(f)
	if !f.OK || !strings.Contains(f.Reason, "tracefs mounted at "+dir) {
		t.Errorf("got %v, want ok at %s", f, dir)
	}
}

func TestTracefsMissing(t *testing.T) {
	noTracefs := filepath.Join(t.TempDir(), "mountinfo")
	line := "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw\n"
	if err := os.WriteFile(noTracefs, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	notTracefs := t.TempDir()
	tests := []struct {
		name     string
		f        Feature
		contains []string
	}{
		{"not in mountinfo", probeTracefs(noTracefs, tracefsDir),
			[]string{"not mounted (no tracefs in " + noTracefs + ")", "mount -t tracefs nodev /sys/kernel/tracing"}},
		{"no mountinfo", probeTracefs("/nonexistent/mountinfo", tracefsDir),
			[]string{"open /nonexistent/mountinfo: no such file or directory (ENOENT)"}},
		{"not a tracefs", tracefsAt(notTracefs),
			[]string{notTracefs + " is not tracefs", "mount -t tracefs nodev " + notTracefs}},
		{"no such directory", tracefsAt("/nonexistent/tracing"),
			[]string{"statfs(/nonexistent/tracing): no such file or directory (ENOENT)", "mount -t tracefs nodev /nonexistent/tracing"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Log(tt.f)
			if tt.f.OK {
				t.Error("ok, want missing")
			}
			for _, s := range tt.contains {
				if !strings.Contains(tt.f.Reason, s) {
					t.Errorf("reason %q lacks %q", tt.f.Reason, s)
				}
			}
		})
	}
}
