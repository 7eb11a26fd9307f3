/*
 * workload.h - what the workloads of this directory share: their logs.
 * Each appends lines to out-ROLE.log in its working directory; a failed
 * open exits 2, a short write 4, so that a test sees the process end
 * rather than a log that stops.
 */
#ifndef CREST_WORKLOAD_H
#define CREST_WORKLOAD_H

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* opens out-ROLE.log for appending */
static inline int open_log(const char *role)
{
	char name[64];
	int fd;

	snprintf(name, sizeof name, "out-%s.log", role);
	fd = open(name, O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd < 0)
		_exit(2);
	return fd;
}

/* writes line, all of it */
static inline void say(int fd, const char *line)
{
	int len = (int)strlen(line);

	if (write(fd, line, len) != len)
		_exit(4);
}

#endif
