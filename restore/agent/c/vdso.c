// SPDX-License-Identifier: Apache-2.0
/*
 * vdso.c - the step clock without a syscall.
 *
 * While a restore runs, crest's eBPF monitor hooks every syscall of the
 * machine, so each clock reading the agent makes as a syscall costs the
 * whole machine something. The kernel's vDSO reads CLOCK_BOOTTIME in user
 * space: the launcher looks __vdso_clock_gettime up in the vDSO its
 * auxiliary vector names (main.c), forked tasks inherit both the mapping and
 * what was found, and the restorer looks it up again in the fresh vDSO it
 * maps where the image had one (mem.c). Until then, and whenever the vDSO
 * is not what this file expects, the clock is read with the syscall.
 *
 * The vDSO's functions follow the C ABI: the stack is 16-byte aligned at
 * the call, which every way into the agent's C keeps (_start, jump_to in
 * mem.c, clone3_thread in threads.c all start on an aligned stack).
 */
#include "agent.h"
#include <linux/elf.h>

/* missing from <linux/elf.h> */
#define DT_GNU_HASH 0x6ffffef5

typedef long (*clock_gettime_fn)(int clock, struct __kernel_timespec *ts);

/*
 * NULL while the process has no usable vDSO. Each task's restorer sets its
 * copy's (mem.c): it runs from the copy, addressing it relative to rip.
 */
static clock_gettime_fn vdso_clock_gettime_fn;

static int streq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

/*
 * How many symbols .dynsym has: nchain of the SysV hash table, or, with
 * only a GNU hash table, one past the highest symbol its chains reach.
 * end bounds what may be read; 0 when the tables do not fit below it.
 */
static uint32_t nr_dynsyms(const uint32_t *hash, const uint32_t *gnu_hash, uint64_t end)
{
	const uint32_t *buckets, *chain;
	uint32_t nbuckets, symoffset, last = 0, i;

	if (hash)
		return (uint64_t)(hash + 2) <= end ? hash[1] : 0;
	if (!gnu_hash || (uint64_t)(gnu_hash + 4) > end)
		return 0;
	nbuckets = gnu_hash[0];
	symoffset = gnu_hash[1];
	/* the bloom filter's gnu_hash[2] words are 64-bit on ELF64 */
	buckets = gnu_hash + 4 + 2 * (uint64_t)gnu_hash[2];
	chain = buckets + nbuckets;
	if ((uint64_t)chain > end)
		return 0;
	for (i = 0; i < nbuckets; i++) {
		if (buckets[i] > last)
			last = buckets[i];
	}
	if (last < symoffset)
		return symoffset;
	/* a chain ends at the entry whose low bit is set */
	for (;; last++) {
		if ((uint64_t)(chain + (last - symoffset) + 1) > end)
			return 0;
		if (chain[last - symoffset] & 1)
			return last + 1;
	}
}

/*
 * Find __vdso_clock_gettime in the vDSO mapped at base: its ELF header,
 * PT_DYNAMIC, then .dynsym by name (the x86-64 vDSO defines each name
 * once, version LINUX_2.6, so versions are not checked). Returns its
 * address, or 0 if anything is not as expected. Every address is checked
 * against the vDSO's one PT_LOAD before it is read.
 */
static uint64_t vdso_lookup(uint64_t base)
{
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)base;
	const Elf64_Phdr *ph;
	const Elf64_Dyn *dyn = NULL;
	const Elf64_Sym *sym = NULL;
	const uint32_t *hash = NULL, *gnu_hash = NULL;
	const char *str = NULL;
	uint64_t bias = 0, size = 0, strsz = 0, dyn_end = 0;
	int have_load = 0;
	uint32_t i, n;

	/* the program headers must be in the first page, the one surely mapped */
	if (!base || eh->e_ident[EI_MAG0] != ELFMAG0 || eh->e_ident[EI_MAG1] != ELFMAG1 ||
	    eh->e_ident[EI_MAG2] != ELFMAG2 || eh->e_ident[EI_MAG3] != ELFMAG3 ||
	    eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_machine != EM_X86_64 ||
	    eh->e_phentsize != sizeof(*ph) || eh->e_phoff > 4096 ||
	    eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(*ph) > 4096)
		return 0;
	ph = (const Elf64_Phdr *)(base + eh->e_phoff);
	for (i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type == PT_LOAD && !have_load) {
			/* the vDSO is linked at 0, but nothing depends on it */
			bias = base + ph[i].p_offset - ph[i].p_vaddr;
			size = ph[i].p_offset + ph[i].p_memsz;
			have_load = 1;
		}
	}
	for (i = 0; i < eh->e_phnum && have_load; i++) {
		if (ph[i].p_type == PT_DYNAMIC) {
			dyn = (const Elf64_Dyn *)(bias + ph[i].p_vaddr);
			dyn_end = bias + ph[i].p_vaddr + ph[i].p_memsz;
		}
	}
	if (!dyn || (uint64_t)dyn < base || dyn_end > base + size)
		return 0;

#define IN_VDSO(addr) ((addr) >= base && (addr) < base + size)
	for (; (uint64_t)(dyn + 1) <= dyn_end && dyn->d_tag != DT_NULL; dyn++) {
		uint64_t addr = bias + dyn->d_un.d_ptr;

		switch (dyn->d_tag) {
		case DT_SYMTAB:
			sym = IN_VDSO(addr) ? (const Elf64_Sym *)addr : NULL;
			break;
		case DT_STRTAB:
			str = IN_VDSO(addr) ? (const char *)addr : NULL;
			break;
		case DT_STRSZ:
			strsz = dyn->d_un.d_val;
			break;
		case DT_HASH:
			hash = IN_VDSO(addr) ? (const uint32_t *)addr : NULL;
			break;
		case DT_GNU_HASH:
			gnu_hash = IN_VDSO(addr) ? (const uint32_t *)addr : NULL;
			break;
		}
	}
	if (!sym || !str || strsz == 0 || (uint64_t)str + strsz > base + size || str[strsz - 1] != '\0')
		return 0;
	n = nr_dynsyms(hash, gnu_hash, base + size);
	if ((uint64_t)(sym + n) > base + size)
		return 0;
	for (i = 0; i < n; i++) {
		uint64_t addr = bias + sym[i].st_value;

		if (sym[i].st_name >= strsz || sym[i].st_shndx == SHN_UNDEF ||
		    ELF64_ST_TYPE(sym[i].st_info) != STT_FUNC || !streq(str + sym[i].st_name, "__vdso_clock_gettime"))
			continue;
		return IN_VDSO(addr) ? addr : 0;
	}
#undef IN_VDSO
	return 0;
}

void vdso_use(uint64_t base)
{
	vdso_clock_gettime_fn = (clock_gettime_fn)vdso_lookup(base);
}

void vdso_drop(void)
{
	vdso_clock_gettime_fn = NULL;
}

long vdso_clock_gettime(int clock, struct __kernel_timespec *ts)
{
	/* the vDSO makes the syscall itself for a clock it can not read */
	if (vdso_clock_gettime_fn)
		return vdso_clock_gettime_fn(clock, ts);
	return sys_clock_gettime(clock, ts);
}
