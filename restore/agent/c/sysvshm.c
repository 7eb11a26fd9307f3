// SPDX-License-Identifier: Apache-2.0
/*
 * sysvshm.c - a task's attachments of SysV shared memory segments, as
 * CRIU's restorer attaches them (restore_mapping, VMA_AREA_SYSVIPC).
 *
 * The engine created the segments, with their contents, in the tree's IPC
 * namespace (PREPARE_NAMESPACES); here the task attaches each of its own
 * with shmat at the dumped address, once everything else is unmapped, and
 * gives every mapping of the attachment its dumped protection (mprotect
 * cut it into these mappings at the dump too) and madvise advice. The plan
 * (restore/sysvshm.go) checked that each attachment is whole: its first
 * VMA carries the segment's id and the shmat flags, the next ones -1.
 */
#include "agent.h"

#define SHM_RDONLY 010000
#define SHM_EXEC 0100000

/* the protection shmat gives a whole attachment */
static int attach_prot(uint32_t shmflg)
{
	int prot = PROT_READ;

	if (!(shmflg & SHM_RDONLY))
		prot |= PROT_WRITE;
	if (shmflg & SHM_EXEC)
		prot |= PROT_EXEC;
	return prot;
}

int attach_sysv_shm(const struct crest_task *t)
{
	const struct crest_vma *v = plan_ptr(t->vmas_off);
	int prot = -1;
	uint32_t i;

	for (i = 0; i < t->nr_vmas; i++, v++) {
		int advice;
		long ret;

		if (v->kind != CREST_VMA_SYSV_SHM)
			continue;
		if (v->src_fd >= 0) {
			ret = sys_call3(__NR_shmat, v->src_fd, (long)v->start, (long)v->flags);
			if (ret < 0)
				return (int)ret;
			if ((uint64_t)ret != v->start)
				return -EFAULT;
			prot = attach_prot(v->flags);
		}
		if (prot < 0)
			return -EINVAL;	/* a part without its attachment: the plan refuses it */
		if ((int)v->prot != prot) {
			ret = sys_mprotect((void *)v->start, v->end - v->start, (int)v->prot);
			if (ret < 0)
				return (int)ret;
		}
		for (advice = 0; advice < 64; advice++) {
			if (!(v->madv & (1ull << advice)))
				continue;
			ret = sys_madvise((void *)v->start, v->end - v->start, advice);
			if (ret < 0)
				return (int)ret;
		}
	}
	return 0;
}
