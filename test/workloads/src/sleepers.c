/*
 * sleepers - a tree whose tasks spend their time in the calls that a
 * freeze interrupts with ERESTART_RESTARTBLOCK (poll and futex with a
 * timeout, nanosleep without a remainder) or ERESTARTNOHAND (an absolute
 * clock_nanosleep), so that a dump almost always finds each in one.
 *
 *   init      clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) 200 ms steps
 *   poll      poll() of a pipe that never has data, timeout 200 ms
 *   futex     FUTEX_WAIT on a word that never changes, timeout 200 ms
 *   usleep    nanosleep(200 ms, NULL)
 *   nanosleep nanosleep(200 ms, &rem), going on with rem after an EINTR
 *
 * Each appends "N" to out-ROLE.log after every call that ends as it
 * should (timeout, 0). A call that fails otherwise (EINTR where no signal
 * handler ran) appends "CORRUPT ROLE: ..." and the task exits 3: a
 * restored task must find its call running on, as the kernel restarts
 * it after a stop. nanosleep with a remainder may see EINTR, as after a
 * CRIU restore, but must then sleep the rest.
 *
 * build: gcc -static -O2 -o sleepers sleepers.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include "workload.h"

#define STEP_NS (200 * 1000 * 1000L)

static int log_fd;
static char line[256];

static __attribute__((noreturn)) void corrupt(const char *role, const char *call, int err)
{
	snprintf(line, sizeof line, "CORRUPT %s: %s: %s\n", role, call, strerror(err));
	say(log_fd, line);
	_exit(3);
}

static void tick(unsigned long n)
{
	snprintf(line, sizeof line, "%lu\n", n);
	say(log_fd, line);
}

static void run_poll(void)
{
	int p[2];

	if (pipe(p))
		_exit(2);
	for (unsigned long n = 1;; n++) {
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		int r = poll(&pfd, 1, STEP_NS / 1000000);

		if (r != 0)
			corrupt("poll", "poll", r < 0 ? errno : EIO);
		tick(n);
	}
}

static void run_futex(void)
{
	static uint32_t word = 7;

	for (unsigned long n = 1;; n++) {
		struct timespec ts = { 0, STEP_NS };
		long r = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 7, &ts, NULL, 0);

		if (r != -1 || errno != ETIMEDOUT)
			corrupt("futex", "FUTEX_WAIT", r == -1 ? errno : EIO);
		tick(n);
	}
}

static void run_usleep(void)
{
	for (unsigned long n = 1;; n++) {
		struct timespec ts = { 0, STEP_NS };

		if (nanosleep(&ts, NULL))
			corrupt("usleep", "nanosleep", errno);
		tick(n);
	}
}

static void run_nanosleep(void)
{
	for (unsigned long n = 1;; n++) {
		struct timespec ts = { 0, STEP_NS }, rem;

		while (nanosleep(&ts, &rem)) {
			if (errno != EINTR)
				corrupt("nanosleep", "nanosleep", errno);
			if (rem.tv_sec < 0 || rem.tv_nsec < 0 || rem.tv_sec > 0 || rem.tv_nsec > STEP_NS)
				corrupt("nanosleep", "remainder", ERANGE);
			ts = rem;
		}
		tick(n);
	}
}

static void run_init(void)
{
	struct timespec at;

	clock_gettime(CLOCK_MONOTONIC, &at);
	for (unsigned long n = 1;; n++) {
		at.tv_nsec += STEP_NS;
		if (at.tv_nsec >= 1000000000L) {
			at.tv_nsec -= 1000000000L;
			at.tv_sec++;
		}
		int r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);

		if (r)
			corrupt("init", "clock_nanosleep", r);
		tick(n);
	}
}

int main(void)
{
	static const struct {
		const char *role;
		void (*run)(void);
	} kids[] = {
		{ "poll", run_poll }, { "futex", run_futex },
		{ "usleep", run_usleep }, { "nanosleep", run_nanosleep },
	};

	for (unsigned i = 0; i < sizeof kids / sizeof kids[0]; i++) {
		pid_t pid = fork();

		if (pid < 0)
			return 2;
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			log_fd = open_log(kids[i].role);
			kids[i].run();
		}
	}
	log_fd = open_log("init");
	run_init();
	return 0;
}
