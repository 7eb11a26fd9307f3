package dump_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// orderSetup makes unix sockets whose fds come before their peers' in the
// fd tables, which crest dump once wrote in that order (and CRIU's restore
// then failed: "Peer ... unresolved"): datagram sockets connected to a
// path (c1 -> s1) and to an abstract name (c2 -> s2), a chain (a -> b ->
// c, b itself connected), two sockets connected to one (m1, m2 -> m), a
// stream pair, a listener with a connection it accepted, and y, held by
// both tasks but first by the init, connected to x, which only the child
// holds (a peer in a later task). The child sends a numbered message on
// every connection every millisecond and reads it at the peer (but for a,
// whose sends b refuses with EPERM since it is connected to c), with
// "order N" in out-order.log, or CORRUPT and exit 3 when one is lost.
const orderSetup = `char cwd[200], nb[108];
	int c1 = socket(AF_UNIX, SOCK_DGRAM, 0), c2 = socket(AF_UNIX, SOCK_DGRAM, 0), a = socket(AF_UNIX, SOCK_DGRAM, 0),
	    m1 = socket(AF_UNIX, SOCK_DGRAM, 0), m2 = socket(AF_UNIX, SOCK_DGRAM, 0), y = socket(AF_UNIX, SOCK_DGRAM, 0),
	    s1 = socket(AF_UNIX, SOCK_DGRAM, 0), s2 = socket(AF_UNIX, SOCK_DGRAM, 0), b = socket(AF_UNIX, SOCK_DGRAM, 0),
	    c = socket(AF_UNIX, SOCK_DGRAM, 0), m = socket(AF_UNIX, SOCK_DGRAM, 0), l = socket(AF_UNIX, SOCK_STREAM, 0),
	    sp[2], k, ac, ready[2];
	if (!getcwd(cwd, sizeof cwd) || socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || pipe(ready))
		return 5;
	if (bind(s1, (struct sockaddr *)&addr, unaddr(&addr, "s1.sock")) || connect(c1, (struct sockaddr *)&addr, unaddr(&addr, "s1.sock")))
		return 5;
	snprintf(nb, sizeof nb, "@order-s2:%s", cwd);
	if (bind(s2, (struct sockaddr *)&addr, unaddr(&addr, nb)) || connect(c2, (struct sockaddr *)&addr, unaddr(&addr, nb)))
		return 5;
	snprintf(nb, sizeof nb, "@order-b:%s", cwd);
	if (bind(b, (struct sockaddr *)&addr, unaddr(&addr, nb)) || connect(a, (struct sockaddr *)&addr, unaddr(&addr, nb)))
		return 5;
	snprintf(nb, sizeof nb, "@order-c:%s", cwd);
	if (bind(c, (struct sockaddr *)&addr, unaddr(&addr, nb)) || connect(b, (struct sockaddr *)&addr, unaddr(&addr, nb)))
		return 5;
	if (bind(m, (struct sockaddr *)&addr, unaddr(&addr, "m.sock")) || connect(m1, (struct sockaddr *)&addr, unaddr(&addr, "m.sock")) ||
	    connect(m2, (struct sockaddr *)&addr, unaddr(&addr, "m.sock")))
		return 5;
	k = socket(AF_UNIX, SOCK_STREAM, 0);
	if (bind(l, (struct sockaddr *)&addr, unaddr(&addr, "l.sock")) || listen(l, 2) ||
	    connect(k, (struct sockaddr *)&addr, unaddr(&addr, "l.sock")) || (ac = accept(l, NULL, NULL)) < 0)
		return 5;
	if (fork() == 0) {
		int x = socket(AF_UNIX, SOCK_DGRAM, 0), out = open_log("order");
		int pairs[][2] = { { c1, s1 }, { c2, s2 }, { a, b }, { b, c }, { m1, m }, { m2, m }, { y, 0 }, { sp[0], sp[1] }, { k, ac } };

		snprintf(nb, sizeof nb, "@order-x:%s", cwd);
		if (bind(x, (struct sockaddr *)&addr, unaddr(&addr, nb)) || connect(y, (struct sockaddr *)&addr, unaddr(&addr, nb)))
			_exit(5);
		pairs[6][1] = x;
		close(ready[1]);
		for (unsigned long n = 1;; n++) {
			for (int i = 0; i < 9; i++) {
				char want[32], got[32];
				int len = snprintf(want, sizeof want, "%d:%lu", i, n);

				if (i == 2) {
					/* b takes datagrams from c alone, its peer */
					if (send(a, want, len, 0) != -1 || errno != EPERM) {
						say(out, "CORRUPT a\n");
						_exit(3);
					}
					continue;
				}
				if (send(pairs[i][0], want, len, 0) != len || recv(pairs[i][1], got, sizeof got, MSG_DONTWAIT) != len ||
				    memcmp(got, want, len)) {
					snprintf(want, sizeof want, "CORRUPT %d\n", i);
					say(out, want);
					_exit(3);
				}
			}
			snprintf(line, sizeof line, "order %lu\n", n);
			say(out, line);
			nanosleep(&ms, NULL);
		}
	}
	close(ready[1]);
	if (read(ready[0], nb, 1) != 0)
		return 5;
	close(ready[0]);`

// unixOrderRule checks files.img in imgs against CRIU's rule: every unix
// socket after its peer, unless the peer is itself or connected back to
// it (a pair). It returns the sockets of files.img in their order.
func unixOrderRule(t *testing.T, imgs string) []uint32 {
	t.Helper()
	img, err := images.ReadFile(filepath.Join(imgs, "files.img"))
	if err != nil {
		t.Fatal(err)
	}
	peers := map[uint32]uint32{}
	for _, e := range img.Entries {
		if u := e.Message.(*fdinfo.FileEntry).GetUsk(); u != nil {
			peers[u.GetIno()] = u.GetPeer()
		}
	}
	var order []uint32
	seen := map[uint32]bool{}
	for i, e := range img.Entries {
		u := e.Message.(*fdinfo.FileEntry).GetUsk()
		if u == nil {
			continue
		}
		order = append(order, u.GetIno())
		seen[u.GetIno()] = true
		p := u.GetPeer()
		if p == 0 || p == u.GetIno() || peers[p] == u.GetIno() {
			continue
		}
		if !seen[p] {
			t.Errorf("files.img entry %d: socket:[%d] (file %d) comes before its peer socket:[%d], which is not connected back: "+
				"CRIU's restore would not resolve it", i, u.GetIno(), u.GetId(), p)
		}
	}
	return order
}

// TestDumpUnixSocketOrder dumps trees whose unix sockets come before
// their peers in the fd tables and checks that files.img has every
// socket after its peer (CRIU's rule), then restores them with crest: the
// restored trees must go on using every connection.
func TestDumpUnixSocketOrder(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) *workloads.Process
		logs  map[string]check.Next
		// sockets is how many unix sockets files.img must hold
		sockets int
	}{
		{"peers after their sockets", func(t *testing.T) *workloads.Process {
			p := workloads.StartTicking(t, "unix", "order", workloads.TickSource{Includes: `#include <errno.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
`, Funcs: `
static socklen_t unaddr(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	strncpy(a->sun_path, name, sizeof a->sun_path - 1);
	if (name[0] == '@')
		a->sun_path[0] = 0;
	return offsetof(struct sockaddr_un, sun_path) + strlen(a->sun_path + 1) + 1 + (name[0] == '@' ? 0 : 1);
}
`, Decls: "struct sockaddr_un addr;", Setup: orderSetup})
			waitLines(t, p, "out-unix.log", 3)
			waitLines(t, p, "out-order.log", 3)
			return p
		}, map[string]check.Next{"out-unix.log": check.Counter, "out-order.log": check.Counter}, 17},
		{"unixsk", func(t *testing.T) *workloads.Process {
			p := workloads.Start(t, "unixsk")
			waitLines(t, p, "out-parent.log", 3)
			waitLines(t, p, "out-child.log", 3)
			return p
		}, map[string]check.Next{"out-parent.log": check.Counter, "out-child.log": check.Counter}, 13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.start(t)
			live, err := check.Live(p.Pid)
			if err != nil {
				t.Fatal(err)
			}
			imgs := dumpKilled(t, bin, p, live)
			if order := unixOrderRule(t, imgs); len(order) != tc.sockets {
				t.Errorf("%d unix sockets in files.img, want %d", len(order), tc.sockets)
			}
			d, err := images.Open(imgs)
			if err != nil {
				t.Fatal(err)
			}
			before := check.Snapshot(t, p.Dir, tc.logs)
			restoreTree(t, bin, imgs, d, p.Dir)
			check.Logs(t, p.Dir, before, tc.logs, time.Second)
		})
	}
}
