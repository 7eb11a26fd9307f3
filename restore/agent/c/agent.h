/* SPDX-License-Identifier: Apache-2.0 */
/*
 * agent.h - what the agent's files share: the process's view of the plan
 * and the shared area, and the functions each concern exports.
 */
#ifndef CREST_AGENT_H
#define CREST_AGENT_H

#include "plan.h"
#include "sys.h"

/*
 * Every symbol is the agent's own: hidden visibility makes gcc address
 * them relative to rip, never through a GOT entry that would need a
 * relocation (the agent has none, so that it runs wherever it is copied).
 */
#pragma GCC visibility push(hidden)

/*
 * The process's view. Threads share it (CLONE_VM) and only read it; each
 * thread passes its own slot explicitly.
 */
struct agent {
	const struct crest_plan *plan;
	struct crest_task_entries *te;
	struct crest_slot *slots;
	const struct crest_task *task;	/* this process's task, NULL in the launcher */
	struct crest_slot *slot;	/* the task's (its leader's) slot, NULL in the launcher */
	int64_t clock_offset;		/* what now_ns takes off: the tree time namespace's boot clock ahead of the engine's */
};

extern struct agent agent;

static inline const struct crest_task *plan_task(int index)
{
	const char *base = (const char *)agent.plan;

	return (const struct crest_task *)(base + agent.plan->tasks_off) + index;
}

static inline const int32_t *plan_ints(uint32_t off)
{
	return (const int32_t *)((const char *)agent.plan + off);
}

static inline const void *plan_ptr(uint32_t off)
{
	return (const char *)agent.plan + off;
}

static inline const struct crest_thread *task_thread(const struct crest_task *t, uint32_t i)
{
	return (const struct crest_thread *)plan_ptr(t->threads_off) + i;
}

/* lib.c */
void *memset(void *s, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);

/* stage.c */
uint64_t now_ns(void);
void step_begin(int step);
void step_end(int step);
void step_begin_slot(struct crest_slot *slot, int step);
void step_end_slot(struct crest_slot *slot, int step);
__attribute__((noreturn)) void task_fail(int step, long err);
__attribute__((noreturn)) void task_fail_slot(struct crest_slot *slot, int step, long err);
int finish_stage(int stage);
int finish_stage_slot(struct crest_slot *slot, int stage);
void leave_complete(struct crest_slot *slot);

/* vdso.c */
void vdso_use(uint64_t base);
void vdso_drop(void);
long vdso_clock_gettime(int clock, struct __kernel_timespec *ts);

/* fork.c */
int restore_session(const struct crest_task *t);
int fork_children(const struct crest_task *t);
int join_group(const struct crest_task *t);
__attribute__((noreturn)) void task_main(const struct crest_task *t);

/* exit.c */
int wait_children(struct crest_slot *slot, const struct crest_task *t);
__attribute__((noreturn)) void end_task(const struct crest_task *t);

/* files.c */
int take_files(const struct crest_task *t);
int take_ctty(const struct crest_task *t);	/* pty.c */
int set_foreground(const struct crest_task *t);
int install_fds(const struct crest_task *t);
int restore_fs(const struct crest_task *t);

/* signals.c */
int reset_sigactions(uint64_t ignored);
int restore_sigactions(const struct crest_task *t);
int restore_pending_signals(struct crest_slot *slot, const struct crest_task *t, const struct crest_thread *th);
int restore_timers(struct crest_slot *slot, const struct crest_task *t);

/* mem.c */
__attribute__((noreturn)) void restore_memory(const struct crest_task *t);

/* sysvshm.c */
int attach_sysv_shm(const struct crest_task *t);

/* restorer.c */
__attribute__((noreturn)) void restorer_main(const struct crest_task *t);

/* creds.c */
void snapshot_creds(void);
int restore_creds(struct crest_slot *slot, const struct crest_task *t);

/* threads.c */
int clone_threads(const struct crest_task *t);
void restore_sched(struct crest_slot *slot, const struct crest_thread *th);
__attribute__((noreturn)) void thread_finish(struct crest_slot *slot, const struct crest_thread *th);

/* fpu.c */
int build_fpstate(uint8_t *fx, uint64_t room, const struct crest_thread *th);

/* sigreturn.c */
struct crest_ucontext;
struct crest_ucontext *prepare_sigreturn(struct crest_slot *slot, const struct crest_thread *th);
__attribute__((noreturn)) void sigreturn_now(struct crest_slot *slot, const struct crest_thread *th,
					     struct crest_ucontext *uc);

#pragma GCC visibility pop

#endif /* CREST_AGENT_H */
