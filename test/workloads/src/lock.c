/*
 * lock - a process holding an flock()ed file at fd 3 (crest dump does not
 * support file locks); it appends "<tick>\n" to out.log every 10 ms.
 *
 * build: gcc -static -O2 -o lock lock.c
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	int l = open("lock", O_RDWR | O_CREAT, 0644);
	if (l != 3 || flock(l, LOCK_EX))
		return 2;
	int fd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd < 0)
		return 2;
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[32];
	for (unsigned long tick = 1;; tick++) {
		int len = snprintf(line, sizeof line, "%lu\n", tick);
		if (write(fd, line, len) != len)
			return 4;
		nanosleep(&ts, NULL);
	}
}
