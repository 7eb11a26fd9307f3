// SPDX-License-Identifier: Apache-2.0
/*
 * files.c - a task's files. The engine opened every file; the task takes
 * the ones it needs with pidfd_getfd to its local fds (from fd_base up),
 * uses them for its mappings and pages, and finally installs its fd table
 * and closes everything else.
 */
#include "agent.h"

int take_files(const struct crest_task *t)
{
	const struct crest_take *tk = plan_ptr(t->takes_off);
	uint32_t i;

	step_begin(CREST_STEP_FILES);
	for (i = 0; i < t->nr_takes; i++) {
		long fd = sys_pidfd_getfd(agent.plan->engine_pidfd, tk[i].engine_fd, 0);
		long ret;

		if (fd < 0)
			return (int)fd;
		if (fd == tk[i].local_fd)
			continue;
		/*
		 * The fd pidfd_getfd gave stays open: install_fds closes every
		 * fd below fd_base, the last stage every one above (sigreturn.c),
		 * and a later dup3 onto it only replaces a copy.
		 */
		ret = sys_dup3((int)fd, tk[i].local_fd, O_CLOEXEC);
		if (ret < 0)
			return (int)ret;
	}
	step_end(CREST_STEP_FILES);
	return 0;
}

/*
 * Put the fd table in place and close every other fd below fd_base: the
 * launcher's stdio and whatever the fork inherited, one close_range per
 * gap between the table's fds (in ascending order in the plan). The
 * local fds above are closed before the last stage (sigreturn.c).
 */
/* struct epoll_event, packed on x86-64 */
struct crest_epoll_event {
	uint32_t events;
	uint64_t data;
} __attribute__((packed));

#define EPOLL_CTL_ADD_ 1

/*
 * The items of the epolls this task adds (the engine made them empty):
 * an item is the target's file and its fd number here, so it is added
 * once the fds are in place, in the task whose fd table the dump read.
 */
static int add_epoll_items(const struct crest_task *t)
{
	const struct crest_epoll_add *a = plan_ptr(t->epoll_adds_off);
	uint32_t i;

	for (i = 0; i < t->nr_epoll_adds; i++, a++) {
		struct crest_epoll_event ev = { a->events, a->data };
		long ret = sys_epoll_ctl(a->epfd, EPOLL_CTL_ADD_, a->tfd, &ev);

		if (ret < 0)
			return (int)ret;
	}
	return 0;
}

int install_fds(const struct crest_task *t)
{
	const struct crest_fd *fds = plan_ptr(t->fds_off);
	int next = 0;	/* the lowest fd not yet put in place or closed */
	uint32_t i;
	long ret;

	step_begin(CREST_STEP_FILES);
	for (i = 0; i < t->nr_fds; i++) {
		int fd = fds[i].fd;

		if (fd < next || fd >= agent.plan->fd_base)
			return -EBADF;	/* out of order, or at or above fd_base: the plan is wrong */
		if (fd > next) {
			ret = sys_close_range((unsigned int)next, (unsigned int)fd - 1, 0);
			if (ret < 0)
				return (int)ret;
		}
		ret = sys_dup3(fds[i].src_fd, fd, fds[i].cloexec ? O_CLOEXEC : 0);
		if (ret < 0)
			return (int)ret;
		next = fd + 1;
	}
	if (next < agent.plan->fd_base) {
		ret = sys_close_range((unsigned int)next, (unsigned int)agent.plan->fd_base - 1, 0);
		if (ret < 0)
			return (int)ret;
	}
	ret = add_epoll_items(t);
	if (ret < 0)
		return (int)ret;
	step_end(CREST_STEP_FILES);
	return 0;
}

/* The working directory, root and umask (CRIU's restore_fs). */
int restore_fs(const struct crest_task *t)
{
	long ret;

	step_begin(CREST_STEP_FS);
	if (t->root_fd >= 0) {
		ret = sys_fchdir(t->root_fd);
		if (ret == 0)
			ret = sys_chroot(".");
		if (ret < 0)
			return (int)ret;
	}
	ret = sys_fchdir(t->cwd_fd);
	if (ret < 0)
		return (int)ret;
	sys_umask(t->umask);
	step_end(CREST_STEP_FS);
	return 0;
}
