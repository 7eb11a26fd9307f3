/*
 * amx - one process (no libc) that asks the kernel for AMX tile data
 * (arch_prctl ARCH_REQ_XCOMP_PERM), configures its tiles (palette 1,
 * tmm0 16 rows of 64 bytes), loads a pattern into tmm0 and checks it
 * every tick (10 ms): "amx N" to out-amx.log, or "CORRUPT tick=N tmm0"
 * and exit 3. Its xsave state has the tile components in use, which
 * CRIU's images have no field for: crest dump refuses it
 * (dump/xstate_test.go). A CPU or kernel without AMX makes it write
 * "setup: errno N arch_prctl" and exit 2.
 *
 * build: gcc -static -nostdlib -ffreestanding -O2 -fno-stack-protector -fcf-protection=none -o amx amx.c
 */
#include "nolibc.h"

#define NR_arch_prctl 158
#define NR_exit_group 231
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* the tile configuration: palette, start row, colsb[16], rows[16] */
static unsigned char cfg[64] __attribute__((aligned(64)));
static unsigned char want[16 * 64] __attribute__((aligned(64)));
static unsigned char got[16 * 64] __attribute__((aligned(64)));

void _start(void)
{
	static const u64 ts[2] = { 0, 10 * 1000 * 1000 };

	logfd = (int)sys(NR_open, (i64) "out-amx.log", 02101 /* O_WRONLY|O_APPEND|O_CREAT */, 0644, 0, 0, 0);
	if (logfd < 0)
		sys(NR_exit_group, 2, 0, 0, 0, 0, 0);
	must(sys(NR_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA, 0, 0, 0, 0), "arch_prctl");
	cfg[0] = 1;	/* palette 1 */
	cfg[16] = 64;	/* colsb[0] = 64 (a u16, little-endian) */
	cfg[48] = 16;	/* rows[0] = 16 */
	for (int i = 0; i < 16 * 64; i++)
		want[i] = (unsigned char)(i * 7 + 3);
	asm volatile("ldtilecfg (%0)" : : "r"(cfg) : "memory");
	asm volatile("tileloadd (%0,%1,1), %%tmm0" : : "r"(want), "r"(64L) : "memory");
	for (u64 tick = 1;; tick++) {
		sys(NR_nanosleep, (i64)ts, 0, 0, 0, 0, 0);
		asm volatile("tilestored %%tmm0, (%0,%1,1)" : : "r"(got), "r"(64L) : "memory");
		if (!same(got, want, sizeof want)) {
			say("CORRUPT tick=", tick, "tmm0");
			sys(NR_exit_group, 3, 0, 0, 0, 0, 0);
		}
		say("amx ", tick, 0);
	}
}
