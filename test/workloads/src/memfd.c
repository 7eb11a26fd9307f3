/*
 * memfd - one static process with a memfd whose size is not a multiple of
 * the page size: MEMFD_SIZE bytes of a pattern, open at fd 3 with its
 * offset at OFFSET, and mapped shared.
 *
 * Every 10 ms: tick++, stored in the memfd's first 8 bytes through the
 * mapping; then the memfd must still be MEMFD_SIZE bytes long (fstat), its
 * bytes after the first 8 the pattern, the rest of its last page zeros,
 * the first 8 bytes read through fd 3 the tick, and fd 3's offset OFFSET;
 * append "tick <n>\n" to out.log; on a mismatch append "CORRUPT ..." and
 * exit 3.
 *
 * build: gcc -static -O2 -o memfd memfd.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MEMFD_SIZE 5000
#define PAGE 4096
#define MAPPED (2 * PAGE) /* MEMFD_SIZE rounded up */
#define OFFSET 1234

static int logfd;

static void logline(const char *fmt, ...)
{
	char b[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof b, fmt, ap);
	va_end(ap);
	if (write(logfd, b, n) != n)
		exit(4);
}

static void corrupt(const char *what, long got, long want)
{
	logline("CORRUPT %s: %ld, want %ld\n", what, got, want);
	exit(3);
}

static unsigned char pattern(unsigned i)
{
	return (unsigned char)('a' + i % 26);
}

int main(void)
{
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	unsigned char text[MEMFD_SIZE];
	struct stat st;
	uint64_t tick = 0, seen;
	unsigned char *m;
	int fd;

	/* 0-2 are all it has: the memfd is 3, the log 4 */
	fd = memfd_create("crest-odd", 0);
	if (fd != 3)
		return 2;
	logfd = open("out.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 1;
	for (unsigned i = 0; i < MEMFD_SIZE; i++)
		text[i] = pattern(i);
	if (write(3, text, sizeof text) != sizeof text || lseek(3, OFFSET, SEEK_SET) != OFFSET)
		return 5;
	m = mmap(NULL, MAPPED, PROT_READ | PROT_WRITE, MAP_SHARED, 3, 0);
	if (m == MAP_FAILED)
		return 6;
	for (;;) {
		tick++;
		memcpy(m, &tick, sizeof tick);
		if (fstat(3, &st) < 0 || st.st_size != MEMFD_SIZE)
			corrupt("memfd size", (long)st.st_size, MEMFD_SIZE);
		for (unsigned i = sizeof tick; i < MEMFD_SIZE; i++)
			if (m[i] != pattern(i))
				corrupt("memfd byte", i, pattern(i));
		for (unsigned i = MEMFD_SIZE; i < MAPPED; i++)
			if (m[i] != 0)
				corrupt("byte past the end", i, 0);
		if (pread(3, &seen, sizeof seen, 0) != sizeof seen || seen != tick)
			corrupt("memfd tick", (long)seen, (long)tick);
		if (lseek(3, 0, SEEK_CUR) != OFFSET)
			corrupt("memfd offset", (long)lseek(3, 0, SEEK_CUR), OFFSET);
		logline("tick %lu\n", (unsigned long)tick);
		nanosleep(&ts, NULL);
	}
}
