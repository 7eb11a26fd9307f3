// SPDX-License-Identifier: Apache-2.0
/*
 * exit.c - the tasks that end once RESTORE is over, and their parents'
 * wait for them (CRIU's restore_one_zombie, restore_one_helper and the
 * restorer's wait for helpers and zombies).
 *
 * A zombie (TASK_DEAD in its core image) and a helper (a stand-in for a
 * session or group leader that was gone at the dump) are forked like any
 * task, take their session and group and fork their children in FORKING.
 * Then they count out of RESTORE like a thread and, once the engine has
 * switched past it, end: a helper exits, a zombie exits with its exit
 * code or kills itself with its signal. Their parent, after RESTORE,
 * reaps its helpers and waits for its zombies without reaping them, so
 * that they stay zombies, then takes the SIGCHLD their exits sent, which
 * the restored program never had: the dumped tree's own pending signals
 * are queued again later (signals.c).
 */
#include "agent.h"

#include <linux/prctl.h>

#define P_PID 1
#define WEXITED 0x4
#define WNOWAIT 0x01000000
#define SIGABRT 6
#define SIGCHLD 17
#define SIG_UNBLOCK 1

/* Whether the default action of sig ends the task (signal(7): Term, Core). */
static int sig_fatal(int sig)
{
	switch (sig) {
	case 17: /* SIGCHLD */
	case 18: /* SIGCONT */
	case 19: /* SIGSTOP */
	case 20: /* SIGTSTP */
	case 21: /* SIGTTIN */
	case 22: /* SIGTTOU */
	case 23: /* SIGURG */
	case 28: /* SIGWINCH */
		return 0;
	}
	return sig >= 1 && sig <= 64;
}

int wait_children(struct crest_slot *slot, const struct crest_task *t)
{
	static const struct __kernel_timespec now = { 0, 0 };
	const uint64_t sigchld = 1ull << (SIGCHLD - 1);
	const int32_t *children = plan_ints(t->children_off);
	uint32_t i;
	long ret;

	if (t->nr_helpers == 0 && t->nr_zombies == 0)
		return 0;
	step_begin_slot(slot, CREST_STEP_WAIT_CHILDREN);
	for (i = 0; i < t->nr_children; i++) {
		const struct crest_task *c = plan_task(children[i]);

		if (c->kind == CREST_TASK_HELPER) {
			ret = sys_waitid(P_PID, c->pid, NULL, WEXITED);
			/* ECHILD: SIGCHLD is ignored here, the kernel reaped it */
			if (ret < 0 && ret != -ECHILD)
				return (int)ret;
		} else if (c->kind == CREST_TASK_ZOMBIE) {
			ret = sys_waitid(P_PID, c->pid, NULL, WEXITED | WNOWAIT);
			if (ret < 0)
				return (int)ret;
		}
	}
	/* every signal is blocked until sigreturn: take the one they sent */
	ret = sys_rt_sigtimedwait(&sigchld, NULL, &now);
	if (ret < 0 && ret != -EAGAIN)
		return (int)ret;
	step_end_slot(slot, CREST_STEP_WAIT_CHILDREN);
	return 0;
}

__attribute__((noreturn)) void end_task(const struct crest_task *t)
{
	int sig = t->exit_code & 0x7f;
	uint64_t mask;
	long ret;

	if (t->kind == CREST_TASK_ZOMBIE) {
		/* its comm is what is left of a zombie in /proc */
		step_begin(CREST_STEP_EXIT);
		ret = sys_prctl(PR_SET_NAME, (unsigned long)t->comm, 0, 0, 0);
		if (ret < 0)
			task_fail(CREST_STEP_EXIT, ret);
		step_end(CREST_STEP_EXIT);
	}
	finish_stage(CREST_STAGE_RESTORE);
	/* a group helper may be this zombie's child: reap it first */
	ret = wait_children(agent.slot, t);
	if (ret < 0)
		task_fail(CREST_STEP_WAIT_CHILDREN, ret);
	if (t->kind == CREST_TASK_HELPER || t->exit_code == 0)
		sys_exit_group(0);
	if (sig) {
		/* as CRIU: no core file, and a signal that would not end us is SIGABRT */
		if (!sig_fatal(sig))
			sig = SIGABRT;
		sys_prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
		sys_kill(t->pid, sig);
		mask = 1ull << (sig - 1);
		sys_rt_sigprocmask(SIG_UNBLOCK, &mask, NULL);
	}
	sys_exit_group((t->exit_code >> 8) & 0xff);
}
