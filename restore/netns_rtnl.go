package restore

import (
	"encoding/binary"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// rtnl is a NETLINK_ROUTE socket of the net namespace the calling thread
// was in when it was opened: requests sent on it change that namespace,
// whichever thread sends them.
type rtnl struct {
	fd  int
	seq uint32
	buf []byte
}

func openRtnl() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, os.NewSyscallError("socket(AF_NETLINK, NETLINK_ROUTE)", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind(NETLINK_ROUTE)", err)
	}
	return &rtnl{fd: fd, buf: make([]byte, 1<<16)}, nil
}

func (c *rtnl) close() { unix.Close(c.fd) }

// talk sends the request msg (a whole netlink message, which it changes:
// its sequence number, and NLM_F_REQUEST|NLM_F_ACK added to extra flags)
// and waits for the kernel's answer: nil, or its errno.
func (c *rtnl) talk(msg []byte, flags uint16) error {
	c.seq++
	binary.NativeEndian.PutUint16(msg[6:], binary.NativeEndian.Uint16(msg[6:])|flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], c.seq)
	binary.NativeEndian.PutUint32(msg[12:], 0)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return os.NewSyscallError("sendto(NETLINK_ROUTE)", err)
	}
	for {
		msgs, err := c.recv()
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != c.seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return fmt.Errorf("netlink: short error message")
			}
			if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				return syscall.Errno(errno)
			}
			return nil
		}
	}
}

// dump sends the dump request of type typ with body and calls fn with
// every message of the answer (header included; it may keep it).
func (c *rtnl) dump(typ uint16, body []byte, fn func(m []byte) error) error {
	c.seq++
	req := nlMessage(typ, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, body)
	binary.NativeEndian.PutUint32(req[8:], c.seq)
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return os.NewSyscallError("sendto(NETLINK_ROUTE)", err)
	}
	for {
		msgs, err := c.recv()
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != c.seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return syscall.Errno(errno)
					}
				}
				return nil
			}
			raw := make([]byte, unix.SizeofNlMsghdr+len(m.Data))
			binary.NativeEndian.PutUint32(raw[0:], uint32(len(raw)))
			binary.NativeEndian.PutUint16(raw[4:], m.Header.Type)
			binary.NativeEndian.PutUint16(raw[6:], m.Header.Flags)
			copy(raw[unix.SizeofNlMsghdr:], m.Data)
			if err := fn(raw); err != nil {
				return err
			}
		}
	}
}

func (c *rtnl) recv() ([]syscall.NetlinkMessage, error) {
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, os.NewSyscallError("recvfrom(NETLINK_ROUTE)", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(c.buf[:n])
		if err != nil {
			return nil, fmt.Errorf("netlink: %w", err)
		}
		return msgs, nil
	}
}

// nlMessage is a netlink message of type typ with flags and body.
func nlMessage(typ, flags uint16, body []byte) []byte {
	m := make([]byte, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(m[0:], uint32(len(m)))
	binary.NativeEndian.PutUint16(m[4:], typ)
	binary.NativeEndian.PutUint16(m[6:], flags)
	copy(m[unix.SizeofNlMsghdr:], body)
	return m
}

// addAttr appends the route attribute typ with data to the message m,
// padded, and fixes m's length.
func addAttr(m []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	a := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(a[0:], uint16(l))
	binary.NativeEndian.PutUint16(a[2:], typ)
	copy(a[unix.SizeofRtAttr:], data)
	m = append(m, a...)
	binary.NativeEndian.PutUint32(m[0:], uint32(len(m)))
	return m
}
