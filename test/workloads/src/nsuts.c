/*
 * nsuts - a pid namespace init in UTS and IPC namespaces of its own
 * (launch -n), with a hostname, a domain name, IPC sysctls and SysV IPC
 * objects that a checkpoint must carry:
 *
 *   hostname "crest-nsuts", domain name "nsuts.crest";
 *   kernel/sem, msgmax, msgmnb, msgmni, shmmax, shmall, shmmni and the
 *   fs/mqueue limits set to values that are not the defaults;
 *   shared memory segment 7 (key NSU1, 3 pages and 100 bytes, pages 0,
 *   2 and the tail written, page 1 never touched), mode 0640, owner
 *   1000:1001, and a private one (IPC_PRIVATE, 2 pages, page 0 written);
 *   semaphore set 3 (key NSU2, values 1 2 3 40 500), mode 0660, owner
 *   1002:1003;
 *   message queue 5 (key NSU3, mode 0620, owner 1004:1005) holding five
 *   messages: types 1 2 1 3 4, the fourth 300 bytes, the last empty.
 *
 * Segment 7 stays attached the whole time, twice: read-write (its third
 * page then made read-only with mprotect, so that the attachment is three
 * mappings) and read-only, each where the kernel put it; a checkpoint
 * must bring both back at their addresses.
 *
 * Every 10 ms it checks all of it (the ids, keys, modes, owners and
 * sizes, the semaphore values, the messages in order through MSG_COPY,
 * the sysctls, the names, and segment 7's written bytes through both
 * mappings), and appends "nsuts N" to out-nsuts.log, or a CORRUPT line
 * saying what differs, and exits 3. Page 1 of segment 7 is left out of
 * the tick's check (reading it would give the segment that page), and so
 * is the private segment, which stays detached: they are checked when a
 * file "check-shm" appears: it attaches both segments read-only,
 * compares, detaches, appends "shm ok N" or CORRUPT to out-shm.log and
 * removes the file. When a file "write-shm" appears it writes byte
 * POKE_OFF of segment 7 through its read-write mapping (what every check
 * expects from then on), appends "shm written N" to out-shm.log and
 * removes the file.
 *
 * build: gcc -static -O2 -o nsuts nsuts.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <mqueue.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/utsname.h>
#include <time.h>
#include "workload.h"

#define HOST "crest-nsuts"
#define DOMAIN "nsuts.crest"
#define PAGE 4096
#define SHM_A_SIZE (3 * PAGE + 100)
#define SHM_B_SIZE (2 * PAGE)
#define KEY(s) ((key_t)((s)[0] << 24 | (s)[1] << 16 | (s)[2] << 8 | (s)[3]))

static const struct {
	const char *path, *value;
} sysctls[] = {
	{ "/proc/sys/kernel/sem", "300\t40000\t64\t200\n" },
	{ "/proc/sys/kernel/msgmax", "4000\n" },
	{ "/proc/sys/kernel/msgmnb", "20000\n" },
	{ "/proc/sys/kernel/msgmni", "1000\n" },
	{ "/proc/sys/kernel/shmmax", "1073741824\n" },
	{ "/proc/sys/kernel/shmall", "2097152\n" },
	{ "/proc/sys/kernel/shmmni", "2048\n" },
	{ "/proc/sys/fs/mqueue/queues_max", "77\n" },
	{ "/proc/sys/fs/mqueue/msg_max", "12\n" },
	{ "/proc/sys/fs/mqueue/msgsize_max", "9000\n" },
	{ "/proc/sys/fs/mqueue/msg_default", "9\n" },
	{ "/proc/sys/fs/mqueue/msgsize_default", "7000\n" },
};

static const unsigned short semvals[5] = { 1, 2, 3, 40, 500 };

static struct {
	long type;
	int len;
	char text[300];
} msgs[5] = {
	{ 1, 5, "alpha" }, { 2, 5, "bravo" }, { 1, 7, "charlie" }, { 3, 300, "" }, { 4, 0, "" },
};

static int shm_a, shm_b, sem, msq;
/* segment 7 attached read-write and read-only; poked: write-shm was done */
static unsigned char *a_rw;
static const unsigned char *a_ro;
static int poked;

#define POKE_OFF 10
#define POKE_VAL 0x5a
static int log_fd;
static char line[512];
static int in_check, rechecking;
static void check(void);

/*
 * A difference found by check() runs it once more from its start before
 * it is reported: a dump may have frozen a pass halfway, and the line
 * must name the first check in order that fails, whatever the pass the
 * restore resumed.
 */
static __attribute__((noreturn)) void corrupt(const char *what)
{
	char out[600];
	int len = snprintf(out, sizeof out, "CORRUPT %s\n", what);

	if (in_check && !rechecking) {
		rechecking = 1;
		check();
	}
	if (write(log_fd, out, len) != len)
		_exit(4);
	_exit(3);
}

static void put(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);

	if (fd < 0 || write(fd, value, strlen(value)) != (ssize_t)strlen(value))
		corrupt(path);
	close(fd);
}

static unsigned char pattern(int seg, size_t off)
{
	return (unsigned char)(seg * 37 + off * 7 + off / PAGE);
}

/* written bytes of the segments: A's pages 0 and 2 and its tail, B's page 0 */
static int written(int seg, size_t off)
{
	if (seg == 0)
		return off < PAGE || off >= 2 * PAGE;
	return off < PAGE;
}

/* what byte off of segment seg must hold */
static unsigned char want_byte(int seg, size_t off)
{
	if (seg == 0 && poked && off == POKE_OFF)
		return POKE_VAL;
	return written(seg, off) ? pattern(seg, off) : 0;
}

static int shm_perm(int id, struct ipc_perm *p, int cmd)
{
	struct shmid_ds ds;

	if (shmctl(id, IPC_STAT, &ds))
		return -1;
	if (cmd == IPC_SET) {
		ds.shm_perm.uid = p->uid, ds.shm_perm.gid = p->gid, ds.shm_perm.mode = p->mode;
		return shmctl(id, IPC_SET, &ds);
	}
	*p = ds.shm_perm;
	return 0;
}

static int sem_perm(int id, struct ipc_perm *p, int cmd)
{
	struct semid_ds ds;

	if (semctl(id, 0, IPC_STAT, &ds))
		return -1;
	if (cmd == IPC_SET) {
		ds.sem_perm.uid = p->uid, ds.sem_perm.gid = p->gid, ds.sem_perm.mode = p->mode;
		return semctl(id, 0, IPC_SET, &ds);
	}
	*p = ds.sem_perm;
	return 0;
}

static int msg_perm(int id, struct ipc_perm *p, int cmd)
{
	struct msqid_ds ds;

	if (msgctl(id, IPC_STAT, &ds))
		return -1;
	if (cmd == IPC_SET) {
		ds.msg_perm.uid = p->uid, ds.msg_perm.gid = p->gid, ds.msg_perm.mode = p->mode;
		return msgctl(id, IPC_SET, &ds);
	}
	*p = ds.msg_perm;
	return 0;
}

static void set_perm(int id, int (*ctl)(int, struct ipc_perm *, int), uid_t uid, gid_t gid, mode_t mode, const char *what)
{
	struct ipc_perm p = { .uid = uid, .gid = gid, .mode = mode };

	if (ctl(id, &p, IPC_SET))
		corrupt(what);
}

static void check_perm(int id, int (*ctl)(int, struct ipc_perm *, int), key_t key, uid_t uid, gid_t gid, mode_t mode,
		       const char *what)
{
	struct ipc_perm p;

	if (ctl(id, &p, IPC_STAT)) {
		snprintf(line, sizeof line, "%s %d: gone", what, id);
		corrupt(line);
	}
	if (p.__key != key || p.uid != uid || p.gid != gid || (p.mode & 0777) != mode) {
		char buf[200];

		snprintf(buf, sizeof buf, "%s %d: key %#x uid %u gid %u mode %o, want key %#x uid %u gid %u mode %o", what,
			 id, p.__key, p.uid, p.gid, p.mode & 0777, key, uid, gid, mode);
		corrupt(buf);
	}
}

static void next_id(const char *name, int id)
{
	char path[64], value[16];

	snprintf(path, sizeof path, "/proc/sys/kernel/%s", name);
	snprintf(value, sizeof value, "%d", id);
	put(path, value);
}

static void setup(void)
{
	unsigned char *p;

	if (sethostname(HOST, strlen(HOST)) || setdomainname(DOMAIN, strlen(DOMAIN)))
		corrupt("sethostname");
	for (unsigned i = 0; i < sizeof sysctls / sizeof sysctls[0]; i++)
		put(sysctls[i].path, sysctls[i].value);

	next_id("shm_next_id", 7);
	shm_a = shmget(KEY("NSU1"), SHM_A_SIZE, IPC_CREAT | IPC_EXCL | 0600);
	if (shm_a != 7)
		corrupt("shmget NSU1");
	shm_b = shmget(IPC_PRIVATE, SHM_B_SIZE, IPC_CREAT | 0600);
	if (shm_b < 0)
		corrupt("shmget private");
	a_rw = shmat(shm_a, NULL, 0);
	if (a_rw == (void *)-1)
		corrupt("shmat NSU1");
	for (size_t off = 0; off < SHM_A_SIZE; off++)
		if (written(0, off))
			a_rw[off] = pattern(0, off);
	if (mprotect(a_rw + 2 * PAGE, PAGE, PROT_READ))
		corrupt("mprotect NSU1");
	a_ro = shmat(shm_a, NULL, SHM_RDONLY);
	if (a_ro == (void *)-1)
		corrupt("shmat NSU1 read-only");
	p = shmat(shm_b, NULL, 0);
	if (p == (void *)-1)
		corrupt("shmat private");
	for (size_t off = 0; off < SHM_B_SIZE; off++)
		if (written(1, off))
			p[off] = pattern(1, off);
	shmdt(p);
	set_perm(shm_a, shm_perm, 1000, 1001, 0640, "shm NSU1");

	next_id("sem_next_id", 3);
	sem = semget(KEY("NSU2"), 5, IPC_CREAT | IPC_EXCL | 0600);
	if (sem != 3)
		corrupt("semget");
	if (semctl(sem, 0, SETALL, semvals))
		corrupt("semctl SETALL");
	set_perm(sem, sem_perm, 1002, 1003, 0660, "sem NSU2");

	next_id("msg_next_id", 5);
	msq = msgget(KEY("NSU3"), IPC_CREAT | IPC_EXCL | 0600);
	if (msq != 5)
		corrupt("msgget");
	for (int i = 0; i < 300; i++)
		msgs[3].text[i] = (char)(i * 13 + 5);
	for (int i = 0; i < 5; i++) {
		struct {
			long type;
			char text[300];
		} m;

		m.type = msgs[i].type;
		memcpy(m.text, msgs[i].text, msgs[i].len);
		if (msgsnd(msq, &m, msgs[i].len, IPC_NOWAIT))
			corrupt("msgsnd");
	}
	set_perm(msq, msg_perm, 1004, 1005, 0620, "msg NSU3");
}

static void check(void)
{
	struct utsname u;
	unsigned short vals[5];
	struct shmid_ds sds;
	struct msqid_ds mds;

	if (uname(&u) || strcmp(u.nodename, HOST) || strcmp(u.domainname, DOMAIN)) {
		snprintf(line, sizeof line, "names: host %.64s domain %.64s", u.nodename, u.domainname);
		corrupt(line);
	}
	for (unsigned i = 0; i < sizeof sysctls / sizeof sysctls[0]; i++) {
		int ok = file_holds(sysctls[i].path, sysctls[i].value, line, sizeof line);

		/*
		 * Kernel 6.18 sometimes shows, under /proc/sys, the IPC
		 * sysctls of another IPC namespace that is being made or
		 * looked up at the same moment (IPC_INFO below then says the
		 * value is right): look again a few times before calling it.
		 */
		for (int again = 0; !ok && again < 5; again++) {
			const struct timespec pause = { 0, 20 * 1000 * 1000 };

			nanosleep(&pause, NULL);
			ok = file_holds(sysctls[i].path, sysctls[i].value, line, sizeof line);
		}
		if (!ok) {
			/*
			 * what the namespace itself says, through IPC_INFO,
			 * beside what /proc/sys showed: tells a value that is
			 * not there from a /proc/sys that shows another's
			 */
			struct msginfo mi;
			struct shminfo si;
			size_t n = strlen(line);

			struct mq_attr ma = { 0 };
			mqd_t q = mq_open("/crest-nsuts-probe", O_RDONLY | O_CREAT | O_EXCL, 0600, NULL);

			if (q != (mqd_t)-1) {
				mq_getattr(q, &ma);
				mq_close(q);
				mq_unlink("/crest-nsuts-probe");
			}
			if (msgctl(0, IPC_INFO, (struct msqid_ds *)&mi) >= 0 && shmctl(0, IPC_INFO, (struct shmid_ds *)&si) >= 0)
				snprintf(line + n, sizeof line - n,
					 " (IPC_INFO: msgmax %d msgmnb %d msgmni %d shmmax %lu shmmni %lu; a new mqueue gets %ld x %ld)",
					 mi.msgmax, mi.msgmnb, mi.msgmni, (unsigned long)si.shmmax, (unsigned long)si.shmmni,
					 (long)ma.mq_maxmsg, (long)ma.mq_msgsize);
			corrupt(line);
		}
	}

	if (shmget(KEY("NSU1"), 0, 0) != shm_a || semget(KEY("NSU2"), 0, 0) != sem || msgget(KEY("NSU3"), 0) != msq)
		corrupt("ids of the keys");
	check_perm(shm_a, shm_perm, KEY("NSU1"), 1000, 1001, 0640, "shm");
	check_perm(shm_b, shm_perm, IPC_PRIVATE, 0, 0, 0600, "shm");
	check_perm(sem, sem_perm, KEY("NSU2"), 1002, 1003, 0660, "sem");
	check_perm(msq, msg_perm, KEY("NSU3"), 1004, 1005, 0620, "msg");
	if (shmctl(shm_a, IPC_STAT, &sds) || sds.shm_segsz != SHM_A_SIZE || shmctl(shm_b, IPC_STAT, &sds) ||
	    sds.shm_segsz != SHM_B_SIZE)
		corrupt("shm sizes");

	if (semctl(sem, 0, GETALL, vals) || memcmp(vals, semvals, sizeof vals)) {
		snprintf(line, sizeof line, "semaphores %u %u %u %u %u", vals[0], vals[1], vals[2], vals[3], vals[4]);
		corrupt(line);
	}

	if (msgctl(msq, IPC_STAT, &mds) || mds.msg_qnum != 5)
		corrupt("message count");
	if (mds.msg_qbytes != 20000)
		corrupt("message queue bytes");
	for (int i = 0; i < 5; i++) {
		struct {
			long type;
			char text[4000];
		} m;
		ssize_t n = msgrcv(msq, &m, sizeof m.text, i, IPC_NOWAIT | MSG_COPY);

		if (n != msgs[i].len || m.type != msgs[i].type || memcmp(m.text, msgs[i].text, n)) {
			snprintf(line, sizeof line, "message %d: type %ld, %zd bytes", i, m.type, n);
			corrupt(line);
		}
	}
}

/* segment 7's bytes but page 1 through both its mappings */
static void check_mapped(void)
{
	const unsigned char *maps[2] = { a_rw, a_ro };
	const char *names[2] = { "read-write", "read-only" };

	for (int m = 0; m < 2; m++)
		for (size_t off = 0; off < SHM_A_SIZE; off++) {
			if (off == PAGE)
				off = 2 * PAGE;
			if (maps[m][off] != want_byte(0, off)) {
				snprintf(line, sizeof line, "shm %d at %zu: %#x, want %#x (%s mapping at %p)", shm_a, off,
					 maps[m][off], want_byte(0, off), names[m], (void *)maps[m]);
				corrupt(line);
			}
		}
}

static void write_shm(unsigned long n)
{
	int fd = open_log("shm");

	a_rw[POKE_OFF] = POKE_VAL;
	poked = 1;
	snprintf(line, sizeof line, "shm written %lu\n", n);
	say(fd, line);
	close(fd);
	unlink("write-shm");
}

static void check_shm(unsigned long n)
{
	const int ids[2] = { shm_a, shm_b };
	const size_t sizes[2] = { SHM_A_SIZE, SHM_B_SIZE };
	int fd = open_log("shm");

	for (int seg = 0; seg < 2; seg++) {
		const unsigned char *p = shmat(ids[seg], NULL, SHM_RDONLY);

		if (p == (void *)-1)
			corrupt("shmat");
		for (size_t off = 0; off < sizes[seg]; off++) {
			unsigned char want = want_byte(seg, off);

			if (p[off] != want) {
				snprintf(line, sizeof line, "CORRUPT shm %d at %zu: %#x, want %#x\n", ids[seg], off,
					       p[off], want);
				say(fd, line);
				_exit(3);
			}
		}
		shmdt(p);
	}
	snprintf(line, sizeof line, "shm ok %lu\n", n);
	say(fd, line);
	close(fd);
	unlink("check-shm");
}

int main(void)
{
	static const struct timespec tick = { 0, 10 * 1000 * 1000 };

	log_fd = open_log("nsuts");
	setup();
	for (unsigned long n = 1;; n++) {
		in_check = 1;
		check();
		in_check = 0;
		check_mapped();
		if (access("write-shm", F_OK) == 0)
			write_shm(n);
		if (access("check-shm", F_OK) == 0)
			check_shm(n);
		snprintf(line, sizeof line, "nsuts %lu\n", n);
		say(log_fd, line);
		nanosleep(&tick, NULL);
	}
}
