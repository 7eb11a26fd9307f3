package dump_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/procscan"
	"github.com/crest-restore/crest/test/workloads"

	_ "github.com/crest-restore/crest/internal/mainthread" // no test wedges the main thread in a tree's namespaces
)

// TestRoundTrip checkpoints every workload with `crest dump` and brings it
// back with `crest restore -d`, both through the crest binary as a user
// runs them, and checks that the restored tree is the dumped one and runs
// on: the pids, parents, groups, sessions and thread ids of pstree.img in
// a new pid namespace, /proc/PID/maps and the fd table of every task as its
// images say, and every log continuing from its last line at the dump,
// line by line, for a second, without a CORRUPT line. The workloads check
// their own memory (checksums, the shared region, the memfd) and write
// CORRUPT when it is wrong.
func TestRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the round trip needs root (ptrace, clone3 set_tid, new pid namespaces)")
	}
	bin := cli.Binary(t)
	// The launcher's child and the root of a tree that `crest restore -d`
	// left behind come to us, not to pid 1, which reaps late here: so we
	// can reap them and know they are gone.
	cli.Subreaper(t)
	for _, tc := range []struct {
		name  string
		rules map[string]check.Next
		// same, when set, reads a property of the live tree that the
		// restored tree must have too
		same func(*testing.T, map[int]*check.Task) []string
	}{
		{"counter", map[string]check.Next{"out.log": check.Counter}, nil},
		{"tree", map[string]check.Next{"out-init.log": check.Counter, "out-child1.log": check.Counter,
			"out-child2.log": check.Counter, "out-child3.log": check.Counter}, nil},
		{"threads", map[string]check.Next{"out-0.log": threadLine, "out-1.log": threadLine, "out-2.log": threadLine}, nil},
		{"pipe", map[string]check.Next{"out.log": check.Counter, "out-parent.log": check.Counter}, nil},
		{"shmem", map[string]check.Next{"out.log": shmemSeen, "out-parent.log": check.Counter}, nil},
		{"files", map[string]check.Next{"out.log": filesRecord}, nil},
		{"signals", map[string]check.Next{"out.log": signalsTick}, nil},
		{"dynamic", map[string]check.Next{"out.log": check.Counter}, nil},
		// Each task waits in a call with a timeout that the dump
		// interrupts; after the restore none may fail with EINTR.
		{"sleepers", map[string]check.Next{"out-init.log": check.Counter, "out-poll.log": check.Counter,
			"out-futex.log": check.Counter, "out-usleep.log": check.Counter, "out-nanosleep.log": check.Counter}, nil},
		{"memfd", map[string]check.Next{"out.log": check.Counter}, nil},
		// Each thread checks what its seccomp filters do every tick
		// (their order too) and writes CORRUPT if it is wrong; every
		// thread must have the mode and number of filters it had.
		{"seccomp", map[string]check.Next{"out-init.log": check.Counter, "out-filter.log": check.Counter,
			"out-filterthread.log": check.Counter, "out-tsync.log": check.Counter,
			"out-tsyncthread.log": check.Counter, "out-strict.log": check.Counter}, seccompStatus},
		// Each checks its personality, oom_score_adj, parent-death
		// signal, nice and policy (per thread), the init its child
		// subreaper, every tick, and writes CORRUPT if one changed.
		{"procattrs", map[string]check.Next{"out-init.log": check.Counter, "out-child.log": check.Counter,
			"out-thread.log": check.Counter}, nil},
		// In a time namespace of its own: the restore makes it again,
		// with the clocks the workload had at the dump (it checks them).
		{"clocks", map[string]check.Next{"out.log": check.Counter}, nil},
		// In UTS and IPC namespaces of its own, which the restore makes
		// again: it checks its names, IPC sysctls and SysV objects every
		// tick; nsutsState compares them (and the segments' contents)
		// from outside.
		{"nsuts", map[string]check.Next{"out-nsuts.log": check.Counter}, nsutsState},
		// In a net namespace of its own, which the restore makes again:
		// it checks its loopback, addresses, routes, rule, iptables rule,
		// sysctls and a TCP connection every tick; netnsState compares
		// them from outside.
		{"netns", map[string]check.Next{"out-netns.log": check.Counter}, netnsState},
		// In a mount namespace of its own, which the restore makes
		// again: its proc, tmpfs (their files from their tarballs),
		// bind mounts and files open on them, which it checks every
		// tick with the shape of its mountinfo.
		{"mntns", map[string]check.Next{"out-mntns.log": check.Counter}, nil},
		// A FIFO (data in it) and unix sockets bound to paths (a
		// listener with a client connected by its path, a datagram
		// socket sent to by name) on the tmpfs of a mount namespace
		// of its own, and a pty of its own devpts, which it uses and
		// checks every tick.
		{"mntfiles", map[string]check.Next{"out-mntfiles.log": check.Counter}, nil},
		// Netlink sockets in a net namespace of its own (route, generic,
		// uevent, sock_diag; bound by the kernel or by itself, listening
		// to groups, connected, never bound): it checks their ports,
		// groups and options every tick and uses them every 25th, when
		// its route listener must hear of the address it adds to lo and
		// removes, and the socket diag shows their states.
		{"netlink", map[string]check.Next{"out-netlink.log": check.Counter}, nil},
		// Packet sockets in a net namespace of its own (raw and
		// datagram, bound to lo or not, options, memberships, a fanout
		// group): it checks their bindings and options every tick and
		// sends a frame on lo that each bound one must receive.
		{"packetsk", map[string]check.Next{"out-packetsk.log": check.Counter}, nil},
		// Its tick is an epoll of a timerfd, an eventfd (edge-triggered)
		// and a pipe, which must all report on.
		{"epoll", map[string]check.Next{"out-epoll.log": check.Counter}, nil},
		// Patterns in its AVX-512 registers (ymm8-15's upper halves,
		// zmm8-15's upper 256 bits, zmm16-31, k1-k7), checked every
		// tick: the thread's whole xsave state must come back.
		{"vecregs", map[string]check.Next{"out-vecregs.log": check.Counter}, nil},
		// A Go program: the runtime's threads, epoll and eventfd,
		// timers and signal handlers.
		{"gocounter", map[string]check.Next{"out.log": check.Counter}, nil},
		// A pty pair in the tree: its index, termios, window size,
		// controlling terminal, foreground group, packet mode, lock and
		// the messages queued both ways, checked every tick.
		{"ptypair", map[string]check.Next{"out-parent.log": check.Counter, "out-child.log": check.Counter,
			"out-fg.log": check.Counter}, nil},
		// Two zombie children of the init, which never waits for them:
		// they come back as zombies (check.Tree) with nothing else to
		// compare; TestDumpZombies checks their exit statuses.
		{"zombie", map[string]check.Next{"out-init.log": check.Counter, "out-child3.log": check.Counter}, nil},
		// An eventfd, a signalfd and a timerfd in use, each checked
		// every tick: the count, the signal (and no other), the
		// timer's expirations going on.
		{"fdkinds", map[string]check.Next{"out-fdkinds.log": check.Counter}, nil},
		// An inotify watching a directory and a file, wds 1 and 3 (2
		// removed): the events of every tick come with those wds,
		// and the watches are the same, on the same inodes.
		{"inotify", map[string]check.Next{"out-inotify.log": check.Counter}, nil},
		// Unix stream, datagram and seqpacket pairs, a listener at a
		// relative path with a connection it accepted, an abstract
		// datagram socket, data queued in every one: each checks the
		// messages, names, listener and shutdown every tick.
		{"unixsk", map[string]check.Next{"out-parent.log": check.Counter, "out-child.log": check.Counter}, nil},
		// TCP listeners (v4 and v6), bound and connected UDP and
		// UDP-Lite sockets, each with options it checks every tick,
		// while it connects to its listeners and sends datagrams.
		{"inetsk", map[string]check.Next{"out-inetsk.log": check.Counter}, nil},
		// Established TCP connections (v4 and v6) between the init and
		// its child, their queues full both ways: each checks every
		// byte, the four-tuples, MSS, options, window scales and the
		// timestamp clock every tick, and that no direction stalls.
		{"tcpest", map[string]check.Next{"out-init.log": check.Counter, "out-child.log": check.Counter}, nil},
		// Half-closed TCP connections (FIN_WAIT1, FIN_WAIT2,
		// CLOSE_WAIT, LAST_ACK, CLOSING; v4 and v6) between the init
		// and its child: each end checks its state, its queues, EOF
		// after the peer's FIN and the open direction every tick.
		{"tcphalf", map[string]check.Next{"out-init.log": check.Counter, "out-child.log": check.Counter}, nil},
		// Files deleted while open or mapped, dumped as ghost files: a
		// /dev/shm page the init and its child share (a semaphore and
		// counters), a private mapping, a file with holes and an
		// O_TMPFILE file, each checked every tick (one inode for both
		// tasks, the holes, the offsets, still deleted).
		{"ghost", map[string]check.Next{"out-parent.log": check.Counter, "out-child.log": check.Counter}, nil},
		{"procfds", map[string]check.Next{"out-parent.log": check.Counter, "out-child.log": check.Counter}, nil}, // files of its own /proc, checked every tick
		// In a user namespace of its own (root inside not host root)
		// that owns its other namespaces: the maps, ids, groups and
		// capabilities, and objects owned by ids inside (a tmpfs's
		// files, SysV objects, ping_group_range, owners for SIGIO, a
		// memfd; in userns2 ghost files), checked every tick
		// (userns_test.go).
		{"userns", usernsLogs, usernsState},
		{"userns2", userns2Logs, usernsState},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := workloads.Start(t, tc.name)
			for l := range tc.rules {
				waitLines(t, p, l, 3)
			}
			dumped, err := check.Live(p.Pid)
			if err != nil {
				t.Fatal(err)
			}
			var was []string
			if tc.same != nil {
				was = tc.same(t, dumped)
			}
			imgs := dumpKilled(t, bin, p, dumped)
			before := check.Snapshot(t, p.Dir, tc.rules)
			d, err := images.Open(imgs)
			if err != nil {
				t.Fatal(err)
			}
			s, err := images.Summarize(d)
			if err != nil {
				t.Fatal(err)
			}
			t.Run("vdso", func(t *testing.T) { wholeVDSO(t, d, s) })

			// Restored stopped (-s): its maps and fds are compared
			// with the images before it runs an instruction of its
			// own (a Go program maps memory when it likes), then it
			// is let go and must run on.
			_, live := restoreTree(t, bin, imgs, d, p.Dir, "-s")
			for _, c := range []struct {
				name  string
				check func(testing.TB, *images.Summary, uint32, int)
			}{{"maps", check.Maps}, {"fds", check.FDs}} {
				t.Run(c.name, func(t *testing.T) {
					for _, task := range s.Tasks {
						if task.State == "Dead" {
							continue // a zombie has no memory or files
						}
						if lt := live[int(task.PID)]; lt != nil {
							c.check(t, s, task.PID, lt.Host)
						}
					}
				})
			}
			if tc.same != nil {
				if now := tc.same(t, live); !slices.Equal(now, was) {
					t.Errorf("after the restore:\n%v\nat the dump:\n%v", now, was)
				}
			}
			for _, lt := range live {
				if err := syscall.Kill(lt.Host, syscall.SIGCONT); err != nil {
					t.Fatalf("SIGCONT %d: %v", lt.Host, err)
				}
			}
			t.Run("runs on", func(t *testing.T) { check.Logs(t, p.Dir, before, tc.rules, time.Second) })
		})
	}
}

// wholeVDSO checks that the images hold every task's vdso whole, an ELF
// image: CRIU's restore parses it (a forked child has none of its pages
// present, and a dump of only those left it zeros: CRIU 4.2 failed with
// "vdso: Invalid ELF magic").
func wholeVDSO(t *testing.T, d *images.Dir, s *images.Summary) {
	for _, task := range s.Tasks {
		if task.Memory == nil {
			continue // a zombie
		}
		i := slices.IndexFunc(task.Memory.VMAs, func(v images.VMA) bool { return v.Status.Has(images.VMAAreaVDSO) })
		if i < 0 {
			t.Errorf("task %d: no vdso in mm-%d.img", task.PID, task.PID)
			continue
		}
		v := task.Memory.VMAs[i]
		if v.Pages*images.PageSize != v.End-v.Start {
			t.Errorf("task %d: %d pages of the vdso %#x-%#x in the images, want all", task.PID, v.Pages, v.Start, v.End)
			continue
		}
		runs, err := d.PageRuns(task.PID)
		if err != nil {
			t.Fatal(err)
		}
		pages, err := images.OpenPages(runs)
		if err != nil {
			t.Fatal(err)
		}
		magic := make([]byte, 4)
		if _, err := pages.ReadAt(magic, v.Start); err != nil || string(magic) != "\x7fELF" {
			t.Errorf("task %d: vdso starts with %q (%v), want an ELF header", task.PID, magic, err)
		}
		pages.Close()
	}
}

// fields parses line with re into numbers; it fails if it does not match.
func fields(re *regexp.Regexp, line string) ([]int, error) {
	m := re.FindStringSubmatch(line)
	if m == nil {
		return nil, fmt.Errorf("%q is not %s", line, re)
	}
	v := make([]int, len(m)-1)
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v, nil
}

// rule makes a check.Next from re and a test of the numbers of the line
// before and the line.
func rule(re *regexp.Regexp, ok func(prev, cur []int) bool) check.Next {
	return func(prev, line string) error {
		a, err := fields(re, prev)
		if err != nil {
			return err
		}
		b, err := fields(re, line)
		if err != nil {
			return err
		}
		if !ok(a, b) {
			return fmt.Errorf("%q cannot follow %q", line, prev)
		}
		return nil
	}
}

var (
	// threads: "thread K n=N shared=S", n counting on, the shared
	// counter growing.
	threadLine = rule(regexp.MustCompile(`^thread (\d) n=(\d+) shared=(\d+)$`), func(a, b []int) bool {
		return b[0] == a[0] && b[1] == a[1]+1 && b[2] > a[2]
	})
	// shmem's child: "seen S tick=T", T counting on, S (the parent's
	// counter, read through the shared mapping) never going back.
	shmemSeen = rule(regexp.MustCompile(`^seen (\d+) tick=(\d+)$`), func(a, b []int) bool {
		return b[1] == a[1]+1 && b[0] >= a[0]
	})
	// files: "N fd=F off=O rec=R", N counting on, fds 4 and 5 in turn,
	// each record the one after the last (0 after the end of the 64 KiB
	// file), whichever fd read it: one offset.
	filesRecord = rule(regexp.MustCompile(`^(\d+) fd=([45]) off=(\d+) rec=(\d+)$`), func(a, b []int) bool {
		return b[0] == a[0]+1 && b[1] == 9-a[1] && b[3] == a[2]%65536 && b[2] == b[3]+16
	})
	// signals: "tick=N alarms=A usr1=U usr2=V alt=H", N counting on, the
	// interval timer's alarms not going back, SIGUSR2 never delivered,
	// every handler on the alternate stack.
	signalsTick = rule(regexp.MustCompile(`^tick=(\d+) alarms=(\d+) usr1=(\d+) usr2=(\d+) alt=(\d+)$`), func(a, b []int) bool {
		return b[0] == a[0]+1 && b[1] >= a[1] && b[2] == a[2] && b[3] == 0 && b[4] == b[1]+b[2]
	})
)

// dumpKilled dumps the tree of p with `crest dump` (which kills it) into a
// new directory, reaps it (live is the tree as check.Live saw it) and
// returns the directory.
func dumpKilled(t *testing.T, bin string, p *workloads.Process, live map[int]*check.Task) string {
	t.Helper()
	imgs := filepath.Join(t.TempDir(), "images")
	// --tcp-established (here and in restoreTree) changes nothing for a
	// tree without TCP connections: every workload gets it
	if res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(p.Pid), "-D", imgs, "--tcp-established"); res.Code != 0 {
		t.Fatalf("crest dump -t %d: exit %d: %s", p.Pid, res.Code, res.Stderr)
	}
	reap(t, p.Pid, live)
	return imgs
}

// reap waits until the tree of root, killed by the dump, is gone: root
// reaped by us (it is our child: we are the subreaper), the others by it.
func reap(t *testing.T, root int, tree map[int]*check.Task) {
	t.Helper()
	for {
		_, err := syscall.Wait4(root, nil, syscall.WALL, nil)
		if err != syscall.EINTR {
			break
		}
	}
	pids := []int{root}
	for _, lt := range tree {
		pids = append(pids, lt.Host)
	}
	if left := procscan.WaitGone(10*time.Second, pids...); len(left) > 0 {
		t.Fatalf("pids %v of the dumped tree of %d still in /proc 10s after crest dump", left, root)
	}
}

// restoreTree restores imgs with `crest restore -d` and args, and checks the
// restored tree against the images d (check.Tree). When the test ends the
// tree is killed, and nothing of it may be left (cli.NothingLeft, dir
// being the workload's directory).
func restoreTree(t *testing.T, bin, imgs string, d *images.Dir, dir string, args ...string) (root int, tree map[int]*check.Task) {
	t.Helper()
	root = cli.RestoreDetached(t, bin, imgs, append(args, "--tcp-established")...)
	var hosts []int
	t.Cleanup(func() {
		killRestored(t, root, hosts)
		cli.NothingLeft(t, dir)
	})
	tree = check.Tree(t, d, root)
	for _, lt := range tree {
		hosts = append(hosts, lt.Host)
	}
	return root, tree
}

// killRestored kills a restored tree through its root, the init of its
// pid namespace, reaps the root and waits until root and hosts are gone.
func killRestored(t *testing.T, root int, hosts []int) {
	t.Helper()
	if err := syscall.Kill(root, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		t.Errorf("kill %d: %v", root, err)
	}
	for {
		_, err := syscall.Wait4(root, nil, syscall.WALL, nil)
		if err != syscall.EINTR {
			break
		}
	}
	if left := procscan.WaitGone(10*time.Second, append(hosts, root)...); len(left) > 0 {
		t.Errorf("pids %v of the restored tree of %d still exist 10s after SIGKILL", left, root)
	}
}
