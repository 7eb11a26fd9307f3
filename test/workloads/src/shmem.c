/*
 * shmem - a pid namespace init and its child sharing one 1 MiB
 * MAP_SHARED|MAP_ANONYMOUS region, mapped before fork().
 *
 * Layout of the region: word 0 is the parent's counter, word 1 the child's
 * tick; pages 1..255 hold xorshift64 data (seed SEED), whose per-page
 * checksums sit in a private array inherited copy-on-write.
 *
 * Every 10 ms the parent checks that word 0 still holds its last value
 * and that the child's tick (word 1) never went back, stores N in word 0
 * and appends "wrote N" to out-parent.log. Every 10 ms the child checks
 * one data page (all of them every 50 ticks) and that word 0 never went
 * back, stores its tick T in word 1 and appends "seen S tick=T" to out.log,
 * S being the value it read from word 0. Each also checks that the other's
 * word moves: STALL of its own ticks (about half a second) without a change
 * means the region is no longer shared. On any mismatch either appends
 * "CORRUPT ..." to its log and exits 3; the parent also logs a child that
 * ended.
 *
 * build: gcc -static -O2 -o shmem shmem.c
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REGION (1u << 20)
#define PAGE 4096u
#define NPAGES (REGION / PAGE)
#define WPP (PAGE / 8)
#define SEED 0x6a09e667f3bcc908ULL
#define STALL 50

static volatile uint64_t *region;
static uint64_t checksum[NPAGES];
static int logfd;

static uint64_t next_random(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static uint64_t page_checksum(unsigned p)
{
	const volatile uint64_t *w = region + (uint64_t)p * WPP;
	uint64_t h = 0xcbf29ce484222325ULL;
	for (unsigned i = 0; i < WPP; i++)
		h = (h ^ w[i]) * 0x100000001b3ULL;
	return h;
}

static void say(int code, const char *fmt, ...)
{
	char b[160];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof b, fmt, ap);
	va_end(ap);
	if (write(logfd, b, n) != n)
		_exit(4);
	if (code)
		_exit(code);
}

static void observe(void)
{
	logfd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (logfd < 0)
		_exit(2);
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	uint64_t last = 0, since = 0;
	for (uint64_t tick = 1;; tick++) {
		for (unsigned p = 1; p < NPAGES; p++) {
			if (tick % 50 != 0 && p != 1 + tick % (NPAGES - 1))
				continue;
			if (page_checksum(p) != checksum[p])
				say(3, "CORRUPT tick=%llu page %u\n", (unsigned long long)tick, p);
		}
		uint64_t seen = region[0];
		if (seen < last)
			say(3, "CORRUPT tick=%llu counter went back from %llu to %llu\n",
			    (unsigned long long)tick, (unsigned long long)last, (unsigned long long)seen);
		if (seen != last)
			since = tick;
		else if (tick - since > STALL)
			say(3, "CORRUPT tick=%llu counter stuck at %llu since tick %llu\n",
			    (unsigned long long)tick, (unsigned long long)seen, (unsigned long long)since);
		last = seen;
		region[1] = tick;
		say(0, "seen %llu tick=%llu\n", (unsigned long long)seen, (unsigned long long)tick);
		nanosleep(&ts, NULL);
	}
}

int main(void)
{
	region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		return 1;
	uint64_t s = SEED;
	for (unsigned i = WPP; i < REGION / 8; i++)
		region[i] = next_random(&s);
	for (unsigned p = 1; p < NPAGES; p++)
		checksum[p] = page_checksum(p);

	pid_t child = fork();
	if (child < 0)
		return 1;
	if (child == 0)
		observe();

	logfd = open("out-parent.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (logfd < 0)
		return 2;
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	uint64_t child_tick = 0, since = 0;
	for (uint64_t n = 1;; n++) {
		if (region[0] != n - 1)
			say(3, "CORRUPT counter %llu, want %llu\n", (unsigned long long)region[0],
			    (unsigned long long)(n - 1));
		uint64_t ct = region[1];
		if (ct < child_tick)
			say(3, "CORRUPT child tick went back from %llu to %llu\n",
			    (unsigned long long)child_tick, (unsigned long long)ct);
		if (ct != child_tick)
			since = n;
		else if (n - since > STALL)
			say(3, "CORRUPT child tick stuck at %llu since %llu\n", (unsigned long long)ct,
			    (unsigned long long)since);
		child_tick = ct;
		region[0] = n;
		say(0, "wrote %llu\n", (unsigned long long)n);
		int st;
		pid_t pid;
		while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
			say(3, "CORRUPT reaped %d status %d\n", (int)pid, st);
		nanosleep(&ts, NULL);
	}
}
