package dump_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	sk_opts "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	sk_unix "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// imageSocket is a unix socket of the images with the task holding it.
type imageSocket struct {
	pid uint32
	fd  uint32
	e   *sk_unix.UnixSkEntry
}

// unixSocketsOf returns the unix sockets of the images in d by inode.
func unixSocketsOf(t *testing.T, d *images.Dir) map[uint32]imageSocket {
	t.Helper()
	out := map[uint32]imageSocket{}
	for _, pe := range d.Pstree {
		for fd, f := range imageFds(t, d, pe.GetPid()) {
			if e := f.file.GetUsk(); e != nil {
				out[e.GetIno()] = imageSocket{pe.GetPid(), fd, e}
			}
		}
	}
	return out
}

// TestDumpUnixSockets dumps the unixsk workload and checks its unix
// sockets in files.img and sk-queues.img against what the workload made
// (see unixsk.c), then restores it: it must run on (it checks its names,
// queues and shutdown itself), and its listener take connections at its
// path.
func TestDumpUnixSockets(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	p := workloads.Start(t, "unixsk")
	logs := map[string]check.Next{"out-parent.log": check.Counter, "out-child.log": check.Counter}
	for l := range logs {
		waitLines(t, p, l, 3)
	}
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	imgs := dumpKilled(t, bin, p, live)
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	socks := unixSocketsOf(t, d)
	if len(socks) != 13 {
		t.Errorf("%d unix sockets in the images, want 13: %v", len(socks), socks)
	}
	find := func(what string, ok func(e *sk_unix.UnixSkEntry) bool) imageSocket {
		t.Helper()
		for _, s := range socks {
			if ok(s.e) {
				return s
			}
		}
		t.Fatalf("no %s among the sockets of the images", what)
		return imageSocket{}
	}
	path := []byte("unixsk.sock\x00")
	abstractA := []byte("\x00unixsk:" + p.Dir)
	abstractK := []byte("\x00unixsk-k:" + p.Dir)
	l := find("listener", func(e *sk_unix.UnixSkEntry) bool { return e.GetState() == 10 })
	ac := find("accepted connection", func(e *sk_unix.UnixSkEntry) bool { return e.GetState() == 1 && bytes.Equal(e.GetName(), path) })
	k := find("client K", func(e *sk_unix.UnixSkEntry) bool { return bytes.Equal(e.GetName(), abstractK) })
	a := find("datagram A", func(e *sk_unix.UnixSkEntry) bool { return bytes.Equal(e.GetName(), abstractA) })
	b := find("datagram B", func(e *sk_unix.UnixSkEntry) bool { return e.GetPeer() == a.e.GetIno() })
	s0 := find("stream s[0]", func(e *sk_unix.UnixSkEntry) bool {
		return e.GetType() == unix.SOCK_STREAM && e.GetShutdown() == sk_opts.SkShutdown_READ
	})
	s1 := socks[s0.e.GetPeer()]
	u := find("stream U", func(e *sk_unix.UnixSkEntry) bool { return e.GetType() == unix.SOCK_STREAM && e.GetState() == 7 })
	w := find("stream W", func(e *sk_unix.UnixSkEntry) bool {
		return e.GetType() == unix.SOCK_STREAM && e.GetState() == 1 && e.GetPeer() == 0
	})
	byType := func(typ uint32, pid uint32) imageSocket {
		return find(fmt.Sprintf("socket of type %d in task %d", typ, pid), func(e *sk_unix.UnixSkEntry) bool {
			return e.GetType() == typ && e.GetPeer() != 0 && socks[e.GetIno()].pid == pid && e.GetPeer() != a.e.GetIno() && e.GetIno() != b.e.GetIno()
		})
	}
	d0, d1 := byType(unix.SOCK_DGRAM, 1), byType(unix.SOCK_DGRAM, 2)
	q0, q1 := byType(unix.SOCK_SEQPACKET, 1), byType(unix.SOCK_SEQPACKET, 2)
	for _, c := range []struct {
		what     string
		s        imageSocket
		pid      uint32
		typ      uint32
		state    uint32
		peer     uint32
		shutdown sk_opts.SkShutdown
		flags    uint32
	}{
		{"L", l, 1, unix.SOCK_STREAM, 10, 0, 0, unix.O_RDWR},
		{"U", u, 1, unix.SOCK_STREAM, 7, 0, 0, unix.O_RDWR},
		// its peer closed: no peer, shut down both ways
		{"W", w, 1, unix.SOCK_STREAM, 1, 0, sk_opts.SkShutdown_BOTH, unix.O_RDWR},
		{"AC", ac, 1, unix.SOCK_STREAM, 1, k.e.GetIno(), 0, unix.O_RDWR},
		{"K", k, 2, unix.SOCK_STREAM, 1, ac.e.GetIno(), 0, unix.O_RDWR},
		// ESTABLISHED: B connected to it
		{"A", a, 1, unix.SOCK_DGRAM, 1, 0, 0, unix.O_RDWR},
		{"B", b, 2, unix.SOCK_DGRAM, 1, a.e.GetIno(), 0, unix.O_RDWR},
		{"s[0]", s0, 1, unix.SOCK_STREAM, 1, s1.e.GetIno(), sk_opts.SkShutdown_READ, unix.O_RDWR},
		{"s[1]", s1, 2, unix.SOCK_STREAM, 1, s0.e.GetIno(), sk_opts.SkShutdown_WRITE, unix.O_RDWR},
		{"d[0]", d0, 1, unix.SOCK_DGRAM, 1, d1.e.GetIno(), 0, unix.O_RDWR},
		{"d[1]", d1, 2, unix.SOCK_DGRAM, 1, d0.e.GetIno(), 0, unix.O_RDWR | unix.O_NONBLOCK},
		{"q[0]", q0, 1, unix.SOCK_SEQPACKET, 1, q1.e.GetIno(), 0, unix.O_RDWR},
		{"q[1]", q1, 2, unix.SOCK_SEQPACKET, 1, q0.e.GetIno(), 0, unix.O_RDWR},
	} {
		e := c.s.e
		if c.s.pid != c.pid || e.GetType() != c.typ || e.GetState() != c.state || e.GetPeer() != c.peer || e.GetShutdown() != c.shutdown ||
			e.GetFlags() != c.flags || e.GetUflags() != 0 || e.GetOpts() == nil || e.GetNsId() == 0 {
			t.Errorf("%s: task %d fd %d: %v; want task %d type %d state %d peer %d shutdown %v flags %#o", c.what, c.s.pid, c.s.fd, e,
				c.pid, c.typ, c.state, c.peer, c.shutdown, c.flags)
		}
		zeroOwner(t, c.what, e.GetFown())
	}
	if !bytes.Equal(l.e.GetName(), path) || l.e.GetNameDir() != p.Dir || l.e.GetBacklog() != 4 || l.e.GetFilePerms().GetMode() != 0o140600 {
		t.Errorf("L: name %q in %q, backlog %d, perms %v; want %q in %s, 4, mode 0140600", l.e.GetName(), l.e.GetNameDir(),
			l.e.GetBacklog(), l.e.GetFilePerms(), path, p.Dir)
	}
	if ac.e.GetNameDir() != p.Dir || k.e.GetFilePerms() != nil || len(b.e.GetName()) != 0 {
		t.Errorf("AC in %q, K perms %v, B name %q", ac.e.GetNameDir(), k.e.GetFilePerms(), b.e.GetName())
	}

	// What the other wrote in its last tick is in every receive queue:
	// 16-byte messages with the channel's tags, datagrams one each.
	pkts, err := d.SkQueues()
	if err != nil {
		t.Fatal(err)
	}
	queues := map[uint32][][]byte{}
	for _, pk := range pkts {
		queues[pk.Entry.GetIdFor()] = append(queues[pk.Entry.GetIdFor()], pk.Data)
	}
	for _, c := range []struct {
		what   string
		s      imageSocket
		tags   string
		stream bool
	}{
		{"s[1]", s1, "s", true}, {"AC", ac, "k", true}, {"q[0]", q0, "q", false},
		{"d[0]", d0, "cC", false}, {"d[1]", d1, "pP", false}, {"A", a, "bB", false}, {"W", w, "w", true},
	} {
		q := queues[c.s.e.GetId()]
		var msgs [][]byte
		if c.stream {
			all := bytes.Join(q, nil)
			for len(all) >= 16 {
				msgs, all = append(msgs, all[:16]), all[16:]
			}
			if len(all) != 0 {
				t.Errorf("%s: %d bytes queued, not whole messages", c.what, len(bytes.Join(q, nil)))
			}
		} else {
			msgs = q
		}
		if len(msgs) < len(c.tags) {
			t.Errorf("%s: %d messages queued, want %d at least", c.what, len(msgs), len(c.tags))
		}
		for i, m := range msgs {
			if len(m) != 16 || m[0] != c.tags[i%len(c.tags)] || m[15] != '\n' {
				t.Errorf("%s: message %d is %q", c.what, i, m)
			}
		}
	}
	for _, s := range []imageSocket{l, k, b, s0, q1, u} {
		if len(queues[s.e.GetId()]) != 0 {
			t.Errorf("socket:[%d] (task %d fd %d): %d packets queued, want none", s.e.GetIno(), s.pid, s.fd, len(queues[s.e.GetId()]))
		}
	}
	if res := cli.Run(t, bin, "show", "-D", imgs); res.Code != 0 || !strings.Contains(res.Stdout, "UNIXSK") {
		t.Errorf("crest show -D: exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}

	before := check.Snapshot(t, p.Dir, logs)
	restoreTree(t, bin, imgs, d, p.Dir)
	check.Logs(t, p.Dir, before, logs, time.Second)
	c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	if err := unix.Connect(c, &unix.SockaddrUnix{Name: filepath.Join(p.Dir, "unixsk.sock")}); err != nil {
		t.Errorf("connect to the restored listener: %v", err)
	}
}

// unixProgram is a workload that runs setup (socket headers included;
// the log is fd 3, setup's first fd 4) and then writes "tick N" to
// out-unix.log every millisecond.
func unixProgram(t *testing.T, name, setup string) *workloads.Process {
	t.Helper()
	p := workloads.StartTicking(t, "unix", name, workloads.TickSource{Includes: `#include <sched.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
`, Funcs: `
static socklen_t unaddr(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	strcpy(a->sun_path, name);
	if (name[0] == '@')
		a->sun_path[0] = 0;
	return offsetof(struct sockaddr_un, sun_path) + strlen(name) + (name[0] == '@' ? 0 : 1);
}
`, Decls: "struct sockaddr_un addr;", Setup: setup})
	waitLines(t, p, "out-unix.log", 3)
	return p
}

// TestDumpRefusesUnixSockets: unix sockets a restore could not bring back
// fail the dump with an error naming the task, the fd, the socket and
// why; the tree runs on and no directory is left.
func TestDumpRefusesUnixSockets(t *testing.T) {
	// a socket of the test, outside the dumped trees
	ext, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ext)
	extName := fmt.Sprintf("@crest-ext-%d", os.Getpid())
	if err := unix.Bind(ext, &unix.SockaddrUnix{Name: extName}); err != nil {
		t.Fatal(err)
	}
	extListener, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(extListener)
	extListenerName := fmt.Sprintf("@crest-extl-%d", os.Getpid())
	if err := unix.Bind(extListener, &unix.SockaddrUnix{Name: extListenerName}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(extListener, 8); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, setup string
		want        string
	}{
		{"external peer", `int s = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (connect(s, (struct sockaddr *)&addr, unaddr(&addr, "` + extName + `")))
		return 5;`, "is not open in the dumped tree (external unix sockets are not supported)"},
		{"connection not accepted", `int s = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(s, (struct sockaddr *)&addr, unaddr(&addr, "` + extListenerName + `")))
		return 5;`, "a connection not accepted yet, or whose peer is gone (in-flight or dangling connection)"},
		{"listener with connections", `int l = socket(AF_UNIX, SOCK_STREAM, 0), c = socket(AF_UNIX, SOCK_STREAM, 0);
	if (bind(l, (struct sockaddr *)&addr, unaddr(&addr, "l.sock")) || listen(l, 2) ||
	    connect(c, (struct sockaddr *)&addr, unaddr(&addr, "l.sock")))
		return 5;`, "a listening socket with 1 connections not accepted yet (in-flight connections are not supported)"},
		{"SCM_RIGHTS", `int sp[2];
	char c = 'x', cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { &c, 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
	struct cmsghdr *ch = CMSG_FIRSTHDR(&mh);
	socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
	ch->cmsg_level = SOL_SOCKET;
	ch->cmsg_type = SCM_RIGHTS;
	ch->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(ch), &logfd, sizeof(int));
	if (sendmsg(sp[1], &mh, 0) != 1)
		return 5;`, "file descriptors in flight in its receive queue (SCM_RIGHTS) are not supported"},
		{"credentials", `int sp[2], on = 1;
	socketpair(AF_UNIX, SOCK_DGRAM, 0, sp);
	if (setsockopt(sp[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof on) || send(sp[1], "x", 1, 0) != 1)
		return 5;`, "credentials on the packets of its receive queue (SO_PASSCRED) are not supported"},
		{"empty datagram", `int sp[2];
	socketpair(AF_UNIX, SOCK_DGRAM, 0, sp);
	if (send(sp[1], "", 0, 0) != 0)
		return 5;`, "an empty datagram in its receive queue"},
		{"out-of-band byte", `int sp[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
	if (send(sp[1], "ab", 2, 0) != 2 || send(sp[1], "!", 1, MSG_OOB) != 1 || send(sp[1], "cd", 2, 0) != 2)
		return 5;`, "out-of-band data in its receive queue (MSG_OOB) is not supported"},
		{"removed path", `int s = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (bind(s, (struct sockaddr *)&addr, unaddr(&addr, "gone.sock")) || unlink("gone.sock"))
		return 5;`, "bound to gone.sock, removed since (ghost unix sockets are not supported)"},
		{"peer without a name", `int sp[2], z;
	socketpair(AF_UNIX, SOCK_DGRAM, 0, sp);
	z = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (bind(z, (struct sockaddr *)&addr, unaddr(&addr, "z.sock")) || connect(sp[1], (struct sockaddr *)&addr, unaddr(&addr, "z.sock")))
		return 5;`, "which has no name to connect to again"},
		{"absolute name in a chroot", `int s;
	if (chroot("."))
		return 5;
	s = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (bind(s, (struct sockaddr *)&addr, unaddr(&addr, "/x.sock")))
		return 5;`, "bound to /x.sock in a task whose root is /tmp/"},
		{"another network namespace", `int ns = open("/proc/self/ns/net", O_RDONLY), s;
	if (ns < 0 || unshare(CLONE_NEWNET))
		return 5;
	s = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (s < 0 || setns(ns, CLONE_NEWNET))
		return 5;
	close(ns);
	if (dup2(s, 4) != 4)
		return 5;
	close(s);`, "a socket of another network namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := unixProgram(t, strings.ReplaceAll(tc.name, " ", "-"), tc.setup)
			parent := t.TempDir()
			_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
			var ue *dump.UnsupportedError
			if !errors.As(err, &ue) {
				t.Fatalf("dump: %v, want an UnsupportedError", err)
			}
			for _, want := range []string{"task 1", "fd 4", "socket:[", tc.want} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
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
