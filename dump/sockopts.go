package dump

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
)

// Socket options every socket carries (sk_opts_entry), read as CRIU 4.2's
// dump_socket_opts reads them (criu/sockets.c): the buffer sizes and
// timeouts always; priority, rcvlowat, the reuse flags and the boolean
// options always with their has_ bit; the mark and linger only when set;
// SO_PASSCRED and SO_PASSSEC only for unix sockets; the device a socket is
// bound to and its classic socket filter when it has one.

// sockOptRefusal is a socket option the images can not carry: sockOpts
// returns it so that the dump refuses the socket rather than lose the
// option. optRefusal tells it from a failure.
type sockOptRefusal struct{ why string }

func (e *sockOptRefusal) Error() string { return e.why }

// optRefusal returns why sockOpts refused a socket, or "" when err is
// not a refusal (nil, or a failure to report as such).
func optRefusal(err error) string {
	var r *sockOptRefusal
	if errors.As(err, &r) {
		return r.why
	}
	return ""
}

// sockOpts reads the options sk_opts_entry keeps from socket fd (a copy in
// this process). An option the images can not carry (an eBPF socket
// filter, a locked filter) is a *sockOptRefusal: see optRefusal.
func sockOpts(fd int) (*sk_opts.SkOptsEntry, error) {
	var firstErr error
	geti := func(level, opt int, name string) int {
		v, err := unix.GetsockoptInt(fd, level, opt)
		if err != nil && firstErr == nil {
			firstErr = os.NewSyscallError("getsockopt("+name+")", err)
		}
		return v
	}
	getb := func(level, opt int, name string) *bool {
		return proto.Bool(geti(level, opt, name) != 0)
	}
	gettv := func(opt int, name string) (sec, usec uint64) {
		tv, err := unix.GetsockoptTimeval(fd, unix.SOL_SOCKET, opt)
		if err != nil {
			if firstErr == nil {
				firstErr = os.NewSyscallError("getsockopt("+name+")", err)
			}
			return 0, 0
		}
		return uint64(tv.Sec), uint64(tv.Usec)
	}
	o := &sk_opts.SkOptsEntry{
		SoSndbuf:   proto.Uint32(uint32(geti(unix.SOL_SOCKET, unix.SO_SNDBUF, "SO_SNDBUF"))),
		SoRcvbuf:   proto.Uint32(uint32(geti(unix.SOL_SOCKET, unix.SO_RCVBUF, "SO_RCVBUF"))),
		SoBufLock:  proto.Uint32(uint32(geti(unix.SOL_SOCKET, unix.SO_BUF_LOCK, "SO_BUF_LOCK"))),
		SoPriority: proto.Uint32(uint32(geti(unix.SOL_SOCKET, unix.SO_PRIORITY, "SO_PRIORITY"))),
		SoRcvlowat: proto.Uint32(uint32(geti(unix.SOL_SOCKET, unix.SO_RCVLOWAT, "SO_RCVLOWAT"))),
	}
	// CRIU leaves a zero mark out: restoring one needs CAP_NET_ADMIN.
	if mark := geti(unix.SOL_SOCKET, unix.SO_MARK, "SO_MARK"); mark != 0 {
		o.SoMark = proto.Uint32(uint32(mark))
	}
	s, us := gettv(unix.SO_SNDTIMEO, "SO_SNDTIMEO")
	o.SoSndTmoSec, o.SoSndTmoUsec = proto.Uint64(s), proto.Uint64(us)
	s, us = gettv(unix.SO_RCVTIMEO, "SO_RCVTIMEO")
	o.SoRcvTmoSec, o.SoRcvTmoUsec = proto.Uint64(s), proto.Uint64(us)
	o.Reuseaddr = getb(unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR")
	o.SoReuseport = getb(unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT")
	if family := geti(unix.SOL_SOCKET, unix.SO_DOMAIN, "SO_DOMAIN"); family == unix.AF_UNIX || family == unix.AF_NETLINK {
		o.SoPasscred = getb(unix.SOL_SOCKET, unix.SO_PASSCRED, "SO_PASSCRED")
		o.SoPasssec = getb(unix.SOL_SOCKET, unix.SO_PASSSEC, "SO_PASSSEC")
	}
	o.SoDontroute = getb(unix.SOL_SOCKET, unix.SO_DONTROUTE, "SO_DONTROUTE")
	o.SoNoCheck = getb(unix.SOL_SOCKET, unix.SO_NO_CHECK, "SO_NO_CHECK")
	o.SoBroadcast = getb(unix.SOL_SOCKET, unix.SO_BROADCAST, "SO_BROADCAST")
	o.SoKeepalive = getb(unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE")
	if geti(unix.SOL_SOCKET, unix.SO_OOBINLINE, "SO_OOBINLINE") != 0 {
		o.SoOobinline = proto.Uint32(1)
	} else {
		o.SoOobinline = proto.Uint32(0)
	}
	if firstErr != nil {
		return nil, firstErr
	}
	l, err := unix.GetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER)
	if err != nil {
		return nil, os.NewSyscallError("getsockopt(SO_LINGER)", err)
	}
	if l.Onoff != 0 {
		o.SoLinger = proto.Uint32(uint32(l.Linger))
	}
	dev, err := unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE)
	if err != nil {
		return nil, os.NewSyscallError("getsockopt(SO_BINDTODEVICE)", err)
	}
	if dev != "" {
		o.SoBoundDev = proto.String(dev)
	}
	if o.SoFilter, err = socketFilter(fd); err != nil {
		return nil, err
	}
	return o, nil
}

// socketFilter returns the classic BPF filter attached to socket fd, each
// instruction packed as CRIU packs it (code<<48 | jt<<40 | jf<<32 | k), or
// nil. An eBPF filter (SO_ATTACH_BPF) can not be read back and a locked
// filter would come back unlocked: both are refused.
func socketFilter(fd int) ([]uint64, error) {
	// SO_GET_FILTER counts in instructions, not bytes: asked with a
	// length of 0 it tells how many there are.
	n, err := getFilter(fd, nil)
	if err == unix.EACCES {
		return nil, &sockOptRefusal{"an eBPF socket filter (SO_ATTACH_BPF) can not be dumped"}
	}
	if err != nil {
		return nil, os.NewSyscallError("getsockopt(SO_GET_FILTER)", err)
	}
	if n == 0 {
		return nil, nil
	}
	locked, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_LOCK_FILTER)
	if err != nil {
		return nil, os.NewSyscallError("getsockopt(SO_LOCK_FILTER)", err)
	}
	if locked != 0 {
		return nil, &sockOptRefusal{"a locked socket filter (SO_LOCK_FILTER) would be restored unlocked"}
	}
	f := make([]unix.SockFilter, n)
	got, err := getFilter(fd, f)
	if err != nil {
		return nil, os.NewSyscallError("getsockopt(SO_GET_FILTER)", err)
	}
	if got != n {
		return nil, fmt.Errorf("getsockopt(SO_GET_FILTER): %d instructions, then %d", n, got)
	}
	out := make([]uint64, n)
	for i, ins := range f {
		out[i] = uint64(ins.Code)<<48 | uint64(ins.Jt)<<40 | uint64(ins.Jf)<<32 | uint64(ins.K)
	}
	return out, nil
}

// getFilter is getsockopt(SO_GET_FILTER) into f (nil: only count).
func getFilter(fd int, f []unix.SockFilter) (int, error) {
	n := uint32(len(f))
	var p unsafe.Pointer
	if len(f) > 0 {
		p = unsafe.Pointer(&f[0])
	}
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_GET_FILTER,
		uintptr(p), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
