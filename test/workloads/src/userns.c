/*
 * userns - a pid namespace init in a user namespace of its own (launch -U,
 * with -n -N -m: UTS, IPC, net and mount namespaces it owns too), whose
 * maps and ids a checkpoint must carry, and objects owned by ids inside:
 *
 *   the maps launch -U writes, several extents each, root inside not host
 *   root (read at the start);
 *   the init: groups 3 501 550, gids 500 501 502 (real, effective, saved),
 *   uids 1000 0 1001: root in the namespace by its effective uid only, so
 *   with its capabilities (CRIU's dump needs them in a pid namespace's
 *   init whose /proc is not of its namespace: it mounts one);
 *   its child: groups 2, gids 510 511 512, uids 2000 2001 2002 and no
 *   capabilities at all.
 *
 * The init, once its ids are set, mounts a tmpfs at tmpfs (uid=1000,
 * gid=500) and fills it with files, a directory and a link owned by
 * several ids (tmpfs_files), makes a SysV segment owned by 1000:500 and
 * a message queue owned by 5:599 (IPC_SET) with a message, sets
 * net/ipv4/ping_group_range to 500 510, and becomes the owner for SIGIO
 * of a pipe (F_SETOWN: as uid 1000 euid 0). The child makes a semaphore
 * set (its own: 2001:511) and a memfd (2001:511), whose owner for SIGIO it
 * becomes (as uid 2000 euid 2001). Before it takes its ids, as root
 * inside (0:0), it makes sockets in its net namespace: a unix socket pair,
 * a TCP socket listening on port 7007, a UDP socket bound to port 7008 and
 * a netlink (route) socket, each owned by the namespace's root (its
 * inode's owner is its maker's fsuid:fsgid; CRIU's restore makes them as
 * that root too, whoever made them).
 *
 * Each opens its log while it is root in the namespace (launch.c gives it
 * the directory), then takes its ids. Every 10 ms each checks its
 * /proc/self/uid_map and gid_map against what it read at the start, its
 * ids and groups against the ones above, its capability sets (capget,
 * prctl) against what it had once its ids were set, that / (host root's,
 * which the namespace does not map) shows the overflow id, and the
 * owners, modes and contents of its objects (IPC_STAT, lstat, fstat,
 * F_GETOWN, F_GETOWNER_UIDS: ids inside; its sockets' fstat: 0:0), and
 * appends "N" to
 * out-userns.log (the init) or out-child.log, or a CORRUPT line saying
 * what differs, and exits 3.
 *
 * build: gcc -static -O2 -o userns userns.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/netlink.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <time.h>
#include "workload.h"

#ifndef F_GETOWNER_UIDS
#define F_GETOWNER_UIDS 17
#endif
#define OVERFLOW_ID 65534 /* what an unmapped id reads as */

struct ids {
	gid_t groups[3];
	int nr_groups;
	gid_t gid[3];
	uid_t uid[3];
};

static const struct ids init_ids = { { 3, 501, 550 }, 3, { 500, 501, 502 }, { 1000, 0, 1001 } };
static const struct ids child_ids = { { 2 }, 1, { 510, 511, 512 }, { 2000, 2001, 2002 } };

static char uid_map[1024], gid_map[1024], caps[512];

static int read_file(const char *path, char *buf, size_t size);

/* the tmpfs's files, its root first, as the init makes them */
static const struct owned {
	const char *name;
	char type; /* d f l */
	uid_t uid;
	gid_t gid;
	mode_t mode;
} tmpfs_files[] = {
	{ "tmpfs", 'd', 1000, 500, 0751 }, /* the mount's options */
	{ "tmpfs/root", 'f', 0, 0, 0600 },
	{ "tmpfs/a", 'f', 1000, 500, 0640 },
	{ "tmpfs/b", 'f', 5, 1, 0644 },
	{ "tmpfs/sub", 'd', 2000, 502, 0750 },
	{ "tmpfs/sub/c", 'f', 2004, 550, 06755 }, /* set-id bits: a chown clears them */
	{ "tmpfs/link", 'l', 1001, 501, 0777 },
};

/* the objects of a task, ids of 0 for none */
static struct objects {
	int shm, msg, sem;	     /* SysV ids */
	int sigio;		     /* an fd of which it is the owner for SIGIO */
	uid_t sigio_uid, sigio_euid; /* its ids when it became the owner */
	int memfd;
	mode_t memfd_mode;
	int socks[5]; /* the root's sockets (the child's): pair, TCP, UDP, netlink */
} objs = { -1, -1, -1, -1, 0, 0, -1, 0, { -1, -1, -1, -1, -1 } };

static const char *const sock_names[5] = { "unix pair 0", "unix pair 1", "TCP listener", "UDP", "netlink" };

/* an IPC object's owner and mode */
static int ipc_check(const char *what, int id, const struct ipc_perm *p, int ok, uid_t uid, gid_t gid, mode_t mode,
		     char *why, size_t size)
{
	if (!ok) {
		snprintf(why, size, "%s %d: IPC_STAT: %s", what, id, strerror(errno));
		return -1;
	}
	if (p->uid != uid || p->gid != gid || (p->mode & 0777) != mode) {
		snprintf(why, size, "%s %d: owner %u:%u mode %o, want %u:%u %o", what, id, p->uid, p->gid, p->mode & 0777,
			 uid, gid, mode);
		return -1;
	}
	return 0;
}

/* what differs in the task's objects, "" when nothing */
static void check_objects(const struct ids *want, char *why, size_t size)
{
	char buf[64];
	uid_t uids[2];
	struct stat st;
	size_t i;

	if (objs.shm >= 0) {
		struct shmid_ds ds;
		int ok = shmctl(objs.shm, IPC_STAT, &ds) == 0;

		if (ipc_check("shm", objs.shm, &ds.shm_perm, ok, 1000, 500, 0640, why, size) ||
		    (ok && ds.shm_segsz != 8192 && snprintf(why, size, "shm %d: %zu bytes", objs.shm, ds.shm_segsz)))
			return;
	}
	if (objs.msg >= 0) {
		struct msqid_ds ds;
		int ok = msgctl(objs.msg, IPC_STAT, &ds) == 0;

		if (ipc_check("msg", objs.msg, &ds.msg_perm, ok, 5, 599, 0620, why, size) ||
		    (ok && ds.msg_qnum != 1 && snprintf(why, size, "msg %d: %lu messages", objs.msg, ds.msg_qnum)))
			return;
	}
	if (objs.sem >= 0) {
		struct semid_ds ds;
		int ok = semctl(objs.sem, 0, IPC_STAT, &ds) == 0;

		if (ipc_check("sem", objs.sem, &ds.sem_perm, ok, want->uid[1], want->gid[1], 0600, why, size))
			return;
	}
	if (objs.sigio >= 0) {
		int owner = fcntl(objs.sigio, F_GETOWN);

		if (owner != getpid() || fcntl(objs.sigio, F_GETOWNER_UIDS, uids) ||
		    uids[0] != objs.sigio_uid || uids[1] != objs.sigio_euid) {
			snprintf(why, size, "fd %d: owner for SIGIO %d uids %u %u, want %d uids %u %u", objs.sigio, owner,
				 uids[0], uids[1], getpid(), objs.sigio_uid, objs.sigio_euid);
			return;
		}
	}
	if (objs.memfd >= 0) {
		if (fstat(objs.memfd, &st) || st.st_uid != want->uid[1] || st.st_gid != want->gid[1] ||
		    st.st_mode != objs.memfd_mode || pread(objs.memfd, buf, 5, 0) != 5 || memcmp(buf, "owned", 5)) {
			snprintf(why, size, "memfd: owner %u:%u mode %o, want %u:%u %o (or its data)", st.st_uid, st.st_gid,
				 st.st_mode, want->uid[1], want->gid[1], objs.memfd_mode);
			return;
		}
	}
	for (i = 0; i < 5; i++) {
		if (objs.socks[i] < 0)
			continue;
		if (fstat(objs.socks[i], &st) || !S_ISSOCK(st.st_mode) || st.st_uid != 0 || st.st_gid != 0) {
			snprintf(why, size, "%s socket (fd %d): owner %u:%u mode %o, want a socket of the namespace's root 0:0",
				 sock_names[i], objs.socks[i], st.st_uid, st.st_gid, st.st_mode);
			return;
		}
	}
	if (objs.shm < 0)
		return; /* the init's from here */
	for (i = 0; i < sizeof tmpfs_files / sizeof tmpfs_files[0]; i++) {
		const struct owned *f = &tmpfs_files[i];

		if (lstat(f->name, &st) || st.st_uid != f->uid || st.st_gid != f->gid ||
		    (f->type != 'l' && (st.st_mode & 07777) != f->mode)) {
			snprintf(why, size, "%s: owner %u:%u mode %o, want %u:%u %o", f->name, st.st_uid, st.st_gid,
				 st.st_mode & 07777, f->uid, f->gid, f->mode);
			return;
		}
	}
	if (read_file("/proc/sys/net/ipv4/ping_group_range", buf, sizeof buf) || strcmp(buf, "500\t510\n")) {
		snprintf(why, size, "ping_group_range [%s], want [500\t510]", buf);
		return;
	}
}

static int read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ssize_t n, len = 0;

	if (fd < 0)
		return -1;
	while (len < (ssize_t)size - 1 && (n = read(fd, buf + len, size - 1 - len)) > 0)
		len += n;
	close(fd);
	buf[len] = 0;
	return 0;
}

/*
 * the capability sets: effective, permitted, inheritable (capget), the
 * bounding set and the ambient one (prctl), by system calls: an fd open
 * on a file of /proc/self at the dump is not what this is about
 */
static int read_caps(char *out, size_t size)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	unsigned long long bnd = 0, amb = 0;
	int c;

	if (syscall(SYS_capget, &hdr, d))
		return -1;
	for (c = 0; c < 64; c++) {
		if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1)
			bnd |= 1ull << c;
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1)
			amb |= 1ull << c;
	}
	snprintf(out, size, "eff %08x%08x prm %08x%08x inh %08x%08x bnd %llx amb %llx", d[1].effective, d[0].effective,
		 d[1].permitted, d[0].permitted, d[1].inheritable, d[0].inheritable, bnd, amb);
	return 0;
}

static void set_ids(const struct ids *want)
{
	if (setgroups(want->nr_groups, want->groups) ||
	    setresgid(want->gid[0], want->gid[1], want->gid[2]) ||
	    setresuid(want->uid[0], want->uid[1], want->uid[2]))
		_exit(5);
}

/* makes an fd of the task's its own for SIGIO, as its ids are now */
static void own_sigio(int fd)
{
	uid_t s;

	if (fcntl(fd, F_SETOWN, getpid()))
		_exit(8);
	getresuid(&objs.sigio_uid, &objs.sigio_euid, &s);
	objs.sigio = fd;
}

/* the init's objects, made with its ids (and its capabilities) */
static void init_objects(void)
{
	struct shmid_ds sds;
	struct msqid_ds mds;
	struct {
		long type;
		char text[8];
	} m = { 1, "message" };
	int p[2], fd;
	size_t i;

	if (mkdir("tmpfs", 0755) || mount("tmpfs", "tmpfs", "tmpfs", 0, "size=1m,mode=751,uid=1000,gid=500"))
		_exit(9);
	for (i = 1; i < sizeof tmpfs_files / sizeof tmpfs_files[0]; i++) {
		const struct owned *f = &tmpfs_files[i];

		if (f->type == 'd')
			fd = mkdir(f->name, 0700);
		else if (f->type == 'l')
			fd = symlink("a", f->name);
		else if ((fd = open(f->name, O_WRONLY | O_CREAT | O_EXCL, 0600)) >= 0)
			fd = write(fd, f->name, strlen(f->name)) == (ssize_t)strlen(f->name) && close(fd) == 0 ? 0 : -1;
		if (fd || lchown(f->name, f->uid, f->gid) || (f->type != 'l' && chmod(f->name, f->mode)))
			_exit(9);
	}
	objs.shm = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
	objs.msg = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
	if (objs.shm < 0 || objs.msg < 0 || shmctl(objs.shm, IPC_STAT, &sds) || msgctl(objs.msg, IPC_STAT, &mds) ||
	    msgsnd(objs.msg, &m, sizeof m.text, 0))
		_exit(10);
	sds.shm_perm.uid = 1000, sds.shm_perm.gid = 500, sds.shm_perm.mode = 0640;
	mds.msg_perm.uid = 5, mds.msg_perm.gid = 599, mds.msg_perm.mode = 0620;
	if (shmctl(objs.shm, IPC_SET, &sds) || msgctl(objs.msg, IPC_SET, &mds))
		_exit(10);
	fd = open("/proc/sys/net/ipv4/ping_group_range", O_WRONLY);
	if (fd < 0 || write(fd, "500 510", 7) != 7 || close(fd))
		_exit(11);
	if (pipe(p))
		_exit(8);
	own_sigio(p[0]);
}

/* the child's sockets, made as root inside before it takes its ids */
static void child_sockets(void)
{
	struct sockaddr_in tcp = { .sin_family = AF_INET, .sin_port = htons(7007) };
	struct sockaddr_in udp = { .sin_family = AF_INET, .sin_port = htons(7008) };
	struct sockaddr_nl nl = { .nl_family = AF_NETLINK };
	int *s = objs.socks;

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s))
		_exit(13);
	s[2] = socket(AF_INET, SOCK_STREAM, 0);
	s[3] = socket(AF_INET, SOCK_DGRAM, 0);
	s[4] = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	if (s[2] < 0 || s[3] < 0 || s[4] < 0 || bind(s[2], (struct sockaddr *)&tcp, sizeof tcp) || listen(s[2], 4) ||
	    bind(s[3], (struct sockaddr *)&udp, sizeof udp) || bind(s[4], (struct sockaddr *)&nl, sizeof nl))
		_exit(13);
}

/* the child's objects, made with its ids */
static void child_objects(void)
{
	struct stat st;

	objs.sem = semget(IPC_PRIVATE, 2, IPC_CREAT | 0600);
	if (objs.sem < 0)
		_exit(10);
	objs.memfd = memfd_create("owned", 0);
	if (objs.memfd < 0 || write(objs.memfd, "owned", 5) != 5 || fstat(objs.memfd, &st))
		_exit(12);
	objs.memfd_mode = st.st_mode;
	own_sigio(objs.memfd);
}

/* what differs from the start, "" when nothing */
static void check(const struct ids *want, char *why, size_t size)
{
	char buf[1024];
	uid_t u[3];
	gid_t g[3], groups[16];
	int n, i;
	struct stat st;

	why[0] = 0;
	if (read_file("/proc/self/uid_map", buf, sizeof buf) || strcmp(buf, uid_map)) {
		snprintf(why, size, "uid_map is now [%s], was [%s]", buf, uid_map);
		return;
	}
	if (read_file("/proc/self/gid_map", buf, sizeof buf) || strcmp(buf, gid_map)) {
		snprintf(why, size, "gid_map is now [%s], was [%s]", buf, gid_map);
		return;
	}
	getresuid(&u[0], &u[1], &u[2]);
	getresgid(&g[0], &g[1], &g[2]);
	if (memcmp(u, want->uid, sizeof u) || memcmp(g, want->gid, sizeof g)) {
		snprintf(why, size, "uids %u %u %u gids %u %u %u, want %u %u %u and %u %u %u", u[0], u[1], u[2],
			 g[0], g[1], g[2], want->uid[0], want->uid[1], want->uid[2], want->gid[0], want->gid[1],
			 want->gid[2]);
		return;
	}
	n = getgroups(16, groups);
	if (n != want->nr_groups) {
		snprintf(why, size, "%d groups, want %d", n, want->nr_groups);
		return;
	}
	for (i = 0; i < n; i++) {
		if (groups[i] != want->groups[i]) {
			snprintf(why, size, "group %d is %u, want %u", i, groups[i], want->groups[i]);
			return;
		}
	}
	if (read_caps(buf, sizeof caps) || strcmp(buf, caps)) {
		snprintf(why, size, "capabilities now [%s], were [%s]", buf, caps);
		return;
	}
	if (stat("/", &st) || st.st_uid != OVERFLOW_ID) {
		snprintf(why, size, "/ owned by %u, want %u (host root is not mapped here)", st.st_uid, OVERFLOW_ID);
		return;
	}
	check_objects(want, why, size);
}

static void tick_loop(const char *role, int log, const struct ids *want)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[4096], why[3000];
	unsigned long n;

	for (n = 1;; n++) {
		check(want, why, sizeof why);
		if (why[0]) {
			snprintf(line, sizeof line, "CORRUPT %s %lu: %s\n", role, n, why);
			say(log, line);
			_exit(3);
		}
		snprintf(line, sizeof line, "%lu\n", n);
		say(log, line);
		nanosleep(&ts, NULL);
	}
}

int main(void)
{
	int log;
	pid_t pid;

	if (read_file("/proc/self/uid_map", uid_map, sizeof uid_map) ||
	    read_file("/proc/self/gid_map", gid_map, sizeof gid_map))
		return 6;
	pid = fork();
	if (pid < 0)
		return 7;
	if (pid == 0) {
		log = open_log("child");
		child_sockets();
		set_ids(&child_ids);
		if (read_caps(caps, sizeof caps))
			_exit(6);
		child_objects();
		tick_loop("child", log, &child_ids);
	}
	log = open_log("userns");
	set_ids(&init_ids);
	if (read_caps(caps, sizeof caps))
		return 6;
	init_objects();
	tick_loop("userns", log, &init_ids);
	return 0;
}
