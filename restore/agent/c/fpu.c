// SPDX-License-Identifier: Apache-2.0
/*
 * fpu.c - the FPU part of a thread's sigframe: an XSAVE image in this
 * CPU's layout, which rt_sigreturn loads with XRSTOR.
 *
 * The frame is the kernel's own format: the legacy FXSAVE area, whose
 * software-reserved bytes say an XSAVE area follows (FP_XSTATE_MAGIC1, its
 * size, its features), the XSAVE header, the components at the offsets
 * CPUID leaf 0xd gives, and FP_XSTATE_MAGIC2 right after. Without XSAVE
 * (or if this CPU lacks a component the thread used) the legacy area
 * alone is used, and the kernel restores x87 and SSE only.
 */
#include "agent.h"

#define FP_XSTATE_MAGIC1 0x46505853u
#define FP_XSTATE_MAGIC2 0x46505845u
#define XSAVE_HDR_OFFSET 512
#define SW_RESERVED_OFFSET 464

struct fpx_sw_bytes {
	uint32_t magic1;
	uint32_t extended_size;
	uint64_t xfeatures;
	uint32_t xstate_size;
	uint32_t padding[7];
};


/* The component data of crest_xstate, by XSAVE component number. */
static const uint8_t *component(const struct crest_xstate *xs, int i, uint32_t *size)
{
	switch (i) {
	case 2: *size = sizeof(xs->ymmh); return xs->ymmh;
	case 3: *size = sizeof(xs->bndregs); return xs->bndregs;
	case 4: *size = sizeof(xs->bndcsr); return xs->bndcsr;
	case 5: *size = sizeof(xs->opmask); return xs->opmask;
	case 6: *size = sizeof(xs->zmm_hi256); return xs->zmm_hi256;
	case 7: *size = sizeof(xs->hi16_zmm); return xs->hi16_zmm;
	case 9: *size = sizeof(xs->pkru); return (const uint8_t *)&xs->pkru;
	}
	*size = 0;
	return NULL;
}

/*
 * Write the thread's FPU state at fx (64-byte aligned, room bytes).
 * Returns 1 for an XSAVE frame, 0 for a legacy one, -errno.
 */
int build_fpstate(uint8_t *fx, uint64_t room, const struct crest_thread *th)
{
	const struct crest_plan *p = agent.plan;
	const struct crest_xstate *xs = &th->xstate;
	struct fpx_sw_bytes sw;
	uint32_t size;
	uint64_t xcr0 = p->xcr0, bv;
	int i;

	if (room < sizeof(th->fxsave))
		return -E2BIG;
	memcpy(fx, th->fxsave, sizeof(th->fxsave));
	memset(fx + SW_RESERVED_OFFSET, 0, sizeof(sw));
	/* the layout is the engine's CPUID reading (plan.h): no CPUID here */
	if (!xs->xstate_bv || !xcr0)
		return 0;
	bv = xs->xstate_bv & CREST_XSTATE_KNOWN;
	if (bv & ~xcr0)
		return -EOPNOTSUPP;	/* the thread used state this CPU does not have */

	size = p->xsave_size;		/* the XSAVE area for what XCR0 enables */
	if ((uint64_t)size + 4 > room || size < XSAVE_HDR_OFFSET + 64)
		return -E2BIG;
	memset(fx + XSAVE_HDR_OFFSET, 0, size - XSAVE_HDR_OFFSET + 4);
	memcpy(fx + XSAVE_HDR_OFFSET, &bv, sizeof(bv));	/* header: xstate_bv, xcomp_bv 0 */
	for (i = 2; i < CREST_XSAVE_COMPONENTS; i++) {
		const uint8_t *src;
		uint32_t have, off = p->xsave_off[i], len = p->xsave_len[i];

		if (!(bv & (1ull << i)))
			continue;
		src = component(xs, i, &have);
		if (!src)
			return -EOPNOTSUPP;
		if (len == 0 || len > have || (uint64_t)off + len > size)
			return -EPROTO;
		memcpy(fx + off, src, len);
	}
	*(uint32_t *)(fx + size) = FP_XSTATE_MAGIC2;

	sw.magic1 = FP_XSTATE_MAGIC1;
	sw.extended_size = size + 4;
	sw.xfeatures = xcr0;
	sw.xstate_size = size;
	memset(sw.padding, 0, sizeof(sw.padding));
	memcpy(fx + SW_RESERVED_OFFSET, &sw, sizeof(sw));
	return 1;
}
