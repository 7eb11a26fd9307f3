package kerndat

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestClone3SetTID(t *testing.T) {
	free := freePID(t)
	tests := []struct {
		name     string
		flags    uint64
		setTID   []int32
		ok       bool
		contains string
	}{
		{"pid 1 of a new namespace", unix.CLONE_NEWPID, []int32{1}, true, " 1)"},
		{"a free pid here", 0, []int32{free}, true, fmt.Sprintf("made pid %d, which is %d", free, free)},
		{"both levels", unix.CLONE_NEWPID, []int32{1, free}, true, fmt.Sprintf("(NSpid %d 1)", free)},
		{"a taken pid", 0, []int32{int32(os.Getpid())}, false, "file exists (EEXIST)"},
		{"pid 2 of a namespace without init", unix.CLONE_NEWPID, []int32{2}, false, "invalid argument (EINVAL)"},
		{"a pid beyond pid_max", 0, []int32{1 << 30}, false, "invalid argument (EINVAL)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := probeClone3(tt.flags, tt.setTID)
			t.Log(f)
			if f.OK != tt.ok || !strings.Contains(f.Reason, tt.contains) {
				t.Errorf("ok = %v, reason %q; want ok = %v and %q", f.OK, f.Reason, tt.ok, tt.contains)
			}
			if !strings.Contains(f.Reason, "clone3(") {
				t.Errorf("reason %q does not name the system call", f.Reason)
			}
		})
	}
	assertNoChildren(t)
}

// TestCloneExitStatus checks the child's side: it runs only getpid and
// exit_group, and its status is its own pid's low byte.
func TestCloneExitStatus(t *testing.T) {
	pid, pidfd, err := cloneExit(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	nspid, status, err := reapChild(pid, pidfd)
	if err != nil {
		t.Fatal(err)
	}
	if len(nspid) != 1 || nspid[0] != pid || status != pid&0xff {
		t.Errorf("child %d: NSpid %v, status %d; want [%d] and %d", pid, nspid, status, pid, pid&0xff)
	}
	if _, err := unix.FcntlInt(uintptr(pidfd), unix.F_GETFD, 0); err == nil {
		t.Errorf("reapChild left pidfd %d open", pidfd)
	}
	assertNoChildren(t)
}

func TestCloneFlagString(t *testing.T) {
	for flags, want := range map[uint64]string{
		0:                                    "0x0",
		unix.CLONE_PIDFD:                     "CLONE_PIDFD",
		unix.CLONE_NEWPID | unix.CLONE_PIDFD: "CLONE_NEWPID|CLONE_PIDFD",
		unix.CLONE_PIDFD | unix.CLONE_VM:     fmt.Sprintf("CLONE_PIDFD|%#x", unix.CLONE_VM),
	} {
		if got := cloneFlagString(flags); got != want {
			t.Errorf("cloneFlagString(%#x) = %q, want %q", flags, got, want)
		}
	}
}
