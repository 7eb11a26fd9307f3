package dump

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"
	"github.com/crest-restore/crest/internal/nlattr"
)

// Inet sockets, dumped as CRIU 4.2 dumps what it restores without
// special options (criu/sk-inet.c do_dump_one_inet_fd): TCP sockets that
// listen or were never connected, UDP and UDP-Lite sockets. The kernel's
// socket diag (NETLINK_SOCK_DIAG, INET_DIAG) tells state, addresses,
// ports, the listen backlog and the shutdown bits of every socket in its
// tables; a socket in none (never bound, or a TCP socket bound but not
// listening) is read through getsockname/getpeername on a copy of the
// fd, as CRIU's gen_uncon_sk does. Options come from the copy too.
//
// Established TCP connections are dumped with --tcp-established
// (tcpest.go) and refused without it, as CRIU does. Refused: a listener
// with connections not yet accepted (CRIU's --tcp-skip-in-flight), raw
// and ping sockets, other protocols (MPTCP), a corked UDP socket,
// IP_TRANSPARENT, an owner for SIGIO outside the tree, a socket of
// another net namespace and the options sockOpts refuses.
// As CRIU, the datagrams queued on a UDP socket are not kept.

// TCP states as the kernel and inet_sk_entry.state number them.
const (
	tcpEstablished = 1
	tcpClose       = 7
	tcpListen      = 10
)

var tcpStates = []string{1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
	6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}

func tcpState(s uint8) string {
	if int(s) < len(tcpStates) && tcpStates[s] != "" {
		return tcpStates[s]
	}
	return fmt.Sprintf("state %d", s)
}

// inetSock is what the dump learns of an inet socket, in the kernel's
// terms: addresses as the bytes of in_addr/in6_addr, ports in host order.
type inetSock struct {
	state            uint8
	srcPort, dstPort uint16
	src, dst         [16]byte
	rqueue, wqueue   uint32
	shutdown         uint8 // RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2
}

// inetSocketEntry describes the inet socket c (a copy of an fd of t),
// inode ino.
func (ft *fileTable) inetSocketEntry(t *task, id uint32, c int, ino uint64, flags uint32) (*fdinfo.FileEntry, string, error) {
	geti := func(level, opt int, name string) (int, error) {
		v, err := unix.GetsockoptInt(c, level, opt)
		if err != nil {
			return 0, os.NewSyscallError("getsockopt("+name+")", err)
		}
		return v, nil
	}
	family, err := geti(unix.SOL_SOCKET, unix.SO_DOMAIN, "SO_DOMAIN")
	if err != nil {
		return nil, "", err
	}
	typ, err := geti(unix.SOL_SOCKET, unix.SO_TYPE, "SO_TYPE")
	if err != nil {
		return nil, "", err
	}
	protocol, err := geti(unix.SOL_SOCKET, unix.SO_PROTOCOL, "SO_PROTOCOL")
	if err != nil {
		return nil, "", err
	}
	if why := inetKindRefusal(typ, protocol); why != "" {
		return nil, why, nil
	}
	if why, err := ft.net.check(c, otherNetns); why != "" || err != nil { // netns_sock.go
		return nil, why, err
	}
	sk, err := inetDiagWith(ft.net.diagSocket, family, protocol, uint32(ino))
	if err != nil {
		return nil, "", err
	}
	inDiag := sk != nil
	if sk == nil {
		if sk, err = unconnectedInet(c, family, protocol); err != nil {
			return nil, "", err
		}
	}
	isTCP := protocol == unix.IPPROTO_TCP
	if isTCP {
		switch {
		case sk.state == tcpListen && sk.rqueue != 0:
			return nil, fmt.Sprintf("a listening TCP socket with %d connections not yet accepted (CRIU's --tcp-skip-in-flight drops them)", sk.rqueue), nil
		case sk.state == tcpListen || sk.state == tcpClose:
		default:
			// tcpest.go
			if why := ft.tcp.connectionRefusal(sk, family); why != "" {
				return nil, why, nil
			}
		}
	} else {
		cork, err := geti(unix.SOL_UDP, unix.UDP_CORK, "UDP_CORK")
		if err != nil {
			return nil, "", err
		}
		if cork != 0 {
			return nil, "a corked UDP socket (UDP_CORK) is not supported", nil
		}
		if sk.state != tcpClose && sk.state != tcpEstablished {
			return nil, fmt.Sprintf("a UDP socket in %s", tcpState(sk.state)), nil
		}
	}
	e := &sk_inet.InetSkEntry{Id: proto.Uint32(id), Ino: proto.Uint32(uint32(ino)), Family: proto.Uint32(uint32(family)),
		Type: proto.Uint32(uint32(typ)), Proto: proto.Uint32(uint32(protocol)), State: proto.Uint32(uint32(sk.state)),
		SrcPort: proto.Uint32(uint32(sk.srcPort)), DstPort: proto.Uint32(uint32(sk.dstPort)), Flags: proto.Uint32(flags),
		Backlog: proto.Uint32(sk.wqueue), Fown: zeroFown()}
	if inDiag && !(isTCP && sk.state == tcpClose) {
		// CRIU names the net namespace of the sockets it found in the
		// diag tables (the only ones it knows one of), where it does
		// not look for TCP sockets in CLOSE.
		e.NsId = proto.Uint32(ft.net.nsID())
	}
	words := 1
	if family == unix.AF_INET6 {
		words = 4
	}
	for i := 0; i < words; i++ {
		e.SrcAddr = append(e.SrcAddr, binary.NativeEndian.Uint32(sk.src[4*i:]))
		e.DstAddr = append(e.DstAddr, binary.NativeEndian.Uint32(sk.dst[4*i:]))
	}
	if family == unix.AF_INET6 {
		v6only, err := geti(unix.SOL_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY")
		if err != nil {
			return nil, "", err
		}
		e.V6Only = proto.Bool(v6only != 0)
		// the device a link-local address is scoped to, which bind
		// needs again
		if sk.srcPort != 0 && needsScope(sk.src) {
			dev, err := unix.GetsockoptString(c, unix.SOL_SOCKET, unix.SO_BINDTODEVICE)
			if err != nil {
				return nil, "", os.NewSyscallError("getsockopt(SO_BINDTODEVICE)", err)
			}
			if dev == "" {
				return nil, "", fmt.Errorf("link-local address without a device")
			}
			e.Ifname = proto.String(dev)
		}
	}
	var why string
	if e.IpOpts, why, err = ipOpts(c, family); why != "" || err != nil {
		return nil, why, err
	}
	if e.Opts, err = sockOpts(c); err != nil {
		if why := optRefusal(err); why != "" {
			return nil, why, nil
		}
		return nil, "", err
	}
	// CRIU writes a tcp_opts_entry for every inet socket, empty unless
	// the socket is TCP.
	e.TcpOpts = &tcp_stream.TcpOptsEntry{}
	if isTCP {
		if e.TcpOpts, err = tcpOpts(c); err != nil {
			return nil, "", err
		}
	}
	// CRIU writes the shutdown bits of UDP sockets, and of TCP ones that
	// have some, only when there are some.
	if sk.shutdown != 0 {
		e.Shutdown = sk_opts.SkShutdown(sk.shutdown & 3).Enum()
	}
	if isTCP && sk.state != tcpListen && sk.state != tcpClose {
		// last, as CRIU: the options above are read out of repair
		// mode (TCP_REPAIR overrides SO_REUSEADDR)
		state, err := ft.tcp.dump(t, c, uint32(ino), family, sk)
		if err != nil {
			return nil, "", err
		}
		e.State = proto.Uint32(uint32(state))
	}
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_INETSK.Enum(), Id: proto.Uint32(id), Isk: e}, "", nil
}

// inetKindRefusal says why a socket of type typ and protocol protocol is
// not dumped, or "".
func inetKindRefusal(typ, protocol int) string {
	switch {
	case typ == unix.SOCK_RAW:
		return "raw sockets are not supported"
	case typ == unix.SOCK_STREAM && protocol == unix.IPPROTO_TCP:
	case typ == unix.SOCK_DGRAM && (protocol == unix.IPPROTO_UDP || protocol == unix.IPPROTO_UDPLITE):
	case typ == unix.SOCK_DGRAM && (protocol == unix.IPPROTO_ICMP || protocol == unix.IPPROTO_ICMPV6):
		return "ICMP (ping) sockets are not supported"
	case protocol == unix.IPPROTO_MPTCP:
		return "MPTCP sockets are not supported (Go programs: GODEBUG=multipathtcp=0)"
	default:
		return fmt.Sprintf("inet sockets of type %d protocol %d are not supported", typ, protocol)
	}
	return ""
}

// otherNetns says whether socket fd lives in a net namespace other than
// the dumper's (whose socket diag it reads): one passed in from outside.
func otherNetns(fd int) (string, error) {
	ns, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return "", os.NewSyscallError("ioctl(SIOCGSKNS)", err)
	}
	defer unix.Close(ns)
	var st, self unix.Stat_t
	if err := unix.Fstat(ns, &st); err != nil {
		return "", os.NewSyscallError("fstat", err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return "", &os.PathError{Op: "stat", Path: "/proc/thread-self/ns/net", Err: err}
	}
	if st.Ino != self.Ino || st.Dev != self.Dev {
		return fmt.Sprintf("a socket of another net namespace (net:[%d])", st.Ino), nil
	}
	return "", nil
}

// needsScope tells an IPv6 address that bind needs a device for:
// link-local unicast, and multicast of link- or node-local scope (the
// kernel's __ipv6_addr_needs_scope_id).
func needsScope(a [16]byte) bool {
	if a[0] == 0xff {
		scope := a[1] & 0x0f
		return scope == 1 || scope == 2
	}
	return a[0] == 0xfe && a[1]&0xc0 == 0x80
}

// ipOpts reads ip_opts_entry as CRIU does: for IPv4 FREEBIND, PKTINFO,
// TOS and TTL, for IPv6 FREEBIND and RECVPKTINFO, each present only when
// not zero. IP_TRANSPARENT has no field: refused.
func ipOpts(fd, family int) (*sk_inet.IpOptsEntry, string, error) {
	type opt struct {
		level, opt int
		name       string
		set        func(o *sk_inet.IpOptsEntry, v int)
	}
	flag := func(p **bool) func(*sk_inet.IpOptsEntry, int) {
		return func(_ *sk_inet.IpOptsEntry, v int) { *p = proto.Bool(true) }
	}
	o := &sk_inet.IpOptsEntry{}
	transparent := opt{unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT", nil}
	opts := []opt{
		{unix.SOL_IP, unix.IP_FREEBIND, "IP_FREEBIND", flag(&o.Freebind)},
		{unix.SOL_IP, unix.IP_PKTINFO, "IP_PKTINFO", flag(&o.Pktinfo)},
		{unix.SOL_IP, unix.IP_TOS, "IP_TOS", func(o *sk_inet.IpOptsEntry, v int) { o.Tos = proto.Uint32(uint32(v)) }},
		{unix.SOL_IP, unix.IP_TTL, "IP_TTL", func(o *sk_inet.IpOptsEntry, v int) { o.Ttl = proto.Uint32(uint32(v)) }},
	}
	if family == unix.AF_INET6 {
		transparent = opt{unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT", nil}
		opts = []opt{
			{unix.SOL_IPV6, unix.IPV6_FREEBIND, "IPV6_FREEBIND", flag(&o.Freebind)},
			{unix.SOL_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO", flag(&o.Pktinfo)},
		}
	}
	v, err := unix.GetsockoptInt(fd, transparent.level, transparent.opt)
	if err != nil {
		return nil, "", os.NewSyscallError("getsockopt("+transparent.name+")", err)
	}
	if v != 0 {
		return nil, transparent.name + " is not kept by CRIU's images", nil
	}
	for _, x := range opts {
		v, err := unix.GetsockoptInt(fd, x.level, x.opt)
		if err != nil {
			return nil, "", os.NewSyscallError("getsockopt("+x.name+")", err)
		}
		if v != 0 {
			x.set(o, v)
		}
	}
	return o, "", nil
}

// tcpOpts reads tcp_opts_entry as CRIU's dump_tcp_opts: each field only
// when not zero.
func tcpOpts(fd int) (*tcp_stream.TcpOptsEntry, error) {
	o := &tcp_stream.TcpOptsEntry{}
	for _, x := range []struct {
		opt  int
		name string
		set  func(v int)
	}{
		{unix.TCP_NODELAY, "TCP_NODELAY", func(int) { o.Nodelay = proto.Bool(true) }},
		{unix.TCP_CORK, "TCP_CORK", func(int) { o.Cork = proto.Bool(true) }},
		{unix.TCP_KEEPCNT, "TCP_KEEPCNT", func(v int) { o.Keepcnt = proto.Uint32(uint32(v)) }},
		{unix.TCP_KEEPIDLE, "TCP_KEEPIDLE", func(v int) { o.Keepidle = proto.Uint32(uint32(v)) }},
		{unix.TCP_KEEPINTVL, "TCP_KEEPINTVL", func(v int) { o.Keepintvl = proto.Uint32(uint32(v)) }},
	} {
		v, err := unix.GetsockoptInt(fd, unix.SOL_TCP, x.opt)
		if err != nil {
			return nil, os.NewSyscallError("getsockopt("+x.name+")", err)
		}
		if v != 0 {
			x.set(v)
		}
	}
	return o, nil
}

// unconnectedInet reads a socket the diag tables do not hold: a TCP
// socket never connected nor listening, or a UDP socket never bound.
// Its state is TCP_CLOSE, which for TCP the kernel must confirm (else
// it is somewhere the diag did not look).
func unconnectedInet(fd, family, protocol int) (*inetSock, error) {
	sk := &inetSock{state: tcpClose}
	put := func(sa unix.Sockaddr, port *uint16, addr *[16]byte) {
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			*port = uint16(a.Port)
			copy(addr[:], a.Addr[:])
		case *unix.SockaddrInet6:
			*port = uint16(a.Port)
			*addr = a.Addr
		}
	}
	if sa, err := unix.Getpeername(fd); err == nil {
		put(sa, &sk.dstPort, &sk.dst)
	} else if !errors.Is(err, syscall.ENOTCONN) {
		return nil, os.NewSyscallError("getpeername", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, os.NewSyscallError("getsockname", err)
	}
	put(sa, &sk.srcPort, &sk.src)
	if protocol != unix.IPPROTO_TCP {
		if sk.srcPort != 0 || sk.dstPort != 0 {
			return nil, fmt.Errorf("UDP socket at port %d, peer port %d, that the socket diag does not know", sk.srcPort, sk.dstPort)
		}
		return sk, nil
	}
	info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
	if err != nil {
		return nil, os.NewSyscallError("getsockopt(TCP_INFO)", err)
	}
	if info.State != tcpClose {
		return nil, fmt.Errorf("TCP socket in %s that the socket diag does not know", tcpState(info.State))
	}
	// CRIU's backlog of such a socket is tcpi_backoff
	sk.wqueue = uint32(info.Backoff)
	// The shutdown bits of an unconnected socket show only in poll: a
	// TCP_CLOSE socket always reports POLLHUP, POLLRDHUP only after
	// SHUT_RD (CRIU's dump_tcp_uncon_shutdown).
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP | unix.POLLHUP}}
	if _, err := unix.Poll(pfd, 0); err != nil {
		return nil, os.NewSyscallError("poll", err)
	}
	if pfd[0].Revents&unix.POLLHUP != 0 && pfd[0].Revents&unix.POLLRDHUP != 0 {
		sk.shutdown = 1
	}
	return sk, nil
}

// inetDiag finds the socket of inode ino in the socket diag tables of
// family and protocol; nil when it is in none.
func inetDiag(family, protocol int, ino uint32) (*inetSock, error) {
	return inetDiagWith(ownDiagSocket, family, protocol, ino)
}

// inetDiagWith is inetDiag through a socket diag socket of socket's
// making (one of the tree's net namespace: netns_sock.go).
func inetDiagWith(socket func(proto int) (int, error), family, protocol int, ino uint32) (*inetSock, error) {
	nl, err := socket(unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, os.NewSyscallError("socket(NETLINK_SOCK_DIAG)", err)
	}
	defer unix.Close(nl)
	// nlmsghdr, then inet_diag_req_v2: family, protocol, ext, pad,
	// states, and a zero inet_diag_sockid (48 bytes): all sockets.
	req := make([]byte, unix.SizeofNlMsghdr+56)
	req[16], req[17] = byte(family), byte(protocol)
	binary.NativeEndian.PutUint32(req[20:], 0xffffffff) // every state
	var found *inetSock
	err = sockDiag(nl, req, fmt.Sprintf("family %d protocol %d", family, protocol), func(msg []byte) {
		if sk, ok := parseInetDiag(msg, ino); ok {
			found = sk
		}
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}

// sockDiag sends req, a sock_diag request whose nlmsghdr it fills in (a
// dump of every socket the request's family and protocol match), on nl
// and hands the payload of each answer to each; what names the request
// in errors.
func sockDiag(nl int, req []byte, what string, each func(msg []byte)) error {
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1) // seq
	if err := unix.Sendto(nl, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return os.NewSyscallError("sendto(NETLINK_SOCK_DIAG)", err)
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(nl, buf, 0)
		if err != nil {
			return os.NewSyscallError("recvfrom(NETLINK_SOCK_DIAG)", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("sock_diag %s: %w", what, err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return fmt.Errorf("sock_diag %s: %w", what, syscall.Errno(errno))
					}
				}
				return nil
			case unix.SOCK_DIAG_BY_FAMILY:
				each(m.Data)
			}
		}
	}
}

// parseInetDiag reads an inet_diag_msg and its attributes when it is the
// socket of inode ino.
func parseInetDiag(b []byte, ino uint32) (*inetSock, bool) {
	// family, state, timer, retrans, then inet_diag_sockid (sport,
	// dport big-endian, src, dst, if, cookie), expires, rqueue, wqueue,
	// uid, inode
	const msgLen = 72
	if len(b) < msgLen || binary.NativeEndian.Uint32(b[68:]) != ino {
		return nil, false
	}
	sk := &inetSock{state: b[1], srcPort: binary.BigEndian.Uint16(b[4:]), dstPort: binary.BigEndian.Uint16(b[6:]),
		rqueue: binary.NativeEndian.Uint32(b[56:]), wqueue: binary.NativeEndian.Uint32(b[60:])}
	copy(sk.src[:], b[8:24])
	copy(sk.dst[:], b[24:40])
	if v := nlattr.Parse(b[msgLen:])[inetDiagShutdown]; len(v) >= 1 {
		sk.shutdown = v[0]
	}
	return sk, true
}

// inetDiagShutdown is INET_DIAG_SHUTDOWN, the attribute with the
// socket's sk_shutdown bits.
const inetDiagShutdown = 8
