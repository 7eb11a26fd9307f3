/*
 * workload.c - crest bench's own workload: a process tree to dump once and
 * restore many times.
 *
 *   workload TASKS THREADS MEM_KIB FDS PIPES SHM_KIB
 *
 * It runs as pid 1 of a new pid namespace and session leader (bench starts
 * it so), in a directory of its own. Of the fds it was started with it
 * keeps 0-2 only. Init makes PIPES pipes with a byte in each, whose ends
 * every task then holds, maps SHM_KIB KiB of shared anonymous memory
 * (MAP_SHARED) that it fills with pseudo-random data and every task then
 * shares, and forks TASKS-1 children. Every task fills
 * MEM_KIB KiB of anonymous memory with pseudo-random data, opens FDS
 * read-only fds of the file "data" (4 KiB that init writes first),
 * starts THREADS-1 more threads, writes "ready.N" (N its index) and then
 * ticks: a counter in its memory every 10 ms, and one of its own in the
 * shared memory (a word for each task); its threads sleep. No child
 * ends, and nothing is written after "ready": a restore needs no reset.
 *
 * build: see Makefile (static, -pthread)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t ticks;
static volatile uint64_t *shm;	/* the shared memory, NULL without */
static size_t shm_words;

/* xorshift64: fills memory with data that no page of zeros can stand for */
static void fill(uint64_t *mem, size_t words, uint64_t x)
{
	for (size_t i = 0; i < words; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		mem[i] = x;
	}
}

static void *sleeper(void *arg)
{
	const struct timespec ts = { 0, 10 * 1000 * 1000 };

	(void)arg;
	for (;;)
		nanosleep(&ts, NULL);
	return NULL;
}

static void run(int index, int threads, long mem_kib, int fds)
{
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	size_t size = (size_t)mem_kib * 1024;
	uint64_t *mem = NULL;
	char name[32];
	int fd;

	if (size > 0) {
		mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED)
			_exit(2);
		fill(mem, size / sizeof(*mem), 0x9e3779b97f4a7c15ull ^ (uint64_t)index);
	}
	for (int i = 0; i < fds; i++)
		if (open("data", O_RDONLY) < 0)
			_exit(3);
	for (int i = 1; i < threads; i++) {
		pthread_t t;

		if (pthread_create(&t, NULL, sleeper, NULL) != 0)
			_exit(4);
	}
	snprintf(name, sizeof name, "ready.%d", index);
	fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		_exit(5);
	close(fd);
	for (;;) {
		ticks++;
		if (mem)
			mem[ticks % (size / sizeof(*mem))] ^= ticks;
		if (shm_words > (size_t)index)
			shm[index] = ticks;
		nanosleep(&ts, NULL);
	}
}

int main(int argc, char **argv)
{
	int tasks, threads, fds, pipes;
	long mem_kib, shm_kib;

	if (argc != 7)
		return 1;
	tasks = atoi(argv[1]);
	threads = atoi(argv[2]);
	mem_kib = atol(argv[3]);
	fds = atoi(argv[4]);
	pipes = atoi(argv[5]);
	shm_kib = atol(argv[6]);
	if (tasks < 1 || threads < 1 || mem_kib < 0 || fds < 0 || pipes < 0 || shm_kib < 0)
		return 1;
	/* only 0-2 from whoever started it (a shell leaks more) */
	if (syscall(SYS_close_range, 3, ~0u, 0) < 0)
		return 8;
	if (fds > 0) {
		char page[4096] = { 0 };
		int fd = open("data", O_WRONLY | O_CREAT | O_TRUNC, 0644);

		if (fd < 0 || write(fd, page, sizeof page) != (ssize_t)sizeof page || close(fd) < 0)
			return 7;
	}
	/* pipes: both ends in every task (forked after), a byte in each */
	for (int i = 0; i < pipes; i++) {
		int p[2];

		if (pipe(p) < 0 || write(p[1], "x", 1) != 1)
			return 9;
	}
	/* shared memory: mapped before the forks, so every task shares it */
	if (shm_kib > 0) {
		uint64_t *m = mmap(NULL, (size_t)shm_kib * 1024, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

		if (m == MAP_FAILED)
			return 10;
		shm_words = (size_t)shm_kib * 1024 / sizeof(*m);
		fill(m, shm_words, 0x2545f4914f6cdd1dull);
		shm = m;
	}
	for (int i = 1; i < tasks; i++) {
		pid_t pid = fork();

		if (pid < 0)
			return 6;
		if (pid == 0)
			run(i, threads, mem_kib, fds);
	}
	run(0, threads, mem_kib, fds);
	return 0;
}
