package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	sk_packet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-packet"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// usk is a unix socket to put into the tree fixture's images: task is
// the index of the task holding it at fd (1: task 2, table fdinfo-3.img;
// 2: task 3, fdinfo-4.img; -1: none), queue its receive queue.
type usk struct {
	id, ino, peer uint32
	typ, state    uint32
	name          string
	dir           string
	task          int
	fd            uint32
	flags         uint32
	shutdown      sk_opts.SkShutdown
	perms         uint32 // mode of the bound file, 0 for none
	queue         []string
	edit          func(*sk_unix.UnixSkEntry)
	scm           bool // the first packet carries SCM_RIGHTS
}

// testUnixSockets is a set of sockets of every kind crest restores, in the
// tasks 2 and 3 of the tree fixture; dir is where path names go, tag
// makes abstract names unique.
func testUnixSockets(dir, tag string) map[string]*usk {
	const (
		st, dg, sp = unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET
		est, cls   = unixEstablished, unixClose
		lst        = unixListen
		rw, nb     = unix.O_RDWR, unix.O_RDWR | unix.O_NONBLOCK
	)
	lname := filepath.Join(dir, "l.sock") + "\x00"
	return map[string]*usk{
		// a stream pair across tasks, B shut down for writing (A for
		// reading, as the kernel shows it), data both ways
		"A": {id: 200, ino: 9000, peer: 9001, typ: st, state: est, task: 1, fd: 10, flags: rw, shutdown: sk_opts.SkShutdown_READ, queue: []string{"hello ", "world"}},
		"B": {id: 201, ino: 9001, peer: 9000, typ: st, state: est, task: 2, fd: 10, flags: nb, shutdown: sk_opts.SkShutdown_WRITE, queue: []string{"back"}},
		// a datagram pair in one task
		"C": {id: 202, ino: 9002, peer: 9003, typ: dg, state: est, task: 1, fd: 11, flags: rw, queue: []string{"d1", "d22", "d333"}},
		"D": {id: 203, ino: 9003, peer: 9002, typ: dg, state: est, task: 1, fd: 12, flags: rw},
		// a seqpacket pair across tasks
		"E": {id: 204, ino: 9004, peer: 9005, typ: sp, state: est, task: 1, fd: 13, flags: rw},
		"F": {id: 205, ino: 9005, peer: 9004, typ: sp, state: est, task: 2, fd: 11, flags: rw, queue: []string{"rec1", "record2"}},
		// a listener at a path, a connection it accepted (AC, with its
		// name) from a client bound to an abstract name (K)
		"L":  {id: 206, ino: 9006, typ: st, state: lst, name: lname, task: 1, fd: 14, flags: rw, perms: 0o140640, edit: backlog(5)},
		"AC": {id: 207, ino: 9007, peer: 9008, typ: st, state: est, name: lname, task: 1, fd: 15, flags: rw, queue: []string{"request"}},
		"K":  {id: 208, ino: 9008, peer: 9007, typ: st, state: est, name: "\x00crest-k-" + tag, task: 2, fd: 12, flags: rw},
		// an abstract datagram socket with a queue, and one connected
		// to it (which makes it ESTABLISHED, without a peer)
		"X": {id: 209, ino: 9009, typ: dg, state: est, name: "\x00crest-x-" + tag, task: 1, fd: 16, flags: rw, queue: []string{"x1", "x22"}},
		"Y": {id: 210, ino: 9010, peer: 9009, typ: dg, state: est, task: 1, fd: 17, flags: rw},
		// a seqpacket listener at a relative name
		"R": {id: 211, ino: 9011, typ: sp, state: lst, name: "rel.sock\x00", dir: dir, task: 2, fd: 13, flags: rw, edit: backlog(3)},
		// a stream whose peer is gone, shut down both ways, data left
		"W": {id: 212, ino: 9012, typ: st, state: est, task: 1, fd: 18, flags: rw, shutdown: sk_opts.SkShutdown_BOTH, queue: []string{"last words"}},
		// a stream socket neither bound nor connected
		"U": {id: 214, ino: 9014, typ: st, state: cls, task: 1, fd: 19, flags: rw},
	}
}

func backlog(n uint32) func(*sk_unix.UnixSkEntry) {
	return func(e *sk_unix.UnixSkEntry) { e.Backlog = proto.Uint32(n) }
}

// entry is s as CRIU 4.2 writes it.
func (s *usk) entry() *sk_unix.UnixSkEntry {
	e := &sk_unix.UnixSkEntry{Id: proto.Uint32(s.id), Ino: proto.Uint32(s.ino), Type: proto.Uint32(s.typ), State: proto.Uint32(s.state),
		Flags: proto.Uint32(s.flags), Uflags: proto.Uint32(0), Backlog: proto.Uint32(0), Peer: proto.Uint32(s.peer),
		Fown: &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)},
		Opts: &sk_opts.SkOptsEntry{SoSndbuf: proto.Uint32(212992), SoRcvbuf: proto.Uint32(212992), SoSndTmoSec: proto.Uint64(0),
			SoSndTmoUsec: proto.Uint64(0), SoRcvTmoSec: proto.Uint64(0), SoRcvTmoUsec: proto.Uint64(0),
			SoPasscred: proto.Bool(false), SoPasssec: proto.Bool(false)},
		Name: []byte(s.name), NsId: proto.Uint32(2)}
	if s.dir != "" {
		e.NameDir = proto.String(s.dir)
	}
	if s.shutdown != 0 {
		e.Shutdown = s.shutdown.Enum()
	}
	if s.perms != 0 {
		e.FilePerms = &sk_unix.FilePermsEntry{Mode: proto.Uint32(s.perms), Uid: proto.Uint32(0), Gid: proto.Uint32(0)}
	}
	if s.edit != nil {
		s.edit(e)
	}
	return e
}

// addUnixSockets writes the sockets of set into the tree fixture's
// images in dir: files.img entries, fds, sk-queues.img.
func addUnixSockets(t *testing.T, dir string, set map[string]*usk) {
	t.Helper()
	var fes []images.Entry
	fds := map[int][]images.Entry{}
	var pkts []images.Entry
	for _, s := range sortedUsk(set) {
		fes = append(fes, images.Entry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_UNIXSK.Enum(), Id: proto.Uint32(s.id), Usk: s.entry()}})
		if s.task > 0 {
			fds[s.task] = append(fds[s.task], images.Entry{Message: &fdinfo.FdinfoEntry{Id: proto.Uint32(s.id), Flags: proto.Uint32(0),
				Type: fdinfo.FdTypes_UNIXSK.Enum(), Fd: proto.Uint32(s.fd)}})
		}
		for i, q := range s.queue {
			pe := &sk_packet.SkPacketEntry{IdFor: proto.Uint32(s.id), Length: proto.Uint32(uint32(len(q)))}
			if s.scm && i == 0 {
				pe.Scm = []*sk_packet.ScmEntry{{Type: proto.Uint32(1), Rights: []uint32{3}}}
			}
			pkts = append(pkts, images.Entry{Message: pe, Payload: []byte(q)})
		}
	}
	editImage(t, dir, "files.img", func(img *images.Image) { img.Entries = append(img.Entries, fes...) })
	for task, ents := range fds {
		editImage(t, dir, fmt.Sprintf("fdinfo-%d.img", task+2), func(img *images.Image) { img.Entries = append(img.Entries, ents...) })
	}
	if len(pkts) > 0 {
		if err := images.WriteFile(filepath.Join(dir, "sk-queues.img"), &images.Image{Kind: images.KindSkQueues, Entries: pkts}); err != nil {
			t.Fatal(err)
		}
	}
}

// sortedUsk is set in file id order.
func sortedUsk(set map[string]*usk) []*usk {
	var out []*usk
	for id := uint32(0); len(out) < len(set); id++ {
		for _, s := range set {
			if s.id == id {
				out = append(out, s)
			}
		}
	}
	return out
}

// TestPlanUnixSockets: how the plan makes each kind of socket, what it
// links, and what it refuses, naming files.img, the file and why.
func TestPlanUnixSockets(t *testing.T) {
	dir := fixture.CopyImages(t, "tree")
	set := testUnixSockets("/run/crest-test", "plan")
	addUnixSockets(t, dir, set)
	p := planDir(t, dir)
	want := map[string]struct {
		make     UnixMake
		peer     string
		listener string
	}{
		"A": {UnixPair, "B", ""}, "B": {UnixPair, "A", ""}, "C": {UnixPair, "D", ""}, "D": {UnixPair, "C", ""},
		"E": {UnixPair, "F", ""}, "F": {UnixPair, "E", ""}, "L": {UnixAlone, "", ""},
		"AC": {UnixAccepted, "K", "L"}, "K": {UnixConnects, "AC", "L"},
		"X": {UnixFilled, "", ""}, "Y": {UnixAlone, "X", ""}, "R": {UnixAlone, "", ""}, "W": {UnixWidowed, "", ""},
		"U": {UnixAlone, "", ""},
	}
	byID := func(name string) *File {
		if name == "" {
			return nil
		}
		return p.Files[set[name].id]
	}
	for name, w := range want {
		f := byID(name)
		if f == nil || f.Kind != FileUnixSocket || f.Unix == nil {
			t.Errorf("%s: planned %+v", name, f)
			continue
		}
		u := f.Unix
		if u.Make != w.make || u.Peer != byID(w.peer) || u.Listener != byID(w.listener) ||
			(w.make == UnixPair || w.make == UnixAccepted || w.make == UnixConnects) && u.Partner != byID(w.peer) {
			t.Errorf("%s: made %v, peer %v partner %v listener %v; want %v, %s, %s", name, u.Make, u.Peer, u.Partner, u.Listener, w.make, w.peer, w.listener)
		}
		if got := fmt.Sprintf("%q", u.Queue); len(set[name].queue) > 0 && got != fmt.Sprintf("%q", toBytes(set[name].queue)) {
			t.Errorf("%s: queue %s, want %q", name, got, set[name].queue)
		}
	}
	if l := byID("L").Unix; l.Backlog != 5 || l.Perms == nil || l.Perms.Mode != 0o140640 || unixPath(l.Name) != "/run/crest-test/l.sock" {
		t.Errorf("L: %+v", l)
	}
	if len(byID("A").Users) != 1 || byID("A").Users[0].PID != 2 || len(byID("B").Users) != 1 || byID("B").Users[0].PID != 3 {
		t.Errorf("users of A %v, of B %v", byID("A").Users, byID("B").Users)
	}

	for _, tc := range []struct {
		name string
		edit func(map[string]*usk)
		want string
	}{
		{"external peer", func(s map[string]*usk) { s["Y"].peer = 9999 },
			"file 210 (socket:[9010]): its peer socket:[9999] is not in the image set (external unix sockets are not supported)"},
		{"peer held by no task", func(s map[string]*usk) {
			s["Z"] = &usk{id: 213, ino: 9013, typ: unix.SOCK_DGRAM, state: unixClose, name: "\x00z", task: -1}
			s["Y"].peer = 9013
		}, "file 210 (socket:[9010]): its peer socket:[9013] (file 213) is not open in any task of the image set"},
		{"in-flight connection", func(s map[string]*usk) {
			s["I"] = &usk{id: 213, ino: 9013, peer: 9006, typ: unix.SOCK_STREAM, state: unixEstablished, task: 2, fd: 14}
		}, "file 213 (socket:[9013]): a connection to the listener socket:[9006] not accepted yet (in-flight connections are not supported)"},
		{"dangling connection", func(s map[string]*usk) { s["W"].shutdown = 0 },
			"file 212 (socket:[9012]): connected to no peer and not shut down (a dangling connection)"},
		{"SCM_RIGHTS", func(s map[string]*usk) { s["C"].scm = true },
			"file 202 (socket:[9002]): file descriptors in flight in its queue (SCM_RIGHTS) are not supported"},
		{"owner", func(s map[string]*usk) { s["X"].edit = func(e *sk_unix.UnixSkEntry) { e.Fown.Pid = proto.Uint32(7) } },
			"file 209: the owner for SIGIO (F_SETOWN), thread 7, is not in the tree"},
		{"uflags", func(s map[string]*usk) { s["X"].edit = func(e *sk_unix.UnixSkEntry) { e.Uflags = proto.Uint32(1) } },
			"file 209 (socket:[9009]): special unix socket (uflags 0x1"},
		{"type", func(s map[string]*usk) { s["X"].typ = unix.SOCK_RAW },
			"file 209 (socket:[9009]): unix sockets of type 3 are not supported"},
		{"state", func(s map[string]*usk) { s["X"].state = 2 },
			"file 209 (socket:[9009]): unix sockets in state 2 are not supported"},
		{"listening datagram socket", func(s map[string]*usk) { s["X"].state = unixListen },
			"file 209 (socket:[9009]): a listening datagram socket"},
		{"deleted", func(s map[string]*usk) { s["L"].edit = func(e *sk_unix.UnixSkEntry) { e.Deleted = proto.Bool(true) } },
			"file 206 (socket:[9006]): bound to /run/crest-test/l.sock, removed since (ghost unix sockets are not supported)"},
		{"relative name without its directory", func(s map[string]*usk) { s["R"].dir = "" },
			"file 211 (socket:[9011]): bound to the relative name rel.sock without its directory"},
		{"queue of a listener", func(s map[string]*usk) { s["L"].queue = []string{"?"} },
			"file 206 (socket:[9006]): 1 packets queued on a LISTEN socket"},
		{"peer without a name", func(s map[string]*usk) { s["Y"].peer = 9003 },
			"which has no name to connect to again"},
		{"types differ", func(s map[string]*usk) { s["B"].typ = unix.SOCK_SEQPACKET },
			"file 200 (socket:[9000]): a socket of type 1 connected to socket:[9001] of type 5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyImages(t, "tree")
			set := testUnixSockets("/run/crest-test", "plan")
			tc.edit(set)
			addUnixSockets(t, dir, set)
			_, err := openPlan(t, dir)
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a PlanError with %q", err, tc.want)
			}
			if pe.File != "files.img" {
				t.Errorf("error names %q, want files.img", pe.File)
			}
		})
	}
}

func toBytes(ss []string) [][]byte {
	var out [][]byte
	for _, s := range ss {
		out = append(out, []byte(s))
	}
	return out
}

// TestRestoreUnixSockets restores the tree fixture with the sockets of
// testUnixSockets in tasks 2 and 3 and looks at them through copies of the
// restored tasks' fds (pidfd_getfd): each is of its type, paired with its
// peer (what one end sends, the other receives), with its queue (datagram
// and record boundaries kept), its names (the accepted end has its
// listener's, the client its own, a relative name stays relative), its
// shutdown (EOF after the data) and flags; the stale socket file at the
// listener's path is replaced by the new socket's, with the image's mode.
func TestRestoreUnixSockets(t *testing.T) {
	needRoot(t)
	sockDir := t.TempDir()
	// a socket file the dumped process left behind
	stale, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(stale, &unix.SockaddrUnix{Name: filepath.Join(sockDir, "l.sock")}); err != nil {
		t.Fatal(err)
	}
	unix.Close(stale)

	dir := fixture.CopyImages(t, "tree")
	tag := fmt.Sprint(os.Getpid())
	set := testUnixSockets(sockDir, tag)
	addUnixSockets(t, dir, set)
	installFixture(t, "tree")
	p := planDir(t, dir)
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	hosts := abortAtCleanup(t, r, p)
	fd := func(name string) int {
		s := set[name]
		return taskFD(t, hosts[s.task], int(s.fd))
	}
	for name, s := range set {
		c := fd(name)
		if typ, err := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != int(s.typ) {
			t.Errorf("%s: type %d (%v), want %d", name, typ, err, s.typ)
		}
		if fl, err := unix.FcntlInt(uintptr(c), unix.F_GETFL, 0); err != nil || uint32(fl)&(unix.O_ACCMODE|unix.O_NONBLOCK) != s.flags {
			t.Errorf("%s: flags %#o (%v), want %#o", name, fl, err, s.flags)
		}
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", hosts[s.task], s.fd)); err != nil || !strings.HasPrefix(link, "socket:[") {
			t.Errorf("%s: fd %d is %q (%v)", name, s.fd, link, err)
		}
	}

	// A-B: the stream, B shut down for writing
	a, b := fd("A"), fd("B")
	expectRead(t, "A", a, "hello world", "")
	expectRead(t, "B", b, "back")
	if _, err := unix.Write(b, []byte("x")); err != unix.EPIPE {
		t.Errorf("B: a write after SHUT_WR: %v, want EPIPE", err)
	}
	send(t, "A", a, "ping")
	expectRead(t, "B", b, "ping")
	// C-D: datagrams, one at a time
	c, d := fd("C"), fd("D")
	expectRead(t, "C", c, "d1", "d22", "d333")
	send(t, "D", d, "zz")
	expectRead(t, "C", c, "zz")
	// E-F: records
	e, f := fd("E"), fd("F")
	expectRead(t, "F", f, "rec1", "record2")
	send(t, "E", e, "r3")
	expectRead(t, "F", f, "r3")
	// L: listening at its path, a new socket file with its mode
	l := fd("L")
	lpath := filepath.Join(sockDir, "l.sock")
	var st unix.Stat_t
	if err := unix.Stat(lpath, &st); err != nil || st.Mode != 0o140640 {
		t.Errorf("L: %s mode %#o (%v), want 0140640", lpath, st.Mode, err)
	}
	checkName(t, "L", l, unix.Getsockname, lpath)
	if v, err := unix.GetsockoptInt(l, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		t.Errorf("L: SO_ACCEPTCONN %d (%v)", v, err)
	}
	// the file at the path is L's now (the stale one's inode number may
	// well be reused): a client connecting there is accepted on L
	cl, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cl)
	if err := unix.Connect(cl, &unix.SockaddrUnix{Name: lpath}); err != nil {
		t.Errorf("L: connect to %s: %v", lpath, err)
	} else if nfd, _, err := unix.Accept4(l, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC); err != nil {
		t.Errorf("L: accept: %v", err)
	} else {
		unix.Close(nfd)
	}
	// AC-K: accepted from L, AC has L's name, K its own and L's as its peer's
	ac, k := fd("AC"), fd("K")
	checkName(t, "AC", ac, unix.Getsockname, lpath)
	checkName(t, "K", k, unix.Getpeername, lpath)
	checkName(t, "K", k, unix.Getsockname, "@crest-k-"+tag)
	expectRead(t, "AC", ac, "request")
	send(t, "K", k, "more")
	expectRead(t, "AC", ac, "more")
	// X: abstract, its queue; Y connected to it
	x, y := fd("X"), fd("Y")
	checkName(t, "X", x, unix.Getsockname, "@crest-x-"+tag)
	checkName(t, "Y", y, unix.Getpeername, "@crest-x-"+tag)
	expectRead(t, "X", x, "x1", "x22")
	send(t, "Y", y, "y")
	expectRead(t, "X", x, "y")
	// R: a relative name in its directory
	rr := fd("R")
	checkName(t, "R", rr, unix.Getsockname, "rel.sock")
	if err := unix.Stat(filepath.Join(sockDir, "rel.sock"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Errorf("R: %s mode %#o (%v)", filepath.Join(sockDir, "rel.sock"), st.Mode, err)
	}
	// W: its data, then EOF
	expectRead(t, "W", fd("W"), "last words", "")
	// U: not connected, no name
	if _, err := unix.Getpeername(fd("U")); err != unix.ENOTCONN {
		t.Errorf("U: getpeername: %v, want ENOTCONN", err)
	}
	checkName(t, "U", fd("U"), unix.Getsockname, "@") // how x/sys shows no name
}

// expectRead reads from socket c, without waiting, one packet or stretch
// of stream per wanted string; "" wants EOF. Then nothing must be left.
func expectRead(t *testing.T, name string, c int, want ...string) {
	t.Helper()
	buf := make([]byte, 4096)
	typ, _ := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_TYPE)
	for _, w := range want {
		n, _, err := unix.Recvfrom(c, buf, unix.MSG_DONTWAIT)
		if typ == unix.SOCK_STREAM && err == nil && n < len(w) {
			// a stream may come in pieces
			m, _, err2 := unix.Recvfrom(c, buf[n:], unix.MSG_DONTWAIT)
			if err2 == nil {
				n += m
			}
		}
		if err != nil || string(buf[:n]) != w {
			t.Errorf("%s: read %q (%v), want %q", name, buf[:max(n, 0)], err, w)
			return
		}
	}
	if len(want) > 0 && want[len(want)-1] == "" {
		return
	}
	if n, _, err := unix.Recvfrom(c, buf, unix.MSG_DONTWAIT); err != unix.EAGAIN {
		t.Errorf("%s: more to read: %q (%v)", name, buf[:max(n, 0)], err)
	}
}

func send(t *testing.T, name string, c int, s string) {
	t.Helper()
	if _, err := unix.SendmsgN(c, []byte(s), nil, nil, unix.MSG_DONTWAIT); err != nil {
		t.Errorf("%s: send %q: %v", name, s, err)
	}
}

// checkName checks the name get (getsockname, getpeername) gives for c:
// a path, or "@name" for an abstract one.
func checkName(t *testing.T, what string, c int, get func(int) (unix.Sockaddr, error), want string) {
	t.Helper()
	sa, err := get(c)
	got := ""
	if u, ok := sa.(*unix.SockaddrUnix); ok {
		got = u.Name
	}
	if err != nil || got != want {
		t.Errorf("%s: name %q (%v), want %q", what, got, err, want)
	}
}
