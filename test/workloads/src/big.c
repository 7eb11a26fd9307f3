/*
 * big - one static process holding 1 GiB of anonymous memory filled with
 * non-zero data (every page dumped); it writes "ready\n" to out.log once
 * filled and then "<tick>\n" every 10 ms. For dump speed benchmarks.
 *
 * build: gcc -static -O2 -o big big.c
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define SIZE (1ul << 30)

int main(void)
{
	int fd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd < 0)
		return 2;
	uint64_t *buf = malloc(SIZE);
	if (!buf)
		return 2;
	for (size_t i = 0; i < SIZE / 8; i++)
		buf[i] = i * 0x9e3779b97f4a7c15ULL + 1;
	if (write(fd, "ready\n", 6) != 6)
		return 4;
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[32];
	for (unsigned long tick = 1;; tick++) {
		int len = snprintf(line, sizeof line, "%lu\n", tick);
		if (write(fd, line, len) != len)
			return 4;
		nanosleep(&ts, NULL);
	}
}
