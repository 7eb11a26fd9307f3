/*
 * procfds - a pid namespace init (the parent) and its child, each holding
 * files of the tree's own /proc open: /proc/self/status (which the kernel
 * names /proc/PID/status), the child's /proc/PID/stat, the parent's
 * /proc/PID/cmdline (one open file both share, opened before the fork)
 * and a directory fd on /proc/self/fd.
 *
 * /proc shows the tree's own pids: unless it already does, the init makes
 * a mount namespace of its own (every mount private), detaches every mount
 * but /, /dev, /proc and /sys (their submounts too, so that what is left
 * is the same on every machine) and mounts a proc of its pid namespace
 * over /proc, as a container's init finds one. So a restore must open the
 * files through the tree's proc, and only once the task each names exists.
 * With -n it keeps the proc it finds: started outside a pid namespace of
 * its own, that is one of its pid namespace too.
 *
 * The init writes 'P' over the first byte of its argv[0] before the fork,
 * the child 'C' over its copy after it, and each names itself with
 * PR_SET_NAME (procfds-parent, procfds-child). Every 10 ms each reads
 * every file from its start and checks that it describes the right
 * process: status its own name, pid and parent; the child's stat its pid,
 * name and parent; the parent's cmdline what it was at the start, 'P'
 * first; and the fd directory lists exactly the fds it has, its log among
 * them by its name. It appends "parent N" to out-parent.log or "child N"
 * to out-child.log, or a CORRUPT line saying what differs and exits 3.
 *
 * build: gcc -static -O2 -o procfds procfds.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include "prune.h"
#include "workload.h"

#define MAXFD 1024

static int logfd;
static const char *role;
static char want_cmdline[4096];
static ssize_t want_cmdline_len;

static void corrupt(unsigned long tick, const char *fmt, ...)
{
	char b[512];
	int n = snprintf(b, sizeof b, "CORRUPT %s tick=%lu ", role, tick);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(b + n, sizeof b - n - 1, fmt, ap);
	va_end(ap);
	strcat(b, "\n");
	if (logfd > 0)
		say(logfd, b);
	_exit(3);
}

static void must(int ok, const char *what)
{
	if (!ok)
		corrupt(0, "setup: %s: %s", what, strerror(errno));
}

/* gives the tree a proc of its own pid namespace at /proc, unless it has one */
static void own_proc(void)
{
	char b[16];
	ssize_t n = readlink("/proc/self", b, sizeof b);

	if (n == 1 && b[0] == '1')
		return;
	must(!unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)");
	must(!mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), "make / private");
	must(!prune_mounts(), "prune the mounts");
	must(!umount2("/proc", MNT_DETACH), "umount /proc");
	must(!mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "mount proc");
}

/* reads fd from its start into b (NUL-terminated), returns the length */
static ssize_t read_all(int fd, char *b, size_t size, unsigned long tick, const char *what)
{
	ssize_t n = pread(fd, b, size - 1, 0);

	if (n < 0)
		corrupt(tick, "read %s: %s", what, strerror(errno));
	b[n] = 0;
	return n;
}

/* the number after "key:\t" in a status file, or -1 */
static long status_field(const char *s, const char *key)
{
	const char *p = strstr(s, key);

	return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

static void check_status(int fd, unsigned long tick, const char *name)
{
	char b[4096], want[64];

	read_all(fd, b, sizeof b, tick, "status");
	snprintf(want, sizeof want, "Name:\t%s\n", name);
	if (strncmp(b, want, strlen(want)))
		corrupt(tick, "status names %.30s, want %s", b, name);
	if (status_field(b, "\nPid:\t") != getpid() || status_field(b, "\nPPid:\t") != getppid())
		corrupt(tick, "status: pid %ld ppid %ld, want %d %d", status_field(b, "\nPid:\t"),
			status_field(b, "\nPPid:\t"), getpid(), getppid());
}

/* the child's stat: "PID (procfds-child) STATE PARENT ..." */
static void check_stat(int fd, unsigned long tick, pid_t child, pid_t parent)
{
	char b[1024], want[64];
	int n = snprintf(want, sizeof want, "%d (procfds-child) ", child);

	read_all(fd, b, sizeof b, tick, "stat");
	if (strncmp(b, want, n) || strtol(b + n + 2, NULL, 10) != parent)
		corrupt(tick, "the child's stat is %.40s, want %s. %d", b, want, parent);
}

static void check_cmdline(int fd, unsigned long tick)
{
	char b[sizeof want_cmdline];
	ssize_t n = read_all(fd, b, sizeof b, tick, "cmdline");

	if (n != want_cmdline_len || memcmp(b, want_cmdline, n))
		corrupt(tick, "the parent's cmdline is %.40s (%zd bytes), want %.40s (%zd)", b, n, want_cmdline,
			want_cmdline_len);
}

struct dirent64_ {
	uint64_t ino;
	int64_t off;
	unsigned short reclen;
	unsigned char type;
	char name[];
};

/* the fd directory lists exactly the fds this process has open */
static void check_fd_dir(int dir, unsigned long tick)
{
	char listed[MAXFD] = { 0 }, buf[4096], link[256], want[64];
	long n;

	if (lseek(dir, 0, SEEK_SET) != 0)
		corrupt(tick, "lseek the fd directory: %s", strerror(errno));
	while ((n = syscall(SYS_getdents64, dir, buf, sizeof buf)) > 0) {
		for (long off = 0; off < n;) {
			struct dirent64_ *d = (struct dirent64_ *)(buf + off);
			char *end;
			long fd = strtol(d->name, &end, 10);

			off += d->reclen;
			if (d->name[0] == '.')
				continue;
			if (*end || fd < 0 || fd >= MAXFD)
				corrupt(tick, "the fd directory lists %s", d->name);
			listed[fd] = 1;
		}
	}
	if (n < 0)
		corrupt(tick, "getdents64 of the fd directory: %s", strerror(errno));
	for (int fd = 0; fd < MAXFD; fd++)
		if (listed[fd] != (fcntl(fd, F_GETFD) >= 0))
			corrupt(tick, "fd %d is %s the fd directory but %s", fd, listed[fd] ? "in" : "not in",
				listed[fd] ? "closed" : "open");
	snprintf(want, sizeof want, "%d", logfd);
	n = readlinkat(dir, want, link, sizeof link - 1);
	link[n > 0 ? n : 0] = 0;
	snprintf(want, sizeof want, "/out-%s.log", role);
	if (n <= 0 || strlen(link) < strlen(want) || strcmp(link + strlen(link) - strlen(want), want))
		corrupt(tick, "fd %d is %s in the fd directory, want ...%s", logfd, link, want);
}

int main(int argc, char **argv)
{
	const struct timespec tick = { 0, 10 * 1000 * 1000 };
	char path[64], line[64];
	int status, stat, cmdline, dir, ready[2];
	pid_t child;

	if (argc < 2 || strcmp(argv[1], "-n"))
		own_proc();
	argv[0][0] = 'P';
	cmdline = open("/proc/self/cmdline", O_RDONLY);
	must(cmdline >= 0, "open /proc/self/cmdline");
	want_cmdline_len = read(cmdline, want_cmdline, sizeof want_cmdline);
	must(want_cmdline_len > 0, "read /proc/self/cmdline");
	close(cmdline);
	snprintf(path, sizeof path, "/proc/%d/cmdline", getpid());
	cmdline = open(path, O_RDONLY);
	must(cmdline >= 0, "open the parent's cmdline");

	must(!pipe(ready), "pipe");
	child = fork();
	must(child >= 0, "fork");
	if (child == 0) {
		role = "child";
		argv[0][0] = 'C';
		must(!prctl(PR_SET_NAME, "procfds-child"), "PR_SET_NAME");
		logfd = open_log("child");
		child = getpid();
	} else {
		role = "parent";
		must(!prctl(PR_SET_NAME, "procfds-parent"), "PR_SET_NAME");
		logfd = open_log("parent");
	}
	status = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	snprintf(path, sizeof path, "/proc/%d/stat", child);
	stat = open(path, O_RDONLY);
	dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	must(status >= 0 && stat >= 0 && dir >= 0, "open the proc files");
	/* the parent checks the child once it is named and argv[0] marked */
	close(ready[child == getpid() ? 0 : 1]);
	if (child != getpid())
		must(read(ready[0], path, 1) == 0, "wait for the child");
	close(ready[child == getpid() ? 1 : 0]);
	for (unsigned long n = 1;; n++) {
		int ws = 0;

		check_status(status, n, child == getpid() ? "procfds-child" : "procfds-parent");
		check_stat(stat, n, child, child == getpid() ? getppid() : getpid());
		check_cmdline(cmdline, n);
		check_fd_dir(dir, n);
		if (child != getpid() && waitpid(child, &ws, WNOHANG) != 0)
			corrupt(n, "the child ended (status %#x)", ws);
		snprintf(line, sizeof line, "%s %lu\n", role, n);
		say(logfd, line);
		nanosleep(&tick, NULL);
	}
}
