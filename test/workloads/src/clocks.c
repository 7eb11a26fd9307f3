/*
 * clocks - a pid namespace init that runs in a time namespace of its own
 * (launch -t: CLOCK_MONOTONIC 100000 s and CLOCK_BOOTTIME 200000 s ahead
 * of the host's) and appends "clocks N" to out.log every 10 ms, after
 * checking that both clocks went on from the last tick: not back, not more
 * than an hour ahead, and still past the namespace's offsets. A restore
 * that dropped the namespace, or its clocks, is logged as CORRUPT and ends
 * the process (exit 3).
 *
 * build: gcc -static -O2 -o clocks clocks.c
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long ns(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(void)
{
	static const struct timespec tick = { 0, 10 * 1000 * 1000 };
	const long long hour = 3600LL * 1000000000LL;
	long long mono = ns(CLOCK_MONOTONIC), boot = ns(CLOCK_BOOTTIME);
	char line[160];
	int fd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);

	if (fd < 0)
		return 2;
	for (unsigned long n = 1;; n++) {
		long long m = ns(CLOCK_MONOTONIC), b = ns(CLOCK_BOOTTIME);
		int len;

		if (m < mono || m > mono + hour || b < boot || b > boot + hour ||
		    m < 100000 * 1000000000LL || b < 200000 * 1000000000LL) {
			len = snprintf(line, sizeof line, "CORRUPT clocks: monotonic %lld after %lld, boottime %lld after %lld\n",
				       m, mono, b, boot);
			if (write(fd, line, len) != len)
				return 4;
			return 3;
		}
		mono = m;
		boot = b;
		len = snprintf(line, sizeof line, "clocks %lu\n", n);
		if (write(fd, line, len) != len)
			return 4;
		nanosleep(&tick, NULL);
	}
}
