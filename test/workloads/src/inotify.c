/*
 * inotify - a pid namespace init with an inotify file (IN_NONBLOCK,
 * IN_CLOEXEC) watching, in its working directory, the directory
 * "watched" as wd 1 (IN_CREATE | IN_DELETE | IN_EXCL_UNLINK) and the file
 * "target" as wd 3 (IN_MODIFY | IN_CLOSE_WRITE). Wd 2, on the file
 * "other", was removed right after it was added: the wds have a gap.
 *
 * Every 10 ms tick it writes to "target" and creates and removes
 * "watched/t", and must then read from the inotify, in this order and
 * nothing else: wd 3 IN_MODIFY, wd 3 IN_CLOSE_WRITE, wd 1 IN_CREATE "t",
 * wd 1 IN_DELETE "t", each with the wd it got when it added the watch.
 * Its /proc/self/fdinfo must list exactly those two watches, with their
 * wds, masks and the inodes of "watched" and "target".
 *
 * A checkpoint does not keep the events queued at the dump (CRIU does
 * not either), so a tick whose events do not all come within a second,
 * or come without the first ones (a dump froze the tick between its
 * changes), does its changes once more, and then they must come.
 *
 * Every tick appends "inotify N" to out-inotify.log; a missing, unknown
 * or wrong event or watch is logged as CORRUPT and ends the process
 * (exit 3).
 *
 * build: gcc -static -O2 -o inotify inotify.c
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>

#include "workload.h"

#define MASK_DIR (IN_CREATE | IN_DELETE | IN_EXCL_UNLINK)
#define MASK_FILE (IN_MODIFY | IN_CLOSE_WRITE)

static int logfd, ify, wd_dir, wd_file;
static unsigned long ino_dir, ino_file;

static void corrupt(const char *what, unsigned long long got, unsigned long long want)
{
	char line[160];

	snprintf(line, sizeof line, "CORRUPT inotify: %s %llx, want %llx\n", what, got, want);
	say(logfd, line);
	_exit(3);
}

static unsigned long inode(const char *path)
{
	struct stat st;

	if (stat(path, &st))
		_exit(2);
	return st.st_ino;
}

/* the watches as the kernel lists them: wd 1 and 3, nothing else */
static void check_watches(void)
{
	char path[64], buf[4096], *l;
	int fd, n, seen = 0;

	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", ify);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		corrupt("open fdinfo", errno, 0);
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		corrupt("read fdinfo", n, 1);
	buf[n] = 0;
	for (l = buf; (l = strstr(l, "inotify wd:")); l++) {
		unsigned int wd, sdev, mask;
		unsigned long ino;

		if (sscanf(l, "inotify wd:%x ino:%lx sdev:%x mask:%x", &wd, &ino, &sdev, &mask) != 4)
			corrupt("fdinfo line", 0, 1);
		if (wd == (unsigned int)wd_dir) {
			if (ino != ino_dir || mask != MASK_DIR)
				corrupt("directory watch ino/mask", (unsigned long long)ino << 32 | mask,
					(unsigned long long)ino_dir << 32 | MASK_DIR);
			seen |= 1;
		} else if (wd == (unsigned int)wd_file) {
			if (ino != ino_file || mask != MASK_FILE)
				corrupt("file watch ino/mask", (unsigned long long)ino << 32 | mask,
					(unsigned long long)ino_file << 32 | MASK_FILE);
			seen |= 2;
		} else {
			corrupt("unknown watch wd", wd, 0);
		}
	}
	if (seen != 3)
		corrupt("watches listed", seen, 3);
}

/* the changes of one tick */
static void change(void)
{
	/* not O_TRUNC: a truncation is an IN_MODIFY too */
	int fd = open("target", O_WRONLY);

	if (fd < 0 || pwrite(fd, "x", 1, 0) != 1 || close(fd))
		corrupt("write target", errno, 0);
	fd = open("watched/t", O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (fd < 0 || close(fd) || unlink("watched/t"))
		corrupt("create watched/t", errno, 0);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* reads what is queued, until nothing is */
static void drain(void)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));

	while (read(ify, buf, sizeof buf) > 0 || errno == EINTR)
		;
}

/* reads the events of one tick's changes; 0 if they did not all come
 * within a second or the first pass's came out of order (a checkpoint
 * dropped some), with the queue drained */
static int events(int second)
{
	static const struct {
		int *wd;
		uint32_t mask;
		const char *name;
	} want[] = {
		{ &wd_file, IN_MODIFY, "" },
		{ &wd_file, IN_CLOSE_WRITE, "" },
		{ &wd_dir, IN_CREATE, "t" },
		{ &wd_dir, IN_DELETE, "t" },
	};
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	double deadline = now() + 1;
	unsigned int next = 0;

	while (next < sizeof want / sizeof want[0]) {
		struct pollfd pfd = { .fd = ify, .events = POLLIN };
		int left = (int)((deadline - now()) * 1000), k;
		ssize_t n;

		if (left < 0)
			return 0;
		k = poll(&pfd, 1, left);
		/* a freeze (the dump's, a restore's) ends a poll with EINTR */
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			corrupt("poll", errno, 0);
		if (k == 0)
			return 0;
		n = read(ify, buf, sizeof buf);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0)
			corrupt("read", n, 1);
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;
			const char *name = ev->len ? ev->name : "";

			if (next >= sizeof want / sizeof want[0])
				corrupt("event beyond the tick's, wd", ev->wd, 0);
			if (!second && (ev->wd != *want[next].wd || ev->mask != want[next].mask || strcmp(name, want[next].name))) {
				drain();
				return 0;
			}
			if (ev->wd != *want[next].wd)
				corrupt("event wd", ev->wd, *want[next].wd);
			if (ev->mask != want[next].mask)
				corrupt("event mask", ev->mask, want[next].mask);
			if (strcmp(name, want[next].name))
				corrupt("event name length", strlen(name), strlen(want[next].name));
			next++;
			p += sizeof *ev + ev->len;
		}
	}
	return 1;
}

int main(void)
{
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	char line[64], buf[256];
	int gap, fd;

	logfd = open_log("inotify");
	if (mkdir("watched", 0755) && errno != EEXIST)
		return 2;
	fd = open("target", O_WRONLY | O_CREAT, 0644);
	if (fd < 0 || close(fd))
		return 2;
	fd = open("other", O_WRONLY | O_CREAT, 0644);
	if (fd < 0 || close(fd))
		return 2;
	ino_dir = inode("watched");
	ino_file = inode("target");

	ify = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (ify < 0)
		return 2;
	wd_dir = inotify_add_watch(ify, "watched", MASK_DIR | IN_ONLYDIR);
	gap = inotify_add_watch(ify, "other", IN_ATTRIB);
	wd_file = inotify_add_watch(ify, "target", MASK_FILE);
	if (wd_dir != 1 || gap != 2 || wd_file != 3 || inotify_rm_watch(ify, gap))
		return 2;
	/* the IN_IGNORED of the removed watch */
	if (read(ify, buf, sizeof buf) <= 0)
		return 2;

	for (unsigned long n = 1;; n++) {
		check_watches();
		change();
		if (!events(0)) {
			change();
			if (!events(1))
				corrupt("events of a tick did not come, tick", n, 0);
		}
		snprintf(line, sizeof line, "inotify %lu\n", n);
		say(logfd, line);
		nanosleep(&tick, NULL);
	}
}
