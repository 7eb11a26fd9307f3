/*
 * mntghost - a pid namespace init in a mount namespace of its own (launch
 * -m) holding files deleted while open (CRIU's ghost files) on its own
 * mounts. No libc, so that CRIU's images of it stay small
 * (images/testdata/criu-4.2-mntghost keeps a full set). Before its first
 * log line it:
 *
 *   detaches every mount but /, /dev, /proc and /sys (their submounts
 *   too), so that what is left is the same on every machine;
 *   mounts a proc of its own pid namespace over /proc;
 *   mounts a tmpfs at scratch (nosuid, nodev, size=1m, mode=755);
 *   bind-mounts src (a directory beside it) at bind;
 *   creates scratch/ghost.txt (mode 0640, 100 bytes), bind/host.bin (mode
 *   0604, 5000 bytes) and an O_TMPFILE file in scratch (mode 0600, 64
 *   bytes), keeps each open read-write at an offset of its own (5, 7 and
 *   10) and unlinks the two named ones.
 *
 * Every 10 ms it checks each open file: its link count 0, mode, size,
 * offset, contents, the file system it is on (scratch's tmpfs, src's) and
 * its /proc/self/fd link (its path with " (deleted)"). It appends
 * "mntghost N" to out-mntghost.log, or "CORRUPT tick=N <what>" and exits
 * 3.
 *
 * build: gcc -static -nostdlib -ffreestanding -O2 -fno-stack-protector -fcf-protection=none -o mntghost mntghost.c
 */
#include "nolibc.h"

#define NR_lseek 8
#define NR_pread 17
#define NR_unlink 87
#define NR_fstatfs 138

#define O_EXCL 0200
#define O_APPEND 02000
#define O_TMPFILE 020200000

static void corrupt(u64 tick, const char *what)
{
	say("CORRUPT tick=", tick, what);
	sys(NR_exit, 3, 0, 0, 0, 0, 0);
}

static unsigned char pattern(unsigned seed, u64 i)
{
	return (unsigned char)(i * seed + i / 253 + seed);
}

struct ghost {
	const char *path;	/* NULL: O_TMPFILE in scratch */
	const char *name;	/* for CORRUPT lines */
	unsigned mode, seed;
	u64 size, off;
	int on_tmpfs;
	int fd;
};

static struct ghost ghosts[] = {
	{ "scratch/ghost.txt", "scratch/ghost.txt", 0640, 7, 100, 5, 1, -1 },
	{ "bind/host.bin", "bind/host.bin", 0604, 13, 5000, 7, 0, -1 },
	{ 0, "tmpfile in scratch", 0600, 29, 64, 10, 1, -1 },
};

#define NGHOSTS (int)(sizeof ghosts / sizeof ghosts[0])

static char cwd[4096];
static u64 srcdev;

static void make(struct ghost *g)
{
	static unsigned char b[5000];
	i64 fd;

	if (g->path)
		fd = sys(NR_open, (i64)g->path, O_RDWR | O_CREAT | O_EXCL, g->mode, 0, 0, 0);
	else
		fd = sys(NR_open, (i64) "scratch", O_RDWR | O_TMPFILE, g->mode, 0, 0, 0);
	must(fd, g->name);
	for (u64 i = 0; i < g->size; i++)
		b[i] = pattern(g->seed, i);
	must(sys(NR_write, fd, (i64)b, (i64)g->size, 0, 0, 0) == (i64)g->size ? 0 : -5, g->name);
	must(sys(NR_lseek, fd, (i64)g->off, 0, 0, 0, 0), g->name);
	if (g->path)
		must(sys(NR_unlink, (i64)g->path, 0, 0, 0, 0, 0), g->name);
	g->fd = (int)fd;
}

/* says which file and what of it differs, and exits */
static void bad(u64 tick, const struct ghost *g, const char *what)
{
	static char b[4400];

	*put(put(put(b, g->name), ": "), what) = 0;
	corrupt(tick, b);
}

static void check(u64 tick, struct ghost *g)
{
	static unsigned char b[5001];
	static char link[4200], want[4200], fdpath[64];
	struct kstat st;
	struct kstatfs sf;
	i64 n;

	if (sys(NR_fstat, g->fd, (i64)&st, 0, 0, 0, 0) < 0)
		bad(tick, g, "fstat");
	if (st.nlink != 0)
		bad(tick, g, "link count not 0");
	if ((st.mode & 07777) != g->mode || (st.mode & 0170000) != 0100000)
		bad(tick, g, "mode");
	if ((u64)st.size != g->size)
		bad(tick, g, "size");
	if (sys(NR_lseek, g->fd, 0, 1 /* SEEK_CUR */, 0, 0, 0) != (i64)g->off)
		bad(tick, g, "offset");
	n = sys(NR_pread, g->fd, (i64)b, sizeof b, 0, 0, 0);
	if (n != (i64)g->size)
		bad(tick, g, "contents: size");
	for (u64 i = 0; i < g->size; i++)
		if (b[i] != pattern(g->seed, i))
			bad(tick, g, "contents");
	if (sys(NR_fstatfs, g->fd, (i64)&sf, 0, 0, 0, 0) < 0)
		bad(tick, g, "fstatfs");
	if (g->on_tmpfs ? sf.type != TMPFS_MAGIC : st.dev != srcdev)
		bad(tick, g, "not on its file system");
	char *o = put(fdpath, "/proc/self/fd/");
	*putnum(o, (u64)g->fd) = 0;
	n = sys(NR_readlink, (i64)fdpath, (i64)link, sizeof link - 1, 0, 0, 0);
	if (n < 0)
		bad(tick, g, "readlink");
	link[n] = 0;
	o = put(put(want, cwd), "/");
	if (g->path) {
		*put(put(o, g->path), " (deleted)") = 0;
		if (!same(link, want, len(want) + 1))
			bad(tick, g, link);
	} else {
		*put(o, "scratch/#") = 0;
		u64 w = len(want), l = len(link);
		if (l < w + 10 || !same(link, want, w) || !same(link + l - 10, " (deleted)", 10))
			bad(tick, g, link);
	}
}

void _start(void)
{
	static const u64 ts[2] = { 0, 10 * 1000 * 1000 };
	struct kstat st;
	i64 n;

	logfd = (int)sys(NR_open, (i64) "out-mntghost.log", 02101 /* O_WRONLY|O_APPEND|O_CREAT */, 0644, 0, 0, 0);
	if (logfd < 0)
		sys(NR_exit, 2, 0, 0, 0, 0, 0);
	must(prune_mounts(), "prune the mounts");
	must(sys(NR_umount2, (i64) "/proc", MNT_DETACH, 0, 0, 0, 0), "umount /proc");
	must(sys(NR_mount, (i64) "proc", (i64) "/proc", (i64) "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, 0, 0), "mount proc");
	n = sys(NR_readlink, (i64) "/proc/self/cwd", (i64)cwd, sizeof cwd - 1, 0, 0, 0);
	must(n, "cwd");
	cwd[n] = 0;
	sys(NR_mkdir, (i64) "scratch", 0755, 0, 0, 0, 0);
	must(sys(NR_mount, (i64) "tmpfs", (i64) "scratch", (i64) "tmpfs", MS_NOSUID | MS_NODEV, (i64) "size=1m,mode=755", 0), "mount tmpfs");
	sys(NR_mkdir, (i64) "src", 0755, 0, 0, 0, 0);
	sys(NR_mkdir, (i64) "bind", 0755, 0, 0, 0, 0);
	must(sys(NR_mount, (i64) "src", (i64) "bind", 0, MS_BIND, 0, 0), "bind src");
	must(sys(NR_stat, (i64) "src", (i64)&st, 0, 0, 0, 0), "stat src");
	srcdev = st.dev;
	for (int i = 0; i < NGHOSTS; i++)
		make(&ghosts[i]);

	for (u64 tick = 1;; tick++) {
		for (int i = 0; i < NGHOSTS; i++)
			check(tick, &ghosts[i]);
		say("mntghost ", tick, 0);
		sys(NR_nanosleep, (i64)ts, 0, 0, 0, 0, 0);
	}
}
