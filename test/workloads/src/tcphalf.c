/*
 * tcphalf - half-closed TCP connections over loopback, each between this
 * pid namespace init and its child, kept in their states:
 *   a6  [::1]      init FIN_WAIT2  (shut down for writing)
 *                  child CLOSE_WAIT (got the FIN, still sends)
 *   a4  127.0.0.1  init CLOSE_WAIT, child FIN_WAIT2 (the same, reversed)
 *   b   127.0.0.1  init FIN_WAIT1: shut down for writing behind data
 *                  its peer never reads (its window closed: the FIN and
 *                  the data before it wait unsent)
 *                  child ESTABLISHED, never reads, still sends
 *   c   127.0.0.1  child LAST_ACK: got the FIN, then shut down behind
 *                  data its peer never reads
 *                  init FIN_WAIT2, never reads
 *   d   [::1]      init CLOSING: shut down behind data its peer never
 *                  reads, then got the peer's FIN
 *                  child FIN_WAIT2, never reads
 * Every tick (10 ms) each end checks its state (TCP_INFO tcpi_state), its
 * four-tuple, that a send fails with EPIPE once it shut down for writing,
 * that read() returns 0 once the peer's FIN came (and nothing was left
 * before it), that a queue it never reads still holds at least what it
 * held when the connections were made, its bytes right (MSG_PEEK); on the
 * open directions (a6, a4: CLOSE_WAIT -> FIN_WAIT2; b: ESTABLISHED ->
 * FIN_WAIT1) it sends 100 bytes a tick and the other end reads and checks
 * them, which must move on within 50 ticks. Each tick appends
 * "tcphalf-ROLE N" to out-ROLE.log (ROLE init or child); anything wrong is
 * logged as CORRUPT and ends the process (exit 3).
 *
 * A dump may freeze it anywhere: the connections are in their states
 * before the first log line, and nothing is connected or closed
 * afterwards.
 *
 * build: gcc -static -O2 -o tcphalf tcphalf.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

#include "workload.h"

#define FILL 400000 /* written behind a closed window, at most */
#define CHUNK 100   /* sent a tick on an open direction */
#define STALL 50    /* ticks an open direction may stand still */

static int logfd;
static const char *role = "init";

static void corrupt(const char *what, long got, long want)
{
	char line[192];

	snprintf(line, sizeof line, "CORRUPT tcphalf-%s: %s %ld, want %ld (errno %d)\n", role, what, got, want, errno);
	if (logfd <= 0)
		logfd = open_log(role);
	say(logfd, line);
	_exit(3);
}

static unsigned char pattern(unsigned long i, int dir)
{
	return (unsigned char)(i * 131 + (i >> 9) * 7 + dir * 61);
}

static void setopt(int s, int level, int opt, int v)
{
	if (setsockopt(s, level, opt, &v, sizeof v))
		corrupt("setsockopt", opt, v);
}

static int state(int s)
{
	struct tcp_info ti;
	socklen_t len = sizeof ti;

	if (getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &len))
		corrupt("TCP_INFO", -1, 0);
	return ti.tcpi_state;
}

static int queued(int s, unsigned long req)
{
	int q = -1;

	if (ioctl(s, req, &q))
		corrupt("ioctl", (long)req, 0);
	return q;
}

static void msleep(int ms)
{
	struct timespec ts = { 0, ms * 1000L * 1000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* a connection over family's loopback: *c connects, *a is accepted */
static void connection(int family, int rcvbuf_c, int rcvbuf_a, int *c, int *a)
{
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	struct sockaddr_in a4 = { .sin_family = AF_INET };
	struct sockaddr *sa = family == AF_INET ? (struct sockaddr *)&a4 : (struct sockaddr *)&a6;
	socklen_t len = family == AF_INET ? sizeof a4 : sizeof a6;
	int l = socket(family, SOCK_STREAM, 0);

	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0)
		corrupt("socket", l, 0);
	if (rcvbuf_a)
		setopt(l, SOL_SOCKET, SO_RCVBUF, rcvbuf_a);
	if (bind(l, sa, len) || listen(l, 1) || getsockname(l, sa, &len))
		corrupt("listen", -1, 0);
	*c = socket(family, SOCK_STREAM, 0);
	if (*c < 0)
		corrupt("socket", *c, 0);
	if (rcvbuf_c)
		setopt(*c, SOL_SOCKET, SO_RCVBUF, rcvbuf_c);
	if (connect(*c, sa, len))
		corrupt("connect", -1, 0);
	*a = accept(l, NULL, NULL);
	if (*a < 0)
		corrupt("accept", *a, 0);
	close(l);
}

/* one end of a connection and what must hold of it */
struct end {
	const char *name;
	int fd;
	int state;
	int dir_out, dir_in;   /* the pattern of each direction */
	int shut_wr;           /* sends fail with EPIPE */
	int eof;               /* the peer's FIN came: read() returns 0 */
	int reads, sends;      /* an open direction: it reads, it sends */
	int hold;              /* bytes its receive queue keeps at least */
	unsigned long sent, rcvd, moved;
	struct sockaddr_storage self, peer;
};

static void names(int s, struct sockaddr_storage *self, struct sockaddr_storage *peer)
{
	socklen_t len = sizeof *self;

	memset(self, 0, sizeof *self);
	memset(peer, 0, sizeof *peer);
	if (getsockname(s, (struct sockaddr *)self, &len))
		corrupt("getsockname", -1, 0);
	len = sizeof *peer;
	if (getpeername(s, (struct sockaddr *)peer, &len))
		corrupt("getpeername", -1, 0);
}

/* sends n bytes of e's direction, as much as goes */
static long send_pattern(struct end *e, long n)
{
	static unsigned char buf[FILL];
	long k;

	for (long j = 0; j < n; j++)
		buf[j] = pattern(e->sent + j, e->dir_out);
	k = send(e->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (k > 0)
		e->sent += k;
	return k;
}

/* waits until the receive queue of s stops growing, and returns it */
static int settle(int s)
{
	int q = -1, same = 0;

	for (int i = 0; i < 1000 && same < 10; i++) {
		int n = queued(s, FIONREAD);

		same = n == q ? same + 1 : 0;
		q = n;
		msleep(10);
	}
	return q;
}

static void check_end(struct end *e, unsigned long n)
{
	static unsigned char buf[FILL + 1];
	struct sockaddr_storage self, peer;
	char what[96];
	long k;
	int v;

#define WRONG(fmt, got, want)                                  \
	do {                                                   \
		snprintf(what, sizeof what, "%s " fmt, e->name); \
		corrupt(what, (long)(got), (long)(want));      \
	} while (0)
	if ((v = state(e->fd)) != e->state)
		WRONG("tcpi_state", v, e->state);
	names(e->fd, &self, &peer);
	if (memcmp(&self, &e->self, sizeof self) || memcmp(&peer, &e->peer, sizeof peer))
		WRONG("four-tuple changed", 0, 1);
	if (e->shut_wr) {
		errno = 0;
		k = send(e->fd, "x", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (k != -1 || errno != EPIPE)
			WRONG("send after shutdown(SHUT_WR)", k, -1);
	}
	if (e->hold) {
		/* a queue never read: at least what it held, every byte right */
		if ((v = queued(e->fd, FIONREAD)) < e->hold)
			WRONG("receive queue bytes", v, e->hold);
		k = recv(e->fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
		if (k != v)
			WRONG("recv(MSG_PEEK)", k, v);
		for (long j = 0; j < k; j++)
			if (buf[j] != pattern(j, e->dir_in))
				WRONG("queued byte", j, -1);
	}
	if (e->reads) {
		k = recv(e->fd, buf, sizeof buf, MSG_DONTWAIT);
		if (k < 0 && errno != EAGAIN)
			WRONG("recv", k, 0);
		if (k == 0)
			WRONG("recv: end of stream at byte", e->rcvd, -1);
		for (long j = 0; j < k; j++)
			if (buf[j] != pattern(e->rcvd + j, e->dir_in))
				WRONG("byte", e->rcvd + j, -1);
		if (k > 0) {
			e->rcvd += k;
			e->moved = n;
		}
		if (n - e->moved > STALL)
			WRONG("stalled at byte", e->rcvd, -1);
	}
	if (e->eof) {
		struct pollfd p = { .fd = e->fd, .events = POLLIN | POLLRDHUP };

		if (poll(&p, 1, 0) != 1 || !(p.revents & POLLRDHUP))
			WRONG("poll: no POLLRDHUP, revents", p.revents, POLLRDHUP);
		if ((k = read(e->fd, buf, 1)) != 0)
			WRONG("read after the peer's FIN", k, 0);
	}
	if (e->sends && send_pattern(e, CHUNK) < 0 && errno != EAGAIN)
		WRONG("send", -1, CHUNK);
}

static void init_end(struct end *e, const char *name, int fd, int st, int dir_out, int dir_in)
{
	memset(e, 0, sizeof *e);
	e->name = name;
	e->fd = fd;
	e->state = st;
	e->dir_out = dir_out;
	e->dir_in = dir_in;
}

static void run(struct end *ends, int n_ends)
{
	char line[64];

	for (int i = 0; i < n_ends; i++)
		names(ends[i].fd, &ends[i].self, &ends[i].peer);
	for (unsigned long n = 1;; n++) {
		for (int i = 0; i < n_ends; i++)
			check_end(&ends[i], n);
		snprintf(line, sizeof line, "tcphalf-%s %lu\n", role, n);
		say(logfd, line);
		msleep(10);
	}
}

int main(void)
{
	struct end e[5];
	int a6c, a6s, a4c, a4s, bc, bs, cc, cs, dc, ds;
	int hold_b, hold_c, hold_d;
	struct end tmp;
	char buf[64];
	pid_t child;

	/* a6, a4: the client sends 64 bytes and shuts down; the server
	 * reads them and then sees the end of the stream */
	connection(AF_INET6, 0, 0, &a6c, &a6s);
	connection(AF_INET, 0, 0, &a4c, &a4s);
	if (send(a6c, "a6 before the FIN, 64 bytes ......................................", 64, 0) != 64 ||
	    send(a4c, "a4 before the FIN, 64 bytes ......................................", 64, 0) != 64)
		corrupt("send", -1, 64);
	if (shutdown(a6c, SHUT_WR) || shutdown(a4c, SHUT_WR))
		corrupt("shutdown a", -1, 0);
	for (int *s = (int[]){ a6s, a4s, -1 }; *s >= 0; s++) {
		int k = 0, got;

		while ((got = recv(*s, buf + k, sizeof buf - k, 0)) > 0)
			k += got;
		if (got != 0 || k != 64)
			corrupt("a: bytes before the FIN", k, 64);
	}

	/* b: the client fills the server's window, then shuts down */
	connection(AF_INET, 0, 4096, &bc, &bs);
	init_end(&tmp, "b", bc, 0, 1, 2);
	if (send_pattern(&tmp, FILL) <= 0)
		corrupt("b fill", -1, FILL);
	hold_b = settle(bs);
	if (queued(bc, SIOCOUTQNSD) <= 0)
		corrupt("b: nothing unsent behind the closed window", 0, 1);
	if (shutdown(bc, SHUT_WR))
		corrupt("shutdown b", -1, 0);

	/* c: the client shuts down, the server fills the client's window
	 * and shuts down behind it */
	connection(AF_INET, 4096, 0, &cc, &cs);
	if (shutdown(cc, SHUT_WR))
		corrupt("shutdown c", -1, 0);
	init_end(&tmp, "c", cs, 0, 3, 4);
	if (send_pattern(&tmp, FILL) <= 0)
		corrupt("c fill", -1, FILL);
	hold_c = settle(cc);
	if (queued(cs, SIOCOUTQNSD) <= 0)
		corrupt("c: nothing unsent behind the closed window", 0, 1);
	if (shutdown(cs, SHUT_WR))
		corrupt("shutdown c server", -1, 0);

	/* d: the client fills the server's window and shuts down behind
	 * it, then the server shuts down: its FIN reaches the client */
	connection(AF_INET6, 0, 4096, &dc, &ds);
	init_end(&tmp, "d", dc, 0, 5, 6);
	if (send_pattern(&tmp, FILL) <= 0)
		corrupt("d fill", -1, FILL);
	hold_d = settle(ds);
	if (queued(dc, SIOCOUTQNSD) <= 0)
		corrupt("d: nothing unsent behind the closed window", 0, 1);
	if (shutdown(dc, SHUT_WR) || shutdown(ds, SHUT_WR))
		corrupt("shutdown d", -1, 0);

	for (int i = 0; i < 100; i++) {
		if (state(a6c) == TCP_FIN_WAIT2 && state(a4c) == TCP_FIN_WAIT2 && state(cc) == TCP_FIN_WAIT2 &&
		    state(dc) == TCP_CLOSING && state(ds) == TCP_FIN_WAIT2)
			break;
		msleep(10);
	}

	child = fork();
	if (child < 0)
		corrupt("fork", -1, 0);
	if (child == 0) {
		role = "child";
		logfd = open_log(role);
		close(a6c), close(a4s), close(bc), close(cc), close(dc);
		init_end(&e[0], "a6", a6s, TCP_CLOSE_WAIT, 7, 0);
		e[0].eof = e[0].sends = 1;
		init_end(&e[1], "a4", a4c, TCP_FIN_WAIT2, 0, 8);
		e[1].shut_wr = e[1].reads = 1;
		init_end(&e[2], "b", bs, TCP_ESTABLISHED, 2, 1);
		e[2].sends = 1;
		e[2].hold = hold_b;
		init_end(&e[3], "c", cs, TCP_LAST_ACK, 3, 4);
		e[3].shut_wr = e[3].eof = 1;
		init_end(&e[4], "d", ds, TCP_FIN_WAIT2, 6, 5);
		e[4].shut_wr = 1;
		e[4].hold = hold_d;
		run(e, 5);
	}
	logfd = open_log(role);
	close(a6s), close(a4c), close(bs), close(cs), close(ds);
	init_end(&e[0], "a6", a6c, TCP_FIN_WAIT2, 0, 7);
	e[0].shut_wr = e[0].reads = 1;
	init_end(&e[1], "a4", a4s, TCP_CLOSE_WAIT, 8, 0);
	e[1].eof = e[1].sends = 1;
	init_end(&e[2], "b", bc, TCP_FIN_WAIT1, 1, 2);
	e[2].shut_wr = e[2].reads = 1;
	init_end(&e[3], "c", cc, TCP_FIN_WAIT2, 4, 3);
	e[3].shut_wr = 1;
	e[3].hold = hold_c;
	init_end(&e[4], "d", dc, TCP_CLOSING, 5, 6);
	e[4].shut_wr = e[4].eof = 1;
	run(e, 5);
	return 0;
}
