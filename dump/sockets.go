package dump

import (
	"fmt"
	"os"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"golang.org/x/sys/unix"
)

// stealFD returns a copy of fd of process pid in this process
// (pidfd_getfd: the same open file description). The caller closes it.
func stealFD(pid, fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, os.NewSyscallError("pidfd_open", err)
	}
	defer unix.Close(pidfd)
	c, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return -1, os.NewSyscallError("pidfd_getfd", err)
	}
	return c, nil
}

// fdCopy is a copy of fd of process pid in this process (stealFD), taken
// on first need and shared by all that read the open file through it.
type fdCopy struct {
	pid, fd int
	c       int // -1 until taken
}

func newFDCopy(pid, fd int) *fdCopy { return &fdCopy{pid: pid, fd: fd, c: -1} }

// get returns the copy, taking it the first time.
func (f *fdCopy) get() (int, error) {
	if f.c < 0 {
		c, err := stealFD(f.pid, f.fd)
		if err != nil {
			return -1, err
		}
		f.c = c
	}
	return f.c, nil
}

// close closes the copy if it was taken.
func (f *fdCopy) close() {
	if f.c >= 0 {
		unix.Close(f.c)
		f.c = -1
	}
}

// socketType tells which files.img entry the socket c (a copy) becomes,
// by its address family; why says why it can not be dumped.
func socketType(c int) (typ fdinfo.FdTypes, why string, err error) {
	family, err := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return 0, "", os.NewSyscallError("getsockopt(SO_DOMAIN)", err)
	}
	switch family {
	case unix.AF_UNIX:
		return fdinfo.FdTypes_UNIXSK, "", nil
	case unix.AF_INET, unix.AF_INET6:
		return fdinfo.FdTypes_INETSK, "", nil
	case unix.AF_NETLINK:
		return fdinfo.FdTypes_NETLINKSK, "", nil
	case unix.AF_PACKET:
		return fdinfo.FdTypes_PACKETSK, "", nil // sockpacket.go
	}
	return 0, fmt.Sprintf("sockets of address family %d are not supported", family), nil
}
