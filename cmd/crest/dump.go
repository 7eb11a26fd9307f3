package main

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/crest-restore/crest/dump"
)

func init() {
	register(&verb{
		name:  "dump",
		usage: "-t PID -D DIR [--leave-running | -s] [--tcp-established] [--ext-unix-sk] [--shell-job] [--ghost-limit SIZE] [--trace TARGET]",
		short: "checkpoint a process tree into a CRIU image directory",
		long: `
dump checkpoints the process tree rooted at PID (all its descendants and
threads) into DIR as CRIU 4.2 images, which crest restore and criu
restore both read. The tree is frozen with ptrace for the time of the
dump; by default it is killed afterwards, as CRIU does; with
--leave-running it runs on as if nothing happened; with -s
(--leave-stopped) it stays, every task stopped by SIGSTOP, until a
SIGCONT. Tasks that were stopped (by SIGSTOP, SIGTSTP, SIGTTIN or
SIGTTOU) are dumped as stopped, with their signal.

DIR is written as a whole: crest builds the images in a temporary
directory beside it and renames it into place at the end, so a failed
dump leaves no half-written DIR, and the tree is let go untouched. DIR
may exist if it holds no images yet.

With --tcp-established, established TCP connections (IPv4 and IPv6) are
dumped as CRIU does: each socket is put into repair mode (TCP_REPAIR)
while the tree is frozen and its sequence numbers, queued data (received
and unread, sent and not acknowledged, not sent yet), window, MSS,
window scales, options and timestamp clock go into tcp-stream-INO.img.
When the tree is killed the sockets close in repair mode, silently, so
that a restore takes the connections over; with --leave-running or -s
repair mode is switched off again and they go on. crest sets no network
lock (CRIU's iptables or nftables rules): when it kills the tree, every
connection's peer must be in the tree too. Half-closed connections
(FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING) are dumped the
same way, with their state, their shutdown bits and their FINs counted
in the sequence numbers (not in the queues), as CRIU counts them.

With --ext-unix-sk, a unix datagram socket connected to a socket outside
the tree that has a name (syslog(3)'s, to /dev/log) is dumped as criu dump
--ext-unix-sk dumps it: the peer is written as an external socket with
its name, and a restore connects the socket to that name again.

With --shell-job, a job started from an interactive shell is dumped as
criu dump --shell-job does: its root's session (and group) may be the
shell's, and its fds may be on the shell's terminal (a pty slave whose
master is outside the tree), written with its termios, window size and
foreground group to tty-info.img; restore --shell-job puts the job on
its own terminal. Ptys with both ends in the tree (a /dev/ptmx
master and its slaves) are dumped as CRIU dumps them, with the data
queued in each end (tty-data.img), which the tree keeps.

Cgroups are dumped as CRIU 4.2 dumps them: when a thread of the tree is
in other cgroups than crest itself, cgroup.img holds each thread's set
of cgroups and every cgroup below them with its mode, owner and the
properties CRIU dumps (pids.max, memory.limit_in_bytes and the other
memory limits, cpu.shares and the CFS and RT settings, cpuset.*,
blkio.weight, devices.list, net_cls and net_prio,
cgroup.subtree_control, cgroup.type ...), and each core names its
thread's set; a tree in crest's own cgroups gets none. Every hierarchy
the tree is in must be mounted. A root in a cgroup namespace of its own
has the namespace's root in each member of its set (cgns_prefix, read
from inside the namespace), as CRIU writes it.

State crest cannot restore fails the dump with a message naming the task
and the resource: established TCP connections without --tcp-established,
connects in progress (SYN_SENT), unix sockets connected
outside the tree (but datagram ones with --ext-unix-sk), connections
not accepted yet, packet sockets with mapped rings, SOCK_PACKET or a
fanout group steered by BPF, netlink
sockets with messages queued (as CRIU), groups above 32 (as CRIU) or
netlink options the images have no field for (NETLINK_PKTINFO,
NETLINK_EXT_ACK ...), pty masters whose slave's session leader is
outside the tree, terminals other than ptys (consoles, /dev/tty
...), inotify watches on files that cannot be found again (deleted, or
mounted over), fanotify and other anonymous-inode files (semaphore
eventfds too, and epolls watching fds closed since), FIFOs removed
since they were opened,
deleted files larger on disk than --ghost-limit, deleted files that are
not regular files, file locks, SysV segments attached in the host's IPC
namespace (as CRIU), private mappings of memfds, seccomp filters
that notify a user-space listener, POSIX timers, session or group
leaders outside the tree (but the shell's, with --shell-job), net
namespaces with devices other than the loopback and veths whose peer is
outside the tree (a veth with both ends inside, or enslaved to a bridge
there, too), mount namespaces with
slaves of mounts outside the namespace, external mounts, file systems other than proc,
sysfs, devtmpfs, tmpfs, devpts, mqueue, cgroup, debugfs and tracefs, or
a tmpfs mounted over, nested cgroup namespaces, nested user namespaces or a
user namespace whose maps were never written or that does not own the
tree's other namespaces, and tasks in user, pid, time, UTS, IPC, net or
mount namespaces other than the root's.

Regular files, /dev/null, directories,
pipes and named FIFOs (with their data, as CRIU: fifo-data.img), memfds, eventfds, signalfds, timerfds, epolls,
inotify watches (not their queued events, as CRIU), unix sockets (with
their queued data), TCP listeners and UDP sockets, netlink sockets
(protocol, port, groups 1-32, connected destination, as CRIU), packet
sockets (binding, packet options, memberships, fanout group, as CRIU;
their queued packets are dropped, as CRIU drops them), shared
anonymous memory, seccomp (strict mode, filters), stopped tasks and zombies
(children not waited for yet) are dumped, and so are the root's own UTS
and IPC namespaces as CRIU 4.2 writes them: utsns-ID.img (hostname,
domain name), ipcns-var-ID.img (IPC sysctls) and the SysV segments
(contents in pagemap-shmem-SHMID.img, not in the pages of the tasks
that have them attached), semaphore sets and message queues, read
without changing them, and the root's own net namespace (its loopback,
and its veths whose peer is outside the tree, as a container's, in
netdev-ID.img as CRIU 4.2 writes them: name, ifindex, mtu, flags,
link-layer address, the peer's ifindex, sysctls, for crest restore or
criu restore --veth-pair IN=OUT[@BRIDGE]; the namespace's sysctls,
addresses, routes, rules, iptables and nftables rules)
and its own mount namespace (mountpoints-ID.img with each mount's peer
group and master, the contents of its tmpfs mounts in
tmpfs-dev-N.tar.gz.img), and its own user namespace
(userns-ID.img: uid_map and gid_map; the cores' credentials as the
namespace sees them).

Regular files deleted while open or mapped (a POSIX semaphore in
/dev/shm, Python's multiprocessing, O_TMPFILE) are dumped with their
contents as CRIU's ghost files (remap-fpath.img, ghost-file-ID.img), up
to --ghost-limit bytes on disk each (1M, CRIU's default); in a tree
with its own mount namespace, with the mount they were on, as are its
FIFOs and the files of its unix sockets bound to paths (mnt_id).

A call that the freeze interrupts is dumped to run again after a
restore, as CRIU does for most; unlike CRIU, crest also lets a poll, a
futex wait or a sleep without a remainder pointer run again instead of
failing with EINTR (which ends tail -f); it waits at most its whole
timeout again.

--trace sends the dump's spans where restore's go: a stage span each for
freeze, collect, dump tasks, memfds, write images and release, with a span
per task and its steps inside.`,
		setup: func(fs *pflag.FlagSet) runFunc {
			pid := fs.IntP("tree", "t", 0, "checkpoint the tree rooted at `PID`")
			dir := fs.StringP("images-dir", "D", "", "write the images into `DIR`")
			leave := fs.Bool("leave-running", false, "let the tree run on after the dump")
			stopped := fs.BoolP("leave-stopped", "s", false, "leave the tree stopped (SIGSTOP) after the dump")
			shellJob := fs.Bool("shell-job", false, "dump a job of an interactive shell: its session, group and terminal are the shell's")
			tcpEst := fs.Bool("tcp-established", false, "checkpoint established TCP connections (TCP_REPAIR)")
			extUnix := fs.Bool("ext-unix-sk", false, "dump unix datagram sockets connected to a named socket outside the tree, to connect to that name again at restore")
			ghostLimit := fs.String("ghost-limit", "1M", "the most a deleted file may have on disk to be dumped with its contents (`SIZE`, with K, M or G)")
			tf := addTraceFlags(fs)
			return func(ctx context.Context, env *env, args []string) error {
				if *pid <= 0 {
					return usagef("no tree: give -t PID")
				}
				if *dir == "" {
					return usagef("no image directory: give -D DIR")
				}
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				if *leave && *stopped {
					return usagef("--leave-running and --leave-stopped: give one")
				}
				limit, err := parseSize(*ghostLimit)
				if err != nil || limit <= 0 {
					return usagef("--ghost-limit %q: want a size in bytes above 0, with K, M or G", *ghostLimit)
				}
				targets, err := tf.parse()
				if err != nil {
					return err
				}
				opts := dump.Options{Pid: *pid, Dir: *dir, LeaveRunning: *leave, LeaveStopped: *stopped, ShellJob: *shellJob,
					TCPEstablished: *tcpEst, ExtUnixSk: *extUnix, GhostLimit: limit, Log: env.log}
				var rec *dumpRecorder
				if len(targets) > 0 {
					rec = newDumpRecorder(*dir)
					opts.Observer = rec
				}
				res, err := dump.Dump(ctx, opts)
				if rec != nil {
					emitTrace(ctx, env, rec.build(res, err), targets, tf.exportTimeout())
				}
				if err != nil {
					return err
				}
				env.log.Info("dump complete", "dir", *dir, "tasks", res.Tasks, "threads", res.Threads,
					"pages", res.Pages, "shared_pages", res.SharedPages, "frozen", res.Frozen)
				return nil
			}
		},
	})
}

// parseSize reads a size as CRIU's options take it: bytes, or a number
// with K, M or G (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, err
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%s: too large", s)
	}
	return n * mult, nil
}
