/*
 * netns - a pid namespace init in a net namespace of its own (launch -N),
 * with what a checkpoint of the namespace must carry. It sets up, before
 * its first log line:
 *
 *   lo up, its mtu 61000;
 *   addresses 10.53.0.1/24 and fd53::1/64 on lo (netlink);
 *   routes 10.54.0.0/16 and fd54::/64 dev lo, metric 77;
 *   a rule: to 10.55.0.0/16 prohibit, preference 1000;
 *   an iptables rule (iptables, whatever its backend): INPUT -p udp
 *   --dport 9977 -j DROP;
 *   sysctls off their defaults: net/unix/max_dgram_qlen 77,
 *   net/ipv4/ping_group_range "100 200", net/ipv4/conf/all/log_martians
 *   1, net/ipv4/conf/default/arp_ignore 2, net/ipv4/conf/lo/route_localnet
 *   1, net/ipv6/conf/default/hop_limit 44, net/ipv6/conf/lo/hop_limit 33;
 *   sockets: a TCP listener on 127.0.0.1:9970 and a connection to it
 *   (both ends here), UDP sockets bound to 127.0.0.1:9977 and :9978, one
 *   to send from, UDP sockets bound to 10.53.0.1:9979 and [fd53::1]:9979
 *   (they need the addresses back before the sockets), two UDP probes,
 *   and a unix datagram socket bound to the abstract name "crest-netns"
 *   (abstract names are the net namespace's) with one to send from.
 *
 * No packet is sent to any address but 127.0.0.1: the routes and the rule
 * are checked by connecting UDP probes, which only looks the route up.
 *
 * Every 10 ms it checks: lo up with its mtu, 10.53.0.1 on it, the
 * sysctls, that a probe connects to 10.54.0.7 and [fd54::7] (the routes)
 * and gets EACCES for 10.55.0.7 (the rule), 8 bytes each way over the TCP
 * connection, and a datagram to 127.0.0.1:9978 arriving while one sent to
 * 9977 before it does not (the iptables rule; three tries, since a dump
 * may drop a queued datagram). It appends "netns N" to out-netns.log, or
 * a CORRUPT line saying what differs, and exits 3.
 *
 * When a file "check-net" appears it makes a new TCP connection to the
 * listener and passes a byte over it (CRIU's lock of the namespace must be
 * gone), fills the abstract unix socket until it is full (max_dgram_qlen
 * 77: the receiver takes 78 datagrams, a socket made in a namespace
 * without the sysctl 513) and drains it, checks fd53::1 in
 * /proc/net/if_inet6, appends "net ok N" to out-net.log (or CORRUPT) and
 * removes the file.
 *
 * build: gcc -static -O2 -o netns netns.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/fib_rules.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include "workload.h"

#define MTU 61000
#define QLEN 77

static const struct {
	const char *path, *set, *want;
} sysctls[] = {
	{ "/proc/sys/net/unix/max_dgram_qlen", "77", "77\n" },
	{ "/proc/sys/net/ipv4/ping_group_range", "100 200", "100\t200\n" },
	{ "/proc/sys/net/ipv4/conf/all/log_martians", "1", "1\n" },
	{ "/proc/sys/net/ipv4/conf/default/arp_ignore", "2", "2\n" },
	{ "/proc/sys/net/ipv4/conf/lo/route_localnet", "1", "1\n" },
	{ "/proc/sys/net/ipv6/conf/default/hop_limit", "44", "44\n" },
	{ "/proc/sys/net/ipv6/conf/lo/hop_limit", "33", "33\n" },
};

static int log_fd;
static char line[512];
/* sockets */
static int lsn, cli, srv, rx7, rx8, tx, a4, a6, probe4, probe6, uq, usend;
static unsigned long long counter;

static __attribute__((noreturn)) void corrupt_to(int fd, const char *what)
{
	char out[600];
	int len = snprintf(out, sizeof out, "CORRUPT %s (errno %d)\n", what, errno);

	if (write(fd, out, len) != len)
		_exit(4);
	_exit(3);
}

static __attribute__((noreturn)) void corrupt(const char *what)
{
	corrupt_to(log_fd, what);
}

static void put(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);

	if (fd < 0 || write(fd, value, strlen(value)) != (ssize_t)strlen(value))
		corrupt(path);
	close(fd);
}

/* --- netlink, at setup only --- */

struct req {
	struct nlmsghdr h;
	char body[256];
};

static void attr(struct req *r, int type, const void *data, int len)
{
	struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->h.nlmsg_len));

	a->rta_type = type;
	a->rta_len = RTA_LENGTH(len);
	memcpy(RTA_DATA(a), data, len);
	r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

static void talk(int nl, struct req *r, const char *what)
{
	char buf[4096];
	ssize_t n;

	r->h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
	if (send(nl, r, r->h.nlmsg_len, 0) < 0)
		corrupt(what);
	n = recv(nl, buf, sizeof buf, 0);
	if (n < (ssize_t)sizeof(struct nlmsghdr))
		corrupt(what);
	struct nlmsghdr *h = (struct nlmsghdr *)buf;
	if (h->nlmsg_type == NLMSG_ERROR) {
		struct nlmsgerr *e = NLMSG_DATA(h);

		if (e->error) {
			errno = -e->error;
			corrupt(what);
		}
	}
}

static void add_addr(int nl, int family, const void *addr, int len, int plen, int flags, const char *what)
{
	struct req r = { 0 };
	struct ifaddrmsg *ifa = NLMSG_DATA(&r.h);

	r.h.nlmsg_len = NLMSG_LENGTH(sizeof *ifa);
	r.h.nlmsg_type = RTM_NEWADDR;
	ifa->ifa_family = family;
	ifa->ifa_prefixlen = plen;
	ifa->ifa_flags = flags;
	ifa->ifa_scope = RT_SCOPE_UNIVERSE;
	ifa->ifa_index = if_nametoindex("lo");
	attr(&r, IFA_LOCAL, addr, len);
	attr(&r, IFA_ADDRESS, addr, len);
	talk(nl, &r, what);
}

static void add_route(int nl, int family, const void *dst, int len, int plen, const char *what)
{
	struct req r = { 0 };
	struct rtmsg *rt = NLMSG_DATA(&r.h);
	int oif = if_nametoindex("lo"), metric = 77;

	r.h.nlmsg_len = NLMSG_LENGTH(sizeof *rt);
	r.h.nlmsg_type = RTM_NEWROUTE;
	rt->rtm_family = family;
	rt->rtm_dst_len = plen;
	rt->rtm_table = RT_TABLE_MAIN;
	rt->rtm_protocol = RTPROT_STATIC;
	rt->rtm_scope = RT_SCOPE_LINK;
	rt->rtm_type = RTN_UNICAST;
	attr(&r, RTA_DST, dst, len);
	attr(&r, RTA_OIF, &oif, sizeof oif);
	attr(&r, RTA_PRIORITY, &metric, sizeof metric);
	talk(nl, &r, what);
}

static void add_rule(int nl)
{
	struct req r = { 0 };
	struct fib_rule_hdr *frh = NLMSG_DATA(&r.h);
	struct in_addr dst;
	int pref = 1000;

	inet_pton(AF_INET, "10.55.0.0", &dst);
	r.h.nlmsg_len = NLMSG_LENGTH(sizeof *frh);
	r.h.nlmsg_type = RTM_NEWRULE;
	frh->family = AF_INET;
	frh->dst_len = 16;
	frh->action = FR_ACT_PROHIBIT;
	attr(&r, FRA_DST, &dst, sizeof dst);
	attr(&r, FRA_PRIORITY, &pref, sizeof pref);
	talk(nl, &r, "rule to 10.55.0.0/16 prohibit");
}

/* runs argv, waits for it */
static void run(char *const argv[], const char *what)
{
	static char *const env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL };
	int status;
	pid_t pid = fork();

	if (pid < 0)
		corrupt(what);
	if (pid == 0) {
		execve(argv[0], argv, env);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		snprintf(line, sizeof line, "%s: status %#x", what, status);
		corrupt(line);
	}
}

static struct sockaddr_in in4(const char *a, int port)
{
	struct sockaddr_in s = { .sin_family = AF_INET, .sin_port = htons(port) };

	inet_pton(AF_INET, a, &s.sin_addr);
	return s;
}

static struct sockaddr_in6 in6(const char *a, int port)
{
	struct sockaddr_in6 s = { .sin6_family = AF_INET6, .sin6_port = htons(port) };

	inet_pton(AF_INET6, a, &s.sin6_addr);
	return s;
}

static int udp_bound(int family, const void *addr, socklen_t len, const char *what)
{
	int s = socket(family, SOCK_DGRAM, 0);

	if (s < 0 || bind(s, addr, len))
		corrupt(what);
	return s;
}

static struct ifreq lo_req(void)
{
	struct ifreq ifr = { 0 };

	strcpy(ifr.ifr_name, "lo");
	return ifr;
}

static void setup(void)
{
	struct ifreq ifr = lo_req();
	int one = 1, s, nl;

	/* lo up with its mtu */
	s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0)
		corrupt("socket");
	ifr.ifr_mtu = MTU;
	if (ioctl(s, SIOCSIFMTU, &ifr))
		corrupt("SIOCSIFMTU lo");
	ifr = lo_req();
	if (ioctl(s, SIOCGIFFLAGS, &ifr))
		corrupt("SIOCGIFFLAGS lo");
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr))
		corrupt("SIOCSIFFLAGS lo");
	close(s);

	for (unsigned i = 0; i < sizeof sysctls / sizeof sysctls[0]; i++)
		put(sysctls[i].path, sysctls[i].set);

	nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (nl < 0)
		corrupt("netlink socket");
	struct in_addr a4addr, r4;
	struct in6_addr a6addr, r6;
	inet_pton(AF_INET, "10.53.0.1", &a4addr);
	inet_pton(AF_INET6, "fd53::1", &a6addr);
	inet_pton(AF_INET, "10.54.0.0", &r4);
	inet_pton(AF_INET6, "fd54::", &r6);
	add_addr(nl, AF_INET, &a4addr, sizeof a4addr, 24, 0, "address 10.53.0.1/24");
	add_addr(nl, AF_INET6, &a6addr, sizeof a6addr, 64, IFA_F_NODAD, "address fd53::1/64");
	add_route(nl, AF_INET, &r4, sizeof r4, 16, "route 10.54.0.0/16");
	add_route(nl, AF_INET6, &r6, sizeof r6, 64, "route fd54::/64");
	add_rule(nl);
	close(nl);

	char *ipt[] = { "/usr/sbin/iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "9977", "-j", "DROP", NULL };
	if (access(ipt[0], X_OK))
		ipt[0] = "/sbin/iptables";
	run(ipt, "iptables -A INPUT -p udp --dport 9977 -j DROP");

	/* sockets */
	struct sockaddr_in l = in4("127.0.0.1", 9970);
	lsn = socket(AF_INET, SOCK_STREAM, 0);
	if (lsn < 0 || setsockopt(lsn, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
	    bind(lsn, (struct sockaddr *)&l, sizeof l) || listen(lsn, 8))
		corrupt("listener 127.0.0.1:9970");
	cli = socket(AF_INET, SOCK_STREAM, 0);
	if (cli < 0 || connect(cli, (struct sockaddr *)&l, sizeof l))
		corrupt("connect 127.0.0.1:9970");
	srv = accept(lsn, NULL, NULL);
	if (srv < 0)
		corrupt("accept");
	struct sockaddr_in p7 = in4("127.0.0.1", 9977), p8 = in4("127.0.0.1", 9978), any = in4("127.0.0.1", 0);
	rx7 = udp_bound(AF_INET, &p7, sizeof p7, "udp 127.0.0.1:9977");
	rx8 = udp_bound(AF_INET, &p8, sizeof p8, "udp 127.0.0.1:9978");
	tx = udp_bound(AF_INET, &any, sizeof any, "udp 127.0.0.1:0");
	struct sockaddr_in b4 = in4("10.53.0.1", 9979);
	struct sockaddr_in6 b6 = in6("fd53::1", 9979);
	a4 = udp_bound(AF_INET, &b4, sizeof b4, "udp 10.53.0.1:9979");
	a6 = udp_bound(AF_INET6, &b6, sizeof b6, "udp [fd53::1]:9979");
	probe4 = socket(AF_INET, SOCK_DGRAM, 0);
	probe6 = socket(AF_INET6, SOCK_DGRAM, 0);
	if (probe4 < 0 || probe6 < 0)
		corrupt("probes");

	struct sockaddr_un u = { .sun_family = AF_UNIX };
	memcpy(u.sun_path + 1, "crest-netns", 11);
	uq = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (uq < 0 || bind(uq, (struct sockaddr *)&u, offsetof(struct sockaddr_un, sun_path) + 12))
		corrupt("unix @crest-netns");
	usend = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (usend < 0)
		corrupt("unix sender");
}

/* connect probe s to addr: 0 or errno */
static int probe(int s, const void *addr, socklen_t len)
{
	struct sockaddr none = { .sa_family = AF_UNSPEC };
	int err = connect(s, addr, len) ? errno : 0;

	connect(s, &none, sizeof none);
	return err;
}

static int wait_in(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, ms) == 1;
}

static void exchange(int from, int to, const char *what)
{
	unsigned long long got;

	counter++;
	if (write(from, &counter, sizeof counter) != sizeof counter)
		corrupt(what);
	if (!wait_in(to, 5000) || read(to, &got, sizeof got) != sizeof got || got != counter) {
		snprintf(line, sizeof line, "%s: nothing in 5 s, or not %llu", what, counter);
		corrupt(line);
	}
}

/* the iptables rule: 9977 dropped, 9978 not */
static void check_drop(void)
{
	struct sockaddr_in p7 = in4("127.0.0.1", 9977), p8 = in4("127.0.0.1", 9978);

	for (int try = 0; try < 3; try++) {
		unsigned long long seq = ++counter, got;

		if (sendto(tx, &seq, sizeof seq, 0, (struct sockaddr *)&p7, sizeof p7) != sizeof seq ||
		    sendto(tx, &seq, sizeof seq, 0, (struct sockaddr *)&p8, sizeof p8) != sizeof seq)
			corrupt("udp send");
		while (wait_in(rx8, 1000)) {
			if (recv(rx8, &got, sizeof got, 0) != sizeof got)
				corrupt("udp 9978 recv");
			if (got != seq)
				continue; /* an older try's */
			if (recv(rx7, &got, sizeof got, MSG_DONTWAIT) >= 0)
				corrupt("a datagram to 9977 passed the iptables rule");
			return;
		}
	}
	corrupt("no datagram to 127.0.0.1:9978 in 3 tries");
}

static void check(void)
{
	struct ifreq ifr = lo_req();
	char buf[1024];
	struct ifconf ifc = { .ifc_len = sizeof buf, .ifc_buf = buf };
	int found = 0, e;

	if (ioctl(probe4, SIOCGIFFLAGS, &ifr) || !(ifr.ifr_flags & IFF_UP))
		corrupt("lo not up");
	ifr = lo_req();
	if (ioctl(probe4, SIOCGIFMTU, &ifr) || ifr.ifr_mtu != MTU) {
		snprintf(line, sizeof line, "lo mtu %d", ifr.ifr_mtu);
		corrupt(line);
	}
	if (ioctl(probe4, SIOCGIFCONF, &ifc))
		corrupt("SIOCGIFCONF");
	for (struct ifreq *r = ifc.ifc_req; (char *)(r + 1) <= buf + ifc.ifc_len; r++) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&r->ifr_addr;

		if (!strcmp(r->ifr_name, "lo") && sin->sin_addr.s_addr == htonl(0x0a350001))
			found = 1;
	}
	if (!found)
		corrupt("10.53.0.1 not on lo");
	for (unsigned i = 0; i < sizeof sysctls / sizeof sysctls[0]; i++)
		if (!file_holds(sysctls[i].path, sysctls[i].want, NULL, 0))
			corrupt(sysctls[i].path);

	struct sockaddr_in r4 = in4("10.54.0.7", 9), p4 = in4("10.55.0.7", 9);
	struct sockaddr_in6 r6 = in6("fd54::7", 9);
	if ((e = probe(probe4, &r4, sizeof r4))) {
		errno = e;
		corrupt("no route to 10.54.0.7");
	}
	if ((e = probe(probe6, &r6, sizeof r6))) {
		errno = e;
		corrupt("no route to fd54::7");
	}
	if ((e = probe(probe4, &p4, sizeof p4)) != EACCES) {
		errno = e;
		corrupt("10.55.0.7 not prohibited");
	}
	exchange(cli, srv, "tcp client to server");
	exchange(srv, cli, "tcp server to client");
	check_drop();
}

static void check_net(unsigned long n)
{
	int fd = open_log("net");
	struct sockaddr_in l = in4("127.0.0.1", 9970);
	int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), s;
	char b = 'x';

	/* a new connection to the listener */
	if (c < 0 || (connect(c, (struct sockaddr *)&l, sizeof l) && errno != EINPROGRESS))
		corrupt_to(fd, "new connection");
	if (!wait_in(lsn, 5000))
		corrupt_to(fd, "new connection not accepted in 5 s");
	s = accept(lsn, NULL, NULL);
	if (s < 0 || write(s, &b, 1) != 1 || !wait_in(c, 5000) || read(c, &b, 1) != 1 || b != 'x')
		corrupt_to(fd, "new connection: no byte");
	close(s);
	close(c);

	/* the abstract socket's queue: max_dgram_qlen */
	struct sockaddr_un u = { .sun_family = AF_UNIX };
	int sent = 0;
	memcpy(u.sun_path + 1, "crest-netns", 11);
	while (sendto(usend, &b, 1, 0, (struct sockaddr *)&u, offsetof(struct sockaddr_un, sun_path) + 12) == 1)
		if (++sent > 1000)
			break;
	if (errno != EAGAIN || sent != QLEN + 1) {
		snprintf(line, sizeof line, "@crest-netns took %d datagrams, want %d", sent, QLEN + 1);
		corrupt_to(fd, line);
	}
	for (int i = 0; i < sent; i++)
		if (recv(uq, &b, 1, MSG_DONTWAIT) != 1)
			corrupt_to(fd, "@crest-netns drain");

	/* fd53::1 */
	char buf[4096];
	int in = open("/proc/net/if_inet6", O_RDONLY);
	ssize_t got = in < 0 ? -1 : read(in, buf, sizeof buf - 1);
	if (in >= 0)
		close(in);
	if (got < 0)
		corrupt_to(fd, "/proc/net/if_inet6");
	buf[got] = 0;
	if (!strstr(buf, "fd530000000000000000000000000001"))
		corrupt_to(fd, "fd53::1 not in /proc/net/if_inet6");

	snprintf(line, sizeof line, "net ok %lu\n", n);
	say(fd, line);
	close(fd);
	unlink("check-net");
}

int main(void)
{
	static const struct timespec tick = { 0, 10 * 1000 * 1000 };

	log_fd = open_log("netns");
	setup();
	for (unsigned long n = 1;; n++) {
		check();
		if (access("check-net", F_OK) == 0)
			check_net(n);
		snprintf(line, sizeof line, "netns %lu\n", n);
		say(log_fd, line);
		nanosleep(&tick, NULL);
	}
}
