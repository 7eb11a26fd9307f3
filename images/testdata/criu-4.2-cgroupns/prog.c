/*
 * prog - the program of CRIU 4.2's images in this directory: a pid
 * namespace init that forks one child; each appends "<role> N" to
 * out-<role>.log in its working directory every 10 ms, forever. No libc,
 * so that the images stay small.
 *
 * build: gcc -static -nostdlib -O2 -fno-stack-protector -fcf-protection=none -o prog prog.c
 */
typedef unsigned long u64;

static long sys(long nr, long a, long b, long c)
{
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

#define NR_write 1
#define NR_open 2
#define NR_nanosleep 35
#define NR_fork 57
#define NR_exit 60

static void run(const char *name, const char *role)
{
	static const u64 ts[2] = { 0, 10 * 1000 * 1000 };
	char line[32];
	int fd = (int)sys(NR_open, (long)name, 02101 /* O_WRONLY|O_APPEND|O_CREAT */, 0644);

	if (fd < 0)
		sys(NR_exit, 2, 0, 0);
	for (u64 n = 1;; n++) {
		char digits[20];
		int len = 0, k = 0;

		for (const char *r = role; *r; r++)
			line[len++] = *r;
		line[len++] = ' ';
		for (u64 v = n; v; v /= 10)
			digits[k++] = (char)('0' + v % 10);
		while (k)
			line[len++] = digits[--k];
		line[len++] = '\n';
		if (sys(NR_write, fd, (long)line, len) != len)
			sys(NR_exit, 4, 0, 0);
		sys(NR_nanosleep, (long)ts, 0, 0);
	}
}

void _start(void)
{
	long pid = sys(NR_fork, 0, 0, 0);

	if (pid < 0)
		sys(NR_exit, 1, 0, 0);
	if (pid == 0)
		run("out-child.log", "child");
	run("out-init.log", "init");
}
