/*
 * cgroups - a pid namespace init with two children, for the cgroup tests
 * (restore/cgroup_test.go, dump/cgroup_test.go), which put the tasks into
 * cgroups of their own. Each task holds memory it filled (the init 8 MiB,
 * each child 4 MiB), so that a test can see where it is charged, and
 * appends "<role> N" to out-<role>.log every 10 ms, after checking a page
 * of it (a mismatch logs CORRUPT and exits 3). child2 has a second
 * thread, which logs to out-thread.log.
 *
 * build: gcc -static -O2 -pthread -o cgroups cgroups.c
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include "workload.h"

#define MiB (1024 * 1024)

static void fill(unsigned char *mem, size_t size, unsigned char seed)
{
	for (size_t i = 0; i < size; i++)
		mem[i] = (unsigned char)(seed + i / 4096);
}

static void run(const char *role, size_t size, unsigned char seed)
{
	unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[128];
	int fd = open_log(role);

	if (mem == MAP_FAILED)
		_exit(1);
	fill(mem, size, seed);
	for (unsigned long n = 1;; n++) {
		size_t page = n % (size / 4096);

		if (mem[page * 4096] != (unsigned char)(seed + page) ||
		    mem[page * 4096 + 4095] != (unsigned char)(seed + page)) {
			snprintf(line, sizeof line, "CORRUPT %s page %zu\n", role, page);
			say(fd, line);
			_exit(3);
		}
		snprintf(line, sizeof line, "%s %lu\n", role, n);
		say(fd, line);
		nanosleep(&ts, NULL);
	}
}

static void *thread(void *arg)
{
	(void)arg;
	run("thread", 1 * MiB, 7);
	return NULL;
}

int main(void)
{
	for (int i = 1; i <= 2; i++) {
		pid_t pid = fork();

		if (pid < 0)
			return 1;
		if (pid == 0) {
			char role[16];
			pthread_t t;

			snprintf(role, sizeof role, "child%d", i);
			if (i == 2 && pthread_create(&t, NULL, thread, NULL))
				_exit(1);
			run(role, 4 * MiB, (unsigned char)(i * 50));
		}
	}
	run("init", 8 * MiB, 1);
	return 0;
}
