/*
 * ttyjob - an interactive job on its shell's terminal (fds 0-2), for the
 * tests of dumps and restores with --shell-job (ttyshell starts it).
 *
 * At start it turns its terminal's echo off (-ECHO), sets VERASE to ^H
 * and the window to 33 rows of 111 columns, forks one child (the job is a
 * process group of two, as a pipeline is) and prints "ready\n". Then,
 * every 10 ms, each process checks what it can of its terminal: fds 0-2
 * are one pty slave (isatty, same rdev, a Unix98 pts), with those termios
 * and that window size, whose foreground process group is its own (the
 * job is in front) and whose session is its own; it appends "tick N" to
 * out-ttyjob.log (the child to out-child.log), or "CORRUPT what" and
 * exits 3. The parent echoes every line typed on the terminal as
 * "echo: LINE\n" and appends "line LINE" to out-lines.log; a SIGINT from
 * the terminal (^C) prints "sigint N\n".
 *
 * build: gcc -static -O2 -o ttyjob ttyjob.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <time.h>
#include "workload.h"

#define ROWS 33
#define COLS 111

static volatile sig_atomic_t sigints;

static void on_sigint(int sig)
{
	(void)sig;
	sigints++;
}

static int logfd;

static void corrupt(const char *what)
{
	char line[160];

	snprintf(line, sizeof line, "CORRUPT %s (errno %d)\n", what, errno);
	say(logfd, line);
	_exit(3);
}

/* check compares the terminal with what the job set up */
static void check(void)
{
	struct stat st[3];
	struct termios t;
	struct winsize w;

	for (int fd = 0; fd < 3; fd++) {
		if (!isatty(fd))
			corrupt("fd 0-2 not a terminal");
		if (fstat(fd, &st[fd]))
			corrupt("fstat");
		if (st[fd].st_rdev != st[0].st_rdev)
			corrupt("fds 0-2 on different terminals");
	}
	if (major(st[0].st_rdev) < 136 || major(st[0].st_rdev) > 143)
		corrupt("not a pts");
	if (tcgetattr(0, &t))
		corrupt("tcgetattr");
	if (t.c_lflag & ECHO)
		corrupt("echo is on");
	if (t.c_cc[VERASE] != 8)
		corrupt("VERASE is not ^H");
	if (!(t.c_lflag & ICANON) || !(t.c_lflag & ISIG))
		corrupt("not canonical with signals");
	if (ioctl(0, TIOCGWINSZ, &w) || w.ws_row != ROWS || w.ws_col != COLS)
		corrupt("window size");
	if (tcgetpgrp(0) != getpgrp())
		corrupt("not the terminal's foreground group");
	if (tcgetsid(0) != getsid(0))
		corrupt("not the terminal's session");
}

int main(void)
{
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	struct termios t;
	struct winsize w = { .ws_row = ROWS, .ws_col = COLS };
	char line[600], in[512];
	size_t have = 0;

	if (tcgetattr(0, &t))
		return 5;
	t.c_lflag &= ~ECHO;
	t.c_cc[VERASE] = 8;
	if (tcsetattr(0, TCSANOW, &t) || ioctl(0, TIOCSWINSZ, &w))
		return 5;
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		logfd = open_log("child");
		for (unsigned long n = 1;; n++) {
			check();
			snprintf(line, sizeof line, "tick %lu\n", n);
			say(logfd, line);
			nanosleep(&tick, NULL);
		}
	}
	logfd = open_log("ttyjob");
	int lines = open_log("lines");
	struct sigaction sa = { .sa_handler = on_sigint, .sa_flags = SA_RESTART };
	sigaction(SIGINT, &sa, NULL);
	say(1, "ready\n");
	int seen = 0;
	for (unsigned long n = 1;; n++) {
		check();
		snprintf(line, sizeof line, "tick %lu\n", n);
		say(logfd, line);
		if (sigints != seen) {
			seen = sigints;
			snprintf(line, sizeof line, "sigint %d\n", seen);
			say(1, line);
		}
		struct pollfd p = { 0, POLLIN, 0 };
		if (poll(&p, 1, 0) == 1 && (p.revents & POLLIN)) {
			ssize_t got = read(0, in + have, sizeof in - 1 - have);
			if (got <= 0)
				corrupt("read from the terminal");
			have += got;
			char *nl;
			while ((nl = memchr(in, '\n', have))) {
				*nl = 0;
				snprintf(line, sizeof line, "echo: %s\n", in);
				say(1, line);
				snprintf(line, sizeof line, "line %s\n", in);
				say(lines, line);
				have -= nl + 1 - in;
				memmove(in, nl + 1, have);
			}
			if (have == sizeof in - 1)
				have = 0;
		}
		nanosleep(&tick, NULL);
	}
}
