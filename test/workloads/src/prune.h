/*
 * prune.h - prune_mounts for the workloads that make a mount namespace of
 * their own (mntns, procfds): a copy of the host's mounts holds more than
 * crest restores (this host mounts /dev/shm twice, bpf ...).
 */
#ifndef CREST_WORKLOAD_PRUNE_H
#define CREST_WORKLOAD_PRUNE_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

/*
 * Detaches every mount but /, /dev, /proc and /sys (and theirs below);
 * 0, or -1 with errno set (EBUSY when mounts are left after 16 passes).
 */
static inline int prune_mounts(void)
{
	for (int pass = 0; pass < 16; pass++) {
		static char raw[65536];
		int fd = open("/proc/self/mountinfo", O_RDONLY), left = 0;
		ssize_t n, len = 0;

		if (fd < 0)
			return -1;
		while ((n = read(fd, raw + len, sizeof raw - 1 - len)) > 0)
			len += n;
		close(fd);
		raw[len] = 0;
		for (char *line = strtok(raw, "\n"); line; line = strtok(NULL, "\n")) {
			char mp[4096];

			if (sscanf(line, "%*d %*d %*s %*s %4095s", mp) != 1)
				continue;
			if (!strcmp(mp, "/") || !strcmp(mp, "/dev") || !strcmp(mp, "/proc") || !strcmp(mp, "/sys"))
				continue;
			left++;
			umount2(mp, MNT_DETACH);
		}
		if (!left)
			return 0;
	}
	errno = EBUSY;
	return -1;
}

#endif
