/*
 * spin - one static process that computes in user space without making
 * syscalls for most of its time (so a freeze catches it outside any
 * syscall), checking its own arithmetic: every 2^22 steps it appends
 * "<round> <value>\n" to out.log, or "CORRUPT ..." and exits 3 when the
 * value is not what the recurrence gives.
 *
 * build: gcc -static -O2 -o spin spin.c
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	int fd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd < 0)
		return 2;
	volatile uint64_t x = 1, check = 1;
	char line[64];
	for (unsigned long round = 1;; round++) {
		for (unsigned i = 0; i < (1u << 22); i++)
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		for (unsigned i = 0; i < (1u << 22); i++)
			check = check * 6364136223846793005ULL + 1442695040888963407ULL;
		int len;
		if (x != check)
			len = snprintf(line, sizeof line, "CORRUPT %lu\n", round);
		else
			len = snprintf(line, sizeof line, "%lu %llx\n", round, (unsigned long long)x);
		if (write(fd, line, len) != len || x != check)
			return 3;
	}
}
