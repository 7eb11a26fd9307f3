/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * events.h - what the monitor's programs write to the ring buffer, and the
 * configuration Go writes to them. bpf2go generates the Go mirrors of these
 * structs (monitor_x86_bpfel.go), so both sides share this one definition.
 *
 * Every event starts with struct crest_hdr; kind says which struct follows.
 * Pids are global (the kernel's init namespace); fork events carry the pid
 * at every namespace level, from which Go learns everyone's namespace pids.
 */
#ifndef CREST_EVENTS_H
#define CREST_EVENTS_H

#include <linux/types.h>

/* MAX_PID_NS_LEVEL: the longest set_tid array clone3 accepts */
#define CREST_MAX_SET_TID 32
/* pid namespace levels recorded at fork; deeper ones are cut (see levels) */
#define CREST_MAX_LEVELS 8
#define CREST_FUTEX_RANGES 4

enum crest_kind {
	CREST_EV_FUTEX = 1,	/* sys_enter futex */
	CREST_EV_CLONE = 2,	/* sys_enter clone */
	CREST_EV_CLONE3 = 3,	/* sys_enter clone3 */
	CREST_EV_SETNS = 4,	/* sys_enter setns */
	CREST_EV_SYS_EXIT = 5,	/* sys_exit of any of the above */
	CREST_EV_FORK = 6,	/* sched_process_fork */
	CREST_EV_EXIT = 7,	/* sched_process_exit */
	CREST_EV_SETNS_EXIT = 8,	/* sys_exit of setns, with the namespaces after it */
};

/* crest_futex.flags, crest_sys_exit.flags */
#define CREST_WORD_OK 0x1	/* word holds *uaddr */
/* crest_clone3.flags */
#define CREST_ARGS_OK 0x1	/* clone_args read from user memory */
#define CREST_SET_TID_OK 0x2	/* set_tid read from user memory */
/* crest_setns.flags */
#define CREST_INODE_OK 0x1	/* fd resolved to a file and its inode */

/*
 * A task's namespaces: the inode numbers (ns.inum) that its /proc/PID/ns/
 * links show, read from its nsproxy; 0 where there was none to read.
 */
struct crest_ns {
	__u32 uts;
	__u32 ipc;
	__u32 mnt;
	__u32 pid_for_children;	/* the pid namespace its children are born in */
	__u32 net;
	__u32 time;		/* the one its clocks read */
	__u32 cgroup;
	__u32 user;		/* its credentials' */
};

struct crest_hdr {
	__u64 ts;		/* bpf_ktime_get_boot_ns */
	__u32 pid;		/* tgid */
	__u32 tid;
	__u32 kind;		/* enum crest_kind */
	__s32 nr;		/* syscall number, -1 for fork and exit */
};

struct crest_ev_futex {
	struct crest_hdr h;
	__u64 uaddr;
	__u64 utime;		/* the fourth argument: timeout or val2 */
	__u64 uaddr2;
	__u32 op;
	__u32 val;
	__u32 val3;
	__u32 word;		/* *uaddr at entry */
	__u32 flags;
	__u32 pad;
};

struct crest_ev_clone {
	struct crest_hdr h;
	__u64 flags;		/* clone(2)'s first argument */
};

struct crest_ev_clone3 {
	struct crest_hdr h;
	__u64 flags;		/* clone_args.flags */
	__u64 exit_signal;
	__u64 set_tid_size;
	__u64 size;		/* clone3's second argument */
	__u32 read;		/* CREST_ARGS_OK, CREST_SET_TID_OK */
	__s32 set_tid[CREST_MAX_SET_TID];
	__u32 pad;
};

struct crest_ev_setns {
	struct crest_hdr h;
	__u64 ino;		/* inode of the file at fd */
	__u64 magic;		/* its file system's magic (nsfs: 0x6e736673) */
	__s32 fd;
	__s32 nstype;
	__u32 flags;
	__u32 pad;
};

struct crest_ev_sys_exit {
	struct crest_hdr h;
	__s64 ret;
	__u64 uaddr;		/* futex: the first argument */
	__u32 word;		/* futex: *uaddr at exit */
	__u32 flags;
};

/*
 * The sys_exit of a setns: the caller's namespaces after the call, which
 * say what it joined even when the fd was not an nsfs file (a pidfd).
 */
struct crest_ev_setns_exit {
	struct crest_hdr h;
	__s64 ret;
	struct crest_ns ns;
};

struct crest_ev_fork {
	struct crest_hdr h;	/* pid, tid: the parent's */
	__u32 child_pid;	/* tgid */
	__u32 child_tid;
	__u32 parent_level;	/* the parent's pid namespace level */
	__u32 child_level;
	__s32 parent_tids[CREST_MAX_LEVELS];	/* by level, 0 beyond */
	__s32 parent_pids[CREST_MAX_LEVELS];
	__s32 child_tids[CREST_MAX_LEVELS];
	__s32 child_pids[CREST_MAX_LEVELS];
	/* the child's parent (tgid) by level: the forker's, or with
	 * CLONE_PARENT the forker's own parent; 0 where it has no number */
	__s32 real_parent_pids[CREST_MAX_LEVELS];
	__u32 real_parent_level;
	__u32 pad;
	struct crest_ns child_ns;	/* the child's namespaces as it is born */
};

struct crest_ev_exit {
	struct crest_hdr h;
	__s32 exit_code;	/* wait status as the kernel keeps it */
	__u32 group_dead;	/* the last thread of its process */
};

/* The one entry of the config map. */
struct crest_config {
	__u32 wakeup_bytes;	/* wake the reader once this much is unread (0: always) */
	__u32 all_futexes;	/* also FUTEX_PRIVATE_FLAG ones (the Go runtime's) */
	/* futexes inside [lo, hi) only, when any range is set */
	__u64 futex_lo[CREST_FUTEX_RANGES];
	__u64 futex_hi[CREST_FUTEX_RANGES];
};

#endif
