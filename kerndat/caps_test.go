package kerndat

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestWithoutCapabilities runs the probes that need privileges on a thread
// that dropped its effective capabilities (capabilities are per thread):
// each must say missing, with the errno the kernel gave.
func TestWithoutCapabilities(t *testing.T) {
	var got []Feature
	onThrowawayThread(func() {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			t.Error(err)
			return
		}
		data[0].Effective, data[1].Effective = 0, 0
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			t.Error(err)
			return
		}
		got = []Feature{
			probeCheckpointCap(0),
			probeSysResourceCap(0),
			probeClone3(unix.CLONE_NEWPID, []int32{1}),
			unshareTime("monotonic 1 0\n"),
		}
	})
	if len(got) == 0 {
		t.FailNow()
	}
	want := []string{
		"capget(0): effective set 0x0 has neither CAP_CHECKPOINT_RESTORE nor CAP_SYS_ADMIN",
		"lacks CAP_SYS_RESOURCE",
		"clone3(CLONE_NEWPID|CLONE_PIDFD, set_tid={1}): operation not permitted (EPERM)",
		"unshare(CLONE_NEWTIME) on thread",
	}
	for i, f := range got {
		t.Log(f)
		if f.OK || !strings.Contains(f.Reason, want[i]) {
			t.Errorf("got %v, want missing with %q", f, want[i])
		}
	}
	if !strings.Contains(got[3].Reason, "(EPERM)") {
		t.Errorf("unshare without CAP_SYS_ADMIN: %s, want EPERM", got[3].Reason)
	}
	assertNoChildren(t)
}
