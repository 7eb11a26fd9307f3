/*
 * launch - start a workload as the init (pid 1) of a new pid namespace.
 *
 *   usage: launch [-t] [-n] [-N] [-m [-P]] [-U] DIR PROG [ARGS...]
 *
 * With -t the workload also gets a time namespace of its own, its clocks
 * ahead of the host's: CLOCK_MONOTONIC by 100000 s, CLOCK_BOOTTIME by
 * 200000 s. With -n it gets UTS and IPC namespaces of its own. With -N it
 * gets a net namespace of its own (only lo in it, down, as the kernel
 * makes it). With -m it gets a mount namespace of its own, a copy of the
 * caller's with every mount made private (unshare -m --propagation
 * private); with -P too, a proc of its pid namespace is mounted on /proc
 * there (unshare --mount-proc). With -U it gets a user namespace of its own, which owns the
 * others: the launcher forks, the child unshares the user namespace, and
 * the parent writes its maps, several extents each (USERNS_UID_MAP,
 * USERNS_GID_MAP: root inside is not host root, whom the namespace does
 * not map, as in a container), before the child becomes root in it and
 * goes on as the launcher; DIR is given to root inside first, and entered
 * before, and PROG copied into it, from where it runs (their parents may
 * be closed to others: the working directory goes along into the new
 * namespaces). With -U and -m the mount namespace holds / and /proc
 * alone, and a proc of its own over that one (-P is implied; a user
 * namespace may mount a proc only where one is in sight): the child
 * detaches every other mount of a mount
 * namespace of its own before it leaves the caller's user namespace,
 * since those a user namespace copies are locked to / for good (a
 * container's tree is made so), and fds 0-2 are on DIR/.null, an empty
 * file, for want of a /dev.
 *
 * The launcher unshares the pid namespace and forks; the child (pid 1 of
 * the new namespace) becomes a session leader, enters DIR, sets umask 022,
 * points fds 0-2 at /dev/null, closes every other fd and execs PROG with a
 * fixed environment and default signal dispositions, so that a checkpoint
 * of it holds nothing inherited from the test. The launcher prints the child's host pid and exits without
 * waiting: it is not part of the tree.
 *
 * build: gcc -static -O2 -o launch launch.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define USERNS_UID_MAP "0 100000 1\n1 100001 999\n1000 301000 10\n2000 402000 5\n"
#define USERNS_GID_MAP "0 200000 1\n1 200001 499\n500 250500 100\n"
#define USERNS_ROOT_UID 100000 /* root inside, as the maps say */
#define USERNS_ROOT_GID 200000

/* writes map into /proc/PID/FILE, in one write as the kernel wants it */
static int write_map(pid_t pid, const char *file, const char *map)
{
	char path[64];
	int fd, ok;

	snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	ok = write(fd, map, strlen(map)) == (ssize_t)strlen(map);
	close(fd);
	return ok ? 0 : -1;
}

/*
 * Forks; the child unshares a user namespace, waits until the parent has
 * written its maps and returns as root in it. The parent waits for the
 * child and exits with its status.
 */
/*
 * detaches every mount but / and /proc (deepest first: one may hold
 * others); a user namespace may mount a proc only where one is in sight
 */
static void detach_all_but_root(void)
{
	char line[4096], mp[4096], mps[512][256];
	int n, i, pass;
	FILE *f;

	for (pass = 0; pass < 16; pass++) {
		f = fopen("/proc/self/mountinfo", "r");
		if (!f)
			return; /* proc went with the others */
		for (n = 0; n < 512 && fgets(line, sizeof line, f);) {
			if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && strcmp(mp, "/") && strcmp(mp, "/proc") &&
			    strlen(mp) < 256)
				strcpy(mps[n++], mp);
		}
		fclose(f);
		if (n == 0)
			return;
		for (i = n - 1; i >= 0; i--)
			umount2(mps[i], MNT_DETACH);
	}
}

static void enter_userns(int clean_mounts)
{
	int up[2], down[2], st;
	char c = 0;
	pid_t pid;

	if (pipe(up) || pipe(down)) {
		perror("launch: pipe");
		_exit(1);
	}
	pid = fork();
	if (pid < 0) {
		perror("launch: fork");
		_exit(1);
	}
	if (pid == 0) {
		if (clean_mounts) {
			if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) {
				perror("launch: a mount namespace of /");
				_exit(1);
			}
			detach_all_but_root();
		}
		if (unshare(CLONE_NEWUSER)) {
			perror("launch: unshare user");
			_exit(1);
		}
		if (write(up[1], &c, 1) != 1 || read(down[0], &c, 1) != 1 || c != 1)
			_exit(1);
		/*
		 * the change of ids made it not dumpable: its /proc/self would
		 * be host root's, whom the namespace does not map
		 */
		if (setresgid(0, 0, 0) || setresuid(0, 0, 0) || prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)) {
			perror("launch: root in the user namespace");
			_exit(1);
		}
		close(up[0]), close(up[1]), close(down[0]), close(down[1]);
		return;
	}
	if (read(up[0], &c, 1) != 1)
		_exit(1);
	if (write_map(pid, "uid_map", USERNS_UID_MAP) || write_map(pid, "gid_map", USERNS_GID_MAP)) {
		perror("launch: user namespace maps");
		kill(pid, SIGKILL);
		_exit(1);
	}
	c = 1;
	if (write(down[1], &c, 1) != 1)
		_exit(1);
	if (waitpid(pid, &st, 0) != pid)
		_exit(1);
	_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 1);
}

/*
 * copies the program *prog into the working directory (mode 0755) and
 * points *prog at the copy, by a path from there
 */
static int copy_prog(char **prog)
{
	static char path[PATH_MAX];
	const char *base = strrchr(*prog, '/') ? strrchr(*prog, '/') + 1 : *prog;
	int in = open(*prog, O_RDONLY | O_CLOEXEC), out;
	struct stat st;
	ssize_t n;

	if (in < 0 || fstat(in, &st) || snprintf(path, sizeof path, "./%s", base) >= (int)sizeof path)
		return -1;
	out = open(base, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
	if (out < 0)
		return -1;
	for (off_t left = st.st_size; left > 0; left -= n)
		if ((n = copy_file_range(in, NULL, out, NULL, left, 0)) <= 0)
			return -1;
	close(in);
	*prog = path;
	return close(out);
}

static char *const env[] = {
	"PATH=/usr/bin:/bin", "HOME=/", "LC_ALL=C", "TZ=UTC", NULL,
};

int main(int argc, char **argv)
{
	int newtime = 0, newutsipc = 0, newnet = 0, newmnt = 0, newuser = 0, newproc = 0;

	for (; argc > 1; argv++, argc--) {
		if (strcmp(argv[1], "-t") == 0)
			newtime = 1;
		else if (strcmp(argv[1], "-n") == 0)
			newutsipc = 1;
		else if (strcmp(argv[1], "-N") == 0)
			newnet = 1;
		else if (strcmp(argv[1], "-m") == 0)
			newmnt = 1;
		else if (strcmp(argv[1], "-U") == 0)
			newuser = 1;
		else if (strcmp(argv[1], "-P") == 0)
			newproc = 1;
		else
			break;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: launch [-t] [-n] [-N] [-m [-P]] [-U] DIR PROG [ARGS...]\n");
		return 2;
	}
	newproc = newproc || (newuser && newmnt);
	if (newproc && !newmnt) {
		fprintf(stderr, "launch: -P needs -m\n");
		return 2;
	}
	if (newuser) {
		if (chown(argv[1], USERNS_ROOT_UID, USERNS_ROOT_GID) || chdir(argv[1]) || copy_prog(&argv[2])) {
			perror("launch: DIR for root inside");
			return 1;
		}
		enter_userns(newmnt);
	}
	if (unshare(CLONE_NEWPID | (newtime ? CLONE_NEWTIME : 0) | (newutsipc ? CLONE_NEWUTS | CLONE_NEWIPC : 0) |
		    (newnet ? CLONE_NEWNET : 0) | (newmnt ? CLONE_NEWNS : 0))) {
		perror("launch: unshare");
		return 1;
	}
	if (newmnt && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) {
		perror("launch: make / private");
		return 1;
	}
	if (newtime) {
		static const char offsets[] = "monotonic 100000 0\nboottime 200000 0\n";
		int fd = open("/proc/self/timens_offsets", O_WRONLY);

		if (fd < 0 || write(fd, offsets, sizeof offsets - 1) != (ssize_t)(sizeof offsets - 1)) {
			perror("launch: /proc/self/timens_offsets");
			return 1;
		}
		close(fd);
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("launch: fork");
		return 1;
	}
	if (pid) {
		printf("%d\n", (int)pid);
		return 0;
	}
	if (setsid() < 0)
		_exit(120);
	if (newproc && mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		_exit(125);
	if (!newuser && chdir(argv[1]))
		_exit(121);
	umask(022);
	int nul = newuser && newmnt ? open(".null", O_RDWR | O_CREAT, 0644) : open("/dev/null", O_RDWR);
	if (nul < 0)
		_exit(122);
	if (dup2(nul, 0) < 0 || dup2(nul, 1) < 0 || dup2(nul, 2) < 0)
		_exit(123);
	if (syscall(SYS_close_range, 3U, ~0U, 0U))
		_exit(124);
	/*
	 * Signal dispositions and the blocked mask survive execve: start from
	 * the defaults whatever the caller had (make ignores signals 32 and
	 * 33). Raw rt_sigaction, since glibc refuses to touch 32 and 33.
	 */
	struct {
		unsigned long handler, flags, restorer, mask;
	} dfl = { 0 };
	for (int sig = 1; sig <= 64; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execve(argv[2], &argv[2], env);
	_exit(127);
}
