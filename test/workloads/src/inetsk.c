/*
 * inetsk - a pid namespace init holding the inet sockets CRIU restores
 * without special options, each with options of its own:
 *   tcp4  a TCP listener on 127.0.0.1 (a port it picks), SO_REUSEADDR,
 *         TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE 77, backlog 7
 *   tcp6  a TCP listener on [::1], IPV6_V6ONLY, O_NONBLOCK, SO_RCVBUF
 *   udp   a UDP socket bound on 127.0.0.1, IP_TOS 0x10, SO_RCVTIMEO 2 s
 *   pa,pb a UDP pair on [::1], connected to each other
 *   lite  a UDP-Lite socket on 127.0.0.1, connected to itself
 *   free  a UDP socket never bound
 *   bound a TCP socket bound on 127.0.0.1, neither listening nor connected
 *   shut  a UDP socket bound on 127.0.0.1, shut down both ways
 *   rdhup a TCP socket never bound, shut down for reading
 * Every tick (10 ms) it checks each socket's address and options, sends
 * a datagram to udp from a socket of the tick, one each way between pa
 * and pb, one from lite to itself, and receives them all. Each tick
 * appends "inetsk 127.0.0.1:P [::1]:Q N" to out-inetsk.log; anything
 * wrong is logged as CORRUPT and ends the process (exit 3).
 *
 * A dump may freeze it anywhere, so it never holds what can not be
 * dumped or restored: it connects to each listener, accepts, exchanges a
 * byte each way and closes both ends (for tcp4 the accepted one first,
 * so that its TIME_WAIT holds the listener's port) only at its start and
 * after a restore, which it tells by its listener's inode changing (a
 * restored socket is a new one), never while logs are looked for. A
 * datagram in flight at a dump is lost, as CRIU and crest drop the
 * receive queues of UDP sockets: one sent before a restore may be
 * missing, one sent after it may not.
 *
 * build: gcc -static -O2 -o inetsk inetsk.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <time.h>

#include "workload.h"

#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif

static int logfd;

static void corrupt(const char *what, long got, long want)
{
	char line[160];

	snprintf(line, sizeof line, "CORRUPT inetsk: %s %ld, want %ld (errno %d)\n", what, got, want, errno);
	say(logfd, line);
	_exit(3);
}

static int sock(int family, int type, int proto)
{
	int s = socket(family, type, proto);

	if (s < 0)
		corrupt("socket", s, 0);
	return s;
}

static void setopt(int s, int level, int opt, int v)
{
	if (setsockopt(s, level, opt, &v, sizeof v))
		corrupt("setsockopt", opt, v);
}

static void wantopt(const char *what, int s, int level, int opt, int want)
{
	int v = -1;
	socklen_t len = sizeof v;

	if (getsockopt(s, level, opt, &v, &len))
		corrupt(what, -1, want);
	if (v != want)
		corrupt(what, v, want);
}

static struct sockaddr_in lo4(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static struct sockaddr_in6 lo6(int port)
{
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_LOOPBACK_INIT };

	return a;
}

/* the port s is bound to (0: none) */
static int port(int s)
{
	struct sockaddr_in6 a;
	socklen_t len = sizeof a;

	if (getsockname(s, (struct sockaddr *)&a, &len))
		corrupt("getsockname", -1, 0);
	return ntohs(a.sin6_port); /* sin_port is at the same offset */
}

/*
 * connects to listener l at addr, accepts, a byte each way, and closes:
 * the accepted end first when server_first (its TIME_WAIT then holds the
 * listener's port, which a listener with SO_REUSEADDR may bind again),
 * else the connecting end (a TIME_WAIT of a listener without it would
 * keep its port from being bound again for a minute, restore or not).
 * The other end waits for the end of file first.
 */
static void handshake(const char *what, int l, const struct sockaddr *addr, socklen_t len, unsigned long n, int server_first)
{
	struct pollfd p = { .fd = l, .events = POLLIN };
	int c = sock(addr->sa_family, SOCK_STREAM, 0), a, first, second;
	char x = (char)n, y = 0;

	if (connect(c, addr, len))
		corrupt(what, -1, 0);
	while (poll(&p, 1, 1000) < 0 && errno == EINTR)
		;
	a = accept(l, NULL, NULL);
	if (a < 0)
		corrupt(what, a, 0);
	if (write(c, &x, 1) != 1 || read(a, &y, 1) != 1 || y != x)
		corrupt(what, y, x);
	if (write(a, &x, 1) != 1 || read(c, &y, 1) != 1 || y != x)
		corrupt(what, y, x);
	first = server_first ? a : c;
	second = server_first ? c : a;
	close(first);
	if (read(second, &y, 1) != 0)
		corrupt(what, -1, 0);
	close(second);
}

/* the inode of socket s: a restore makes every socket anew */
static ino_t inode(int s)
{
	struct stat st;

	if (fstat(s, &st))
		corrupt("fstat", -1, 0);
	return st.st_ino;
}

/*
 * receives one datagram of s, which must be n; it may be missing only if
 * a restore came since it was sent (sent_ino, the listener's inode then,
 * is not that of listener now)
 */
static void receive(const char *what, int s, unsigned long n, int listener, ino_t sent_ino)
{
	struct pollfd p = { .fd = s, .events = POLLIN };
	unsigned long got = 0;
	ssize_t k;
	int r;

	while ((r = poll(&p, 1, 2000)) < 0 && errno == EINTR)
		;
	if (r == 0 && inode(listener) != sent_ino)
		return; /* lost in the restore */
	do
		k = recv(s, &got, sizeof got, MSG_DONTWAIT);
	while (k < 0 && errno == EINTR);
	if (k != sizeof got || got != n)
		corrupt(what, (long)got, (long)n);
}

int main(void)
{
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	struct timeval tmo = { 2, 0 };
	struct sockaddr_in a4;
	struct sockaddr_in6 a6;
	int tcp4, tcp6, udp, pa, pb, lite, fr, bound, shut, rdhup;
	int p4, p6, pudp, pbound;
	ino_t shaken = 0;
	char line[128];

	logfd = open_log("inetsk");

	tcp4 = sock(AF_INET, SOCK_STREAM, 0);
	setopt(tcp4, SOL_SOCKET, SO_REUSEADDR, 1);
	setopt(tcp4, IPPROTO_TCP, TCP_NODELAY, 1);
	setopt(tcp4, SOL_SOCKET, SO_KEEPALIVE, 1);
	setopt(tcp4, IPPROTO_TCP, TCP_KEEPIDLE, 77);
	a4 = lo4(0);
	if (bind(tcp4, (struct sockaddr *)&a4, sizeof a4) || listen(tcp4, 7))
		corrupt("tcp4 listen", -1, 0);
	p4 = port(tcp4);

	tcp6 = sock(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
	setopt(tcp6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
	setopt(tcp6, SOL_SOCKET, SO_RCVBUF, 50000);
	a6 = lo6(0);
	if (bind(tcp6, (struct sockaddr *)&a6, sizeof a6) || listen(tcp6, 5))
		corrupt("tcp6 listen", -1, 0);
	p6 = port(tcp6);

	udp = sock(AF_INET, SOCK_DGRAM, 0);
	setopt(udp, IPPROTO_IP, IP_TOS, 0x10);
	if (setsockopt(udp, SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof tmo))
		corrupt("SO_RCVTIMEO", -1, 0);
	a4 = lo4(0);
	if (bind(udp, (struct sockaddr *)&a4, sizeof a4))
		corrupt("udp bind", -1, 0);
	pudp = port(udp);

	pa = sock(AF_INET6, SOCK_DGRAM, 0);
	pb = sock(AF_INET6, SOCK_DGRAM, 0);
	a6 = lo6(0);
	if (bind(pa, (struct sockaddr *)&a6, sizeof a6) || bind(pb, (struct sockaddr *)&a6, sizeof a6))
		corrupt("pair bind", -1, 0);
	a6 = lo6(port(pb));
	if (connect(pa, (struct sockaddr *)&a6, sizeof a6))
		corrupt("pair connect", -1, 0);
	a6 = lo6(port(pa));
	if (connect(pb, (struct sockaddr *)&a6, sizeof a6))
		corrupt("pair connect", -1, 0);

	lite = sock(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE);
	a4 = lo4(0);
	if (bind(lite, (struct sockaddr *)&a4, sizeof a4))
		corrupt("lite bind", -1, 0);
	a4 = lo4(port(lite));
	if (connect(lite, (struct sockaddr *)&a4, sizeof a4))
		corrupt("lite connect", -1, 0);

	fr = sock(AF_INET, SOCK_DGRAM, 0);

	bound = sock(AF_INET, SOCK_STREAM, 0);
	a4 = lo4(0);
	if (bind(bound, (struct sockaddr *)&a4, sizeof a4))
		corrupt("bound bind", -1, 0);
	pbound = port(bound);

	/* shutdown(2) of a socket without a peer says ENOTCONN, and keeps
	 * the shutdown all the same */
	shut = sock(AF_INET, SOCK_DGRAM, 0);
	a4 = lo4(0);
	if (bind(shut, (struct sockaddr *)&a4, sizeof a4))
		corrupt("shut bind", -1, 0);
	shutdown(shut, SHUT_RDWR);
	rdhup = sock(AF_INET, SOCK_STREAM, 0);
	shutdown(rdhup, SHUT_RD);

	for (unsigned long n = 1;; n++) {
		ino_t ino = inode(tcp4);
		int s;

		if (port(tcp4) != p4 || port(tcp6) != p6 || port(udp) != pudp || port(bound) != pbound || port(fr) != 0)
			corrupt("ports", port(tcp4), p4);
		wantopt("tcp4 SO_ACCEPTCONN", tcp4, SOL_SOCKET, SO_ACCEPTCONN, 1);
		wantopt("tcp4 SO_REUSEADDR", tcp4, SOL_SOCKET, SO_REUSEADDR, 1);
		wantopt("tcp4 TCP_NODELAY", tcp4, IPPROTO_TCP, TCP_NODELAY, 1);
		wantopt("tcp4 SO_KEEPALIVE", tcp4, SOL_SOCKET, SO_KEEPALIVE, 1);
		wantopt("tcp4 TCP_KEEPIDLE", tcp4, IPPROTO_TCP, TCP_KEEPIDLE, 77);
		wantopt("tcp6 SO_ACCEPTCONN", tcp6, SOL_SOCKET, SO_ACCEPTCONN, 1);
		wantopt("tcp6 IPV6_V6ONLY", tcp6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
		wantopt("tcp6 SO_REUSEADDR", tcp6, SOL_SOCKET, SO_REUSEADDR, 0);
		wantopt("tcp6 SO_RCVBUF", tcp6, SOL_SOCKET, SO_RCVBUF, 100000);
		if (!(fcntl(tcp6, F_GETFL) & O_NONBLOCK))
			corrupt("tcp6 O_NONBLOCK", 0, 1);
		wantopt("udp IP_TOS", udp, IPPROTO_IP, IP_TOS, 0x10);
		wantopt("bound SO_ACCEPTCONN", bound, SOL_SOCKET, SO_ACCEPTCONN, 0);
		wantopt("lite SO_PROTOCOL", lite, SOL_SOCKET, SO_PROTOCOL, IPPROTO_UDPLITE);
		{
			struct pollfd hup[2] = { { .fd = shut, .events = POLLRDHUP }, { .fd = rdhup, .events = POLLRDHUP } };

			/* a UDP socket shut down both ways says POLLHUP|POLLRDHUP,
			 * a closed TCP socket always POLLHUP, POLLRDHUP once shut
			 * down for reading */
			if (poll(hup, 2, 0) != 2 || hup[0].revents != (POLLHUP | POLLRDHUP) ||
			    !(hup[1].revents & POLLRDHUP))
				corrupt("shutdown (poll events)", hup[0].revents, POLLHUP | POLLRDHUP);
		}

		if (ino != shaken) {
			/* the start, or the first tick after a restore */
			a4 = lo4(p4);
			handshake("tcp4 handshake", tcp4, (struct sockaddr *)&a4, sizeof a4, n, 1);
			a6 = lo6(p6);
			handshake("tcp6 handshake", tcp6, (struct sockaddr *)&a6, sizeof a6, n, 0);
			shaken = ino;
		}

		s = sock(AF_INET, SOCK_DGRAM, 0);
		a4 = lo4(pudp);
		if (sendto(s, &n, sizeof n, 0, (struct sockaddr *)&a4, sizeof a4) != sizeof n)
			corrupt("udp send", -1, 0);
		close(s);
		receive("udp receive", udp, n, tcp4, ino);
		if (send(pa, &n, sizeof n, 0) != sizeof n || send(pb, &n, sizeof n, 0) != sizeof n)
			corrupt("pair send", -1, 0);
		receive("pair receive b", pb, n, tcp4, ino);
		receive("pair receive a", pa, n, tcp4, ino);
		if (send(lite, &n, sizeof n, 0) != sizeof n)
			corrupt("lite send", -1, 0);
		receive("lite receive", lite, n, tcp4, ino);

		snprintf(line, sizeof line, "inetsk 127.0.0.1:%d [::1]:%d %lu\n", p4, p6, n);
		say(logfd, line);
		while (nanosleep(&tick, &tick) && errno == EINTR)
			;
		tick.tv_nsec = 10 * 1000 * 1000;
	}
}
