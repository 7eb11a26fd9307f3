// SPDX-License-Identifier: Apache-2.0
/*
 * signals.c - a task's signal dispositions. The agent never changes its
 * own, so every disposition is the default until set here; only the
 * non-default ones are. The blocked mask and the alternate stack are per
 * thread and come with rt_sigreturn (sigreturn.c).
 */
#include "agent.h"

#define SIGKILL 9
#define SIGSTOP 19

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
