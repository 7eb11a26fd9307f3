// SPDX-License-Identifier: Apache-2.0
/*
 * sigreturn.c - return into the dumped registers: build an rt_sigframe on
 * the restorer's stack and call rt_sigreturn, which loads every general
 * register, the flags, the FPU state, the signal mask and the alternate
 * signal stack from it at once.
 */
#include "agent.h"
#include <asm/sigcontext.h>
#include <linux/prctl.h>
#include <linux/seccomp.h>

#define ARCH_SET_GS 0x1001
#define ARCH_SET_FS 0x1002
#define UC_FP_XSTATE 0x1
#define UC_SIGCONTEXT_SS 0x2
#define FPSTATE_ROOM 16384
#define UC_STRICT_RESTORE_SS 0x4

/* the kernel's struct ucontext and rt_sigframe on x86-64 */
struct crest_ucontext {
	uint64_t uc_flags;
	uint64_t uc_link;
	struct {
		uint64_t ss_sp;
		int32_t ss_flags;
		int32_t pad;
		uint64_t ss_size;
	} uc_stack;
	struct sigcontext uc_mcontext;
	uint64_t uc_sigmask;
};

struct crest_sigframe {
	uint64_t pretcode;
	struct crest_ucontext uc;
	uint8_t info[128];
};

/* What the kernel keeps per thread outside the registers. */
static int restore_thread_state(const struct crest_thread *th)
{
	const struct crest_task *t = agent.task;
	long ret;

	if (th->index == 0) {
		/* the fd table is shared: the leader closes crest's fds */
		ret = sys_close_range((unsigned int)agent.plan->fd_base, ~0u, 0);
		if (ret < 0)
			return (int)ret;
	}
	ret = sys_prctl(PR_SET_NAME, (unsigned long)t->comm, 0, 0, 0);
	if (ret < 0)
		return (int)ret;
	/*
	 * After the credentials, whose change clears it. The root's leader
	 * keeps the engine's guard until COMPLETE (sigreturn_now).
	 */
	if (th->pdeath_sig && !(t->parent < 0 && th->index == 0)) {
		ret = sys_prctl(PR_SET_PDEATHSIG, (unsigned long)th->pdeath_sig, 0, 0, 0);
		if (ret < 0)
			return (int)ret;
	}
	if (th->index == 0 && t->child_subreaper) {
		ret = sys_prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
		if (ret < 0)
			return (int)ret;
	}
	ret = sys_set_tid_address(th->clear_tid_addr);
	if (ret < 0)
		return (int)ret;
	if (th->robust_len) {
		ret = sys_set_robust_list(th->robust_list, th->robust_len);
		if (ret < 0)
			return (int)ret;
	}
	if (th->rseq_size) {
		ret = sys_rseq(th->rseq_addr, th->rseq_size, 0, th->rseq_sig);
		if (ret < 0)
			return (int)ret;
	}
	/* fs and gs bases are not in the frame; the agent uses neither */
	ret = sys_arch_prctl(ARCH_SET_FS, th->regs.fs_base);
	if (ret == 0 && th->regs.gs_base)
		ret = sys_arch_prctl(ARCH_SET_GS, th->regs.gs_base);
	return ret < 0 ? (int)ret : 0;
}

struct crest_ucontext *prepare_sigreturn(struct crest_slot *slot, const struct crest_thread *th)
{
	const struct crest_regs *r = &th->regs;
	/*
	 * The FPU state goes at the bottom of the thread's restorer stack
	 * (page aligned, as XSAVE wants 64 bytes), the frame above it; both
	 * far below what this function uses at the stack's top.
	 */
	uint64_t base = agent.plan->stack_addr + (uint64_t)th->index * agent.plan->stack_size;
	uint8_t *fx = (uint8_t *)base;
	struct crest_sigframe *f = (struct crest_sigframe *)(base + FPSTATE_ROOM);
	struct sigcontext *sc = &f->uc.uc_mcontext;
	int ret;

	step_begin_slot(slot, CREST_STEP_SIGRETURN);
	ret = restore_thread_state(th);
	if (ret < 0)
		task_fail_slot(slot, CREST_STEP_SIGRETURN, ret);
	ret = build_fpstate(fx, FPSTATE_ROOM, th);
	if (ret < 0)
		task_fail_slot(slot, CREST_STEP_SIGRETURN, ret);

	memset(f, 0, sizeof(*f));
	f->uc.uc_flags = UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS | (ret ? UC_FP_XSTATE : 0);
	/* rt_sigreturn sets the alternate signal stack from uc_stack */
	f->uc.uc_stack.ss_sp = th->sas_sp;
	f->uc.uc_stack.ss_size = th->sas_size;
	f->uc.uc_stack.ss_flags = (int32_t)th->sas_flags;
	f->uc.uc_sigmask = th->sigmask;
	sc->r8 = r->r8;
	sc->r9 = r->r9;
	sc->r10 = r->r10;
	sc->r11 = r->r11;
	sc->r12 = r->r12;
	sc->r13 = r->r13;
	sc->r14 = r->r14;
	sc->r15 = r->r15;
	sc->rdi = r->di;
	sc->rsi = r->si;
	sc->rbp = r->bp;
	sc->rbx = r->bx;
	sc->rdx = r->dx;
	sc->rax = r->ax;
	sc->rcx = r->cx;
	sc->rsp = r->sp;
	sc->rip = r->ip;
	sc->eflags = r->flags;
	sc->cs = (uint16_t)r->cs;
	sc->ss = (uint16_t)r->ss;
	sc->fpstate = (struct _fpstate_64 *)fx;

	step_end_slot(slot, CREST_STEP_SIGRETURN);
	return &f->uc;
}

/* struct sock_fprog: a classic BPF program for seccomp(2) */
struct crest_fprog {
	uint16_t len;
	uint16_t pad[3];
	const void *filter;
};

/*
 * The thread's seccomp state, last of all: its filters in the order the
 * thread had installed them (filters run newest first, and the order
 * decides which of two ERRNO results a call gets), or strict mode. No
 * call of the agent's after this may be one the filters refuse: only
 * rt_sigreturn comes, and, when the engine finishes, its injected munmap,
 * which the engine's ptrace option PTRACE_O_SUSPEND_SECCOMP lets through
 * (finish.go). The credentials are the task's own by now: a filter needs
 * no_new_privs or CAP_SYS_ADMIN, which the plan checked. Strict mode also
 * turns off the TSC, and with it the vDSO's clock: the step ends before.
 */
static void restore_seccomp(struct crest_slot *slot, const struct crest_thread *th)
{
	const struct crest_seccomp_filter *f = plan_ptr(th->filters_off);
	uint32_t i;
	long ret;

	step_begin_slot(slot, CREST_STEP_SECCOMP);
	for (i = 0; th->seccomp_mode == CREST_SECCOMP_FILTER && i < th->nr_filters; i++, f++) {
		struct crest_fprog prog = { .len = (uint16_t)f->len, .filter = plan_ptr(f->prog_off) };

		ret = sys_seccomp(SECCOMP_SET_MODE_FILTER, f->flags, &prog);
		if (ret < 0)
			task_fail_slot(slot, CREST_STEP_SECCOMP, ret);
	}
	step_end_slot(slot, CREST_STEP_SECCOMP);
	if (th->seccomp_mode == CREST_SECCOMP_STRICT) {
		ret = sys_prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0);
		if (ret < 0)
			task_fail_slot(slot, CREST_STEP_SECCOMP, ret);
	}
}

/*
 * After the switch to COMPLETE: the root trades the parent-death signal
 * that guarded the restore (fork.c) for its own (usually none), every
 * thread counts out (only when the engine does not finish:
 * leave_complete), takes its seccomp state and returns into its own
 * registers. Nothing else happens here: the engine steps each thread
 * through these calls with ptrace (finish.go), two stops per call.
 */
/*
 * O_ASYNC off and on again at the task's own fds that have it: the engine
 * set it, with the owner, on its copies of the files, and the kernel
 * names in SIGIO's si_fd the fd of the last to turn it on.
 */
static void rearm_async(struct crest_slot *slot)
{
	const struct crest_fd *fds = plan_ptr(agent.task->fds_off);
	uint32_t i;
	long fl, ret;

	for (i = 0; i < agent.task->nr_fds; i++) {
		if (!fds[i].async)
			continue;
		fl = sys_fcntl(fds[i].fd, F_GETFL, 0);
		ret = fl < 0 ? fl : sys_fcntl(fds[i].fd, F_SETFL, fl & ~O_ASYNC);
		if (ret >= 0)
			ret = sys_fcntl(fds[i].fd, F_SETFL, fl | O_ASYNC);
		if (ret < 0)
			task_fail_slot(slot, CREST_STEP_SIGRETURN, ret);
	}
}

__attribute__((noreturn)) void sigreturn_now(struct crest_slot *slot, const struct crest_thread *th,
					     struct crest_ucontext *uc)
{
	long ret;

	if (agent.task->parent < 0 && th->index == 0) {
		/* the engine's guard goes, the image's signal comes */
		ret = sys_prctl(PR_SET_PDEATHSIG, (unsigned long)th->pdeath_sig, 0, 0, 0);
		if (ret < 0)
			task_fail_slot(slot, CREST_STEP_SIGRETURN, ret);
	}
	leave_complete(slot);
	if (th->index == 0)
		rearm_async(slot);
	/* before seccomp, whose filters might refuse it */
	if (!th->sched_early)
		restore_sched(slot, th);
	if (th->seccomp_mode != CREST_SECCOMP_DISABLED)
		restore_seccomp(slot, th);
	asm volatile("mov %0, %%rsp\n\t"
		     "mov $15, %%eax\n\t"	/* __NR_rt_sigreturn */
		     "syscall\n\t"
		     "ud2"
		     :
		     : "r"(uc)
		     : "memory");
	__builtin_unreachable();
}

/*
 * A syscall instruction at a known place in the restorer: once a thread is
 * back in its own code, the engine (ptrace) points it here to unmap the
 * crest area, and restores its registers at the syscall's exit stop, so the
 * instruction after it, gone with the area, never runs.
 */
asm(".text\n"
    ".global crest_syscall\n"
    ".hidden crest_syscall\n"
    ".type crest_syscall, @function\n"
    "crest_syscall:\n"
    "	syscall\n"
    "	ud2\n");
