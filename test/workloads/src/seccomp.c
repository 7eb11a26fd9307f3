/*
 * seccomp - a pid namespace init (session leader) with three children in
 * seccomp, for the dump and restore of seccomp state:
 *   filter: filter A (uname fails with EPERM), then a thread, then, in the
 *     main thread only, filter B (uname fails with EXDEV, getpgrp with
 *     EACCES). Filters run newest first and the first ERRNO wins, so the
 *     main thread sees EXDEV only if A and B come back in their order; the
 *     thread has A alone and sees EPERM, and a working getpgrp.
 *   tsync: no_new_privs, a thread, then filter C (getpgrp fails with
 *     ENOTTY) with SECCOMP_FILTER_FLAG_TSYNC: both threads have it.
 *   strict: SECCOMP_MODE_STRICT (read, write, _exit and sigreturn only):
 *     it reads a byte the init writes to a pipe every 10 ms and logs a
 *     line for each.
 * Every process and thread appends "<role> N" to out-<role>.log every
 * 10 ms, after checking what its filters make of uname and getpgrp; a
 * wrong answer is logged as CORRUPT and ends the process (exit 3).
 *
 * build: gcc -static -O2 -pthread -o seccomp seccomp.c
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static const struct timespec tick = { 0, 10 * 1000 * 1000 };

/* A filter that makes syscall nr fail with errno err, and lets the rest be. */
static void deny(int nr, int err, unsigned int flags)
{
	struct sock_filter prog[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned int)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned int)err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog fprog = { .len = sizeof prog / sizeof prog[0], .filter = prog };

	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fprog) != 0)
		_exit(5);
}

/* What each thread expects of uname and getpgrp: 0 works, else the errno. */
struct role {
	const char *name;
	int uname_err, getpgrp_err;
};

/* The result of a raw syscall as 0 or its errno. */
static int outcome(long ret)
{
	return ret < 0 ? errno : 0;
}

static void run(const struct role *r)
{
	char line[128];
	struct utsname u;
	int fd = open_log(r->name);

	for (unsigned long n = 1;; n++) {
		int ue = outcome(syscall(SYS_uname, &u));
		int ge = outcome(syscall(SYS_getpgrp));

		if (ue != r->uname_err || ge != r->getpgrp_err) {
			snprintf(line, sizeof line, "CORRUPT %s: uname %d getpgrp %d, want %d %d\n", r->name, ue, ge,
				 r->uname_err, r->getpgrp_err);
			say(fd, line);
			_exit(3);
		}
		snprintf(line, sizeof line, "%s %lu\n", r->name, n);
		say(fd, line);
		nanosleep(&tick, NULL);
	}
}

static void *thread_main(void *arg)
{
	run(arg);
	return NULL;
}

static struct role filter_main = { "filter", EXDEV, EACCES };
static struct role filter_thread = { "filterthread", EPERM, 0 };
static struct role tsync_main = { "tsync", 0, ENOTTY };
static struct role tsync_thread = { "tsyncthread", 0, ENOTTY };

static void filter_child(void)
{
	pthread_t th;

	deny(SYS_uname, EPERM, 0);
	if (pthread_create(&th, NULL, thread_main, &filter_thread))
		_exit(6);
	deny(SYS_uname, EXDEV, 0);
	/* the thread must not see getpgrp fail: this one is ours alone */
	deny(SYS_getpgrp, EACCES, 0);
	run(&filter_main);
}

static pthread_mutex_t started = PTHREAD_MUTEX_INITIALIZER;

static void *tsync_thread_main(void *arg)
{
	/* wait until the main thread installed the filter for both */
	pthread_mutex_lock(&started);
	pthread_mutex_unlock(&started);
	run(arg);
	return NULL;
}

static void tsync_child(void)
{
	pthread_t th;

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		_exit(7);
	pthread_mutex_lock(&started);
	if (pthread_create(&th, NULL, tsync_thread_main, &tsync_thread))
		_exit(6);
	deny(SYS_getpgrp, ENOTTY, SECCOMP_FILTER_FLAG_TSYNC);
	pthread_mutex_unlock(&started);
	run(&tsync_main);
}

static void strict_child(int rfd)
{
	char line[64], c;
	int fd = open_log("strict");

	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0))
		_exit(8);
	/* read and write only from here on; exit(2), not exit_group(2) */
	for (unsigned long n = 1;; n++) {
		if (read(rfd, &c, 1) != 1)
			syscall(SYS_exit, 9);
		snprintf(line, sizeof line, "strict %lu\n", n);
		if (write(fd, line, strlen(line)) != (ssize_t)strlen(line))
			syscall(SYS_exit, 4);
	}
}

int main(void)
{
	int p[2];
	pid_t pid;

	if (pipe(p))
		return 1;
	pid = fork();
	if (pid == 0) {
		close(p[0]);
		close(p[1]);
		filter_child();
	}
	pid = fork();
	if (pid == 0) {
		close(p[0]);
		close(p[1]);
		tsync_child();
	}
	pid = fork();
	if (pid == 0) {
		close(p[1]);
		strict_child(p[0]);
	}
	close(p[0]);
	{
		struct role r = { "init", 0, 0 };
		char line[64];
		int fd = open_log(r.name);

		for (unsigned long n = 1;; n++) {
			snprintf(line, sizeof line, "init %lu\n", n);
			say(fd, line);
			if (write(p[1], "x", 1) != 1)
				_exit(4);
			nanosleep(&tick, NULL);
		}
	}
	return 0;
}
