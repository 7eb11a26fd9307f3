package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	tcp_stream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

// tcpestLogs are the logs of the tcpest workload and their rule.
var tcpestLogs = map[string]check.Next{"out-init.log": check.Counter, "out-child.log": check.Counter}

// tcpestImages starts the tcpest workload (established TCP connections,
// v4 and v6, between its init and its child, their queues full), dumps
// it with crest's dump and --tcp-established, which kills it, and
// returns it and the images.
func tcpestImages(t *testing.T) (*workloads.Process, string) {
	t.Helper()
	return dumpedWorkload(t, "tcpest", tcpestLogs, 3, dump.Options{TCPEstablished: true})
}

// dumpedWorkload starts workload name, waits until each of its logs has n
// lines, dumps it with opts (which kills it), reaps it (the test is its
// subreaper) and returns it and the images.
func dumpedWorkload(t *testing.T, name string, logs map[string]check.Next, n int, opts dump.Options) (*workloads.Process, string) {
	t.Helper()
	needRoot(t)
	cli.Subreaper(t) // the init comes to us: we reap it and know it is gone
	p := workloads.Start(t, name)
	for l := range logs {
		waitLogLines(t, p, l, n)
	}
	return p, dumpReaped(t, p, opts)
}

// dumpReaped dumps the running workload p with opts (which kills it),
// reaps it (the test is its subreaper) and returns the images.
func dumpReaped(t *testing.T, p *workloads.Process, opts dump.Options) string {
	t.Helper()
	opts.Pid, opts.Dir = p.Pid, filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	reapDumped(t, p)
	return opts.Dir
}

// reapDumped reaps the init of a tree crest dump killed (the test is its
// subreaper) and waits until /proc has forgotten it.
func reapDumped(t *testing.T, p *workloads.Process) {
	t.Helper()
	for {
		if _, err := syscall.Wait4(p.Pid, nil, syscall.WALL, nil); err != syscall.EINTR {
			break
		}
	}
	if !workloads.WaitGone(p.Pid, 10*time.Second) {
		t.Fatalf("the dumped tree of %d still exists", p.Pid)
	}
}

func waitLogLines(t *testing.T, p *workloads.Process, name string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(p.Dir, name))
		if bytes.Count(b, []byte("\n")) >= n {
			if bytes.Contains(b, []byte("CORRUPT")) {
				t.Fatalf("%s: %s", name, b)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d lines within 10s, want %d", name, bytes.Count(b, []byte("\n")), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// connections returns the connections the images hold.
func connections(t *testing.T, imgs string) []*InetSocket {
	t.Helper()
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(d, Options{TCPEstablished: true})
	if err != nil {
		t.Fatal(err)
	}
	var out []*InetSocket
	for _, f := range p.Files {
		if f.Kind == FileInetSocket && f.Inet.Conn != nil {
			out = append(out, f.Inet)
		}
	}
	if len(out) != 4 {
		t.Fatalf("%d connections in the images, want 4 (two ends of a v4 and a v6 one)", len(out))
	}
	return out
}

// tcpSocket is a line of ss: a TCP socket of the host's net namespace.
type tcpSocket struct {
	state       string
	local, peer netip.AddrPort
}

// tcpSockets lists every TCP socket (ss, through sock_diag), orphans and
// TIME_WAIT ones too.
func tcpSockets(t *testing.T) []tcpSocket {
	t.Helper()
	out, err := exec.Command("ss", "-tanH").Output()
	if err != nil {
		t.Fatalf("ss -tanH: %v", err)
	}
	var socks []tcpSocket
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		local, err1 := netip.ParseAddrPort(strings.ReplaceAll(f[3], "*", "0.0.0.0"))
		peer, err2 := netip.ParseAddrPort(strings.ReplaceAll(f[4], "*", "0.0.0.0"))
		if err1 != nil || err2 != nil {
			continue // a scoped address: none of ours
		}
		socks = append(socks, tcpSocket{f[0], local, peer})
	}
	return socks
}

// leftOf lists the sockets of the host that use a port of conns.
func leftOf(t *testing.T, conns []*InetSocket, skip func(tcpSocket) bool) []tcpSocket {
	t.Helper()
	ports := map[uint16]bool{}
	for _, c := range conns {
		ports[c.Src.Port()] = true
	}
	var left []tcpSocket
	for _, s := range tcpSockets(t) {
		if (ports[s.local.Port()] || ports[s.peer.Port()]) && (skip == nil || !skip(s)) {
			left = append(left, s)
		}
	}
	return left
}

// TestPlanTCPEstablished: an image set with connections is refused
// without the option, naming it, the task, the fd and the connection;
// with it, bad tcp-stream images are refused naming the file.
func TestPlanTCPEstablished(t *testing.T) {
	_, imgs := tcpestImages(t)
	conns := connections(t, imgs)
	stream := func(dir string) string {
		return filepath.Join(dir, fmt.Sprintf("tcp-stream-%x.img", conns[0].Ino))
	}
	for _, tc := range []struct {
		name  string
		opts  Options
		spoil func(t *testing.T, dir string)
		want  []string
	}{
		{"without --tcp-established", Options{}, nil,
			[]string{"--tcp-established", "task ", "fd ", "fdinfo-", " -> ", "ESTABLISHED", "127.0.0.1:"}},
		{"missing stream", Options{TCPEstablished: true}, func(t *testing.T, dir string) {
			if err := os.Remove(stream(dir)); err != nil {
				t.Fatal(err)
			}
		}, []string{filepath.Base(stream(imgs)), "fd ", " -> "}},
		{"stream of another inode", Options{TCPEstablished: true}, func(t *testing.T, dir string) {
			other := filepath.Join(dir, fmt.Sprintf("tcp-stream-%x.img", conns[0].Ino+0x1000))
			if err := os.Rename(stream(dir), other); err != nil {
				t.Fatal(err)
			}
		}, []string{filepath.Base(stream(imgs))}},
		{"truncated stream", Options{TCPEstablished: true}, func(t *testing.T, dir string) {
			st, err := os.Stat(stream(dir))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(stream(dir), st.Size()-100); err != nil {
				t.Fatal(err)
			}
		}, []string{filepath.Base(stream(imgs))}},
		{"unsent part longer than the send queue", Options{TCPEstablished: true}, func(t *testing.T, dir string) {
			img, err := images.ReadFile(stream(dir))
			if err != nil {
				t.Fatal(err)
			}
			e := img.Entries[0].Message.(*tcp_stream.TcpStreamEntry)
			e.UnsqLen = proto.Uint32(e.GetOutqLen() + 1)
			if err := images.WriteFile(stream(dir), img); err != nil {
				t.Fatal(err)
			}
		}, []string{filepath.Base(stream(imgs)), "unsq_len"}},
		{"window scale out of range", Options{TCPEstablished: true}, func(t *testing.T, dir string) {
			img, err := images.ReadFile(stream(dir))
			if err != nil {
				t.Fatal(err)
			}
			e := img.Entries[0].Message.(*tcp_stream.TcpStreamEntry)
			e.OptMask = proto.Uint32(e.GetOptMask() | tcpiOptWscale)
			e.RcvWscale = proto.Uint32(15)
			if err := images.WriteFile(stream(dir), img); err != nil {
				t.Fatal(err)
			}
		}, []string{filepath.Base(stream(imgs)), "window scales"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := imgs
			if tc.spoil != nil {
				dir = fixture.CopyDir(t, imgs)
				tc.spoil(t, dir)
			}
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewPlan(d, tc.opts)
			var pe *PlanError
			if !errors.As(err, &pe) {
				t.Fatalf("NewPlan: %v, want a PlanError", err)
			}
			t.Logf("%v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
		})
	}
}

// TestRestoreTCPEstablished restores images of crest's dump with
// TCPEstablished: every end is there again, ESTABLISHED with its
// four-tuple, out of repair mode, and the workload runs on, checking every
// byte of both directions of both connections.
func TestRestoreTCPEstablished(t *testing.T) {
	p, imgs := tcpestImages(t)
	conns := connections(t, imgs)
	before := check.Snapshot(t, p.Dir, tcpestLogs)
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{TCPEstablished: true}
	plan, err := NewPlan(d, opts)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Start(context.Background(), plan, opts)
	if err != nil {
		t.Fatal(err)
	}
	root := r.RootPID()
	r.Detach()
	defer func() {
		killTree(t, root)
		if left := leftOf(t, conns, nil); len(left) > 0 {
			t.Errorf("sockets left once the restored tree is gone: %v", left)
		}
	}()
	socks := tcpSockets(t)
	for _, c := range conns {
		found := false
		for _, s := range socks {
			if s.local == c.Src && s.peer == c.Dst {
				found = true
				if s.state != "ESTAB" {
					t.Errorf("%s: %s", c, s.state)
				}
			}
		}
		if !found {
			t.Errorf("%s: no such socket after the restore", c)
		}
	}
	for _, task := range plan.Tasks {
		host := r.HostPID(task.PID)
		for _, fd := range task.FDs {
			if fd.File.Kind != FileInetSocket || fd.File.Inet.Conn == nil {
				continue
			}
			if repair := repairMode(t, host, fd.FD); repair {
				t.Errorf("task %d fd %d (%s) is still in repair mode", task.PID, fd.FD, fd.File.Inet)
			}
		}
	}
	check.Logs(t, p.Dir, before, tcpestLogs, 2*time.Second)
}

// repairMode tells whether fd of process pid is in TCP repair mode.
func repairMode(t *testing.T, pid, fd int) bool {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	c, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	v, err := unix.GetsockoptInt(c, unix.SOL_TCP, unix.TCP_REPAIR)
	if err != nil {
		t.Fatalf("getsockopt(TCP_REPAIR): %v", err)
	}
	return v != 0
}

// TestRestoreTCPEstablishedRollback: a restore that fails once some
// connections are made leaves none behind, in repair mode or not, and no
// port taken. The test holds the four-tuple of the v6 connection (a
// connection of its own between the same ports), so that the second
// socket the engine makes can not connect; the first, the v4 one, is
// made by then. And a restore parked with every task holding its
// sockets, then aborted, leaves nothing either.
func TestRestoreTCPEstablishedRollback(t *testing.T) {
	_, imgs := tcpestImages(t)
	conns := connections(t, imgs)
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{TCPEstablished: true}
	plan, err := NewPlan(d, opts)
	if err != nil {
		t.Fatal(err)
	}
	var v6 *InetSocket
	for _, fd := range plan.Tasks[0].FDs {
		if s := fd.File.Inet; s != nil && s.Conn != nil && s.Family == unix.AF_INET6 {
			v6 = s
		}
	}
	if v6 == nil {
		t.Fatal("the init has no v6 connection")
	}

	t.Run("failed", func(t *testing.T) {
		l, c, a := holdTuple(t, v6)
		_, err := Start(context.Background(), plan, opts)
		var se *StageError
		if !errors.As(err, &se) {
			t.Fatalf("Start: %v, want a StageError", err)
		}
		t.Logf("%v", err)
		for _, w := range []string{"task 1", v6.String(), "connect", "repair mode"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q does not say %q", err, w)
			}
		}
		ours := func(s tcpSocket) bool {
			return s.local == v6.Src || s.local == v6.Dst // the test's own
		}
		if left := leftOf(t, conns, ours); len(left) > 0 {
			t.Errorf("sockets left by the failed restore: %v", left)
		}
		// reset, not closed: a TIME_WAIT would hold the port
		for _, fd := range []int{c, a} {
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
		}
		unix.Close(l)
		freePorts(t, conns)
	})
	t.Run("parked and aborted", func(t *testing.T) {
		opts := opts
		opts.Until = StageRestore // every task holds its sockets, still in repair mode
		r, err := Start(context.Background(), plan, opts)
		if err != nil {
			t.Fatal(err)
		}
		repaired := 0
		for _, task := range plan.Tasks {
			for _, fd := range task.FDs {
				if fd.File.Kind == FileInetSocket && fd.File.Inet.Conn != nil && repairMode(t, r.HostPID(task.PID), fd.FD) {
					repaired++
				}
			}
		}
		if repaired != len(conns) {
			t.Errorf("%d sockets in repair mode while parked at %v, want %d", repaired, StageRestore, len(conns))
		}
		for _, task := range plan.Tasks {
			for _, fd := range task.FDs {
				if fd.File.Kind == FileInetSocket && fd.File.Inet.Conn != nil {
					checkRepaired(t, r.HostPID(task.PID), fd.FD, fd.File.Inet)
				}
			}
		}
		if len(leftOf(t, conns, nil)) == 0 {
			t.Error("no socket of the connections while parked")
		}
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		if left := leftOf(t, conns, nil); len(left) > 0 {
			t.Errorf("sockets left by the aborted restore: %v", left)
		}
		freePorts(t, conns)
	})
}

// holdTuple makes a connection of the test's own with the four-tuple of
// s: a listener on its peer's address, a socket bound to its own that
// connects to it, and the accepted end.
func holdTuple(t *testing.T, s *InetSocket) (l, c, a int) {
	t.Helper()
	mk := func() int {
		fd, err := unix.Socket(s.Family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	l = mk()
	if err := unix.Bind(l, sockaddr(s.Family, s.Dst, 0)); err != nil {
		t.Fatalf("bind %s: %v", s.Dst, err)
	}
	if err := unix.Listen(l, 1); err != nil {
		t.Fatal(err)
	}
	c = mk()
	if err := unix.Bind(c, sockaddr(s.Family, s.Src, 0)); err != nil {
		t.Fatalf("bind %s: %v", s.Src, err)
	}
	if err := unix.Connect(c, sockaddr(s.Family, s.Dst, 0)); err != nil {
		t.Fatalf("connect %s: %v", s.Dst, err)
	}
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	return l, c, a
}

// freePorts checks that the ports of conns can be bound again without
// SO_REUSEADDR: no socket of the restore holds them, none lingers in
// TIME_WAIT.
func freePorts(t *testing.T, conns []*InetSocket) {
	t.Helper()
	for _, c := range conns {
		fd, err := unix.Socket(c.Family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, sockaddr(c.Family, c.Src, 0)); err != nil {
			t.Errorf("%s: bind %s: %v", c, c.Src, err)
		}
		unix.Close(fd)
	}
}

// checkRepaired reads the connection s that fd of process pid holds, in
// repair mode, as a dump would, and compares it with the images: sequence
// numbers, queues (their bytes, and which part of the send queue is
// unsent), MSS, window scales and options, the window, the timestamp
// clock.
func checkRepaired(t *testing.T, pid, fd int, s *InetSocket) {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	c, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	want := s.Conn
	errorf := func(format string, args ...any) { t.Errorf("%s: "+format, append([]any{s}, args...)...) }
	geti := func(level, opt int) int {
		v, err := unix.GetsockoptInt(c, level, opt)
		if err != nil {
			t.Fatalf("%s: getsockopt(%d, %d): %v", s, level, opt, err)
		}
		return v
	}
	getb := func(opt int, b []byte) {
		l := uint32(len(b))
		if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(c), unix.SOL_TCP, uintptr(opt), uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
			t.Fatalf("%s: getsockopt(SOL_TCP, %d): %v", s, opt, e)
		}
	}
	ioctl := func(req uint) int {
		v, err := unix.IoctlGetInt(c, req)
		if err != nil {
			t.Fatalf("%s: ioctl(%#x): %v", s, req, err)
		}
		return v
	}
	info := make([]byte, 8)
	getb(unix.TCP_INFO, info)
	if info[0] != tcpEstablished || uint32(info[5]) != want.Options {
		errorf("state %d, options %#x; want ESTABLISHED, %#x", info[0], info[5], want.Options)
	}
	if ws := uint32(info[6]); want.Options&tcpiOptWscale != 0 && ws != want.SndWscale|want.RcvWscale<<4 {
		errorf("window scales %#x, want %#x", ws, want.SndWscale|want.RcvWscale<<4)
	}
	if mss := geti(unix.SOL_TCP, unix.TCP_MAXSEG); uint32(mss) != want.MSS {
		errorf("mss_clamp %d, want %d", mss, want.MSS)
	}
	// The two ends exist, in repair mode, and the kernel's timers go on:
	// a zero window probe may have moved bytes from one end's send
	// queue to the other's receive queue since. What moves is checked
	// against what may.
	inq, outq, unsent := ioctl(unix.SIOCINQ), ioctl(unix.SIOCOUTQ), ioctl(unix.SIOCOUTQNSD)
	if inq < len(want.Inq) || outq > len(want.Outq) || unsent > outq {
		errorf("%d bytes received, %d in the send queue, %d of them not sent; the image has %d, %d, %d", inq, outq, unsent, len(want.Inq), len(want.Outq), want.Unsent)
	}
	if want.Unsent > 0 && unsent == 0 {
		errorf("the unsent part of the send queue (%d bytes) was restored as sent", want.Unsent)
	}
	for _, q := range []struct {
		name       string
		queue, len int
		seq        uint32
		data       []byte
	}{{"receive", tcpRecvQueue, inq, want.InqSeq + uint32(inq-len(want.Inq)), want.Inq}, {"send", tcpSendQueue, outq, want.OutqSeq, want.Outq}} {
		if err := unix.SetsockoptInt(c, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q.queue); err != nil {
			t.Fatal(err)
		}
		if seq := uint32(geti(unix.SOL_TCP, unix.TCP_QUEUE_SEQ)); seq != q.seq {
			errorf("%s queue sequence %d, want %d", q.name, seq, q.seq)
		}
		if q.len == 0 {
			continue
		}
		buf := make([]byte, q.len+1<<16)
		n, _, err := unix.Recvfrom(c, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch { // a probe may move more meanwhile
		case err != nil || q.queue == tcpRecvQueue && n < q.len || q.queue == tcpSendQueue && n > q.len:
			errorf("%s queue: %d bytes (%v), want %d", q.name, n, err, q.len)
		case q.queue == tcpRecvQueue && !bytes.Equal(buf[:len(q.data)], q.data):
			errorf("receive queue: the bytes of the image are not its first")
		case q.queue == tcpSendQueue && !bytes.Equal(buf[:n], q.data[len(q.data)-n:]):
			errorf("send queue: its bytes are not the last of the image's")
		}
	}
	if want.Window != nil {
		var w TCPWindow
		getb(unix.TCP_REPAIR_WINDOW, unsafe.Slice((*byte)(unsafe.Pointer(&w)), unsafe.Sizeof(w)))
		if w.MaxWindow < want.Window.MaxWindow || w.SndWl1-want.Window.SndWl1 > 1<<30 || w.RcvWup-want.Window.RcvWup > 1<<30 {
			errorf("window %+v, the image has %+v", w, *want.Window)
		}
	}
	if want.Options&tcpiOptTimestamps != 0 {
		// the clock was set to the image's and runs on since
		if ts := uint32(geti(unix.SOL_TCP, unix.TCP_TIMESTAMP)); ts-want.Timestamp > 10000 {
			errorf("timestamp clock %d, want %d and a little more", ts, want.Timestamp)
		}
	}
}
