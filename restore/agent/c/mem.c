// SPDX-License-Identifier: Apache-2.0
/*
 * mem.c - a task's memory, as CRIU's restorer does it.
 *
 * The agent was loaded wherever the kernel liked, which may be where the
 * task's memory must go. So it first copies its own image (text, data and
 * bss: it has no relocations, everything is addressed relative to rip)
 * into the crest area, switches to a stack there and goes on in the copy
 * (restorer.c). From there it unmaps everything outside the crest area,
 * maps the task's VMAs, fills them from the pages files, maps a fresh
 * vdso where the old one was, sets the final protections, the madvise
 * advice and the mm fields. The crest area itself goes last, once the thread is back in its
 * own registers: the engine injects that munmap with ptrace (finish.go),
 * as CRIU does.
 */
#include "agent.h"
#include <linux/prctl.h>

#define ARCH_MAP_VDSO_64 0x2003
/* the top of a 47-bit user address space */
#define TASK_SIZE_47 0x7ffffffff000ull
#define PAGE_SIZE 4096ull
#define MADV_POPULATE_WRITE 23	/* Linux 5.14 */

extern char __ehdr_start[] __attribute__((visibility("hidden")));
extern char _end[] __attribute__((visibility("hidden")));

/* A call of fn on the stack sp, 16-byte aligned as the C ABI (and the vDSO) wants. */
static __attribute__((noreturn)) void jump_to(uint64_t fn, uint64_t sp, const void *arg)
{
	asm volatile("mov %0, %%rsp\n\t"
		     "and $-16, %%rsp\n\t"
		     "xor %%ebp, %%ebp\n\t"
		     "call *%1\n\t"
		     "ud2"
		     :
		     : "r"(sp), "r"(fn), "D"(arg)
		     : "memory");
	__builtin_unreachable();
}

__attribute__((noreturn)) void restore_memory(const struct crest_task *t)
{
	const struct crest_plan *p = agent.plan;
	uint64_t base = (uint64_t)__ehdr_start;
	uint64_t end = ((uint64_t)_end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	long ret;

	step_begin(CREST_STEP_MEMORY);
	if (end - base > p->restorer_size)
		task_fail(CREST_STEP_MEMORY, -E2BIG);
	ret = sys_mmap((void *)p->restorer_addr, p->restorer_size, PROT_READ | PROT_WRITE | PROT_EXEC,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (ret < 0 || (uint64_t)ret != p->restorer_addr)
		task_fail(CREST_STEP_MEMORY, ret < 0 ? ret : -EEXIST);
	/* one stack per thread; the leader goes on on the first */
	ret = sys_mmap((void *)p->stack_addr, p->stack_size * p->nr_stacks, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (ret < 0 || (uint64_t)ret != p->stack_addr)
		task_fail(CREST_STEP_MEMORY, ret < 0 ? ret : -EEXIST);
	/* from here on, nothing written to the old image is seen by the copy */
	memcpy((void *)p->restorer_addr, (void *)base, end - base);
	jump_to((uint64_t)restorer_main - base + p->restorer_addr, p->stack_addr + p->stack_size, t);
}

static int vma_mapped(const struct crest_vma *v)
{
	return v->kind == CREST_VMA_ANON_PRIVATE || v->kind == CREST_VMA_FILE_PRIVATE ||
	       v->kind == CREST_VMA_FILE_SHARED;
}

/* Unmap everything but the crest area: the agent's image, stack, vdso. */
static int unmap_all(void)
{
	const struct crest_plan *p = agent.plan;
	uint64_t end = p->area_start + p->area_size;
	long ret;

	ret = sys_munmap((void *)0, p->area_start);
	if (ret < 0)
		return (int)ret;
	return (int)sys_munmap((void *)end, TASK_SIZE_47 - end);
}

/* Whether any page run falls inside v. */
static int vma_has_pages(const struct crest_task *t, const struct crest_vma *v)
{
	const struct crest_run *r = plan_ptr(t->runs_off);
	uint32_t i;

	for (i = 0; i < t->nr_runs; i++, r++) {
		if (r->vaddr < v->end && r->vaddr + r->nr_pages * PAGE_SIZE > v->start)
			return 1;
	}
	return 0;
}

/*
 * The prot a VMA is mapped with: writable until its pages are in when it
 * has any (mprotect_vmas then sets the real prot), else its own. A private
 * mapping that was never writable must not become so even for a moment:
 * the kernel would account it (VM_ACCOUNT) and merge it with a neighbour
 * that the dumped layout kept apart (a RELRO page next to read-only text).
 * Shared mappings never get pages (their content is their file's), and a
 * read-only shared mapping of a read-only fd can not be mapped writable.
 */
static int map_prot(const struct crest_task *t, const struct crest_vma *v)
{
	if (v->kind != CREST_VMA_FILE_SHARED && !(v->prot & PROT_WRITE) && vma_has_pages(t, v))
		return (int)(v->prot | PROT_WRITE);
	return (int)v->prot;
}

static int map_vmas(const struct crest_task *t)
{
	const struct crest_vma *v = plan_ptr(t->vmas_off);
	const uint32_t keep = MAP_SHARED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_NORESERVE;
	uint32_t i;

	for (i = 0; i < t->nr_vmas; i++, v++) {
		long ret;

		if (!vma_mapped(v))
			continue;
		ret = sys_mmap((void *)v->start, v->end - v->start, map_prot(t, v),
			       (int)((v->flags & keep) | MAP_FIXED), v->src_fd,
			       v->kind == CREST_VMA_ANON_PRIVATE ? 0 : (long)v->pgoff);
		if (ret < 0)
			return (int)ret;
		if ((uint64_t)ret != v->start)
			return -EFAULT;
	}
	return 0;
}

static int fill_pages(const struct crest_task *t)
{
	const struct crest_run *r = plan_ptr(t->runs_off);
	uint32_t i;

	for (i = 0; i < t->nr_runs; i++, r++) {
		char *dst = (char *)r->vaddr;
		uint64_t left = r->nr_pages * PAGE_SIZE;
		long off = (long)r->offset;

		/*
		 * Fault the run's pages in with one call rather than one
		 * page fault each as pread writes them; older kernels refuse
		 * the advice, and the faults then come as before.
		 */
		if (r->nr_pages > 1)
			sys_madvise(dst, left, MADV_POPULATE_WRITE);
		while (left > 0) {
			long n = sys_pread(r->src_fd, dst, left, off);

			if (n < 0)
				return (int)n;
			if (n == 0)
				return -EIO;	/* the pages file is shorter than its pagemap */
			dst += n;
			off += n;
			left -= (uint64_t)n;
		}
	}
	return 0;
}

/*
 * A fresh vdso, mapped where the image had it: ARCH_MAP_VDSO_64 puts the
 * vvar pages at the address given and the vdso text right after them, the
 * layout this kernel dumps ([vvar][vvar_vclock][vdso] as VVAR + VDSO).
 */
static int map_vdso(const struct crest_task *t)
{
	const struct crest_vma *v = plan_ptr(t->vmas_off);
	const struct crest_vma *vvar = NULL, *vdso = NULL;
	uint32_t i;
	long ret;

	for (i = 0; i < t->nr_vmas; i++) {
		if (v[i].kind == CREST_VMA_VVAR)
			vvar = &v[i];
		else if (v[i].kind == CREST_VMA_VDSO)
			vdso = &v[i];
	}
	if (!vdso)
		return 0;
	if (!vvar || vvar->end != vdso->start)
		return -EOPNOTSUPP;
	ret = sys_arch_prctl(ARCH_MAP_VDSO_64, vvar->start);
	if (ret < 0)
		return (int)ret;
	/*
	 * The step clock goes through the new vDSO, which the kernel put at
	 * vdso->start: its vvar pages are as many as the image's, the image
	 * being of this kernel (of another, the task's own calls into its
	 * vDSO would miss too). The lookup checks the ELF found there.
	 */
	vdso_use(vdso->start);
	return 0;
}

static int mprotect_vmas(const struct crest_task *t)
{
	const struct crest_vma *v = plan_ptr(t->vmas_off);
	uint32_t i;

	for (i = 0; i < t->nr_vmas; i++, v++) {
		long ret;

		if (!vma_mapped(v) || map_prot(t, v) == (int)v->prot)
			continue;
		ret = sys_mprotect((void *)v->start, v->end - v->start, (int)v->prot);
		if (ret < 0)
			return (int)ret;
	}
	return 0;
}

/* The madvise(2) advice each VMA had: bit N of madv is advice N (CRIU's). */
static int madvise_vmas(const struct crest_task *t)
{
	const struct crest_vma *v = plan_ptr(t->vmas_off);
	uint32_t i;
	int advice;

	for (i = 0; i < t->nr_vmas; i++, v++) {
		if (!vma_mapped(v) || !v->madv)
			continue;
		for (advice = 0; advice < 64; advice++) {
			long ret;

			if (!(v->madv & (1ull << advice)))
				continue;
			ret = sys_madvise((void *)v->start, v->end - v->start, advice);
			if (ret < 0)
				return (int)ret;
		}
	}
	return 0;
}

static int set_mm(const struct crest_task *t)
{
	const struct crest_mm *mm = plan_ptr(t->mm_off);
	struct prctl_mm_map map;
	long ret;

	memset(&map, 0, sizeof(map));
	map.start_code = mm->start_code;
	map.end_code = mm->end_code;
	map.start_data = mm->start_data;
	map.end_data = mm->end_data;
	map.start_brk = mm->start_brk;
	map.brk = mm->brk;
	map.start_stack = mm->start_stack;
	map.arg_start = mm->arg_start;
	map.arg_end = mm->arg_end;
	map.env_start = mm->env_start;
	map.env_end = mm->env_end;
	map.auxv = (__u64 *)plan_ptr(mm->auxv_off);
	map.auxv_size = mm->nr_auxv * sizeof(uint64_t);
	map.exe_fd = (uint32_t)mm->exe_fd;
	ret = sys_prctl(PR_SET_MM, PR_SET_MM_MAP, (unsigned long)&map, sizeof(map), 0);
	return ret < 0 ? (int)ret : 0;
}

/* Runs in the restorer's copy, on its stack. */
int restore_vmas(const struct crest_task *t)
{
	int ret;

	/*
	 * The old vDSO goes with everything else: the step clock is the
	 * syscall until map_vdso maps a new one. This and map_vdso run in the
	 * copy and so set the copy's variable, which the task's threads share.
	 */
	vdso_drop();
	ret = unmap_all();
	if (ret == 0)
		ret = map_vmas(t);
	if (ret == 0)
		ret = attach_sysv_shm(t);
	if (ret == 0)
		ret = fill_pages(t);
	if (ret == 0)
		ret = map_vdso(t);
	if (ret == 0)
		ret = mprotect_vmas(t);
	if (ret == 0)
		ret = madvise_vmas(t);
	if (ret == 0)
		ret = set_mm(t);
	/* how the kernel lays out and maps memory from now on; the threads,
	 * cloned later, inherit it */
	if (ret == 0 && t->personality != 0) {
		long p = sys_personality(t->personality);

		ret = p < 0 ? (int)p : 0;
	}
	return ret;
}
