/*
 * demo - crest's built-in demo workload: a small tree with threads and a
 * pipe. The init (pid 1 of its namespace) runs two threads: a worker that
 * counts, and the main thread that every 20 ms writes "msg N\n" into a pipe
 * and "tick N worker W\n" into parent.log. Its child reads the pipe every
 * 50 ms, so messages sit in the pipe at any moment, and appends them to
 * child.log. Both check their sequences: a gap, a repeat or a worker that
 * stopped counting for 200 ms appends a CORRUPT line and exits 3.
 *
 * build: gcc -static -O2 -pthread -o demo demo.c
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_ulong worked;

static void logf_(int fd, const char *s, int n)
{
	if (write(fd, s, n) != n)
		_exit(4);
}

static void *worker(void *arg)
{
	(void)arg;
	const struct timespec ts = { 0, 5 * 1000 * 1000 };
	for (;;) {
		atomic_fetch_add(&worked, 1);
		nanosleep(&ts, NULL);
	}
	return NULL;
}

static void child(int rfd)
{
	int out = open("child.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (out < 0)
		_exit(2);
	const struct timespec ts = { 0, 50 * 1000 * 1000 };
	char buf[4096], line[96];
	size_t have = 0;
	unsigned long want = 1;
	for (;;) {
		ssize_t n = read(rfd, buf + have, sizeof buf - have - 1);
		if (n <= 0)
			_exit(4);
		have += n;
		char *p = buf, *nl;
		while ((nl = memchr(p, '\n', buf + have - p))) {
			unsigned long got;
			*nl = 0;
			if (sscanf(p, "msg %lu", &got) != 1 || got != want) {
				int len = snprintf(line, sizeof line, "CORRUPT want msg %lu got '%s'\n", want, p);
				logf_(out, line, len);
				_exit(3);
			}
			logf_(out, line, snprintf(line, sizeof line, "msg %lu\n", got));
			want++;
			p = nl + 1;
		}
		have = buf + have - p;
		memmove(buf, p, have);
		nanosleep(&ts, NULL);
	}
}

int main(void)
{
	int p[2];
	if (pipe(p) < 0)
		return 1;
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		close(p[1]);
		child(p[0]);
	}
	close(p[0]);
	int out = open("parent.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (out < 0)
		return 2;
	pthread_t th;
	if (pthread_create(&th, NULL, worker, NULL))
		return 2;
	const struct timespec ts = { 0, 20 * 1000 * 1000 };
	char line[96];
	unsigned long last = 0;
	for (unsigned long tick = 1;; tick++) {
		logf_(p[1], line, snprintf(line, sizeof line, "msg %lu\n", tick));
		unsigned long w = atomic_load(&worked);
		/*
		 * Every 10 ticks (200 ms, 40 of the worker's sleeps) the worker
		 * must have moved on; a shorter window would blame it for a
		 * scheduling delay, e.g. right after a restore.
		 */
		if (tick % 10 == 0) {
			if (tick > 10 && w == last) {
				logf_(out, line, snprintf(line, sizeof line, "CORRUPT tick %lu: worker stopped at %lu\n", tick, w));
				return 3;
			}
			last = w;
		}
		logf_(out, line, snprintf(line, sizeof line, "tick %lu worker %lu\n", tick, w));
		nanosleep(&ts, NULL);
	}
}
