/*
 * mntprop - a pid namespace init in a mount namespace of its own (launch
 * -m) whose mounts propagate: a peer group, slaves of it and an
 * unbindable mount. No libc, so that CRIU's images of it stay small
 * (images/testdata/criu-4.2-mntprop keeps a full set). Before its first
 * log line it:
 *
 *   detaches every mount but /, /dev, /proc and /sys (their submounts
 *   too), so that what is left is the same on every machine, and mounts a
 *   proc of its own pid namespace over /proc;
 *   mounts a tmpfs at share (size=64k) holding hello.txt and the
 *   directories sub, sub/p, sub/q and sub/in, and makes it shared;
 *   binds share at peer and share/sub at peer2: both join share's peer
 *   group (peer2 with the root /sub);
 *   binds share at slave and makes it a slave of that group, and at
 *   slave2, a slave made shared (a group of its own, with a master);
 *   mounts a tmpfs at share/sub/in (size=16k) holding in.txt, which
 *   propagates: peer/sub/in and peer2/in are its peers, slave/sub/in and
 *   slave2/sub/in its slaves;
 *   mounts a tmpfs at unbind (size=16k) and makes it unbindable.
 *
 * It records the shape of /proc/self/mountinfo: every line without its
 * mount ids and device numbers, sorted, each peer group number replaced
 * by the order in which the sorted lines first name it (so a restore may
 * renumber the groups, not change who shares with whom). Every 10 ms it
 * checks that shape, hello.txt through peer and slave and in.txt through
 * every copy of share/sub/in, then that propagation works: a tmpfs
 * mounted at share/sub/p shows at peer/sub/p, peer2/p, slave/sub/p and
 * slave2/sub/p, and its unmount takes all of them away; one mounted at
 * slave/sub/q shows nowhere else; a bind of unbind fails with EINVAL. It
 * appends "mntprop N" to out-mntprop.log, or "CORRUPT tick=N <what>" and
 * exits 3 (the mountinfo first whenever it differs: a restore resumes a
 * tick where the dump froze it, maybe with a probe mounted).
 *
 * build: gcc -static -nostdlib -ffreestanding -O2 -fno-stack-protector -fcf-protection=none -o mntprop mntprop.c
 */
#include "nolibc.h"

#define O_TRUNC 01000
#define MS_UNBINDABLE (1 << 17)
#define MS_SLAVE (1 << 19)
#define MS_SHARED (1 << 20)
#define EINVAL 22

static int cmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (unsigned char)*a - (unsigned char)*b;
}

#define MAXLINES 64
#define LINELEN 512

/*
 * reads /proc/self/mountinfo into out: its lines without mount ids and
 * devices, sorted, every peer group number (shared:N, master:N,
 * propagate_from:N) replaced by g1, g2 ... in the order the sorted lines
 * first name them. 0, or -1.
 */
static int read_shape(char *out, u64 size)
{
	static char raw[65536], key[MAXLINES][LINELEN];
	static u64 nums[MAXLINES][4], seen[4 * MAXLINES];
	static int order[MAXLINES], nnums[MAXLINES];
	i64 fd = sys(NR_open, (i64) "/proc/self/mountinfo", O_RDONLY, 0, 0, 0, 0), n, got = 0;
	int nl = 0, nseen = 0;

	if (fd < 0)
		return -1;
	while ((n = sys(NR_read, fd, (i64)(raw + got), (i64)(sizeof raw - 1 - got), 0, 0, 0)) > 0)
		got += n;
	sys(NR_close, fd, 0, 0, 0, 0, 0);
	raw[got] = 0;
	for (char *l = raw; *l && nl < MAXLINES; nl++) {
		char *o = key[nl], *lim = key[nl] + LINELEN - 2;
		int field = 0, optional = 1;

		nnums[nl] = 0;
		while (*l && *l != '\n') {
			char *w = l;

			while (*l && *l != ' ' && *l != '\n')
				l++;
			u64 wl = (u64)(l - w);
			if (*l == ' ')
				l++;
			field++;
			if (field <= 3) /* id, parent, major:minor */
				continue;
			if (wl == 1 && *w == '-')
				optional = 0;
			if (o + wl + 2 >= lim)
				return -1;
			if (field > 6 && optional) {
				/* shared:N, master:N, propagate_from:N */
				char *c = w;
				while (c < w + wl && *c != ':')
					c++;
				if (c < w + wl && nnums[nl] < 4) {
					u64 v = 0;
					for (char *d = c + 1; d < w + wl; d++)
						v = v * 10 + (u64)(*d - '0');
					nums[nl][nnums[nl]++] = v;
					wl = (u64)(c - w) + 1;
					for (u64 i = 0; i < wl; i++)
						*o++ = w[i];
					*o++ = '#';
					*o++ = ' ';
					continue;
				}
			}
			for (u64 i = 0; i < wl; i++)
				*o++ = w[i];
			*o++ = ' ';
		}
		*o = 0;
		if (*l == '\n')
			l++;
		order[nl] = nl;
	}
	for (int i = 1; i < nl; i++)
		for (int j = i; j > 0 && cmp(key[order[j - 1]], key[order[j]]) > 0; j--) {
			int t = order[j];
			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	char *o = out, *lim = out + size - 1;
	for (int i = 0; i < nl; i++) {
		int k = order[i], next = 0;

		if (o + LINELEN + 16 >= lim)
			return -1;
		for (char *c = key[k]; *c; c++) {
			if (*c != '#') {
				*o++ = *c;
				continue;
			}
			u64 v = nums[k][next++];
			int g = 0;
			while (g < nseen && seen[g] != v)
				g++;
			if (g == nseen)
				seen[nseen++] = v;
			*o++ = 'g';
			o = putnum(o, (u64)g + 1);
		}
		*o++ = '\n';
	}
	*o = 0;
	return 0;
}

static char shape[MAXLINES * (LINELEN + 16)];

static void check_shape(u64 tick)
{
	static char now[sizeof shape], b[sizeof shape * 2 + 64];

	if (read_shape(now, sizeof now))
		say("CORRUPT tick=", tick, "mountinfo unreadable"), sys(NR_exit, 3, 0, 0, 0, 0, 0);
	if (cmp(now, shape)) {
		*put(put(put(put(b, "mountinfo now:\n"), now), "at the start:\n"), shape) = 0;
		say("CORRUPT tick=", tick, b);
		sys(NR_exit, 3, 0, 0, 0, 0, 0);
	}
}

static void corrupt(u64 tick, const char *what, const char *path)
{
	static char b[1024];
	static int in_corrupt;

	if (!in_corrupt++)
		check_shape(tick);
	*put(put(put(b, what), " "), path) = 0;
	say("CORRUPT tick=", tick, b);
	sys(NR_exit, 3, 0, 0, 0, 0, 0);
}

static u64 dev_of(u64 tick, const char *path)
{
	struct kstat st;

	if (sys(NR_stat, (i64)path, (i64)&st, 0, 0, 0, 0) < 0)
		corrupt(tick, "stat", path);
	return st.dev;
}

static void holds(u64 tick, const char *path, const char *want)
{
	static char b[64];
	i64 fd = sys(NR_open, (i64)path, O_RDONLY, 0, 0, 0, 0), n;

	if (fd < 0)
		corrupt(tick, "open", path);
	n = sys(NR_read, fd, (i64)b, sizeof b, 0, 0, 0);
	sys(NR_close, fd, 0, 0, 0, 0, 0);
	if (n != (i64)len(want) || !same(b, want, (u64)n))
		corrupt(tick, "contents of", path);
}

/* where a mount at share/sub/p propagates, and share/sub/p itself */
static const char *const ppaths[] = { "share/sub/p", "peer/sub/p", "peer2/p", "slave/sub/p", "slave2/sub/p" };
/* where one at slave/sub/q must not show */
static const char *const qpaths[] = { "share/sub/q", "peer/sub/q", "peer2/q", "slave2/sub/q" };
/* the copies of share/sub/in */
static const char *const inpaths[] = { "share/sub/in/in.txt", "peer/sub/in/in.txt", "peer2/in/in.txt",
				       "slave/sub/in/in.txt", "slave2/sub/in/in.txt" };

#define N(a) (int)(sizeof a / sizeof a[0])

static void check(u64 tick)
{
	check_shape(tick);
	holds(tick, "share/hello.txt", "peer 42\n");
	holds(tick, "peer/hello.txt", "peer 42\n");
	holds(tick, "slave/hello.txt", "peer 42\n");
	holds(tick, "slave2/hello.txt", "peer 42\n");
	for (int i = 0; i < N(inpaths); i++)
		holds(tick, inpaths[i], "inner\n");
	u64 sharedev = dev_of(tick, "share");

	/* a mount in the peer group reaches every peer and slave */
	i64 r = sys(NR_mount, (i64) "tmpfs", (i64) "share/sub/p", (i64) "tmpfs", 0, (i64) "size=8k", 0);
	if (r < 0)
		corrupt(tick, "mount tmpfs at", "share/sub/p");
	u64 probe = dev_of(tick, "share/sub/p");
	if (probe == sharedev)
		corrupt(tick, "no new mount at", "share/sub/p");
	for (int i = 1; i < N(ppaths); i++)
		if (dev_of(tick, ppaths[i]) != probe)
			corrupt(tick, "a mount at share/sub/p did not propagate to", ppaths[i]);
	if (sys(NR_umount2, (i64) "share/sub/p", 0, 0, 0, 0, 0) < 0)
		corrupt(tick, "umount", "share/sub/p");
	for (int i = 0; i < N(ppaths); i++)
		if (dev_of(tick, ppaths[i]) != sharedev)
			corrupt(tick, "the unmount of share/sub/p did not propagate to", ppaths[i]);

	/* a mount in the slave stays there */
	if (sys(NR_mount, (i64) "tmpfs", (i64) "slave/sub/q", (i64) "tmpfs", 0, (i64) "size=8k", 0) < 0)
		corrupt(tick, "mount tmpfs at", "slave/sub/q");
	if (dev_of(tick, "slave/sub/q") == sharedev)
		corrupt(tick, "no new mount at", "slave/sub/q");
	for (int i = 0; i < N(qpaths); i++)
		if (dev_of(tick, qpaths[i]) != sharedev)
			corrupt(tick, "a mount at slave/sub/q propagated to", qpaths[i]);
	if (sys(NR_umount2, (i64) "slave/sub/q", 0, 0, 0, 0, 0) < 0)
		corrupt(tick, "umount", "slave/sub/q");

	/* an unbindable mount can not be bound */
	r = sys(NR_mount, (i64) "unbind", (i64) "bindtry", 0, MS_BIND, 0, 0);
	if (r == 0) {
		sys(NR_umount2, (i64) "bindtry", MNT_DETACH, 0, 0, 0, 0);
		corrupt(tick, "bound the unbindable", "unbind");
	}
	if (r != -EINVAL)
		corrupt(tick, "bind of unbind: not EINVAL", "bindtry");
}

static void write_file(const char *path, const char *data)
{
	i64 fd = sys(NR_open, (i64)path, O_WRONLY | O_CREAT | O_TRUNC, 0644, 0, 0, 0);

	must(fd, path);
	must(sys(NR_write, fd, (i64)data, (i64)len(data), 0, 0, 0) == (i64)len(data) ? 0 : -5, path);
	sys(NR_close, fd, 0, 0, 0, 0, 0);
}

static void mkdirs(const char *const *paths)
{
	for (; *paths; paths++)
		sys(NR_mkdir, (i64)*paths, 0755, 0, 0, 0, 0);
}

void _start(void)
{
	static const u64 ts[2] = { 0, 10 * 1000 * 1000 };
	static const char *const top[] = { "share", "peer", "peer2", "slave", "slave2", "unbind", "bindtry", 0 };
	static const char *const inside[] = { "share/sub", "share/sub/p", "share/sub/q", "share/sub/in", 0 };

	logfd = (int)sys(NR_open, (i64) "out-mntprop.log", 02101 /* O_WRONLY|O_APPEND|O_CREAT */, 0644, 0, 0, 0);
	if (logfd < 0)
		sys(NR_exit, 2, 0, 0, 0, 0, 0);
	must(prune_mounts(), "prune the mounts");
	must(sys(NR_umount2, (i64) "/proc", MNT_DETACH, 0, 0, 0, 0), "umount /proc");
	must(sys(NR_mount, (i64) "proc", (i64) "/proc", (i64) "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, 0, 0), "mount proc");
	mkdirs(top);
	must(sys(NR_mount, (i64) "tmpfs", (i64) "share", (i64) "tmpfs", MS_NOSUID | MS_NODEV, (i64) "size=64k,mode=755", 0), "mount share");
	mkdirs(inside);
	write_file("share/hello.txt", "peer 42\n");
	must(sys(NR_mount, 0, (i64) "share", 0, MS_SHARED, 0, 0), "make share shared");
	must(sys(NR_mount, (i64) "share", (i64) "peer", 0, MS_BIND, 0, 0), "bind share at peer");
	must(sys(NR_mount, (i64) "share/sub", (i64) "peer2", 0, MS_BIND, 0, 0), "bind share/sub at peer2");
	must(sys(NR_mount, (i64) "share", (i64) "slave", 0, MS_BIND, 0, 0), "bind share at slave");
	must(sys(NR_mount, 0, (i64) "slave", 0, MS_SLAVE, 0, 0), "make slave a slave");
	must(sys(NR_mount, (i64) "share", (i64) "slave2", 0, MS_BIND, 0, 0), "bind share at slave2");
	must(sys(NR_mount, 0, (i64) "slave2", 0, MS_SLAVE, 0, 0), "make slave2 a slave");
	must(sys(NR_mount, 0, (i64) "slave2", 0, MS_SHARED, 0, 0), "make slave2 shared");
	must(sys(NR_mount, (i64) "tmpfs", (i64) "share/sub/in", (i64) "tmpfs", 0, (i64) "size=16k", 0), "mount share/sub/in");
	write_file("share/sub/in/in.txt", "inner\n");
	must(sys(NR_mount, (i64) "tmpfs", (i64) "unbind", (i64) "tmpfs", MS_NOSUID, (i64) "size=16k", 0), "mount unbind");
	must(sys(NR_mount, 0, (i64) "unbind", 0, MS_UNBINDABLE, 0, 0), "make unbind unbindable");
	must(read_shape(shape, sizeof shape), "mountinfo");

	for (u64 tick = 1;; tick++) {
		check(tick);
		say("mntprop ", tick, 0);
		sys(NR_nanosleep, (i64)ts, 0, 0, 0, 0, 0);
	}
}
