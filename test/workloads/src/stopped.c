/*
 * stopped - a pid namespace init (session leader) with two children that
 * it stops, for the dump and restore of stopped tasks (TASK_STOPPED):
 *   child1, two threads, stopped with SIGSTOP;
 *   child2, the leader of its own process group (not orphaned: its parent
 *   is in another group of the session), stopped with SIGTSTP, which the
 *   kernel ignores for orphaned groups.
 * Every process appends "<role> N" to out-<role>.log every 10 ms (child1's
 * second thread as "thread"). With its fifth line the init stops both, and
 * it writes what waitpid(WUNTRACED | WCONTINUED) tells it to
 * out-events.log: "child1 stopped by 19", "child2 continued".
 *
 * build: gcc -static -O2 -pthread -o stopped stopped.c
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static const struct timespec tick = { 0, 10 * 1000 * 1000 };

static void *count(void *role)
{
	char line[128];
	int fd = open_log(role);

	for (unsigned long n = 1;; n++) {
		snprintf(line, sizeof line, "%s %lu\n", (const char *)role, n);
		say(fd, line);
		nanosleep(&tick, NULL);
	}
	return NULL;
}

int main(void)
{
	pid_t kids[2];
	int events, logfd;
	char line[128];
	unsigned long n;

	for (int i = 0; i < 2; i++) {
		kids[i] = fork();
		if (kids[i] < 0)
			return 1;
		if (kids[i] == 0) {
			pthread_t th;

			if (i == 0 && pthread_create(&th, NULL, count, "thread"))
				_exit(5);
			if (i == 1)
				setpgid(0, 0);
			count(i == 0 ? "child1" : "child2");
		}
	}
	logfd = open_log("init");
	events = open_log("events");
	for (n = 1;; n++) {
		int st;
		pid_t pid;

		snprintf(line, sizeof line, "init %lu\n", n);
		say(logfd, line);
		if (n == 5) {
			kill(kids[0], SIGSTOP);
			kill(kids[1], SIGTSTP);
		}
		while ((pid = waitpid(-1, &st, WNOHANG | WUNTRACED | WCONTINUED)) > 0) {
			const char *who = pid == kids[0] ? "child1" : pid == kids[1] ? "child2" : "other";

			if (WIFSTOPPED(st))
				snprintf(line, sizeof line, "%s stopped by %d\n", who, WSTOPSIG(st));
			else if (WIFCONTINUED(st))
				snprintf(line, sizeof line, "%s continued\n", who);
			else
				snprintf(line, sizeof line, "%s ended with status %d\n", who, st);
			say(events, line);
		}
		nanosleep(&tick, NULL);
	}
	return 0;
}
