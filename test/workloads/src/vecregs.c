/*
 * vecregs - one process (no libc) that keeps patterns in its AVX-512
 * registers for its whole life and checks them every tick, so that a
 * restore that loses any part of a thread's xsave state shows: the upper
 * halves of ymm8-15 (AVX, xsave component 2), the upper 256 bits of
 * zmm8-15 (ZMM_Hi256, 6), all of zmm16-31 (Hi16_ZMM, 7) and k1-k7
 * (opmask, 5). Every 10 ms it sleeps (nanosleep, where a dump mostly
 * freezes it), stores the registers and compares them with the patterns:
 * "vecregs N" to out-vecregs.log, or "CORRUPT tick=N <register>" and exit
 * 3. Only the compiler's own code runs between the checks, built without
 * AVX (-mno-avx): it may use the low 128 bits of xmm8-15 (legacy SSE
 * leaves the rest alone), never zmm16-31 or the opmasks. A CPU without
 * AVX-512 writes "setup: no AVX-512" and exits 2.
 *
 * build: gcc -static -nostdlib -ffreestanding -O2 -mno-avx -fno-stack-protector -fcf-protection=none -o vecregs vecregs.c
 */
#include "nolibc.h"

#define NR_exit_group 231

/* the pattern of byte b of register r: no two bytes of the set alike */
static unsigned char pat(int r, int b)
{
	return (unsigned char)(r * 64 + b + 0x11) ^ (unsigned char)(r << 3);
}

static unsigned char want_zmm[32][64] __attribute__((aligned(64)));
static unsigned char got_zmm[32][64] __attribute__((aligned(64)));
static unsigned short want_k[8], got_k[8];

static int has_avx512(void)
{
	unsigned int a, b, c, d, lo, hi;

	asm volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
	if (!(c & (1u << 27))) /* OSXSAVE */
		return 0;
	asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	if ((lo & 0xe6) != 0xe6) /* SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM enabled */
		return 0;
	asm volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
	return (b >> 16) & 1; /* AVX512F */
}

#define LOAD(n) "vmovdqa64 " #n "*64(%0), %%zmm" #n "\n\t"
#define STORE(n) "vmovdqa64 %%zmm" #n ", " #n "*64(%0)\n\t"

static void load(void)
{
	asm volatile(LOAD(8) LOAD(9) LOAD(10) LOAD(11) LOAD(12) LOAD(13) LOAD(14) LOAD(15)
		     LOAD(16) LOAD(17) LOAD(18) LOAD(19) LOAD(20) LOAD(21) LOAD(22) LOAD(23)
		     LOAD(24) LOAD(25) LOAD(26) LOAD(27) LOAD(28) LOAD(29) LOAD(30) LOAD(31)
		     : : "r"(want_zmm) : "memory");
	asm volatile("kmovw 2(%0), %%k1\n\tkmovw 4(%0), %%k2\n\tkmovw 6(%0), %%k3\n\t"
		     "kmovw 8(%0), %%k4\n\tkmovw 10(%0), %%k5\n\tkmovw 12(%0), %%k6\n\tkmovw 14(%0), %%k7"
		     : : "r"(want_k) : "memory");
}

static void store(void)
{
	asm volatile(STORE(8) STORE(9) STORE(10) STORE(11) STORE(12) STORE(13) STORE(14) STORE(15)
		     STORE(16) STORE(17) STORE(18) STORE(19) STORE(20) STORE(21) STORE(22) STORE(23)
		     STORE(24) STORE(25) STORE(26) STORE(27) STORE(28) STORE(29) STORE(30) STORE(31)
		     : : "r"(got_zmm) : "memory");
	asm volatile("kmovw %%k1, 2(%0)\n\tkmovw %%k2, 4(%0)\n\tkmovw %%k3, 6(%0)\n\t"
		     "kmovw %%k4, 8(%0)\n\tkmovw %%k5, 10(%0)\n\tkmovw %%k6, 12(%0)\n\tkmovw %%k7, 14(%0)"
		     : : "r"(got_k) : "memory");
}

static void corrupt(u64 tick, const char *what)
{
	say("CORRUPT tick=", tick, what);
	sys(NR_exit_group, 3, 0, 0, 0, 0, 0);
}

/* the name of register r's part: "zmm16", "ymm8 high", "zmm8 bits 256-511" */
static const char *reg_name(const char *kind, int r, const char *part)
{
	static char name[40];
	char *o = put(name, kind);

	o = putnum(o, (u64)r);
	o = put(o, part);
	*o = 0;
	return name;
}

static void check(u64 tick)
{
	store();
	for (int r = 8; r < 16; r++) {
		/* bits 128-255 (ymmh) and 256-511 (ZMM_Hi256): the low 128
		 * bits are the compiler's */
		if (!same(got_zmm[r] + 16, want_zmm[r] + 16, 16))
			corrupt(tick, reg_name("ymm", r, " high"));
		if (!same(got_zmm[r] + 32, want_zmm[r] + 32, 32))
			corrupt(tick, reg_name("zmm", r, " bits 256-511"));
	}
	for (int r = 16; r < 32; r++)
		if (!same(got_zmm[r], want_zmm[r], 64))
			corrupt(tick, reg_name("zmm", r, ""));
	for (int k = 1; k < 8; k++)
		if (got_k[k] != want_k[k])
			corrupt(tick, reg_name("k", k, ""));
}

void _start(void)
{
	static const u64 ts[2] = { 0, 10 * 1000 * 1000 };

	logfd = (int)sys(NR_open, (i64) "out-vecregs.log", 02101 /* O_WRONLY|O_APPEND|O_CREAT */, 0644, 0, 0, 0);
	if (logfd < 0)
		sys(NR_exit_group, 2, 0, 0, 0, 0, 0);
	if (!has_avx512()) {
		say("setup: no AVX-512 ", 0, 0);
		sys(NR_exit_group, 2, 0, 0, 0, 0, 0);
	}
	for (int r = 0; r < 32; r++)
		for (int b = 0; b < 64; b++)
			want_zmm[r][b] = pat(r, b);
	for (int k = 1; k < 8; k++)
		want_k[k] = (unsigned short)(0xa500 + k * 0x1111);
	load();
	for (u64 tick = 1;; tick++) {
		sys(NR_nanosleep, (i64)ts, 0, 0, 0, 0, 0);
		check(tick);
		say("vecregs ", tick, 0);
	}
}
