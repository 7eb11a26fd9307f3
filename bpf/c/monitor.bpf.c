// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * monitor.bpf.c - the kernel side of crest's restore monitor.
 *
 * tp_btf programs (cheap to detach, unlike syscall tracepoints) on
 * sys_enter and sys_exit, filtered by syscall number, and on
 * sched_process_fork and sched_process_exit. Only processes whose tgid is in
 * the tracked map are watched; Go seeds it with the engine and every fork of
 * a tracked process adds the child.
 *
 * Events go to one ring buffer. The reader is woken only once a set amount
 * of data waits unread (a quarter of the ring by default), so that it does
 * not compete with the restore for the CPUs; Go reads the rest when the
 * restore is over (a flush). A failed reservation is counted in drops,
 * which Go reports: nothing is lost silently.
 */
#include "kernel.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

/* x86_64 syscall numbers */
#define NR_CLONE 56
#define NR_FUTEX 202
#define NR_SETNS 308
#define NR_CLONE3 435

#define FUTEX_PRIVATE_FLAG 128
#define FUTEX_CLOCK_REALTIME 256
#define FUTEX_WAIT 0
#define FUTEX_WAIT_BITSET 9

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);	/* tgid */
	__type(value, __u32);	/* who added it: 0 Go, else the parent's tgid */
} tracked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);	/* Go may change it before loading */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);	/* 0: drops */
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct crest_config);
} config SEC(".maps");

/*
 * Pointers that make clang keep the event structs in the object's BTF, for
 * bpf2go -type. No program uses them: the loader drops their .bss map.
 */
const struct crest_ev_futex *crest_type_futex;
const struct crest_ev_clone *crest_type_clone;
const struct crest_ev_clone3 *crest_type_clone3;
const struct crest_ev_setns *crest_type_setns;
const struct crest_ev_sys_exit *crest_type_sys_exit;
const struct crest_ev_fork *crest_type_fork;
const struct crest_ev_exit *crest_type_exit;
const struct crest_ev_setns_exit *crest_type_setns_exit;

static __always_inline void count_drop(void)
{
	__u32 k = 0;
	__u64 *n = bpf_map_lookup_elem(&counters, &k);

	if (n)
		*n += 1;
}

static __always_inline struct crest_config *get_config(void)
{
	__u32 k = 0;

	return bpf_map_lookup_elem(&config, &k);
}

/* BPF_RB_NO_WAKEUP until wakeup_bytes wait unread (0: wake every time). */
static __always_inline __u64 wakeup_flag(void)
{
	struct crest_config *cfg = get_config();

	if (!cfg || cfg->wakeup_bytes == 0)
		return BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg->wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline int is_tracked(__u32 tgid)
{
	return bpf_map_lookup_elem(&tracked, &tgid) != NULL;
}

static __always_inline void fill_hdr(struct crest_hdr *h, __u64 pid_tgid, __u32 kind, long nr)
{
	h->ts = bpf_ktime_get_boot_ns();
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->kind = kind;
	h->nr = nr;
}

/* *uaddr into *out; 0 if that memory can not be read */
static __always_inline int read_user_u32(__u64 uaddr, __u32 *out)
{
	return bpf_probe_read_user(out, sizeof(*out), (void *)uaddr) == 0;
}

static __always_inline int futex_wanted(__u64 uaddr, __u32 op)
{
	struct crest_config *cfg = get_config();
	int any = 0;

	if (!cfg)
		return 1;
	if ((op & FUTEX_PRIVATE_FLAG) && !cfg->all_futexes)
		return 0;
#pragma unroll
	for (int i = 0; i < CREST_FUTEX_RANGES; i++) {
		if (cfg->futex_hi[i] <= cfg->futex_lo[i])
			continue;
		any = 1;
		if (uaddr >= cfg->futex_lo[i] && uaddr < cfg->futex_hi[i])
			return 1;
	}
	return !any;
}

static __always_inline void on_futex(struct pt_regs *regs, __u64 pid_tgid)
{
	__u64 uaddr = regs->di;
	__u32 op = regs->si;
	struct crest_ev_futex *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return;
	}
	fill_hdr(&e->h, pid_tgid, CREST_EV_FUTEX, NR_FUTEX);
	e->uaddr = uaddr;
	e->op = op;
	e->val = regs->dx;
	e->utime = regs->r10;
	e->uaddr2 = regs->r8;
	e->val3 = regs->r9;
	e->flags = 0;
	e->pad = 0;
	e->word = 0;
	if (read_user_u32(uaddr, &e->word))
		e->flags |= CREST_WORD_OK;
	bpf_ringbuf_submit(e, wakeup_flag());
}

static __always_inline void on_clone(struct pt_regs *regs, __u64 pid_tgid)
{
	struct crest_ev_clone *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_drop();
		return;
	}
	fill_hdr(&e->h, pid_tgid, CREST_EV_CLONE, NR_CLONE);
	e->flags = regs->di;
	bpf_ringbuf_submit(e, wakeup_flag());
}

/* The first fields of struct clone_args (uapi, stable) */
struct clone_args_head {
	__u64 flags;
	__u64 pidfd;
	__u64 child_tid;
	__u64 parent_tid;
	__u64 exit_signal;
	__u64 stack;
	__u64 stack_size;
	__u64 tls;
	__u64 set_tid;
	__u64 set_tid_size;
};

static __always_inline void on_clone3(struct pt_regs *regs, __u64 pid_tgid)
{
	struct crest_ev_clone3 *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	struct clone_args_head args;
	__u64 uargs;
	__u32 n;

	if (!e) {
		count_drop();
		return;
	}
	fill_hdr(&e->h, pid_tgid, CREST_EV_CLONE3, NR_CLONE3);
	uargs = regs->di;
	e->size = regs->si;
	e->read = 0;
	e->pad = 0;
	__builtin_memset(e->set_tid, 0, sizeof(e->set_tid));
	if (bpf_probe_read_user(&args, sizeof(args), (void *)uargs) != 0) {
		e->flags = 0;
		e->exit_signal = 0;
		e->set_tid_size = 0;
		goto out;
	}
	e->read = CREST_ARGS_OK;
	e->flags = args.flags;
	e->exit_signal = args.exit_signal;
	e->set_tid_size = args.set_tid_size;
	if (args.set_tid_size == 0 || args.set_tid == 0)
		goto out;
	/* the verifier wants a size it can bound: 1..CREST_MAX_SET_TID */
	n = args.set_tid_size > CREST_MAX_SET_TID ? CREST_MAX_SET_TID : args.set_tid_size;
	n = ((n - 1) & (CREST_MAX_SET_TID - 1)) + 1;
	if (bpf_probe_read_user(e->set_tid, n * sizeof(__s32), (void *)args.set_tid) == 0)
		e->read |= CREST_SET_TID_OK;
out:
	bpf_ringbuf_submit(e, wakeup_flag());
}

static __always_inline void on_setns(struct pt_regs *regs, __u64 pid_tgid)
{
	struct crest_ev_setns *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	struct task_struct *task;
	struct fdtable *fdt;
	struct file **fds;
	struct file *f = NULL;
	int fd;

	if (!e) {
		count_drop();
		return;
	}
	fill_hdr(&e->h, pid_tgid, CREST_EV_SETNS, NR_SETNS);
	fd = regs->di;
	e->fd = fd;
	e->nstype = regs->si;
	e->ino = 0;
	e->magic = 0;
	e->flags = 0;
	e->pad = 0;
	/* the target namespace: the inode of the nsfs file at fd */
	task = bpf_get_current_task_btf();
	fdt = BPF_CORE_READ(task, files, fdt);
	if (fd >= 0 && fdt && (unsigned int)fd < BPF_CORE_READ(fdt, max_fds)) {
		fds = BPF_CORE_READ(fdt, fd);
		bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
		if (f) {
			e->ino = BPF_CORE_READ(f, f_inode, i_ino);
			e->magic = BPF_CORE_READ(f, f_inode, i_sb, s_magic);
			e->flags = CREST_INODE_OK;
		}
	}
	bpf_ringbuf_submit(e, wakeup_flag());
}

/*
 * The fork and setns-exit programs read task, pid and namespace fields
 * with plain loads, not a probe-read helper call each: fork runs inside
 * every clone of the restore (about 1 us instead of 1.8). The tracepoint's
 * task pointers are trusted, and the verifier checks every pointer loaded
 * through a trusted one against its lists of trusted and RCU fields, by
 * name, through the whole kernel BTF: about 6 ms of a fresh load for the
 * fork program. Cast to untrusted (read-only) pointers first, the loads
 * need no such check (0.7 ms), and run as loads that a fault (or a NULL
 * pointer) ends with 0 instead of an oops.
 */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define untrusted(p, type) ((type *)bpf_rdonly_cast((void *)(p), bpf_core_type_id_kernel(type)))

/* t's namespaces (t untrusted): eight chains of two loads each (the user
 * namespace is its credentials', not the nsproxy's) */
static __always_inline void read_ns(struct task_struct *t, struct crest_ns *out)
{
	struct nsproxy *ns = t->nsproxy;

	out->uts = ns->uts_ns->ns.inum;
	out->ipc = ns->ipc_ns->ns.inum;
	out->mnt = ns->mnt_ns->ns.inum;
	out->pid_for_children = ns->pid_ns_for_children->ns.inum;
	out->net = ns->net_ns->ns.inum;
	out->time = ns->time_ns->ns.inum;
	out->cgroup = ns->cgroup_ns->ns.inum;
	out->user = t->cred->user_ns->ns.inum;
}

/*
 * A setns's return, with the caller's namespaces after it: the fd the
 * entry resolved may be a pidfd, which names a task, not a namespace.
 */
static __always_inline void on_setns_exit(long ret, __u64 pid_tgid)
{
	struct crest_ev_setns_exit *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_drop();
		return;
	}
	fill_hdr(&e->h, pid_tgid, CREST_EV_SETNS_EXIT, NR_SETNS);
	e->ret = ret;
	read_ns(untrusted(bpf_get_current_task_btf(), struct task_struct), &e->ns);
	bpf_ringbuf_submit(e, wakeup_flag());
}

/*
 * The hot path. Both syscall programs run for every syscall of the machine
 * while attached, so an uninteresting one leaves after a compare of the
 * syscall number (sys_enter: the tracepoint's argument; sys_exit: a plain
 * load of regs->orig_ax, regs being a trusted BTF pointer, no helper) and a
 * private futex (the Go runtime's, glibc's locks) after one more load;
 * only then come the helper for the tgid and the tracked map.
 */
static __always_inline int watched_nr(long nr)
{
	return nr == NR_FUTEX || nr == NR_CLONE || nr == NR_CLONE3 || nr == NR_SETNS;
}

SEC("tp_btf/sys_enter")
int crest_sys_enter(__u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long nr = (long)ctx[1];
	__u64 pid_tgid;

	if (!watched_nr(nr))
		return 0;
	if (nr == NR_FUTEX && !futex_wanted(regs->di, regs->si))
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	if (!is_tracked(pid_tgid >> 32))
		return 0;
	switch (nr) {
	case NR_FUTEX:
		on_futex(regs, pid_tgid);
		break;
	case NR_CLONE:
		on_clone(regs, pid_tgid);
		break;
	case NR_CLONE3:
		on_clone3(regs, pid_tgid);
		break;
	case NR_SETNS:
		on_setns(regs, pid_tgid);
		break;
	}
	return 0;
}

SEC("tp_btf/sys_exit")
int crest_sys_exit(__u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long ret = (long)ctx[1];
	struct crest_ev_sys_exit *e;
	__u64 pid_tgid;
	long nr;

	nr = regs->orig_ax;
	if (!watched_nr(nr))
		return 0;
	/* a new task's first return from clone: the fork event has it */
	if ((nr == NR_CLONE || nr == NR_CLONE3) && ret == 0)
		return 0;
	if (nr == NR_FUTEX && !futex_wanted(regs->di, regs->si))
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	if (!is_tracked(pid_tgid >> 32))
		return 0;
	if (nr == NR_SETNS) {
		on_setns_exit(ret, pid_tgid);
		return 0;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	fill_hdr(&e->h, pid_tgid, CREST_EV_SYS_EXIT, nr);
	e->ret = ret;
	e->uaddr = 0;
	e->word = 0;
	e->flags = 0;
	if (nr == NR_FUTEX) {
		__u32 cmd = regs->si & ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);

		/* the word as a wait returns (did the stage change?); a
		 * wake's word at its exit tells nothing its entry did not */
		e->uaddr = regs->di;
		if ((cmd == FUTEX_WAIT || cmd == FUTEX_WAIT_BITSET) && read_user_u32(e->uaddr, &e->word))
			e->flags = CREST_WORD_OK;
	}
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

/* The pid of p at every level, 0 beyond its own. */
static __always_inline void pid_levels(struct pid *p, unsigned int level, __s32 *out)
{
#pragma unroll
	for (int i = 0; i < CREST_MAX_LEVELS; i++)
		out[i] = i <= level ? p->numbers[i].nr : 0;
}

SEC("tp_btf/sched_process_fork")
int crest_fork(__u64 *ctx)
{
	struct task_struct *parent = untrusted(ctx[0], struct task_struct);
	struct task_struct *child = untrusted(ctx[1], struct task_struct);
	struct crest_ev_fork *e;
	__u32 ptgid = parent->tgid;
	__u32 ctgid = child->tgid;
	struct pid *pp, *pl, *cp, *cl, *rp;

	if (!is_tracked(ptgid))
		return 0;
	if (ctgid != ptgid)
		bpf_map_update_elem(&tracked, &ctgid, &ptgid, BPF_ANY);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	e->h.ts = bpf_ktime_get_boot_ns();
	e->h.pid = ptgid;
	e->h.tid = parent->pid;
	e->h.kind = CREST_EV_FORK;
	e->h.nr = -1;
	e->child_pid = ctgid;
	e->child_tid = child->pid;
	pp = parent->thread_pid;
	pl = parent->group_leader->thread_pid;
	cp = child->thread_pid;
	cl = child->group_leader->thread_pid;
	rp = child->real_parent->group_leader->thread_pid;
	e->parent_level = pp->level;
	e->child_level = cp->level;
	e->real_parent_level = rp->level;
	e->pad = 0;
	pid_levels(pp, e->parent_level, e->parent_tids);
	pid_levels(pl, e->parent_level, e->parent_pids);
	pid_levels(cp, e->child_level, e->child_tids);
	pid_levels(cl, e->child_level, e->child_pids);
	pid_levels(rp, e->real_parent_level, e->real_parent_pids);
	read_ns(child, &e->child_ns);
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

SEC("tp_btf/sched_process_exit")
int crest_exit(__u64 *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx[0];
	int group_dead = (int)ctx[1] & 1;
	struct crest_ev_exit *e;
	__u32 tgid = task->tgid;

	if (!is_tracked(tgid))
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (e) {
		e->h.ts = bpf_ktime_get_boot_ns();
		e->h.pid = tgid;
		e->h.tid = task->pid;
		e->h.kind = CREST_EV_EXIT;
		e->h.nr = -1;
		e->exit_code = task->exit_code;
		e->group_dead = group_dead;
		bpf_ringbuf_submit(e, wakeup_flag());
	} else {
		count_drop();
	}
	if (group_dead)
		bpf_map_delete_elem(&tracked, &tgid);
	return 0;
}
