// SPDX-License-Identifier: Apache-2.0
/*
 * main.c - the agent's entry: the launcher.
 *
 * The engine executes the agent from a memfd with the plan on fd 3 and the
 * shared area on fd 4. The launcher maps both at the addresses the plan
 * names, closes every fd above 2 and clones the root task with its pid
 * (set_tid {pid}; with CLONE_NEWPID when the plan asks for a new pid
 * namespace, where pid is 1) and CLONE_PARENT, so that the root is the
 * engine's child. It writes the root's pid into task_entries and lingers
 * until the engine ends it (linger); the root goes on in task_main (fork.c). First of all it finds the vDSO's
 * clock (vdso.c), which the tasks inherit.
 */
#include "agent.h"
#include <linux/auxvec.h>

struct agent agent;

#define SIG_SETMASK 2
static const uint64_t all_signals = ~0ull;

static __attribute__((noreturn)) void launch_fail(long err)
{
	static const char msg[] = "crest-agent: launch failed\n";

	/* before the shared area is mapped, the exit status is all there is */
	if (!agent.te)
		sys_write(2, msg, sizeof(msg) - 1);
	task_fail(CREST_STEP_LAUNCH, err);
}

static long map_fixed(uint64_t addr, uint64_t size, int prot, int flags, int fd)
{
	long ret = sys_mmap((void *)addr, size, prot, flags | MAP_FIXED_NOREPLACE, fd, 0);

	if (ret < 0)
		return ret;
	if ((uint64_t)ret != addr) {
		/* kernels before 4.17 ignore MAP_FIXED_NOREPLACE */
		sys_munmap((void *)ret, size);
		return -EEXIST;
	}
	return 0;
}

/* Whether the engine has exited: its pidfd turns readable (POLLIN). */
static int engine_gone(void)
{
	struct { int fd; short events, revents; } pfd = { agent.plan->engine_pidfd, 1, 0 };

	return sys_call3(__NR_poll, (long)&pfd, 1, 0) > 0;
}

/*
 * After the fork of the root the launcher lingers until the engine ends it
 * (SIGKILL, while the tasks restore their memory): its exit, and the
 * SIGCHLD that tells the engine, do not fall between two stages then.
 * Should the engine die instead, it leaves at once: it sleeps in poll on
 * the engine's pidfd, which turns readable when the engine exits.
 */
static __attribute__((noreturn)) void linger(void)
{
	struct { int fd; short events, revents; } pfd = { agent.plan->engine_pidfd, 1, 0 };

	for (;;) {
		if (sys_call3(__NR_poll, (long)&pfd, 1, -1) > 0)
			sys_exit_group(0);
	}
}

/*
 * wait_for_go tells the engine the launcher is ready and waits until it
 * switched to ROOT_TASK. Should the engine die instead, the launcher exits
 * (its pidfd turns readable): no launcher outlives a dead engine.
 */
static void wait_for_go(void)
{
	static const struct __kernel_timespec second = { 1, 0 };

	__atomic_store_n(&agent.te->launch, CREST_LAUNCH_READY, __ATOMIC_SEQ_CST);
	sys_futex_wake(&agent.te->launch, 1);
	while (__atomic_load_n(&agent.te->launch, __ATOMIC_SEQ_CST) == CREST_LAUNCH_READY) {
		sys_futex_wait(&agent.te->launch, CREST_LAUNCH_READY, &second);
		/* let go: the root is forked at once, without the check below */
		if (__atomic_load_n(&agent.te->launch, __ATOMIC_SEQ_CST) != CREST_LAUNCH_READY)
			break;
		if (engine_gone())
			launch_fail(-ESRCH);
	}
}

/*
 * The value of the auxiliary vector's entry type, 0 when it has none. The
 * vector is on the stack the kernel entered _start with: argc, argv[] and
 * NULL, envp[] and NULL, then (type, value) pairs up to AT_NULL.
 */
static uint64_t auxv_value(const uint64_t *sp, uint64_t type)
{
	const uint64_t *p = sp + 1 + sp[0] + 1;

	while (*p)
		p++;
	for (p++; p[0] != AT_NULL; p += 2) {
		if (p[0] == type)
			return p[1];
	}
	return 0;
}

static __attribute__((noreturn, used)) void agent_main(const uint64_t *sp)
{
	struct crest_plan head;
	struct clone_args args;
	int64_t set_tid[1];
	long ret;

	/* the step clock through the vDSO, for every task forked from here on */
	vdso_use(auxv_value(sp, AT_SYSINFO_EHDR));
	ret = sys_pread(CREST_PLAN_FD, &head, sizeof(head), 0);
	if (ret != sizeof(head))
		launch_fail(ret < 0 ? ret : -EIO);
	if (head.magic != CREST_PLAN_MAGIC || head.version != CREST_PLAN_VERSION)
		launch_fail(-EINVAL);
	ret = map_fixed(head.shared_addr, head.shared_size, PROT_READ | PROT_WRITE, MAP_SHARED, CREST_SHARED_FD);
	if (ret < 0)
		launch_fail(ret);
	agent.te = (struct crest_task_entries *)head.shared_addr;
	agent.slots = (struct crest_slot *)(head.shared_addr + head.slots_off);
	ret = map_fixed(head.plan_addr, head.size, PROT_READ, MAP_PRIVATE, CREST_PLAN_FD);
	if (ret < 0)
		launch_fail(ret);
	agent.plan = (const struct crest_plan *)head.plan_addr;
	/*
	 * The mappings stay; the engine's pidfd moves above every fd the
	 * tasks will have, and no other fd of the engine's reaches the tree.
	 */
	ret = sys_dup3(CREST_ENGINE_PIDFD, agent.plan->engine_pidfd, 0);
	if (ret < 0)
		launch_fail(ret);
	ret = sys_close_range(CREST_PLAN_FD, agent.plan->engine_pidfd - 1, 0);
	if (ret == 0)
		ret = sys_close_range(agent.plan->engine_pidfd + 1, ~0u, 0);
	if (ret < 0)
		launch_fail(ret);

	/*
	 * Every signal stays blocked in every task and thread until its
	 * rt_sigreturn sets the image's mask, as in CRIU's restorer: the
	 * handlers restored early point into memory that is not there yet,
	 * and the pending signals queued again must stay pending.
	 */
	ret = sys_rt_sigprocmask(SIG_SETMASK, &all_signals, NULL);
	if (ret < 0)
		launch_fail(ret);
	ret = reset_sigactions(agent.plan->sig_ignored);
	if (ret < 0)
		launch_fail(ret);
	/*
	 * what every task inherits, for the creds step to skip what is equal;
	 * in a user namespace of its own the root has other credentials than
	 * the launcher's, and every thread takes all of its own
	 */
	if (!(agent.plan->flags & CREST_PLAN_NEWUSER))
		snapshot_creds();
	/*
	 * A new time namespace for the children: the root, so the whole
	 * tree. The engine sets its offsets (the dumped clocks) once this
	 * process is ready, before any task enters it. A tree with a user
	 * namespace of its own needs one that namespace owns: its root makes
	 * it (fork.c root_time_ns).
	 */
	if ((agent.plan->flags & CREST_PLAN_NEWTIME) && !(agent.plan->flags & CREST_PLAN_ROOT_TIMENS)) {
		ret = sys_unshare(CLONE_NEWTIME);
		if (ret < 0)
			launch_fail(ret);
	}
	wait_for_go();

	memset(&args, 0, sizeof(args));
	/*
	 * CLONE_PARENT_SETTID: the kernel stores the root's pid (in this,
	 * the engine's, namespace) in task_entries before the root runs, so
	 * the engine has it when the root arrives at ROOT_TASK, without
	 * waiting for this process to exit.
	 */
	args.flags = CLONE_PARENT | CLONE_PARENT_SETTID;
	args.parent_tid = (uint64_t)(uintptr_t)&agent.te->root_host_pid;
	if (agent.plan->flags & CREST_PLAN_NEWPID)
		args.flags |= CLONE_NEWPID;
	/*
	 * The root is born in the tree's own UTS, IPC and net namespaces,
	 * which its children inherit; the engine fills them (hostname,
	 * sysctls, SysV objects; the loopback, addresses, routes, rules and
	 * netfilter) in PREPARE_NAMESPACES, before any task forks.
	 */
	if (agent.plan->flags & CREST_PLAN_NEWUTS)
		args.flags |= CLONE_NEWUTS;
	if (agent.plan->flags & CREST_PLAN_NEWIPC)
		args.flags |= CLONE_NEWIPC;
	if (agent.plan->flags & CREST_PLAN_NEWNET)
		args.flags |= CLONE_NEWNET;
	/* the engine makes the tree's mounts in it, and opens its files there */
	if (agent.plan->flags & CREST_PLAN_NEWNS)
		args.flags |= CLONE_NEWNS;
	/*
	 * A user namespace of its own, which owns the others made with it;
	 * the engine writes its maps while the root waits at ROOT_TASK.
	 */
	if (agent.plan->flags & CREST_PLAN_NEWUSER)
		args.flags |= CLONE_NEWUSER;
	/* with CLONE_PARENT the exit signal is the launcher's own (SIGCHLD) */
	args.exit_signal = 0;
	set_tid[0] = plan_task(0)->pid;
	args.set_tid = (uint64_t)(uintptr_t)set_tid;
	args.set_tid_size = 1;
	ret = sys_clone3(&args, sizeof(args));
	if (ret == 0)
		task_main(plan_task(0));
	if (ret < 0) {
		/*
		 * The fork of the root failed (EEXIST: its pid is taken in
		 * crest's pid namespace): recorded as the root's own failure.
		 */
		struct crest_slot *slot = &agent.slots[task_thread(plan_task(0), 0)->slot];

		slot->stage = CREST_STAGE_ROOT_TASK;
		task_fail_slot(slot, CREST_STEP_FORK, ret);
	}
	__atomic_store_n(&agent.te->root_host_pid, (int32_t)ret, __ATOMIC_RELEASE);
	linger();
}

/*
 * The kernel enters with a 16-byte aligned stack; calls want it 8 off.
 * agent_main gets the stack as the kernel left it, to find the auxiliary
 * vector.
 */
asm(".text\n"
    ".global _start\n"
    ".type _start, @function\n"
    "_start:\n"
    "	xor %ebp, %ebp\n"
    "	mov %rsp, %rdi\n"
    "	and $-16, %rsp\n"
    "	call agent_main\n"
    "	hlt\n");
