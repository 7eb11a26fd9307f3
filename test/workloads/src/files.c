/*
 * files - one process whose fd table holds the kinds of files crest dumps:
 *
 *   fd 3  out.log    O_WRONLY|O_APPEND|O_CREAT, the progress log
 *   fd 4  data.bin   O_RDONLY, at offset 4096 at start
 *   fd 5  dup(4)     the same open file description (one shared offset)
 *   fd 6  memfd "crest-files", O_RDWR, 8 KiB of text, offset 8192,
 *         sealed F_SEAL_SHRINK|F_SEAL_GROW
 *   fd 7  /dev/null  O_WRONLY, put there with dup2()
 *
 * and shared.map, two pages mapped MAP_SHARED twice (read-write and
 * read-only; the fd closed), its second page a pattern: every tick writes
 * the tick count into the first page through the read-write mapping and
 * checks it through the read-only one (one file, both mappings shared),
 * and checks the pattern. The pages belong to the file: a dump must not
 * keep them as the task's memory. The read-only mapping is made writable
 * and read-only again every tick: it maps a file opened read-write.
 *
 * It first writes data.bin: 4096 records of 16 bytes "rec=%08x ..\n"
 * where %08x is the record's own offset, then closes it and reopens it
 * read-only. Every 10 ms it reads one record, through fd 4 and fd 5 in
 * turn (back to 0 at the end of the file), checks it and that the other fd
 * moved with it, preads and checks the whole memfd, checks the memfd's
 * offset and seals, writes a byte to fd 7 and appends
 *   "N fd=F off=O rec=R"
 * to out.log (O the offset after the read, R the record's offset). On any
 * mismatch it appends "CORRUPT ..." and exits 3.
 *
 * build: gcc -static -O2 -o files files.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RECORD 16
#define RECORDS 4096
#define DATA_SIZE (RECORD * RECORDS)
#define MEMFD_SIZE 8192
#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW)

static int logfd = -1;
static unsigned long tick;

static void say(const char *fmt, ...)
{
	char b[200];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof b, fmt, ap);
	va_end(ap);
	if (write(logfd, b, n) != n)
		exit(4);
}

static void corrupt(const char *what, long got, long want)
{
	say("CORRUPT tick=%lu %s %ld, want %ld\n", tick, what, got, want);
	exit(3);
}

static void record(char *r, unsigned long off)
{
	char b[RECORD + 1];
	snprintf(b, sizeof b, "rec=%08lx ..\n", off);
	memcpy(r, b, RECORD);
}

static char memfd_text(unsigned i)
{
	static const char text[] = "memfd of crest's files workload\n"; /* 32 bytes */
	return text[i % 32];
}

static int write_data(void)
{
	static char data[DATA_SIZE];
	for (unsigned long off = 0; off < DATA_SIZE; off += RECORD)
		record(data + off, off);
	int fd = open("data.bin", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return -1;
	int ok = write(fd, data, DATA_SIZE) == DATA_SIZE;
	return close(fd) == 0 && ok ? 0 : -1;
}

int main(void)
{
	if (write_data())
		return 2;
	logfd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	int data = open("data.bin", O_RDONLY);
	if (logfd != 3 || data != 4 || lseek(data, 4096, SEEK_SET) != 4096)
		return 2;
	int twin = dup(data);
	int null = open("/dev/null", O_WRONLY);
	if (twin != 5 || null != 6 || dup2(null, 7) != 7 || close(null))
		return 2;
	int mfd = memfd_create("crest-files", MFD_ALLOW_SEALING);
	if (mfd != 6)
		return 2;
	char text[MEMFD_SIZE];
	for (unsigned i = 0; i < MEMFD_SIZE; i++)
		text[i] = memfd_text(i);
	if (write(mfd, text, MEMFD_SIZE) != MEMFD_SIZE || fcntl(mfd, F_ADD_SEALS, SEALS))
		return 2;

	int sfd = open("shared.map", O_RDWR | O_CREAT | O_TRUNC, 0644);
	static unsigned char page[4096];
	for (unsigned i = 0; i < sizeof page; i++)
		page[i] = (unsigned char)(i * 7);
	if (sfd != 8 || ftruncate(sfd, 4096) || pwrite(sfd, page, sizeof page, 4096) != sizeof page)
		return 2;
	volatile unsigned long *rw = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	const volatile unsigned char *ro = mmap(NULL, 8192, PROT_READ, MAP_SHARED, sfd, 0);
	if (rw == MAP_FAILED || ro == MAP_FAILED || close(sfd))
		return 2;

	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (tick = 1;; tick++) {
		int fd = tick % 2 ? data : twin, other = tick % 2 ? twin : data;
		off_t at = lseek(fd, 0, SEEK_CUR);
		if (at == DATA_SIZE)
			at = lseek(fd, 0, SEEK_SET);
		char got[RECORD], want[RECORD];
		ssize_t n = read(fd, got, RECORD);
		if (n != RECORD)
			corrupt("read", n, RECORD);
		record(want, at);
		if (memcmp(got, want, RECORD))
			corrupt("record at", at, at);
		off_t off = lseek(other, 0, SEEK_CUR);
		if (off != at + RECORD)
			corrupt("offset of the other fd", off, at + RECORD);

		static char m[MEMFD_SIZE + 1];
		if ((n = pread(mfd, m, sizeof m, 0)) != MEMFD_SIZE)
			corrupt("memfd pread", n, MEMFD_SIZE);
		for (unsigned i = 0; i < MEMFD_SIZE; i++)
			if (m[i] != memfd_text(i))
				corrupt("memfd byte", i, i);
		if ((off = lseek(mfd, 0, SEEK_CUR)) != MEMFD_SIZE)
			corrupt("memfd offset", off, MEMFD_SIZE);
		int seals = fcntl(mfd, F_GET_SEALS);
		if (seals != SEALS)
			corrupt("memfd seals", seals, SEALS);
		if (write(7, "x", 1) != 1)
			corrupt("write to fd 7", -1, 1);
		*rw = tick;
		if (*(const volatile unsigned long *)ro != tick)
			corrupt("shared.map through the other mapping", (long)*(const volatile unsigned long *)ro, (long)tick);
		for (unsigned i = 0; i < 4096; i++)
			if (ro[4096 + i] != (unsigned char)(i * 7))
				corrupt("shared.map pattern byte", i, i);
		if (mprotect((void *)ro, 8192, PROT_READ | PROT_WRITE) || mprotect((void *)ro, 8192, PROT_READ))
			corrupt("shared.map read-only mapping made writable", -1, 0);

		say("%lu fd=%d off=%ld rec=%ld\n", tick, fd, (long)(at + RECORD), (long)at);
		nanosleep(&ts, NULL);
	}
}
