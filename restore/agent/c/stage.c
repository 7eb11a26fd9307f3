// SPDX-License-Identifier: Apache-2.0
/*
 * stage.c - the stage barrier from a thread's side, step clock readings
 * and failure. Each thread has its slot; the process-level code (fork.c,
 * files.c, mem.c) uses its task's, through the wrappers without _slot.
 *
 * The futex calls here are the ones the kernel-side monitor checks: keep
 * them plain and few. A thread arrives with one FUTEX_WAKE_OP (decrement
 * nr_in_progress, wake the engine at zero) and waits on start with
 * FUTEX_WAIT; a failure stores FAIL with FUTEX_WAKE_OP on start.
 */
#include "agent.h"

#define CLOCK_BOOTTIME 7
#define WAKE_ALL 0x7fffffff

/* FUTEX_OP(op, oparg, cmp, cmparg), as <linux/futex.h> defines it */
#define WAKE_OP(op, oparg, cmp, cmparg) \
	((((op) & 0xf) << 28) | (((cmp) & 0xf) << 24) | (((oparg) & 0xfff) << 12) | ((cmparg) & 0xfff))

/*
 * Count out of the current stage: nr_in_progress -= 1 in the kernel, and
 * wake the engine if it was the last one (the old value was 1).
 */
static void count_out(struct crest_task_entries *te)
{
	sys_futex_wake_op(&te->nr_in_progress, 0, WAKE_ALL, &te->nr_in_progress,
			  WAKE_OP(FUTEX_OP_ADD, -1, FUTEX_OP_CMP_EQ, 1));
}

/*
 * CLOCK_BOOTTIME, the clock of the engine's readings and of
 * bpf_ktime_get_boot_ns: in a task of a tree in a time namespace of its
 * own, less the namespace's offset (agent.clock_offset, task_main).
 */
uint64_t now_ns(void)
{
	struct __kernel_timespec ts;

	if (vdso_clock_gettime(CLOCK_BOOTTIME, &ts) < 0)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec - (uint64_t)agent.clock_offset;
}

void step_begin_slot(struct crest_slot *slot, int step)
{
	slot->step = step;
	slot->step_begin_ns[step] = now_ns();
}

void step_end_slot(struct crest_slot *slot, int step)
{
	slot->step_end_ns[step] = now_ns();
}

void step_begin(int step)
{
	if (agent.slot)
		step_begin_slot(agent.slot, step);
}

void step_end(int step)
{
	if (agent.slot)
		step_end_slot(agent.slot, step);
}

/*
 * Record the failure in the slot and, if it is the first, in task_entries;
 * then switch everyone to FAIL and leave (the whole task: exit_group). The
 * engine kills the tree and reports the recorded failure.
 */
__attribute__((noreturn)) void task_fail_slot(struct crest_slot *slot, int step, long err)
{
	struct crest_task_entries *te = agent.te;
	int stage = slot ? slot->stage : CREST_STAGE_ROOT_TASK;
	uint32_t none = 0;

	if (slot) {
		slot->step = step;
		slot->err = (int32_t)err;
	}
	if (te) {
		if (__atomic_compare_exchange_n(&te->fail.state, &none, 1, 0,
						__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
			te->fail.pid = slot ? slot->pid : 0;
			te->fail.stage = stage;
			te->fail.step = step;
			te->fail.err = (int32_t)err;
			__atomic_store_n(&te->fail.state, 2, __ATOMIC_RELEASE);
		}
		/* start = FAIL and wake all, in one call the monitor sees */
		sys_futex_wake_op(&te->start, WAKE_ALL, 0, &te->start,
				  WAKE_OP(FUTEX_OP_SET, CREST_STAGE_FAIL, FUTEX_OP_CMP_EQ, 0));
		sys_futex_wake(&te->nr_in_progress, WAKE_ALL);
	}
	sys_exit_group(1);
}

__attribute__((noreturn)) void task_fail(int step, long err)
{
	task_fail_slot(agent.slot, step, err);
}

/*
 * Leave stage: count out and wait for the engine to switch to the next
 * stage, which is returned. A switch to FAIL ends the task quietly:
 * whoever failed has recorded why.
 */
int finish_stage_slot(struct crest_slot *slot, int stage)
{
	struct crest_task_entries *te = agent.te;
	int cur;

	if ((agent.plan->faults & CREST_FAULT_NO_WAIT) && stage == CREST_STAGE_RESTORE_SIGCHLD &&
	    slot == &agent.slots[0]) {
		/*
		 * The fault: the root goes on without arriving or waiting; its
		 * next count-out, out of RESTORE_CREDS, closes this stage. It
		 * comes 20 ms late, when the engine surely waits for it: the
		 * count-out then wakes the engine, which is the monitor's
		 * evidence that it came before the switch.
		 */
		const struct __kernel_timespec late = { 0, 20 * 1000 * 1000 };

		sys_nanosleep(&late);
		slot->stage = stage + 1;
		return stage + 1;
	}
	if ((agent.plan->faults & CREST_FAULT_EARLY_SWITCH) && stage == CREST_STAGE_RESTORE_SIGCHLD &&
	    slot == &agent.slots[agent.plan->nr_threads - 1]) {
		/*
		 * The fault's other half: the last thread comes 20 ms late, so
		 * the engine, polling, surely sees it missing and switches.
		 */
		const struct __kernel_timespec late = { 0, 20 * 1000 * 1000 };

		sys_nanosleep(&late);
	}
	slot->arrive_ns[stage] = now_ns();
	count_out(te);
	/* CRIU waits while start == stage; a thread ahead of the others waits too */
	for (;;) {
		long ret;

		cur = __atomic_load_n(&te->start, __ATOMIC_ACQUIRE);
		if (cur == CREST_STAGE_FAIL || cur > stage)
			break;
		ret = sys_futex_wait(&te->start, (uint32_t)cur, NULL);
		if (ret < 0 && ret != -EAGAIN && ret != -EINTR)
			task_fail_slot(slot, CREST_STEP_BARRIER, ret);
	}
	if (cur == CREST_STAGE_FAIL)
		sys_exit_group(1);
	/* the engine never skips a stage, unless told to switch early */
	if (cur != stage + 1 && !(agent.plan->faults & CREST_FAULT_EARLY_SWITCH))
		task_fail_slot(slot, CREST_STEP_BARRIER, -EPROTO);
	slot->stage = cur;
	return cur;
}

int finish_stage(int stage)
{
	return finish_stage_slot(agent.slot, stage);
}

/*
 * The last thing before rt_sigreturn when no engine finishes the restore
 * (the crest area kept): count out of COMPLETE, without waiting, so that
 * the engine knows this thread runs its own code now. When the engine
 * steps the threads through their rt_sigreturn with ptrace, as CRIU does,
 * it sees that itself and notes the time (finish.go): COMPLETE has no
 * arrivals at the barrier then, and a count-out would cost two stops.
 */
void leave_complete(struct crest_slot *slot)
{
	if (agent.plan->flags & CREST_PLAN_FINISHED_BY_ENGINE)
		return;
	slot->arrive_ns[CREST_STAGE_COMPLETE] = now_ns();
	count_out(agent.te);
}
