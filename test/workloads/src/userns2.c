/*
 * userns2 - a pid namespace init and its child in a user namespace of
 * their own (launch -U: root inside is not host root), in crest's mount
 * namespace, holding files deleted while open (CRIU's ghost files) that
 * ids inside made:
 *
 *   the init (uids 1000 0 1001, gids 500 501 502): g/init, made as root
 *   inside (its fsuid 0, fsgid 501), mode 0640;
 *   the child (uids 2000 2001 2002, gids 510 511 512): g/child, made as
 *   2001:511, mode 0604, in g, a directory the init gave it (2001:511).
 *
 * When the directory holds a file "unmapped" (made by its caller: owned by
 * an id the namespace does not map), the init opens it and unlinks it too.
 *
 * Each writes its file's name into it, unlinks it, and becomes the owner
 * for SIGIO of its fd (F_SETOWN: as its uid and euid); the child also
 * binds a datagram socket to g/sock (its file 2001:511) and opens a pty,
 * both ends (its slave 2001:511), where there is a /dev/ptmx. Every 10 ms
 * each checks its file's owner, mode, link count (0) and content, and its
 * owner for SIGIO (F_GETOWN, F_GETOWNER_UIDS: ids inside), the child the
 * owner of g/sock and of its pty's slave, the init that "unmapped" still
 * shows the overflow id
 * and has no link, and appends "N" to out-userns2.log (the init) or
 * out-child.log, or a CORRUPT line saying what differs, and exits 3.
 *
 * build: gcc -static -O2 -o userns2 userns2.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include "workload.h"

#ifndef F_GETOWNER_UIDS
#define F_GETOWNER_UIDS 17
#endif

struct role {
	const char *name, *file;
	gid_t groups[3];
	int nr_groups;
	gid_t gid[3];
	uid_t uid[3];
	uid_t owner; /* the file's, as it is made */
	gid_t group;
	mode_t mode;
};

static const struct role init_role = { "userns2", "g/init", { 3, 501, 550 }, 3, { 500, 501, 502 }, { 1000, 0, 1001 },
				       0, 501, 0640 };
static const struct role child_role = { "child", "g/child", { 2 }, 1, { 510, 511, 512 }, { 2000, 2001, 2002 },
					2001, 511, 0604 };

#define OVERFLOW_ID 65534 /* what an unmapped id reads as */

static int unmapped = -1; /* the init's fd of "unmapped", if there was one */
static int slave = -1;	  /* the child's pty slave */
static struct stat slave_st; /* as it was opened */

static void run(const struct role *r)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[512], buf[32];
	uid_t uids[2];
	struct stat st;
	unsigned long n;
	int log, fd, owner;
	size_t len = strlen(r->file);

	log = open_log(r->name);
	if (setgroups(r->nr_groups, r->groups) || setresgid(r->gid[0], r->gid[1], r->gid[2]) ||
	    setresuid(r->uid[0], r->uid[1], r->uid[2]))
		_exit(5);
	fd = open(r->file, O_RDWR | O_CREAT | O_EXCL, r->mode);
	if (fd < 0 || fchmod(fd, r->mode) || write(fd, r->file, len) != (ssize_t)len || unlink(r->file) ||
	    fcntl(fd, F_SETOWN, getpid()))
		_exit(6);
	if (r == &child_role) {
		struct sockaddr_un a = { AF_UNIX, "g/sock" };
		int sk = socket(AF_UNIX, SOCK_DGRAM, 0);

		int master = posix_openpt(O_RDWR | O_NOCTTY);

		if (sk < 0 || bind(sk, (struct sockaddr *)&a, sizeof a) || (master < 0 && errno != ENOENT))
			_exit(6);
		if (master >= 0) { /* none in a mount namespace of its own (launch -U -m has no /dev) */
			if (unlockpt(master))
				_exit(6);
			slave = open(ptsname(master), O_RDWR | O_NOCTTY);
			if (slave < 0 || fstat(slave, &slave_st) || slave_st.st_uid != r->owner ||
			    slave_st.st_gid != r->group)
				_exit(6);
		}
	}
	for (n = 1;; n++) {
		owner = fcntl(fd, F_GETOWN);
		if (fstat(fd, &st) || st.st_uid != r->owner || st.st_gid != r->group || (st.st_mode & 07777) != r->mode ||
		    st.st_nlink != 0 || pread(fd, buf, len, 0) != (ssize_t)len || memcmp(buf, r->file, len)) {
			snprintf(line, sizeof line, "CORRUPT %s %lu: %s: owner %u:%u mode %o links %lu, want %u:%u %o, none (or its data)\n",
				 r->name, n, r->file, st.st_uid, st.st_gid, st.st_mode & 07777, (unsigned long)st.st_nlink,
				 r->owner, r->group, r->mode);
			say(log, line);
			_exit(3);
		}
		if (owner != getpid() || fcntl(fd, F_GETOWNER_UIDS, uids) || uids[0] != r->uid[0] || uids[1] != r->uid[1]) {
			snprintf(line, sizeof line, "CORRUPT %s %lu: owner for SIGIO %d uids %u %u, want %d uids %u %u\n",
				 r->name, n, owner, uids[0], uids[1], getpid(), r->uid[0], r->uid[1]);
			say(log, line);
			_exit(3);
		}
		if (r == &child_role && (lstat("g/sock", &st) || !S_ISSOCK(st.st_mode) || st.st_uid != r->owner ||
					 st.st_gid != r->group)) {
			snprintf(line, sizeof line, "CORRUPT %s %lu: g/sock: owner %u:%u mode %o, want a socket of %u:%u\n",
				 r->name, n, st.st_uid, st.st_gid, st.st_mode, r->owner, r->group);
			say(log, line);
			_exit(3);
		}
		if (slave >= 0 && (fstat(slave, &st) || st.st_uid != slave_st.st_uid || st.st_gid != slave_st.st_gid ||
				   st.st_mode != slave_st.st_mode)) {
			snprintf(line, sizeof line, "CORRUPT %s %lu: pty slave: owner %u:%u mode %o, want %u:%u %o\n", r->name,
				 n, st.st_uid, st.st_gid, st.st_mode, slave_st.st_uid, slave_st.st_gid, slave_st.st_mode);
			say(log, line);
			_exit(3);
		}
		if (unmapped >= 0 && (fstat(unmapped, &st) || st.st_uid != OVERFLOW_ID || st.st_gid != OVERFLOW_ID ||
				      st.st_nlink != 0)) {
			snprintf(line, sizeof line, "CORRUPT %s %lu: unmapped: owner %u:%u links %lu, want %u:%u, none\n",
				 r->name, n, st.st_uid, st.st_gid, (unsigned long)st.st_nlink, OVERFLOW_ID, OVERFLOW_ID);
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
	pid_t pid;

	/* root inside: the directory is its own (launch.c) */
	if (mkdir("g", 0755) || chown("g", child_role.owner, child_role.group))
		return 7;
	pid = fork();
	if (pid < 0)
		return 7;
	if (pid == 0)
		run(&child_role);
	unmapped = open("unmapped", O_RDONLY);
	if (unmapped >= 0 && unlink("unmapped"))
		return 7;
	run(&init_role);
	return 0;
}
