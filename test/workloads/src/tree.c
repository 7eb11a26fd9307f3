/*
 * tree - a pid namespace init (session leader) with 3 children; child2
 * makes its own process group. Each process appends "<role> N" to
 * out-<role>.log every 10 ms; the init reaps children and would log
 * "init reaped ..." (a correct checkpoint never makes that happen).
 *
 * build: gcc -static -O2 -o tree tree.c
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void run(const char *role, int is_init)
{
	char name[64], line[128];
	snprintf(name, sizeof name, "out-%s.log", role);
	int fd = open(name, O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd < 0)
		_exit(2);
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (unsigned long n = 1;; n++) {
		int len = snprintf(line, sizeof line, "%s %lu\n", role, n);
		if (write(fd, line, len) != len)
			_exit(4);
		if (is_init) {
			int st;
			pid_t pid;
			while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
				len = snprintf(line, sizeof line, "init reaped %d status %d\n", (int)pid, st);
				if (write(fd, line, len) != len)
					_exit(4);
			}
		}
		nanosleep(&ts, NULL);
	}
}

int main(void)
{
	for (int i = 1; i <= 3; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			char role[16];
			if (i == 2)
				setpgid(0, 0);
			snprintf(role, sizeof role, "child%d", i);
			run(role, 0);
		}
	}
	run("init", 1);
	return 0;
}
