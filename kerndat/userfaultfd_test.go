package kerndat

import (
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestUserfaultfd(t *testing.T) {
	tests := []struct {
		name     string
		flags    int
		dev      string
		ok       bool
		contains []string
	}{
		{"user mode only", unix.O_CLOEXEC | uffdUserModeOnly, "/dev/userfaultfd", true,
			[]string{"userfaultfd(O_CLOEXEC|UFFD_USER_MODE_ONLY) gave an fd"}},
		{"bad flags", 2, "/dev/userfaultfd", false,
			[]string{"userfaultfd(0x2): invalid argument (EINVAL)", "USERFAULTFD_IOC_NEW): invalid argument (EINVAL)"}},
		{"bad flags, no device", 2, "/nonexistent", false,
			[]string{"userfaultfd(0x2): invalid argument (EINVAL)", "open /nonexistent: no such file or directory (ENOENT)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := probeUserfaultfd(tt.flags, tt.dev)
			t.Log(f)
			if f.OK != tt.ok {
				t.Errorf("ok = %v, want %v", f.OK, tt.ok)
			}
			for _, s := range tt.contains {
				if !strings.Contains(f.Reason, s) {
					t.Errorf("reason %q lacks %q", f.Reason, s)
				}
			}
		})
	}
}

// TestUserfaultfdFromDev checks the way around vm.unprivileged_userfaultfd.
func TestUserfaultfdFromDev(t *testing.T) {
	fd, err := userfaultfdFromDev("/dev/userfaultfd", unix.O_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	arg := uffdioAPIArg{api: uffdAPI}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uffdioAPI, uintptr(unsafe.Pointer(&arg))); errno != 0 {
		t.Fatalf("UFFDIO_API on a userfaultfd from /dev/userfaultfd: %v", errno)
	}
	if arg.api != uffdAPI {
		t.Errorf("UFFDIO_API answered api %#x", arg.api)
	}
}
