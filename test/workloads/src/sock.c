/*
 * sock - a process holding a netlink socket at fd 3, never bound (its
 * image has only its protocol, as CRIU writes it); it appends "<tick>\n"
 * to out.log every 10 ms.
 *
 * build: gcc -static -O2 -o sock sock.c
 */
#include <fcntl.h>
#include <linux/netlink.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	int s = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	if (s != 3)
		return 2;
	int fd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd < 0)
		return 2;
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[32];
	for (unsigned long tick = 1;; tick++) {
		int len = snprintf(line, sizeof line, "%lu\n", tick);
		if (write(fd, line, len) != len)
			return 4;
		nanosleep(&ts, NULL);
	}
}
