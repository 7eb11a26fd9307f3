/*
 * unixsk - a pid namespace init (the parent) and its child talking over
 * unix sockets of every kind crest dumps, with data left unread in every
 * receive queue at any moment:
 *   s  a stream socketpair, parent -> child, shut down for reading on the
 *      parent's end (so the child's writes fail with EPIPE);
 *   d  a datagram socketpair, both ways, non-blocking on the child's end;
 *   q  a seqpacket socketpair, child -> parent;
 *   L  a stream listener bound to the relative name "unixsk.sock" in the
 *      working directory, mode 0600; the child connected to it from K, a
 *      socket bound to the abstract name "\0unixsk-k:CWD", and the parent
 *      accepted AC (which has L's name);
 *   A  a datagram socket of the parent bound to the abstract name
 *      "\0unixsk:CWD", and B, the child's, connected to it;
 *   U  a stream socket of the parent, neither bound nor connected;
 *   W  a stream socketpair whose child end the child wrote a message to
 *      and closed: the parent's end holds it, shut down both ways.
 * Every message is 16 bytes, "<tag><tick, 14 digits>\n". Each tick a
 * process writes its tick's messages (two datagrams on each datagram
 * channel, one message on the others), the one on its clock (s for the
 * parent, q for the child) last, and then reads, while the other's clock
 * holds two messages or more (at most three times), one clock message
 * and the messages of that tick on the other channels: so what the other
 * wrote in its last tick is always left unread, on every channel. Reads
 * check the tick and the tag, datagrams and records one at a time (their
 * size too); every tick both check the names, the listener and the
 * shutdown, then append "parent N" to out-parent.log or "child N" to
 * out-child.log. A mismatch is logged as CORRUPT and ends the process
 * (exit 3).
 *
 * build: gcc -static -O2 -o unixsk unixsk.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "workload.h"

#define REC 16
#define SOCKNAME "unixsk.sock"

static int logfd;
static const char *role;

static void corrupt(const char *what, long long got, long long want)
{
	char line[200];

	snprintf(line, sizeof line, "CORRUPT %s: %s %lld, want %lld\n", role, what, got, want);
	say(logfd, line);
	_exit(3);
}

static void record(char *buf, char tag, unsigned long n)
{
	char tmp[REC + 1];

	snprintf(tmp, sizeof tmp, "%c%014lu\n", tag, n);
	memcpy(buf, tmp, REC);
}

/* sends one message with tag for tick n, all of it */
static void put(int fd, char tag, unsigned long n)
{
	char buf[REC];

	record(buf, tag, n);
	if (send(fd, buf, REC, MSG_NOSIGNAL) != REC)
		corrupt("send", errno, 0);
}

/* reads the message with tag for tick n: exactly REC bytes, in one piece
 * for datagrams and records, however they come for a stream */
static void get(int fd, int stream, char tag, unsigned long n)
{
	char buf[64], want[REC];
	ssize_t got = 0, r;

	do {
		r = recv(fd, buf + got, stream ? REC - got : sizeof buf, 0);
		if (r <= 0)
			corrupt("recv", r < 0 ? -errno : 0, REC);
		got += r;
	} while (stream && got < REC);
	if (got != REC)
		corrupt("message size", got, REC);
	record(want, tag, n);
	if (memcmp(buf, want, REC) != 0) {
		unsigned long t = strtoul(buf + 1, NULL, 10);

		corrupt(buf[0] == tag ? "tick" : "tag", buf[0] == tag ? (long long)t : buf[0], buf[0] == tag ? (long long)n : tag);
	}
}

/* how many bytes wait in fd's receive queue (all of a stream or
 * seqpacket queue) */
static int queued(int fd)
{
	int n;

	if (ioctl(fd, FIONREAD, &n) < 0)
		corrupt("FIONREAD", errno, 0);
	return n;
}

static socklen_t unaddr(struct sockaddr_un *a, const char *name, int abstract)
{
	size_t len = strlen(name);

	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	memcpy(a->sun_path + (abstract ? 1 : 0), name, len);
	return offsetof(struct sockaddr_un, sun_path) + len + (abstract ? 1 : 0);
}

/* checks the name get (getsockname, getpeername) gives for fd */
static void name_is(int (*get)(int, struct sockaddr *, socklen_t *), int fd, const char *name, int abstract, const char *what)
{
	struct sockaddr_un want, got;
	socklen_t wlen = unaddr(&want, name, abstract), glen = sizeof got;

	memset(&got, 0, sizeof got);
	if (get(fd, (struct sockaddr *)&got, &glen) < 0)
		corrupt(what, errno, 0);
	/* the kernel keeps a path name with its NUL */
	if (!abstract && glen == wlen + 1)
		glen--;
	if (glen != wlen || memcmp(&got, &want, wlen) != 0)
		corrupt(what, glen, wlen);
}

int main(void)
{
	const struct timespec tick = { 0, 10 * 1000 * 1000 };
	char cwd[PATH_MAX], abs_a[PATH_MAX + 16], abs_k[PATH_MAX + 16], line[64];
	int s[2], d[2], q[2], w[2], lsk, a, ac, k, b, u, one = 1;
	struct sockaddr_un addr;
	struct stat st;
	pid_t child;

	if (!getcwd(cwd, sizeof cwd) || strlen(cwd) > 80)
		return 2;
	snprintf(abs_a, sizeof abs_a, "unixsk:%s", cwd);
	snprintf(abs_k, sizeof abs_k, "unixsk-k:%s", cwd);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || socketpair(AF_UNIX, SOCK_DGRAM, 0, d) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) || socketpair(AF_UNIX, SOCK_STREAM, 0, w))
		return 2;
	lsk = socket(AF_UNIX, SOCK_STREAM, 0);
	a = socket(AF_UNIX, SOCK_DGRAM, 0);
	u = socket(AF_UNIX, SOCK_STREAM, 0);
	unlink(SOCKNAME);
	if (lsk < 0 || a < 0 || u < 0 || bind(lsk, (struct sockaddr *)&addr, unaddr(&addr, SOCKNAME, 0)) ||
	    chmod(SOCKNAME, 0600) || listen(lsk, 4) || bind(a, (struct sockaddr *)&addr, unaddr(&addr, abs_a, 1)) ||
	    shutdown(s[0], SHUT_RD))
		return 2;
	child = fork();
	if (child < 0)
		return 2;
	if (child == 0) {
		role = "child";
		logfd = open_log("child");
		close(s[0]);
		close(d[0]);
		close(q[0]);
		close(lsk);
		close(a);
		close(u);
		close(w[0]);
		put(w[1], 'w', 0);
		close(w[1]);
		k = socket(AF_UNIX, SOCK_STREAM, 0);
		b = socket(AF_UNIX, SOCK_DGRAM, 0);
		if (k < 0 || b < 0 || bind(k, (struct sockaddr *)&addr, unaddr(&addr, abs_k, 1)) ||
		    connect(k, (struct sockaddr *)&addr, unaddr(&addr, SOCKNAME, 0)) ||
		    connect(b, (struct sockaddr *)&addr, unaddr(&addr, abs_a, 1)) ||
		    fcntl(d[1], F_SETFL, O_NONBLOCK))
			corrupt("setup", errno, 0);
		for (unsigned long n = 1, next = 1;; n++) {
			put(d[1], 'c', n);
			put(d[1], 'C', n);
			put(k, 'k', n);
			put(b, 'b', n);
			put(b, 'B', n);
			put(q[1], 'q', n);
			for (int i = 0; i < 3 && queued(s[1]) >= 2 * REC; i++, next++) {
				get(s[1], 1, 's', next);
				get(d[1], 0, 'p', next);
				get(d[1], 0, 'P', next);
			}
			if (send(s[1], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
				corrupt("send on a stream its peer shut down for reading", errno, EPIPE);
			name_is(getsockname, k, abs_k, 1, "name of K");
			name_is(getpeername, k, SOCKNAME, 0, "peer name of K");
			name_is(getpeername, b, abs_a, 1, "peer name of B");
			snprintf(line, sizeof line, "child %lu\n", n);
			say(logfd, line);
			nanosleep(&tick, NULL);
		}
	}
	role = "parent";
	logfd = open_log("parent");
	close(s[1]);
	close(d[1]);
	close(q[1]);
	close(w[1]);
	/* the child wrote to w and closed its end before it connected */
	ac = accept(lsk, NULL, NULL);
	if (ac < 0)
		corrupt("accept", errno, 0);
	for (unsigned long n = 1, next = 1;; n++) {
		int v = 0, status;
		socklen_t vl = sizeof v;

		put(d[0], 'p', n);
		put(d[0], 'P', n);
		put(s[0], 's', n);
		for (int i = 0; i < 3 && queued(q[0]) >= 2 * REC; i++, next++) {
			get(q[0], 0, 'q', next);
			get(d[0], 0, 'c', next);
			get(d[0], 0, 'C', next);
			get(ac, 1, 'k', next);
			get(a, 0, 'b', next);
			get(a, 0, 'B', next);
		}
		name_is(getsockname, lsk, SOCKNAME, 0, "name of L");
		name_is(getsockname, ac, SOCKNAME, 0, "name of AC");
		name_is(getsockname, a, abs_a, 1, "name of A");
		if (getsockopt(lsk, SOL_SOCKET, SO_ACCEPTCONN, &v, &vl) || v != one)
			corrupt("SO_ACCEPTCONN of L", v, 1);
		{
			struct pollfd pf = { w[0], POLLIN | POLLRDHUP, 0 };
			char buf[REC], want[REC];

			record(want, 'w', 0);
			if (queued(w[0]) != REC || recv(w[0], buf, REC, MSG_PEEK) != REC || memcmp(buf, want, REC))
				corrupt("bytes left on W", queued(w[0]), REC);
			if (poll(&pf, 1, 0) != 1 || !(pf.revents & POLLRDHUP) || !(pf.revents & POLLHUP))
				corrupt("poll events of W", pf.revents, POLLIN | POLLRDHUP | POLLHUP);
		}
		vl = sizeof addr;
		if (getpeername(u, (struct sockaddr *)&addr, &vl) != -1 || errno != ENOTCONN)
			corrupt("getpeername of U", errno, ENOTCONN);
		vl = sizeof addr;
		if (getsockname(u, (struct sockaddr *)&addr, &vl) || vl != sizeof(sa_family_t))
			corrupt("name length of U", vl, sizeof(sa_family_t));
		if (stat(SOCKNAME, &st) || !S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != 0600)
			corrupt("mode of " SOCKNAME, st.st_mode, 0140600);
		if (waitpid(child, &status, WNOHANG) != 0)
			corrupt("child ended", status, 0);
		snprintf(line, sizeof line, "parent %lu\n", n);
		say(logfd, line);
		nanosleep(&tick, NULL);
	}
}
