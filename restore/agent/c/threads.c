// SPDX-License-Identifier: Apache-2.0
/*
 * threads.c - a task's other threads. Once its memory and files are in
 * place, the leader clones each thread with its tid (clone3 set_tid) on
 * its own restorer stack; every thread, the leader too, then goes through
 * the last stages and returns into its own registers (thread_finish).
 */
#include "agent.h"

#define THREAD_FLAGS (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM)

long clone3_thread(struct clone_args *args, size_t size, void (*fn)(const struct crest_thread *),
		   const struct crest_thread *th);

/*
 * The new thread starts on its own stack with the parent's registers: it
 * must not return through the parent's frames, so it calls fn right away,
 * with fn and its argument kept in callee-saved registers.
 */
asm(".text\n"
    ".type clone3_thread, @function\n"
    "clone3_thread:\n"
    "	push %r12\n"
    "	push %r13\n"
    "	mov %rdx, %r12\n"
    "	mov %rcx, %r13\n"
    "	mov $435, %eax\n"	/* __NR_clone3 */
    "	syscall\n"
    "	test %rax, %rax\n"
    "	jnz 1f\n"
    "	xor %ebp, %ebp\n"
    "	mov %r13, %rdi\n"
    "	call *%r12\n"
    "	ud2\n"
    "1:	pop %r13\n"
    "	pop %r12\n"
    "	ret\n");

static __attribute__((noreturn)) void thread_main(const struct crest_thread *th)
{
	struct crest_slot *slot = &agent.slots[th->slot];
	long tid = sys_gettid();

	slot->stage = CREST_STAGE_RESTORE;
	slot->seen_pid = (int32_t)tid;
	if (tid != th->tid)
		task_fail_slot(slot, CREST_STEP_THREADS, tid < 0 ? tid : -ESRCH);
	thread_finish(slot, th);
}

int clone_threads(const struct crest_task *t)
{
	const struct crest_plan *p = agent.plan;
	uint32_t i;

	if (t->nr_threads < 2)
		return 0;
	step_begin(CREST_STEP_THREADS);
	for (i = 1; i < t->nr_threads; i++) {
		const struct crest_thread *th = task_thread(t, i);
		int64_t set_tid[1] = { th->tid };
		struct clone_args args;
		long tid;

		if (th->index >= p->nr_stacks)
			return -E2BIG;
		if ((p->faults & CREST_FAULT_DROP_THREAD) && i == t->nr_threads - 1)
			break;	/* the fault: the last thread is never created */
		memset(&args, 0, sizeof(args));
		args.flags = THREAD_FLAGS;
		args.stack = p->stack_addr + (uint64_t)th->index * p->stack_size;
		args.stack_size = p->stack_size;
		args.set_tid = (uint64_t)(uintptr_t)set_tid;
		args.set_tid_size = 1;
		tid = clone3_thread(&args, sizeof(args), thread_main, th);
		if (tid < 0)
			return (int)tid;
		if (tid != th->tid)
			return -EPROTO;
	}
	step_end(CREST_STEP_THREADS);
	return 0;
}

/*
 * The thread's scheduling: its nice value and policy (both per thread on
 * Linux). SCHED_OTHER at nice 0 is what the thread has already. CRIU's
 * restorer sets them before the credentials; crest does so only when they
 * need CAP_SYS_NICE that the credentials take away (sched_early), and
 * otherwise last, after COMPLETE (sigreturn.c): a thread at SCHED_IDLE or
 * a high nice would wait for idle CPUs through the last stages.
 */
void restore_sched(struct crest_slot *slot, const struct crest_thread *th)
{
	struct {
		int32_t sched_priority;
	} param = { (int32_t)th->sched_prio };
	long ret = 0;

	if (th->sched_nice == 0 && th->sched_policy == 0 && th->sched_prio == 0)
		return;
	step_begin_slot(slot, CREST_STEP_SCHED);
	if (th->sched_nice != 0)
		ret = sys_setpriority(0 /* PRIO_PROCESS */, 0, th->sched_nice);
	if (ret == 0 && (th->sched_policy != 0 || th->sched_prio != 0))
		ret = sys_sched_setscheduler(0, (int)th->sched_policy, &param);
	if (ret < 0)
		task_fail_slot(slot, CREST_STEP_SCHED, ret);
	step_end_slot(slot, CREST_STEP_SCHED);
}

/* The last stages of one thread, then its registers. */
__attribute__((noreturn)) void thread_finish(struct crest_slot *slot, const struct crest_thread *th)
{
	struct crest_ucontext *uc;
	int ret;

	finish_stage_slot(slot, CREST_STAGE_RESTORE);
	/* helpers and zombies end once RESTORE is over: wait for them (exit.c) */
	if (th->index == 0) {
		ret = wait_children(slot, agent.task);
		if (ret < 0)
			task_fail_slot(slot, CREST_STEP_WAIT_CHILDREN, ret);
	}
	finish_stage_slot(slot, CREST_STAGE_RESTORE_SIGCHLD);
	/* with the engine's credentials still, when it needs them */
	if (th->sched_early)
		restore_sched(slot, th);
	ret = restore_creds(slot, agent.task);
	if (ret < 0)
		task_fail_slot(slot, CREST_STEP_CREDS, ret);
	/* CRIU's order: signals and timers after the credentials */
	ret = restore_pending_signals(slot, agent.task, th);
	if (ret < 0)
		task_fail_slot(slot, CREST_STEP_SIGNALS, ret);
	if (th->index == 0) {
		ret = restore_timers(slot, agent.task);
		if (ret < 0)
			task_fail_slot(slot, CREST_STEP_TIMERS, ret);
	}
	/*
	 * Everything for the return into the thread's own registers is done
	 * before counting out of RESTORE_CREDS, as in CRIU's restorer: once
	 * COMPLETE is switched to, the engine steps through each thread's
	 * calls with ptrace, and every call there costs two stops.
	 */
	uc = prepare_sigreturn(slot, th);
	finish_stage_slot(slot, CREST_STAGE_RESTORE_CREDS);
	sigreturn_now(slot, th, uc);
}
