/*
 * signals - handlers for SIGUSR1, SIGUSR2 and SIGALRM (SA_ONSTACK |
 * SA_RESTART) on a 64 KiB sigaltstack, an ITIMER_REAL of 20 ms, and
 * SIGUSR2 blocked and raised once, so it stays pending. Every 10 ms it
 * appends "tick=N alarms=A usr1=U usr2=V alt=H" to out.log; a handler off
 * the alternate stack or a delivered SIGUSR2 appends "CORRUPT" and exits 3.
 *
 * build: gcc -static -O2 -o signals signals.c
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char altstack[65536];
static volatile sig_atomic_t alarms, usr1, usr2, alt, bad;

static void on_stack(void)
{
	char here;
	if (&here >= altstack && &here < altstack + sizeof altstack)
		alt++;
	else
		bad = 1;
}

static void h_alrm(int s) { (void)s; alarms++; on_stack(); }
static void h_usr1(int s) { (void)s; usr1++; on_stack(); }
static void h_usr2(int s) { (void)s; usr2++; bad = 2; }

int main(void)
{
	int fd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd < 0)
		return 2;
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack };
	if (sigaltstack(&ss, NULL))
		return 2;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_flags = SA_ONSTACK | SA_RESTART;
	sa.sa_handler = h_alrm;
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_handler = h_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = h_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR2);
	sigprocmask(SIG_BLOCK, &m, NULL);
	raise(SIGUSR2);
	struct itimerval it = { { 0, 20000 }, { 0, 20000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	char line[128];
	for (unsigned long tick = 1;; tick++) {
		if (bad) {
			int len = snprintf(line, sizeof line, "CORRUPT bad=%d\n", (int)bad);
			write(fd, line, len);
			exit(3);
		}
		int len = snprintf(line, sizeof line, "tick=%lu alarms=%d usr1=%d usr2=%d alt=%d\n", tick,
				   (int)alarms, (int)usr1, (int)usr2, (int)alt);
		if (write(fd, line, len) != len)
			exit(4);
		struct timespec ts = { 0, 10 * 1000 * 1000 }, rem;
		while (nanosleep(&ts, &rem) && errno == EINTR)
			ts = rem;
	}
}
