/*
 * userns - a pid namespace init in a user namespace of its own (launch -U,
 * with -n: UTS and IPC namespaces it owns too), whose maps and ids a
 * checkpoint must carry:
 *
 *   the maps launch -U writes, several extents each (read at the start);
 *   the init: groups 3 501 550, gids 500 501 502 (real, effective, saved),
 *   uids 1000 0 1001: root in the namespace by its effective uid only, so
 *   with its capabilities (CRIU's dump needs them in a pid namespace's
 *   init whose /proc is not of its namespace: it mounts one);
 *   its child: groups 2, gids 510 511 512, uids 2000 2001 2002 and no
 *   capabilities at all.
 *
 * Each opens its log while it is root in the namespace (host root is root
 * there: launch.c), then takes its ids. Every 10 ms each checks its
 * /proc/self/uid_map and gid_map against what it read at the start, its
 * ids and groups against the ones above, its capability sets (capget,
 * prctl) against what it had once its ids were set, and that
 * / (host root's) is root's in the namespace, and appends "N" to
 * out-userns.log (the init) or out-child.log, or a CORRUPT line saying
 * what differs, and exits 3.
 *
 * build: gcc -static -O2 -o userns userns.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <time.h>
#include "workload.h"

struct ids {
	gid_t groups[3];
	int nr_groups;
	gid_t gid[3];
	uid_t uid[3];
};

static const struct ids init_ids = { { 3, 501, 550 }, 3, { 500, 501, 502 }, { 1000, 0, 1001 } };
static const struct ids child_ids = { { 2 }, 1, { 510, 511, 512 }, { 2000, 2001, 2002 } };

static char uid_map[1024], gid_map[1024], caps[512];

static int read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ssize_t n, len = 0;

	if (fd < 0)
		return -1;
	while (len < (ssize_t)size - 1 && (n = read(fd, buf + len, size - 1 - len)) > 0)
		len += n;
	close(fd);
	buf[len] = 0;
	return 0;
}

/*
 * the capability sets: effective, permitted, inheritable (capget), the
 * bounding set and the ambient one (prctl), by system calls: an fd open
 * on a file of /proc/self at the dump is not what this is about
 */
static int read_caps(char *out, size_t size)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	unsigned long long bnd = 0, amb = 0;
	int c;

	if (syscall(SYS_capget, &hdr, d))
		return -1;
	for (c = 0; c < 64; c++) {
		if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1)
			bnd |= 1ull << c;
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1)
			amb |= 1ull << c;
	}
	snprintf(out, size, "eff %08x%08x prm %08x%08x inh %08x%08x bnd %llx amb %llx", d[1].effective, d[0].effective,
		 d[1].permitted, d[0].permitted, d[1].inheritable, d[0].inheritable, bnd, amb);
	return 0;
}

static void set_ids(const struct ids *want)
{
	if (setgroups(want->nr_groups, want->groups) ||
	    setresgid(want->gid[0], want->gid[1], want->gid[2]) ||
	    setresuid(want->uid[0], want->uid[1], want->uid[2]))
		_exit(5);
}

/* what differs from the start, "" when nothing */
static void check(const struct ids *want, char *why, size_t size)
{
	char buf[1024];
	uid_t u[3];
	gid_t g[3], groups[16];
	int n, i;
	struct stat st;

	why[0] = 0;
	if (read_file("/proc/self/uid_map", buf, sizeof buf) || strcmp(buf, uid_map)) {
		snprintf(why, size, "uid_map is now [%s], was [%s]", buf, uid_map);
		return;
	}
	if (read_file("/proc/self/gid_map", buf, sizeof buf) || strcmp(buf, gid_map)) {
		snprintf(why, size, "gid_map is now [%s], was [%s]", buf, gid_map);
		return;
	}
	getresuid(&u[0], &u[1], &u[2]);
	getresgid(&g[0], &g[1], &g[2]);
	if (memcmp(u, want->uid, sizeof u) || memcmp(g, want->gid, sizeof g)) {
		snprintf(why, size, "uids %u %u %u gids %u %u %u, want %u %u %u and %u %u %u", u[0], u[1], u[2],
			 g[0], g[1], g[2], want->uid[0], want->uid[1], want->uid[2], want->gid[0], want->gid[1],
			 want->gid[2]);
		return;
	}
	n = getgroups(16, groups);
	if (n != want->nr_groups) {
		snprintf(why, size, "%d groups, want %d", n, want->nr_groups);
		return;
	}
	for (i = 0; i < n; i++) {
		if (groups[i] != want->groups[i]) {
			snprintf(why, size, "group %d is %u, want %u", i, groups[i], want->groups[i]);
			return;
		}
	}
	if (read_caps(buf, sizeof caps) || strcmp(buf, caps)) {
		snprintf(why, size, "capabilities now [%s], were [%s]", buf, caps);
		return;
	}
	if (stat("/", &st) == 0 && st.st_uid != 0)
		snprintf(why, size, "/ owned by %u, want 0 (host root is root here)", st.st_uid);
}

static void tick_loop(const char *role, int log, const struct ids *want)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[4096], why[3000];
	unsigned long n;

	for (n = 1;; n++) {
		check(want, why, sizeof why);
		if (why[0]) {
			snprintf(line, sizeof line, "CORRUPT %s %lu: %s\n", role, n, why);
			say(log, line);
			_exit(3);
		}
		snprintf(line, sizeof line, "%lu\n", n);
		say(log, line);
		nanosleep(&ts, NULL);
	}
}

int main(void)
{
	int log;
	pid_t pid;

	if (read_file("/proc/self/uid_map", uid_map, sizeof uid_map) ||
	    read_file("/proc/self/gid_map", gid_map, sizeof gid_map))
		return 6;
	pid = fork();
	if (pid < 0)
		return 7;
	if (pid == 0) {
		log = open_log("child");
		set_ids(&child_ids);
		if (read_caps(caps, sizeof caps))
			_exit(6);
		tick_loop("child", log, &child_ids);
	}
	log = open_log("userns");
	set_ids(&init_ids);
	if (read_caps(caps, sizeof caps))
		return 6;
	tick_loop("userns", log, &init_ids);
	return 0;
}
