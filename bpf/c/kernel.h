/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * kernel.h - the few kernel structures the monitor reads, as CO-RE
 * definitions: only the fields used, with preserve_access_index, so that
 * libbpf/cilium relocate every offset against the running kernel's BTF and
 * the repository needs no vmlinux.h.
 */
#ifndef CREST_KERNEL_H
#define CREST_KERNEL_H

#include <linux/types.h>

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* x86_64: the user registers saved at syscall entry, still there at exit */
struct pt_regs {
	unsigned long r10;
	unsigned long r8;
	unsigned long r9;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
};

struct upid {
	int nr;
	void *ns;
};

struct pid {
	unsigned int level;
	struct upid numbers[1];
};

struct super_block {
	unsigned long s_magic;
};

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
};

struct file {
	struct inode *f_inode;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

/*
 * Every namespace embeds a struct ns_common named ns, whose inum is the
 * inode number /proc/PID/ns/ links show (6.18 moved ns_common's other
 * fields about; inum kept its name).
 */
struct ns_common {
	unsigned int inum;
};

struct uts_namespace {
	struct ns_common ns;
};

struct ipc_namespace {
	struct ns_common ns;
};

struct mnt_namespace {
	struct ns_common ns;
};

struct pid_namespace {
	struct ns_common ns;
};

struct net {
	struct ns_common ns;
};

struct time_namespace {
	struct ns_common ns;
};

struct cgroup_namespace {
	struct ns_common ns;
};

struct user_namespace {
	struct ns_common ns;
};

/* the task's credentials (the subjective ones, as setns and /proc see) */
struct cred {
	struct user_namespace *user_ns;
};

struct nsproxy {
	struct uts_namespace *uts_ns;
	struct ipc_namespace *ipc_ns;
	struct mnt_namespace *mnt_ns;
	struct pid_namespace *pid_ns_for_children;
	struct net *net_ns;
	struct time_namespace *time_ns;
	struct cgroup_namespace *cgroup_ns;
};

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	struct pid *thread_pid;
	struct task_struct *group_leader;
	struct task_struct *real_parent;
	struct files_struct *files;
	struct nsproxy *nsproxy;
	const struct cred *cred;
};

#pragma clang attribute pop

#endif
