package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore"
	"github.com/crest-restore/crest/trace"
)

func init() {
	register(&verb{
		name:  "restore",
		usage: "-D DIR [-d] [-s] [--tcp-established] [--shell-job] [--veth-pair IN=OUT[@BRIDGE]]... [--pidfile FILE]",
		short: "restore a process tree from a CRIU image directory",
		long: `
restore brings back the process tree checkpointed in DIR (CRIU 4.2 images,
written by criu dump or crest dump) and lets it run on.

What comes back:
- tasks: the same pids and tids (in a new pid namespace, or crest's own
  when the tree had none), parents, sessions and process groups (with
  helper tasks for leaders that are gone), threads, zombies, and stopped
  tasks (stopped again by their own signal; a task that does not stop
  fails the restore);
- memory: private and shared anonymous memory, file mappings (shared
  ones opened with the access they were mapped with), memfds, the vdso,
  SysV shared memory attached again at its address (read-only where it
  was);
- per task and thread: registers and FPU state, signal handlers and
  masks, pending signals, interval and POSIX timers, seccomp (strict
  mode and filters, each thread's in their order), credentials,
  resource limits, personality, child subreaper, oom_score_adj (when it
  can be set: lowering it needs CAP_SYS_RESOURCE, a warning says when
  not), parent-death signal, nice value and scheduling policy;
- files: regular files and directories, files of the tree's own
  /proc/PID (opened once that task exists, through the tree's proc, as
  CRIU opens them in the task), files deleted while open or
  mapped (CRIU's ghost files, made again from their contents and
  unlinked before the tree runs), pipes and FIFOs with their data,
  eventfds, signalfds, timerfds, epolls, inotify files with their
  watches (each at its wd, on the file it watched), owners for SIGIO
  (F_SETOWN);
- sockets: unix sockets with their queued data (datagram sockets
  connected to a named socket outside the tree, which crest dump and
  criu dump write with --ext-unix-sk, are connected to that name again),
  TCP listeners, UDP sockets, netlink sockets (bound to their port and
  groups, connected where they were), packet sockets (raw and datagram,
  bound to their interface and protocol again, with their packet
  options, memberships and fanout group; packets queued at the dump are
  lost, as with CRIU; mapped rings are refused), and established TCP
  connections with --tcp-established (see below);
- terminals: ptys with both ends in the tree (a /dev/ptmx master and its
  slaves) with their number (refused if it is taken), termios, window
  size, packet mode, lock and queued data, a session leader's
  controlling terminal and foreground group; a shell's job with
  --shell-job (see below);
- namespaces of the tree's own (the root's), each made again before any
  task forks:
  - time: the monotonic and boot-time clocks go on from those of the dump;
  - UTS: hostname and domain name;
  - IPC: the IPC sysctls, and the SysV shared memory segments, semaphore
    sets and message queues with their ids, keys, modes, owners and
    contents;
  - net: the namespace's sysctls, the loopback's flags, MTU and
    sysctls, veths whose peer was outside the tree (see below),
    addresses, routes and rules (from CRIU's ip dumps, over netlink),
    iptables and nftables rules (through iptables-restore and nft, which
    must be installed when the images have rules), and the tree's
    sockets made inside it;
  - mount: proc, sysfs, devtmpfs, tmpfs (with its files), devpts,
    mqueue, cgroup, debugfs and tracefs mounts and bind mounts, made
    as they were, then their peer groups, slaves and unbindable mounts
    as CRIU's mount-v2 sets them (MOVE_MOUNT_SET_GROUP, masters first),
    all checked against mountinfo, and the
    tree's ghost files made again on their mounts there, its FIFOs
    opened, its unix sockets bound by their paths and its pty pairs made
    (in the devpts at its /dev/pts) there, each checked to be on its
    mount (the unix sockets in the tree's net namespace when it has one
    too; a --shell-job terminal is refused);
  - user: the root is born in it with the others, which it owns; its
    uid_map and gid_map (several extents) are written from outside while
    the root waits at ROOT_TASK, and checked; the tasks' credentials are
    those inside it; a mount namespace with it gets the host's / alone
    and its own procs; the root makes the time namespace itself, once in
    it, which then owns it (as CRIU: its dump refuses a namespace of
    another owner);
- cgroups (cgroup.img, which criu dump and crest dump write when the
  tree was in other cgroups than the dumper): every task and thread goes
  back into its cgroups (v1 hierarchies and cgroup v2, threaded ones
  too), each task before it forks its children and restores its memory,
  so that they are born and charged there, as criu restore's default
  --manage-cgroups=soft does: a cgroup that exists is used as it is (its
  limits, mode and owner untouched), one that does not is made with the
  mode, owner and properties of the dump (cpuset.cpus and the like at
  once; pids.max, memory and cpu limits once the tree is restored). A
  task that was in the dumper's own cgroups goes into crest's. The
  hierarchies must be mounted (anywhere); freezer.state (criu dump
  --freeze-cgroup) is refused. A failed restore removes the cgroups it
  made. A cgroup namespace of the tree's own (cgroup.img's cgns_prefix)
  comes back as CRIU makes it: the root enters the namespace's root
  cgroups, unshares it there and then enters its own; every task is
  born in it.

Without -d crest stays the parent of the restored root and exits with its
status (128+N when a signal N ended it; an interrupted crest kills the
tree); with -d it leaves the tree running and exits once the restore is
complete. With -s (--leave-stopped) every task is left stopped by SIGSTOP,
to be looked at before a SIGCONT lets it run on.

A tree that had no pid namespace of its own comes back into crest's,
with the pids it had, which must be free. A tree that a dump has just
killed leaves zombies until their parents reap them (pid 1 may take a
while), and they keep its pids taken: the restore waits up to 5 s for
pids that only zombies hold, with a warning, and fails naming whatever
still holds one.

With --tcp-established, established TCP connections (IPv4 and IPv6) come
back as CRIU brings them: each socket made anew in repair mode with its
sequence numbers, queued data, window, MSS, window scales, options and
timestamp clock, and let out of repair mode once the tree is restored,
before it runs; without the flag an image set with one is refused.
Half-closed connections (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK,
CLOSING) too: as CRIU, made ESTABLISHED in repair mode, then brought to
their state by their own FIN, queued with shutdown(2), and the peer's
FIN or ACK, sent from the peer's address through a raw socket; those
that need the peer's need both ends on loopback and in the images.

Connections that criu dump --tcp-established left behind its network
lock (--network-lock iptables, the default, or nftables: the inventory
says which) are let out of it as criu restore lets them, once the tree
is restored and before they leave repair mode: the INPUT and OUTPUT
DROP rules of each connection are deleted with iptables or ip6tables,
or CRIU's "inet CRIU-..." table with nft. A rule or table that is no
longer there is passed over; if the tool is missing or fails, a warning
names each connection that may stay blocked and the command to run by
hand, and the restore goes on. crest dump sets no lock.

With --shell-job a job dumped with --shell-job (by criu or crest) comes
back as criu restore --shell-job brings it: in crest's session (and
group, when the root did not lead its own), its files that were on the
shell's terminal on crest's terminal (the one on crest's stdin, which
must be one), which gets the termios, locked termios, window size and
owner of the dump, and the job in that terminal's foreground, so that it
reads what is typed there and gets its ^C and ^Z. Without the flag such
an image set is refused.

A veth of the tree's net namespace whose peer was outside the tree (a
container's link to its host, which criu dump and crest dump write) is
made again as a pair, as criu restore makes it: the inside end with its
name, ifindex, MTU, link-layer address, flags (up or down) and sysctls
of the dump, before its addresses and routes, and the outside end in
crest's net namespace, named by --veth-pair IN=OUT (CRIU's syntax,
once per veth), left down and without address for whoever made it to
set up again; with IN=OUT@BRIDGE it is put on that bridge, which must
exist, and set up. Without --veth-pair the kernel names the outside end
(vethN) and a warning says which it is (criu restore fails instead). A
failed restore leaves no pair behind: a failure while the namespace is
filled deletes the pairs made, a later one ends the tree, and the pairs
go with its namespace.

Not restored yet: nested cgroup namespaces, tasks in namespaces other than
the root's (user namespaces too, nested or not), a tree of several tasks
in a user namespace without a pid namespace of its own, net devices
other than the loopback and veths with their peer outside the tree,
slaves of mounts outside the tree's mount namespace (criu restore
--external or a slave of --root), external mounts, a root that
is not a whole file system (criu restore --root), unix stream sockets
connected outside the tree (criu dump --ext-unix-sk=INO), packet sockets with mapped rings, TCP connections in SYN_SENT (a connect
in progress), other special files (fanotify, consoles ...), inotify
events queued at the dump (CRIU does not keep them either), SysV
attachments with a part unmapped or moved (as CRIU), hugetlb memfds,
SCHED_DEADLINE, and capabilities crest itself does not have. Image sets
that need them are refused with an error naming the image, entry and
task (at planning) or the stage and step (during the restore); a failed
restore leaves no process, file, mount or namespace behind.`,
		setup: func(fs *pflag.FlagSet) runFunc {
			dir := fs.StringP("images-dir", "D", "", "restore the image directory `DIR`")
			detach := fs.BoolP("restore-detached", "d", false, "leave the restored tree running and exit")
			pidfile := fs.String("pidfile", "", "write the restored root's pid to `FILE`")
			stopped := fs.BoolP("leave-stopped", "s", false, "leave every restored task stopped (SIGSTOP)")
			tcpEst := fs.Bool("tcp-established", false, "restore established TCP connections (TCP_REPAIR)")
			shellJob := fs.Bool("shell-job", false, "restore a job dumped with --shell-job in crest's session, on crest's terminal")
			vethPairs := fs.StringArray("veth-pair", nil, "make the outside end of the tree's veth `IN=OUT[@BRIDGE]` named OUT, on BRIDGE if given (repeatable)")
			tf := addTraceFlags(fs)
			vf := addVerifyFlags(fs)
			return func(ctx context.Context, env *env, args []string) error {
				if *dir == "" {
					return usagef("no image directory: give -D DIR")
				}
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				targets, err := tf.parse()
				if err != nil {
					return err
				}
				vo, err := vf.parse()
				if err != nil {
					return err
				}
				var veths []restore.VethPair
				for _, s := range *vethPairs {
					v, err := restore.ParseVethPair(s)
					if err != nil {
						return usagef("--veth-pair: %v", err)
					}
					veths = append(veths, v)
				}
				return runRestore(ctx, env, *dir, *detach, *stopped, *tcpEst, *shellJob, *pidfile, veths, targets, tf.exportTimeout(), vo)
			}
		},
	})
}

func runRestore(ctx context.Context, env *env, dir string, detach, stopped, tcpEst, shellJob bool, pidfile string, veths []restore.VethPair, targets []trace.Target, timeout time.Duration, vo verifyOptions) error {
	var kc *kernelCheck
	if vo.mode != "" {
		// Loading the monitor takes longer than planning a small tree.
		kc = startKernelCheck(vo)
		defer kc.close()
	}
	var rec *trace.Recorder
	if len(targets) > 0 {
		rec = trace.NewRecorder(trace.OpRestore, dir)
	}
	d, err := images.Open(dir)
	if err != nil {
		return err
	}
	opts := restore.Options{Log: env.log, Faults: vo.faults, StageTimeout: vo.stageTimeout, LeaveStopped: stopped,
		TCPEstablished: tcpEst, ShellJob: shellJob, VethPairs: veths}
	p, err := restore.NewPlan(d, opts)
	if err != nil {
		return err
	}
	env.log.Info("planned", "dir", dir, "tasks", len(p.Tasks), "threads", p.NrThreads, "new_pid_ns", p.NewPIDNS)
	var obs observerList
	if rec != nil {
		obs = append(obs, restoreRecorder{rec})
	}
	if kc != nil {
		if err := kc.ready(); err != nil {
			return err
		}
		obs = append(obs, kc)
	}
	opts.Observer = obs.observer()
	r, err := restore.Start(ctx, p, opts)
	if kc != nil {
		// before -d detaches: strict rolls back a restore with findings
		r, err = kc.conclude(env, p, r, err)
	}
	if rec != nil {
		record := rec.Finish(err)
		record.Tasks = traceTasks(p, r)
		record.Counts = traceCounts(p)
		kc.annotate(record)
		emitTrace(ctx, env, trace.Build(record), targets, timeout)
	}
	if err != nil {
		return err
	}
	env.log.Info("restored", "root", r.RootPID())
	if pidfile != "" {
		if err := writePidfile(pidfile, r.RootPID()); err != nil {
			r.Abort()
			return fmt.Errorf("pidfile: %w", err)
		}
	}
	if detach {
		r.Detach()
		return nil
	}
	ws, err := r.Wait(ctx)
	if err != nil {
		// interrupted: the tree goes with crest, as it would have
		// without -d had crest been its init
		if aerr := r.Abort(); aerr != nil {
			err = errors.Join(err, aerr)
		}
		return fmt.Errorf("restored tree killed: %w", err)
	}
	switch {
	case ws.Signaled():
		return &exitError{code: 128 + int(ws.Signal())}
	case ws.ExitStatus() != 0:
		return &exitError{code: ws.ExitStatus()}
	}
	return nil
}

// writePidfile writes pid to path. An existing file is overwritten in
// place and then cut to length, not truncated first: on ext4 a file
// truncated to zero and written again is flushed to disk when it is
// closed (auto_da_alloc), 0.4 ms of the restore.
func writePidfile(path string, pid int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	b := []byte(strconv.Itoa(pid) + "\n")
	_, err = f.Write(b)
	if err == nil {
		err = f.Truncate(int64(len(b)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
