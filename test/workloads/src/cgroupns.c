/*
 * cgroupns - a pid namespace init with a second thread and one child, for
 * the cgroup namespace tests (restore/cgroupns_test.go,
 * dump/cgroup_test.go), which start it in a cgroup namespace of its own
 * (unshare -C, in cgroups of the test's) and move the child deeper.
 * Every 10 ms each task and the thread appends "<role> N" to
 * out-<role>.log and writes its cgroups as it sees them
 * (/proc/thread-self/cgroup: paths from its cgroup namespace's root) to
 * cg-<role>.txt, through a rename, so that a reader never sees half of
 * it. With the argument "nested" the child first unshares a cgroup
 * namespace of its own (a tree crest and CRIU refuse to dump).
 *
 * build: gcc -static -O2 -pthread -o cgroupns cgroupns.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#include "workload.h"

/* copies /proc/thread-self/cgroup to cg-ROLE.txt */
static void report(const char *role)
{
	char buf[4096], tmp[64], name[64];
	int in = open("/proc/thread-self/cgroup", O_RDONLY), out;
	ssize_t n;

	if (in < 0)
		_exit(5);
	n = read(in, buf, sizeof buf);
	close(in);
	if (n < 0)
		_exit(5);
	snprintf(tmp, sizeof tmp, ".cg-%s.tmp", role);
	snprintf(name, sizeof name, "cg-%s.txt", role);
	out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out < 0 || write(out, buf, n) != n || close(out) || rename(tmp, name))
		_exit(5);
}

static void run(const char *role)
{
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[64];
	int fd = open_log(role);

	for (unsigned long n = 1;; n++) {
		report(role);
		snprintf(line, sizeof line, "%s %lu\n", role, n);
		say(fd, line);
		nanosleep(&ts, NULL);
	}
}

static void *thread(void *arg)
{
	(void)arg;
	run("thread");
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t;
	pid_t pid = fork();

	if (pid < 0)
		return 1;
	if (pid == 0) {
		if (argc > 1 && !strcmp(argv[1], "nested") && unshare(CLONE_NEWCGROUP))
			_exit(6);
		run("child");
	}
	if (pthread_create(&t, NULL, thread, NULL))
		return 1;
	run("init");
	return 0;
}
