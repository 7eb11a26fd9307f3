// SPDX-License-Identifier: Apache-2.0
/*
 * tracee.c - a stand-in for a crest restore, for the monitor's tests.
 *
 * It plays the engine and a tree of four tasks and six threads in a new pid
 * namespace, with CRIU's stage barrier in a shared page at TE_ADDR:
 *
 *   engine  nr_in_progress = participants; FUTEX_WAKE_OP(start, SET stage)
 *           then waits until nr_in_progress is 0 (or a timeout)
 *   thread  FUTEX_WAKE_OP(nr_in_progress, ADD -1), then FUTEX_WAIT on start
 *           while start == stage; at COMPLETE only the decrement
 *
 *   1 (root, ns pid 1) --- 5 (+ thread 6)
 *                      `-- 7 --- 9 (+ thread 10)
 *
 * Tasks are clone3d with set_tid, threads too. In PREPARE_NAMESPACES the
 * root setns()es into the uts namespace it is in. argv[1] names a fault:
 *
 *   none         the protocol as it should be
 *   no-set-tid   the root creates task 7 without set_tid (it gets pid 2)
 *   no-wait      task 5 leaves RESTORE_SIGCHLD without waiting for the switch
 *   early-switch the engine switches to RESTORE_CREDS while task 7 has not
 *                arrived at RESTORE_SIGCHLD
 *   wrong-ns     the root joins a fresh uts namespace instead
 *   drop-thread  task 9 does not create thread 10
 *   early-return task 5 waits at RESTORE_SIGCHLD with a short timeout and
 *                goes on when it ends, though start still holds the stage
 *   interrupted  task 5's wait at RESTORE_SIGCHLD is broken off by a
 *                signal (a handler without SA_RESTART) and it goes on
 *
 * With "plain" as argv[2] it uses CRIU's own protocol instead: an atomic
 * decrement then FUTEX_WAKE (futex_dec_and_wake), and a plain store of
 * start then FUTEX_WAKE.
 *
 * It waits for one byte on stdin before starting, so that the test can
 * track it first; it exits 0 once the tree is gone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TE_ADDR 0x5e0000000000ul

enum { ROOT_TASK, PREPARE_NAMESPACES, FORKING, RESTORE, RESTORE_SIGCHLD, RESTORE_CREDS, COMPLETE };

struct task_entries {
	int32_t start;
	uint32_t nr_in_progress;
};

static struct task_entries *te = (void *)TE_ADDR;
static const char *fault = "none";
static int plain;	/* CRIU's protocol: atomics, then a plain FUTEX_WAKE */

static int is(const char *f)
{
	return strcmp(fault, f) == 0;
}

static void die(const char *what)
{
	fprintf(stderr, "tracee %d: %s: %s\n", getpid(), what, strerror(errno));
	_exit(111);
}

static long futex(void *uaddr, int op, uint32_t val, void *utime, void *uaddr2, uint32_t val3)
{
	return syscall(SYS_futex, uaddr, op, val, utime, uaddr2, val3);
}

#define OP(op, oparg, cmp, cmparg) \
	((((op) & 0xf) << 28) | (((cmp) & 0xf) << 24) | (((oparg) & 0xfff) << 12) | ((cmparg) & 0xfff))

static void switch_stage(int stage, int participants)
{
	__atomic_store_n(&te->nr_in_progress, participants, __ATOMIC_SEQ_CST);
	if (plain) {
		__atomic_store_n(&te->start, stage, __ATOMIC_SEQ_CST);
		if (futex(&te->start, FUTEX_WAKE, INT_MAX, NULL, NULL, 0) < 0)
			die("switch");
		return;
	}
	if (futex(&te->start, FUTEX_WAKE_OP, INT_MAX, 0, &te->start,
		  OP(FUTEX_OP_SET, stage, FUTEX_OP_CMP_EQ, 0)) < 0)
		die("switch");
}

/* the engine: wait until at most left participants are missing */
static void wait_stage(uint32_t left)
{
	struct timespec ts = { 0, 20 * 1000 * 1000 };
	int rounds = 25;	/* 0.5s: a fault must not hang the test */

	for (;;) {
		uint32_t n = __atomic_load_n(&te->nr_in_progress, __ATOMIC_SEQ_CST);

		if (n <= left || (int32_t)n < 0 || rounds-- == 0) {
			if (getenv("TRACEE_DEBUG"))
				fprintf(stderr, "stage %d: %d left, %d rounds left\n", te->start, n, rounds);
			return;
		}
		futex(&te->nr_in_progress, FUTEX_WAIT, n, &ts, NULL, 0);
	}
}

static void arrive(void)
{
	if (plain) {
		__atomic_sub_fetch(&te->nr_in_progress, 1, __ATOMIC_SEQ_CST);
		if (futex(&te->nr_in_progress, FUTEX_WAKE, INT_MAX, NULL, NULL, 0) < 0)
			die("arrive");
		return;
	}
	if (futex(&te->nr_in_progress, FUTEX_WAKE_OP, INT_MAX, 0, &te->nr_in_progress,
		  OP(FUTEX_OP_ADD, -1, FUTEX_OP_CMP_EQ, 0)) < 0)
		die("arrive");
}

static void on_alarm(int sig)
{
	(void)sig;
}

/*
 * early-return and interrupted: one wait that ends before the switch, by
 * its timeout or by a signal to this thread, and no other.
 */
static void wait_once_and_go_on(int stage)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };

	if (is("interrupted")) {
		struct sigaction sa = { .sa_handler = on_alarm };	/* no SA_RESTART */
		struct sigevent sev = { .sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGALRM };
		struct itimerspec its = { .it_value = ts };
		timer_t timer;

		sev._sigev_un._tid = syscall(SYS_gettid);
		if (sigaction(SIGALRM, &sa, NULL) < 0 || timer_create(CLOCK_MONOTONIC, &sev, &timer) < 0 ||
		    timer_settime(timer, 0, &its, NULL) < 0)
			die("the timer");
		futex(&te->start, FUTEX_WAIT, stage, NULL, NULL, 0);
		return;
	}
	futex(&te->start, FUTEX_WAIT, stage, &ts, NULL, 0);
}

/* a participant: count out of stage and wait for the switch */
static void finish_stage(int stage)
{
	struct timespec ts = { 1, 0 };
	int rounds = 3;

	arrive();
	if (is("no-wait") && stage == RESTORE_SIGCHLD && syscall(SYS_gettid) == 5) {
		/* by then the engine waits for task 7, and the count out
		 * of RESTORE_CREDS that follows wakes it */
		struct timespec d = { 0, 20 * 1000 * 1000 };

		nanosleep(&d, NULL);
		return;
	}
	if ((is("early-return") || is("interrupted")) && stage == RESTORE_SIGCHLD &&
	    syscall(SYS_gettid) == 5) {
		wait_once_and_go_on(stage);
		return;
	}
	while (__atomic_load_n(&te->start, __ATOMIC_SEQ_CST) == stage && rounds-- > 0)
		futex(&te->start, FUTEX_WAIT, stage, &ts, NULL, 0);
}

static void late_stages(void)
{
	/*
	 * early-switch: task 7 comes late. no-wait, early-return and
	 * interrupted: so does task 7, so that task 5's count out of
	 * RESTORE_CREDS surely falls before the switch (were task 5 the last
	 * to arrive, the engine could switch first).
	 */
	if ((is("early-switch") || is("no-wait") || is("early-return") || is("interrupted")) &&
	    getpid() == 7 && syscall(SYS_gettid) == 7) {
		struct timespec d = { 0, 100 * 1000 * 1000 };

		nanosleep(&d, NULL);
	}
	finish_stage(RESTORE_SIGCHLD);
	finish_stage(RESTORE_CREDS);
	arrive();	/* COMPLETE: count out, no wait */
}

static pid_t fork_task(pid_t pid, unsigned long flags)
{
	pid_t set_tid[1] = { pid };
	struct clone_args args = {
		.flags = flags,
		.exit_signal = SIGCHLD,
		.set_tid = (uintptr_t)set_tid,
		.set_tid_size = 1,
	};

	if (pid == 0) {
		args.set_tid = 0;
		args.set_tid_size = 0;
	}
	return syscall(SYS_clone3, &args, sizeof(args));
}

static void thread_main(void *arg)
{
	(void)arg;
	finish_stage(RESTORE);
	late_stages();
}

/* the tid of a task's thread until it has exited (CLONE_CHILD_CLEARTID) */
static pid_t thread_tid;

/* clone3 a thread with set_tid; it runs fn(arg) on stack and exits */
static long fork_thread(pid_t tid, void (*fn)(void *), void *arg)
{
	static char stacks[4][64 << 10] __attribute__((aligned(16)));
	static int next;
	pid_t set_tid[1] = { tid };
	struct clone_args args = {
		.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
			 CLONE_SYSVSEM | CLONE_CHILD_CLEARTID,
		.child_tid = (uintptr_t)&thread_tid,
		.stack = (uintptr_t)stacks[next++],
		.stack_size = sizeof(stacks[0]),
		.set_tid = (uintptr_t)set_tid,
		.set_tid_size = 1,
	};
	register void *r12 asm("r12") = fn;
	register void *r13 asm("r13") = arg;
	long ret;

	thread_tid = tid;
	asm volatile("syscall\n\t"
		     "test %%rax, %%rax\n\t"
		     "jnz 1f\n\t"
		     "mov %%r13, %%rdi\n\t"
		     "call *%%r12\n\t"
		     "mov $60, %%eax\n\t"
		     "xor %%edi, %%edi\n\t"
		     "syscall\n\t"
		     "1:\n\t"
		     : "=a"(ret)
		     : "a"(SYS_clone3), "D"(&args), "S"(sizeof(args)), "r"(r12), "r"(r13)
		     : "rcx", "r11", "memory");
	return ret;
}

static void reap_children(void)
{
	while (wait(NULL) > 0 || errno == EINTR)
		;
}

/* a task below the root: 5, 7 or 9 */
static void task(pid_t pid)
{
	if (pid == 7 && fork_task(9, 0) == 0) {
		task(9);
		_exit(0);
	}
	finish_stage(FORKING);
	if (pid == 5 && fork_thread(6, thread_main, NULL) < 0)
		die("thread 6");
	if (pid == 9 && !is("drop-thread") && fork_thread(10, thread_main, NULL) < 0)
		die("thread 10");
	finish_stage(RESTORE);
	late_stages();
	/* exit_group would take the thread before it counted out of COMPLETE */
	for (pid_t t; (t = __atomic_load_n(&thread_tid, __ATOMIC_SEQ_CST)) != 0;)
		futex(&thread_tid, FUTEX_WAIT, t, NULL, NULL, 0);
	reap_children();
}

static void root(void)
{
	int fd;

	finish_stage(ROOT_TASK);
	if (is("wrong-ns") && unshare(CLONE_NEWUTS) < 0)
		die("unshare uts");
	fd = open("/proc/self/ns/uts", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open /proc/self/ns/uts");
	if (setns(fd, CLONE_NEWUTS) < 0)
		die("setns");
	close(fd);
	finish_stage(PREPARE_NAMESPACES);

	if (fork_task(5, 0) == 0) {
		task(5);
		_exit(0);
	}
	if (fork_task(is("no-set-tid") ? 0 : 7, 0) == 0) {
		task(7);
		_exit(0);
	}
	finish_stage(FORKING);
	finish_stage(RESTORE);
	late_stages();
	reap_children();
}

int main(int argc, char **argv)
{
	static const int participants[] = { 1, 1, 4, 6, 6, 6, 6 };
	char go;
	pid_t pid;
	int status;

	if (argc > 1)
		fault = argv[1];
	plain = argc > 2 && strcmp(argv[2], "plain") == 0;
	if (read(0, &go, 1) != 1)
		die("read the go byte");
	if (mmap(te, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
		 -1, 0) != te)
		die("mmap task_entries");
	te->start = -2;

	switch_stage(ROOT_TASK, 1);
	pid = fork_task(1, CLONE_NEWPID);
	if (pid < 0)
		die("clone3 the root");
	if (pid == 0) {
		root();
		_exit(0);
	}
	for (int st = ROOT_TASK; st < COMPLETE; st++) {
		if (is("early-switch") && st == RESTORE_SIGCHLD)
			wait_stage(1);
		else
			wait_stage(0);
		switch_stage(st + 1, participants[st + 1]);
	}
	wait_stage(0);
	if (waitpid(pid, &status, 0) != pid)
		die("waitpid root");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "tracee: root ended with status %#x\n", status);
		return 1;
	}
	return 0;
}
