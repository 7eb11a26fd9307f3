/*
 * counter - one static single-threaded process with a 2 MiB anonymous
 * buffer of xorshift64 data (seed SEED), per-page checksums and an
 * O_APPEND log.
 *
 * At start it writes "buf=0x<addr> size=<bytes> seed=0x<seed>\n" to
 * info.txt, so a test can find the buffer in a checkpoint. Every 10 ms:
 * tick++, re-check 4 pages against their checksums (every 100 ticks the
 * whole buffer against the generator), append "<tick>\n" to out.log; on a
 * mismatch append "CORRUPT ..." and exit 3.
 *
 * build: gcc -static -O2 -o counter counter.c
 *        gcc -O2 -o dynamic counter.c   (the "dynamic" workload)
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (2u << 20)
#define PAGE 4096u
#define NPAGES (BUF_SIZE / PAGE)
#define WPP (PAGE / 8)
#define SEED 0x9e3779b97f4a7c15ULL

static uint64_t *buf;
static uint64_t page_sum[NPAGES];
static int logfd;

static uint64_t xorshift64(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static uint64_t sum_page(const uint64_t *p)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (unsigned i = 0; i < WPP; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

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

int main(void)
{
	logfd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (logfd < 0)
		return 2;
	buf = malloc(BUF_SIZE);
	if (!buf)
		return 2;
	uint64_t s = SEED;
	for (unsigned i = 0; i < BUF_SIZE / 8; i++)
		buf[i] = xorshift64(&s);
	for (unsigned p = 0; p < NPAGES; p++)
		page_sum[p] = sum_page(buf + p * WPP);

	FILE *info = fopen("info.txt", "w");
	if (!info)
		return 2;
	fprintf(info, "buf=%p size=%u seed=0x%llx\n", (void *)buf, BUF_SIZE, (unsigned long long)SEED);
	fclose(info);

	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (unsigned long tick = 1;; tick++) {
		for (unsigned k = 0; k < 4; k++) {
			unsigned long p = (tick * 4 + k) * 37 % NPAGES;
			if (sum_page(buf + p * WPP) != page_sum[p]) {
				logline("CORRUPT tick=%lu page %lu\n", tick, p);
				exit(3);
			}
		}
		if (tick % 100 == 0) {
			s = SEED;
			for (unsigned i = 0; i < BUF_SIZE / 8; i++)
				if (buf[i] != xorshift64(&s)) {
					logline("CORRUPT tick=%lu word %u\n", tick, i);
					exit(3);
				}
		}
		logline("%lu\n", tick);
		nanosleep(&ts, NULL);
	}
}
