/*
 * ghost - a pid namespace init and its child holding files that were
 * deleted while open or mapped (CRIU's ghost files):
 *
 *   shm      one page of /dev/shm/crest-ghost.XXXXXX, mapped MAP_SHARED
 *            before fork() by both, its fd closed and the file unlinked,
 *            as sem_open() and Python's multiprocessing leave theirs: a
 *            process-shared semaphore and the counters it guards (the
 *            parent's ticks, the child's, their sum);
 *   fd 9     the same file (parent), opened a second time before the
 *            unlink: the parent writes its tick into the page through it
 *            and reads it back through the mapping;
 *   private  private.bin, two pages mapped MAP_PRIVATE read-write before
 *            fork(), fd closed, unlinked: the first page written by the
 *            task (its own copy), the second the file's pattern;
 *   fd 4     scratch.bin (parent), O_RDWR, mode 0640, unlinked: 4 KiB of
 *            records, a hole to 64 KiB, 4 KiB of records, a hole to the
 *            end at 88 KiB;
 *   fd 5     a file made with O_TMPFILE in the working directory (it
 *            never had a name), 100 bytes of text, read a byte a tick.
 *
 * Every 10 ms each task takes the semaphore (2 s at most), checks that its
 * own counter is what it left, that the other's never went back and moves
 * (STALL ticks without a change: the page is no longer shared), that the
 * sum is the two counters', counts its tick and lets go; checks its private
 * mapping. The parent also writes its tick through fd 9 and checks it in
 * the mapping (one file, whichever way it is reached), reads a record of
 * fd 4 at its offset (the offset goes on from tick to tick), checks the
 * whole file (records, zeros in the holes, the holes still holes, the
 * counter it writes at 4088 every tick), that it is still deleted (no
 * link, no scratch.bin) with its mode and size, and reads a byte of fd 5
 * at its offset, which must still have no link.
 * Each appends "parent N" to out-parent.log or "child N" to out-child.log;
 * on any difference it appends "CORRUPT ..." and exits 3. The parent also
 * logs a child that ended.
 *
 * build: gcc -static -O2 -pthread -o ghost ghost.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "workload.h"

#define PAGE 4096
#define RECORD 16
#define SCRATCH_SIZE (88 * 1024)
#define DATA2 (64 * 1024) /* the second data block */
#define COUNTER_AT (PAGE - 8)
#define TMPFILE_SIZE 100
#define STALL 100
#define SHM_FD 9

struct shared {
	sem_t sem;
	uint64_t parent, child, total;
	uint64_t via_fd; /* written through fd 9 */
};

static volatile struct shared *shm;
static volatile unsigned char *priv;
static int logfd;
static const char *role;
static uint64_t tick;

static void corrupt(const char *fmt, ...)
{
	char b[200];
	int n = snprintf(b, sizeof b, "CORRUPT %s tick=%llu ", role, (unsigned long long)tick);
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(b + n, sizeof b - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof b - 2)
		n = sizeof b - 2;
	b[n++] = '\n';
	b[n] = 0;
	say(logfd, b);
	_exit(3);
}

static unsigned char file_byte(unsigned page, unsigned i) { return (unsigned char)(i * 13 + page); }

static void record(char *r, unsigned long off)
{
	char b[RECORD + 1];
	snprintf(b, sizeof b, "rec=%08lx ..\n", off);
	memcpy(r, b, RECORD);
}

static char tmp_text(unsigned i) { return "ghost tmpfile of crest, never named\n"[i % 36]; }

/* scratch_byte is what byte off of scratch.bin holds, the counter aside */
static char scratch_byte(unsigned long off)
{
	char r[RECORD];

	if (off < PAGE || (off >= DATA2 && off < DATA2 + PAGE)) {
		record(r, off - off % RECORD);
		return r[off % RECORD];
	}
	return 0;
}

static int make_scratch(void)
{
	static char block[PAGE];
	int fd = open("scratch.bin", O_RDWR | O_CREAT | O_EXCL, 0600);

	if (fd < 0)
		return -1;
	for (unsigned long base = 0; base <= DATA2; base += DATA2) {
		for (unsigned i = 0; i < PAGE; i += RECORD)
			record(block + i, base + i);
		if (pwrite(fd, block, PAGE, base) != PAGE)
			return -1;
	}
	if (ftruncate(fd, SCRATCH_SIZE) || fchmod(fd, 0640) || unlink("scratch.bin"))
		return -1;
	uint64_t zero = 0;
	if (pwrite(fd, &zero, 8, COUNTER_AT) != 8 || lseek(fd, 40, SEEK_SET) != 40)
		return -1;
	return fd;
}

/* check_private checks the private mapping: the task's page and the file's */
static void check_private(uint64_t mark)
{
	const volatile uint64_t *w = (const volatile uint64_t *)priv;

	if (w[0] != mark)
		corrupt("private page word %llu, want %llu", (unsigned long long)w[0], (unsigned long long)mark);
	for (unsigned i = 8; i < PAGE; i++)
		if (priv[i] != 0xa5)
			corrupt("private page byte %u: %#x, want 0xa5", i, priv[i]);
	for (unsigned i = 0; i < PAGE; i++)
		if (priv[PAGE + i] != file_byte(1, i))
			corrupt("private.bin byte %u: %#x, want %#x", PAGE + i, priv[PAGE + i], file_byte(1, i));
}

/* shared_tick does a tick's share of the shared page under the semaphore */
static void shared_tick(uint64_t *last_other, uint64_t *since)
{
	volatile uint64_t *mine = role[0] == 'p' ? &shm->parent : &shm->child;
	volatile uint64_t *other = role[0] == 'p' ? &shm->child : &shm->parent;
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 2;
	while (sem_timedwait((sem_t *)&shm->sem, &until))
		if (errno != EINTR)
			corrupt("sem_timedwait: errno %d", errno);
	if (*mine != tick - 1)
		corrupt("own counter %llu, want %llu", (unsigned long long)*mine, (unsigned long long)(tick - 1));
	uint64_t o = *other;
	if (o < *last_other)
		corrupt("the other's counter went back from %llu to %llu", (unsigned long long)*last_other,
			(unsigned long long)o);
	if (o != *last_other)
		*since = tick;
	else if (tick - *since > STALL)
		corrupt("the other's counter stuck at %llu since tick %llu", (unsigned long long)o,
			(unsigned long long)*since);
	*last_other = o;
	if (shm->total != shm->parent + shm->child)
		corrupt("sum %llu, the counters %llu and %llu", (unsigned long long)shm->total,
			(unsigned long long)shm->parent, (unsigned long long)shm->child);
	*mine = tick;
	shm->total++;
	if (sem_post((sem_t *)&shm->sem))
		corrupt("sem_post: errno %d", errno);
}

/* check_via_fd writes the tick into the page through fd 9 and reads it in the mapping */
static void check_via_fd(void)
{
	uint64_t t = tick;

	if (shm->via_fd != tick - 1)
		corrupt("the word written through fd %d is %llu, want %llu", SHM_FD, (unsigned long long)shm->via_fd,
			(unsigned long long)(tick - 1));
	if (pwrite(SHM_FD, &t, 8, offsetof(struct shared, via_fd)) != 8)
		corrupt("pwrite to fd %d: errno %d", SHM_FD, errno);
	if (shm->via_fd != tick)
		corrupt("fd %d wrote %llu, the mapping shows %llu", SHM_FD, (unsigned long long)tick,
			(unsigned long long)shm->via_fd);
}

static void check_scratch(int fd)
{
	static char buf[SCRATCH_SIZE];
	struct stat st;
	char r[RECORD];

	off_t at = lseek(fd, 0, SEEK_CUR);
	if (at == SCRATCH_SIZE)
		at = lseek(fd, 0, SEEK_SET);
	if (read(fd, r, RECORD) != RECORD)
		corrupt("scratch.bin read at %ld", (long)at);
	for (unsigned i = 0; i < RECORD; i++) {
		unsigned long off = at + i;
		char want = scratch_byte(off);
		if (off >= COUNTER_AT && off < COUNTER_AT + 8)
			continue;
		if (r[i] != want)
			corrupt("scratch.bin byte %lu read at offset %ld: %#x, want %#x", off, (long)at, r[i], want);
	}
	if (lseek(fd, 0, SEEK_CUR) != at + RECORD)
		corrupt("scratch.bin offset %ld after a read at %ld", (long)lseek(fd, 0, SEEK_CUR), (long)at);
	if (pread(fd, buf, SCRATCH_SIZE, 0) != SCRATCH_SIZE)
		corrupt("scratch.bin pread");
	for (unsigned long off = 0; off < SCRATCH_SIZE; off++) {
		if (off >= COUNTER_AT && off < COUNTER_AT + 8)
			continue;
		if (buf[off] != scratch_byte(off))
			corrupt("scratch.bin byte %lu: %#x, want %#x", off, buf[off], scratch_byte(off));
	}
	uint64_t c;
	memcpy(&c, buf + COUNTER_AT, 8);
	if (c != tick - 1)
		corrupt("scratch.bin counter %llu, want %llu", (unsigned long long)c, (unsigned long long)(tick - 1));
	c = tick;
	if (pwrite(fd, &c, 8, COUNTER_AT) != 8)
		corrupt("scratch.bin pwrite");
	off_t h1 = lseek(fd, 0, SEEK_HOLE), d2 = lseek(fd, PAGE, SEEK_DATA), h2 = lseek(fd, DATA2, SEEK_HOLE);
	if (h1 != PAGE || d2 != DATA2 || h2 != DATA2 + PAGE)
		corrupt("scratch.bin holes: hole at %ld, data at %ld, hole at %ld; want %d, %d, %d", (long)h1, (long)d2,
			(long)h2, PAGE, DATA2, DATA2 + PAGE);
	if (lseek(fd, at + RECORD, SEEK_SET) != at + RECORD)
		corrupt("scratch.bin seek back");
	if (fstat(fd, &st) || st.st_nlink != 0 || st.st_size != SCRATCH_SIZE || st.st_mode != (S_IFREG | 0640))
		corrupt("scratch.bin links %ld, size %ld, mode %#o; want 0, %d, %#o", (long)st.st_nlink,
			(long)st.st_size, st.st_mode, SCRATCH_SIZE, S_IFREG | 0640);
	if (access("scratch.bin", F_OK) == 0)
		corrupt("scratch.bin exists again");
}

static void check_tmpfile(int fd)
{
	struct stat st;
	char c;

	off_t at = lseek(fd, 0, SEEK_CUR);
	if (at == TMPFILE_SIZE)
		at = lseek(fd, 0, SEEK_SET);
	if (read(fd, &c, 1) != 1 || c != tmp_text(at))
		corrupt("tmpfile byte at %ld: %#x, want %#x", (long)at, c, tmp_text(at));
	if (fstat(fd, &st) || st.st_nlink != 0 || st.st_size != TMPFILE_SIZE)
		corrupt("tmpfile links %ld, size %ld; want 0, %d", (long)st.st_nlink, (long)st.st_size, TMPFILE_SIZE);
}

int main(void)
{
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	char name[] = "/dev/shm/crest-ghost.XXXXXX";
	static unsigned char page[2 * PAGE];

	int fd = mkstemp(name);
	if (fd < 0 || ftruncate(fd, PAGE))
		return 2;
	shm = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	int again = open(name, O_RDWR);
	if (shm == MAP_FAILED || close(fd) || again < 0 || dup2(again, SHM_FD) != SHM_FD || close(again) || unlink(name) ||
	    sem_init((sem_t *)&shm->sem, 1, 1))
		return 2;

	for (unsigned p = 0; p < 2; p++)
		for (unsigned i = 0; i < PAGE; i++)
			page[p * PAGE + i] = file_byte(p, i);
	fd = open("private.bin", O_RDWR | O_CREAT | O_EXCL, 0644);
	if (fd < 0 || write(fd, page, sizeof page) != sizeof page)
		return 2;
	priv = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (priv == MAP_FAILED || close(fd) || unlink("private.bin"))
		return 2;
	memset((void *)priv, 0xa5, PAGE);
	*(volatile uint64_t *)priv = 0;

	pid_t child = fork();
	if (child < 0)
		return 2;
	role = child == 0 ? "child" : "parent";
	if (child == 0)
		close(SHM_FD);
	logfd = open_log(role);
	int scratch = -1, tmp = -1;
	if (child != 0) {
		scratch = make_scratch();
		tmp = open(".", O_TMPFILE | O_RDWR, 0600);
		char text[TMPFILE_SIZE];
		for (unsigned i = 0; i < TMPFILE_SIZE; i++)
			text[i] = tmp_text(i);
		if (logfd != 3 || scratch != 4 || tmp != 5 || write(tmp, text, TMPFILE_SIZE) != TMPFILE_SIZE ||
		    lseek(tmp, 37, SEEK_SET) != 37)
			return 2;
	}

	uint64_t last_other = 0, since = 0;
	for (tick = 1;; tick++) {
		shared_tick(&last_other, &since);
		check_private(tick - 1);
		*(volatile uint64_t *)priv = tick;
		if (child != 0) {
			check_via_fd();
			check_scratch(scratch);
			check_tmpfile(tmp);
			int st;
			pid_t pid;
			while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
				corrupt("reaped %d status %#x", (int)pid, st);
		}
		char line[64];
		snprintf(line, sizeof line, "%s %llu\n", role, (unsigned long long)tick);
		say(logfd, line);
		nanosleep(&ts, NULL);
	}
}
