/*
 * launch - start a workload as the init (pid 1) of a new pid namespace.
 *
 *   usage: launch [-t] [-n] [-N] [-m] DIR PROG [ARGS...]
 *
 * With -t the workload also gets a time namespace of its own, its clocks
 * ahead of the host's: CLOCK_MONOTONIC by 100000 s, CLOCK_BOOTTIME by
 * 200000 s. With -n it gets UTS and IPC namespaces of its own. With -N it
 * gets a net namespace of its own (only lo in it, down, as the kernel
 * makes it). With -m it gets a mount namespace of its own, a copy of the
 * caller's with every mount made private (unshare -m --propagation
 * private).
 *
 * The launcher unshares the pid namespace and forks; the child (pid 1 of
 * the new namespace) becomes a session leader, enters DIR, sets umask 022,
 * points fds 0-2 at /dev/null, closes every other fd and execs PROG with a
 * fixed environment and default signal dispositions, so that a checkpoint
 * of it holds nothing inherited from the test. The launcher prints the child's host pid and exits without
 * waiting: it is not part of the tree.
 *
 * build: gcc -static -O2 -o launch launch.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static char *const env[] = {
	"PATH=/usr/bin:/bin", "HOME=/", "LC_ALL=C", "TZ=UTC", NULL,
};

int main(int argc, char **argv)
{
	int newtime = 0, newutsipc = 0, newnet = 0, newmnt = 0;

	for (; argc > 1; argv++, argc--) {
		if (strcmp(argv[1], "-t") == 0)
			newtime = 1;
		else if (strcmp(argv[1], "-n") == 0)
			newutsipc = 1;
		else if (strcmp(argv[1], "-N") == 0)
			newnet = 1;
		else if (strcmp(argv[1], "-m") == 0)
			newmnt = 1;
		else
			break;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: launch [-t] [-n] [-N] [-m] DIR PROG [ARGS...]\n");
		return 2;
	}
	if (unshare(CLONE_NEWPID | (newtime ? CLONE_NEWTIME : 0) | (newutsipc ? CLONE_NEWUTS | CLONE_NEWIPC : 0) |
		    (newnet ? CLONE_NEWNET : 0) | (newmnt ? CLONE_NEWNS : 0))) {
		perror("launch: unshare");
		return 1;
	}
	if (newmnt && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) {
		perror("launch: make / private");
		return 1;
	}
	if (newtime) {
		static const char offsets[] = "monotonic 100000 0\nboottime 200000 0\n";
		int fd = open("/proc/self/timens_offsets", O_WRONLY);

		if (fd < 0 || write(fd, offsets, sizeof offsets - 1) != (ssize_t)(sizeof offsets - 1)) {
			perror("launch: /proc/self/timens_offsets");
			return 1;
		}
		close(fd);
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("launch: fork");
		return 1;
	}
	if (pid) {
		printf("%d\n", (int)pid);
		return 0;
	}
	if (setsid() < 0)
		_exit(120);
	if (chdir(argv[1]))
		_exit(121);
	umask(022);
	int nul = open("/dev/null", O_RDWR);
	if (nul < 0)
		_exit(122);
	if (dup2(nul, 0) < 0 || dup2(nul, 1) < 0 || dup2(nul, 2) < 0)
		_exit(123);
	if (syscall(SYS_close_range, 3U, ~0U, 0U))
		_exit(124);
	/*
	 * Signal dispositions and the blocked mask survive execve: start from
	 * the defaults whatever the caller had (make ignores signals 32 and
	 * 33). Raw rt_sigaction, since glibc refuses to touch 32 and 33.
	 */
	struct {
		unsigned long handler, flags, restorer, mask;
	} dfl = { 0 };
	for (int sig = 1; sig <= 64; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execve(argv[2], &argv[2], env);
	_exit(127);
}
