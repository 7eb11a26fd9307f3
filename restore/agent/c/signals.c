// SPDX-License-Identifier: Apache-2.0
/*
 * signals.c - a task's signal state. The launcher makes every disposition
 * the default (reset_sigactions), so only the image's non-default ones are
 * set here. Every signal is blocked from the launcher on
 * (main.c), so the pending signals queued again here stay pending, and the
 * interval timers, set last, can only make SIGALRM and the like pending.
 * The blocked mask and the alternate stack are per thread and come with
 * rt_sigreturn (sigreturn.c).
 */
#include "agent.h"

#define SIGKILL 9
#define SIGSTOP 19

/*
 * reset_sigactions makes every disposition the default, in the launcher
 * before it forks the root: execve made all of them the default but those
 * the engine ignored (the plan's sig_ignored), and restore_sigactions
 * sets only the image's non-default ones.
 */
int reset_sigactions(uint64_t ignored)
{
	const struct crest_sigaction dfl = { 0 };
	int sig;

	for (sig = 1; sig <= CREST_NR_SIGNALS; sig++) {
		long ret;

		if (sig == SIGKILL || sig == SIGSTOP || !(ignored & (1ull << (sig - 1))))
			continue;
		ret = sys_rt_sigaction(sig, &dfl, NULL, sizeof(dfl.mask));
		if (ret < 0)
			return (int)ret;
	}
	return 0;
}

int restore_sigactions(const struct crest_task *t)
{
	const struct crest_sigaction *sa = plan_ptr(t->sigactions_off);
	int sig;

	step_begin(CREST_STEP_SIGACTIONS);
	for (sig = 1; sig <= CREST_NR_SIGNALS; sig++) {
		const struct crest_sigaction *a = &sa[sig - 1];
		long ret;

		if (sig == SIGKILL || sig == SIGSTOP)
			continue;
		if (!a->handler && !a->flags && !a->restorer && !a->mask)
			continue;
		ret = sys_rt_sigaction(sig, a, NULL, sizeof(a->mask));
		if (ret < 0)
			return (int)ret;
	}
	step_end(CREST_STEP_SIGACTIONS);
	return 0;
}

/*
 * Queue the signals that were pending again, as CRIU's restorer does: the
 * thread's own with rt_tgsigqueueinfo to itself, and, from the leader, the
 * task's shared ones with rt_sigqueueinfo. Sending to oneself keeps
 * si_code and si_pid as they were (the kernel refuses forged ones only
 * towards others).
 */
int restore_pending_signals(struct crest_slot *slot, const struct crest_task *t, const struct crest_thread *th)
{
	const struct crest_siginfo *si = plan_ptr(th->sigs_off);
	uint32_t i;
	long ret;

	if (!th->nr_sigs && (th->index != 0 || !t->nr_shared_sigs))
		return 0;
	step_begin_slot(slot, CREST_STEP_SIGNALS);
	for (i = 0; i < th->nr_sigs; i++) {
		ret = sys_rt_tgsigqueueinfo(t->pid, th->tid, *(const int32_t *)si[i].info, si[i].info);
		if (ret < 0)
			return (int)ret;
	}
	if (th->index == 0) {
		si = plan_ptr(t->shared_sigs_off);
		for (i = 0; i < t->nr_shared_sigs; i++) {
			ret = sys_rt_sigqueueinfo(t->pid, *(const int32_t *)si[i].info, si[i].info);
			if (ret < 0)
				return (int)ret;
		}
	}
	step_end_slot(slot, CREST_STEP_SIGNALS);
	return 0;
}

#define PR_TIMER_CREATE_RESTORE_IDS 77
#define PR_TIMER_CREATE_RESTORE_IDS_OFF 0
#define PR_TIMER_CREATE_RESTORE_IDS_ON 1

/* struct sigevent of the kernel on x86-64 */
struct crest_sigevent {
	uint64_t value;
	int32_t signo;
	int32_t notify;
	int32_t tid;		/* sigev_notify_thread_id */
	int32_t pad[11];
};

/*
 * POSIX timers, each with its id: with PR_TIMER_CREATE_RESTORE_IDS on,
 * timer_create takes the id it is given instead of choosing one.
 */
static int restore_posix_timers(const struct crest_task *t)
{
	const struct crest_posix_timer *pt = plan_ptr(t->posix_timers_off);
	uint32_t i;
	long ret;

	if (!t->nr_posix_timers)
		return 0;
	ret = sys_prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0);
	if (ret < 0)
		return (int)ret;
	for (i = 0; i < t->nr_posix_timers; i++, pt++) {
		struct crest_sigevent sev;
		int id = (int)pt->id;

		memset(&sev, 0, sizeof(sev));
		sev.value = pt->sival_ptr;
		sev.signo = (int32_t)pt->signo;
		sev.notify = (int32_t)pt->notify;
		sev.tid = pt->notify_tid;
		ret = sys_timer_create((int)pt->clock_id, &sev, &id);
		if (ret < 0)
			return (int)ret;
		if (id != (int)pt->id)
			return -EPROTO;
		if (!pt->value_sec && !pt->value_nsec)
			continue;
		/* struct itimerspec: interval then value, as the plan has them */
		ret = sys_timer_settime(id, 0, &pt->interval_sec, NULL);
		if (ret < 0)
			return (int)ret;
	}
	ret = sys_prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0);
	return ret < 0 ? (int)ret : 0;
}

/*
 * The interval timers and POSIX timers are the task's: its leader sets
 * them, last.
 */
int restore_timers(struct crest_slot *slot, const struct crest_task *t)
{
	int which, armed = 0;
	long ret;

	for (which = 0; which < 3; which++)
		armed |= t->itimers[which].value_sec || t->itimers[which].value_usec;
	if (!armed && !t->nr_posix_timers)
		return 0;
	step_begin_slot(slot, CREST_STEP_TIMERS);
	ret = restore_posix_timers(t);
	if (ret < 0)
		return (int)ret;
	for (which = 0; which < 3; which++) {
		const struct crest_itimer *it = &t->itimers[which];

		if (!it->value_sec && !it->value_usec)
			continue;
		/* struct crest_itimer is struct itimerval of x86-64 */
		ret = sys_setitimer(which, it, NULL);
		if (ret < 0)
			return (int)ret;
	}
	step_end_slot(slot, CREST_STEP_TIMERS);
	return 0;
}
