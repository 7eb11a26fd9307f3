package restore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
)

// defaultOpts is sk_opts_entry as CRIU 4.2 writes it for a socket nobody
// set an option on (sizes are the caller's).
func defaultOpts(snd, rcv uint32) *sk_opts.SkOptsEntry {
	f := proto.Bool(false)
	return &sk_opts.SkOptsEntry{SoSndbuf: proto.Uint32(snd), SoRcvbuf: proto.Uint32(rcv),
		SoSndTmoSec: proto.Uint64(0), SoSndTmoUsec: proto.Uint64(0), SoRcvTmoSec: proto.Uint64(0), SoRcvTmoUsec: proto.Uint64(0),
		Reuseaddr: f, SoPriority: proto.Uint32(0), SoRcvlowat: proto.Uint32(1), SoDontroute: f, SoNoCheck: f,
		SoReuseport: f, SoBroadcast: f, SoKeepalive: f, SoOobinline: proto.Uint32(0), SoBufLock: proto.Uint32(0)}
}

// readOpts reads back from socket fd what applySockOpts sets, in the
// fields of sk_opts_entry (an oracle for the test, through getsockopt).
func readOpts(t *testing.T, fd int) *sk_opts.SkOptsEntry {
	t.Helper()
	geti := func(level, opt int) uint32 {
		v, err := unix.GetsockoptInt(fd, level, opt)
		if err != nil {
			t.Fatalf("getsockopt(%d, %d): %v", level, opt, err)
		}
		return uint32(v)
	}
	getb := func(opt int) *bool { return proto.Bool(geti(unix.SOL_SOCKET, opt) != 0) }
	o := &sk_opts.SkOptsEntry{SoSndbuf: proto.Uint32(geti(unix.SOL_SOCKET, unix.SO_SNDBUF)), SoRcvbuf: proto.Uint32(geti(unix.SOL_SOCKET, unix.SO_RCVBUF)),
		SoBufLock: proto.Uint32(geti(unix.SOL_SOCKET, unix.SO_BUF_LOCK)), SoPriority: proto.Uint32(geti(unix.SOL_SOCKET, unix.SO_PRIORITY)),
		SoRcvlowat: proto.Uint32(geti(unix.SOL_SOCKET, unix.SO_RCVLOWAT)),
		Reuseaddr:  getb(unix.SO_REUSEADDR), SoReuseport: getb(unix.SO_REUSEPORT), SoDontroute: getb(unix.SO_DONTROUTE),
		SoNoCheck: getb(unix.SO_NO_CHECK), SoBroadcast: getb(unix.SO_BROADCAST), SoKeepalive: getb(unix.SO_KEEPALIVE),
		SoOobinline: proto.Uint32(geti(unix.SOL_SOCKET, unix.SO_OOBINLINE))}
	if m := geti(unix.SOL_SOCKET, unix.SO_MARK); m != 0 {
		o.SoMark = proto.Uint32(m)
	}
	for _, x := range []struct {
		opt       int
		sec, usec **uint64
	}{{unix.SO_SNDTIMEO, &o.SoSndTmoSec, &o.SoSndTmoUsec}, {unix.SO_RCVTIMEO, &o.SoRcvTmoSec, &o.SoRcvTmoUsec}} {
		tv, err := unix.GetsockoptTimeval(fd, unix.SOL_SOCKET, x.opt)
		if err != nil {
			t.Fatal(err)
		}
		*x.sec, *x.usec = proto.Uint64(uint64(tv.Sec)), proto.Uint64(uint64(tv.Usec))
	}
	if dom := geti(unix.SOL_SOCKET, unix.SO_DOMAIN); dom == unix.AF_UNIX {
		o.SoPasscred, o.SoPasssec = getb(unix.SO_PASSCRED), getb(unix.SO_PASSSEC)
	}
	l, err := unix.GetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER)
	if err != nil {
		t.Fatal(err)
	}
	if l.Onoff != 0 {
		o.SoLinger = proto.Uint32(uint32(l.Linger))
	}
	if dev, err := unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE); err != nil {
		t.Fatal(err)
	} else if dev != "" {
		o.SoBoundDev = proto.String(dev)
	}
	return o
}

func newSocket(t *testing.T, family, typ int) int {
	t.Helper()
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestInetSockOpts sets every option of sk_opts_entry on fresh sockets
// and reads them back: buffer sizes above net.core.wmem_max/rmem_max
// (SO_*BUFFORCE), unlocked buffers (SO_BUF_LOCK 0 after the sizes locked
// them), timeouts, priority, mark, linger, device, the boolean options,
// SO_REUSEADDR/SO_REUSEPORT turned off again on a socket that had them.
func TestInetSockOpts(t *testing.T) {
	set := proto.Bool(true)
	for _, tc := range []struct {
		name         string
		family, typ  int
		edit         func(o *sk_opts.SkOptsEntry)
		before       func(fd int) // state of the fresh socket
		wantTCPKeeps [3]int
	}{
		{name: "tcp defaults", family: unix.AF_INET, typ: unix.SOCK_STREAM},
		{name: "tcp all", family: unix.AF_INET, typ: unix.SOCK_STREAM, edit: func(o *sk_opts.SkOptsEntry) {
			o.SoSndbuf, o.SoRcvbuf = proto.Uint32(10_000_000), proto.Uint32(12_000_000) // over wmem_max/rmem_max
			o.SoBufLock = proto.Uint32(1)                                               // SOCK_SNDBUF_LOCK only
			o.SoSndTmoSec, o.SoSndTmoUsec = proto.Uint64(3), proto.Uint64(500000)
			o.SoRcvTmoSec, o.SoRcvTmoUsec = proto.Uint64(7), proto.Uint64(20000) // whole jiffies at HZ 100, 250 and 1000
			o.SoPriority, o.SoRcvlowat, o.SoMark = proto.Uint32(5), proto.Uint32(17), proto.Uint32(0x42)
			o.Reuseaddr, o.SoReuseport, o.SoDontroute, o.SoKeepalive = set, set, set, set
			o.SoOobinline, o.SoLinger, o.SoBoundDev = proto.Uint32(1), proto.Uint32(9), proto.String("lo")
			o.TcpKeepcnt, o.TcpKeepidle, o.TcpKeepintvl = proto.Uint32(4), proto.Uint32(100), proto.Uint32(20)
		}, wantTCPKeeps: [3]int{4, 100, 20}},
		{name: "udp", family: unix.AF_INET6, typ: unix.SOCK_DGRAM, edit: func(o *sk_opts.SkOptsEntry) {
			o.SoBroadcast, o.SoNoCheck = set, set
		}},
		{name: "reuse off again", family: unix.AF_INET, typ: unix.SOCK_DGRAM, before: func(fd int) {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}},
		{name: "unix", family: unix.AF_UNIX, typ: unix.SOCK_STREAM, edit: func(o *sk_opts.SkOptsEntry) {
			o.SoPasscred, o.SoPasssec = set, proto.Bool(false)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd := newSocket(t, tc.family, tc.typ)
			snd, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
			rcv, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
			want := defaultOpts(uint32(snd), uint32(rcv))
			if tc.family == unix.AF_UNIX {
				want.SoPasscred, want.SoPasssec = proto.Bool(false), proto.Bool(false)
			}
			if tc.edit != nil {
				tc.edit(want)
			}
			if tc.before != nil {
				tc.before(fd)
			}
			if err := applySockOpts(fd, want); err != nil {
				t.Fatal(err)
			}
			got := readOpts(t, fd)
			w := proto.Clone(want).(*sk_opts.SkOptsEntry)
			w.TcpKeepcnt, w.TcpKeepidle, w.TcpKeepintvl = nil, nil, nil
			if !proto.Equal(got, w) {
				t.Errorf("read back\n%v\nwant\n%v", got, w)
			}
			if tc.wantTCPKeeps[0] != 0 {
				for i, opt := range []int{unix.TCP_KEEPCNT, unix.TCP_KEEPIDLE, unix.TCP_KEEPINTVL} {
					if v, err := unix.GetsockoptInt(fd, unix.SOL_TCP, opt); err != nil || v != tc.wantTCPKeeps[i] {
						t.Errorf("TCP option %d: %d %v, want %d", opt, v, err, tc.wantTCPKeeps[i])
					}
				}
			}
		})
	}
}

// TestInetSockOptsFilter: a classic socket filter in CRIU's packing
// comes back and filters: "ret #0" drops every datagram, "ret #10" cuts
// it to 10 bytes with its UDP header (2 of data), "ret #-1" lets it
// through whole.
func TestInetSockOptsFilter(t *testing.T) {
	for _, tc := range []struct {
		name string
		k    uint32
		want int // bytes received, -1: none
	}{{"drop", 0, -1}, {"cut", 8 + 2, 2}, {"accept", 0xffffffff, 3}} {
		t.Run(tc.name, func(t *testing.T) {
			fd := newSocket(t, unix.AF_INET, unix.SOCK_DGRAM)
			o := defaultOpts(212992, 212992)
			o.SoFilter = []uint64{uint64(unix.BPF_RET|unix.BPF_K)<<48 | uint64(tc.k)} // code<<48 | jt<<40 | jf<<32 | k
			if err := applySockOpts(fd, o); err != nil {
				t.Fatal(err)
			}
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				t.Fatal(err)
			}
			sa, _ := unix.Getsockname(fd)
			tx := newSocket(t, unix.AF_INET, unix.SOCK_DGRAM)
			if err := unix.Sendto(tx, []byte("xyz"), 0, sa); err != nil {
				t.Fatal(err)
			}
			n, _, err := unix.Recvfrom(fd, make([]byte, 8), unix.MSG_DONTWAIT)
			if err != nil {
				n = -1
			}
			if n != tc.want {
				t.Errorf("received %d bytes (%v), want %d", n, err, tc.want)
			}
		})
	}
}

// TestInetSockOptsUnprivileged: without CAP_NET_ADMIN (dropped on one
// locked thread: capabilities are per thread) SO_*BUFFORCE fails with
// EPERM; sizes within net.core.[rw]mem_max are then set with the plain
// options, and a size above them is an error naming what it needs.
func TestInetSockOptsUnprivileged(t *testing.T) {
	needRoot(t)
	type result struct{ within, above error }
	done := make(chan result)
	go func() {
		// CAP_NET_ADMIN leaves this thread's effective set for the
		// test and comes back after; only then is the thread let go
		// (were it the main thread, which the runtime keeps when a
		// locked goroutine ends, every later test would lack it)
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			done <- result{err, err}
			return
		}
		orig := data
		defer func() {
			if unix.Capset(&hdr, &orig[0]) == nil {
				runtime.UnlockOSThread()
			}
		}()
		data[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- result{err, err}
			return
		}
		var r result
		fd, _ := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 100000); !errors.Is(err, syscall.EPERM) {
			done <- result{errors.New("SO_SNDBUFFORCE without CAP_NET_ADMIN: not EPERM"), nil}
			return
		}
		r.within = applySockOpts(fd, defaultOpts(300000, 400000))
		if r.within == nil {
			snd, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
			rcv, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
			if snd != 300000 || rcv != 400000 {
				r.within = fmt.Errorf("sizes %d %d", snd, rcv)
			}
		}
		r.above = applySockOpts(fd, defaultOpts(10_000_000, 400000))
		done <- r
	}()
	r := <-done
	if r.within != nil {
		t.Errorf("sizes within the limits: %v", r.within)
	}
	if r.above == nil || !strings.Contains(r.above.Error(), "SO_SNDBUF 10000000 needs CAP_NET_ADMIN (SO_SNDBUFFORCE); without it the kernel gives") {
		t.Errorf("a size above the limits: %v", r.above)
	}
}

// inetPorts are free ports for the sockets addInetSockets adds, picked
// by binding to port 0 (TCP and UDP alike, so each is free in both).
func inetPorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var held []int
	for len(ports) < n {
		fd := newSocket(t, unix.AF_INET6, unix.SOCK_STREAM)
		if err := unix.Bind(fd, &unix.SockaddrInet6{}); err != nil {
			t.Fatal(err)
		}
		sa, _ := unix.Getsockname(fd)
		p := sa.(*unix.SockaddrInet6).Port
		u, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, fd, u)
		if unix.Bind(u, &unix.SockaddrInet6{Port: p}) == nil {
			ports = append(ports, p)
		}
	}
	for _, fd := range held {
		unix.Close(fd)
	}
	return ports
}

// inetEntry is an inet_sk_entry as CRIU 4.2 writes it for a socket of
// family, type and proto at src (and dst), without options set.
func inetEntry(id uint32, family, typ, proto_ int, state uint32, src, dst netip.AddrPort, flags uint32) *sk_inet.InetSkEntry {
	words := func(a netip.AddrPort) []uint32 {
		b := a.Addr().AsSlice()
		if !a.Addr().IsValid() && family == unix.AF_INET6 {
			b = make([]byte, 16)
		} else if !a.Addr().IsValid() {
			b = make([]byte, 4)
		}
		var w []uint32
		for i := 0; i < len(b); i += 4 {
			w = append(w, binary.NativeEndian.Uint32(b[i:]))
		}
		return w
	}
	e := &sk_inet.InetSkEntry{Id: proto.Uint32(id), Ino: proto.Uint32(1000 + id), Family: proto.Uint32(uint32(family)),
		Type: proto.Uint32(uint32(typ)), Proto: proto.Uint32(uint32(proto_)), State: proto.Uint32(state),
		SrcPort: proto.Uint32(uint32(src.Port())), DstPort: proto.Uint32(uint32(dst.Port())), Flags: proto.Uint32(flags),
		Backlog: proto.Uint32(0), SrcAddr: words(src), DstAddr: words(dst),
		Fown: &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)},
		Opts: defaultOpts(16384*2, 131072*2), IpOpts: &sk_inet.IpOptsEntry{}}
	if family == unix.AF_INET6 {
		e.V6Only = proto.Bool(false)
	}
	if family == unix.AF_INET {
		e.IpOpts.Ttl = proto.Uint32(64)
	}
	if proto_ == unix.IPPROTO_TCP {
		e.TcpOpts = &tcp_stream.TcpOptsEntry{Keepcnt: proto.Uint32(9), Keepidle: proto.Uint32(7200), Keepintvl: proto.Uint32(75)}
	}
	return e
}

var (
	lo4    = netip.MustParseAddr("127.0.0.1")
	lo6    = netip.IPv6Loopback()
	noAddr = netip.AddrPort{}
)

// addInetSockets gives task 2 of the tree fixture's images (fd table
// fdinfo-3.img) inet sockets at fds 10-17 (files 200-207), as CRIU 4.2
// writes them, on ports[0..3]:
//
//	10  TCP 127.0.0.1:ports[0] listening, backlog 5, TCP_NODELAY, TCP_KEEPIDLE 55
//	11  TCP [::]:ports[1] listening, IPV6_V6ONLY, O_NONBLOCK
//	12  UDP 127.0.0.1:ports[2], IP_TOS 0x20
//	13  UDP [::1]:ports[3] connected to [::1]:ports[4]
//	14  UDP-Lite 127.0.0.1:ports[5]
//	15  TCP never bound
//	16  UDP never bound, shut down both ways
//	17  UDP [fe80::1%lo]:ports[2], link-local: scoped to lo (ifname)
//
// edit may change the entries (by fd - 10) before they are written.
func addInetSockets(t *testing.T, dir string, ports []int, edit func(es []*sk_inet.InetSkEntry)) {
	t.Helper()
	at := func(a netip.Addr, i int) netip.AddrPort { return netip.AddrPortFrom(a, uint16(ports[i])) }
	es := []*sk_inet.InetSkEntry{
		inetEntry(200, unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, tcpListen, at(lo4, 0), noAddr, 02),
		inetEntry(201, unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP, tcpListen, at(netip.IPv6Unspecified(), 1), noAddr, 04002),
		inetEntry(202, unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP, tcpClose, at(lo4, 2), noAddr, 02),
		inetEntry(203, unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDP, tcpEstablished, at(lo6, 3), at(lo6, 4), 02),
		inetEntry(204, unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE, tcpClose, at(lo4, 5), noAddr, 02),
		inetEntry(205, unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, tcpClose, noAddr, noAddr, 02),
		inetEntry(206, unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP, tcpClose, noAddr, noAddr, 02),
		inetEntry(207, unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDP, tcpClose, at(netip.MustParseAddr("fe80::1"), 2), noAddr, 02),
	}
	es[7].Ifname = proto.String("lo")
	es[6].Shutdown = sk_opts.SkShutdown_BOTH.Enum()
	es[0].Backlog = proto.Uint32(5)
	es[0].TcpOpts.Nodelay, es[0].TcpOpts.Keepidle = proto.Bool(true), proto.Uint32(55)
	es[1].Backlog, es[1].V6Only = proto.Uint32(3), proto.Bool(true)
	es[2].IpOpts.Tos = proto.Uint32(0x20)
	if edit != nil {
		edit(es)
	}
	editImage(t, dir, "files.img", func(img *images.Image) {
		for _, e := range es {
			img.Entries = append(img.Entries, images.Entry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_INETSK.Enum(), Id: e.Id, Isk: e}})
		}
	})
	editImage(t, dir, "fdinfo-3.img", func(img *images.Image) {
		for i, e := range es {
			img.Entries = append(img.Entries, images.Entry{Message: &fdinfo.FdinfoEntry{Id: e.Id,
				Flags: proto.Uint32(0), Type: fdinfo.FdTypes_INETSK.Enum(), Fd: proto.Uint32(uint32(10 + i))}})
		}
	})
}

// TestPlanInet: what the plan takes of inet sockets, and what it
// refuses, naming the file and why.
func TestPlanInet(t *testing.T) {
	ports := []int{1001, 1002, 1003, 1004, 1005, 1006}
	dir := fixture.CopyImages(t, "tree")
	addInetSockets(t, dir, ports, nil)
	p := planDir(t, dir)
	for _, w := range []struct {
		id   uint32
		want string
	}{
		{200, "TCP 127.0.0.1:1001 (LISTEN)"}, {201, "TCP [::]:1002 (LISTEN)"}, {202, "UDP 127.0.0.1:1003"},
		{203, "UDP [::1]:1004 -> [::1]:1005"}, {204, "UDP-Lite 127.0.0.1:1006"}, {205, "TCP 0.0.0.0:0 (CLOSE)"},
	} {
		f := p.Files[w.id]
		if f == nil || f.Kind != FileInetSocket || f.Inet.String() != w.want {
			t.Errorf("file %d: %+v, want an inet socket %s", w.id, f, w.want)
		}
	}
	if s := p.Files[201].Inet; s.Backlog != 3 || s.V6Only == nil || !*s.V6Only || p.Files[201].Flags != 04002 {
		t.Errorf("file 201: %+v", s)
	}
	for _, tc := range []struct {
		name string
		edit func(es []*sk_inet.InetSkEntry)
		want string
	}{
		{"established", func(es []*sk_inet.InetSkEntry) {
			es[5].State, es[5].DstPort, es[5].SrcPort = proto.Uint32(tcpEstablished), proto.Uint32(80), proto.Uint32(5000)
		}, "fd 15: file 205 of files.img: TCP 0.0.0.0:5000 -> 0.0.0.0:80 (ESTABLISHED): a TCP connection needs --tcp-established"},
		{"closing", func(es []*sk_inet.InetSkEntry) { es[5].State, es[5].DstPort = proto.Uint32(8), proto.Uint32(80) },
			"(CLOSE_WAIT): a TCP connection with no port of its own"},
		{"closed with a peer", func(es []*sk_inet.InetSkEntry) { es[5].DstPort = proto.Uint32(80) },
			"(CLOSE): a TCP connection with no port of its own"},
		{"raw", func(es []*sk_inet.InetSkEntry) {
			es[2].Type, es[2].Proto = proto.Uint32(unix.SOCK_RAW), proto.Uint32(unix.IPPROTO_ICMP)
		},
			"file 202: inet socket: raw sockets are not supported"},
		{"ping", func(es []*sk_inet.InetSkEntry) { es[2].Proto = proto.Uint32(unix.IPPROTO_ICMP) },
			"file 202: inet socket: ICMP (ping) sockets are not supported"},
		{"sctp", func(es []*sk_inet.InetSkEntry) { es[0].Proto = proto.Uint32(unix.IPPROTO_SCTP) },
			"file 200: inet socket: socket type 1 protocol 132 is not supported"},
		{"family", func(es []*sk_inet.InetSkEntry) { es[0].Family = proto.Uint32(unix.AF_PACKET) },
			"file 200: inet socket: address family 17"},
		{"owner", func(es []*sk_inet.InetSkEntry) { es[2].Fown.Pid = proto.Uint32(7) },
			"file 202: the owner for SIGIO (F_SETOWN), thread 7, is not in the tree"},
		{"signal", func(es []*sk_inet.InetSkEntry) { es[2].Fown.Signum = proto.Uint32(99) },
			"file 202: signal 99 for SIGIO (F_SETSIG) is not a signal"},
		{"address", func(es []*sk_inet.InetSkEntry) { es[1].SrcAddr = es[1].SrcAddr[:1] },
			"file 201: inet socket: source address: 1 words for address family 10"},
		{"port", func(es []*sk_inet.InetSkEntry) { es[3].DstPort = proto.Uint32(70000) },
			"file 203: inet socket: destination address: port 70000"},
		{"udp listening", func(es []*sk_inet.InetSkEntry) { es[2].State = proto.Uint32(tcpListen) },
			"file 202: inet socket: UDP 127.0.0.1:1003 in LISTEN, with peer port 0"},
		{"udp connected without a peer", func(es []*sk_inet.InetSkEntry) { es[3].DstPort = proto.Uint32(0) },
			"file 203: inet socket: UDP [::1]:1004 in ESTABLISHED, with peer port 0"},
		{"listening on port 0", func(es []*sk_inet.InetSkEntry) { es[0].SrcPort = proto.Uint32(0) },
			"file 200: inet socket: TCP 127.0.0.1:0 (LISTEN) listening on port 0"},
		{"device", func(es []*sk_inet.InetSkEntry) { es[1].Ifname = proto.String("nosuch0") },
			"file 201: inet socket: TCP [::]:1002 (LISTEN) is scoped to device nosuch0"},
		{"raw options", func(es []*sk_inet.InetSkEntry) { es[2].IpOpts.Raw = &sk_inet.IpOptsRawEntry{Hdrincl: proto.Bool(true)} },
			"file 202: inet socket: raw socket options on a UDP socket"},
		{"shutdown", func(es []*sk_inet.InetSkEntry) { es[2].Shutdown = sk_opts.SkShutdown(5).Enum() },
			"file 202: inet socket: shutdown 5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyImages(t, "tree")
			addInetSockets(t, dir, ports, tc.edit)
			_, err := openPlan(t, dir)
			// a connection is refused where its fd is, in the task's fdinfo
			file := "files.img"
			if strings.HasPrefix(tc.want, "fd ") {
				file = "fdinfo-3.img"
			}
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), "task 2: "+file+": ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a PlanError of task 2 in %s with %q", err, file, tc.want)
			}
		})
	}
}

// taskFD is a copy of fd of process pid (pidfd_getfd: the same open file
// description).
func taskFD(t *testing.T, pid, fd int) int {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	c, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		t.Fatalf("pidfd_getfd(%d, %d): %v", pid, fd, err)
	}
	t.Cleanup(func() { unix.Close(c) })
	return c
}

func addrOf(t *testing.T, sa unix.Sockaddr, err error) netip.AddrPort {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	t.Fatalf("address %#v", sa)
	return netip.AddrPort{}
}

func sockaddrOf(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

// receives waits up to 5 s for a datagram on fd and checks it is want.
func receives(t *testing.T, what string, fd int, want string) {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); n != 1 || err != nil {
		t.Errorf("%s: nothing to receive (%v)", what, err)
		return
	}
	b := make([]byte, 64)
	n, _, err := unix.Recvfrom(fd, b, unix.MSG_DONTWAIT)
	if err != nil || string(b[:n]) != want {
		t.Errorf("%s: received %q (%v), want %q", what, b[:max(n, 0)], err, want)
	}
}

// accepts connects to the listener at a and checks that the listener
// fd (a copy of the restored task's) accepts the connection.
func accepts(t *testing.T, what string, l int, a netip.AddrPort) {
	t.Helper()
	family := unix.AF_INET
	if a.Addr().Is6() {
		family = unix.AF_INET6
	}
	c := newSocket(t, family, unix.SOCK_STREAM)
	if err := unix.Connect(c, sockaddrOf(a)); err != nil {
		t.Errorf("%s: connect %s: %v", what, a, err)
		return
	}
	pfd := []unix.PollFd{{Fd: int32(l), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); n != 1 || err != nil {
		t.Errorf("%s: no connection to accept (%v)", what, err)
		return
	}
	nfd, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
	if err != nil {
		t.Errorf("%s: accept: %v", what, err)
		return
	}
	unix.Close(nfd)
}

// TestRestoreInet restores the tree fixture with the inet sockets of
// addInetSockets in task 2 and checks them through copies of the
// restored task's fds: addresses, peers, options and status flags as the
// images say, the listeners accept connections from the test, the UDP
// and UDP-Lite sockets receive and send datagrams.
func TestRestoreInet(t *testing.T) {
	needRoot(t)
	ports := inetPorts(t, 6)
	at := func(a netip.Addr, i int) netip.AddrPort { return netip.AddrPortFrom(a, uint16(ports[i])) }
	peer := newSocket(t, unix.AF_INET6, unix.SOCK_DGRAM)
	if err := unix.Bind(peer, sockaddrOf(at(lo6, 4))); err != nil {
		t.Fatal(err)
	}
	dir := fixture.CopyImages(t, "tree")
	addInetSockets(t, dir, ports, nil)
	installFixture(t, "tree")
	p := planDir(t, dir)
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	hosts := abortAtCleanup(t, r, p)
	for i, task := range p.Tasks {
		checkTask(t, task, hosts[i])
	}
	host := hosts[1]
	fds := map[int]int{}
	for fd := 10; fd <= 17; fd++ {
		fds[fd] = taskFD(t, host, fd)
	}
	opt := func(fd, level, o int) int {
		v, err := unix.GetsockoptInt(fds[fd], level, o)
		if err != nil {
			t.Fatalf("fd %d: getsockopt(%d, %d): %v", fd, level, o, err)
		}
		return v
	}
	for _, c := range []struct {
		fd          int
		typ, proto_ int
		src, dst    netip.AddrPort
		opts        [][4]int // level, option, value, unused
		nonblock    bool
	}{
		{10, unix.SOCK_STREAM, unix.IPPROTO_TCP, at(lo4, 0), noAddr, [][4]int{{unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 1},
			{unix.SOL_TCP, unix.TCP_NODELAY, 1}, {unix.SOL_TCP, unix.TCP_KEEPIDLE, 55}, {unix.SOL_SOCKET, unix.SO_REUSEADDR, 0}}, false},
		{11, unix.SOCK_STREAM, unix.IPPROTO_TCP, at(netip.IPv6Unspecified(), 1), noAddr, [][4]int{{unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 1},
			{unix.SOL_IPV6, unix.IPV6_V6ONLY, 1}, {unix.SOL_SOCKET, unix.SO_REUSEADDR, 0},
			{unix.SOL_IPV6, unix.IPV6_FREEBIND, 0}}, true}, // bound with it, then put back
		{12, unix.SOCK_DGRAM, unix.IPPROTO_UDP, at(lo4, 2), noAddr, [][4]int{{unix.SOL_IP, unix.IP_TOS, 0x20}, {unix.SOL_IP, unix.IP_TTL, 64}}, false},
		// bound to [::1], which sets IPV6_V6ONLY whatever the image says
		{13, unix.SOCK_DGRAM, unix.IPPROTO_UDP, at(lo6, 3), at(lo6, 4), [][4]int{{unix.SOL_IPV6, unix.IPV6_V6ONLY, 1}}, false},
		{14, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE, at(lo4, 5), noAddr, nil, false},
		{15, unix.SOCK_STREAM, unix.IPPROTO_TCP, netip.AddrPortFrom(netip.IPv4Unspecified(), 0), noAddr, [][4]int{{unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 0}}, false},
		{16, unix.SOCK_DGRAM, unix.IPPROTO_UDP, netip.AddrPortFrom(netip.IPv4Unspecified(), 0), noAddr, nil, false},
		// lo has no fe80::1: bound with IP_FREEBIND, which is put back
		{17, unix.SOCK_DGRAM, unix.IPPROTO_UDP, at(netip.MustParseAddr("fe80::1"), 2), noAddr, [][4]int{{unix.SOL_IPV6, unix.IPV6_FREEBIND, 0}}, false},
	} {
		if got := opt(c.fd, unix.SOL_SOCKET, unix.SO_TYPE); got != c.typ {
			t.Errorf("fd %d: type %d, want %d", c.fd, got, c.typ)
		}
		if got := opt(c.fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); got != c.proto_ {
			t.Errorf("fd %d: protocol %d, want %d", c.fd, got, c.proto_)
		}
		src, err := unix.Getsockname(fds[c.fd])
		if a := addrOf(t, src, err); a != c.src {
			t.Errorf("fd %d: bound to %s, want %s", c.fd, a, c.src)
		}
		if dst, err := unix.Getpeername(fds[c.fd]); c.dst.IsValid() {
			if a := addrOf(t, dst, err); a != c.dst {
				t.Errorf("fd %d: peer %s, want %s", c.fd, a, c.dst)
			}
		} else if err != unix.ENOTCONN {
			t.Errorf("fd %d: peer %v (%v), want none", c.fd, dst, err)
		}
		for _, o := range c.opts {
			if got := opt(c.fd, o[0], o[1]); got != o[2] {
				t.Errorf("fd %d: option %d:%d is %d, want %d", c.fd, o[0], o[1], got, o[2])
			}
		}
		fl, err := unix.FcntlInt(uintptr(fds[c.fd]), unix.F_GETFL, 0)
		if err != nil || (fl&unix.O_NONBLOCK != 0) != c.nonblock || fl&unix.O_ACCMODE != unix.O_RDWR {
			t.Errorf("fd %d: status flags %#o (%v), want O_RDWR, O_NONBLOCK %v", c.fd, fl, err, c.nonblock)
		}
	}
	accepts(t, "fd 10", fds[10], at(lo4, 0))
	accepts(t, "fd 11", fds[11], at(lo6, 1))
	// IPV6_V6ONLY: the listener on [::] takes no IPv4 connection
	c4 := newSocket(t, unix.AF_INET, unix.SOCK_STREAM)
	if err := unix.Connect(c4, sockaddrOf(at(lo4, 1))); err != unix.ECONNREFUSED {
		t.Errorf("fd 11 (IPV6_V6ONLY): IPv4 connect to port %d: %v, want ECONNREFUSED", ports[1], err)
	}
	tx := newSocket(t, unix.AF_INET, unix.SOCK_DGRAM)
	if err := unix.Sendto(tx, []byte("to 12"), 0, sockaddrOf(at(lo4, 2))); err != nil {
		t.Fatal(err)
	}
	receives(t, "fd 12", fds[12], "to 12")
	if err := unix.Sendto(peer, []byte("to 13"), 0, sockaddrOf(at(lo6, 3))); err != nil {
		t.Fatal(err)
	}
	receives(t, "fd 13", fds[13], "to 13")
	if err := unix.Send(fds[13], []byte("from 13"), 0); err != nil {
		t.Fatal(err)
	}
	receives(t, "the peer of fd 13", peer, "from 13")
	lite, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDPLITE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lite)
	if err := unix.Sendto(lite, []byte("to 14"), 0, sockaddrOf(at(lo4, 5))); err != nil {
		t.Fatal(err)
	}
	receives(t, "fd 14", fds[14], "to 14")
	if sa, err := unix.Getsockname(fds[17]); err != nil || sa.(*unix.SockaddrInet6).ZoneId != 1 {
		t.Errorf("fd 17: bound to %+v (%v), want the scope of lo (1)", sa, err)
	}
	// shut down both ways: poll says so, sending fails
	pfd := []unix.PollFd{{Fd: int32(fds[16]), Events: unix.POLLRDHUP}}
	if _, err := unix.Poll(pfd, 0); err != nil || pfd[0].Revents&(unix.POLLHUP|unix.POLLRDHUP) != unix.POLLHUP|unix.POLLRDHUP {
		t.Errorf("fd 16: poll events %#x (%v), want POLLHUP|POLLRDHUP", pfd[0].Revents, err)
	}
	if err := unix.Sendto(fds[16], []byte("x"), 0, sockaddrOf(at(lo4, 2))); err != unix.EPIPE {
		t.Errorf("fd 16: send after SHUT_WR: %v, want EPIPE", err)
	}
}

// socketFDs lists this process's socket fds.
func socketFDs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(l, "socket:") {
			out = append(out, e.Name()+" "+l)
		}
	}
	return out
}

// TestRestoreInetPortInUse: a port of the images that someone holds (the
// dumped tree still running, say) fails the restore with an error naming
// the file, the address and the errno; the restore leaves nothing: no
// task, no socket of the engine, not the ports it had bound already.
func TestRestoreInetPortInUse(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name      string
		family    int
		typ       int
		i         int // the port held
		file      uint32
		listening bool
		image     netip.Addr // the address the image binds
	}{
		{"tcp", unix.AF_INET6, unix.SOCK_STREAM, 1, 201, true, netip.IPv6Unspecified()},
		{"udp", unix.AF_INET, unix.SOCK_DGRAM, 2, 202, false, lo4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ports := inetPorts(t, 6)
			holder := newSocket(t, tc.family, tc.typ)
			held := netip.AddrPortFrom(lo4, uint16(ports[tc.i]))
			if tc.family == unix.AF_INET6 {
				held = netip.AddrPortFrom(lo6, uint16(ports[tc.i]))
			}
			if err := unix.Bind(holder, sockaddrOf(held)); err != nil {
				t.Fatal(err)
			}
			if tc.listening {
				if err := unix.Listen(holder, 1); err != nil {
					t.Fatal(err)
				}
			}
			dir := fixture.CopyImages(t, "tree")
			addInetSockets(t, dir, ports, nil)
			fixDir := installFixture(t, "tree")
			p := planDir(t, dir)
			before := socketFDs(t)
			r, err := Start(context.Background(), p, Options{})
			if err == nil {
				abortAtCleanup(t, r, p)
				t.Fatal("restored with a port in use")
			}
			for _, want := range []string{fmt.Sprintf("file %d: ", tc.file),
				"bind " + netip.AddrPortFrom(tc.image, uint16(ports[tc.i])).String() + ": address already in use"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("error %v is not EADDRINUSE", err)
			}
			cli.NothingLeft(t, fixDir)
			if after := socketFDs(t); strings.Join(after, ",") != strings.Join(before, ",") {
				t.Errorf("sockets of the engine left: %v, before the restore %v", after, before)
			}
			// the listener on ports[0], made before the failing one,
			// is gone with the restore
			l := newSocket(t, unix.AF_INET, unix.SOCK_STREAM)
			if err := unix.Bind(l, sockaddrOf(netip.AddrPortFrom(lo4, uint16(ports[0])))); err != nil {
				t.Errorf("port %d after the failed restore: %v", ports[0], err)
			}
		})
	}
}
