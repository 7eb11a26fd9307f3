/* SPDX-License-Identifier: Apache-2.0 */
/*
 * plan.h - the memory shared between the crest engine (Go) and the agent.
 *
 * This header is the one definition of the layout. restore/agent/abi.go
 * mirrors it field by field, and TestLayout compiles a probe against this
 * file and compares every size and offset. Change both together.
 *
 * Two regions, both at addresses the engine chose (struct crest_plan) and
 * identical in every task, so that the kernel-side monitor knows where the
 * futexes are:
 *
 *   the plan    read only, private: what each task must become. Written
 *               once by the engine into a memfd; the agent never parses
 *               images.
 *   the shared  read-write, MAP_SHARED over a memfd that the engine maps
 *   area        too: struct crest_task_entries (the stage barrier and the
 *               first failure) followed by one struct crest_slot per task
 *               (its progress, failure and clock readings).
 *
 * Offsets in the plan are bytes from the start of struct crest_plan.
 * Every structure is made of fixed-size integers and explicit padding so
 * that gcc and Go agree without packing attributes.
 */
#ifndef CREST_PLAN_H
#define CREST_PLAN_H

#include <stdint.h>

#define CREST_PLAN_MAGIC 0x4e414c5054534552ULL /* "RESTPLAN" */
#define CREST_PLAN_VERSION 15

/* fds of the launcher as the engine starts it */
#define CREST_PLAN_FD 3
#define CREST_SHARED_FD 4
#define CREST_ENGINE_PIDFD 5	/* moved to crest_plan.engine_pidfd at once */

/* CRIU's stages (criu/include/restorer.h), values kept. */
#define CREST_STAGE_FAIL (-1)
#define CREST_STAGE_ROOT_TASK 0
#define CREST_STAGE_PREPARE_NAMESPACES 1
#define CREST_STAGE_FORKING 2
#define CREST_STAGE_RESTORE 3
#define CREST_STAGE_RESTORE_SIGCHLD 4
#define CREST_STAGE_RESTORE_CREDS 5
#define CREST_STAGE_COMPLETE 6
#define CREST_NR_STAGES 7

/* The steps a task records in its slot: what it was doing when it failed. */
#define CREST_STEP_NONE 0
#define CREST_STEP_LAUNCH 1	/* the launcher: map the plan, clone the root */
#define CREST_STEP_CHECK_PID 2	/* getpid() is the image's pid */
#define CREST_STEP_SETSID 3
#define CREST_STEP_SETPGID 4	/* lead own group after the fork */
#define CREST_STEP_FORK 5	/* clone3 the children with set_tid */
#define CREST_STEP_BARRIER 6	/* a stage switch went wrong */
#define CREST_STEP_JOIN_PGID 7	/* join another task's group */
#define CREST_STEP_FILES 8
#define CREST_STEP_MEMORY 9
#define CREST_STEP_THREADS 10
#define CREST_STEP_CREDS 11
#define CREST_STEP_SIGRETURN 12
#define CREST_STEP_FS 13		/* cwd, root, umask */
#define CREST_STEP_SIGACTIONS 14
#define CREST_STEP_SIGNALS 15	/* queue the pending signals again */
#define CREST_STEP_TIMERS 16	/* interval timers and POSIX timers */
#define CREST_STEP_WAIT_CHILDREN 17	/* wait for helper and zombie children to exit */
#define CREST_STEP_EXIT 18	/* a zombie or helper ends itself */
#define CREST_STEP_SECCOMP 19	/* the thread's seccomp mode and filters, last */
#define CREST_STEP_SCHED 20	/* the thread's nice value and scheduling policy */
#define CREST_STEP_CGROUPS 21	/* enter the task's cgroups, before forking */
#define CREST_STEP_TIMENS 22	/* the root makes the tree's time namespace and enters it */
#define CREST_NR_STEPS 23

/* XSAVE components crest_xstate carries */
#define CREST_XSTATE_KNOWN 0x2ffull
/* XSAVE components the plan describes: x87 up to PKRU (9) */
#define CREST_XSAVE_COMPONENTS 10

/* bytes of struct crest_plan.time_offsets */
#define CREST_TIME_OFFSETS_LEN 96

/* struct crest_plan.flags */
#define CREST_PLAN_NEWPID 0x1u	/* the root is pid 1 of a new pid namespace */
#define CREST_PLAN_FINISHED_BY_ENGINE 0x2u	/* the engine ptraces COMPLETE and notes its arrivals */
#define CREST_PLAN_NEWTIME 0x4u	/* the tree gets a time namespace of its own (boot_offset_ns) */
#define CREST_PLAN_NEWUTS 0x10u	/* the root is born in a new UTS namespace, which the engine fills */
#define CREST_PLAN_NEWIPC 0x20u	/* the root is born in a new IPC namespace, which the engine fills */
#define CREST_PLAN_NEWNET 0x40u	/* the root is born in a new net namespace, which the engine fills */
#define CREST_PLAN_NEWNS 0x80u	/* the root is born in a new mount namespace, which the engine fills */
#define CREST_PLAN_NEWUSER 0x100u	/* the root is born in a new user namespace, whose maps the engine writes */
#define CREST_PLAN_ROOT_TIMENS 0x200u	/* with CREST_PLAN_NEWTIME: the root, not the launcher, makes the time namespace (time_offsets) */

/*
 * Faults injected on purpose (crest_plan.faults), so that the kernel-side
 * monitor's checks are shown to catch them; never set in a real restore.
 */
#define CREST_FAULT_NO_SET_TID 0x1	/* the last task is forked first, without set_tid */
#define CREST_FAULT_NO_WAIT 0x2		/* the root goes through RESTORE_SIGCHLD without arriving or waiting */
#define CREST_FAULT_EARLY_SWITCH 0x4	/* the engine leaves RESTORE_SIGCHLD one arrival early */
#define CREST_FAULT_DROP_THREAD 0x8	/* a task's last thread is not created */

/* struct crest_task.session */
#define CREST_SESSION_INHERIT 0
#define CREST_SESSION_LEAD 1	/* setsid() after the fork */

/* struct crest_task.group */
#define CREST_GROUP_INHERIT 0
#define CREST_GROUP_LEAD 1	/* setpgid(0, 0) after the fork */
#define CREST_GROUP_JOIN 2	/* setpgid(0, pgid) once FORKING is over */

/*
 * struct crest_task.kind, CRIU's task states (criu/include/pid.h). A
 * zombie (TASK_DEAD) is forked with its pid, takes its session and group,
 * waits until RESTORE is over and exits with its exit code (or kills
 * itself with its signal); its parent waits for that without reaping it.
 * A helper stands in for a session or group leader that was gone at the
 * dump: it takes the dead leader's pid, leads its session (or group),
 * forks the children that must be born in it, waits until RESTORE is
 * over and exits; its parent reaps it, its children go to the pid
 * namespace's init. Neither has threads, memory or files to restore.
 */
#define CREST_TASK_ALIVE 1
#define CREST_TASK_ZOMBIE 2
#define CREST_TASK_HELPER 4

/* struct crest_vma.kind */
#define CREST_VMA_ANON_PRIVATE 1
#define CREST_VMA_FILE_PRIVATE 2
#define CREST_VMA_FILE_SHARED 3
#define CREST_VMA_VDSO 4
#define CREST_VMA_VVAR 5
#define CREST_VMA_VSYSCALL 6
/*
 * A SysV shared memory segment's mapping (sysvshm.c): src_fd is the
 * segment's id on the VMA that attaches it, -1 on the next ones of the
 * same attachment, and flags are the shmat(2) flags.
 */
#define CREST_VMA_SYSV_SHM 7

struct crest_plan {
	uint64_t magic;
	uint32_t version;
	uint32_t size;		/* bytes of the whole plan */
	uint64_t area_start;	/* the range every task keeps for crest */
	uint64_t area_size;
	uint64_t plan_addr;	/* where this plan is mapped */
	uint64_t shared_addr;	/* where the shared area is mapped */
	uint64_t shared_size;
	uint32_t flags;		/* CREST_PLAN_* */
	uint32_t nr_tasks;
	uint32_t nr_threads;
	uint32_t nr_helpers;
	uint32_t tasks_off;	/* struct crest_task[nr_tasks], plan order */
	uint32_t slots_off;	/* offset of slot 0 in the shared area */
	uint64_t restorer_addr;	/* where each task copies the agent's image */
	uint64_t restorer_size;
	uint64_t stack_addr;	/* the restorer's stacks, one per thread */
	uint64_t stack_size;	/* of one stack */
	/*
	 * Every task holds the engine's pidfd at engine_pidfd and takes the
	 * engine's open files with pidfd_getfd to fds from fd_base up, above
	 * every fd of every task's table.
	 */
	int32_t engine_pidfd;
	int32_t fd_base;
	uint32_t nr_stacks;	/* the most threads of any task */
	uint32_t faults;	/* CREST_FAULT_*: break the restore on purpose */
	/*
	 * The signals the launcher starts with ignored (bit sig-1): execve
	 * keeps the engine's ignored ones (make, for one, ignores 32 and 33)
	 * and makes every other disposition the default.
	 */
	uint64_t sig_ignored;
	/*
	 * This CPU's XSAVE layout as CPUID leaf 0xD gives it, read once by
	 * the engine: CPUID traps to the hypervisor in a virtual machine
	 * (4-5 us each), and every thread's frame needs it (fpu.c).
	 */
	uint64_t xcr0;		/* the user state the OS enabled; 0: no XSAVE */
	uint32_t xsave_size;	/* bytes of an XSAVE area for xcr0 */
	uint32_t xsave_pad;
	uint32_t xsave_off[CREST_XSAVE_COMPONENTS];	/* by component number */
	uint32_t xsave_len[CREST_XSAVE_COMPONENTS];	/* 0: not enabled */
	/*
	 * CREST_PLAN_NEWTIME: how far the boot-time clock of the tree's time
	 * namespace is ahead of the engine's: the tasks' step clock takes it
	 * off its readings, to give the engine's.
	 */
	int64_t boot_offset_ns;
	/*
	 * CREST_PLAN_NEWTIME with CREST_PLAN_NEWUSER: the offsets of the
	 * tree's time namespace as the engine writes them into
	 * timens_offsets, NUL-terminated. The root makes that namespace
	 * itself in its user namespace, which must own it, and writes them
	 * before anyone enters it (fork.c root_time_ns).
	 */
	char time_offsets[CREST_TIME_OFFSETS_LEN];
};

/* struct itimerval of setitimer(2); all zero: not armed */
struct crest_itimer {
	uint64_t interval_sec;
	uint64_t interval_usec;
	uint64_t value_sec;
	uint64_t value_usec;
};

/* A POSIX timer, created again with its id (PR_TIMER_CREATE_RESTORE_IDS) */
struct crest_posix_timer {
	uint32_t id;
	uint32_t clock_id;
	uint32_t signo;		/* sigev_signo */
	uint32_t notify;	/* sigev_notify */
	uint64_t sival_ptr;	/* sigev_value */
	int32_t notify_tid;	/* SIGEV_THREAD_ID: the thread */
	uint32_t pad;
	uint64_t interval_sec;	/* struct itimerspec: period, then time left */
	uint64_t interval_nsec;
	uint64_t value_sec;
	uint64_t value_nsec;
};

/* A pending signal: the kernel's siginfo_t, for rt_(tg)sigqueueinfo */
struct crest_siginfo {
	uint8_t info[128];
};

struct crest_task {
	int32_t pid;
	int32_t ppid;
	int32_t pgid;
	int32_t sid;
	int32_t index;		/* in the plan's tasks and the shared slots */
	int32_t parent;		/* index of the parent, -1 for the root */
	uint32_t session;	/* CREST_SESSION_* */
	uint32_t group;		/* CREST_GROUP_* */
	uint32_t nr_children;
	uint32_t children_off;	/* int32_t indices of the children */
	uint32_t nr_threads;
	uint32_t threads_off;	/* struct crest_thread[nr_threads], the leader first */
	uint32_t nr_takes;
	uint32_t takes_off;	/* struct crest_take[nr_takes] */
	uint32_t nr_fds;
	uint32_t fds_off;	/* struct crest_fd[nr_fds], by fd */
	uint32_t nr_vmas;
	uint32_t vmas_off;	/* struct crest_vma[nr_vmas], by address */
	uint32_t nr_runs;
	uint32_t runs_off;	/* struct crest_run[nr_runs], by address */
	uint32_t mm_off;	/* struct crest_mm */
	uint32_t creds_off;	/* struct crest_creds */
	uint32_t nr_groups;
	uint32_t groups_off;	/* uint32_t supplementary gids, for setgroups */
	char comm[16];		/* NUL-terminated */
	int32_t cwd_fd;		/* local fd of the working directory */
	int32_t root_fd;	/* local fd of the root, -1 when it is the agent's */
	uint32_t umask;
	uint32_t sigactions_off; /* struct crest_sigaction[CREST_NR_SIGNALS] */
	uint32_t nr_shared_sigs;
	uint32_t shared_sigs_off; /* struct crest_siginfo[nr_shared_sigs]: pending for the task */
	struct crest_itimer itimers[3];	/* ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF */
	uint32_t nr_posix_timers;
	uint32_t posix_timers_off; /* struct crest_posix_timer[nr_posix_timers] */
	uint32_t kind;		/* CREST_TASK_* */
	int32_t exit_code;	/* a zombie's wait status: exit code << 8, or its signal */
	uint32_t nr_helpers;	/* children that are helpers: reaped after RESTORE */
	uint32_t nr_zombies;	/* children that are zombies: waited for, never reaped */
	uint32_t personality;	/* personality(2), set before the threads are cloned */
	uint32_t child_subreaper; /* PR_SET_CHILD_SUBREAPER */
	uint32_t nr_epoll_adds;
	uint32_t epoll_adds_off; /* struct crest_epoll_add[nr_epoll_adds], once the fds are in place */
	/*
	 * A session leader whose controlling terminal was a pty slave of the
	 * tree (pty.c): ctty_fd, the local fd it takes the engine's
	 * ctty_engine_fd (the slave) to, before forking its children, and
	 * ctty_pgrp the terminal's foreground group, set once FORKING is
	 * over. ctty_fd 0: none.
	 */
	int32_t ctty_fd;
	int32_t ctty_engine_fd;
	int32_t ctty_pgrp;
	uint32_t ctty_pad;
	/*
	 * The cgroups the task enters before it forks its children, as
	 * CRIU's restore_task_cgroup (fork.c): the engine's fds of the
	 * cgroup.procs files of those where its cgroup set differs from
	 * its parent's, each taken with pidfd_getfd and written "0" (the
	 * writer). 0: none, as in every tree without cgroup.img. The root
	 * of a tree with a cgroup namespace of its own has
	 * CREST_CGROUP_UNSHARE_NS first: it unshares the namespace there,
	 * in the namespace's root cgroups, before it enters its own.
	 */
	uint32_t nr_cgroup_fds;
	uint32_t cgroup_fds_off;	/* int32_t engine fds */
};

/* In crest_task's cgroup_fds: unshare(CLONE_NEWCGROUP) here. */
#define CREST_CGROUP_UNSHARE_NS (-1)

/* One item of an epoll, added by the task that holds the epoll and its target. */
struct crest_epoll_add {
	int32_t epfd;		/* the epoll's fd in the task */
	int32_t tfd;		/* the target's fd in the task */
	uint32_t events;	/* EPOLLIN ..., EPOLLET ... */
	uint32_t pad;
	uint64_t data;
};

#define CREST_NR_SIGNALS 64

/* struct k_sigaction as rt_sigaction(2) takes it on x86-64; all zero is SIG_DFL */
struct crest_sigaction {
	uint64_t handler;
	uint64_t flags;
	uint64_t restorer;
	uint64_t mask;
};

/* A file the task takes from the engine: pidfd_getfd, then to local_fd. */
struct crest_take {
	int32_t engine_fd;
	int32_t local_fd;	/* >= crest_plan.fd_base */
};

/* One fd of a task's table. */
struct crest_fd {
	int32_t fd;		/* the number in the task */
	int32_t src_fd;		/* the local fd holding the open file */
	uint32_t cloexec;
	/*
	 * 1: the file has O_ASYNC, set by the engine on its own fd; the task
	 * turns it off and on again after COMPLETE, so that SIGIO's si_fd
	 * is this fd (the kernel keeps the fd of the last to turn it on)
	 */
	uint32_t async;
};

struct crest_vma {
	uint64_t start;
	uint64_t end;
	uint64_t pgoff;
	uint64_t madv;
	uint32_t prot;
	uint32_t flags;		/* mmap(2) flags (shmat(2) flags for CREST_VMA_SYSV_SHM) */
	uint32_t kind;		/* CREST_VMA_* */
	int32_t src_fd;		/* local fd of the mapped file, -1 for anonymous memory (the shm id for CREST_VMA_SYSV_SHM) */
};

/* Pages to fill: nr_pages pages at vaddr from offset in a pages file. */
struct crest_run {
	uint64_t vaddr;
	uint64_t nr_pages;
	uint64_t offset;
	int32_t src_fd;		/* local fd of the pages file */
	uint32_t pad;
};

/* A task's credentials, set by each of its threads in RESTORE_CREDS. */
struct crest_creds {
	uint32_t uid, euid, suid, fsuid;
	uint32_t gid, egid, sgid, fsgid;
	uint32_t secbits;
	uint32_t no_new_privs;
	uint64_t cap_inh, cap_prm, cap_eff, cap_bnd, cap_amb;
	int32_t dumpable;	/* the mm's, which changing ids resets; -1 to leave */
	uint32_t pad;
};

/* The mm fields for PR_SET_MM_MAP; the saved auxv follows in the plan. */
struct crest_mm {
	uint64_t start_code;
	uint64_t end_code;
	uint64_t start_data;
	uint64_t end_data;
	uint64_t start_brk;
	uint64_t brk;
	uint64_t start_stack;
	uint64_t arg_start;
	uint64_t arg_end;
	uint64_t env_start;
	uint64_t env_end;
	uint32_t auxv_off;	/* uint64_t[nr_auxv] */
	uint32_t nr_auxv;
	int32_t exe_fd;		/* local fd of the executable */
	uint32_t pad;
};

/* struct user_regs_struct of x86-64, CRIU's user_x86_regs_entry */
struct crest_regs {
	uint64_t r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	uint64_t ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
	uint64_t fs_base, gs_base, ds, es, fs, gs;
};

/*
 * The extended register state of a thread, component by component as
 * XSAVE numbers them (the standard, uncompacted layout); the agent puts
 * each where this CPU's XSAVE layout wants it (CPUID leaf 0xd).
 */
struct crest_xstate {
	uint64_t xstate_bv;	/* components in use; 0: only the legacy area */
	uint8_t ymmh[256];	/* 2: AVX, upper halves of ymm0-15 */
	uint8_t bndregs[64];	/* 3: MPX */
	uint8_t bndcsr[64];	/* 4: MPX */
	uint8_t opmask[64];	/* 5: AVX-512 k0-7 */
	uint8_t zmm_hi256[512];	/* 6: AVX-512, upper halves of zmm0-15 */
	uint8_t hi16_zmm[1024];	/* 7: AVX-512 zmm16-31 */
	uint32_t pkru;		/* 9: protection keys */
	uint32_t pad;
};

#define CREST_SECCOMP_DISABLED 0
#define CREST_SECCOMP_STRICT 1
#define CREST_SECCOMP_FILTER 2

/* One seccomp filter of a thread: a classic BPF program. */
struct crest_seccomp_filter {
	uint32_t flags;		/* SECCOMP_FILTER_FLAG_* to install it with */
	uint32_t len;		/* instructions */
	uint32_t prog_off;	/* struct sock_filter[len] */
	uint32_t pad;
};

/* One thread: what rt_sigreturn and the kernel need to go on. */
struct crest_thread {
	int32_t tid;
	uint32_t index;		/* in its task: 0 is the leader; its restorer stack */
	uint32_t slot;		/* its slot in the shared area */
	uint32_t rseq_size;	/* 0: no rseq registration */
	uint64_t rseq_addr;
	uint32_t rseq_sig;
	uint32_t sas_flags;	/* sigaltstack */
	uint64_t sas_sp;
	uint64_t sas_size;
	uint64_t robust_list;	/* set_robust_list, 0 for none */
	uint64_t robust_len;
	uint64_t clear_tid_addr; /* set_tid_address */
	uint64_t sigmask;	/* blocked signals */
	uint32_t nr_sigs;
	uint32_t sigs_off;	/* struct crest_siginfo[nr_sigs]: pending for this thread */
	int32_t pdeath_sig;	/* PR_SET_PDEATHSIG, 0 for none */
	uint32_t sched_policy;	/* sched_setscheduler(2), with sched_prio */
	uint32_t sched_prio;
	int32_t sched_nice;	/* setpriority(2) of the thread */
	uint32_t seccomp_mode;	/* CREST_SECCOMP_* */
	uint32_t nr_filters;	/* filter mode: how many, in the order they are installed */
	uint32_t filters_off;	/* struct crest_seccomp_filter[nr_filters] */
	uint32_t sched_early;	/* 1: scheduling before the credentials (it needs CAP_SYS_NICE) */
	struct crest_regs regs;
	uint8_t fxsave[512];	/* the legacy FXSAVE area: x87, SSE */
	struct crest_xstate xstate;
};

/* The first failure of the restore, claimed by one task. */
struct crest_failure {
	uint32_t state;		/* 0 none, 1 being written, 2 written */
	int32_t pid;		/* image pid of the task, 0 for the launcher */
	int32_t stage;
	int32_t step;		/* CREST_STEP_* */
	int32_t err;		/* -errno */
	uint32_t pad;
};

/*
 * The barrier, CRIU's task_entries. The engine sets nr_in_progress to the
 * next stage's participants, then stores the stage in start and wakes its
 * waiters, in one FUTEX_WAKE_OP (SET). A participant does its work,
 * decrements nr_in_progress with FUTEX_WAKE_OP (ADD -1, waking the engine
 * when it was the last) and waits with FUTEX_WAIT while start still holds
 * its stage. Unlike CRIU, the stores happen inside the futex calls, so the
 * kernel-side monitor can order them exactly. Never FUTEX_PRIVATE_FLAG:
 * the page is shared between processes.
 *
 * COMPLETE has no participants when the engine steps every thread
 * through its rt_sigreturn with ptrace, as CRIU does
 * (CREST_PLAN_FINISHED_BY_ENGINE). Without that (the crest area kept),
 * every thread counts itself out right before its rt_sigreturn, so the
 * engine knows when the tree runs its own code again.
 *
 * launch is the launcher's handshake, before the first stage: the engine
 * starts the launcher, which gets ready (maps, fds, signals) and stores
 * CREST_LAUNCH_READY; the engine then switches to ROOT_TASK and stores
 * CREST_LAUNCH_GO, and only then does the launcher fork the root, as
 * CRIU forks it right after the switch. The launcher's exec is crest's
 * start-up, not part of ROOT_TASK.
 */
struct crest_task_entries {
	int32_t start;		/* futex: the current stage */
	uint32_t nr_in_progress; /* futex: participants not yet done */
	uint32_t nr_tasks;
	uint32_t nr_threads;
	uint32_t nr_helpers;
	int32_t root_host_pid;	/* the root's pid in the launcher's namespace */
	struct crest_failure fail;
	uint32_t launch;	/* futex: CREST_LAUNCH_* */
	uint32_t pad;
};

#define CREST_LAUNCH_READY 1
#define CREST_LAUNCH_GO 2

/*
 * One per thread (a task's is its leader's): what the engine and the spans
 * read after each stage.
 */
struct crest_slot {
	int32_t pid;		/* image tid, written by the engine */
	int32_t seen_pid;	/* what getpid() said in the task */
	int32_t stage;		/* the stage the task is in */
	int32_t step;		/* the step it is doing, or failed in */
	int32_t err;		/* -errno of its failure, 0 */
	uint32_t pad;
	/* CLOCK_BOOTTIME readings, 0 when not reached */
	uint64_t arrive_ns[CREST_NR_STAGES];
	uint64_t step_begin_ns[CREST_NR_STEPS];
	uint64_t step_end_ns[CREST_NR_STEPS];
};

#endif /* CREST_PLAN_H */
