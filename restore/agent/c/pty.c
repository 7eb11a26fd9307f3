// SPDX-License-Identifier: Apache-2.0
/*
 * pty.c - a session leader's controlling terminal, a pty slave of the
 * tree. Only the task itself can take it (TIOCSCTTY acts on the caller),
 * as in CRIU's tty_restore_ctl_terminal; the engine opened the slave.
 * Unlike CRIU, the leader takes it before forking its children, so that
 * they have it too, as they had at the dump; the foreground group is
 * set once FORKING is over, when every group of the session exists.
 */
#include "agent.h"

#define TIOCSCTTY_ 0x540e
#define TIOCSPGRP_ 0x5410

static long sys_ioctl(int fd, unsigned int cmd, long arg)
{
	return sys_call3(__NR_ioctl, fd, cmd, arg);
}

int take_ctty(const struct crest_task *t)
{
	long fd, ret;

	if (!t->ctty_fd)
		return 0;
	fd = sys_pidfd_getfd(agent.plan->engine_pidfd, t->ctty_engine_fd, 0);
	if (fd < 0)
		return (int)fd;
	if (fd != t->ctty_fd) {
		ret = sys_dup3((int)fd, t->ctty_fd, O_CLOEXEC);
		sys_close((int)fd);
		if (ret < 0)
			return (int)ret;
	}
	/* 0: never steal a terminal another session has */
	return (int)sys_ioctl(t->ctty_fd, TIOCSCTTY_, 0);
}

int set_foreground(const struct crest_task *t)
{
	int pgrp = t->ctty_pgrp;

	if (!t->ctty_fd || pgrp <= 0)
		return 0;
	return (int)sys_ioctl(t->ctty_fd, TIOCSPGRP_, (long)&pgrp);
}
