package restore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"
)

// Inet sockets, as CRIU 4.2 restores them without special options
// (criu/sk-inet.c open_inet_sk): TCP sockets that listen or were never
// connected, and UDP and UDP-Lite sockets, bound or connected. The engine
// makes each one anew: socket, bind to the dumped address (SO_REUSEADDR
// on meanwhile, so that connections of the dumped tree left in TIME_WAIT
// do not block the port), listen with the dumped backlog, connect a UDP
// socket to its peer, then its status flags and options. A port someone
// else holds now fails the restore.
//
// Established TCP connections need TCP_REPAIR (CRIU's --tcp-established):
// tcpest.go restores them with Options.TCPEstablished, and planning
// refuses them without. Refused at planning too: raw and ping sockets,
// protocols other than these, and owners for SIGIO outside the tree.

// TCP states (include/net/tcp_states.h) as inet_sk_entry.state stores
// them; a UDP socket is TCP_CLOSE, or TCP_ESTABLISHED when connected.
const (
	tcpEstablished = 1
	tcpClose       = 7
	tcpListen      = 10
)

var tcpStateNames = map[uint32]string{1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
	6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}

func tcpStateName(s uint32) string {
	if n, ok := tcpStateNames[s]; ok {
		return n
	}
	return fmt.Sprintf("state %d", s)
}

// InetSocket is an AF_INET or AF_INET6 socket of files.img.
type InetSocket struct {
	Ino    uint32 // its inode number at the dump
	Family int    // AF_INET or AF_INET6
	Type   int    // SOCK_STREAM or SOCK_DGRAM
	Proto  int    // IPPROTO_TCP, IPPROTO_UDP or IPPROTO_UDPLITE
	// State is tcpListen or tcpClose for TCP, tcpClose or
	// tcpEstablished (connected) for UDP.
	State uint32
	// Src is the address bound (port 0: not bound), Dst the peer of a
	// connected UDP socket (port 0: none).
	Src, Dst netip.AddrPort
	// Ifname is the device an IPv6 link-local Src is scoped to.
	Ifname  string
	Backlog int   // listen(2) backlog of a listening socket
	V6Only  *bool // IPV6_V6ONLY, nil when the image does not say
	// Shutdown is the shutdown(2) how, -1 for none.
	Shutdown int
	Opts     *sk_opts.SkOptsEntry
	IP       *sk_inet.IpOptsEntry     // may be nil
	TCP      *tcp_stream.TcpOptsEntry // may be nil
	// Conn is the state of an established connection (tcpest.go),
	// planned with Options.TCPEstablished; nil for other sockets.
	Conn *TCPConn
	// owner is who the engine makes it as (userns_sock.go)
	owner *sockOwner
}

func (s *InetSocket) protoName() string {
	switch s.Proto {
	case unix.IPPROTO_TCP:
		return "TCP"
	case unix.IPPROTO_UDP:
		return "UDP"
	case unix.IPPROTO_UDPLITE:
		return "UDP-Lite"
	}
	return fmt.Sprintf("protocol %d", s.Proto)
}

// String names the socket as errors show it: "TCP 127.0.0.1:80 (LISTEN)".
func (s *InetSocket) String() string {
	str := fmt.Sprintf("%s %s", s.protoName(), s.Src)
	if s.Dst.Port() != 0 {
		str += " -> " + s.Dst.String()
	}
	if s.Proto == unix.IPPROTO_TCP {
		str += " (" + tcpStateName(s.State) + ")"
	}
	return str
}

// inetSocketFile plans the INETSK entry id of files.img.
func (p *Plan) inetSocketFile(t *Task, id uint32, e *sk_inet.InetSkEntry) (*File, error) {
	bad := func(format string, args ...any) error {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: inet socket: "+format, append([]any{id}, args...)...)}
	}
	s := &InetSocket{Ino: e.GetIno(), Family: int(e.GetFamily()), Type: int(e.GetType()), Proto: int(e.GetProto()),
		State: e.GetState(), Backlog: int(e.GetBacklog()), V6Only: e.V6Only, Ifname: e.GetIfname(), Shutdown: -1,
		Opts: e.GetOpts(), IP: e.GetIpOpts(), TCP: e.GetTcpOpts()}
	switch s.Family {
	case unix.AF_INET, unix.AF_INET6:
	default:
		return nil, bad("address family %d", s.Family)
	}
	switch {
	case s.Type == unix.SOCK_RAW:
		return nil, bad("raw sockets are not supported")
	case s.Type == unix.SOCK_STREAM && s.Proto == unix.IPPROTO_TCP:
	case s.Type == unix.SOCK_DGRAM && (s.Proto == unix.IPPROTO_UDP || s.Proto == unix.IPPROTO_UDPLITE):
	case s.Type == unix.SOCK_DGRAM && (s.Proto == unix.IPPROTO_ICMP || s.Proto == unix.IPPROTO_ICMPV6):
		return nil, bad("ICMP (ping) sockets are not supported")
	default:
		return nil, bad("socket type %d protocol %d is not supported", s.Type, s.Proto)
	}
	var err error
	if s.Src, err = inetAddr(s.Family, e.GetSrcAddr(), e.GetSrcPort()); err != nil {
		return nil, bad("source address: %v", err)
	}
	if s.Dst, err = inetAddr(s.Family, e.GetDstAddr(), e.GetDstPort()); err != nil {
		return nil, bad("destination address: %v", err)
	}
	if s.Opts == nil {
		return nil, bad("no socket options (sk_opts_entry)")
	}
	if s.Proto == unix.IPPROTO_TCP {
		// CRIU takes a TCP socket with a peer for a connection
		// (tcp_connection), whatever its state says.
		switch {
		case s.State == tcpListen && s.Dst.Port() == 0:
			if s.Src.Port() == 0 {
				return nil, bad("%s listening on port 0", s)
			}
		case s.State == tcpClose && s.Dst.Port() == 0:
		case s.Dst.Port() != 0 && s.Src.Port() != 0:
			// a connection: restored with --tcp-established
			// (tcpest.go, tcphalf.go) or refused, naming its fd,
			// by planTCPConnections
		case s.Dst.Port() != 0:
			return nil, bad("%s: a TCP connection with no port of its own", s)
		default:
			return nil, bad("%s: a TCP socket with no peer in that state", s)
		}
	} else if !(s.State == tcpClose && s.Dst.Port() == 0 || s.State == tcpEstablished && s.Dst.Port() != 0) {
		return nil, bad("%s in %s, with peer port %d", s, tcpStateName(s.State), s.Dst.Port())
	}
	if extra := e.GetFlags() &^ (syscall.O_ACCMODE | syscall.O_NONBLOCK | syscall.O_ASYNC); extra != 0 {
		return nil, bad("status flags %#o: only O_NONBLOCK and O_ASYNC are restored on sockets", extra)
	}
	if raw := s.IP.GetRaw(); raw != nil && (raw.Hdrincl != nil || raw.Nodefrag != nil || raw.Checksum != nil || len(raw.IcmpvFilter) > 0) {
		return nil, bad("raw socket options on a %s socket", s.protoName())
	}
	if e.Shutdown != nil {
		switch e.GetShutdown() {
		case sk_opts.SkShutdown_NONE:
		case sk_opts.SkShutdown_READ:
			s.Shutdown = syscall.SHUT_RD
		case sk_opts.SkShutdown_WRITE:
			s.Shutdown = syscall.SHUT_WR
		case sk_opts.SkShutdown_BOTH:
			s.Shutdown = syscall.SHUT_RDWR
		default:
			return nil, bad("shutdown %d", e.GetShutdown())
		}
	}
	if s.Ifname != "" {
		if _, err := net.InterfaceByName(s.Ifname); err != nil {
			return nil, bad("%s is scoped to device %s: %v", s, s.Ifname, err)
		}
	}
	f := &File{ID: id, Kind: FileInetSocket, Path: fmt.Sprintf("socket:[%d]", s.Ino), Flags: e.GetFlags(), Inet: s}
	p.Files[id] = f
	return f, nil
}

// inetAddr reads an address as CRIU stores it: the bytes of in_addr or
// in6_addr (network order) in host-order u32 words, one for IPv4 (CRIU
// 0.1 wrote four), four for IPv6.
func inetAddr(family int, words []uint32, port uint32) (netip.AddrPort, error) {
	if port > 0xffff {
		return netip.AddrPort{}, fmt.Errorf("port %d", port)
	}
	var b []byte
	for _, w := range words {
		b = binary.NativeEndian.AppendUint32(b, w)
	}
	switch {
	case family == unix.AF_INET && len(words) >= 1:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(port)), nil
	case family == unix.AF_INET6 && len(words) == 4:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b)), uint16(port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("%d words for address family %d", len(words), family)
}

// sockaddr is a in the form bind(2) and connect(2) take.
func sockaddr(family int, a netip.AddrPort, ifindex int) unix.Sockaddr {
	if family == unix.AF_INET {
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16(), ZoneId: uint32(ifindex)}
}

// openInetSocket makes the socket f is: bound, listening or connected,
// with its status flags and options.
func openInetSocket(f *File) (int, error) {
	s := f.Inet
	if s.Conn != nil {
		return openTCPConnection(f) // tcpest.go
	}
	var fd int
	err := s.owner.makeSocket(func() (err error) {
		fd, err = unix.Socket(s.Family, s.Type|unix.SOCK_CLOEXEC, s.Proto)
		return os.NewSyscallError("socket", err)
	})
	if err != nil {
		return -1, fmt.Errorf("inet socket %s: %w", s, err)
	}
	if err := setupInetSocket(fd, f); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("inet socket %s: %w", s, err)
	}
	return fd, nil
}

// setSockInt sets an int option of socket fd, the error naming it.
func setSockInt(fd, level, opt int, name string, v int) error {
	if err := unix.SetsockoptInt(fd, level, opt, v); err != nil {
		return os.NewSyscallError(fmt.Sprintf("setsockopt(%s, %d)", name, v), err)
	}
	return nil
}

// beforeBind sets what an inet socket needs before its bind. IPV6_V6ONLY
// explicitly both ways: a fresh socket's default comes from
// net.ipv6.bindv6only, which need not be the dumping host's.
// SO_REUSEADDR lets the bind pass over connections of the dumped tree
// left in TIME_WAIT on the port (never over a socket that listens or is
// bound without it); SO_REUSEPORT is the image's, so that the socket
// joins the same groups. applySockOpts (or, for a connection, the end of
// repair mode) puts both back to the image's values.
func beforeBind(fd int, s *InetSocket) error {
	if s.Family == unix.AF_INET6 && s.V6Only != nil {
		if err := setSockInt(fd, unix.SOL_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY", boolInt(*s.V6Only)); err != nil {
			return err
		}
	}
	if err := setSockInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR", 1); err != nil {
		return err
	}
	if s.Opts.GetSoReuseport() {
		return setSockInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT", 1)
	}
	return nil
}

func setupInetSocket(fd int, f *File) error {
	s := f.Inet
	if err := beforeBind(fd, s); err != nil {
		return err
	}
	if s.Src.Port() != 0 {
		if err := bindInet(fd, s); err != nil {
			return err
		}
	}
	if s.State == tcpListen {
		if err := unix.Listen(fd, s.Backlog); err != nil {
			return os.NewSyscallError(fmt.Sprintf("listen(%d)", s.Backlog), err)
		}
	}
	if s.Dst.Port() != 0 {
		if err := unix.Connect(fd, sockaddr(s.Family, s.Dst, 0)); err != nil {
			return fmt.Errorf("connect %s: %w", s.Dst, err)
		}
	}
	if f.Flags&syscall.O_NONBLOCK != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, unix.O_NONBLOCK); err != nil {
			return os.NewSyscallError("fcntl(F_SETFL, O_NONBLOCK)", err)
		}
	}
	if err := applyIPOpts(fd, s); err != nil {
		return err
	}
	if err := applySockOpts(fd, s.Opts); err != nil {
		return err
	}
	if err := applyTCPOpts(fd, s); err != nil {
		return err
	}
	if s.Shutdown >= 0 {
		// As CRIU: an unconnected socket says ENOTCONN but keeps the
		// shutdown bits.
		if err := unix.Shutdown(fd, s.Shutdown); err != nil && !(errors.Is(err, syscall.ENOTCONN) && s.State == tcpClose) {
			return os.NewSyscallError(fmt.Sprintf("shutdown(%d)", s.Shutdown), err)
		}
	}
	return nil
}

// applyTCPOpts sets the tcp_opts_entry fields the image has.
func applyTCPOpts(fd int, s *InetSocket) error {
	if s.Proto == unix.IPPROTO_TCP && s.TCP != nil {
		for _, o := range []struct {
			has  bool
			opt  int
			name string
			v    int
		}{
			{s.TCP.Nodelay != nil, unix.TCP_NODELAY, "TCP_NODELAY", boolInt(s.TCP.GetNodelay())},
			{s.TCP.Cork != nil, unix.TCP_CORK, "TCP_CORK", boolInt(s.TCP.GetCork())},
			{s.TCP.Keepcnt != nil, unix.TCP_KEEPCNT, "TCP_KEEPCNT", int(s.TCP.GetKeepcnt())},
			{s.TCP.Keepidle != nil, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE", int(s.TCP.GetKeepidle())},
			{s.TCP.Keepintvl != nil, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL", int(s.TCP.GetKeepintvl())},
		} {
			if o.has {
				if err := unix.SetsockoptInt(fd, unix.SOL_TCP, o.opt, o.v); err != nil {
					return os.NewSyscallError(fmt.Sprintf("setsockopt(%s, %d)", o.name, o.v), err)
				}
			}
		}
	}
	return nil
}

// bindInet binds fd to s.Src. An IPv6 address may still be tentative
// (duplicate address detection) right after a device comes up: as CRIU,
// the bind is done with IP_FREEBIND, which is then put back.
func bindInet(fd int, s *InetSocket) error {
	ifindex := 0
	if s.Ifname != "" {
		ifi, err := net.InterfaceByName(s.Ifname)
		if err != nil {
			return fmt.Errorf("bind %s%%%s: %w", s.Src, s.Ifname, err)
		}
		ifindex = ifi.Index
	}
	freebind := s.Family == unix.AF_INET6 && !s.IP.GetFreebind()
	if freebind {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1); err != nil {
			return os.NewSyscallError("setsockopt(IP_FREEBIND, 1)", err)
		}
	}
	if err := unix.Bind(fd, sockaddr(s.Family, s.Src, ifindex)); err != nil {
		if s.Ifname != "" {
			return fmt.Errorf("bind %s (device %s): %w", s.Src, s.Ifname, err)
		}
		return fmt.Errorf("bind %s: %w", s.Src, err)
	}
	if freebind {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 0); err != nil {
			return os.NewSyscallError("setsockopt(IP_FREEBIND, 0)", err)
		}
	}
	return nil
}

// applyIPOpts sets the ip_opts_entry fields the image has, as CRIU's
// restore_ip_opts: IPv6 has only FREEBIND and RECVPKTINFO.
func applyIPOpts(fd int, s *InetSocket) error {
	o := s.IP
	if o == nil {
		return nil
	}
	type ipopt struct {
		has        bool
		level, opt int
		name       string
		v          int
	}
	var opts []ipopt
	if s.Family == unix.AF_INET6 {
		opts = []ipopt{
			{o.Freebind != nil, unix.SOL_IPV6, unix.IPV6_FREEBIND, "IPV6_FREEBIND", boolInt(o.GetFreebind())},
			{o.Pktinfo != nil, unix.SOL_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO", boolInt(o.GetPktinfo())},
		}
	} else {
		opts = []ipopt{
			{o.Freebind != nil, unix.SOL_IP, unix.IP_FREEBIND, "IP_FREEBIND", boolInt(o.GetFreebind())},
			{o.Pktinfo != nil, unix.SOL_IP, unix.IP_PKTINFO, "IP_PKTINFO", boolInt(o.GetPktinfo())},
			{o.Tos != nil, unix.SOL_IP, unix.IP_TOS, "IP_TOS", int(o.GetTos())},
			{o.Ttl != nil, unix.SOL_IP, unix.IP_TTL, "IP_TTL", int(o.GetTtl())},
		}
	}
	for _, x := range opts {
		if !x.has {
			continue
		}
		if err := unix.SetsockoptInt(fd, x.level, x.opt, x.v); err != nil {
			return os.NewSyscallError(fmt.Sprintf("setsockopt(%s, %d)", x.name, x.v), err)
		}
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
