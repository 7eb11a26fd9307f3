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
		usage: "-D DIR [-d] [-s] [--tcp-established] [--shell-job] [--pidfile FILE]",
		short: "restore a process tree from a CRIU image directory",
		long: `
restore brings back the process tree checkpointed in DIR (CRIU 4.2 images)
and lets it run on: the same pids and tids (in a new pid namespace, or
crest's own when the tree had none), sessions and process groups (with
helper tasks for leaders that are gone), zombies, memory (shared memory
too), registers, threads, files, pipes, FIFOs, memfds, eventfds,
signalfds, timerfds and epolls, inotify files with their watches (each
at its wd, on the file it watched), unix sockets, TCP listeners and UDP
sockets, established TCP connections with --tcp-established (IPv4 and
IPv6, as CRIU: each socket made anew in repair mode with its sequence
numbers, queued data, window, MSS, window scales, options and timestamp
clock, and let out of repair mode once the tree is restored, before it
runs; without the flag an image set with one is refused), half-closed
connections too (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING;
as CRIU: made ESTABLISHED in repair mode, then brought to their state
by their own FIN, queued with shutdown(2), and the peer's FIN or ACK,
sent from the peer's address through a raw socket; those that need the
peer's need both ends on loopback and in the images), files' owners
for SIGIO (F_SETOWN), signal handlers, pending signals, interval and
POSIX timers, seccomp (strict mode and filters, each thread's in their
order), personality, child subreaper, oom_score_adj (when it can be set:
lowering it needs CAP_SYS_RESOURCE, a warning says when not), each
thread's parent-death signal, nice value and scheduling policy, the
monotonic and boot-time clocks (as CRIU, the tree gets a time namespace
whose clocks go on from those of the dump), UTS and IPC namespaces of
the tree's own (as CRIU: the root is born in new ones, filled before any
task forks with the hostname and domain name, the IPC sysctls, and the
SysV shared memory segments, semaphore sets and message queues, each
with its id, key, mode, owner and content, then attached again by each
task that had one attached, at its address, read-only where it was),
and stopped tasks (stopped
again by their own signal; a task that does not stop fails the
restore).
Without -d crest stays the parent of the restored root and exits with its
status (128+N when a signal N ended it; an interrupted crest kills the
tree); with -d it leaves the tree running and exits once the restore is
complete. With -s (--leave-stopped) every task is left stopped by SIGSTOP,
to be looked at before a SIGCONT lets it run on.

With --shell-job a job dumped with --shell-job (by criu or crest) comes
back as criu restore --shell-job brings it: in crest's session (and
group, when the root did not lead its own), its files that were on the
shell's terminal on crest's terminal (the one on crest's stdin, which
must be one), which gets the termios, locked termios, window size and
owner of the dump, and the job in that terminal's foreground, so that it
reads what is typed there and gets its ^C and ^Z. Without the flag such
an image set is refused.

Connections that criu dump --tcp-established left behind its network
lock (--network-lock iptables, the default, or nftables: the inventory
says which) are let out of it as criu restore lets them, once the tree
is restored and before they leave repair mode: the INPUT and OUTPUT
DROP rules of each connection are deleted with iptables or ip6tables,
or CRIU's "inet CRIU-..." table with nft. A rule or table that is no
longer there is passed over; if the tool is missing or fails, a warning
names each connection that may stay blocked and the command to run by
hand, and the restore goes on. crest dump sets no lock.

Ptys with both ends in the tree (a /dev/ptmx master and its slaves)
come back with their number (refused if it is taken), termios, window
size, packet mode, lock and queued data; a session leader gets its
slave back as its controlling terminal, with its foreground group.

Not restored yet: SCHED_DEADLINE, net, mount, user and cgroup
namespaces, tasks in UTS or IPC namespaces other than the root's,
TCP connections in SYN_SENT (a connect in progress), other special
files (fanotify, consoles ...), inotify
events queued at the dump (CRIU does not keep them either), SysV
attachments with a part unmapped or moved (as CRIU), hugetlb memfds, and capabilities crest itself does not have. Image sets
that need them are refused with an error naming the task and the image
(at planning) or the stage and step (during the restore).`,
		setup: func(fs *pflag.FlagSet) runFunc {
			dir := fs.StringP("images-dir", "D", "", "restore the image directory `DIR`")
			detach := fs.BoolP("restore-detached", "d", false, "leave the restored tree running and exit")
			pidfile := fs.String("pidfile", "", "write the restored root's pid to `FILE`")
			stopped := fs.BoolP("leave-stopped", "s", false, "leave every restored task stopped (SIGSTOP)")
			tcpEst := fs.Bool("tcp-established", false, "restore established TCP connections (TCP_REPAIR)")
			shellJob := fs.Bool("shell-job", false, "restore a job dumped with --shell-job in crest's session, on crest's terminal")
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
				return runRestore(ctx, env, *dir, *detach, *stopped, *tcpEst, *shellJob, *pidfile, targets, tf.exportTimeout(), vo)
			}
		},
	})
}

func runRestore(ctx context.Context, env *env, dir string, detach, stopped, tcpEst, shellJob bool, pidfile string, targets []trace.Target, timeout time.Duration, vo verifyOptions) error {
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
		TCPEstablished: tcpEst, ShellJob: shellJob}
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
