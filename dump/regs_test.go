package dump

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestDumpedRegs: how a call the freeze interrupted is dumped, by the
// errno the kernel left in rax. Rewound calls run again from their
// syscall instruction (rip - 2) with rax the call's number; the rest
// return EINTR; argument registers never change.
func TestDumpedRegs(t *testing.T) {
	neg := func(e int) uint64 { return uint64(-int64(e)) }
	const ip = 0x401000
	tests := []struct {
		name    string
		nr      uint64
		ax      uint64
		si, r10 uint64
		rewound bool // else -EINTR
	}{
		{"read, ERESTARTSYS", unix.SYS_READ, neg(errRestartSys), 0, 0, true},
		{"pause, ERESTARTNOHAND", unix.SYS_PAUSE, neg(errRestartNoHand), 0, 0, true},
		{"poll with a timeout", unix.SYS_POLL, neg(errRestartRestartBlk), 1, 0, true},
		{"futex wait with a timeout", unix.SYS_FUTEX, neg(errRestartRestartBlk), 0, 0x7ffe0000, true},
		{"nanosleep without a remainder", unix.SYS_NANOSLEEP, neg(errRestartRestartBlk), 0, 0, true},
		{"nanosleep with a remainder", unix.SYS_NANOSLEEP, neg(errRestartRestartBlk), 0x7ffe0010, 0, false},
		{"clock_nanosleep without a remainder", unix.SYS_CLOCK_NANOSLEEP, neg(errRestartRestartBlk), 0, 0, true},
		{"clock_nanosleep with a remainder", unix.SYS_CLOCK_NANOSLEEP, neg(errRestartRestartBlk), 0, 0x7ffe0010, false},
		{"restart_syscall", unix.SYS_RESTART_SYSCALL, neg(errRestartRestartBlk), 0, 0, false},
		{"another call", unix.SYS_EPOLL_WAIT, neg(errRestartRestartBlk), 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := unix.PtraceRegs{Orig_rax: tt.nr, Rax: tt.ax, Rip: ip, Rdi: 0x1111, Rsi: tt.si, Rdx: 0x2222, R10: tt.r10}
			out := dumpedRegs(in)
			want := in
			if tt.rewound {
				want.Rax, want.Rip = tt.nr, ip-2
			} else {
				want.Rax = neg(int(unix.EINTR))
			}
			if out != want {
				t.Errorf("dumped rax %#x rip %#x (args %#x %#x %#x %#x), want rax %#x rip %#x, args as they were",
					out.Rax, out.Rip, out.Rdi, out.Rsi, out.Rdx, out.R10, want.Rax, want.Rip)
			}
		})
	}
	// a finished call (rax a result) and a task outside a syscall
	// (orig_rax -1) are left alone
	for _, in := range []unix.PtraceRegs{{Orig_rax: unix.SYS_READ, Rax: 5, Rip: ip}, {Orig_rax: ^uint64(0), Rax: neg(errRestartSys), Rip: ip}} {
		if out := dumpedRegs(in); out != in {
			t.Errorf("dumpedRegs(%+v) = %+v, want it unchanged", in, out)
		}
	}
}
