/*
 * epoll - a pid namespace init whose tick is an epoll: it watches a
 * timerfd (every 10 ms, level-triggered), an eventfd (edge-triggered) and
 * the read end of a pipe, each with its own data word. Every tick it
 * writes to the eventfd on odd ticks and to the pipe on every third, then
 * waits in epoll_wait until the timer fires, and by then must have seen
 * each write reported once, with its data word, and nothing unknown.
 * Every tick appends "epoll N" to out-epoll.log; a missing, unknown or
 * wrong event is logged as CORRUPT and ends the process (exit 3).
 *
 * build: gcc -static -O2 -o epoll epoll.c
 */
#include <errno.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>

#include "workload.h"

#define DATA_TIMER 0x7401
#define DATA_EVENT 0x7402
#define DATA_PIPE 0x7403

static int logfd;

static void corrupt(const char *what, unsigned long long got, unsigned long long want)
{
	char line[160];

	snprintf(line, sizeof line, "CORRUPT epoll: %s %llx, want %llx\n", what, got, want);
	say(logfd, line);
	_exit(3);
}

static void watch(int ep, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };

	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		_exit(2);
}

int main(void)
{
	struct itimerspec every = { { 0, 10 * 1000 * 1000 }, { 0, 10 * 1000 * 1000 } };
	int ep, efd, tfd, p[2];
	char line[64];

	logfd = open_log("epoll");
	ep = epoll_create1(0);
	efd = eventfd(0, EFD_NONBLOCK);
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	if (ep < 0 || efd < 0 || tfd < 0 || pipe(p) || timerfd_settime(tfd, 0, &every, NULL))
		return 2;
	watch(ep, tfd, EPOLLIN, DATA_TIMER);
	watch(ep, efd, EPOLLIN | EPOLLET, DATA_EVENT);
	watch(ep, p[0], EPOLLIN, DATA_PIPE);
	for (unsigned long n = 1;; n++) {
		int want_event = n % 2 == 1, want_pipe = n % 3 == 0, timer = 0;
		uint64_t v = 1;

		if (want_event && write(efd, &v, sizeof v) != sizeof v)
			corrupt("eventfd write", 0, 1);
		if (want_pipe && write(p[1], "x", 1) != 1)
			corrupt("pipe write", 0, 1);
		while (!timer) {
			struct epoll_event evs[8];
			int k = epoll_wait(ep, evs, 8, 1000);

			/* a freeze (the dump's, a restore's) ends a wait with
			 * EINTR, and the kernel never restarts epoll_wait */
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				corrupt("epoll_wait", (unsigned long long)k, 1);
			for (int i = 0; i < k; i++) {
				char c;

				switch (evs[i].data.u64) {
				case DATA_TIMER:
					if (read(tfd, &v, sizeof v) != sizeof v)
						corrupt("timerfd read", 0, 1);
					timer = 1;
					break;
				case DATA_EVENT:
					if (!want_event || read(efd, &v, sizeof v) != sizeof v)
						corrupt("eventfd event", want_event, 1);
					want_event = 0;
					break;
				case DATA_PIPE:
					if (!want_pipe || read(p[0], &c, 1) != 1)
						corrupt("pipe event", want_pipe, 1);
					want_pipe = 0;
					break;
				default:
					corrupt("unknown data", evs[i].data.u64, 0);
				}
			}
		}
		if (want_event || want_pipe)
			corrupt("events not seen (eventfd, pipe)", want_event * 16 + want_pipe, 0);
		snprintf(line, sizeof line, "epoll %lu\n", n);
		say(logfd, line);
	}
}
