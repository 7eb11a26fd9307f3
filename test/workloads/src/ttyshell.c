/*
 * ttyshell - run a command as a job on a terminal, as an interactive shell
 * with job control does.
 *
 *   usage: ttyshell [-p] DIR TTY STATUS PROG [ARGS...]
 *
 * The shell becomes a session leader, opens TTY (the slave of a pty the
 * test made) as its controlling terminal (TIOCSCTTY) and on fds 0-2, and
 * forks the job: the job leads a process group of its own, which the
 * shell puts in the terminal's foreground, enters DIR and execs PROG with a
 * fixed environment and default signal dispositions. The shell writes
 * "job PID\n" to STATUS, then waits for the job and appends how it ended
 * ("exit N\n" or "signal N\n"); afterwards it stays, holding the session
 * and the terminal as a shell does, until it is killed. It never takes the
 * terminal's foreground back: a job restored detached stays in front.
 * Fds above 2 are closed at the exec of PROG, which may be one of them
 * (/proc/self/fd/3).
 *
 * With -p the job is PROG in a pid namespace of its own, as a user types
 * `unshare --fork --pid PROG`: the job's process (the group leader)
 * unshares CLONE_NEWPID and forks PROG, pid 1 there, whose group and
 * session leaders are outside its namespace (getsid and getpgrp answer
 * 0). The leader ignores the terminal's SIGINT and SIGQUIT and SIGTERM,
 * waits for PROG and ends as it did (its exit status, or the same
 * signal), as unshare does.
 *
 * build: gcc -static -O2 -o ttyshell ttyshell.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static char *const env[] = {
	"PATH=/usr/bin:/bin", "HOME=/", "LC_ALL=C", "TZ=UTC", NULL,
};

static void note(const char *path, const char *fmt, int n)
{
	char line[64];
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	int len = snprintf(line, sizeof line, fmt, n);

	if (fd < 0 || write(fd, line, len) != len)
		_exit(2);
	close(fd);
}

/* run_in_new_pidns makes the rest of the job, PROG, pid 1 of a new pid
 * namespace, and ends as PROG does */
static void run_in_new_pidns(void)
{
	if (unshare(CLONE_NEWPID))
		_exit(122);
	pid_t init = fork();
	if (init < 0)
		_exit(123);
	if (init == 0)
		return;
	signal(SIGINT, SIG_IGN);
	signal(SIGQUIT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	int st;
	while (waitpid(init, &st, 0) < 0)
		;
	if (WIFEXITED(st))
		_exit(WEXITSTATUS(st));
	signal(WTERMSIG(st), SIG_DFL);
	kill(getpid(), WTERMSIG(st));
	_exit(124);
}

int main(int argc, char **argv)
{
	int pidns = argc > 1 && !strcmp(argv[1], "-p");

	argv += pidns;
	argc -= pidns;
	if (argc < 5) {
		fprintf(stderr, "usage: ttyshell [-p] DIR TTY STATUS PROG [ARGS...]\n");
		return 2;
	}
	if (setsid() < 0) {
		perror("ttyshell: setsid");
		return 1;
	}
	int tty = open(argv[2], O_RDWR | O_NOCTTY);
	if (tty < 0 || ioctl(tty, TIOCSCTTY, 0)) {
		perror("ttyshell: terminal");
		return 1;
	}
	if (dup2(tty, 0) < 0 || dup2(tty, 1) < 0 || dup2(tty, 2) < 0)
		return 1;
	/* close-on-exec, not closed: PROG may be /proc/self/fd/3 */
	if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */))
		return 1;
	/* a shell ignores the signals of its terminal; its jobs do not */
	signal(SIGTTOU, SIG_IGN);
	signal(SIGTTIN, SIG_IGN);
	signal(SIGTSTP, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGQUIT, SIG_IGN);
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		setpgid(0, 0);
		tcsetpgrp(0, getpid());
		for (int sig = 1; sig < 65; sig++)
			signal(sig, SIG_DFL);
		if (chdir(argv[1]))
			_exit(121);
		umask(022);
		if (pidns)
			run_in_new_pidns();
		execve(argv[4], argv + 4, env);
		_exit(127);
	}
	setpgid(pid, pid);
	tcsetpgrp(0, pid);
	note(argv[3], "job %d\n", pid);
	int st;
	while (waitpid(pid, &st, 0) < 0)
		;
	if (WIFEXITED(st))
		note(argv[3], "exit %d\n", WEXITSTATUS(st));
	else
		note(argv[3], "signal %d\n", WTERMSIG(st));
	for (;;) {
		/* children the job left (a restored root, say) are not ours */
		pause();
	}
}
