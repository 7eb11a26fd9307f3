/*
 * zombie - a pid namespace init (session leader) with two zombie children,
 * for the dump and restore of dead tasks (TASK_DEAD):
 *   child1 exits at once with status 7;
 *   child2 is killed at once by SIGTERM (it raises it);
 *   child3 runs and appends "child3 N" to out-child3.log every 10 ms.
 * The init never waits for them on its own: it appends "init N" to
 * out-init.log every 10 ms, and once a file named "reap" appears in its
 * working directory it waits for every child it can (WNOHANG), once,
 * logging each as "reaped PID status S" (S the wait status) to
 * out-reaped.log, then goes on counting.
 *
 * build: gcc -static -O2 -o zombie zombie.c
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static const struct timespec tick = { 0, 10 * 1000 * 1000 };

static void child3(void)
{
	char line[128];
	int fd = open_log("child3");

	for (unsigned long n = 1;; n++) {
		snprintf(line, sizeof line, "child3 %lu\n", n);
		say(fd, line);
		nanosleep(&tick, NULL);
	}
}

/* reap waits for every child that has ended, and logs each. */
static void reap(void)
{
	char line[128];
	int fd = open_log("reaped");
	pid_t pid;
	int st;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		snprintf(line, sizeof line, "reaped %d status %d\n", (int)pid, st);
		say(fd, line);
	}
	close(fd);
}

int main(void)
{
	char line[128];
	int fd, reaped = 0;
	pid_t pid;

	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0)
		_exit(7);
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		raise(SIGTERM);
		_exit(5); /* not reached: SIGTERM's default action ends it */
	}
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0)
		child3();

	fd = open_log("init");
	for (unsigned long n = 1;; n++) {
		snprintf(line, sizeof line, "init %lu\n", n);
		say(fd, line);
		if (!reaped && access("reap", F_OK) == 0) {
			reap();
			reaped = 1;
		}
		nanosleep(&tick, NULL);
	}
	return 0;
}
