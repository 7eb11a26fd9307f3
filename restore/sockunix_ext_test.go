package restore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// externAs makes a usk the entry CRIU 4.2 writes for a peer outside the
// tree (fix_external_unix_sockets): USK_EXTERN, flags 0, a zero sk_opts,
// no net namespace.
func externAs(e *sk_unix.UnixSkEntry) {
	e.Uflags = proto.Uint32(uskExtern)
	e.Flags = proto.Uint32(0)
	e.NsId = nil
	e.Opts = &sk_opts.SkOptsEntry{SoSndbuf: proto.Uint32(0), SoRcvbuf: proto.Uint32(0), SoSndTmoSec: proto.Uint64(0),
		SoSndTmoUsec: proto.Uint64(0), SoRcvTmoSec: proto.Uint64(0), SoRcvTmoUsec: proto.Uint64(0)}
}

// extUnixSockets are datagram sockets of the tree fixture's tasks 2 and 3
// connected outside the tree: G (bound to an abstract name of its own,
// with a queue) and I to XT, a socket at path; H to XA, at an abstract
// name. XT and XA are CRIU's external entries, which no task holds. J,
// in the tree, is connected to G (by its name: it must connect before G
// connects to XT).
func extUnixSockets(path, abstract, tag string) map[string]*usk {
	const dg, est, lst, rw = unix.SOCK_DGRAM, unixEstablished, unixListen, unix.O_RDWR
	return map[string]*usk{
		"G":  {id: 220, ino: 9020, peer: 9030, typ: dg, state: est, name: "\x00crest-g-" + tag, task: 1, fd: 20, flags: rw, queue: []string{"q1", "q22"}},
		"I":  {id: 221, ino: 9021, peer: 9030, typ: dg, state: est, task: 1, fd: 21, flags: unix.O_RDWR | unix.O_NONBLOCK},
		"H":  {id: 222, ino: 9022, peer: 9031, typ: dg, state: est, task: 2, fd: 20, flags: rw},
		"J":  {id: 223, ino: 9023, peer: 9020, typ: dg, state: est, task: 2, fd: 21, flags: rw},
		"XT": {id: 230, ino: 9030, typ: dg, state: lst, name: path + "\x00", task: -1, edit: externAs},
		"XA": {id: 231, ino: 9031, typ: dg, state: lst, name: "\x00" + abstract, task: -1, edit: externAs},
	}
}

// TestPlanExternalUnix: a socket connected outside the image set is made
// alone (filled first when it has a queue) and connected to its external
// peer's name, which no task's file is; and what the plan refuses of
// such peers, naming files.img, the file, the socket, its peer and why.
func TestPlanExternalUnix(t *testing.T) {
	dir := fixture.CopyImages(t, "tree")
	set := extUnixSockets("/run/crest-test/ext.sock", "crest-ext", "plan")
	addUnixSockets(t, dir, set)
	p := planDir(t, dir)
	for name, want := range map[string]struct {
		make UnixMake
		peer string
	}{"G": {UnixFilled, "/run/crest-test/ext.sock\x00"}, "I": {UnixAlone, "/run/crest-test/ext.sock\x00"}, "H": {UnixAlone, "\x00crest-ext"}} {
		f := p.Files[set[name].id]
		if f == nil || f.Unix == nil || f.Unix.External == nil {
			t.Errorf("%s: planned %+v", name, f)
			continue
		}
		if u := f.Unix; u.Make != want.make || u.Peer != nil || string(u.External.Name) != want.peer || u.External.Ino != set[name].peer {
			t.Errorf("%s: made %v, peer %v, external %+v; want %v, %q", name, u.Make, u.Peer, u.External, want.make, want.peer)
		}
	}
	for _, name := range []string{"XT", "XA"} {
		if f := p.Files[set[name].id]; f != nil {
			t.Errorf("%s, outside the tree, planned as %+v", name, f)
		}
	}

	rel := func(s map[string]*usk) { s["XT"].name = "rel.sock\x00" }
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string, s map[string]*usk)
		want string
	}{
		{"other uflags", func(_ *testing.T, _ string, s map[string]*usk) {
			s["XT"].edit = func(e *sk_unix.UnixSkEntry) { externAs(e); e.Uflags = proto.Uint32(uskExtern | 4) }
		}, "file 220 (socket:[9020]): its peer socket:[9030] (file 230): special unix socket (uflags 0x5"},
		{"held by a task", func(_ *testing.T, _ string, s map[string]*usk) { s["XT"].task, s["XT"].fd = 2, 21 },
			"file 220 (socket:[9020]): its peer socket:[9030] (file 230) is external (USK_EXTERN) but a task of the image set holds it"},
		{"stream", func(_ *testing.T, _ string, s map[string]*usk) {
			s["G"].typ, s["G"].queue, s["I"].typ, s["XT"].typ = unix.SOCK_STREAM, nil, unix.SOCK_STREAM, unix.SOCK_STREAM
		}, "file 220 (socket:[9020]): its peer socket:[9030] (file 230) is external: one end of a stream connection can not be restored"},
		{"no name", func(_ *testing.T, _ string, s map[string]*usk) { s["XT"].name = "" },
			"file 220 (socket:[9020]): its peer socket:[9030] (file 230) is external and has no name to connect to"},
		{"long name", func(_ *testing.T, _ string, s map[string]*usk) { s["XT"].name = "/" + strings.Repeat("x", 119) },
			"file 220 (socket:[9020]): its peer socket:[9030] (file 230) is external, with a name of 120 bytes"},
		{"relative name", func(_ *testing.T, _ string, s map[string]*usk) { rel(s) },
			"file 220 (socket:[9020]): its peer socket:[9030] (file 230) is external, bound to the relative name rel.sock without its directory"},
		{"relative name with its directory", func(_ *testing.T, _ string, s map[string]*usk) { rel(s); s["XT"].dir = "/run/crest-test" }, ""},
		{"a mount namespace of its own", func(t *testing.T, dir string, _ map[string]*usk) {
			for pid := 1; pid <= 4; pid++ {
				editImage(t, dir, fmt.Sprintf("ids-%d.img", pid), func(img *images.Image) {
					img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry).MntNsId = proto.Uint32(77)
				})
			}
		}, "file 220 (socket:[9020]): its peer socket:[9030] (file 230) is external, at /run/crest-test/ext.sock in a tree with a mount namespace of its own: not restored yet"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			dir := fixture.CopyImages(t, "tree")
			set := extUnixSockets("/run/crest-test/ext.sock", "crest-ext", "plan")
			tc.edit(t, dir, set)
			addUnixSockets(t, dir, set)
			p, err := openPlan(t, dir)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if x := p.Files[220].Unix.External; x == nil || x.Dir != "/run/crest-test" || string(x.Name) != "rel.sock\x00" {
					t.Errorf("G's external peer: %+v", x)
				}
				return
			}
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a PlanError with %q", err, tc.want)
			}
			if pe.File != "files.img" || pe.PID != 2 {
				t.Errorf("error names %q of task %d, want files.img of task 2", pe.File, pe.PID)
			}
		})
	}
}

// extPeer is a datagram socket of the test's, bound to name, outside the
// restored tree; it is closed when the test ends.
func extPeer(t *testing.T, name string) int {
	t.Helper()
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s) })
	if err := unix.Bind(s, &unix.SockaddrUnix{Name: name}); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRestoreExternalUnix restores the tree fixture with sockets of
// tasks 2 and 3 connected to sockets of the test's, at a path and at an
// abstract name: each is connected to its peer again (what it sends
// arrives there, and what the peer sends to it comes back), G with its
// own name and its queue (and J of the tree connected to it, first), and
// nobody else is connected to the peers.
func TestRestoreExternalUnix(t *testing.T) {
	needRoot(t)
	tag := strconv.Itoa(os.Getpid())
	path := filepath.Join(t.TempDir(), "ext.sock")
	xt := extPeer(t, path)
	xa := extPeer(t, "@crest-xa-"+tag)
	dir := fixture.CopyImages(t, "tree")
	set := extUnixSockets(path, "crest-xa-"+tag, tag)
	addUnixSockets(t, dir, set)
	installFixture(t, "tree")
	p := planDir(t, dir)
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	hosts := abortAtCleanup(t, r, p)
	fd := func(name string) int { return taskFD(t, hosts[set[name].task], int(set[name].fd)) }
	g, i, h := fd("G"), fd("I"), fd("H")
	checkName(t, "G", g, unix.Getpeername, path)
	checkName(t, "G", g, unix.Getsockname, "@crest-g-"+tag)
	checkName(t, "I", i, unix.Getpeername, path)
	checkName(t, "H", h, unix.Getpeername, "@crest-xa-"+tag)
	if fl, err := unix.FcntlInt(uintptr(i), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("I: flags %#o (%v), want O_NONBLOCK", fl, err)
	}
	expectRead(t, "G", g, "q1", "q22")
	send(t, "G", g, "from G")
	send(t, "I", i, "from I")
	expectRead(t, "XT", xt, "from G", "from I")
	send(t, "H", h, "from H")
	expectRead(t, "XA", xa, "from H")
	// the peer may send to G (a datagram socket takes from its peer only)
	if err := unix.Sendto(xt, []byte("to G"), 0, &unix.SockaddrUnix{Name: "@crest-g-" + tag}); err != nil {
		t.Errorf("XT: send to G: %v", err)
	}
	expectRead(t, "G", g, "to G")
	j := fd("J")
	checkName(t, "J", j, unix.Getpeername, "@crest-g-"+tag)
	// as before the dump: G takes datagrams from its peer only
	if err := unix.Send(j, []byte("from J"), unix.MSG_DONTWAIT); err != unix.EPERM {
		t.Errorf("J: send to G, connected elsewhere: %v, want EPERM", err)
	}
	for name, want := range map[string]int{"XT": 2, "XA": 1} {
		if n := connectedTo(t, sockIno(t, map[string]int{"XT": xt, "XA": xa}[name])); len(n) != want {
			t.Errorf("%s: sockets connected to it %v, want %d", name, n, want)
		}
	}
}

// TestRestoreExternalUnixFails: a restore whose external peer can not be
// connected to fails as CRIU's does, naming the task, fd, file, socket,
// peer, path and errno, and leaves nothing: no task, no socket connected
// to the peer, the file at the path as it was (a stale socket file is
// not unlinked: it is not the tree's). And one that fails after the
// sockets were connected (a file of task 3 is missing) leaves nothing
// connected either.
func TestRestoreExternalUnixFails(t *testing.T) {
	needRoot(t)
	installFixture(t, "tree")
	sdir := t.TempDir()
	stale := filepath.Join(sdir, "stale.sock")
	s := extPeer(t, stale)
	unix.Close(s) // nobody holds it: its file stays
	busy := filepath.Join(sdir, "busy.sock")
	b := extPeer(t, busy)
	extPeer(t, filepath.Join(sdir, "other.sock"))
	if err := unix.Connect(b, &unix.SockaddrUnix{Name: filepath.Join(sdir, "other.sock")}); err != nil {
		t.Fatal(err)
	}
	alive := filepath.Join(sdir, "alive.sock")
	live := extPeer(t, alive)
	for _, tc := range []struct {
		name, path string
		missing    bool // task 3 holds a file that is not there
		want       []string
	}{
		{"path gone", filepath.Join(sdir, "gone.sock"), false, []string{"no such file or directory", "nothing is bound there any more"}},
		{"nobody bound", stale, false, []string{"connection refused", "nobody holds the socket bound there any more"}},
		{"connected elsewhere", busy, false, []string{"operation not permitted", "it is connected to another socket"}},
		{"a file missing after", alive, true, []string{"/nonexistent/crest-ext-missing"}},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			dir := fixture.CopyImages(t, "tree")
			set := extUnixSockets(tc.path, "crest-xa-unused", "fails")
			delete(set, "H")
			delete(set, "J")
			delete(set, "XA")
			addUnixSockets(t, dir, set)
			if tc.missing {
				addMissingFile(t, dir, 3, 22)
			}
			var before unix.Stat_t
			statErr := unix.Lstat(tc.path, &before)
			fds := ourFDs(t)
			p := planDir(t, dir)
			r, err := Start(context.Background(), p, Options{})
			if err == nil {
				abortAtCleanup(t, r, p)
				t.Fatal("the restore did not fail")
			}
			t.Log(err)
			want := tc.want
			if !tc.missing {
				want = append([]string{"task 2 fd 20", "unix socket 220 (socket:[9020])", "connect to its peer outside the tree, socket:[9030] at " + tc.path}, want...)
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
			var after unix.Stat_t
			if err := unix.Lstat(tc.path, &after); (err == nil) != (statErr == nil) || err == nil && after.Ino != before.Ino {
				t.Errorf("%s: after the restore %v (ino %d), before %v (ino %d)", tc.path, err, after.Ino, statErr, before.Ino)
			}
			if now := ourFDs(t); now != fds {
				t.Errorf("our fds: %d after the restore, %d before", now, fds)
			}
			if n := connectedTo(t, sockIno(t, live)); len(n) != 0 {
				t.Errorf("sockets still connected to %s: %v", alive, n)
			}
			if l := procsUnder(t, "/opt/crest-fixtures/tree"); len(l) > 0 {
				t.Errorf("left alive: %v", l)
			}
		})
	}
}

// addMissingFile gives task pid of the tree fixture fd, a regular file
// that does not exist.
func addMissingFile(t *testing.T, dir string, pid int, fd uint32) {
	t.Helper()
	const id = 240
	editImage(t, dir, "files.img", func(img *images.Image) {
		img.Entries = append(img.Entries, images.Entry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(id),
			Reg: &regfile.RegFileEntry{Id: proto.Uint32(id), Flags: proto.Uint32(unix.O_RDONLY), Pos: proto.Uint64(0),
				Fown: (&usk{}).entry().Fown, Name: proto.String("/nonexistent/crest-ext-missing"), Mode: proto.Uint32(0o100644)}}})
	})
	editImage(t, dir, fmt.Sprintf("fdinfo-%d.img", pid+1), func(img *images.Image) {
		img.Entries = append(img.Entries, images.Entry{Message: &fdinfo.FdinfoEntry{Id: proto.Uint32(id), Flags: proto.Uint32(0),
			Type: fdinfo.FdTypes_REG.Enum(), Fd: proto.Uint32(fd)}})
	})
}

// ourFDs counts the test process's fds.
func ourFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// procsUnder lists the processes whose executable is under dir.
func procsUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	exes, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, e := range exes {
		if l, err := os.Readlink(e); err == nil && strings.HasPrefix(l, dir+"/") {
			out = append(out, e+" "+l)
		}
	}
	return out
}

func sockIno(t *testing.T, fd int) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// connectedTo lists the unix sockets of our net namespace whose peer is
// the socket with inode ino, as sock_diag shows them (a dump of every
// unix socket with its peer).
func connectedTo(t *testing.T, ino uint32) []uint32 {
	t.Helper()
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	ne := binary.NativeEndian
	req := make([]byte, 16+24)
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	req[16] = unix.AF_UNIX
	ne.PutUint32(req[20:], ^uint32(0)) // every state
	ne.PutUint32(req[28:], 4)          // UDIAG_SHOW_PEER
	if err := unix.Sendto(s, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatal(err)
	}
	var out []uint32
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(s, buf, 0)
		if err != nil {
			t.Fatal(err)
		}
		for b := buf[:n]; len(b) >= 16; {
			l := int(ne.Uint32(b))
			if l < 16 || l > len(b) {
				t.Fatalf("sock_diag: message of %d bytes in %d", l, len(b))
			}
			switch ne.Uint16(b[4:]) {
			case unix.NLMSG_DONE:
				return out
			case unix.NLMSG_ERROR:
				t.Fatalf("sock_diag: error %d", int32(ne.Uint32(b[16:])))
			}
			msg := b[16:l]
			for a := msg[min(16, len(msg)):]; len(a) >= 4; {
				al := int(ne.Uint16(a))
				if al < 4 || al > len(a) {
					break
				}
				if ne.Uint16(a[2:]) == 2 && al >= 8 && ne.Uint32(a[4:]) == ino { // UNIX_DIAG_PEER
					out = append(out, ne.Uint32(msg[4:]))
				}
				a = a[min((al+3)&^3, len(a)):]
			}
			b = b[min((l+3)&^3, len(b)):]
		}
	}
}

// criuExtUnixLast is the last line the extunix workload sent before
// CRIU 4.2 dumped it (images/testdata/criu-4.2-extunix/README.md).
const criuExtUnixLast = 104

// criuExtUnixDir is where CRIU's images of extunix have it run: its
// binary, working directory, log and listener.
const criuExtUnixDir = "/tmp/crest-criu-extunix"

// TestRestoreExternalUnixCRIU restores CRIU 4.2's images of the extunix
// workload (images/testdata/criu-4.2-extunix: criu dump --ext-unix-sk of
// a task whose datagram socket is connected to a listener at a path, the
// other sending to it with sendto), its binary put back where it ran and
// a listener of the test's bound at the path: the lines go on arriving
// there, from the one after the last before the dump, none lost or
// repeated, from both sockets; and the workload's log goes on.
func TestRestoreExternalUnixCRIU(t *testing.T) {
	needRoot(t)
	src := filepath.Join("..", "images", "testdata", "criu-4.2-extunix")
	if err := os.RemoveAll(criuExtUnixDir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(criuExtUnixDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(criuExtUnixDir) })
	prog, err := os.ReadFile(filepath.Join(src, "extunix"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(criuExtUnixDir, "extunix"), prog, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(criuExtUnixDir, "out-extunix.log"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ln := listenLines(t, filepath.Join(criuExtUnixDir, "extunix.sock"))
	p := planDir(t, fixture.CopyDir(t, filepath.Join(src, "images")))
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	out := waitLog(t, criuExtUnixDir, "out-extunix.log", 0, lines(50))
	if !strings.HasPrefix(out, fmt.Sprintf("extunix %d\n", criuExtUnixLast+1)) || strings.Contains(out, "CORRUPT") {
		t.Errorf("out-extunix.log after the restore: %q", out)
	}
	got := ln.wait(t, 2*50)
	for _, tag := range []string{"log", "any"} {
		var ns []int
		for _, l := range got {
			if m := tagged.FindStringSubmatch(l); m != nil && m[1] == tag {
				n, _ := strconv.Atoi(m[2])
				ns = append(ns, n)
			}
		}
		for i, n := range ns {
			if n != criuExtUnixLast+1+i {
				t.Errorf("%s lines at the listener: %v, want them counting on from %d", tag, ns, criuExtUnixLast+1)
				break
			}
		}
	}
}

var tagged = regexp.MustCompile(`^(\w+) (\d+)$`)

// lineListener is a datagram socket of the test's bound to a path that
// keeps the lines it receives.
type lineListener struct {
	mu    sync.Mutex
	lines []string
}

func listenLines(t *testing.T, path string) *lineListener {
	t.Helper()
	s := extPeer(t, path)
	// a timeout, so that the reader sees the socket closed
	if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}); err != nil {
		t.Fatal(err)
	}
	l := &lineListener{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(s, buf, 0)
			if err != nil {
				continue
			}
			l.mu.Lock()
			l.lines = append(l.lines, strings.TrimSuffix(string(buf[:n]), "\n"))
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return l
}

// wait waits until n lines arrived and returns them.
func (l *lineListener) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		got := append([]string(nil), l.lines...)
		l.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lines at the listener within 10s, want %d: %q", len(got), n, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
