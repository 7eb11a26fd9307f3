/*
 * mntfiles - a pid namespace init in a mount namespace of its own (launch
 * -m) holding a FIFO and unix sockets bound to paths on a tmpfs of its own
 * mount namespace. No libc, so that CRIU's images of it stay small
 * (images/testdata/criu-4.2-mntfiles keeps a full set). Before its first
 * log line it:
 *
 *   detaches every mount but /, /dev, /proc and /sys (their submounts
 *   too), so that what is left is the same on every machine;
 *   mounts a proc of its own pid namespace over /proc;
 *   mounts a tmpfs at scratch (nosuid, nodev, size=1m, mode=755);
 *   makes the FIFO scratch/fifo (mode 0640), opens it for reading
 *   (non-blocking) and for writing, and writes a first record into it;
 *   binds a unix stream socket to the absolute path of
 *   scratch/stream.sock (mode 0660) and listens; connects a client to it
 *   by that path and accepts the connection;
 *   binds a unix datagram socket to the relative name scratch/dgram.sock
 *   (mode 0600) and makes a datagram socket that is never bound nor
 *   connected;
 *   mounts a devpts instance of its own at /dev/pts (newinstance,
 *   ptmxmode=0666, mode=620), opens /dev/ptmx (a pty of that instance)
 *   and its slave /dev/pts/N, raw.
 *
 * Every 10 ms it reads the FIFO's record of the tick before and writes
 * this tick's (so one sits in it at any dump), sends a record each way
 * over the stream connection, sends a datagram to scratch/dgram.sock by
 * name from the unbound socket and reads it on the bound one, sends a
 * record each way through the pty (whose number and slave, a device of
 * the namespace's devpts, it checks), checks the
 * names of the listener and of the datagram socket (not the client's
 * peer's: CRIU restores an accepted connection as a socketpair, whose
 * ends have no name), and the three paths: on
 * scratch's tmpfs, a FIFO 0640, a socket 0660, a socket 0600. A
 * connection made to the listener (from outside, through
 * /proc/PID/root) is accepted, answered "pong N\n" and closed. It appends
 * "mntfiles N" to out-mntfiles.log, or "CORRUPT tick=N <what>" and exits
 * 3.
 *
 * build: gcc -static -nostdlib -ffreestanding -O2 -fno-stack-protector -fcf-protection=none -o mntfiles mntfiles.c
 */
#include "nolibc.h"

#define NR_lstat 6
#define NR_poll 7
#define NR_socket 41
#define NR_connect 42
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_bind 49
#define NR_listen 50
#define NR_getsockname 51
#define NR_chmod 90
#define NR_mknod 133
#define NR_statfs 137
#define NR_accept4 288
#define NR_ioctl 16

#define O_NONBLOCK 04000
#define S_IFIFO 0010000
#define S_IFSOCK 0140000
#define AF_UNIX 1
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define MSG_DONTWAIT 0x40
#define POLLIN 1
#define O_NOCTTY 0400
#define S_IFCHR 0020000
#define TCGETS 0x5401
#define TCSETS 0x5402
#define TIOCGPTN 0x80045430
#define TIOCSPTLCK 0x40045431
#define REC 16 /* "fifo 0000000042\n" */

/* struct termios of the kernel (TCGETS) */
struct ktermios {
	unsigned int iflag, oflag, cflag, lflag;
	unsigned char line, cc[19];
};

struct sun {
	unsigned short family;
	char path[108];
};

struct pollfd {
	int fd;
	short events, revents;
};

/* a record of REC bytes: what, then n in 10 digits, then a newline */
static void record(char *b, const char *what, u64 n)
{
	char *o = put(b, what);

	for (int i = 9; i >= 0; i--, n /= 10)
		o[i] = (char)('0' + n % 10);
	o[10] = '\n';
}

static void corrupt(u64 tick, const char *what)
{
	say("CORRUPT tick=", tick, what);
	sys(NR_exit, 3, 0, 0, 0, 0, 0);
}

static struct sun streamaddr, dgramaddr;
static u64 streamlen, dgramlen;
static int fifor, fifow, lsk, client, server, dsk, sender, ptm, pts;
static unsigned ptn;
static char ptspath[32];

/* reads exactly n bytes from fd: 0, or -1 */
static int readn(int fd, char *b, u64 n)
{
	for (u64 got = 0; got < n;) {
		i64 r = sys(NR_read, fd, (i64)(b + got), (i64)(n - got), 0, 0, 0);

		if (r <= 0)
			return -1;
		got += (u64)r;
	}
	return 0;
}

static void name(struct sun *a, u64 *alen, const char *p)
{
	a->family = AF_UNIX;
	*put(a->path, p) = 0;
	*alen = 2 + len(p) + 1;
}

/* the path p on scratch's tmpfs, of type and mode mode */
static void check_path(u64 tick, const char *p, unsigned mode, u64 dev)
{
	static char b[256];
	struct kstat st;

	if (sys(NR_lstat, (i64)p, (i64)&st, 0, 0, 0, 0) < 0) {
		*put(put(b, p), ": missing") = 0;
		corrupt(tick, b);
	}
	if (st.mode != mode || st.dev != dev) {
		*put(put(b, p), ": mode or file system") = 0;
		corrupt(tick, b);
	}
}

/* the name of socket fd is a */
static void check_name(u64 tick, int fd, const struct sun *a, u64 alen, const char *what)
{
	struct sun got;
	int glen = sizeof got;

	if (sys(NR_getsockname, fd, (i64)&got, (i64)&glen, 0, 0, 0) < 0 ||
	    (u64)glen != alen || !same(&got, a, alen))
		corrupt(tick, what);
}

static void check(u64 tick)
{
	char b[64], want[REC];
	struct kstat st;
	struct kstatfs sf;
	struct pollfd pfd = { lsk, POLLIN, 0 };

	if (sys(NR_statfs, (i64) "scratch", (i64)&sf, 0, 0, 0, 0) < 0 || sf.type != TMPFS_MAGIC ||
	    sys(NR_stat, (i64) "scratch", (i64)&st, 0, 0, 0, 0) < 0)
		corrupt(tick, "scratch is not a tmpfs");
	check_path(tick, "scratch/fifo", S_IFIFO | 0640, st.dev);
	check_path(tick, "scratch/stream.sock", S_IFSOCK | 0660, st.dev);
	check_path(tick, "scratch/dgram.sock", S_IFSOCK | 0600, st.dev);

	/* the FIFO holds the record of the tick before */
	record(want, "fifo ", tick - 1);
	if (sys(NR_read, fifor, (i64)b, sizeof b, 0, 0, 0) != REC || !same(b, want, REC))
		corrupt(tick, "fifo: not the record of the tick before");
	record(want, "fifo ", tick);
	if (sys(NR_write, fifow, (i64)want, REC, 0, 0, 0) != REC)
		corrupt(tick, "fifo: write");

	record(want, "ping ", tick);
	if (sys(NR_write, client, (i64)want, REC, 0, 0, 0) != REC ||
	    sys(NR_read, server, (i64)b, REC, 0, 0, 0) != REC || !same(b, want, REC))
		corrupt(tick, "stream: client to server");
	record(want, "pong ", tick);
	if (sys(NR_write, server, (i64)want, REC, 0, 0, 0) != REC ||
	    sys(NR_read, client, (i64)b, REC, 0, 0, 0) != REC || !same(b, want, REC))
		corrupt(tick, "stream: server to client");
	check_name(tick, lsk, &streamaddr, streamlen, "stream: the listener's name");

	record(want, "dgrm ", tick);
	if (sys(NR_sendto, sender, (i64)want, REC, 0, (i64)&dgramaddr, (i64)dgramlen) != REC)
		corrupt(tick, "dgram: sendto scratch/dgram.sock");
	if (sys(NR_recvfrom, dsk, (i64)b, sizeof b, MSG_DONTWAIT, 0, 0) != REC || !same(b, want, REC))
		corrupt(tick, "dgram: what scratch/dgram.sock received");
	check_name(tick, dsk, &dgramaddr, dgramlen, "dgram: its name");

	/* the pty: its number, its slave on the namespace's devpts, data both ways */
	unsigned n = ~0u;
	u64 ptsdev;
	if (sys(NR_ioctl, ptm, TIOCGPTN, (i64)&n, 0, 0, 0) < 0 || n != ptn)
		corrupt(tick, "pty: the master's number");
	if (sys(NR_stat, (i64) "/dev/pts", (i64)&st, 0, 0, 0, 0) < 0)
		corrupt(tick, "pty: no /dev/pts");
	ptsdev = st.dev;
	if (sys(NR_fstat, pts, (i64)&st, 0, 0, 0, 0) < 0 || (st.mode & 0170000) != S_IFCHR || st.dev != ptsdev ||
	    (st.rdev & 0xff) != ptn)
		corrupt(tick, "pty: the slave is not /dev/pts/N of the namespace's devpts");
	check_path(tick, ptspath, S_IFCHR | 0620, ptsdev);
	record(want, "m2s  ", tick);
	if (sys(NR_write, ptm, (i64)want, REC, 0, 0, 0) != REC || readn(pts, b, REC) || !same(b, want, REC))
		corrupt(tick, "pty: master to slave");
	record(want, "s2m  ", tick);
	if (sys(NR_write, pts, (i64)want, REC, 0, 0, 0) != REC || readn(ptm, b, REC) || !same(b, want, REC))
		corrupt(tick, "pty: slave to master");

	/* a connection from outside: answered and closed */
	if (sys(NR_poll, (i64)&pfd, 1, 0, 0, 0, 0) == 1) {
		i64 c = sys(NR_accept4, lsk, 0, 0, 0, 0, 0);

		if (c < 0)
			corrupt(tick, "stream: accept");
		sys(NR_read, c, (i64)b, sizeof b, 0, 0, 0);
		char *o = put(b, "pong ");
		o = putnum(o, tick);
		*o++ = '\n';
		sys(NR_write, c, (i64)b, o - b, 0, 0, 0);
		sys(NR_close, c, 0, 0, 0, 0, 0);
	}
}

void _start(void)
{
	static const u64 ts[2] = { 0, 10 * 1000 * 1000 };
	static char cwd[4096], path[4200];
	char rec[REC];
	i64 n;

	logfd = (int)sys(NR_open, (i64) "out-mntfiles.log", 02101 /* O_WRONLY|O_APPEND|O_CREAT */, 0644, 0, 0, 0);
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

	must(sys(NR_mknod, (i64) "scratch/fifo", S_IFIFO | 0600, 0, 0, 0, 0), "mkfifo");
	must(sys(NR_chmod, (i64) "scratch/fifo", 0640, 0, 0, 0, 0), "chmod fifo");
	fifor = (int)sys(NR_open, (i64) "scratch/fifo", O_RDONLY | O_NONBLOCK, 0, 0, 0, 0);
	must(fifor, "open fifo for reading");
	fifow = (int)sys(NR_open, (i64) "scratch/fifo", O_WRONLY, 0, 0, 0, 0);
	must(fifow, "open fifo for writing");
	record(rec, "fifo ", 0);
	must(sys(NR_write, fifow, (i64)rec, REC, 0, 0, 0) == REC ? 0 : -5, "fifo record 0");

	*put(put(path, cwd), "/scratch/stream.sock") = 0;
	must(len(path) < sizeof streamaddr.path ? 0 : -36, "stream.sock: path too long");
	name(&streamaddr, &streamlen, path);
	lsk = (int)sys(NR_socket, AF_UNIX, SOCK_STREAM, 0, 0, 0, 0);
	must(lsk, "socket");
	must(sys(NR_bind, lsk, (i64)&streamaddr, (i64)streamlen, 0, 0, 0), "bind stream.sock");
	must(sys(NR_chmod, (i64) "scratch/stream.sock", 0660, 0, 0, 0, 0), "chmod stream.sock");
	must(sys(NR_listen, lsk, 8, 0, 0, 0, 0), "listen");
	client = (int)sys(NR_socket, AF_UNIX, SOCK_STREAM, 0, 0, 0, 0);
	must(client, "socket");
	must(sys(NR_connect, client, (i64)&streamaddr, (i64)streamlen, 0, 0, 0), "connect to stream.sock");
	server = (int)sys(NR_accept4, lsk, 0, 0, 0, 0, 0);
	must(server, "accept");

	name(&dgramaddr, &dgramlen, "scratch/dgram.sock");
	dsk = (int)sys(NR_socket, AF_UNIX, SOCK_DGRAM, 0, 0, 0, 0);
	must(dsk, "socket");
	must(sys(NR_bind, dsk, (i64)&dgramaddr, (i64)dgramlen, 0, 0, 0), "bind dgram.sock");
	must(sys(NR_chmod, (i64) "scratch/dgram.sock", 0600, 0, 0, 0, 0), "chmod dgram.sock");
	sender = (int)sys(NR_socket, AF_UNIX, SOCK_DGRAM, 0, 0, 0, 0);
	must(sender, "socket");

	struct ktermios tio;
	must(sys(NR_mount, (i64) "devpts", (i64) "/dev/pts", (i64) "devpts", MS_NOSUID | MS_NOEXEC,
		 (i64) "newinstance,ptmxmode=0666,mode=620", 0), "mount devpts");
	ptm = (int)sys(NR_open, (i64) "/dev/ptmx", O_RDWR | O_NOCTTY, 0, 0, 0, 0);
	must(ptm, "open /dev/ptmx");
	must(sys(NR_ioctl, ptm, TIOCGPTN, (i64)&ptn, 0, 0, 0), "TIOCGPTN");
	n = 0;
	must(sys(NR_ioctl, ptm, TIOCSPTLCK, (i64)&n, 0, 0, 0), "unlock the pty");
	*putnum(put(ptspath, "/dev/pts/"), ptn) = 0;
	pts = (int)sys(NR_open, (i64)ptspath, O_RDWR | O_NOCTTY, 0, 0, 0, 0);
	must(pts, "open the pty's slave");
	/* raw: what one end writes the other reads as it was */
	must(sys(NR_ioctl, pts, TCGETS, (i64)&tio, 0, 0, 0), "TCGETS");
	tio.iflag &= ~(0x100u | 0x400u); /* ICRNL, IXON */
	tio.oflag &= ~1u; /* OPOST */
	tio.lflag &= ~(1u | 2u | 8u | 0x8000u); /* ISIG, ICANON, ECHO, IEXTEN */
	tio.cc[6] = 1; /* VMIN */
	tio.cc[5] = 0; /* VTIME */
	must(sys(NR_ioctl, pts, TCSETS, (i64)&tio, 0, 0, 0), "TCSETS");

	for (u64 tick = 1;; tick++) {
		check(tick);
		say("mntfiles ", tick, 0);
		sys(NR_nanosleep, (i64)ts, 0, 0, 0, 0, 0);
	}
}
