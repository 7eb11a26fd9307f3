package restore

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
)

// applySockOpts sets the options of sk_opts_entry on socket fd, as CRIU's
// restore_socket_opts does (criu/sockets.c): the buffer sizes, the
// optional values the image has, the boolean options, the timeouts, the
// device and the socket filter. Unlike CRIU it also sets SO_REUSEADDR and
// SO_REUSEPORT to the image's values (CRIU's inet code does that in
// post_open), so that an inet socket bound with SO_REUSEADDR for its
// restore ends with the flags it had; a boolean option is only written
// when the socket does not have the image's value already, so that a unix
// socket is never asked for SO_REUSEPORT (EOPNOTSUPP) when it has not got it.
func applySockOpts(fd int, o *sk_opts.SkOptsEntry) error {
	if o == nil {
		return fmt.Errorf("socket options: no sk_opts_entry")
	}
	if err := setSockBufs(fd, o.GetSoSndbuf(), o.GetSoRcvbuf()); err != nil {
		return err
	}
	set := func(level, opt int, name string, v uint32) error {
		if err := unix.SetsockoptInt(fd, level, opt, int(v)); err != nil {
			return os.NewSyscallError(fmt.Sprintf("setsockopt(%s, %d)", name, v), err)
		}
		return nil
	}
	ints := []struct {
		has       bool
		level, op int
		name      string
		v         uint32
	}{
		// SO_BUF_LOCK right after the sizes: setting them locked both.
		{o.SoBufLock != nil, unix.SOL_SOCKET, unix.SO_BUF_LOCK, "SO_BUF_LOCK", o.GetSoBufLock()},
		{o.SoPriority != nil, unix.SOL_SOCKET, unix.SO_PRIORITY, "SO_PRIORITY", o.GetSoPriority()},
		{o.SoRcvlowat != nil, unix.SOL_SOCKET, unix.SO_RCVLOWAT, "SO_RCVLOWAT", o.GetSoRcvlowat()},
		{o.SoMark != nil, unix.SOL_SOCKET, unix.SO_MARK, "SO_MARK", o.GetSoMark()},
		// sk_opts_entry's own TCP keepalive fields, which CRIU only
		// reads from old images (newer ones have tcp_opts_entry)
		{o.TcpKeepcnt != nil, unix.SOL_TCP, unix.TCP_KEEPCNT, "TCP_KEEPCNT", o.GetTcpKeepcnt()},
		{o.TcpKeepidle != nil, unix.SOL_TCP, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE", o.GetTcpKeepidle()},
		{o.TcpKeepintvl != nil, unix.SOL_TCP, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL", o.GetTcpKeepintvl()},
	}
	for _, x := range ints {
		if x.has {
			if err := set(x.level, x.op, x.name, x.v); err != nil {
				return err
			}
		}
	}
	bools := []struct {
		has  bool
		op   int
		name string
		v    bool
	}{
		{o.Reuseaddr != nil, unix.SO_REUSEADDR, "SO_REUSEADDR", o.GetReuseaddr()},
		{o.SoReuseport != nil, unix.SO_REUSEPORT, "SO_REUSEPORT", o.GetSoReuseport()},
		{o.SoPasscred != nil, unix.SO_PASSCRED, "SO_PASSCRED", o.GetSoPasscred()},
		{o.SoPasssec != nil, unix.SO_PASSSEC, "SO_PASSSEC", o.GetSoPasssec()},
		{o.SoDontroute != nil, unix.SO_DONTROUTE, "SO_DONTROUTE", o.GetSoDontroute()},
		{o.SoNoCheck != nil, unix.SO_NO_CHECK, "SO_NO_CHECK", o.GetSoNoCheck()},
		{o.SoBroadcast != nil, unix.SO_BROADCAST, "SO_BROADCAST", o.GetSoBroadcast()},
		{o.SoOobinline != nil, unix.SO_OOBINLINE, "SO_OOBINLINE", o.GetSoOobinline() != 0},
		{o.SoKeepalive != nil, unix.SO_KEEPALIVE, "SO_KEEPALIVE", o.GetSoKeepalive()},
	}
	for _, b := range bools {
		if !b.has {
			continue
		}
		cur, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, b.op)
		if err != nil {
			return os.NewSyscallError("getsockopt("+b.name+")", err)
		}
		if (cur != 0) == b.v {
			continue
		}
		v := uint32(0)
		if b.v {
			v = 1
		}
		if err := set(unix.SOL_SOCKET, b.op, b.name, v); err != nil {
			return err
		}
	}
	if o.SoLinger != nil {
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: int32(o.GetSoLinger())}); err != nil {
			return os.NewSyscallError(fmt.Sprintf("setsockopt(SO_LINGER, %d)", o.GetSoLinger()), err)
		}
	}
	timeouts := []struct {
		op        int
		name      string
		sec, usec uint64
	}{
		{unix.SO_SNDTIMEO, "SO_SNDTIMEO", o.GetSoSndTmoSec(), o.GetSoSndTmoUsec()},
		{unix.SO_RCVTIMEO, "SO_RCVTIMEO", o.GetSoRcvTmoSec(), o.GetSoRcvTmoUsec()},
	}
	for _, t := range timeouts {
		tv := unix.Timeval{Sec: int64(t.sec), Usec: int64(t.usec)}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, t.op, &tv); err != nil {
			return os.NewSyscallError(fmt.Sprintf("setsockopt(%s, %d.%06d)", t.name, t.sec, t.usec), err)
		}
	}
	if dev := o.GetSoBoundDev(); dev != "" {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev); err != nil {
			return os.NewSyscallError(fmt.Sprintf("setsockopt(SO_BINDTODEVICE, %q)", dev), err)
		}
	}
	if len(o.SoFilter) > 0 {
		if err := attachFilter(fd, o.SoFilter); err != nil {
			return err
		}
	}
	return nil
}

// setSockBufs gives socket fd the buffer sizes the dump read. The
// kernel doubles what it is given (for its own bookkeeping) and the dump
// read the doubled value, so half of it is set. SO_SNDBUFFORCE and
// SO_RCVBUFFORCE, as CRIU uses, pass over net.core.wmem_max/rmem_max but
// need CAP_NET_ADMIN; without it (an unprivileged engine) the plain
// options are set, as CRIU does with --unprivileged, and the result is
// checked: a size the limits cut down is an error, not a silent change.
func setSockBufs(fd int, snd, rcv uint32) error {
	bufs := []struct {
		force, plain int
		name         string
		v            uint32
	}{
		{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, "SO_SNDBUF", snd},
		{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, "SO_RCVBUF", rcv},
	}
	for _, b := range bufs {
		half := int(b.v / 2)
		err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, b.force, half)
		if err == nil {
			continue
		}
		if !errors.Is(err, syscall.EPERM) {
			return os.NewSyscallError(fmt.Sprintf("setsockopt(%sFORCE, %d)", b.name, half), err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, b.plain, half); err != nil {
			return os.NewSyscallError(fmt.Sprintf("setsockopt(%s, %d)", b.name, half), err)
		}
		got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, b.plain)
		if err != nil {
			return os.NewSyscallError("getsockopt("+b.name+")", err)
		}
		if uint32(got) != b.v {
			return fmt.Errorf("socket options: %s %d needs CAP_NET_ADMIN (%sFORCE); without it the kernel gives %d", b.name, b.v, b.name, got)
		}
	}
	return nil
}

// attachFilter attaches the classic BPF filter the image packs as CRIU
// does (code<<48 | jt<<40 | jf<<32 | k per instruction).
func attachFilter(fd int, img []uint64) error {
	if len(img) > 0xffff {
		return fmt.Errorf("socket filter of %d instructions", len(img))
	}
	f := make([]unix.SockFilter, len(img))
	for i, x := range img {
		f[i] = unix.SockFilter{Code: uint16(x >> 48), Jt: uint8(x >> 40), Jf: uint8(x >> 32), K: uint32(x)}
	}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}); err != nil {
		return os.NewSyscallError(fmt.Sprintf("setsockopt(SO_ATTACH_FILTER, %d instructions)", len(f)), err)
	}
	return nil
}
