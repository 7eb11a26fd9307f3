/*
 * workload.h - what the workloads of this directory share: their logs.
 * Each appends lines to out-ROLE.log in its working directory; a failed
 * open exits 2, a short write 4, so that a test sees the process end
 * rather than a log that stops.
 */
#ifndef CREST_WORKLOAD_H
#define CREST_WORKLOAD_H

#include <errno.h>
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

/*
 * whether the file at path (a /proc/sys file) holds value, whitespace as
 * the kernel prints it; if not, and why is given, why says what it held
 * or why it could not be read
 */
static inline int file_holds(const char *path, const char *value, char *why, size_t whylen)
{
	char buf[128];
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0) {
		if (why)
			snprintf(why, whylen, "%s: open: %s", path, strerror(errno));
		return 0;
	}
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n < 0) {
		if (why)
			snprintf(why, whylen, "%s: read: %s", path, strerror(errno));
		return 0;
	}
	buf[n] = 0;
	if (strcmp(buf, value) == 0)
		return 1;
	buf[strcspn(buf, "\n")] = 0;
	if (why)
		snprintf(why, whylen, "%s: holds \"%s\", want \"%.*s\"", path, buf, (int)strcspn(value, "\n"), value);
	return 0;
}

#endif
