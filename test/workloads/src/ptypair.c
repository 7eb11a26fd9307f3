/*
 * ptypair - a program that runs a child on a pty, as script, expect or a
 * terminal emulator do. The init opens /dev/ptmx, puts the master in
 * packet mode and forks a child that makes itself a session leader with
 * the slave as its controlling terminal (setsid, TIOCSCTTY), sets raw
 * mode and a window size, and forks a grandchild that leads the
 * terminal's foreground group (a background child could not read it).
 * Once the terminal is set up, the init locks the pty again
 * (TIOCSPTLCK): the open slave keeps working.
 *
 * Every 10 ms the init writes "p<14 digits>\n" to the master and the
 * grandchild echoes each message through the slave as "c<same digits>\n";
 * each side reads only when two messages are queued, so one sits unread
 * in each direction at any moment. Every tick each checks what it can
 * see of the terminal (its index, termios, window size, session,
 * foreground group, packet mode, lock) and the sequence of messages, and
 * writes "tick N" to out-parent.log (init), out-child.log, and
 * out-fg.log (grandchild), or CORRUPT and exits 3.
 *
 * Built with -DNO_PACKET the master stays out of packet mode. CRIU 4.2
 * (and crest) dump the data queued in a packet-mode master with its
 * packet header; CRIU's restore writes the header back as data, which
 * this program sees as CORRUPT, crest's drops it. CRIU 4.2 does not
 * restore this program at all: it locks the pty again before the child
 * opens the slave to take it as its terminal (EIO); built with the
 * TIOCSPTLCK lines removed, it does.
 *
 * build: gcc -static -O2 -o ptypair ptypair.c
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <time.h>
#include "workload.h"

#define MSG 16
#define ROWS 37
#define COLS 111

static int logfd;

static void corrupt(const char *what, long got, long want)
{
	char line[160];

	snprintf(line, sizeof line, "CORRUPT %s: %ld, want %ld\n", what, got, want);
	say(logfd, line);
	_exit(3);
}

static void tick(unsigned long n)
{
	char line[64];
	const struct timespec ts = { 0, 10 * 1000 * 1000 };

	snprintf(line, sizeof line, "tick %lu\n", n);
	say(logfd, line);
	nanosleep(&ts, NULL);
}

/* termios and window size as the child set them, seen through fd */
static void check_terminal(int fd, const struct termios *want)
{
	struct termios tm;
	struct winsize ws;

	if (tcgetattr(fd, &tm) < 0)
		corrupt("tcgetattr", -1, 0);
	if (tm.c_iflag != want->c_iflag || tm.c_oflag != want->c_oflag || tm.c_lflag != want->c_lflag)
		corrupt("termios lflag", tm.c_lflag, want->c_lflag);
	if ((tm.c_cflag & ~CBAUD) != (want->c_cflag & ~CBAUD))
		corrupt("termios cflag", tm.c_cflag, want->c_cflag);
	if (tm.c_cc[VMIN] != want->c_cc[VMIN] || tm.c_cc[VTIME] != want->c_cc[VTIME] || tm.c_cc[VINTR] != want->c_cc[VINTR])
		corrupt("termios c_cc", tm.c_cc[VINTR], want->c_cc[VINTR]);
	if (ioctl(fd, TIOCGWINSZ, &ws) < 0 || ws.ws_row != ROWS || ws.ws_col != COLS)
		corrupt("winsize rows", ws.ws_row, ROWS);
}

/* reads one message of kind c when two are queued on fd; returns 1 if it did */
static int take(int fd, char c, unsigned long *want, int packet)
{
	char buf[MSG + 2], exp[MSG + 1];
	int queued = 0;
	ssize_t n;

	if (ioctl(fd, FIONREAD, &queued) < 0)
		corrupt("FIONREAD", -1, 0);
	if (queued < 2 * MSG)
		return 0;
	/* a packet-mode read may give a status byte alone (a termios change) */
	while ((n = read(fd, buf, MSG + packet)) == 1 && packet && buf[0] != 0)
		;
	if (n != MSG + packet)
		corrupt("read", n, MSG + packet);
	if (packet && buf[0] != 0)
		corrupt("packet header", buf[0], 0);
	snprintf(exp, sizeof exp, "%c%014lu\n", c, *want);
	if (memcmp(buf + packet, exp, MSG) != 0) {
		buf[MSG + packet] = 0;
		corrupt(c == 'p' ? "message to the slave out of sequence" : "echo out of sequence",
			strtol(buf + packet + 1, NULL, 10), (long)*want);
	}
	(*want)++;
	return 1;
}

/* the foreground group's leader: it echoes what the init writes */
static void grandchild(int s, const struct termios *want)
{
	unsigned long seq = 1;
	char msg[MSG + 1];

	logfd = open_log("fg");
	setpgid(0, 0);
	for (unsigned long n = 1;; n++) {
		if (getpgrp() != getpid())
			corrupt("fg group", getpgrp(), getpid());
		check_terminal(s, want);
		if (take(s, 'p', &seq, 0)) {
			snprintf(msg, sizeof msg, "c%014lu\n", seq - 1);
			if (write(s, msg, MSG) != MSG)
				corrupt("write to the slave", -1, MSG);
		}
		tick(n);
	}
}

static void child(int index)
{
	char path[32], name[64];
	struct termios want;
	struct winsize ws = { ROWS, COLS, 0, 0 };
	pid_t fg;
	int s;

	logfd = open_log("child");
	signal(SIGTTOU, SIG_IGN);
	if (setsid() < 0)
		corrupt("setsid", -1, 0);
	snprintf(path, sizeof path, "/dev/pts/%d", index);
	s = open(path, O_RDWR | O_NOCTTY);
	if (s < 0 || ioctl(s, TIOCSCTTY, 0) < 0)
		corrupt("slave as controlling terminal", s, 0);
	if (tcgetattr(s, &want) < 0)
		corrupt("tcgetattr", -1, 0);
	cfmakeraw(&want);
	want.c_cc[VMIN] = 1;
	want.c_cc[VTIME] = 0;
	if (tcsetattr(s, TCSANOW, &want) < 0 || ioctl(s, TIOCSWINSZ, &ws) < 0)
		corrupt("tcsetattr", -1, 0);
	if (tcgetattr(s, &want) < 0)
		corrupt("tcgetattr", -1, 0);
	fg = fork();
	if (fg < 0)
		_exit(1);
	if (fg == 0)
		grandchild(s, &want);
	setpgid(fg, fg);
	if (tcsetpgrp(s, fg) < 0)
		corrupt("tcsetpgrp", -1, fg);
	for (unsigned long n = 1;; n++) {
		struct stat st;

		if (!isatty(s) || ttyname_r(s, name, sizeof name) != 0 || strcmp(name, path) != 0)
			corrupt("ttyname", -1, index);
		if (fstat(s, &st) < 0 || (int)minor(st.st_rdev) + (int)(major(st.st_rdev) - 136) * 256 != index)
			corrupt("pts index", minor(st.st_rdev), index);
		check_terminal(s, &want);
		if (tcgetsid(s) != getpid())
			corrupt("tcgetsid", tcgetsid(s), getpid());
		if (tcgetpgrp(s) != fg)
			corrupt("tcgetpgrp", tcgetpgrp(s), fg);
		tick(n);
	}
}

int main(void)
{
	struct termios want;
	unsigned long sent = 1, echo = 1;
	int m, index, packet = 1, v;
	pid_t c, fg = 0;
	char msg[MSG + 1];

#ifdef NO_PACKET
	packet = 0;
#endif
	logfd = open_log("parent");
	m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0 || unlockpt(m) < 0 || ioctl(m, TIOCGPTN, &index) < 0)
		corrupt("posix_openpt", m, 0);
	if (packet && ioctl(m, TIOCPKT, &packet) < 0)
		corrupt("TIOCPKT", -1, 0);
	c = fork();
	if (c < 0)
		return 1;
	if (c == 0) {
		close(m);
		child(index);
	}
	/* until the child has set the terminal up and given it to its child */
	while (ioctl(m, TIOCGPGRP, &fg) < 0 || fg == c || fg <= 0)
		nanosleep(&(struct timespec){ 0, 1000 * 1000 }, NULL);
	if (tcgetattr(m, &want) < 0 || tcflush(m, TCIFLUSH) < 0)
		corrupt("tcgetattr on the master", -1, 0);
	v = 1;
	if (ioctl(m, TIOCSPTLCK, &v) < 0)
		corrupt("TIOCSPTLCK", -1, 0);
	for (unsigned long n = 1;; n++) {
		int got;

		if (ioctl(m, TIOCGPTN, &got) < 0 || got != index)
			corrupt("TIOCGPTN", got, index);
		if (ioctl(m, TIOCGPKT, &v) < 0 || v != packet)
			corrupt("TIOCGPKT", v, packet);
		if (ioctl(m, TIOCGPTLCK, &v) < 0 || v != 1)
			corrupt("TIOCGPTLCK", v, 1);
		check_terminal(m, &want);
		if (ioctl(m, TIOCGSID, &v) < 0 || v != c)
			corrupt("TIOCGSID on the master", v, c);
		if (ioctl(m, TIOCGPGRP, &v) < 0 || v != fg)
			corrupt("TIOCGPGRP on the master", v, fg);
		snprintf(msg, sizeof msg, "p%014lu\n", sent++);
		if (write(m, msg, MSG) != MSG)
			corrupt("write to the master", -1, MSG);
		take(m, 'c', &echo, packet);
		tick(n);
	}
}
