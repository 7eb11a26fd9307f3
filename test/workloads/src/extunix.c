/*
 * extunix - a task whose unix sockets talk to listeners outside its tree,
 * as a program logging through syslog(3) to /dev/log does (CRIU's
 * external unix sockets, criu dump --ext-unix-sk):
 *   fd 4  log: a datagram socket connected to "extunix.sock" in the
 *         working directory, a datagram socket bound there by someone
 *         outside the tree (the test), before the start;
 *   fd 5  any: a datagram socket never connected, sending with sendto to
 *         the same name (it has no peer);
 *   fd 6  stream: only when "extunix-stream.sock" exists in the working
 *         directory at the start, a stream socket connected to the
 *         listener bound there (one a dump must refuse).
 * Every 10 ms it sends "log N\n" on log, "any N\n" on any, "stream N\n"
 * on stream, and then appends "extunix N\n" to out-extunix.log (fd 3). A
 * send that fails is logged as "CORRUPT <socket> send: errno E" and ends
 * the process (exit 3); a listener missing at the start ends it with
 * exit 5.
 *
 * It is freestanding (no libc: its own syscalls and _start), so that it
 * and its checkpoint are a few pages: images/testdata/criu-4.2-extunix
 * keeps CRIU 4.2's whole image set of it, with the binary.
 *
 * build: gcc -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -O2 -o extunix extunix.c
 */

#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_nanosleep 35
#define SYS_socket 41
#define SYS_connect 42
#define SYS_sendto 44
#define SYS_exit_group 231

#define AF_UNIX 1
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define MSG_NOSIGNAL 0x4000
#define O_WRONLY 01
#define O_CREAT 0100
#define O_APPEND 02000

struct sockaddr_un {
	unsigned short sun_family;
	char sun_path[108];
};

struct timespec {
	long tv_sec, tv_nsec;
};

static long sys(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

static void __attribute__((noreturn)) quit(int code)
{
	for (;;)
		sys(SYS_exit_group, code, 0, 0, 0, 0, 0);
}

static int slen(const char *s)
{
	int n = 0;

	while (s[n])
		n++;
	return n;
}

/* appends s to buf at *n */
static void put(char *buf, int *n, const char *s)
{
	while (*s)
		buf[(*n)++] = *s++;
}

/* appends the decimal digits of v to buf at *n */
static void putnum(char *buf, int *n, unsigned long v)
{
	char d[24];
	int i = 0;

	do
		d[i++] = (char)('0' + v % 10);
	while (v /= 10);
	while (i > 0)
		buf[(*n)++] = d[--i];
}

static int logfd;

static void corrupt(const char *what, long err)
{
	char line[96];
	int n = 0;

	put(line, &n, "CORRUPT ");
	put(line, &n, what);
	put(line, &n, " send: errno ");
	putnum(line, &n, (unsigned long)-err);
	line[n++] = '\n';
	sys(SYS_write, logfd, (long)line, n, 0, 0, 0);
	quit(3);
}

static int address(struct sockaddr_un *a, const char *name)
{
	int n = slen(name);

	a->sun_family = AF_UNIX;
	for (int i = 0; i <= n; i++)
		a->sun_path[i] = name[i];
	return 2 + n + 1;
}

/* sends "<tag> <tick>\n" on fd, to a when it is set */
static void send_tick(int fd, const char *tag, unsigned long tick, struct sockaddr_un *a, int alen)
{
	char msg[48];
	int n = 0;
	long r;

	put(msg, &n, tag);
	msg[n++] = ' ';
	putnum(msg, &n, tick);
	msg[n++] = '\n';
	r = sys(SYS_sendto, fd, (long)msg, n, MSG_NOSIGNAL, (long)a, a ? alen : 0);
	if (r != n)
		corrupt(tag, r < 0 ? r : 0);
}

void __attribute__((used, noreturn)) run(void)
{
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	struct sockaddr_un a, sa;
	int alen, log, any, stream;

	logfd = (int)sys(SYS_open, (long)"out-extunix.log", O_WRONLY | O_APPEND | O_CREAT, 0644, 0, 0, 0);
	if (logfd != 3)
		quit(2);
	alen = address(&a, "extunix.sock");
	log = (int)sys(SYS_socket, AF_UNIX, SOCK_DGRAM, 0, 0, 0, 0);
	any = (int)sys(SYS_socket, AF_UNIX, SOCK_DGRAM, 0, 0, 0, 0);
	stream = (int)sys(SYS_socket, AF_UNIX, SOCK_STREAM, 0, 0, 0, 0);
	if (log != 4 || any != 5 || stream != 6)
		quit(5);
	if (sys(SYS_connect, log, (long)&a, alen, 0, 0, 0))
		quit(5);
	if (sys(SYS_connect, stream, (long)&sa, address(&sa, "extunix-stream.sock"), 0, 0, 0)) {
		sys(SYS_close, stream, 0, 0, 0, 0, 0);
		stream = -1;
	}
	for (unsigned long n = 1;; n++) {
		char line[48];
		int len = 0;

		send_tick(log, "log", n, 0, 0);
		send_tick(any, "any", n, &a, alen);
		if (stream >= 0)
			send_tick(stream, "stream", n, 0, 0);
		put(line, &len, "extunix ");
		putnum(line, &len, n);
		line[len++] = '\n';
		if (sys(SYS_write, logfd, (long)line, len, 0, 0, 0) != len)
			quit(4);
		while (sys(SYS_nanosleep, (long)&tick, 0, 0, 0, 0, 0) == -4) /* EINTR */
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
