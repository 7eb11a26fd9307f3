/*
 * fdkinds - a pid namespace init holding an eventfd, a signalfd and a
 * timerfd, each in a state a restore must keep:
 *   an eventfd (non-blocking): 1 is added every tick and read back
 *     every third, when it must hold 3;
 *   a signalfd for SIGUSR1 (SIGUSR1 and SIGUSR2 blocked): SIGUSR1 is
 *     raised on odd ticks and read on even ones, one each time; SIGUSR2,
 *     raised too, must never show there (it is taken with sigtimedwait);
 *   a timerfd on CLOCK_MONOTONIC firing every 10 ms: the tick itself,
 *     a blocking read of its expirations.
 * Every tick appends "fdkinds N" to out.log; a wrong count, signal or
 * expiration is logged as CORRUPT and ends the process (exit 3).
 *
 * build: gcc -static -O2 -o fdkinds fdkinds.c
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>

#include "workload.h"

static int logfd;

static void corrupt(const char *what, long long got, long long want)
{
	char line[160];

	snprintf(line, sizeof line, "CORRUPT fdkinds: %s %lld, want %lld\n", what, got, want);
	say(logfd, line);
	_exit(3);
}

int main(void)
{
	struct itimerspec every = { { 0, 10 * 1000 * 1000 }, { 0, 10 * 1000 * 1000 } };
	struct timespec none = { 0, 0 };
	sigset_t mask, usr2;
	int efd, sfd, tfd;
	char line[64];

	logfd = open_log("fdkinds");
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigdelset(&mask, SIGUSR2);
	efd = eventfd(0, EFD_NONBLOCK);
	sfd = signalfd(-1, &mask, SFD_NONBLOCK);
	tfd = timerfd_create(CLOCK_MONOTONIC, 0);
	if (efd < 0 || sfd < 0 || tfd < 0 || timerfd_settime(tfd, 0, &every, NULL))
		return 2;
	for (unsigned long n = 1;; n++) {
		uint64_t v = 1, fired;
		struct signalfd_siginfo si;
		ssize_t r;

		if (write(efd, &v, sizeof v) != sizeof v)
			corrupt("eventfd write", errno, 0);
		if (n % 3 == 0) {
			if (read(efd, &v, sizeof v) != sizeof v || v != 3)
				corrupt("eventfd count", (long long)v, 3);
		}
		if (n % 2 == 1) {
			raise(SIGUSR1);
			raise(SIGUSR2);
		} else {
			r = read(sfd, &si, sizeof si);
			if (r != sizeof si || si.ssi_signo != SIGUSR1)
				corrupt("signalfd signal", r == sizeof si ? (long long)si.ssi_signo : -errno, SIGUSR1);
			r = read(sfd, &si, sizeof si);
			if (r != -1 || errno != EAGAIN)
				corrupt("signalfd second read", r == sizeof si ? (long long)si.ssi_signo : 0, -EAGAIN);
			if (sigtimedwait(&usr2, NULL, &none) != SIGUSR2)
				corrupt("SIGUSR2 pending", errno, 0);
		}
		snprintf(line, sizeof line, "fdkinds %lu\n", n);
		say(logfd, line);
		if (read(tfd, &fired, sizeof fired) != sizeof fired || fired == 0 || fired > 100000)
			corrupt("timerfd expirations", (long long)fired, 1);
	}
}
