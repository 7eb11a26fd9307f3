/*
 * prog - a pid namespace init in a user namespace of its own, for the
 * CRIU 4.2 images of this directory (README.md). Freestanding (no libc:
 * its own system calls and _start), so that it and its checkpoint are a
 * few pages.
 *
 * It appends "N\n" to out.log in its working directory every 10 ms. Each
 * tick it checks that its ids are those it gave itself at the start
 * (groups 3 501, gids 500 501 502, uids 1000 0 1001: root by its
 * effective uid only) and that /proc/self/uid_map and gid_map read as
 * they did at the start; else it appends "CORRUPT <what>" and exits 3.
 *
 * build: gcc -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -O2 -o prog prog.c
 */

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_nanosleep 35
#define SYS_setresuid 117
#define SYS_getresuid 118
#define SYS_setresgid 119
#define SYS_getresgid 120
#define SYS_getgroups 115
#define SYS_setgroups 116
#define SYS_exit_group 231

#define O_RDONLY 0
#define O_WRONLY 01
#define O_CREAT 0100
#define O_APPEND 02000

struct timespec {
	long tv_sec, tv_nsec;
};

static long sys(long n, long a, long b, long c)
{
	long ret;

	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

static void __attribute__((noreturn)) quit(int code)
{
	for (;;)
		sys(SYS_exit_group, code, 0, 0);
}

static int logfd;
static char uid_map[512], gid_map[512];

static void say(const char *a, const char *b)
{
	char line[1200];
	int n = 0;

	while (*a && n < 600)
		line[n++] = *a++;
	while (b && *b && n < 1190)
		line[n++] = *b++;
	line[n++] = '\n';
	if (sys(SYS_write, logfd, (long)line, n) != n)
		quit(4);
}

static void corrupt(const char *what, const char *detail)
{
	say("CORRUPT ", what);
	if (detail)
		say("  ", detail);
	quit(3);
}

/* reads path whole into buf (NUL-terminated); its length, or -1 */
static int slurp(const char *path, char *buf, int size)
{
	int fd = (int)sys(SYS_open, (long)path, O_RDONLY, 0), len = 0;
	long n;

	if (fd < 0)
		return -1;
	while (len < size - 1 && (n = sys(SYS_read, fd, (long)(buf + len), size - 1 - len)) > 0)
		len += (int)n;
	sys(SYS_close, fd, 0, 0);
	buf[len] = 0;
	return len;
}

static int same(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

void __attribute__((used, noreturn)) run(void)
{
	static const unsigned int groups[2] = { 3, 501 };
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	unsigned int u[3], g[3], gr[8];
	char buf[512], num[24];

	logfd = (int)sys(SYS_open, (long)"out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (logfd < 0)
		quit(2);
	if (slurp("/proc/self/uid_map", uid_map, sizeof uid_map) <= 0 || slurp("/proc/self/gid_map", gid_map, sizeof gid_map) <= 0)
		quit(5);
	if (sys(SYS_setgroups, 2, (long)groups, 0) || sys(SYS_setresgid, 500, 501, 502) || sys(SYS_setresuid, 1000, 0, 1001))
		quit(6);
	for (unsigned long n = 1;; n++) {
		int i = 24;

		if (sys(SYS_getresuid, (long)&u[0], (long)&u[1], (long)&u[2]) || u[0] != 1000 || u[1] != 0 || u[2] != 1001)
			corrupt("uids", 0);
		if (sys(SYS_getresgid, (long)&g[0], (long)&g[1], (long)&g[2]) || g[0] != 500 || g[1] != 501 || g[2] != 502)
			corrupt("gids", 0);
		if (sys(SYS_getgroups, 8, (long)gr, 0) != 2 || gr[0] != 3 || gr[1] != 501)
			corrupt("groups", 0);
		if (slurp("/proc/self/uid_map", buf, sizeof buf) < 0 || !same(buf, uid_map))
			corrupt("uid_map", buf);
		if (slurp("/proc/self/gid_map", buf, sizeof buf) < 0 || !same(buf, gid_map))
			corrupt("gid_map", buf);
		num[--i] = 0;
		for (unsigned long v = n; v || i == 23; v /= 10)
			num[--i] = (char)('0' + v % 10);
		say(num + i, 0);
		while (sys(SYS_nanosleep, (long)&tick, 0, 0) == -4) /* EINTR */
			;
	}
}

/* the stack aligned as the ABI wants it at a call, then run */
__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	xor %ebp, %ebp\n"
	"	and $-16, %rsp\n"
	"	call run\n"
	"	hlt\n");
