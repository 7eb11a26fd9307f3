package restore

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

var tcphalfLogs = map[string]check.Next{"out-init.log": check.Counter, "out-child.log": check.Counter}

// ssState is a TCP state as ss names it.
var ssState = map[uint32]string{tcpEstablished: "ESTAB", tcpFinWait1: "FIN-WAIT-1", tcpFinWait2: "FIN-WAIT-2",
	tcpCloseWait: "CLOSE-WAIT", tcpLastAck: "LAST-ACK", tcpClosing: "CLOSING"}

// tcphalfImages starts the tcphalf workload (half-closed connections in
// every state CRIU restores, between its init and its child), dumps it
// with crest's dump, which kills it, and returns it, the images and their
// connections.
func tcphalfImages(t *testing.T) (*workloads.Process, string, []*InetSocket) {
	t.Helper()
	p, imgs := dumpedWorkload(t, "tcphalf", tcphalfLogs, 3, dump.Options{TCPEstablished: true})
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := NewPlan(d, Options{TCPEstablished: true})
	if err != nil {
		t.Fatal(err)
	}
	var conns []*InetSocket
	states := map[uint32]int{}
	for _, f := range plan.Files {
		if f.Kind == FileInetSocket && f.Inet.Conn != nil {
			conns = append(conns, f.Inet)
			states[f.Inet.State]++
		}
	}
	if len(conns) != 10 || states[tcpFinWait1] != 1 || states[tcpFinWait2] != 4 || states[tcpCloseWait] != 2 || states[tcpLastAck] != 1 || states[tcpClosing] != 1 {
		t.Fatalf("connection ends by state in the images: %v, want 10: FIN_WAIT1 1, FIN_WAIT2 4, CLOSE_WAIT 2, LAST_ACK 1, CLOSING 1, ESTABLISHED 1", states)
	}
	return p, imgs, conns
}

// rawTCPSockets counts the raw sockets of protocol TCP of the net
// namespace (/proc/net/raw, raw6: the local address ends in the
// protocol).
func rawTCPSockets(t *testing.T) int {
	t.Helper()
	n := 0
	for _, name := range []string{"/proc/net/raw", "/proc/net/raw6"} {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if fs := strings.Fields(sc.Text()); len(fs) > 1 && strings.HasSuffix(fs[1], ":0006") {
				n++
			}
		}
		f.Close()
	}
	return n
}

// TestRestoreTCPHalfClosed restores images of crest's dump of tcphalf:
// every end is there again, in its state, with its four-tuple, out of
// repair mode, and the workload runs on, each end checking its state,
// its queues, the end of stream after the peer's FIN and the open
// directions every tick. No raw socket is left.
func TestRestoreTCPHalfClosed(t *testing.T) {
	p, imgs, conns := tcphalfImages(t)
	before := check.Snapshot(t, p.Dir, tcphalfLogs)
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{TCPEstablished: true}
	plan, err := NewPlan(d, opts)
	if err != nil {
		t.Fatal(err)
	}
	raw := rawTCPSockets(t)
	r, err := Start(context.Background(), plan, opts)
	if err != nil {
		t.Fatal(err)
	}
	root := r.RootPID()
	r.Detach()
	defer killTree(t, root)
	if n := rawTCPSockets(t); n != raw {
		t.Errorf("%d raw TCP sockets after the restore, %d before", n, raw)
	}
	socks := tcpSockets(t)
	for _, c := range conns {
		found := false
		for _, s := range socks {
			if s.local == unmap(c.Src) && s.peer == unmap(c.Dst) || s.local == c.Src && s.peer == c.Dst {
				found = true
				if s.state != ssState[c.State] {
					t.Errorf("%s: ss says %s", c, s.state)
				}
			}
		}
		if !found {
			t.Errorf("%s: no such socket after the restore", c)
		}
	}
	for _, task := range plan.Tasks {
		for _, fd := range task.FDs {
			if fd.File.Kind == FileInetSocket && fd.File.Inet.Conn != nil && repairMode(t, r.HostPID(task.PID), fd.FD) {
				t.Errorf("task %d fd %d (%s) is still in repair mode", task.PID, fd.FD, fd.File.Inet)
			}
		}
	}
	check.Logs(t, p.Dir, before, tcphalfLogs, 2*time.Second)
}

// spoilFiles rewrites the inet socket entry of files.img in dir that
// pick chooses with change.
func spoilFiles(t *testing.T, dir string, pick func(*InetSocket) bool, conns []*InetSocket, change func(*fdinfo.FileEntry)) *InetSocket {
	t.Helper()
	var s *InetSocket
	for _, c := range conns {
		if pick(c) {
			s = c
			break
		}
	}
	if s == nil {
		t.Fatal("no such connection in the images")
	}
	name := filepath.Join(dir, "files.img")
	img, err := images.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range img.Entries {
		if fe := e.Message.(*fdinfo.FileEntry); fe.GetIsk().GetIno() == s.Ino {
			change(fe)
		}
	}
	if err := images.WriteFile(name, img); err != nil {
		t.Fatal(err)
	}
	return s
}

func byState(st uint32) func(*InetSocket) bool {
	return func(s *InetSocket) bool { return s.State == st }
}

// TestPlanTCPHalfClosed: the states CRIU does not restore (or crest
// does not) are refused, naming the task, the fd, the connection and the
// state; so are shutdown bits that do not go with the state, and
// half-closed connections whose state needs a segment from a peer the
// images do not have.
func TestPlanTCPHalfClosed(t *testing.T) {
	_, imgs, conns := tcphalfImages(t)
	for _, tc := range []struct {
		name   string
		pick   func(*InetSocket) bool
		change func(*fdinfo.FileEntry)
		want   []string
	}{
		{"SYN_SENT", byState(tcpCloseWait), func(fe *fdinfo.FileEntry) { fe.Isk.State = proto.Uint32(tcpSynSent) }, []string{"SYN_SENT", "new SYN"}},
		{"SYN_RECV", byState(tcpFinWait2), func(fe *fdinfo.FileEntry) { fe.Isk.State = proto.Uint32(tcpSynRecv) }, []string{"SYN_RECV"}},
		{"TIME_WAIT", byState(tcpFinWait2), func(fe *fdinfo.FileEntry) { fe.Isk.State = proto.Uint32(tcpTimeWait) }, []string{"TIME_WAIT"}},
		{"CLOSE with a peer", byState(tcpFinWait2), func(fe *fdinfo.FileEntry) { fe.Isk.State = proto.Uint32(tcpClose) }, []string{"CLOSE"}},
		{"CLOSE_WAIT shut down for writing", byState(tcpCloseWait), func(fe *fdinfo.FileEntry) { fe.Isk.Shutdown = sk_opts.SkShutdown_BOTH.Enum() }, []string{"CLOSE_WAIT", "shut down for writing"}},
		{"peer not in the images", byState(tcpCloseWait), func(fe *fdinfo.FileEntry) { fe.Isk.DstPort = proto.Uint32(fe.Isk.GetDstPort() ^ 1) }, []string{"its peer is not in the images"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			s := spoilFiles(t, dir, tc.pick, conns, tc.change)
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewPlan(d, Options{TCPEstablished: true})
			var pe *PlanError
			if !errors.As(err, &pe) {
				t.Fatalf("NewPlan: %v, want a PlanError", err)
			}
			t.Logf("%v", err)
			// either end of the spoilt connection may come first
			if !strings.Contains(err.Error(), s.Src.String()) && !strings.Contains(err.Error(), s.Dst.String()) {
				t.Errorf("%q names neither end of %s", err, s)
			}
			for _, w := range append(tc.want, "task ", "fd ", "fdinfo-") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
		})
	}
}

// TestRestoreTCPHalfClosedRollback: a restore that fails once
// connections are made leaves no socket behind, no port taken and no raw
// socket: one whose last connection can not be made (the test holds its
// four-tuple), the others made by then; and one parked with every task
// holding its sockets, in their states and in repair mode, the FINs
// injected, then aborted.
func TestRestoreTCPHalfClosedRollback(t *testing.T) {
	_, imgs, conns := tcphalfImages(t)
	raw := rawTCPSockets(t)
	t.Run("failed", func(t *testing.T) {
		d, err := images.Open(imgs)
		if err != nil {
			t.Fatal(err)
		}
		opts := Options{TCPEstablished: true}
		plan, err := NewPlan(d, opts)
		if err != nil {
			t.Fatal(err)
		}
		// the test holds the four-tuple of the connection the engine
		// makes last: the connections before it are made by then, in
		// their half-closed states as far as their own FINs go
		var last *InetSocket
		for _, task := range plan.Tasks {
			for _, fd := range task.FDs {
				if s := fd.File.Inet; s != nil && s.Conn != nil {
					last = s
				}
			}
		}
		l, c, a := holdTuple(t, last)
		_, err = Start(context.Background(), plan, opts)
		var se *StageError
		if !errors.As(err, &se) {
			t.Fatalf("Start: %v, want a StageError", err)
		}
		t.Logf("%v", err)
		for _, w := range []string{"task ", "connect", "repair mode"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q does not say %q", err, w)
			}
		}
		ours := func(s tcpSocket) bool { return s.local == unmap(last.Src) || s.local == unmap(last.Dst) }
		if left := leftOf(t, conns, ours); len(left) > 0 {
			t.Errorf("sockets left by the failed restore: %v", left)
		}
		if n := rawTCPSockets(t); n != raw {
			t.Errorf("%d raw TCP sockets after the failed restore, %d before", n, raw)
		}
		for _, fd := range []int{c, a} {
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
		}
		unix.Close(l)
		freePorts(t, conns)
	})
	t.Run("parked and aborted", func(t *testing.T) {
		d, err := images.Open(imgs)
		if err != nil {
			t.Fatal(err)
		}
		opts := Options{TCPEstablished: true, Until: StageRestore}
		plan, err := NewPlan(d, opts)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Start(context.Background(), plan, opts)
		if err != nil {
			t.Fatal(err)
		}
		states := map[string]string{}
		for _, s := range tcpSockets(t) {
			states[s.local.String()+" "+s.peer.String()] = s.state
		}
		for _, task := range plan.Tasks {
			for _, fd := range task.FDs {
				s := fd.File.Inet
				if fd.File.Kind != FileInetSocket || s.Conn == nil {
					continue
				}
				if !repairMode(t, r.HostPID(task.PID), fd.FD) {
					t.Errorf("task %d fd %d (%s) out of repair mode while parked", task.PID, fd.FD, s)
				}
				if got := states[unmap(s.Src).String()+" "+unmap(s.Dst).String()]; got != ssState[s.State] {
					t.Errorf("task %d fd %d (%s) in %q while parked", task.PID, fd.FD, s, got)
				}
			}
		}
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		if left := leftOf(t, conns, nil); len(left) > 0 {
			t.Errorf("sockets left by the aborted restore: %v", left)
		}
		if n := rawTCPSockets(t); n != raw {
			t.Errorf("%d raw TCP sockets after the aborted restore, %d before", n, raw)
		}
		freePorts(t, conns)
	})
}
