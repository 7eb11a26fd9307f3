/*
 * netveth - a pid namespace init in a net namespace of its own (launch -N)
 * that talks through a veth to the namespace outside, as a container
 * does. The test makes the pair from outside: one end in its own
 * namespace with an address, the other moved into this one, where the
 * test gives it its mtu, link-layer address, an address and a route
 * through the outside end, sets it up, and then writes the device's name
 * into the file "veth".
 *
 * Every 10 ms it appends "netveth N" to out-netveth.log. Once "veth" is
 * there it takes what the device is at that moment (its ifindex, mtu,
 * link-layer address, IPv4 address and netmask), binds a UDP socket to
 * ADDR:9981 and connects it to the outside end, ADDR with its last byte
 * 1, port 9981; from then on, every tick, it checks the device has all
 * of that still and is up, and that the route to 10.59.0.7 goes out from
 * its address (a UDP probe connects; nothing is sent), sends "ping N"
 * and appends "pong M" to out-pong.log for each "pong M" that came back.
 * A reply that says anything else, or a device that changed, is a
 * CORRUPT line in out-netveth.log, and it exits 3. Pings that get no
 * answer are not: the outside end may be gone (a dump kills the tree, and
 * the pair with its namespace) or not set up again yet.
 *
 * build: gcc -static -O2 -o netveth netveth.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include "workload.h"

#define PORT 9981

static int log_fd, pong_fd;

static __attribute__((noreturn)) void corrupt(const char *what, long long got, long long want)
{
	char out[300];

	snprintf(out, sizeof out, "CORRUPT %s: %lld, want %lld (errno %d)\n", what, got, want, errno);
	say(log_fd, out);
	_exit(3);
}

/* what the device is, as the workload saw it first */
static struct {
	char name[IFNAMSIZ];
	int ifindex, mtu;
	unsigned char mac[6];
	struct in_addr addr, mask, peer;
} dev;
static int armed, sk, ctl;

static void read_dev(const char *name, int *ifindex, int *mtu, unsigned char *mac, struct in_addr *addr, struct in_addr *mask, int *flags)
{
	struct ifreq r;

	*ifindex = if_nametoindex(name);
	memset(&r, 0, sizeof r);
	strncpy(r.ifr_name, name, IFNAMSIZ - 1);
	*mtu = ioctl(ctl, SIOCGIFMTU, &r) ? -errno : r.ifr_mtu;
	if (ioctl(ctl, SIOCGIFHWADDR, &r))
		memset(mac, 0, 6);
	else
		memcpy(mac, r.ifr_hwaddr.sa_data, 6);
	addr->s_addr = ioctl(ctl, SIOCGIFADDR, &r) ? 0 : ((struct sockaddr_in *)&r.ifr_addr)->sin_addr.s_addr;
	mask->s_addr = ioctl(ctl, SIOCGIFNETMASK, &r) ? 0 : ((struct sockaddr_in *)&r.ifr_netmask)->sin_addr.s_addr;
	*flags = ioctl(ctl, SIOCGIFFLAGS, &r) ? 0 : r.ifr_flags;
}

static long long mac64(const unsigned char *m)
{
	long long v = 0;

	for (int i = 0; i < 6; i++)
		v = v << 8 | m[i];
	return v;
}

/* arms the workload on the device named in "veth", if it is there */
static void arm(void)
{
	char name[IFNAMSIZ + 2] = { 0 };
	int fd = open("veth", O_RDONLY), flags;
	ssize_t n;

	if (fd < 0)
		return;
	n = read(fd, name, IFNAMSIZ);
	close(fd);
	if (n <= 0 || name[n - 1] != '\n')
		return; /* not all written yet */
	name[n - 1] = 0;
	strcpy(dev.name, name);
	read_dev(name, &dev.ifindex, &dev.mtu, dev.mac, &dev.addr, &dev.mask, &flags);
	if (dev.ifindex <= 0 || dev.addr.s_addr == 0 || !(flags & IFF_UP))
		corrupt("the device of \"veth\" (ifindex, up)", dev.ifindex, 1);
	dev.peer.s_addr = (dev.addr.s_addr & htonl(0xffffff00)) | htonl(1);

	struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons(PORT), .sin_addr = dev.addr };
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(PORT), .sin_addr = dev.peer };

	sk = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (sk < 0 || bind(sk, (struct sockaddr *)&me, sizeof me) || connect(sk, (struct sockaddr *)&to, sizeof to))
		corrupt("udp socket", sk, 0);
	armed = 1;
}

/* the source address of a route to 10.59.0.7, 0 for none */
static in_addr_t route_src(void)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(9) }, from;
	socklen_t len = sizeof from;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	in_addr_t a = 0;

	inet_pton(AF_INET, "10.59.0.7", &to.sin_addr);
	if (s >= 0 && connect(s, (struct sockaddr *)&to, sizeof to) == 0 && getsockname(s, (struct sockaddr *)&from, &len) == 0)
		a = from.sin_addr.s_addr;
	if (s >= 0)
		close(s);
	return a;
}

static void check(unsigned long long n)
{
	int ifindex, mtu, flags;
	unsigned char mac[6];
	struct in_addr addr, mask;
	char buf[64], line[80];
	ssize_t k;

	read_dev(dev.name, &ifindex, &mtu, mac, &addr, &mask, &flags);
	if (ifindex != dev.ifindex)
		corrupt("ifindex", ifindex, dev.ifindex);
	if (mtu != dev.mtu)
		corrupt("mtu", mtu, dev.mtu);
	if (memcmp(mac, dev.mac, 6))
		corrupt("link-layer address", mac64(mac), mac64(dev.mac));
	if (addr.s_addr != dev.addr.s_addr)
		corrupt("address", ntohl(addr.s_addr), ntohl(dev.addr.s_addr));
	if (mask.s_addr != dev.mask.s_addr)
		corrupt("netmask", ntohl(mask.s_addr), ntohl(dev.mask.s_addr));
	if (!(flags & IFF_UP))
		corrupt("flags (up)", flags, flags | IFF_UP);
	if (route_src() != dev.addr.s_addr)
		corrupt("source of the route to 10.59.0.7", ntohl(route_src()), ntohl(dev.addr.s_addr));
	while ((k = recv(sk, buf, sizeof buf - 1, 0)) >= 0) {
		unsigned long long m;
		char end;

		buf[k] = 0;
		if (sscanf(buf, "pong %llu%c", &m, &end) != 1 || m > n)
			corrupt("a reply that is no pong", k, 0);
		snprintf(line, sizeof line, "pong %llu\n", m);
		say(pong_fd, line);
	}
	/* errors of pings that got no answer are told here */
	if (errno != EAGAIN && errno != ECONNREFUSED && errno != EHOSTUNREACH && errno != ENETUNREACH)
		corrupt("recv", errno, EAGAIN);
	k = snprintf(buf, sizeof buf, "ping %llu", n);
	/* the outside end may not be there: no route, no neighbour */
	send(sk, buf, k, 0);
}

int main(void)
{
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	char line[64];

	log_fd = open_log("netveth");
	pong_fd = open_log("pong");
	ctl = socket(AF_INET, SOCK_DGRAM, 0);
	if (ctl < 0)
		corrupt("socket", ctl, 0);
	for (unsigned long long n = 1;; n++) {
		if (!armed)
			arm();
		if (armed)
			check(n);
		snprintf(line, sizeof line, "netveth %llu\n", n);
		say(log_fd, line);
		nanosleep(&tick, NULL);
	}
}
