/*
 * procattrs - a pid namespace init (session leader) that is a child
 * subreaper, with one child that has the per-process and per-thread state
 * besides memory, files and signals that a restore must bring back:
 *   - personality ADDR_NO_RANDOMIZE;
 *   - oom_score_adj 321;
 *   - a parent-death signal (SIGUSR1, handled: the child logs it);
 *   - the main thread at nice 7 under SCHED_BATCH, its second thread at
 *     nice 3 under SCHED_IDLE (both per thread).
 * Every process and thread appends "<role> N" to out-<role>.log every
 * 10 ms, after checking its own state (personality, /proc/self/
 * oom_score_adj, PR_GET_PDEATHSIG, getpriority and sched_getscheduler of
 * the calling thread, PR_GET_CHILD_SUBREAPER in the init); a change is
 * logged as CORRUPT and ends the process (exit 3).
 *
 * build: gcc -static -O2 -pthread -o procattrs procattrs.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static const struct timespec tick = { 0, 10 * 1000 * 1000 };
static volatile sig_atomic_t pdeath;

static void corrupt(int fd, const char *role, const char *what, long got, long want)
{
	char line[160];

	snprintf(line, sizeof line, "CORRUPT %s: %s %ld, want %ld\n", role, what, got, want);
	say(fd, line);
	_exit(3);
}

static long oom_score_adj(void)
{
	char buf[32] = "";
	int fd = open("/proc/self/oom_score_adj", O_RDONLY);

	if (fd < 0 || read(fd, buf, sizeof buf - 1) <= 0)
		return -100000;
	close(fd);
	return strtol(buf, NULL, 10);
}

/* What a thread of the child checks of itself. */
struct want {
	const char *role;
	int nice, policy;
};

static void child_checks(int fd, const struct want *w)
{
	int sig = 0;

	if (personality(0xffffffff) != ADDR_NO_RANDOMIZE)
		corrupt(fd, w->role, "personality", personality(0xffffffff), ADDR_NO_RANDOMIZE);
	if (oom_score_adj() != 321)
		corrupt(fd, w->role, "oom_score_adj", oom_score_adj(), 321);
	if (prctl(PR_GET_PDEATHSIG, &sig) != 0 || sig != (w->policy == SCHED_BATCH ? SIGUSR1 : 0))
		corrupt(fd, w->role, "pdeath signal", sig, w->policy == SCHED_BATCH ? SIGUSR1 : 0);
	if (getpriority(PRIO_PROCESS, 0) != w->nice)
		corrupt(fd, w->role, "nice", getpriority(PRIO_PROCESS, 0), w->nice);
	if (sched_getscheduler(0) != w->policy)
		corrupt(fd, w->role, "policy", sched_getscheduler(0), w->policy);
	if (pdeath)
		corrupt(fd, w->role, "parent-death signals", pdeath, 0);
}

static void count(const struct want *w)
{
	char line[64];
	int fd = open_log(w->role);

	for (unsigned long n = 1;; n++) {
		child_checks(fd, w);
		snprintf(line, sizeof line, "%s %lu\n", w->role, n);
		say(fd, line);
		nanosleep(&tick, NULL);
	}
}

static void on_usr1(int sig)
{
	(void)sig;
	pdeath++;
}

static const struct want child_main = { "child", 7, SCHED_BATCH };
static const struct want child_thread = { "thread", 3, SCHED_IDLE };

static void *thread_main(void *arg)
{
	struct sched_param sp = { 0 };

	(void)arg;
	/* nice and policy are the calling thread's on Linux */
	if (setpriority(PRIO_PROCESS, 0, child_thread.nice) || sched_setscheduler(0, SCHED_IDLE, &sp))
		_exit(6);
	count(&child_thread);
	return NULL;
}

int main(void)
{
	pid_t pid;

	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))
		return 1;
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		struct sched_param sp = { 0 };
		pthread_t th;
		int fd;

		signal(SIGUSR1, on_usr1);
		if (prctl(PR_SET_PDEATHSIG, SIGUSR1, 0, 0, 0) || personality(ADDR_NO_RANDOMIZE) < 0)
			_exit(5);
		fd = open("/proc/self/oom_score_adj", O_WRONLY);
		if (fd < 0 || write(fd, "321", 3) != 3)
			_exit(5);
		close(fd);
		if (pthread_create(&th, NULL, thread_main, NULL))
			_exit(5);
		if (setpriority(PRIO_PROCESS, 0, child_main.nice) || sched_setscheduler(0, SCHED_BATCH, &sp))
			_exit(6);
		count(&child_main);
	}
	{
		char line[64];
		int fd = open_log("init"), sub = 0;

		for (unsigned long n = 1;; n++) {
			if (prctl(PR_GET_CHILD_SUBREAPER, &sub) != 0 || sub != 1)
				corrupt(fd, "init", "child subreaper", sub, 1);
			snprintf(line, sizeof line, "init %lu\n", n);
			say(fd, line);
			nanosleep(&tick, NULL);
		}
	}
	return 0;
}
