/*
 * mntns - a pid namespace init in a mount namespace of its own (launch
 * -m: a copy of the caller's, every mount private), set up as a test
 * harness sets one up. Before its first log line it:
 *
 *   detaches every mount but /, /dev, /proc and /sys (their submounts
 *   too: /dev/shm, /dev/pts, cgroups, bpf ...), so that what is left is
 *   the same on every machine;
 *   mounts a proc of its own pid namespace over /proc (nosuid, nodev,
 *   noexec);
 *   mounts a tmpfs at scratch (nosuid, nodev, size=1m, mode=750) holding
 *   hello.txt (mode 0640), a hard link to it (hard), a symlink to it
 *   (link), sub/data.bin (10000 bytes of a pattern), and a second tmpfs
 *   at scratch/inner (size=64k) holding inner.txt;
 *   bind-mounts src (a directory beside it, with host.txt) at bind,
 *   read-only;
 *   bind-mounts scratch/sub at subbind;
 *   opens scratch/sub/data.bin read-write at offset 777 and bind/host.txt
 *   read-only at offset 3 (files on its own mounts), and keeps them.
 *
 * It records the shape of /proc/self/mountinfo: every line without its
 * mount ids and device numbers, peer group numbers dropped from the
 * optional fields, sorted. Every 10 ms it checks that shape, the files
 * (contents, modes, the hard link's inode and count, the symlink's
 * target), that subbind shows scratch/sub's inodes, that bind refuses a
 * new file with EROFS, that scratch and scratch/inner are tmpfs of their
 * own, that /proc/self is 1, and the two open files (their offsets and
 * what they read). It appends "mntns N" to out-mntns.log, or a CORRUPT
 * line saying what differs, and exits 3: the mountinfo difference first
 * whenever there is one, even when another check saw a difference first
 * (a restore resumes a tick where the dump froze it). The log is in its directory, on
 * the root mount.
 *
 * build: gcc -static -O2 -o mntns mntns.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>

#include "prune.h"
#include "workload.h"

#define TMPFS_MAGIC 0x01021994
#define DATA_SIZE 10000

static int logfd;
static char shape[16384];


static void check_shape(unsigned long tick);

/*
 * Says what differs and exits. A dump may freeze the workload in the
 * middle of a check, past its mountinfo comparison: the restored one goes
 * on from there, so a later check of that tick may be the first to see a
 * restored mount that differs. The mount table is then compared again
 * first, so that the first CORRUPT line names the mountinfo whenever it
 * differs.
 */
static void corrupt(unsigned long tick, const char *fmt, ...)
{
	static char b[40000];
	static int in_corrupt;
	int n;
	va_list ap;

	if (!in_corrupt++)
		check_shape(tick);
	n = snprintf(b, sizeof b, "CORRUPT tick=%lu ", tick);
	va_start(ap, fmt);
	vsnprintf(b + n, sizeof b - n - 1, fmt, ap);
	va_end(ap);
	strcat(b, "\n");
	say(logfd, b);
	exit(3);
}

static void must(int ok, const char *what)
{
	if (!ok) {
		char b[256];

		snprintf(b, sizeof b, "setup: %s: %s\n", what, strerror(errno));
		say(logfd, b);
		exit(2);
	}
}

static unsigned char pattern(unsigned i)
{
	return (unsigned char)(i * 7 + i / 251);
}

static int write_file(const char *path, const void *data, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	if (fd < 0)
		return -1;
	if (write(fd, data, len) != (ssize_t)len || fchmod(fd, mode))
		return -1;
	return close(fd);
}

/* reads /proc/self/mountinfo into out as sorted lines without ids */
static int read_shape(char *out, size_t size)
{
	static char raw[65536], lines[256][512];
	int fd = open("/proc/self/mountinfo", O_RDONLY);
	ssize_t n, len = 0;
	int nl = 0;

	if (fd < 0)
		return -1;
	while ((n = read(fd, raw + len, sizeof raw - 1 - len)) > 0)
		len += n;
	close(fd);
	raw[len] = 0;
	for (char *line = strtok(raw, "\n"); line && nl < 256; line = strtok(NULL, "\n")) {
		char *f[64];
		int nf = 0;
		char *o = lines[nl];

		for (char *w = strtok_r(line, " ", &line); w && nf < 64; w = strtok_r(NULL, " ", &line))
			f[nf++] = w;
		/* id parent maj:min root mountpoint opts [optional...] - type source super */
		o[0] = 0;
		for (int i = 3; i < nf; i++) {
			char w[256];

			snprintf(w, sizeof w, "%s", f[i]);
			if (i > 5 && strchr(w, ':') && f[i][0] != '-') {
				char *c = strchr(w, ':');
				/* shared:N, master:N, propagate_from:N: the kind only */
				if (c && strspn(c + 1, "0123456789") == strlen(c + 1))
					*c = 0;
			}
			if (strlen(o) + strlen(w) + 2 < sizeof lines[nl]) {
				strcat(o, w);
				strcat(o, " ");
			}
		}
		nl++;
	}
	qsort(lines, nl, sizeof lines[0], (int (*)(const void *, const void *))strcmp);
	out[0] = 0;
	for (int i = 0; i < nl; i++) {
		if (strlen(out) + strlen(lines[i]) + 2 >= size)
			return -1;
		strcat(out, lines[i]);
		strcat(out, "\n");
	}
	return 0;
}

static void check_shape(unsigned long tick)
{
	static char now[sizeof shape];

	if (read_shape(now, sizeof now))
		corrupt(tick, "mountinfo unreadable: %s", strerror(errno));
	if (strcmp(now, shape))
		corrupt(tick, "mountinfo now:\n%s\nat the start:\n%s", now, shape);
}

static void check(unsigned long tick, int datafd, int hostfd)
{
	char b[DATA_SIZE];
	struct stat st, st2;
	struct statfs sf, sf2;
	ssize_t n;

	check_shape(tick);

	int fd = open("scratch/hello.txt", O_RDONLY);
	if (fd < 0 || (n = read(fd, b, sizeof b)) != 11 || memcmp(b, "scratch 42\n", 11) || fstat(fd, &st))
		corrupt(tick, "scratch/hello.txt: %s", fd < 0 ? strerror(errno) : "content");
	close(fd);
	if ((st.st_mode & 07777) != 0640 || st.st_nlink != 2)
		corrupt(tick, "scratch/hello.txt: mode %o links %lu", st.st_mode, (unsigned long)st.st_nlink);
	if (stat("scratch/hard", &st2) || st2.st_ino != st.st_ino || st2.st_dev != st.st_dev)
		corrupt(tick, "scratch/hard is not hello.txt");
	if ((n = readlink("scratch/link", b, sizeof b)) != 9 || memcmp(b, "hello.txt", 9))
		corrupt(tick, "scratch/link: %zd", n);
	fd = open("scratch/sub/data.bin", O_RDONLY);
	if (fd < 0 || read(fd, b, sizeof b) != DATA_SIZE || fstat(fd, &st))
		corrupt(tick, "scratch/sub/data.bin: %s", strerror(errno));
	close(fd);
	for (unsigned i = 0; i < DATA_SIZE; i++)
		if ((unsigned char)b[i] != pattern(i))
			corrupt(tick, "scratch/sub/data.bin byte %u", i);
	if (stat("subbind/data.bin", &st2) || st2.st_ino != st.st_ino || st2.st_dev != st.st_dev)
		corrupt(tick, "subbind/data.bin is not scratch/sub/data.bin");
	fd = open("scratch/inner/inner.txt", O_RDONLY);
	if (fd < 0 || read(fd, b, sizeof b) != 6 || memcmp(b, "inner\n", 6))
		corrupt(tick, "scratch/inner/inner.txt");
	close(fd);
	if (statfs("scratch", &sf) || sf.f_type != TMPFS_MAGIC || statfs("scratch/inner", &sf2) ||
	    sf2.f_type != TMPFS_MAGIC || stat("scratch", &st) || stat("scratch/inner", &st2) || st.st_dev == st2.st_dev)
		corrupt(tick, "scratch and scratch/inner are not two tmpfs");
	fd = open("bind/host.txt", O_RDONLY);
	if (fd < 0 || read(fd, b, sizeof b) != 10 || memcmp(b, "host side\n", 10))
		corrupt(tick, "bind/host.txt");
	close(fd);
	fd = open("bind/new", O_WRONLY | O_CREAT, 0644);
	if (fd >= 0 || errno != EROFS)
		corrupt(tick, "bind is not read-only: %s", fd >= 0 ? "created" : strerror(errno));
	if ((n = readlink("/proc/self", b, sizeof b)) != 1 || b[0] != '1')
		corrupt(tick, "/proc/self is not 1: %.*s", (int)(n > 0 ? n : 0), b);
	if (lseek(datafd, 0, SEEK_CUR) != 777 || pread(datafd, b, 3, 777) != 3 || (unsigned char)b[0] != pattern(777))
		corrupt(tick, "open scratch/sub/data.bin: offset or content");
	if (lseek(hostfd, 0, SEEK_CUR) != 3 || pread(hostfd, b, 4, 0) != 4 || memcmp(b, "host", 4))
		corrupt(tick, "open bind/host.txt: offset or content");
	if (fstat(datafd, &st) || stat("scratch/sub/data.bin", &st2) || st.st_ino != st2.st_ino || st.st_dev != st2.st_dev)
		corrupt(tick, "open scratch/sub/data.bin is not the file at its path");
}

int main(void)
{
	static unsigned char data[DATA_SIZE];

	logfd = open_log("mntns");
	must(!prune_mounts(), "prune the mounts");
	must(!umount2("/proc", MNT_DETACH), "umount /proc");
	must(!mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "mount proc");

	mkdir("scratch", 0755);
	must(!mount("tmpfs", "scratch", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=750"), "mount tmpfs");
	must(!write_file("scratch/hello.txt", "scratch 42\n", 11, 0640), "hello.txt");
	must(!link("scratch/hello.txt", "scratch/hard"), "hard link");
	must(!symlink("hello.txt", "scratch/link"), "symlink");
	must(!mkdir("scratch/sub", 0700), "sub");
	for (unsigned i = 0; i < DATA_SIZE; i++)
		data[i] = pattern(i);
	must(!write_file("scratch/sub/data.bin", data, DATA_SIZE, 0600), "data.bin");
	must(!mkdir("scratch/inner", 0755), "inner");
	must(!mount("tmpfs", "scratch/inner", "tmpfs", 0, "size=64k"), "mount inner tmpfs");
	must(!write_file("scratch/inner/inner.txt", "inner\n", 6, 0644), "inner.txt");

	mkdir("src", 0755);
	must(!write_file("src/host.txt", "host side\n", 10, 0644), "host.txt");
	mkdir("bind", 0755);
	must(!mount("src", "bind", NULL, MS_BIND, NULL), "bind src");
	must(!mount(NULL, "bind", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL), "bind read-only");
	mkdir("subbind", 0755);
	must(!mount("scratch/sub", "subbind", NULL, MS_BIND, NULL), "bind scratch/sub");

	int datafd = open("scratch/sub/data.bin", O_RDWR);
	int hostfd = open("bind/host.txt", O_RDONLY);
	must(datafd >= 0 && lseek(datafd, 777, SEEK_SET) == 777, "open data.bin");
	must(hostfd >= 0 && lseek(hostfd, 3, SEEK_SET) == 3, "open host.txt");
	must(!read_shape(shape, sizeof shape), "mountinfo");

	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (unsigned long tick = 1;; tick++) {
		char line[64];

		check(tick, datafd, hostfd);
		snprintf(line, sizeof line, "mntns %lu\n", tick);
		say(logfd, line);
		nanosleep(&ts, NULL);
	}
}
