/*
 * netlink - a pid namespace init in a net namespace of its own (launch
 * -N) with netlink sockets, each checked every 10 ms tick:
 *
 *   mon  NETLINK_ROUTE bound with port 0 (the kernel picks the init's
 *        pid, 1) to the groups RTMGRP_LINK and RTMGRP_IPV4_IFADDR, and
 *        RTNLGRP_IPV6_IFADDR added with NETLINK_ADD_MEMBERSHIP;
 *        SO_RCVBUF 100000 (the kernel keeps it doubled);
 *   req  NETLINK_ROUTE bound by the kernel at its first send (port 1 is
 *        mon's: a random negative one);
 *   gen  NETLINK_GENERIC bound by the program to port 0x6e6c0005,
 *        O_NONBLOCK;
 *   conn NETLINK_ROUTE connected to the kernel (port 0, no group:
 *        connect binds it, the kernel picks its port);
 *   idle NETLINK_ROUTE never bound nor used;
 *   uev  NETLINK_KOBJECT_UEVENT bound to port 0x6e6c0007 and no group
 *        (the host's uevents reach such sockets of a namespace of the
 *        initial user namespace), SO_PASSCRED on;
 *   diag NETLINK_SOCK_DIAG bound with port 0 and no group (the kernel
 *        picks a port).
 *
 * Every tick, every socket's port and groups (getsockname), memberships
 * (NETLINK_LIST_MEMBERSHIPS), protocol, peer (getpeername), SO_RCVBUF,
 * SO_PASSCRED and gen's O_NONBLOCK must be what they were at the start,
 * and the flags of lo in its net namespace (SIOCGIFFLAGS through it)
 * those of ours, down. It refuses to start with lo up, which a new net
 * namespace's is not: the host's lo, whose addresses the ticks would
 * change. (No fd is opened after the start: a dump would catch it.)
 *
 * On the first tick and every 25th (every quarter of a second) the
 * sockets are used: req adds 10.61.0.1/32 to lo and removes it, each
 * acked, and mon must get RTM_NEWADDR and then RTM_DELADDR of that
 * address, and nothing else; req dumps the links (RTM_GETLINK): lo must
 * be ifindex 1; gen asks for the family "nlctrl" (CTRL_CMD_GETFAMILY): its
 * id must be GENL_ID_CTRL; conn asks for link 1 with send(2), which has
 * no address: lo; and diag asks the kernel's socket diag for the
 * namespace's netlink sockets: each of them but idle (which it does not
 * list) must be there with its port, conn alone connected
 * (NETLINK_CONNECTED, to port 0 group 0: getpeername says the same of a
 * socket never connected), the others in the state of a new socket
 * (TCP_CLOSE, 7).
 *
 * Not every tick: a checkpoint refuses a netlink socket with messages
 * queued (CRIU 4.2 does, and crest), and a freeze that comes while a
 * request is in the kernel (an address change takes a while) stops the
 * task with the reply, or mon's notification, queued. With the exchanges
 * every tick, 3 of 200 dumps of a running workload were refused (crest
 * dump --leave-running, 30-120 ms apart), none of 300 with them every
 * 25th tick; tests dump it a few ticks after its start, between the
 * first exchange and the next.
 * Each reply is read right after its request.
 *
 * It appends "netlink N" to out-netlink.log every tick, or a CORRUPT line
 * saying what differs, and exits 3.
 *
 * build: gcc -static -O2 -o netlink netlink.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/genetlink.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/netlink_diag.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include "workload.h"

#define GEN_PORT 0x6e6c0005u
#define UEV_PORT 0x6e6c0007u
#define MON_GROUPS (RTMGRP_LINK | RTMGRP_IPV4_IFADDR)
#define ADDR "10.61.0.1"

static int logfd, mon, req, gen, conn, idle, uev, diag, lo_down;
static unsigned int seq = 100;

/* what each socket was at the start */
struct want {
	const char *name;
	int *fd;
	int protocol;
	uint32_t port;	 /* 0: the kernel's pick, read at the start */
	uint32_t groups; /* getsockname's nl_groups */
	uint32_t members[2];
	int nmembers; /* u32 words NETLINK_LIST_MEMBERSHIPS gives */
	int peer;     /* connected (to port 0, group 0) */
	int rcvbuf;   /* 0: not checked */
	int passcred;
	int nonblock;
};

static struct want wants[] = {
	{ "mon", &mon, NETLINK_ROUTE, 0, MON_GROUPS | 1 << (RTNLGRP_IPV6_IFADDR - 1),
	  { MON_GROUPS | 1 << (RTNLGRP_IPV6_IFADDR - 1), 0 }, 2, 0, 200000, 0, 0 },
	{ "req", &req, NETLINK_ROUTE, 0, 0, { 0 }, 0, 0, 0, 0, 0 },
	{ "gen", &gen, NETLINK_GENERIC, GEN_PORT, 0, { 0 }, 0, 0, 0, 0, 1 },
	{ "conn", &conn, NETLINK_ROUTE, 0, 0, { 0 }, 0, 1, 0, 0, 0 },
	{ "idle", &idle, NETLINK_ROUTE, 0, 0, { 0 }, 0, 0, 0, 0, 0 },
	{ "uev", &uev, NETLINK_KOBJECT_UEVENT, UEV_PORT, 0, { 0 }, 0, 0, 0, 1, 0 },
	{ "diag", &diag, NETLINK_SOCK_DIAG, 0, 0, { 0 }, 0, 0, 0, 0, 0 },
};
#define NWANTS (int)(sizeof wants / sizeof wants[0])

static __attribute__((noreturn)) void corrupt(const char *what, long long got, long long want)
{
	char line[200];

	snprintf(line, sizeof line, "CORRUPT netlink: %s %lld (%#llx), want %lld (%#llx)\n", what, got,
		 (unsigned long long)got, want, (unsigned long long)want);
	say(logfd, line);
	_exit(3);
}

static int nl_socket(int protocol, int flags)
{
	int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | flags, protocol);

	if (s < 0)
		corrupt("socket", errno, 0);
	return s;
}

static void nl_bind(int s, uint32_t port, uint32_t groups)
{
	struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_pid = port, .nl_groups = groups };

	if (bind(s, (struct sockaddr *)&a, sizeof a))
		corrupt("bind", errno, 0);
}

static uint32_t port_of(int s, uint32_t *groups)
{
	struct sockaddr_nl a;
	socklen_t len = sizeof a;

	if (getsockname(s, (struct sockaddr *)&a, &len) || a.nl_family != AF_NETLINK)
		corrupt("getsockname", errno, 0);
	if (groups)
		*groups = a.nl_groups;
	return a.nl_pid;
}

struct msg {
	struct nlmsghdr h;
	char body[256];
};

static void put_attr(struct msg *m, int type, const void *data, int len)
{
	struct rtattr *a = (struct rtattr *)((char *)m + NLMSG_ALIGN(m->h.nlmsg_len));

	a->rta_type = type;
	a->rta_len = RTA_LENGTH(len);
	memcpy(RTA_DATA(a), data, len);
	m->h.nlmsg_len = NLMSG_ALIGN(m->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* waits up to a second for s to have something to read */
static void wait_in(int s, const char *what)
{
	struct pollfd p = { .fd = s, .events = POLLIN };
	int k;

	do
		k = poll(&p, 1, 1000);
	while (k < 0 && errno == EINTR);
	if (k != 1)
		corrupt(what, k < 0 ? errno : 0, 1);
}

/* receives one datagram from the kernel into buf; its length */
static int receive(int s, char *buf, int size, const char *what)
{
	struct sockaddr_nl from;
	socklen_t len = sizeof from;
	int n;

	wait_in(s, what);
	do
		n = recvfrom(s, buf, size, 0, (struct sockaddr *)&from, &len);
	while (n < 0 && errno == EINTR);
	if (n < (int)sizeof(struct nlmsghdr))
		corrupt(what, n < 0 ? errno : n, sizeof(struct nlmsghdr));
	if (from.nl_pid != 0)
		corrupt("sender port", from.nl_pid, 0);
	return n;
}

/* sends m from s (to the kernel: dst, or no address when connected) */
static void request(int s, struct msg *m, int connected)
{
	struct sockaddr_nl k = { .nl_family = AF_NETLINK };
	int n;

	m->h.nlmsg_seq = ++seq;
	m->h.nlmsg_flags |= NLM_F_REQUEST;
	if (connected)
		n = send(s, m, m->h.nlmsg_len, 0);
	else
		n = sendto(s, m, m->h.nlmsg_len, 0, (struct sockaddr *)&k, sizeof k);
	if (n != (int)m->h.nlmsg_len)
		corrupt("send", n < 0 ? errno : n, m->h.nlmsg_len);
}

/* sends an address change and reads its ack; the error it carries */
static int change_addr(int type, int flags)
{
	struct msg m = { 0 };
	struct ifaddrmsg *ifa = NLMSG_DATA(&m.h);
	struct in_addr a;
	char buf[4096];
	struct nlmsghdr *h = (struct nlmsghdr *)buf;

	inet_pton(AF_INET, ADDR, &a);
	m.h.nlmsg_len = NLMSG_LENGTH(sizeof *ifa);
	m.h.nlmsg_type = type;
	m.h.nlmsg_flags = NLM_F_ACK | flags;
	ifa->ifa_family = AF_INET;
	ifa->ifa_prefixlen = 32;
	ifa->ifa_index = 1;
	put_attr(&m, IFA_LOCAL, &a, 4);
	put_attr(&m, IFA_ADDRESS, &a, 4);
	request(req, &m, 0);
	receive(req, buf, sizeof buf, "address ack");
	if (h->nlmsg_type != NLMSG_ERROR || h->nlmsg_seq != seq)
		corrupt("address ack type", h->nlmsg_type, NLMSG_ERROR);
	return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
}

/* reads mon's notification of an address change: type, on lo, ADDR */
static void notified(int type)
{
	char buf[4096];
	int n = receive(mon, buf, sizeof buf, "notification");
	struct nlmsghdr *h = (struct nlmsghdr *)buf;
	struct ifaddrmsg *ifa = NLMSG_DATA(h);
	struct rtattr *a;
	int len, found = 0;
	struct in_addr want;

	if (!NLMSG_OK(h, n) || h->nlmsg_type != type)
		corrupt("notification type", h->nlmsg_type, type);
	if (ifa->ifa_family != AF_INET || ifa->ifa_index != 1)
		corrupt("notified address's device", ifa->ifa_index, 1);
	inet_pton(AF_INET, ADDR, &want);
	len = IFA_PAYLOAD(h);
	for (a = IFA_RTA(ifa); RTA_OK(a, len); a = RTA_NEXT(a, len))
		if (a->rta_type == IFA_LOCAL && RTA_PAYLOAD(a) == 4 && !memcmp(RTA_DATA(a), &want, 4))
			found = 1;
	if (!found)
		corrupt("notified address is " ADDR, 0, 1);
	if (NLMSG_NEXT(h, n) && NLMSG_OK(h, n))
		corrupt("more in the notification's datagram", n, 0);
}

/* adds ADDR to lo and removes it: mon must hear of both */
static void addresses(void)
{
	int err = change_addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);

	if (err == -EEXIST) {
		/* a checkpoint between the two changes kept the address */
		if ((err = change_addr(RTM_DELADDR, 0)))
			corrupt("RTM_DELADDR of a kept address", err, 0);
		notified(RTM_DELADDR);
		err = change_addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
	}
	if (err)
		corrupt("RTM_NEWADDR", err, 0);
	notified(RTM_NEWADDR);
	if ((err = change_addr(RTM_DELADDR, 0)))
		corrupt("RTM_DELADDR", err, 0);
	notified(RTM_DELADDR);
	struct pollfd p = { .fd = mon, .events = POLLIN };
	if (poll(&p, 1, 0) != 0)
		corrupt("mon has more (revents)", p.revents, 0);
}

/* reads the messages of request seq on s up to NLMSG_DONE (dump) or the
 * first message; checks an RTM_NEWLINK of lo is among them */
static void link_reply(int s, int dump, const char *what)
{
	char buf[16384];
	int lo = 0;

	for (;;) {
		int n = receive(s, buf, sizeof buf, what);
		struct nlmsghdr *h;

		for (h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != seq)
				corrupt("reply sequence", h->nlmsg_seq, seq);
			if (h->nlmsg_type == NLMSG_DONE)
				goto done;
			if (h->nlmsg_type == NLMSG_ERROR)
				corrupt("link request error", ((struct nlmsgerr *)NLMSG_DATA(h))->error, 0);
			if (h->nlmsg_type != RTM_NEWLINK)
				corrupt("link reply type", h->nlmsg_type, RTM_NEWLINK);
			struct ifinfomsg *ifi = NLMSG_DATA(h);
			int len = IFLA_PAYLOAD(h);
			for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len))
				if (ifi->ifi_index == 1 && a->rta_type == IFLA_IFNAME && !strcmp(RTA_DATA(a), "lo"))
					lo = 1;
			if (!dump)
				goto done;
		}
	}
done:
	if (!lo)
		corrupt("lo (ifindex 1) in the link reply", 0, 1);
}

static void links(void)
{
	struct msg m = { 0 };
	struct ifinfomsg *ifi = NLMSG_DATA(&m.h);

	m.h.nlmsg_len = NLMSG_LENGTH(sizeof *ifi);
	m.h.nlmsg_type = RTM_GETLINK;
	m.h.nlmsg_flags = NLM_F_DUMP;
	ifi->ifi_family = AF_UNSPEC;
	request(req, &m, 0);
	link_reply(req, 1, "RTM_GETLINK dump");

	memset(&m, 0, sizeof m);
	m.h.nlmsg_len = NLMSG_LENGTH(sizeof *ifi);
	m.h.nlmsg_type = RTM_GETLINK;
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = 1;
	request(conn, &m, 1);
	link_reply(conn, 0, "RTM_GETLINK on the connected socket");
}

static void family(void)
{
	struct msg m = { 0 };
	struct genlmsghdr *g = NLMSG_DATA(&m.h);
	char buf[8192];
	struct nlmsghdr *h = (struct nlmsghdr *)buf;
	int n, id = -1, len;

	m.h.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN);
	m.h.nlmsg_type = GENL_ID_CTRL;
	g->cmd = CTRL_CMD_GETFAMILY;
	g->version = 1;
	put_attr(&m, CTRL_ATTR_FAMILY_NAME, "nlctrl", 7);
	request(gen, &m, 0);
	n = receive(gen, buf, sizeof buf, "CTRL_CMD_GETFAMILY reply");
	if (!NLMSG_OK(h, n) || h->nlmsg_type != GENL_ID_CTRL || h->nlmsg_seq != seq)
		corrupt("CTRL_CMD_GETFAMILY reply type", h->nlmsg_type, GENL_ID_CTRL);
	len = h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
	for (struct rtattr *a = (struct rtattr *)((char *)NLMSG_DATA(h) + GENL_HDRLEN); RTA_OK(a, len);
	     a = RTA_NEXT(a, len))
		if (a->rta_type == CTRL_ATTR_FAMILY_ID)
			id = *(uint16_t *)RTA_DATA(a);
	if (id != GENL_ID_CTRL)
		corrupt("family id of nlctrl", id, GENL_ID_CTRL);
}

static int opt(int s, int level, int name, const char *what)
{
	int v;
	socklen_t len = sizeof v;

	if (getsockopt(s, level, name, &v, &len))
		corrupt(what, errno, 0);
	return v;
}

/* the flags of lo in the net namespace of socket s */
static int lo_flags(int s)
{
	struct ifreq lo = { .ifr_name = "lo" };

	if (ioctl(s, SIOCGIFFLAGS, &lo))
		corrupt("SIOCGIFFLAGS lo", errno, 0);
	return lo.ifr_flags;
}

/*
 * every socket as it was at the start, in our net namespace, whose lo is
 * down (not the host's: the ticks change lo's addresses). A difference
 * found starts the checks again from the first: a dump may have frozen
 * this pass halfway, and the line must name the first property in this
 * order that differs, whatever the pass the restore resumed.
 */
static void check_sockets(void)
{
	char what[96];
	int again = 0;

restart:
	for (int i = 0; i < NWANTS; i++) {
		struct want *w = &wants[i];
		int s = *w->fd;
		uint32_t groups, members[4] = { 0 };
		socklen_t len = sizeof members;
		struct sockaddr_nl peer;
		socklen_t plen = sizeof peer;

#define CHECK(field, got, want)                                             \
	do {                                                                \
		long long g_ = (got), w_ = (want);                          \
		if (g_ != w_) {                                             \
			if (!again) {                                       \
				again = 1;                                  \
				goto restart;                               \
			}                                                   \
			snprintf(what, sizeof what, "%s: %s", w->name, field); \
			corrupt(what, g_, w_);                              \
		}                                                           \
	} while (0)
		CHECK("lo's flags in its net namespace", lo_flags(s), lo_down);
		CHECK("port", port_of(s, &groups), w->port);
		CHECK("groups", groups, w->groups);
		if (getsockopt(s, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, members, &len))
			CHECK("NETLINK_LIST_MEMBERSHIPS errno", errno, 0);
		CHECK("NETLINK_LIST_MEMBERSHIPS length", len, w->nmembers * 4);
		CHECK("memberships 1-32", members[0], w->members[0]);
		CHECK("memberships 33-64", members[1], w->members[1]);
		CHECK("SO_PROTOCOL", opt(s, SOL_SOCKET, SO_PROTOCOL, "SO_PROTOCOL"), w->protocol);
		CHECK("SO_TYPE", opt(s, SOL_SOCKET, SO_TYPE, "SO_TYPE"), SOCK_RAW);
		CHECK("SO_PASSCRED", opt(s, SOL_SOCKET, SO_PASSCRED, "SO_PASSCRED"), w->passcred);
		if (w->rcvbuf)
			CHECK("SO_RCVBUF", opt(s, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF"), w->rcvbuf);
		CHECK("O_NONBLOCK", !!(fcntl(s, F_GETFL) & O_NONBLOCK), w->nonblock);
		if (getpeername(s, (struct sockaddr *)&peer, &plen))
			CHECK("getpeername errno", errno, 0);
		CHECK("peer port", peer.nl_pid, 0);
		CHECK("peer groups", peer.nl_groups, 0);
	}
}

/* the namespace's netlink sockets as the socket diag lists them */
static void check_diag(void)
{
	struct {
		struct nlmsghdr h;
		struct netlink_diag_req r;
	} m = { 0 };
	unsigned long ino[NWANTS];
	int seen[NWANTS] = { 0 };
	char buf[32768], what[96];

	for (int i = 0; i < NWANTS; i++) {
		struct stat st;

		if (fstat(*wants[i].fd, &st))
			corrupt("fstat", errno, 0);
		ino[i] = st.st_ino;
	}
	m.h.nlmsg_len = sizeof m;
	m.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	m.h.nlmsg_flags = NLM_F_DUMP;
	m.r.sdiag_family = AF_NETLINK;
	m.r.sdiag_protocol = NDIAG_PROTO_ALL;
	m.r.ndiag_show = NDIAG_SHOW_GROUPS;
	request(diag, (struct msg *)&m, 0);
	for (;;) {
		int n = receive(diag, buf, sizeof buf, "socket diag");
		struct nlmsghdr *h;

		for (h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			struct netlink_diag_msg *d = NLMSG_DATA(h);
			struct want *w = NULL;

			if (h->nlmsg_seq != seq)
				corrupt("socket diag sequence", h->nlmsg_seq, seq);
			if (h->nlmsg_type == NLMSG_DONE)
				goto done;
			if (h->nlmsg_type == NLMSG_ERROR)
				corrupt("socket diag error", ((struct nlmsgerr *)NLMSG_DATA(h))->error, 0);
			for (int i = 0; i < NWANTS; i++)
				if (d->ndiag_ino == ino[i]) {
					w = &wants[i];
					seen[i]++;
				}
			if (!w)
				continue;
#define DIAG(field, got, want)                                              	do {                                                                		long long g_ = (got), w_ = (want);                          		if (g_ != w_) {                                             			snprintf(what, sizeof what, "%s: diag %s", w->name, field); 			corrupt(what, g_, w_);                              		}                                                           	} while (0)
			DIAG("protocol", d->ndiag_protocol, w->protocol);
			DIAG("port", d->ndiag_portid, w->port);
			/* NETLINK_CONNECTED, or a new socket's TCP_CLOSE */
			DIAG("state", d->ndiag_state, w->peer ? 1 : 7);
			DIAG("peer port", d->ndiag_dst_portid, 0);
			DIAG("peer group", d->ndiag_dst_group, 0);
		}
	}
done:
	/* a socket with groups is there twice: from the table of ports and
	 * from the list of listeners (the kernel's netlink_diag) */
	for (int i = 0; i < NWANTS; i++) {
		snprintf(what, sizeof what, "%s: in the socket diag", wants[i].name);
		if ((seen[i] > 0) != (wants[i].fd != &idle))
			corrupt(what, seen[i], wants[i].fd != &idle);
	}
}

static void setup(void)
{
	int one = 1, rcvbuf = 100000, group = RTNLGRP_IPV6_IFADDR;
	struct sockaddr_nl k = { .nl_family = AF_NETLINK };

	mon = nl_socket(NETLINK_ROUTE, 0);
	lo_down = lo_flags(mon);
	if (lo_down & IFF_UP)
		corrupt("lo is up: not a net namespace of its own (launch -N)", lo_down, 0);
	if (setsockopt(mon, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf))
		corrupt("SO_RCVBUF", errno, 0);
	nl_bind(mon, 0, MON_GROUPS);
	if (setsockopt(mon, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group))
		corrupt("NETLINK_ADD_MEMBERSHIP", errno, 0);
	req = nl_socket(NETLINK_ROUTE, 0);
	gen = nl_socket(NETLINK_GENERIC, SOCK_NONBLOCK);
	nl_bind(gen, GEN_PORT, 0);
	conn = nl_socket(NETLINK_ROUTE, 0);
	if (connect(conn, (struct sockaddr *)&k, sizeof k))
		corrupt("connect", errno, 0);
	idle = nl_socket(NETLINK_ROUTE, 0);
	uev = nl_socket(NETLINK_KOBJECT_UEVENT, 0);
	if (setsockopt(uev, SOL_SOCKET, SO_PASSCRED, &one, sizeof one))
		corrupt("SO_PASSCRED", errno, 0);
	nl_bind(uev, UEV_PORT, 0);
	diag = nl_socket(NETLINK_SOCK_DIAG, 0);
	nl_bind(diag, 0, 0);
	/* req is bound by its first request */
	links();
	wants[0].port = port_of(mon, NULL);
	wants[1].port = port_of(req, NULL);
	wants[3].port = port_of(conn, NULL);
	wants[6].port = port_of(diag, NULL);
	if (wants[0].port != 1)
		corrupt("mon's port (the init's pid)", wants[0].port, 1);
	if (wants[1].port == 0 || wants[3].port == 0 || wants[6].port == 0)
		corrupt("ports picked by the kernel", 0, 1);
}

int main(void)
{
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[64];

	logfd = open_log("netlink");
	setup();
	for (unsigned long long tick = 1;; tick++) {
		check_sockets();
		if (tick == 1 || tick % 25 == 0) {
			check_diag();
			addresses();
			links();
			family();
		}
		snprintf(line, sizeof line, "netlink %llu\n", tick);
		say(logfd, line);
		nanosleep(&ts, NULL);
	}
}
