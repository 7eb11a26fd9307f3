/*
 * tcpest - established TCP connections over loopback, one IPv4 and one
 * IPv6, each between this pid namespace init (the client ends) and its
 * child (the ends it accepted), with data queued both ways at all times:
 *   c4 -> s4  127.0.0.1, through a listener l4 the child keeps open
 *             (SO_REUSEADDR, so that a restore binds it beside s4)
 *   c6 -> s6  [::1], its listener closed at once
 * Every socket has small buffers (SO_SNDBUF 65536, SO_RCVBUF 32768) and an
 * MSS of 1000 (TCP_MAXSEG), the client ends TCP_NODELAY. Each direction
 * carries a byte stream whose byte i is pattern(i, direction). Each end
 * first writes 80000 bytes, as much as goes (more than the peer's window:
 * the rest waits unsent from the start); then every tick (10 ms) each
 * process writes 1500 bytes to each of its ends (while less than 40000
 * wait in the send queue) and reads at most 1000 of what an end holds
 * beyond 1000 bytes (all of it after 5 ticks without), checking every
 * byte: so every receive queue is
 * full, its window nearly closed, and the send queue behind it holds
 * bytes not sent yet. Every tick it checks each end's four-tuple
 * (getsockname, getpeername), TCP_NODELAY, MSS, the TCP options agreed
 * at the handshake and the window scales (TCP_INFO), that the TCP
 * timestamp clock neither goes back nor runs ahead of CLOCK_MONOTONIC,
 * and that every direction moved on within the last 50 ticks (a
 * connection restored with a wrong sequence number or window stalls).
 * Each tick appends "tcpest-ROLE 127.0.0.1:P [::1]:Q N" to out-ROLE.log
 * (ROLE init or child); anything wrong is logged as CORRUPT and ends the
 * process (exit 3).
 *
 * A dump may freeze it anywhere: the connections are made before the
 * first log line, and nothing is connected or closed afterwards.
 *
 * build: gcc -static -O2 -o tcpest tcpest.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

#include "workload.h"

#define KEEP 1000   /* bytes left unread in every receive queue */
#define READ 1000   /* bytes read per tick and end, at most */
#define CHUNK 1500  /* bytes written per tick and end */
#define OUTQ 40000  /* no writes while this much waits to be sent or acked */
#define FILL 80000  /* written first: more than the peer's window */
#define MSS 1000
#define STALL 50    /* ticks a direction may stand still */

static int logfd;
static const char *role;

static void corrupt(const char *what, long got, long want)
{
	char line[192];

	snprintf(line, sizeof line, "CORRUPT tcpest-%s: %s %ld, want %ld (errno %d)\n", role, what, got, want, errno);
	say(logfd, line);
	_exit(3);
}

static unsigned char pattern(unsigned long i, int dir)
{
	return (unsigned char)(i * 131 + (i >> 9) * 7 + dir * 61);
}

static long mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* one end of a connection: what it sent and received so far, and what
 * must not change */
struct end {
	const char *name;
	int fd;
	int dir_out, dir_in; /* the pattern of each direction */
	int nodelay;
	unsigned long sent, rcvd;
	unsigned long moved; /* the tick it last received something */
	struct sockaddr_storage self, peer;
	int mss;
	unsigned char options, wscale; /* tcpi_options, tcpi_{snd,rcv}_wscale */
	unsigned int ts;                /* TCP_TIMESTAMP */
	long ts_mono;                   /* CLOCK_MONOTONIC then, ms */
};

static void setopt(int s, int level, int opt, int v)
{
	if (setsockopt(s, level, opt, &v, sizeof v))
		corrupt("setsockopt", opt, v);
}

static int getopt_int(const char *what, int s, int level, int opt)
{
	int v = -1;
	socklen_t len = sizeof v;

	if (getsockopt(s, level, opt, &v, &len))
		corrupt(what, -1, 0);
	return v;
}

static int sock(int family)
{
	int s = socket(family, SOCK_STREAM, 0);

	if (s < 0)
		corrupt("socket", s, 0);
	setopt(s, SOL_SOCKET, SO_SNDBUF, 65536);
	setopt(s, SOL_SOCKET, SO_RCVBUF, 32768);
	setopt(s, IPPROTO_TCP, TCP_MAXSEG, MSS);
	return s;
}

static int port(int s)
{
	struct sockaddr_in6 a;
	socklen_t len = sizeof a;

	if (getsockname(s, (struct sockaddr *)&a, &len))
		corrupt("getsockname", -1, 0);
	return ntohs(a.sin6_port);
}

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

static void info(int s, unsigned char *options, unsigned char *wscale)
{
	struct tcp_info ti;
	socklen_t len = sizeof ti;

	if (getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &len))
		corrupt("TCP_INFO", -1, 0);
	*options = ti.tcpi_options;
	*wscale = (unsigned char)(ti.tcpi_snd_wscale | ti.tcpi_rcv_wscale << 4);
}

static void init_end(struct end *e, const char *name, int fd, int dir_out, int dir_in, int nodelay)
{
	e->name = name;
	e->fd = fd;
	e->dir_out = dir_out;
	e->dir_in = dir_in;
	e->nodelay = nodelay;
	names(fd, &e->self, &e->peer);
	e->mss = getopt_int("TCP_MAXSEG", fd, IPPROTO_TCP, TCP_MAXSEG);
	info(fd, &e->options, &e->wscale);
	e->ts = (unsigned int)getopt_int("TCP_TIMESTAMP", fd, IPPROTO_TCP, TCP_TIMESTAMP);
	e->ts_mono = mono_ms();
}

static void check_end(struct end *e)
{
	struct sockaddr_storage self, peer;
	unsigned char options, wscale;
	char what[64];
	unsigned int ts;
	long mono;
	int v;

#define WRONG(fmt, got, want)                                  \
	do {                                                   \
		snprintf(what, sizeof what, "%s " fmt, e->name); \
		corrupt(what, (long)(got), (long)(want));      \
	} while (0)
	names(e->fd, &self, &peer);
	if (memcmp(&self, &e->self, sizeof self) || memcmp(&peer, &e->peer, sizeof peer))
		WRONG("four-tuple changed, port", port(e->fd), 0);
	if ((v = getopt_int("TCP_NODELAY", e->fd, IPPROTO_TCP, TCP_NODELAY)) != e->nodelay)
		WRONG("TCP_NODELAY", v, e->nodelay);
	if ((v = getopt_int("TCP_MAXSEG", e->fd, IPPROTO_TCP, TCP_MAXSEG)) != e->mss)
		WRONG("TCP_MAXSEG", v, e->mss);
	info(e->fd, &options, &wscale);
	if (options != e->options)
		WRONG("tcpi_options", options, e->options);
	if (wscale != e->wscale)
		WRONG("window scales", wscale, e->wscale);
	/* the timestamp clock counts milliseconds from an offset of the
	 * connection's own: it goes on from where it was, as the monotonic
	 * clock does (a restored tree's time namespace keeps that one going
	 * from the dump on) */
	ts = (unsigned int)getopt_int("TCP_TIMESTAMP", e->fd, IPPROTO_TCP, TCP_TIMESTAMP);
	mono = mono_ms();
	if ((int)(ts - e->ts) < -1)
		WRONG("TCP timestamp went back by", e->ts - ts, 0);
	if ((long)(int)(ts - e->ts) > mono - e->ts_mono + 200)
		WRONG("TCP timestamp ran ahead of CLOCK_MONOTONIC by ms", (long)(int)(ts - e->ts) - (mono - e->ts_mono), 0);
	e->ts = ts;
	e->ts_mono = mono;
}

static void tick_end(struct end *e, unsigned long n)
{
	unsigned char buf[CHUNK];
	char what[64];
	int q = 0, keep;
	long k;

	check_end(e);
	/* read what is queued beyond KEEP, every byte checked; all of it
	 * after a few ticks without: a partly read buffer may hold so much
	 * memory that the window stays closed */
	if (ioctl(e->fd, FIONREAD, &q))
		corrupt("FIONREAD", -1, 0);
	keep = n - e->moved > 5 ? 0 : KEEP;
	if (q > keep) {
		k = recv(e->fd, buf, q - keep < READ ? q - keep : READ, MSG_DONTWAIT);
		if (k <= 0)
			WRONG("recv", k, q - keep);
		for (long j = 0; j < k; j++) {
			if (buf[j] != pattern(e->rcvd + j, e->dir_in)) {
				snprintf(what, sizeof what, "%s byte %lu", e->name, e->rcvd + j);
				corrupt(what, buf[j], pattern(e->rcvd + j, e->dir_in));
			}
		}
		e->rcvd += k;
		e->moved = n;
	}
	if (n - e->moved > STALL) {
		snprintf(what, sizeof what, "%s stalled at byte %lu, ticks", e->name, e->rcvd);
		corrupt(what, (long)(n - e->moved), STALL);
	}
	if (ioctl(e->fd, TIOCOUTQ, &q))
		corrupt("SIOCOUTQ", -1, 0);
	if (q < OUTQ) {
		for (int j = 0; j < CHUNK; j++)
			buf[j] = pattern(e->sent + j, e->dir_out);
		k = send(e->fd, buf, CHUNK, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (k < 0 && errno != EAGAIN)
			WRONG("send", k, CHUNK);
		if (k > 0)
			e->sent += k;
	}
}

/* writes FILL bytes to e, as much as goes: its peer's window fills, the
 * rest waits unsent */
static void fill(struct end *e)
{
	static unsigned char buf[FILL];
	long k;

	for (int j = 0; j < FILL; j++)
		buf[j] = pattern(e->sent + j, e->dir_out);
	k = send(e->fd, buf, FILL, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (k <= 0)
		corrupt("fill", k, FILL);
	e->sent += k;
}

static void run(struct end *a, struct end *b, int p4, int p6)
{
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	char line[128];

	fill(a);
	fill(b);
	a->moved = b->moved = 0;
	for (unsigned long n = 1;; n++) {
		tick_end(a, n);
		tick_end(b, n);
		snprintf(line, sizeof line, "tcpest-%s 127.0.0.1:%d [::1]:%d %lu\n", role, p4, p6, n);
		say(logfd, line);
		while (nanosleep(&tick, &tick) && errno == EINTR)
			;
		tick.tv_nsec = 10 * 1000 * 1000;
	}
}

int main(void)
{
	struct sockaddr_in a4 = { .sin_family = AF_INET };
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	struct end c4, c6, s4, s6;
	int l4, l6, fc4, fc6, fs4, fs6, p4, p6;
	pid_t child;

	role = "init";
	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l4 = sock(AF_INET);
	setopt(l4, SOL_SOCKET, SO_REUSEADDR, 1);
	if (bind(l4, (struct sockaddr *)&a4, sizeof a4) || listen(l4, 4))
		corrupt("l4 listen", -1, 0);
	p4 = port(l4);
	l6 = sock(AF_INET6);
	if (bind(l6, (struct sockaddr *)&a6, sizeof a6) || listen(l6, 4))
		corrupt("l6 listen", -1, 0);
	p6 = port(l6);

	fc4 = sock(AF_INET);
	setopt(fc4, IPPROTO_TCP, TCP_NODELAY, 1);
	a4.sin_port = htons(p4);
	if (connect(fc4, (struct sockaddr *)&a4, sizeof a4))
		corrupt("c4 connect", -1, 0);
	fc6 = sock(AF_INET6);
	setopt(fc6, IPPROTO_TCP, TCP_NODELAY, 1);
	a6.sin6_port = htons(p6);
	if (connect(fc6, (struct sockaddr *)&a6, sizeof a6))
		corrupt("c6 connect", -1, 0);
	fs4 = accept(l4, NULL, NULL);
	fs6 = accept(l6, NULL, NULL);
	if (fs4 < 0 || fs6 < 0)
		corrupt("accept", -1, 0);
	close(l6);

	child = fork();
	if (child < 0)
		corrupt("fork", -1, 0);
	if (child == 0) {
		role = "child";
		logfd = open_log(role);
		close(fc4);
		close(fc6);
		init_end(&s4, "s4", fs4, 2, 1, 0);
		init_end(&s6, "s6", fs6, 4, 3, 0);
		run(&s4, &s6, p4, p6);
	}
	logfd = open_log(role);
	close(fs4);
	close(fs6);
	close(l4);
	init_end(&c4, "c4", fc4, 1, 2, 1);
	init_end(&c6, "c6", fc6, 3, 4, 1);
	run(&c4, &c6, p4, p6);
	return 0;
}
