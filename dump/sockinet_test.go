package dump

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	sk_inet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	sk_opts "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/procscan"
	"github.com/crest-restore/crest/test/workloads"
)

func newSocket(t *testing.T, family, typ int) int {
	t.Helper()
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestInetSockOptsDump sets options on real sockets and checks that
// sockOpts reads them as CRIU 4.2 writes them: every field a fresh socket
// has, the mark and linger only when set, SO_PASSCRED/SO_PASSSEC only for
// unix sockets, the device, a classic filter in CRIU's packing.
func TestInetSockOptsDump(t *testing.T) {
	yes, no := proto.Bool(true), proto.Bool(false)
	fresh := func(fd int) *sk_opts.SkOptsEntry {
		snd, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
		rcv, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
		return &sk_opts.SkOptsEntry{SoSndbuf: proto.Uint32(uint32(snd)), SoRcvbuf: proto.Uint32(uint32(rcv)),
			SoSndTmoSec: proto.Uint64(0), SoSndTmoUsec: proto.Uint64(0), SoRcvTmoSec: proto.Uint64(0), SoRcvTmoUsec: proto.Uint64(0),
			Reuseaddr: no, SoPriority: proto.Uint32(0), SoRcvlowat: proto.Uint32(1), SoDontroute: no, SoNoCheck: no,
			SoReuseport: no, SoBroadcast: no, SoKeepalive: no, SoOobinline: proto.Uint32(0), SoBufLock: proto.Uint32(0)}
	}
	for _, tc := range []struct {
		name        string
		family, typ int
		set         func(t *testing.T, fd int)
		want        func(o *sk_opts.SkOptsEntry)
	}{
		{name: "tcp fresh", family: unix.AF_INET, typ: unix.SOCK_STREAM},
		{name: "tcp set", family: unix.AF_INET6, typ: unix.SOCK_STREAM, set: func(t *testing.T, fd int) {
			for _, o := range []struct{ opt, v int }{{unix.SO_SNDBUFFORCE, 5_000_000}, {unix.SO_RCVBUF, 100_000}, {unix.SO_BUF_LOCK, 2},
				{unix.SO_PRIORITY, 3}, {unix.SO_RCVLOWAT, 9}, {unix.SO_MARK, 7}, {unix.SO_REUSEADDR, 1}, {unix.SO_REUSEPORT, 1},
				{unix.SO_DONTROUTE, 1}, {unix.SO_KEEPALIVE, 1}, {unix.SO_OOBINLINE, 1}} {
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.opt, o.v); err != nil {
					t.Fatal(o.opt, err)
				}
			}
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 2, Usec: 500000})
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 0, Usec: 20000})
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 5})
			unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, "lo")
		}, want: func(o *sk_opts.SkOptsEntry) {
			o.SoSndbuf, o.SoRcvbuf, o.SoBufLock = proto.Uint32(10_000_000), proto.Uint32(200_000), proto.Uint32(2)
			o.SoPriority, o.SoRcvlowat, o.SoMark = proto.Uint32(3), proto.Uint32(9), proto.Uint32(7)
			o.Reuseaddr, o.SoReuseport, o.SoDontroute, o.SoKeepalive, o.SoOobinline = yes, yes, yes, yes, proto.Uint32(1)
			o.SoSndTmoSec, o.SoSndTmoUsec, o.SoRcvTmoUsec = proto.Uint64(2), proto.Uint64(500000), proto.Uint64(20000)
			o.SoLinger, o.SoBoundDev = proto.Uint32(5), proto.String("lo")
		}},
		{name: "udp filter", family: unix.AF_INET, typ: unix.SOCK_DGRAM, set: func(t *testing.T, fd int) {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_NO_CHECK, 1)
			f := []unix.SockFilter{{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_LEN}, {Code: unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K, Jt: 1, Jf: 0, K: 100},
				{Code: unix.BPF_RET | unix.BPF_K, K: 0xffff}, {Code: unix.BPF_RET | unix.BPF_K, K: 0}}
			if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}); err != nil {
				t.Fatal(err)
			}
		}, want: func(o *sk_opts.SkOptsEntry) {
			o.SoBroadcast, o.SoNoCheck = yes, yes
			o.SoFilter = []uint64{0x0080_00_00_00000000, 0x0025_01_00_00000064, 0x0006_00_00_0000ffff, 0x0006_00_00_00000000}
		}},
		{name: "unix", family: unix.AF_UNIX, typ: unix.SOCK_DGRAM, set: func(t *testing.T, fd int) {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		}, want: func(o *sk_opts.SkOptsEntry) { o.SoPasscred, o.SoPasssec = yes, no }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd := newSocket(t, tc.family, tc.typ)
			want := fresh(fd)
			if tc.set != nil {
				tc.set(t, fd)
			}
			if tc.want != nil {
				tc.want(want)
			}
			got, err := sockOpts(fd)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, want) {
				t.Errorf("read\n%v\nwant\n%v", got, want)
			}
		})
	}
}

// TestInetSockOptsRefused: what sk_opts_entry can not carry is refused,
// not lost: an eBPF socket filter, a locked classic filter.
func TestInetSockOptsRefused(t *testing.T) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	f := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0xffff}}
	for _, tc := range []struct {
		name string
		set  func(fd int) error
		want string
	}{
		{"ebpf", func(fd int) error {
			return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_BPF, prog.FD())
		}, "an eBPF socket filter (SO_ATTACH_BPF) can not be dumped"},
		{"locked", func(fd int) error {
			if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &f[0]}); err != nil {
				return err
			}
			return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_LOCK_FILTER, 1)
		}, "a locked socket filter (SO_LOCK_FILTER) would be restored unlocked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd := newSocket(t, unix.AF_INET, unix.SOCK_DGRAM)
			if err := tc.set(fd); err != nil {
				t.Fatal(err)
			}
			_, err := sockOpts(fd)
			if why := optRefusal(err); why != tc.want {
				t.Errorf("refusal %q (%v), want %q", why, err, tc.want)
			}
		})
	}
}

// inetAddrPort reads a socket address of getsockname/getpeername.
func inetAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// liveInet is what an inet socket of a live process looks like from
// outside: its addresses (peer invalid when it has none), from a copy of
// its fd, and its listen backlog from the socket diag.
type liveInet struct {
	src, dst netip.AddrPort
	listen   bool
	backlog  uint32
}

func readLiveInet(t *testing.T, pid, fd int) liveInet {
	t.Helper()
	c, err := stealFD(pid, fd)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	var l liveInet
	sa, err := unix.Getsockname(c)
	if err != nil {
		t.Fatal(err)
	}
	l.src = inetAddrPort(sa)
	if sa, err := unix.Getpeername(c); err == nil {
		l.dst = inetAddrPort(sa)
	}
	acc, _ := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if l.listen = acc == 1; l.listen {
		var st unix.Stat_t
		if err := unix.Fstat(c, &st); err != nil {
			t.Fatal(err)
		}
		family, _ := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_DOMAIN)
		sk, err := inetDiag(family, unix.IPPROTO_TCP, uint32(st.Ino))
		if err != nil || sk == nil {
			t.Fatalf("fd %d: socket diag: %v %v", fd, sk, err)
		}
		l.backlog = sk.wqueue
	}
	return l
}

func (l liveInet) String() string {
	return fmt.Sprintf("%s peer %s listening %v backlog %d", l.src, l.dst, l.listen, l.backlog)
}

// inetLines waits for n lines in out-inetsk.log of p.
func inetLines(t *testing.T, p *workloads.Process, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(p.Dir, "out-inetsk.log")); err == nil {
			s := string(b)
			if strings.Contains(s, "CORRUPT") {
				t.Fatalf("out-inetsk.log: %s", s)
			}
			if lines := strings.Split(strings.TrimRight(s, "\n"), "\n"); len(lines) >= n && lines[0] != "" {
				return lines
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("out-inetsk.log: fewer than %d lines after 10s", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDumpInet dumps test/workloads/src/inetsk.c (leaving it running),
// checks every socket's files.img entry against the live socket and what
// the workload set, restores the images while the workload still holds
// its ports (the restore fails on the first port, naming it, and leaves
// nothing), then kills it and restores: every socket comes back with its
// addresses and the listeners with their backlog, and the workload, which
// connects to its listeners and sends datagrams every tick, runs on.
func TestDumpInet(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	p := workloads.Start(t, "inetsk")
	inetLines(t, p, 3)
	live := map[int]liveInet{}
	for fd := 4; fd <= 13; fd++ {
		live[fd] = readLiveInet(t, p.Pid, fd)
	}
	imgs := filepath.Join(t.TempDir(), "images")
	if _, err := Dump(context.Background(), Options{Pid: p.Pid, Dir: imgs, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}

	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := d.IDs(1)
	if err != nil {
		t.Fatal(err)
	}
	fdis, err := d.Fdinfo(ids.GetFilesId())
	if err != nil {
		t.Fatal(err)
	}
	isk := map[int]*sk_inet.InetSkEntry{}
	for _, fdi := range fdis {
		fe, err := d.File(fdi.GetId())
		if err != nil {
			t.Fatal(err)
		}
		if fdi.GetType() == fdinfo.FdTypes_INETSK {
			if fe.GetType() != fdinfo.FdTypes_INETSK || fe.GetIsk() == nil || fe.GetIsk().GetId() != fdi.GetId() {
				t.Fatalf("fd %d: file %v", fdi.GetFd(), fe)
			}
			isk[int(fdi.GetFd())] = fe.GetIsk()
		}
	}
	type want struct {
		family, typ, proto_ int
		state               uint32
		flags               uint32
		shutdown            sk_opts.SkShutdown
		edit                func(t *testing.T, e *sk_inet.InetSkEntry) // checks of its own
	}
	yes := func(b *bool) bool { return b != nil && *b }
	wants := map[int]want{
		4: {unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, 10, 02, 0, func(t *testing.T, e *sk_inet.InetSkEntry) {
			o, tc := e.GetOpts(), e.GetTcpOpts()
			if !yes(o.Reuseaddr) || !yes(o.SoKeepalive) || !yes(tc.Nodelay) || tc.GetKeepidle() != 77 || e.GetBacklog() != 7 {
				t.Errorf("options %v, tcp %v, backlog %d", o, tc, e.GetBacklog())
			}
		}},
		5: {unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP, 10, 04002, 0, func(t *testing.T, e *sk_inet.InetSkEntry) {
			if !yes(e.V6Only) || e.GetOpts().GetSoRcvbuf() != 100000 || e.GetBacklog() != 5 || yes(e.GetOpts().Reuseaddr) {
				t.Errorf("v6only %v, options %v, backlog %d", e.V6Only, e.GetOpts(), e.GetBacklog())
			}
		}},
		6: {unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP, 7, 02, 0, func(t *testing.T, e *sk_inet.InetSkEntry) {
			if e.GetIpOpts().GetTos() != 0x10 || e.GetOpts().GetSoRcvTmoSec() != 2 || e.TcpOpts == nil || proto.Size(e.TcpOpts) != 0 {
				t.Errorf("ip options %v, options %v, tcp %v", e.GetIpOpts(), e.GetOpts(), e.TcpOpts)
			}
		}},
		7:  {unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDP, 1, 02, 0, nil},
		8:  {unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDP, 1, 02, 0, nil},
		9:  {unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE, 1, 02, 0, nil},
		10: {unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP, 7, 02, 0, nil},
		11: {unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, 7, 02, 0, nil},
		12: {unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP, 7, 02, sk_opts.SkShutdown_BOTH, nil},
		13: {unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, 7, 02, sk_opts.SkShutdown_READ, nil},
	}
	if len(isk) != len(wants) {
		t.Errorf("inet sockets at fds %v, want %d", isk, len(wants))
	}
	for fd, w := range wants {
		t.Run(fmt.Sprintf("fd %d", fd), func(t *testing.T) {
			e := isk[fd]
			if e == nil {
				t.Fatal("no inet socket")
			}
			if int(e.GetFamily()) != w.family || int(e.GetType()) != w.typ || int(e.GetProto()) != w.proto_ || e.GetState() != w.state ||
				e.GetFlags() != w.flags || (e.Shutdown != nil) != (w.shutdown != 0) || e.GetShutdown() != w.shutdown || e.Fown.GetPid() != 0 {
				t.Errorf("entry %v, want family %d type %d proto %d state %d flags %#o shutdown %v", e, w.family, w.typ, w.proto_, w.state, w.flags, w.shutdown)
			}
			// CRIU 4.2 names the net namespace of what the socket
			// diag knows: not the unbound UDP socket, nor the TCP
			// sockets in CLOSE (fds 10, 11, 13)
			if inDiag := fd != 10 && fd != 11 && fd != 13; (e.NsId != nil) != inDiag || inDiag && e.GetNsId() != 2 {
				t.Errorf("ns_id %v, want 2: %v", e.NsId, inDiag)
			}
			addr := func(words []uint32, port uint32) netip.AddrPort {
				var b []byte
				for _, x := range words {
					b = binary.NativeEndian.AppendUint32(b, x)
				}
				a, ok := netip.AddrFromSlice(b)
				if !ok {
					t.Fatalf("address words %v", words)
				}
				return netip.AddrPortFrom(a, uint16(port))
			}
			l := live[fd]
			if src := addr(e.SrcAddr, e.GetSrcPort()); src != l.src {
				t.Errorf("source %s, the live socket has %s", src, l.src)
			}
			dst := addr(e.DstAddr, e.GetDstPort())
			if (l.dst.IsValid() && dst != l.dst) || (!l.dst.IsValid() && (dst.Port() != 0 || !dst.Addr().IsUnspecified())) {
				t.Errorf("peer %s, the live socket has %s", dst, l.dst)
			}
			if l.listen && e.GetBacklog() != l.backlog {
				t.Errorf("backlog %d, the live socket has %d", e.GetBacklog(), l.backlog)
			}
			if w.edit != nil {
				w.edit(t, e)
			}
		})
	}

	t.Run("ports in use", func(t *testing.T) {
		res := cli.Run(t, bin, "restore", "-D", imgs, "-d")
		want := fmt.Sprintf("file %d: inet socket TCP %s (LISTEN): bind %s: address already in use", isk[4].GetId(), live[4].src, live[4].src)
		if res.Code != 1 || !strings.Contains(res.Stderr, want) {
			t.Errorf("restore with the ports held: exit %d: %s; want exit 1 and %q", res.Code, res.Stderr, want)
		}
		left, err := procscan.FindAgentsOf(os.Getpid(), procscan.ChildOf(os.Getpid()))
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range left {
			if q.PID != p.Pid {
				t.Errorf("left by the failed restore: %v", q)
			}
		}
		if n := len(inetLines(t, p, 1)); !workloads.Alive(p.Pid) || len(inetLines(t, p, n+5)) < n+5 {
			t.Fatal("the workload does not run on after the failed restore")
		}
	})

	syscall.Kill(p.Pid, syscall.SIGKILL)
	syscall.Wait4(p.Pid, nil, syscall.WALL, nil)
	if left := procscan.WaitGone(10*time.Second, p.Pid); len(left) > 0 {
		t.Fatalf("workload %d still there", p.Pid)
	}
	before := inetLines(t, p, 1)
	root := cli.RestoreDetached(t, bin, imgs)
	t.Cleanup(func() {
		syscall.Kill(root, syscall.SIGKILL)
		syscall.Wait4(root, nil, syscall.WALL, nil)
		procscan.WaitGone(10*time.Second, root)
		cli.NothingLeft(t, p.Dir)
	})
	for fd := 4; fd <= 13; fd++ {
		if got := readLiveInet(t, root, fd); got != live[fd] {
			t.Errorf("restored fd %d: %+v, at the dump %+v", fd, got, live[fd])
		}
	}
	// It ran on after the dump (--leave-running): the restored one
	// counts on from the dump's tick, after those lines.
	after := inetLines(t, p, len(before)+50)[len(before):]
	for i := 1; i < len(after); i++ {
		if err := check.Counter(after[i-1], after[i]); err != nil {
			t.Errorf("after the restore: %v", err)
		}
	}
}

// inetProgram is a workload holding the sockets that setup makes (the
// log is fd 3, the first socket fd 4) and writing "tick N" to
// out-inet.log every millisecond.
func inetProgram(t *testing.T, name, setup string) *workloads.Process {
	t.Helper()
	p := workloads.StartTicking(t, "inet", name, workloads.TickSource{Includes: `#include <arpa/inet.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
`, Funcs: `
static struct sockaddr_in lo(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}
`, Decls: `int one = 1;
	struct sockaddr_in a = lo(0);
	socklen_t len = sizeof a;

	(void)one, (void)len, (void)a;`, Setup: setup})
	inetTicks(t, p, 3)
	return p
}

// inetTicks waits for n lines in out-inet.log of p and returns how many
// there are.
func inetTicks(t *testing.T, p *workloads.Process, n int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(p.Dir, "out-inet.log"))
		if k := strings.Count(string(b), "\n"); k >= n {
			return k
		}
		if time.Now().After(deadline) || !workloads.Alive(p.Pid) {
			t.Fatalf("out-inet.log of %d: fewer than %d lines after 10s: %q", p.Pid, n, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDumpInetRefused: inet sockets CRIU restores only with special
// options, or not at all, or with state its images do not keep, fail the
// dump with an error naming the task, the fd and why; the tree runs on.
func TestDumpInetRefused(t *testing.T) {
	// a listener at fd 4 and a connection to it at fd 5
	const connected = `int l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0);
	bind(l, (struct sockaddr *)&a, sizeof a);
	listen(l, 4);
	getsockname(l, (struct sockaddr *)&a, &len);
	if (connect(c, (struct sockaddr *)&a, sizeof a))
		return 2;
	`
	for _, tc := range []struct {
		name, setup string
		fd          int
		want        string
	}{
		{"established", connected + "accept(l, NULL, NULL);", 5, "(ESTABLISHED) needs --tcp-established"},
		{"closing", connected + "close(accept(l, NULL, NULL));", 5, "(CLOSE_WAIT) needs --tcp-established"},
		{"not accepted", connected, 4, "a listening TCP socket with 1 connections not yet accepted (CRIU's --tcp-skip-in-flight drops them)"},
		{"raw", "socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);", 4, "raw sockets are not supported"},
		{"mptcp", "if (socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP) != 4) return 2;", 4, "MPTCP sockets are not supported"},
		{"corked", "int s = socket(AF_INET, SOCK_DGRAM, 0); setsockopt(s, SOL_UDP, UDP_CORK, &one, sizeof one);", 4,
			"a corked UDP socket (UDP_CORK) is not supported"},
		{"transparent", "int s = socket(AF_INET6, SOCK_DGRAM, 0); setsockopt(s, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one);", 4,
			"IPV6_TRANSPARENT is not kept by CRIU's images"},
		{"locked filter", `struct sock_filter f = { 0x06, 0, 0, 0xffff };
	struct sock_fprog prog = { 1, &f };
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	if (setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) || setsockopt(s, SOL_SOCKET, SO_LOCK_FILTER, &one, sizeof one))
		return 2;`, 4, "a locked socket filter (SO_LOCK_FILTER) would be restored unlocked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := inetProgram(t, strings.ReplaceAll(tc.name, " ", "-"), tc.setup)
			parent := t.TempDir()
			_, err := Dump(context.Background(), Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
			var ue *UnsupportedError
			if !errors.As(err, &ue) {
				t.Fatalf("dump: %v, want an UnsupportedError", err)
			}
			for _, want := range []string{"task 1", fmt.Sprintf("fd %d (socket:[", tc.fd), tc.want} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 0 {
				t.Errorf("the failed dump left %v in %s", ents, parent)
			}
			inetTicks(t, p, inetTicks(t, p, 1)+5)
		})
	}
}

// TestInetNeedsScope: the IPv6 addresses a bind needs a device for.
func TestInetNeedsScope(t *testing.T) {
	for a, want := range map[string]bool{"fe80::1": true, "febf::1": true, "fec0::1": false, "ff02::1": true, "ff01::1": true,
		"ff05::1": false, "::1": false, "2001:db8::1": false, "::": false} {
		if got := needsScope(netip.MustParseAddr(a).As16()); got != want {
			t.Errorf("%s: %v, want %v", a, got, want)
		}
	}
}
