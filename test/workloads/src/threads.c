/*
 * threads - one static process with 3 threads (main + 2 pthreads), each
 * appending "thread k n=N shared=S" to out-<k>.log every 10 ms; S is a
 * mutex-protected counter shared by the threads. Each thread checks its
 * __thread value and logs CORRUPT and exits 3 if it changed.
 *
 * build: gcc -static -O2 -pthread -o threads threads.c
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long shared;
static __thread uint64_t tls_magic;

static void *worker(void *arg)
{
	int k = (int)(intptr_t)arg;
	char name[32], line[128];
	snprintf(name, sizeof name, "out-%d.log", k);
	int fd = open(name, O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd < 0)
		exit(2);
	tls_magic = 0x7415000000000000ULL + k;
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (unsigned long n = 1;; n++) {
		pthread_mutex_lock(&mu);
		unsigned long s = ++shared;
		pthread_mutex_unlock(&mu);
		int len;
		if (tls_magic != 0x7415000000000000ULL + k) {
			len = snprintf(line, sizeof line, "CORRUPT thread %d tls=%llx\n", k,
				       (unsigned long long)tls_magic);
			if (write(fd, line, len) != len)
				exit(4);
			exit(3);
		}
		len = snprintf(line, sizeof line, "thread %d n=%lu shared=%lu\n", k, n, s);
		if (write(fd, line, len) != len)
			exit(4);
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int main(void)
{
	pthread_t t[2];
	for (int k = 1; k <= 2; k++)
		if (pthread_create(&t[k - 1], NULL, worker, (void *)(intptr_t)k))
			return 1;
	worker((void *)0);
	return 0;
}
