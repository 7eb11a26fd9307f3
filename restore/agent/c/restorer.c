// SPDX-License-Identifier: Apache-2.0
/*
 * restorer.c - the rest of a task's restore, running from the agent's copy
 * in the crest area (mem.c moved it there): memory, fd table, threads, the
 * last stages, and the return into the dumped registers.
 */
#include "agent.h"

int restore_vmas(const struct crest_task *t);

__attribute__((noreturn)) void restorer_main(const struct crest_task *t)
{
	int ret;

	ret = restore_vmas(t);
	if (ret != 0)
		task_fail(CREST_STEP_MEMORY, ret < 0 ? ret : -EPROTO);
	step_end(CREST_STEP_MEMORY);

	ret = install_fds(t);
	if (ret < 0)
		task_fail(CREST_STEP_FILES, ret);
	ret = restore_fs(t);
	if (ret < 0)
		task_fail(CREST_STEP_FS, ret);
	ret = restore_sigactions(t);
	if (ret < 0)
		task_fail(CREST_STEP_SIGACTIONS, ret);
	ret = clone_threads(t);
	if (ret < 0)
		task_fail(CREST_STEP_THREADS, ret);
	thread_finish(agent.slot, task_thread(t, 0));
}
