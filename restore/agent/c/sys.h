/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sys.h - the agent's system calls, without libc.
 *
 * Every wrapper returns the kernel's result: a value >= 0, or -errno.
 * Only x86-64 for now; numbers and structures come from the kernel's uapi
 * headers, which need no libc.
 */
#ifndef CREST_SYS_H
#define CREST_SYS_H

#include <stdint.h>
#include <stddef.h>
#include <asm/unistd.h>
#include <linux/errno.h>
#include <linux/futex.h>
#include <linux/sched.h>
#include <linux/time_types.h>

#define PROT_READ 0x1
#define PROT_WRITE 0x2
#define PROT_EXEC 0x4
#define MAP_SHARED 0x01
#define MAP_PRIVATE 0x02
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define MAP_GROWSDOWN 0x0100
#define MAP_NORESERVE 0x4000
#define MAP_FIXED_NOREPLACE 0x100000
#define O_CLOEXEC 02000000
#define O_ASYNC 020000
#define F_GETFL 3
#define F_SETFL 4

static inline long sys_call0(long nr)
{
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(nr) : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_call1(long nr, long a1)
{
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1) : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_call2(long nr, long a1, long a2)
{
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1), "S"(a2) : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_call3(long nr, long a1, long a2, long a3)
{
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1), "S"(a2), "d"(a3) : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_call4(long nr, long a1, long a2, long a3, long a4)
{
	long ret;
	register long r10 asm("r10") = a4;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10)
		     : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_call6(long nr, long a1, long a2, long a3, long a4, long a5, long a6)
{
	long ret;
	register long r10 asm("r10") = a4;
	register long r8 asm("r8") = a5;
	register long r9 asm("r9") = a6;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
		     : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_write(int fd, const void *buf, size_t len)
{
	return sys_call3(__NR_write, fd, (long)buf, (long)len);
}

static inline long sys_pread(int fd, void *buf, size_t len, long off)
{
	return sys_call4(__NR_pread64, fd, (long)buf, (long)len, off);
}

static inline long sys_close(int fd)
{
	return sys_call1(__NR_close, fd);
}

static inline long sys_close_range(unsigned int first, unsigned int last, unsigned int flags)
{
	return sys_call3(__NR_close_range, first, last, flags);
}

static inline long sys_mmap(void *addr, size_t len, int prot, int flags, int fd, long off)
{
	return sys_call6(__NR_mmap, (long)addr, (long)len, prot, flags, fd, off);
}

static inline long sys_munmap(void *addr, size_t len)
{
	return sys_call2(__NR_munmap, (long)addr, (long)len);
}

static inline long sys_getpid(void)
{
	return sys_call0(__NR_getpid);
}

static inline long sys_gettid(void)
{
	return sys_call0(__NR_gettid);
}

static inline long sys_set_tid_address(uint64_t addr)
{
	return sys_call1(__NR_set_tid_address, (long)addr);
}

static inline long sys_set_robust_list(uint64_t head, uint64_t len)
{
	return sys_call2(__NR_set_robust_list, (long)head, (long)len);
}

static inline long sys_rseq(uint64_t addr, uint32_t len, int flags, uint32_t sig)
{
	return sys_call4(__NR_rseq, (long)addr, len, flags, sig);
}

static inline long sys_setsid(void)
{
	return sys_call0(__NR_setsid);
}

static inline long sys_setpgid(int pid, int pgid)
{
	return sys_call2(__NR_setpgid, pid, pgid);
}

/*
 * clone3 without CLONE_VM and without a stack: the child returns here on
 * a copy of the parent's stack, as after fork(), so no trampoline is needed.
 */
static inline long sys_clone3(struct clone_args *args, size_t size)
{
	return sys_call2(__NR_clone3, (long)args, (long)size);
}

static inline long sys_nanosleep(const struct __kernel_timespec *req)
{
	return sys_call2(__NR_nanosleep, (long)req, 0);
}

static inline long sys_futex_wait(void *uaddr, uint32_t val, const struct __kernel_timespec *timeout)
{
	return sys_call4(__NR_futex, (long)uaddr, FUTEX_WAIT, val, (long)timeout);
}

static inline long sys_futex_wake(void *uaddr, int nr)
{
	return sys_call3(__NR_futex, (long)uaddr, FUTEX_WAKE, nr);
}

/*
 * FUTEX_WAKE_OP: atomically *uaddr2 = *uaddr2 OP oparg, wake nr waiters on
 * uaddr, and nr2 on uaddr2 if the old value CMP cmparg. The barrier's
 * decrements and stage stores go through it, so that the kernel-side
 * monitor sees each happen inside one futex call.
 */
static inline long sys_futex_wake_op(void *uaddr, int nr, int nr2, void *uaddr2, uint32_t op)
{
	return sys_call6(__NR_futex, (long)uaddr, FUTEX_WAKE_OP, nr, nr2, (long)uaddr2, op);
}

static inline long sys_clock_gettime(int clock, struct __kernel_timespec *ts)
{
	return sys_call2(__NR_clock_gettime, clock, (long)ts);
}

static inline long sys_pidfd_getfd(int pidfd, int fd, unsigned int flags)
{
	return sys_call3(__NR_pidfd_getfd, pidfd, fd, flags);
}

static inline long sys_dup3(int oldfd, int newfd, int flags)
{
	return sys_call3(__NR_dup3, oldfd, newfd, flags);
}

static inline long sys_fcntl(int fd, int cmd, long arg)
{
	return sys_call3(__NR_fcntl, fd, cmd, arg);
}

static inline long sys_mprotect(void *addr, size_t len, int prot)
{
	return sys_call3(__NR_mprotect, (long)addr, (long)len, prot);
}

static inline long sys_madvise(void *addr, size_t len, int advice)
{
	return sys_call3(__NR_madvise, (long)addr, (long)len, advice);
}

static inline long sys_arch_prctl(int code, unsigned long addr)
{
	return sys_call2(__NR_arch_prctl, code, (long)addr);
}

static inline long sys_prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)
{
	return sys_call6(__NR_prctl, option, (long)a2, (long)a3, (long)a4, (long)a5, 0);
}

static inline long sys_epoll_ctl(int epfd, int op, int fd, void *event)
{
	return sys_call4(__NR_epoll_ctl, epfd, op, fd, (long)event);
}

static inline long sys_unshare(unsigned long flags)
{
	return sys_call1(__NR_unshare, (long)flags);
}

static inline long sys_setns(int fd, int nstype)
{
	return sys_call2(__NR_setns, fd, nstype);
}

static inline long sys_openat(int dirfd, const char *path, int flags, int mode)
{
	return sys_call4(__NR_openat, dirfd, (long)path, flags, mode);
}

static inline long sys_personality(unsigned int persona)
{
	return sys_call1(__NR_personality, persona);
}

/* which PRIO_PROCESS, who 0: the calling thread */
static inline long sys_setpriority(int which, int who, int prio)
{
	return sys_call3(__NR_setpriority, which, who, prio);
}

static inline long sys_sched_setscheduler(int pid, int policy, const void *param)
{
	return sys_call3(__NR_sched_setscheduler, pid, policy, (long)param);
}

static inline long sys_seccomp(unsigned int op, unsigned int flags, void *args)
{
	return sys_call3(__NR_seccomp, op, flags, (long)args);
}

static inline long sys_setgroups(int n, const uint32_t *groups)
{
	return sys_call2(__NR_setgroups, n, (long)groups);
}

static inline long sys_fchdir(int fd)
{
	return sys_call1(__NR_fchdir, fd);
}

static inline long sys_chroot(const char *path)
{
	return sys_call1(__NR_chroot, (long)path);
}

static inline long sys_umask(unsigned int mask)
{
	return sys_call1(__NR_umask, mask);
}

static inline long sys_rt_sigaction(int sig, const void *act, void *old, size_t sigsetsize)
{
	return sys_call4(__NR_rt_sigaction, sig, (long)act, (long)old, (long)sigsetsize);
}

static inline long sys_rt_sigprocmask(int how, const uint64_t *set, uint64_t *old)
{
	return sys_call4(__NR_rt_sigprocmask, how, (long)set, (long)old, sizeof(*set));
}

static inline long sys_rt_sigqueueinfo(int tgid, int sig, const void *info)
{
	return sys_call3(__NR_rt_sigqueueinfo, tgid, sig, (long)info);
}

static inline long sys_rt_tgsigqueueinfo(int tgid, int tid, int sig, const void *info)
{
	return sys_call4(__NR_rt_tgsigqueueinfo, tgid, tid, sig, (long)info);
}

static inline long sys_setitimer(int which, const void *value, void *old)
{
	return sys_call3(__NR_setitimer, which, (long)value, (long)old);
}

static inline long sys_timer_create(int clock, void *sev, int *id)
{
	return sys_call3(__NR_timer_create, clock, (long)sev, (long)id);
}

static inline long sys_timer_settime(int id, int flags, const void *its, void *old)
{
	return sys_call4(__NR_timer_settime, id, flags, (long)its, (long)old);
}

static inline long sys_kill(int pid, int sig)
{
	return sys_call2(__NR_kill, pid, sig);
}

/* infop may be NULL: the kernel then only waits (and reaps, without WNOWAIT) */
static inline long sys_waitid(int which, int pid, void *infop, int options)
{
	return sys_call6(__NR_waitid, which, pid, (long)infop, options, 0, 0);
}

static inline long sys_rt_sigtimedwait(const uint64_t *set, void *info, const struct __kernel_timespec *timeout)
{
	return sys_call4(__NR_rt_sigtimedwait, (long)set, (long)info, (long)timeout, sizeof(*set));
}

static inline __attribute__((noreturn)) void sys_exit_group(int code)
{
	for (;;)
		sys_call1(__NR_exit_group, code);
}

#endif /* CREST_SYS_H */
