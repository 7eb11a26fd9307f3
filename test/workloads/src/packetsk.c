/*
 * packetsk - a pid namespace init in a net namespace of its own (launch
 * -N), lo brought up, with packet sockets (AF_PACKET), each checked every
 * 10 ms tick:
 *
 *   raw   SOCK_RAW, ethertype 0x88b5 (local experimental), bound to lo;
 *         PACKET_AUXDATA, PACKET_ORIGDEV, PACKET_VERSION TPACKET_V2,
 *         PACKET_RESERVE 64, PACKET_TIMESTAMP 0x40, PACKET_COPY_THRESH
 *         256, SO_RCVBUF 100000 (the kernel keeps it doubled); lo's
 *         multicast address 01:00:5e:00:00:fb and promiscuous mode joined
 *         (PACKET_ADD_MEMBERSHIP);
 *   dgram SOCK_DGRAM, 0x88b5, bound to lo, O_NONBLOCK; all-multicast
 *         mode joined;
 *   fan1, fan2 SOCK_RAW, 0x88b5, bound to lo, in fanout group 0x4242
 *         (PACKET_FANOUT_HASH; no flags: the socket diag does not tell
 *         them, and CRIU 4.2's images lose them);
 *   idle  SOCK_DGRAM, protocol 0, never bound;
 *   vnet  SOCK_RAW, protocol 0, never bound, PACKET_VNET_HDR and
 *         PACKET_LOSS.
 *
 * Every tick, every socket's binding (getsockname: family, protocol,
 * ifindex), SO_TYPE, SO_PROTOCOL, its packet options (getsockopt),
 * SO_RCVBUF and O_NONBLOCK where set must be what they were at the start;
 * lo must be up (SIOCGIFFLAGS: the promiscuous and all-multicast modes
 * that memberships ask for do not show there), and its multicast list in
 * /proc/net/dev_mcast have the address joined. Then a
 * frame of ethertype 0x88b5 carrying the tick's number is sent on lo from
 * raw: raw must receive it (a PACKET_AUXDATA control message with it,
 * from lo), dgram its payload, and exactly one of fan1 and fan2 (the
 * fanout group) the frame. Every 25th tick the socket diag of the
 * namespace's packet sockets (which a dump reads too) must list each
 * with its PACKET_COPY_THRESH, the other fields above and its number of
 * memberships (asked from a NETLINK_SOCK_DIAG socket made at the start).
 *
 * Packets queued at a checkpoint are lost (CRIU's images have no place
 * for them): when a socket misses a frame, the tick drains every socket
 * and sends another one; a second miss is CORRUPT.
 *
 * It appends "packetsk N" to out-packetsk.log every tick, or a CORRUPT
 * line saying what differs, and exits 3.
 *
 * build: gcc -static -O2 -o packetsk packetsk.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/packet_diag.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include "workload.h"

#define ETHERTYPE 0x88b5
#define FANOUT_ID 0x4242
#define FANOUT_ARG (FANOUT_ID | PACKET_FANOUT_HASH << 16)
#define RCVBUF 100000

static const unsigned char mcaddr[6] = { 0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb };

static int logfd, raw, dgram, fan1, fan2, idle, vnet, nl;

/* what each socket was at the start */
struct want {
	const char *name;
	int *fd;
	int type;
	int protocol; /* host order */
	int ifindex;
	int version, reserve, tstamp, copy_thresh;
	int auxdata, origdev, vnet_hdr, loss;
	int fanout; /* -1: none */
	int members;
	int rcvbuf; /* 0: not checked */
	int nonblock;
};

static struct want wants[] = {
	{ "raw", &raw, SOCK_RAW, ETHERTYPE, 1, TPACKET_V2, 64, 0x40, 256, 1, 1, 0, 0, -1, 2, 2 * RCVBUF, 0 },
	{ "dgram", &dgram, SOCK_DGRAM, ETHERTYPE, 1, TPACKET_V1, 0, 0, 0, 0, 0, 0, 0, -1, 1, 0, 1 },
	{ "fan1", &fan1, SOCK_RAW, ETHERTYPE, 1, TPACKET_V1, 0, 0, 0, 0, 0, 0, 0, FANOUT_ARG, 0, 0, 0 },
	{ "fan2", &fan2, SOCK_RAW, ETHERTYPE, 1, TPACKET_V1, 0, 0, 0, 0, 0, 0, 0, FANOUT_ARG, 0, 0, 0 },
	{ "idle", &idle, SOCK_DGRAM, 0, 0, TPACKET_V1, 0, 0, 0, 0, 0, 0, 0, -1, 0, 0, 0 },
	{ "vnet", &vnet, SOCK_RAW, 0, 0, TPACKET_V1, 0, 0, 0, 0, 0, 1, 1, -1, 0, 0, 0 },
};
#define NWANTS (int)(sizeof wants / sizeof wants[0])

static __attribute__((noreturn)) void corrupt(const char *what, long long got, long long want)
{
	char line[200];

	snprintf(line, sizeof line, "CORRUPT packetsk: %s %lld (%#llx), want %lld (%#llx)\n", what, got,
		 (unsigned long long)got, want, (unsigned long long)want);
	say(logfd, line);
	_exit(3);
}

static int opt(int s, int level, int name, const char *what)
{
	int v = 0;
	socklen_t len = sizeof v;

	if (getsockopt(s, level, name, &v, &len))
		corrupt(what, errno, 0);
	return v;
}

static void set(int s, int level, int name, int v, const char *what)
{
	if (setsockopt(s, level, name, &v, sizeof v))
		corrupt(what, errno, 0);
}

static int pk_socket(int type, int protocol, int ifindex)
{
	int s = socket(AF_PACKET, type | SOCK_CLOEXEC, htons(protocol));
	struct sockaddr_ll a = { .sll_family = AF_PACKET, .sll_protocol = htons(protocol), .sll_ifindex = ifindex };

	if (s < 0)
		corrupt("socket", errno, 0);
	if (ifindex && bind(s, (struct sockaddr *)&a, sizeof a))
		corrupt("bind", errno, 0);
	return s;
}

static void join(int s, int type, const unsigned char *addr, int alen)
{
	struct packet_mreq m = { .mr_ifindex = 1, .mr_type = type, .mr_alen = alen };

	if (alen)
		memcpy(m.mr_address, addr, alen);
	if (setsockopt(s, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &m, sizeof m))
		corrupt("PACKET_ADD_MEMBERSHIP", errno, 0);
}

static int lo_flags(void)
{
	struct ifreq lo = { .ifr_name = "lo" };

	if (ioctl(raw, SIOCGIFFLAGS, &lo))
		corrupt("SIOCGIFFLAGS lo", errno, 0);
	return lo.ifr_flags;
}

/* whether /proc/net/dev_mcast lists mcaddr on lo */
static int lo_has_mcaddr(void)
{
	char buf[4096], want[16];
	int fd = open("/proc/net/dev_mcast", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		corrupt("open /proc/net/dev_mcast", errno, 0);
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n < 0)
		corrupt("read /proc/net/dev_mcast", errno, 0);
	buf[n] = 0;
	for (int i = 0; i < 6; i++)
		snprintf(want + 2 * i, 3, "%02x", mcaddr[i]);
	for (char *l = buf; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l))
		if (strstr(l, " lo ") && strstr(l, want) && strstr(l, want) < (strchr(l, '\n') ?: l + strlen(l)))
			return 1;
	return 0;
}

/*
 * every socket as it was made. A difference found starts the checks again
 * from the first: a dump may have frozen this pass halfway, and the line
 * must name the first property in this order that differs, whatever the
 * pass the restore resumed.
 */
static void check_sockets(void)
{
	char what[96];
	int again = 0;

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
restart:
	for (int i = 0; i < NWANTS; i++) {
		struct want *w = &wants[i];
		int s = *w->fd;
		struct sockaddr_ll a = { 0 };
		socklen_t len = sizeof a;

		if (getsockname(s, (struct sockaddr *)&a, &len))
			CHECK("getsockname errno", errno, 0);
		CHECK("family", a.sll_family, AF_PACKET);
		CHECK("bound protocol", ntohs(a.sll_protocol), w->protocol);
		CHECK("bound ifindex", a.sll_ifindex, w->ifindex);
		CHECK("SO_TYPE", opt(s, SOL_SOCKET, SO_TYPE, "SO_TYPE"), w->type);
		CHECK("PACKET_VERSION", opt(s, SOL_PACKET, PACKET_VERSION, "PACKET_VERSION"), w->version);
		CHECK("PACKET_RESERVE", opt(s, SOL_PACKET, PACKET_RESERVE, "PACKET_RESERVE"), w->reserve);
		CHECK("PACKET_TIMESTAMP", opt(s, SOL_PACKET, PACKET_TIMESTAMP, "PACKET_TIMESTAMP"), w->tstamp);
		CHECK("PACKET_AUXDATA", opt(s, SOL_PACKET, PACKET_AUXDATA, "PACKET_AUXDATA"), w->auxdata);
		CHECK("PACKET_ORIGDEV", opt(s, SOL_PACKET, PACKET_ORIGDEV, "PACKET_ORIGDEV"), w->origdev);
		CHECK("PACKET_VNET_HDR", opt(s, SOL_PACKET, PACKET_VNET_HDR, "PACKET_VNET_HDR"), w->vnet_hdr);
		CHECK("PACKET_LOSS", opt(s, SOL_PACKET, PACKET_LOSS, "PACKET_LOSS"), w->loss);
		if (w->fanout >= 0)
			CHECK("PACKET_FANOUT", opt(s, SOL_PACKET, PACKET_FANOUT, "PACKET_FANOUT"), w->fanout);
		else
			CHECK("PACKET_FANOUT", opt(s, SOL_PACKET, PACKET_FANOUT, "PACKET_FANOUT"), 0);
		if (w->rcvbuf)
			CHECK("SO_RCVBUF", opt(s, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF"), w->rcvbuf);
		CHECK("O_NONBLOCK", !!(fcntl(s, F_GETFL) & O_NONBLOCK), w->nonblock);
	}
#undef CHECK
	int f = lo_flags();
	if (!(f & IFF_UP))
		corrupt("lo's flags (up)", f, f | IFF_UP);
	if (!lo_has_mcaddr())
		corrupt("lo's multicast list has 01:00:5e:00:00:fb", 0, 1);
}

/* the namespace's packet sockets as the socket diag lists them */
static void check_diag(void)
{
	struct {
		struct nlmsghdr h;
		struct packet_diag_req r;
	} m = { 0 };
	unsigned long ino[NWANTS];
	int seen[NWANTS] = { 0 };
	char buf[32768], what[96];
	struct sockaddr_nl k = { .nl_family = AF_NETLINK };
	static unsigned int seq;

	for (int i = 0; i < NWANTS; i++) {
		struct stat st;

		if (fstat(*wants[i].fd, &st))
			corrupt("fstat", errno, 0);
		ino[i] = st.st_ino;
	}
	m.h.nlmsg_len = sizeof m;
	m.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	m.h.nlmsg_flags = NLM_F_DUMP | NLM_F_REQUEST;
	m.h.nlmsg_seq = ++seq;
	m.r.sdiag_family = AF_PACKET;
	m.r.pdiag_show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_FANOUT;
	if (sendto(nl, &m, sizeof m, 0, (struct sockaddr *)&k, sizeof k) != sizeof m)
		corrupt("socket diag sendto", errno, 0);
	for (;;) {
		int n = recv(nl, buf, sizeof buf, 0);
		struct nlmsghdr *h;

		if (n < 0)
			corrupt("socket diag recv", errno, 0);
		for (h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			struct packet_diag_msg *d = NLMSG_DATA(h);
			struct want *w = NULL;
			struct packet_diag_info *info = NULL;
			int members = 0, attrs;

			if (h->nlmsg_seq != seq)
				corrupt("socket diag sequence", h->nlmsg_seq, seq);
			if (h->nlmsg_type == NLMSG_DONE)
				goto done;
			if (h->nlmsg_type == NLMSG_ERROR)
				corrupt("socket diag error", ((struct nlmsgerr *)NLMSG_DATA(h))->error, 0);
			for (int i = 0; i < NWANTS; i++)
				if (d->pdiag_ino == ino[i]) {
					w = &wants[i];
					seen[i]++;
				}
			if (!w)
				continue;
			attrs = h->nlmsg_len - NLMSG_LENGTH(sizeof *d);
			for (struct rtattr *a = (struct rtattr *)(d + 1); RTA_OK(a, attrs); a = RTA_NEXT(a, attrs)) {
				if (a->rta_type == PACKET_DIAG_INFO)
					info = RTA_DATA(a);
				if (a->rta_type == PACKET_DIAG_MCLIST)
					members = RTA_PAYLOAD(a) / sizeof(struct packet_diag_mclist);
			}
#define DIAG(field, got, want)                                              \
	do {                                                                \
		long long g_ = (got), w_ = (want);                          \
		if (g_ != w_) {                                             \
			snprintf(what, sizeof what, "%s: diag %s", w->name, field); \
			corrupt(what, g_, w_);                              \
		}                                                           \
	} while (0)
			DIAG("type", d->pdiag_type, w->type);
			DIAG("protocol", d->pdiag_num, w->protocol);
			DIAG("info", info != NULL, 1);
			DIAG("ifindex", info->pdi_index, w->ifindex);
			DIAG("version", info->pdi_version, w->version);
			DIAG("reserve", info->pdi_reserve, w->reserve);
			DIAG("copy_thresh", info->pdi_copy_thresh, w->copy_thresh);
			DIAG("tstamp", info->pdi_tstamp, w->tstamp);
			DIAG("memberships", members, w->members);
#undef DIAG
		}
	}
done:
	for (int i = 0; i < NWANTS; i++) {
		snprintf(what, sizeof what, "%s: in the socket diag", wants[i].name);
		if (seen[i] != 1)
			corrupt(what, seen[i], 1);
	}
}

/* empties s */
static void drain(int s)
{
	char buf[2048];

	while (recv(s, buf, sizeof buf, MSG_DONTWAIT) >= 0)
		;
}

/* waits up to 300 ms for s to have something to read */
static int readable(int s)
{
	struct pollfd p = { .fd = s, .events = POLLIN };
	int k;

	do
		k = poll(&p, 1, 300);
	while (k < 0 && errno == EINTR);
	return k == 1;
}

struct frame {
	struct ether_header eh;
	char payload[32];
} __attribute__((packed));

/* whether s has the frame of tick; raw: with its ethernet header, and an
 * auxdata control message (aux) */
static int got(int s, unsigned long long tick, int header, int aux)
{
	struct frame f;
	char want[32], cbuf[256];
	struct sockaddr_ll from;
	struct iovec iov;
	struct msghdr mh = { .msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof cbuf };
	int n, seen_aux = 0;

	if (header) {
		iov.iov_base = &f;
		iov.iov_len = sizeof f;
	} else {
		iov.iov_base = f.payload;
		iov.iov_len = sizeof f.payload;
	}
	if (!readable(s))
		return 0;
	n = recvmsg(s, &mh, MSG_DONTWAIT);
	if (n < 0)
		return 0;
	memset(want, 0, sizeof want);
	snprintf(want, sizeof want, "packetsk %llu", tick);
	if (memcmp(f.payload, want, sizeof want))
		return 0;
	if (header && ntohs(f.eh.ether_type) != ETHERTYPE)
		corrupt("frame's ethertype", ntohs(f.eh.ether_type), ETHERTYPE);
	if (from.sll_ifindex != 1 || ntohs(from.sll_protocol) != ETHERTYPE)
		corrupt("frame's device", from.sll_ifindex, 1);
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_PACKET && c->cmsg_type == PACKET_AUXDATA)
			seen_aux = 1;
	if (seen_aux != aux)
		corrupt("PACKET_AUXDATA control message", seen_aux, aux);
	return 1;
}

/* sends the frame of tick on lo; whether every socket bound to lo got it */
static int exchange(unsigned long long tick, const char **missed)
{
	struct frame f = { 0 };
	int a, b;

	for (int i = 0; i < NWANTS; i++)
		drain(*wants[i].fd);
	f.eh.ether_type = htons(ETHERTYPE);
	snprintf(f.payload, sizeof f.payload, "packetsk %llu", tick);
	if (send(raw, &f, sizeof f, 0) != sizeof f)
		corrupt("send", errno, 0);
	*missed = "raw";
	if (!got(raw, tick, 1, 1))
		return 0;
	*missed = "dgram";
	if (!got(dgram, tick, 0, 0))
		return 0;
	*missed = "fan1 or fan2 (the fanout group)";
	a = got(fan1, tick, 1, 0);
	b = a ? 0 : got(fan2, tick, 1, 0);
	if (!a && !b)
		return 0;
	/* the other one must not have it too */
	struct pollfd p[2] = { { .fd = fan1, .events = POLLIN }, { .fd = fan2, .events = POLLIN } };
	if (poll(p, 2, 0) != 0)
		corrupt("frame reached both of the fanout group", p[0].revents, p[1].revents);
	return 1;
}

static void setup(void)
{
	struct ifreq lo = { .ifr_name = "lo" };

	raw = pk_socket(SOCK_RAW, ETHERTYPE, 1);
	if (ioctl(raw, SIOCGIFFLAGS, &lo))
		corrupt("SIOCGIFFLAGS lo", errno, 0);
	if (lo.ifr_flags & IFF_UP)
		corrupt("lo is up: not a net namespace of its own (launch -N)", lo.ifr_flags, 0);
	lo.ifr_flags |= IFF_UP;
	if (ioctl(raw, SIOCSIFFLAGS, &lo))
		corrupt("SIOCSIFFLAGS lo up", errno, 0);
	set(raw, SOL_PACKET, PACKET_AUXDATA, 1, "PACKET_AUXDATA");
	set(raw, SOL_PACKET, PACKET_ORIGDEV, 1, "PACKET_ORIGDEV");
	set(raw, SOL_PACKET, PACKET_VERSION, TPACKET_V2, "PACKET_VERSION");
	set(raw, SOL_PACKET, PACKET_RESERVE, 64, "PACKET_RESERVE");
	set(raw, SOL_PACKET, PACKET_TIMESTAMP, 0x40, "PACKET_TIMESTAMP");
	set(raw, SOL_PACKET, PACKET_COPY_THRESH, 256, "PACKET_COPY_THRESH");
	set(raw, SOL_SOCKET, SO_RCVBUF, RCVBUF, "SO_RCVBUF");
	join(raw, PACKET_MR_MULTICAST, mcaddr, 6);
	join(raw, PACKET_MR_PROMISC, NULL, 0);
	dgram = pk_socket(SOCK_DGRAM | SOCK_NONBLOCK, ETHERTYPE, 1);
	join(dgram, PACKET_MR_ALLMULTI, NULL, 0);
	fan1 = pk_socket(SOCK_RAW, ETHERTYPE, 1);
	fan2 = pk_socket(SOCK_RAW, ETHERTYPE, 1);
	set(fan1, SOL_PACKET, PACKET_FANOUT, FANOUT_ARG, "PACKET_FANOUT fan1");
	set(fan2, SOL_PACKET, PACKET_FANOUT, FANOUT_ARG, "PACKET_FANOUT fan2");
	idle = pk_socket(SOCK_DGRAM, 0, 0);
	vnet = pk_socket(SOCK_RAW, 0, 0);
	/* the diag socket is made here: no fd is opened after the start,
	 * which a dump would catch */
	nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (nl < 0)
		corrupt("socket(NETLINK_SOCK_DIAG)", errno, 0);
	set(vnet, SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR");
	set(vnet, SOL_PACKET, PACKET_LOSS, 1, "PACKET_LOSS");
}

int main(void)
{
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[64];
	const char *missed;

	logfd = open_log("packetsk");
	setup();
	for (unsigned long long tick = 1;; tick++) {
		check_sockets();
		if (tick == 1 || tick % 25 == 0)
			check_diag();
		/* a frame queued at a checkpoint is lost: one more try */
		if (!exchange(tick, &missed) && !exchange(tick, &missed)) {
			snprintf(line, sizeof line, "%s: frame of tick received", missed);
			corrupt(line, 0, 1);
		}
		snprintf(line, sizeof line, "packetsk %llu\n", tick);
		say(logfd, line);
		nanosleep(&ts, NULL);
	}
}
