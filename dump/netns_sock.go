package dump

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// sockNet is the net namespace the tree's sockets must be in: crest's own
// (the zero value), or the tree's own (netns.go), where socket diag must
// be asked, from a diag socket made in it.
type sockNet struct {
	ino uint64 // the tree's namespace; 0: crest's own
	pid int    // a task in it (the root)
	ids *nsIDs // its id in the images, given when the root's ids are
}

// nsID is the id of the sockets' namespace in the images.
func (s *sockNet) nsID() uint32 {
	if s.ino == 0 {
		return ownNetNSID
	}
	return s.ids.id(s.ino)
}

// ownDiagSocket makes a socket diag socket in crest's net namespace.
func ownDiagSocket(proto int) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, os.NewSyscallError("socket(AF_NETLINK, NETLINK_SOCK_DIAG)", err)
	}
	return fd, nil
}

// diagSocket makes a socket diag socket in the sockets' namespace: a
// socket belongs to the namespace of the thread that made it.
func (s *sockNet) diagSocket(proto int) (int, error) {
	if s.ino == 0 {
		return ownDiagSocket(proto)
	}
	fd := -1
	err := inNamespaces(s.pid, unix.CLONE_NEWNET, func() error {
		var err error
		fd, err = ownDiagSocket(proto)
		return err
	})
	return fd, err
}

// check says why socket c can not be dumped when it is not in the
// sockets' namespace: own does it for crest's.
func (s *sockNet) check(c int, own func(int) (string, error)) (string, error) {
	if s.ino == 0 {
		return own(c)
	}
	ns, err := unix.IoctlRetInt(c, unix.SIOCGSKNS)
	if err != nil {
		return "", os.NewSyscallError("ioctl(SIOCGSKNS)", err)
	}
	defer unix.Close(ns)
	var st unix.Stat_t
	if err := unix.Fstat(ns, &st); err != nil {
		return "", os.NewSyscallError("fstat", err)
	}
	if st.Ino != s.ino {
		return fmt.Sprintf("a socket of a net namespace other than the tree's (net:[%d], the tree's net:[%d])", st.Ino, s.ino), nil
	}
	return "", nil
}
