package dump_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// extListener is a datagram socket of the test bound to a path, outside
// every dumped tree, as syslog's /dev/log is: it keeps the lines it
// receives.
type extListener struct {
	conn  *net.UnixConn
	mu    sync.Mutex
	lines []string
}

func listenExt(t *testing.T, path string) *extListener {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	l := &extListener{conn: c}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			l.mu.Lock()
			l.lines = append(l.lines, strings.TrimSuffix(string(buf[:n]), "\n"))
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close() })
	return l
}

var extLine = regexp.MustCompile(`^(\w+) (\d+)$`)

// counted returns the numbers of the lines tagged tag, in their order.
func (l *extListener) counted(tag string) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int
	for _, line := range l.lines {
		if m := extLine.FindStringSubmatch(line); m != nil && m[1] == tag {
			n, _ := strconv.Atoi(m[2])
			out = append(out, n)
		}
	}
	return out
}

// waitPast waits until a line "tag N" with N above n arrived.
func (l *extListener) waitPast(t *testing.T, tag string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c := l.counted(tag); len(c) > 0 && c[len(c)-1] > n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line %q above %d within 10s", tag, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// consecutive checks that the lines tagged tag count on by one, with
// neither gap nor repeat.
func (l *extListener) consecutive(t *testing.T, tag string) {
	t.Helper()
	c := l.counted(tag)
	for i := 1; i < len(c); i++ {
		if c[i] != c[i-1]+1 {
			t.Errorf("listener: %q %d after %d", tag, c[i], c[i-1])
			return
		}
	}
}

// startExtUnix starts the extunix workload in dir (where its listener
// is) with launch's options (-N: a net namespace of its own).
func startExtUnix(t *testing.T, dir string, opts ...string) *workloads.Process {
	t.Helper()
	prog := workloads.Build(t, "extunix")
	if len(opts) == 0 {
		return workloads.StartIn(t, prog, dir)
	}
	out, err := exec.Command(workloads.Build(t, "launch"), append(opts, dir, prog)...).Output()
	if err != nil {
		t.Fatalf("launch %v %s: %v", opts, prog, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("launch: bad pid %q", out)
	}
	p := workloads.Adopt(pid, dir)
	t.Cleanup(func() { p.Kill(t) })
	return p
}

// TestDumpExtUnixRoundTrip dumps the extunix workload, whose datagram
// socket is connected to a listener of the test's, with `crest dump
// --ext-unix-sk` and restores it with `crest restore -d`: the restored
// tree has the fds of its images and runs on, and its lines go on
// arriving at the listener, from the one after the last before the dump,
// none lost or repeated, from the connected socket and from the one that
// sends with sendto. In a net namespace of its own too, where the
// listener (in crest's) is not: the dump finds it in crest's, the
// restore connects by the path from the tree's.
func TestDumpExtUnixRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root")
	}
	bin := cli.Binary(t)
	cli.Subreaper(t)
	for _, tc := range []struct {
		name   string
		launch []string
	}{{"crest's net namespace", nil}, {"own net namespace", []string{"-N"}}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l := listenExt(t, filepath.Join(dir, "extunix.sock"))
			p := startExtUnix(t, dir, tc.launch...)
			rules := map[string]check.Next{"out-extunix.log": check.Counter}
			waitLines(t, p, "out-extunix.log", 3)
			dumped, err := check.Live(p.Pid)
			if err != nil {
				t.Fatal(err)
			}
			imgs := filepath.Join(t.TempDir(), "images")
			if res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(p.Pid), "-D", imgs, "--ext-unix-sk"); res.Code != 0 {
				t.Fatalf("crest dump --ext-unix-sk: exit %d: %s", res.Code, res.Stderr)
			}
			reap(t, p.Pid, dumped)
			before := check.Snapshot(t, dir, rules)
			sent := l.counted("log")
			if len(sent) == 0 {
				t.Fatal("no line arrived at the listener before the dump")
			}
			d, err := images.Open(imgs)
			if err != nil {
				t.Fatal(err)
			}
			s, err := images.Summarize(d)
			if err != nil {
				t.Fatal(err)
			}
			_, live := restoreTree(t, bin, imgs, d, dir, "-s")
			t.Run("fds", func(t *testing.T) {
				for _, task := range s.Tasks {
					if lt := live[int(task.PID)]; lt != nil {
						check.FDs(t, s, task.PID, lt.Host)
					}
				}
			})
			for _, lt := range live {
				if err := syscall.Kill(lt.Host, syscall.SIGCONT); err != nil {
					t.Fatal(err)
				}
			}
			check.Logs(t, dir, before, rules, time.Second)
			last := sent[len(sent)-1]
			l.waitPast(t, "log", last+20)
			l.waitPast(t, "any", last+20)
			l.consecutive(t, "log")
			l.consecutive(t, "any")
		})
	}
}

// TestDumpExtUnixLikeCRIU compares crest dump --ext-unix-sk's images of
// the extunix workload with CRIU 4.2's of the same program
// (images/testdata/criu-4.2-extunix): the external peer's entry (but its
// inode and name: another listener), its id after every other file's, the
// sockets pointing at it, coming after it in files.img.
func TestDumpExtUnixLikeCRIU(t *testing.T) {
	dir := t.TempDir()
	listenExt(t, filepath.Join(dir, "extunix.sock"))
	p := startExtUnix(t, dir)
	waitLines(t, p, "out-extunix.log", 3)
	imgs := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: imgs, ExtUnixSk: true}); err != nil {
		t.Fatal(err)
	}
	ours := unixEntries(t, imgs)
	theirs := unixEntries(t, filepath.Join("..", "images", "testdata", "criu-4.2-extunix", "images"))
	if len(ours) != len(theirs) {
		t.Fatalf("%d unix sockets, CRIU's images have %d", len(ours), len(theirs))
	}
	for id, c := range theirs {
		o := ours[id]
		if o == nil {
			t.Errorf("file %d: not a unix socket, CRIU's is %v", id, c)
			continue
		}
		o, c = proto.Clone(o).(*sk_unix.UnixSkEntry), proto.Clone(c).(*sk_unix.UnixSkEntry)
		// another run, another listener
		if c.GetPeer() != 0 {
			if ours[c.GetPeer()] != nil || theirs[c.GetPeer()] != nil {
				t.Fatal("peers are inodes, not ids")
			}
			c.Peer, o.Peer = proto.Uint32(1), proto.Uint32(1)
		}
		c.Ino, o.Ino = proto.Uint32(0), proto.Uint32(0)
		if c.GetUflags() != 0 {
			c.Name, o.Name = nil, nil
		}
		if !proto.Equal(o, c) {
			t.Errorf("file %d:\n ours %v\nCRIU's %v", id, o, c)
		}
	}
	ext := ours[8]
	if ext == nil || string(ext.GetName()) != filepath.Join(dir, "extunix.sock")+"\x00" || ours[4].GetPeer() != ext.GetIno() {
		t.Errorf("the external peer: %v; connected to it: %v", ext, ours[4])
	}
	// CRIU's restore resolves a peer among the entries before a socket
	// only: files.img in CRIU's order
	if o, c := fileOrder(t, imgs), fileOrder(t, filepath.Join("..", "images", "testdata", "criu-4.2-extunix", "images")); o != c {
		t.Errorf("files.img ids in the order %s, CRIU's %s", o, c)
	}
}

// fileOrder returns the ids of files.img in imgs, in their order.
func fileOrder(t *testing.T, imgs string) string {
	t.Helper()
	img, err := images.ReadFile(filepath.Join(imgs, "files.img"))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range img.Entries {
		ids = append(ids, strconv.Itoa(int(e.Message.(*fdinfo.FileEntry).GetId())))
	}
	return strings.Join(ids, " ")
}

// TestDumpExtUnixSharedPeer: two sockets connected to one socket outside
// the tree, at an abstract name, share one entry for it.
func TestDumpExtUnixSharedPeer(t *testing.T) {
	name := "@crest-extsh-" + strconv.Itoa(os.Getpid())
	extSocket(t, name, "", false)
	p := unixProgram(t, "ext-shared", `int a = socket(AF_UNIX, SOCK_DGRAM, 0), b = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (a != 4 || b != 5 || connect(a, (struct sockaddr *)&addr, unaddr(&addr, "`+name+`")) ||
	    connect(b, (struct sockaddr *)&addr, unaddr(&addr, "`+name+`")))
		return 5;`)
	imgs := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: imgs, ExtUnixSk: true}); err != nil {
		t.Fatal(err)
	}
	var ext []*sk_unix.UnixSkEntry
	peers := map[uint32]int{}
	for _, u := range unixEntries(t, imgs) {
		if u.GetUflags() != 0 {
			ext = append(ext, u)
		} else {
			peers[u.GetPeer()]++
		}
	}
	if len(ext) != 1 || string(ext[0].GetName()) != "\x00"+name[1:] || peers[ext[0].GetIno()] != 2 {
		t.Errorf("external entries %v; sockets by peer %v", ext, peers)
	}
}

// unixEntries returns the unix socket entries of files.img in imgs, by id.
func unixEntries(t *testing.T, imgs string) map[uint32]*sk_unix.UnixSkEntry {
	t.Helper()
	img, err := images.ReadFile(filepath.Join(imgs, "files.img"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint32]*sk_unix.UnixSkEntry{}
	for _, e := range img.Entries {
		if fe := e.Message.(*fdinfo.FileEntry); fe.GetUsk() != nil {
			out[fe.GetId()] = fe.GetUsk()
		}
	}
	return out
}

// TestDumpExtUnixRefused: unix sockets connected outside the tree that
// neither CRIU 4.2 nor crest dumps, or only with --ext-unix-sk, fail the
// dump with an error naming the task, the fd, the socket, its peer and
// why; the tree runs on and no directory is left.
func TestDumpExtUnixRefused(t *testing.T) {
	tag := strconv.Itoa(os.Getpid())
	ldir := t.TempDir()
	// dgram: a datagram socket at a path; stream, seqpacket: listeners
	// that accept every connection and keep it; pass: a listener that
	// takes a datagram socket of a socketpair from the tree (SCM_RIGHTS),
	// whose other end stays there; back: a datagram socket that
	// connects back to the tree's; rel: bound to a relative name; netns:
	// at a path, but in another net namespace.
	dgram := filepath.Join(ldir, "dgram.sock")
	listenExt(t, dgram)
	stream := "@crest-exts-" + tag
	acceptAll(t, unix.SOCK_STREAM, stream)
	seqpacket := "@crest-extq-" + tag
	acceptAll(t, unix.SOCK_SEQPACKET, seqpacket)
	pass := "@crest-extp-" + tag
	acceptAll(t, unix.SOCK_STREAM, pass)
	back := extSocket(t, "@crest-extb-"+tag, "", false)
	rel := filepath.Join(ldir, "rel.sock")
	extSocket(t, "rel.sock", ldir, false)
	netns := filepath.Join(ldir, "netns.sock")
	extSocket(t, netns, "", true)

	connect := func(typ, to string) string {
		return fmt.Sprintf(`int s = socket(AF_UNIX, %s, 0);
	if (s != 4 || connect(s, (struct sockaddr *)&addr, unaddr(&addr, "%s")))
		return 5;`, typ, to)
	}
	for _, tc := range []struct {
		name, setup string
		ext         bool
		// after runs once the tree is up
		after func(t *testing.T, dir string)
		want  string
	}{
		{"datagram without the option", connect("SOCK_DGRAM", dgram), false, nil,
			"its peer socket:[INO] (" + dgram + ") is not open in the dumped tree (external unix sockets are not supported); crest dump --ext-unix-sk dumps it"},
		{"stream without the option", connect("SOCK_STREAM", stream), false, nil,
			"(" + stream + ") is not open in the dumped tree (external unix sockets are not supported); not even with --ext-unix-sk"},
		{"stream", connect("SOCK_STREAM", stream), true, nil,
			"(" + stream + ") is not open in the dumped tree: one end of a stream connection can not be restored, even with --ext-unix-sk"},
		{"seqpacket", connect("SOCK_SEQPACKET", seqpacket), true, nil,
			"one end of a seqpacket connection can not be restored, even with --ext-unix-sk"},
		{"peer without a name", `int sp[2], c;
	char x = 'x', cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { &x, 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
	struct cmsghdr *ch = CMSG_FIRSTHDR(&mh);
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sp) || sp[0] != 4)
		return 5;
	c = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(c, (struct sockaddr *)&addr, unaddr(&addr, "` + pass + `")))
		return 5;
	ch->cmsg_level = SOL_SOCKET;
	ch->cmsg_type = SCM_RIGHTS;
	ch->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(ch), &sp[1], sizeof(int));
	if (sendmsg(c, &mh, 0) != 1)
		return 5;
	close(sp[1]);
	close(c);`, true, nil, "is not open in the dumped tree and has no name to connect to again"},
		{"connected back", `int s = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (s != 4 || bind(s, (struct sockaddr *)&addr, unaddr(&addr, "@crest-extme-` + tag + `")) ||
	    connect(s, (struct sockaddr *)&addr, unaddr(&addr, "@crest-extb-` + tag + `")))
		return 5;`, true, func(t *testing.T, dir string) {
			if err := unix.Connect(back, &unix.SockaddrUnix{Name: "@crest-extme-" + tag}); err != nil {
				t.Fatal(err)
			}
		}, "(@crest-extb-" + tag + ") is not open in the dumped tree and is connected back to it"},
		{"relative name", connect("SOCK_DGRAM", rel), true, nil, "(rel.sock) is not open in the dumped tree and is bound to a relative name"},
		{"another net namespace", connect("SOCK_DGRAM", netns), true, nil,
			"is not open in the dumped tree, nor in a net namespace crest sees"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			p := unixProgram(t, "ext-"+strings.ReplaceAll(tc.name, " ", "-"), tc.setup)
			if tc.after != nil {
				tc.after(t, p.Dir)
			}
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/4", p.Pid))
			if err != nil {
				t.Fatal(err)
			}
			parent := t.TempDir()
			_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images"), ExtUnixSk: tc.ext})
			var ue *dump.UnsupportedError
			if !errors.As(err, &ue) {
				t.Fatalf("dump: %v, want an UnsupportedError", err)
			}
			if ue.Task != 1 || ue.Resource != "fd 4" || ue.What != link {
				t.Errorf("refused task %d, %s, %s; want task 1, fd 4, %s", ue.Task, ue.Resource, ue.What, link)
			}
			if !strings.Contains(ue.Why, "its peer socket:[") {
				t.Errorf("%q does not name the peer", ue.Why)
			}
			want := regexp.MustCompile(`socket:\[\d+\]`).ReplaceAllString(ue.Why, "socket:[INO]")
			if !strings.Contains(want, tc.want) {
				t.Errorf("refused: %q, want %q", ue.Why, tc.want)
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 0 {
				t.Errorf("the failed dump left %v in %s", ents, parent)
			}
			n := len(waitLines(t, p, "out-unix.log", 1))
			waitLines(t, p, "out-unix.log", n+5)
			if !workloads.Alive(p.Pid) {
				t.Errorf("tree %d died after the failed dump", p.Pid)
			}
		})
	}
}

// acceptAll makes a listener of type typ bound to name that accepts every
// connection and keeps it (and what it carries) until the test ends.
func acceptAll(t *testing.T, typ int, name string) {
	t.Helper()
	l, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: name}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 8); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []int
	done := false
	go func() {
		for {
			c, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			mu.Lock()
			if done {
				unix.Close(c)
			} else {
				held = append(held, c)
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		done = true
		for _, c := range held {
			unix.Close(c)
		}
		mu.Unlock()
		// wakes the accept (a close would not)
		unix.Shutdown(l, unix.SHUT_RDWR)
		unix.Close(l)
	})
}

// extSocket makes a datagram socket of the test's bound to name, from
// directory dir when it is not empty (name is relative then), in a net
// namespace of its own when newNet; it is closed when the test ends.
func extSocket(t *testing.T, name, dir string, newNet bool) int {
	t.Helper()
	type made struct {
		fd  int
		err error
	}
	done := make(chan made, 1)
	go func() {
		// the thread's fs or net namespace is its own now: it ends
		// with this goroutine
		runtime.LockOSThread()
		flags := 0
		if dir != "" {
			flags |= unix.CLONE_FS
		}
		if newNet {
			flags |= unix.CLONE_NEWNET
		}
		if err := unix.Unshare(flags); err != nil {
			done <- made{-1, err}
			return
		}
		if dir != "" {
			if err := unix.Chdir(dir); err != nil {
				done <- made{-1, err}
				return
			}
		}
		s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			if err = unix.Bind(s, &unix.SockaddrUnix{Name: name}); err != nil {
				unix.Close(s)
			}
		}
		done <- made{s, err}
	}()
	m := <-done
	if m.err != nil {
		t.Fatalf("socket bound to %s: %v", name, m.err)
	}
	t.Cleanup(func() { unix.Close(m.fd) })
	return m.fd
}
