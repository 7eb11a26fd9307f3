// Package restore is crest's restore engine: it plans a restore from a CRIU
// image directory, prepares what can be prepared from outside the tree, and
// drives CRIU's stages (ROOT_TASK ... COMPLETE, FAIL) on a futex barrier
// that it shares with the agent running inside every restored task
// (restore/agent).
//
// The files read in the order of a restore:
//
//	plan.go      the Plan: task tree, sessions and groups, ids, creds, fs,
//	             fd tables, memory layout and page runs, from images.Dir
//	prepare.go   what the engine opens for the tasks (files, pages files),
//	             taken by the tasks with pidfd_getfd; the size and mode
//	             checks of reopened files
//	pipes.go     pipes: one per pipe_id, refilled with their data and
//	             buffer size, both ends shared by every task holding one
//	memfd.go     memfds and shared memory (CRIU 4.2 dumps MAP_SHARED
//	             anonymous memory as a memfd "/dev/zero"; older images as
//	             VMA_ANON_SHARED): made once with content, mode and seals,
//	             mapped or reopened by every user
//	signals.go   pending signals (per thread and shared), interval timers
//	             and POSIX timers
//	area.go      the address range every task keeps for crest (task_entries,
//	             the plan, the restorer and its stack), chosen from all layouts
//	planfile.go  the flat plan the agent reads, written into a memfd
//	shared.go    the task_entries page and the per-thread slots, mapped by
//	             every task at the same address (and by the engine)
//	stages.go    Stage, participants, StageError
//	engine.go    Start, Continue, Wait: drive the stages
//	launch.go    run the agent from a memfd; it clones the root
//	tree_linux.go  learn the restored tree's host pids from /proc
//	rlimits.go   resource limits, set from outside with prlimit
//	finish.go    COMPLETE under ptrace: remove the crest area from every task
//	rollback.go  FAIL: kill the tree, wait until every pid is gone
//	faults.go    faults injected on purpose, for the monitor's tests
//	observer.go  the events restore publishes (no trace or bpf imports)
//	timeline.go  the typed record of a restore: stages, arrivals, steps
//
// What works (every fixture runs on: counter, dynamic, tree, threads,
// pipe, shmem, files, signals): pids, sessions and groups in a new pid
// namespace, or in crest's own when the images say the tree was in the
// dumping criu's (EEXIST for a pid taken there), helper tasks for session and group leaders that were gone at
// the dump and zombies with their exit status (plan.go addHelpers, agent
// exit.c), threads with their tids, regular files and device nodes with
// their offsets (one open file description behind dup'd and inherited
// fds), pipes and FIFOs with their data and buffer size, memfds with
// content and seals, eventfds (counter), signalfds (mask), timerfds
// (clock, time left, period, expirations), epolls (their items added by
// the task whose fds they watch), inotify files with their watches, each
// at its wd and checked to be on the inode it watched (inotify.go; not
// the events queued at the dump), cwd, root and umask, private anonymous and file
// memory with its pages and madvise advice, shared memory (memfd-backed
// or anonymous, one object in every task) and MAP_SHARED file mappings,
// a fresh vdso, mm fields, general registers, x87/SSE/AVX/AVX-512 state
// (XSAVE), signal mask, sigactions, sigaltstack, pending signals (per
// thread and shared), interval timers, POSIX timers (with their ids),
// rseq, robust lists, clear_tid, credentials (ids, groups, capabilities,
// securebits, no_new_privs), rlimits, comm, seccomp (strict mode, each
// thread's filters in their order), personality, child subreaper,
// oom_score_adj (as far as the engine may set it), each thread's
// parent-death signal, nice and policy, stopped tasks (stopped again with
// their signal), the clocks (a time namespace going on from the dump's),
// unix sockets (pairs, listeners and the connections they accepted, path
// and abstract names, queued data, shutdown), TCP listeners and UDP
// sockets with their options (sockunix.go, sockinet.go), owners for
// SIGIO of any file (F_SETOWN, F_SETSIG, O_ASYNC: fown.go), and nothing of
// crest's left in the tasks' mappings or fd tables.
// Refused at planning, naming what: SCHED_DEADLINE, nested time
// namespaces, net, mount, user and cgroup namespaces, established TCP
// connections without Options.TCPEstablished, shell jobs without
// Options.ShellJob, external unix sockets, other socket and file kinds
// (netlink, fanotify ...), SysV shared memory of a namespace that is not
// the tree's own, POSIX timers with SIGEV_THREAD, hugetlb memfds, seccomp
// filters of a task with neither no_new_privs nor CAP_SYS_ADMIN.
package restore
