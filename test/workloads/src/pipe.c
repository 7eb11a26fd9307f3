/*
 * pipe - a pid namespace init that writes "msg N\n" into a pipe every
 * 10 ms (and "wrote N" to out-parent.log) and a child that reads the pipe
 * every 50 ms, so bytes sit in the pipe at any moment. The child appends
 * what it read to out.log and checks that the messages follow each other
 * without a gap or repeat; on a mismatch it appends "CORRUPT" and exits 3.
 *
 * build: gcc -static -O2 -o pipe pipe.c
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void child(int rfd)
{
	int out = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (out < 0)
		_exit(2);
	const struct timespec ts = { 0, 50 * 1000 * 1000 };
	char buf[4096], line[64];
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
				int len = snprintf(line, sizeof line, "CORRUPT want %lu got '%s'\n", want, p);
				write(out, line, len);
				_exit(3);
			}
			int len = snprintf(line, sizeof line, "msg %lu\n", got);
			if (write(out, line, len) != len)
				_exit(4);
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
	int log = open("out-parent.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (log < 0)
		return 2;
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[64];
	for (unsigned long n = 1;; n++) {
		int len = snprintf(line, sizeof line, "msg %lu\n", n);
		if (write(p[1], line, len) != len)
			return 4;
		len = snprintf(line, sizeof line, "wrote %lu\n", n);
		if (write(log, line, len) != len)
			return 4;
		int st;
		if (waitpid(-1, &st, WNOHANG) > 0) {
			len = snprintf(line, sizeof line, "CORRUPT child exited %d\n", st);
			write(log, line, len);
			return 3;
		}
		nanosleep(&ts, NULL);
	}
}
