package kerndat

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Userfaultfd reports whether crest could fill memory on demand (lazy
// pages, PE_LAZY in a pagemap): it makes a userfaultfd with the system call
// or, where that is refused, through /dev/userfaultfd, and does the API
// handshake. No restore needs it yet, so its absence is information.
var Userfaultfd = NewProbe(UserfaultfdName, 0, func() Feature {
	return probeUserfaultfd(unix.O_CLOEXEC|unix.O_NONBLOCK, "/dev/userfaultfd")
})

// From include/uapi/linux/userfaultfd.h, which golang.org/x/sys lacks.
const (
	uffdAPI           = 0xaa
	uffdioAPI         = 0xc018aa3f // _IOWR(0xaa, 0x3f, struct uffdio_api)
	userfaultfdIOCNew = 0xaa00     // _IO(0xaa, 0x00)
	uffdUserModeOnly  = 1
)

type uffdioAPIArg struct {
	api      uint64
	features uint64
	ioctls   uint64
}

func probeUserfaultfd(flags int, dev string) Feature {
	call := fmt.Sprintf("userfaultfd(%s)", uffdFlagString(flags))
	how := call
	r, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	fd := int(r)
	if errno != 0 {
		devFD, devErr := userfaultfdFromDev(dev, flags)
		if devErr != nil {
			return Missing("%s: %s; %s", call, ErrText(errno), ErrText(devErr))
		}
		fd, how = devFD, fmt.Sprintf("%s (the system call said %s)", dev, ErrText(errno))
	}
	defer unix.Close(fd)
	arg := uffdioAPIArg{api: uffdAPI}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uffdioAPI, uintptr(unsafe.Pointer(&arg))); errno != 0 {
		return Missing("%s gave fd %d, but ioctl(UFFDIO_API): %s", how, fd, ErrText(errno))
	}
	return OK("%s gave an fd; UFFDIO_API: features %#x, ioctls %#x", how, arg.features, arg.ioctls)
}

// userfaultfdFromDev asks /dev/userfaultfd for a userfaultfd, the way that
// works where vm.unprivileged_userfaultfd refuses the system call.
func userfaultfdFromDev(dev string, flags int) (int, error) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return -1, err
	}
	defer f.Close()
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), userfaultfdIOCNew, uintptr(flags))
	if errno != 0 {
		return -1, fmt.Errorf("ioctl(%s, USERFAULTFD_IOC_NEW): %w", dev, errno)
	}
	return int(r), nil
}

func uffdFlagString(flags int) string {
	var s string
	for _, f := range []struct {
		flag int
		name string
	}{{unix.O_CLOEXEC, "O_CLOEXEC"}, {unix.O_NONBLOCK, "O_NONBLOCK"}, {uffdUserModeOnly, "UFFD_USER_MODE_ONLY"}} {
		if flags&f.flag != 0 {
			if s != "" {
				s += "|"
			}
			s += f.name
			flags &^= f.flag
		}
	}
	if flags != 0 || s == "" {
		if s != "" {
			s += "|"
		}
		s += fmt.Sprintf("%#x", flags)
	}
	return s
}
