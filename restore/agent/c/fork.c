// SPDX-License-Identifier: Apache-2.0
/*
 * fork.c - one task's life until its memory is restored: check its pid,
 * enter its cgroups, set up its session and group, fork its children with
 * their pids.
 *
 * CRIU's order (restore_task_with_children): a task is born in FORKING,
 * enters its cgroups, takes its session and group, forks its children,
 * and leaves FORKING.
 * Tasks that join a group led by another task do so in RESTORE, when every
 * leader exists.
 */
#include "agent.h"

#include <linux/fcntl.h>
#include <linux/prctl.h>

#ifndef SIGCHLD
#define SIGCHLD 17
#endif
#define SIGKILL 9

int restore_session(const struct crest_task *t)
{
	long ret;

	if (t->session == CREST_SESSION_LEAD) {
		step_begin(CREST_STEP_SETSID);
		ret = sys_setsid();
		if (ret < 0)
			return (int)ret;
		if (ret != t->pid)
			return -EPROTO;
		step_end(CREST_STEP_SETSID);
		/* setsid() made the task its group's leader too */
		return 0;
	}
	if (t->group == CREST_GROUP_LEAD) {
		step_begin(CREST_STEP_SETPGID);
		ret = sys_setpgid(0, 0);
		if (ret < 0)
			return (int)ret;
		step_end(CREST_STEP_SETPGID);
	}
	return 0;
}

int join_group(const struct crest_task *t)
{
	long ret;

	if (t->group != CREST_GROUP_JOIN)
		return 0;
	step_begin(CREST_STEP_JOIN_PGID);
	ret = sys_setpgid(0, t->pgid);
	if (ret < 0)
		return (int)ret;
	step_end(CREST_STEP_JOIN_PGID);
	return 0;
}

/*
 * Enter the task's cgroups before it forks its children, as CRIU's
 * restore_task_cgroup: the children are then born, and their forks
 * charged (pids, the kernel memory of a fork), in their parent's
 * cgroups. The engine opened the cgroup.procs file of every cgroup where
 * the task's set differs from its parent's; "0" moves the writer. The
 * kernel checks the credentials of the file's opener (the engine), not
 * the writer's, so this works in a user namespace too.
 */
/*
 * The tree's own cgroup namespace, made by the root (CRIU's prepare_cgns):
 * unshare pins the namespace's root to the caller's cgroups, and the
 * engine moved the root into the namespace's roots in PREPARE_NAMESPACES.
 * Every task the root forks after this is born in it.
 */
static int unshare_cgroup_ns(void)
{
	long ret = sys_unshare(CLONE_NEWCGROUP);

	return ret < 0 ? (int)ret : 0;
}

static int enter_cgroups(const struct crest_task *t)
{
	const int32_t *fds = plan_ints(t->cgroup_fds_off);
	const char self = '0';
	uint32_t i;

	if (!t->nr_cgroup_fds)
		return 0;
	step_begin(CREST_STEP_CGROUPS);
	for (i = 0; i < t->nr_cgroup_fds; i++) {
		long fd, ret;

		if (fds[i] == CREST_CGROUP_UNSHARE_NS) {
			ret = unshare_cgroup_ns();
			if (ret < 0)
				return (int)ret;
			continue;
		}
		fd = sys_pidfd_getfd(agent.plan->engine_pidfd, fds[i], 0);
		if (fd < 0)
			return (int)fd;
		ret = sys_write((int)fd, &self, 1);
		sys_close((int)fd);
		if (ret < 0)
			return (int)ret;
	}
	step_end(CREST_STEP_CGROUPS);
	return 0;
}

/* Whether the fault "no set_tid" hits this task: the plan's last one. */
static int no_set_tid(const struct crest_task *t)
{
	return (agent.plan->faults & CREST_FAULT_NO_SET_TID) && t->parent >= 0 &&
	       t->index == (int32_t)agent.plan->nr_tasks - 1;
}

/* Fork one task with its pid; the child becomes that task and never returns. */
static long fork_task(const struct crest_task *child, uint64_t flags)
{
	int64_t set_tid[1] = { child->pid };
	struct clone_args args;
	long pid;

	memset(&args, 0, sizeof(args));
	args.flags = flags;
	args.exit_signal = SIGCHLD;
	if (!no_set_tid(child)) {
		args.set_tid = (uint64_t)(uintptr_t)set_tid;
		args.set_tid_size = 1;
	}
	pid = sys_clone3(&args, sizeof(args));
	if (pid == 0)
		task_main(child);
	return pid;
}

int fork_children(const struct crest_task *t)
{
	const int32_t *children = plan_ints(t->children_off);
	uint32_t i;
	int pass;

	step_begin(CREST_STEP_FORK);
	/*
	 * Pass 0 forks only the child the fault "no set_tid" hits, first, so
	 * that it takes the lowest free pid and not, by luck, its own.
	 */
	for (pass = 0; pass < 2; pass++) {
		for (i = 0; i < t->nr_children; i++) {
			const struct crest_task *c = plan_task(children[i]);
			long pid;

			if (no_set_tid(c) != (pass == 0))
				continue;
			pid = fork_task(c, 0);
			if (pid < 0)
				return (int)pid;
			/* the child is in our pid namespace: clone3 returns its pid there */
			if (pid != c->pid && !no_set_tid(c))
				return -EPROTO;
		}
	}
	step_end(CREST_STEP_FORK);
	return 0;
}

/*
 * The root makes the tree's time namespace itself when the tree has a user
 * namespace of its own: that one must own it (CRIU's dump refuses a tree
 * with a namespace of another owner), and one the launcher made would be
 * crest's. Without, the launcher makes it (main.c).
 */
static int root_makes_time_ns(void)
{
	uint32_t both = CREST_PLAN_NEWTIME | CREST_PLAN_ROOT_TIMENS;

	return (agent.plan->flags & both) == both;
}

/*
 * As CRIU's prepare_timens, in the root once the engine wrote the maps of
 * its user namespace (ROOT_TASK is over): unshare the time namespace for
 * its children, write the offsets the engine computed (the dumped clocks)
 * into its timens_offsets while nobody is in it, and enter it through
 * ns/time_for_children, so that the root and every task it forks live in
 * it. 0 or -errno.
 */
static int root_time_ns(void)
{
	static const char offsets_path[] = "/proc/self/timens_offsets";
	static const char ns_path[] = "/proc/self/ns/time_for_children";
	const char *text = agent.plan->time_offsets;
	size_t len = 0;
	long fd, ret;

	step_begin(CREST_STEP_TIMENS);
	while (len < sizeof(agent.plan->time_offsets) && text[len])
		len++;
	if (len == 0 || len == sizeof(agent.plan->time_offsets))
		return -EINVAL;
	ret = sys_unshare(CLONE_NEWTIME);
	if (ret < 0)
		return (int)ret;
	fd = sys_openat(AT_FDCWD, offsets_path, O_WRONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return (int)fd;
	ret = sys_write((int)fd, text, len);
	sys_close((int)fd);
	if (ret >= 0 && (size_t)ret != len)
		ret = -EIO;
	if (ret < 0)
		return (int)ret;
	fd = sys_openat(AT_FDCWD, ns_path, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return (int)fd;
	ret = sys_setns((int)fd, CLONE_NEWTIME);
	sys_close((int)fd);
	if (ret < 0)
		return (int)ret;
	/* the root reads the tree's clocks now: the step clock takes their offset off */
	agent.clock_offset = agent.plan->boot_offset_ns;
	step_end(CREST_STEP_TIMENS);
	return 0;
}

/*
 * The root starts in ROOT_TASK, every other task in FORKING, the stage its
 * parent forks it in.
 */
__attribute__((noreturn)) void task_main(const struct crest_task *t)
{
	int ret;

	agent.task = t;
	agent.slot = &agent.slots[task_thread(t, 0)->slot];
	/*
	 * the tasks are in the tree's time namespace, the launcher is not,
	 * nor a root that makes it until it enters it (root_time_ns)
	 */
	if ((agent.plan->flags & CREST_PLAN_NEWTIME) && !(t->parent < 0 && root_makes_time_ns()))
		agent.clock_offset = agent.plan->boot_offset_ns;
	agent.slot->stage = t->parent < 0 ? CREST_STAGE_ROOT_TASK : CREST_STAGE_FORKING;

	step_begin(CREST_STEP_CHECK_PID);
	ret = (int)sys_getpid();
	agent.slot->seen_pid = ret;
	if (ret != t->pid && !no_set_tid(t))
		task_fail(CREST_STEP_CHECK_PID, ret < 0 ? ret : -ESRCH);
	step_end(CREST_STEP_CHECK_PID);

	if (agent.slot->stage == CREST_STAGE_ROOT_TASK) {
		/*
		 * The root is the engine's child: if the engine dies before
		 * the end, the half-restored tree (the root is its pid
		 * namespace's init) dies with it instead of waiting forever.
		 * Cleared after the switch to COMPLETE (sigreturn.c).
		 */
		ret = (int)sys_prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
		if (ret < 0)
			task_fail(CREST_STEP_CHECK_PID, ret);
		finish_stage(CREST_STAGE_ROOT_TASK);
		if (root_makes_time_ns()) {
			ret = root_time_ns();
			if (ret < 0)
				task_fail(CREST_STEP_TIMENS, ret);
		}
		/* namespaces other than pid are the caller's for now */
		finish_stage(CREST_STAGE_PREPARE_NAMESPACES);
	}

	/*
	 * the root has none (the engine moved it in PREPARE_NAMESPACES) but
	 * in a cgroup namespace of the tree's own: it unshares it here and
	 * goes on into its own cgroups
	 */
	ret = enter_cgroups(t);
	if (ret < 0)
		task_fail(CREST_STEP_CGROUPS, ret);
	ret = restore_session(t);
	if (ret < 0)
		task_fail(agent.slot->step, ret);
	ret = take_ctty(t);
	if (ret < 0)
		task_fail(CREST_STEP_FILES, ret);
	ret = fork_children(t);
	if (ret < 0)
		task_fail(CREST_STEP_FORK, ret);
	finish_stage(CREST_STAGE_FORKING);

	ret = join_group(t);
	if (ret < 0)
		task_fail(CREST_STEP_JOIN_PGID, ret);
	ret = set_foreground(t);
	if (ret < 0)
		task_fail(CREST_STEP_FILES, ret);
	/* zombies and helpers have nothing more to restore (exit.c) */
	if (t->kind != CREST_TASK_ALIVE)
		end_task(t);
	ret = take_files(t);
	if (ret < 0)
		task_fail(CREST_STEP_FILES, ret);
	/* goes on in the restorer's copy (restorer.c) and never returns */
	restore_memory(t);
}
