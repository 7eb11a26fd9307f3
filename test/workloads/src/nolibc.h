/*
 * nolibc.h - what the workloads built without libc share (mntghost,
 * mntprop, mntfiles: so that CRIU's images of them stay small; vecregs:
 * so that no library code touches its vector registers), on
 * x86_64: raw system calls and the numbers and flags they use, the
 * kernel's struct stat and statfs, string helpers, the log line, and the
 * mount pruning prune.h does for the others.
 */
#ifndef CREST_NOLIBC_H
#define CREST_NOLIBC_H

typedef unsigned long u64;
typedef long i64;

/* a system call: the return value, -errno on failure */
static inline i64 sys(i64 nr, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f)
{
	i64 ret;
	register i64 r10 asm("r10") = d;
	register i64 r8 asm("r8") = e;
	register i64 r9 asm("r9") = f;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9) : "rcx", "r11", "memory");
	return ret;
}

#define NR_read 0
#define NR_write 1
#define NR_open 2
#define NR_close 3
#define NR_stat 4
#define NR_fstat 5
#define NR_nanosleep 35
#define NR_exit 60
#define NR_mkdir 83
#define NR_readlink 89
#define NR_mount 165
#define NR_umount2 166

#define O_RDONLY 0
#define O_WRONLY 01
#define O_RDWR 02
#define O_CREAT 0100
#define MS_NOSUID 2
#define MS_NODEV 4
#define MS_NOEXEC 8
#define MS_BIND 4096
#define MNT_DETACH 2
#define TMPFS_MAGIC 0x01021994

/* struct stat and struct statfs of x86_64, the fields read */
struct kstat {
	u64 dev, ino, nlink;
	unsigned int mode, uid, gid, pad;
	u64 rdev;
	i64 size, blksize, blocks;
	u64 rest[9];
};

struct kstatfs {
	i64 type;
	i64 rest[14];
};

/* the workload's log, out-NAME.log */
static int logfd = -1;

static inline u64 len(const char *s)
{
	u64 n = 0;

	while (s[n])
		n++;
	return n;
}

static inline int same(const void *a, const void *b, u64 n)
{
	const unsigned char *x = a, *y = b;

	for (u64 i = 0; i < n; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

static inline char *put(char *o, const char *s)
{
	while (*s)
		*o++ = *s++;
	return o;
}

static inline char *putnum(char *o, u64 v)
{
	char d[20];
	int k = 0;

	do
		d[k++] = (char)('0' + v % 10);
	while (v /= 10);
	while (k)
		*o++ = d[--k];
	return o;
}

/* writes the log line "a n b" ("a n" without b) */
static inline void say(const char *a, u64 n, const char *b)
{
	static char line[40000];
	char *o = put(line, a);

	o = putnum(o, n);
	if (b) {
		*o++ = ' ';
		o = put(o, b);
	}
	*o++ = '\n';
	sys(NR_write, logfd, (i64)line, o - line, 0, 0, 0);
}

/* a failed setup step: says so and exits 2 */
static inline void must(i64 ret, const char *what)
{
	if (ret < 0) {
		say("setup: errno ", (u64)-ret, what);
		sys(NR_exit, 2, 0, 0, 0, 0, 0);
	}
}

/* detaches every mount but /, /dev, /proc and /sys: -1 when some stay */
static inline int prune_mounts(void)
{
	static char raw[65536];

	for (int pass = 0; pass < 16; pass++) {
		i64 fd = sys(NR_open, (i64) "/proc/self/mountinfo", O_RDONLY, 0, 0, 0, 0), n, got = 0;
		int left = 0;

		if (fd < 0)
			return -1;
		while ((n = sys(NR_read, fd, (i64)(raw + got), (i64)(sizeof raw - 1 - got), 0, 0, 0)) > 0)
			got += n;
		sys(NR_close, fd, 0, 0, 0, 0, 0);
		raw[got] = 0;
		for (char *l = raw; *l;) {
			char *end = l, *mp = l;
			int field = 0;

			while (*end && *end != '\n')
				end++;
			/* the mount point is the fifth field */
			for (char *c = l; c < end && field < 4; c++)
				if (*c == ' ' && ++field == 4)
					mp = c + 1;
			char *mpend = mp;
			while (mpend < end && *mpend != ' ')
				mpend++;
			char save = *mpend;
			*mpend = 0;
			if (field == 4 && !(same(mp, "/", 2) || same(mp, "/dev", 5) || same(mp, "/proc", 6) || same(mp, "/sys", 5))) {
				left++;
				sys(NR_umount2, (i64)mp, MNT_DETACH, 0, 0, 0, 0);
			}
			*mpend = save;
			l = *end ? end + 1 : end;
		}
		if (!left)
			return 0;
	}
	return -1;
}

#endif
