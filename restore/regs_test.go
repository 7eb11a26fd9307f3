package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/proto"
)

const (
	ptraceSeize     = 0x4206
	ptraceGetRegset = 0x4204
	ntX86XState     = 0x202
)

// xstateOffsets returns where this CPU puts XSAVE components 2..9 in the
// standard (uncompacted) format that PTRACE_GETREGSET NT_X86_XSTATE uses:
// CPUID leaf 0xd, read by a small C probe (they differ between Intel and
// AMD, and Go has no cpuid).
func xstateOffsets(t *testing.T) map[string]int {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc is not installed: the XSAVE layout of this CPU can not be probed")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "cpuid.c")
	code := `#include <stdio.h>
#include <cpuid.h>
int main(void)
{
	for (unsigned i = 2; i < 10; i++) {
		unsigned a, b, c, d;
		__cpuid_count(0xd, i, a, b, c, d);
		printf("%u %u\n", i, b);
	}
	return 0;
}
`
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "cpuid")
	if out, err := exec.Command(gcc, "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	names := map[int]string{2: "ymmh", 5: "opmask", 6: "zmm_hi256", 7: "hi16_zmm"}
	offs := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var i, off int
		if _, err := fmt.Sscan(l, &i, &off); err != nil {
			t.Fatalf("cpuid probe: %q: %v", l, err)
		}
		if n, ok := names[i]; ok {
			offs[n] = off
		}
	}
	return offs
}

// TestRestoreRegisters checks what rt_sigreturn loaded into a restored
// thread: the counter fixture's main thread, with the trap flag set in its
// image and patterns in its AVX and AVX-512 registers, is ptrace-seized
// before COMPLETE; after its first instruction (neg %eax, right after the
// interrupted clock_nanosleep) it stops with SIGTRAP, and its registers and
// XSAVE state are read back.
func TestRestoreRegisters(t *testing.T) {
	needRoot(t)
	installFixture(t, "counter")
	p := loadPlan(t, "counter")
	ti := p.Tasks[0].Threads[0].Core.GetThreadInfo()
	g := ti.GetGpregs()
	ip := g.GetIp()
	g.Flags = proto.Uint64(g.GetFlags() | 0x100) // TF: trap after one instruction

	// Patterns in the vector registers, in the components this CPU has.
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	xs := ti.GetFpregs().GetXsave()
	want := map[string][]byte{}
	ymmh := make([]uint32, 64)
	for i := range ymmh {
		ymmh[i] = 0xa0a00000 + uint32(i)
	}
	xs.YmmhSpace = ymmh
	want["ymmh"] = words32(ymmh)
	bv := xs.GetXstateBv() | 0x4 // AVX
	if strings.Contains(string(cpuinfo), " avx512f") {
		opmask, zmm, hi16 := make([]uint64, 8), make([]uint64, 64), make([]uint64, 128)
		for i := range opmask {
			opmask[i] = 0x0b00 + uint64(i)
		}
		for i := range zmm {
			zmm[i] = 0xc0c0c0c000000000 + uint64(i)
		}
		for i := range hi16 {
			hi16[i] = 0xd0d0d0d000000000 + uint64(i)
		}
		xs.OpmaskReg, xs.ZmmUpper, xs.Hi16Zmm = opmask, zmm, hi16
		want["opmask"], want["zmm_hi256"], want["hi16_zmm"] = words64(opmask), words64(zmm), words64(hi16)
		bv |= 0xe0
	}
	xs.XstateBv = proto.Uint64(bv)

	ctx := context.Background()
	r, err := Start(ctx, p, Options{Until: StageRestoreCreds, KeepArea: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Abort()
	host := r.RootPID()

	// ptrace requests must come from the tracer's thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if _, _, errno := syscall.Syscall6(syscall.SYS_PTRACE, ptraceSeize, uintptr(host), 0, 0, 0, 0); errno != 0 {
		t.Fatalf("PTRACE_SEIZE %d: %v", host, errno)
	}
	if err := r.Continue(ctx, 0); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(host, &ws, syscall.WALL, nil); err != nil {
		t.Fatal(err)
	}
	if !ws.Stopped() || ws.StopSignal() != syscall.SIGTRAP {
		t.Fatalf("wait status %#x, want a SIGTRAP stop", ws)
	}

	var regs syscall.PtraceRegs
	if err := syscall.PtraceGetRegs(host, &regs); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"rip", regs.Rip, ip + 2}, // past neg %eax
		{"rax", regs.Rax, uint64(uint32(-int32(g.GetAx())))},
		{"rbx", regs.Rbx, g.GetBx()}, {"rcx", regs.Rcx, g.GetCx()}, {"rdx", regs.Rdx, g.GetDx()},
		{"rsi", regs.Rsi, g.GetSi()}, {"rdi", regs.Rdi, g.GetDi()}, {"rbp", regs.Rbp, g.GetBp()},
		{"rsp", regs.Rsp, g.GetSp()}, {"r8", regs.R8, g.GetR8()}, {"r9", regs.R9, g.GetR9()},
		{"r10", regs.R10, g.GetR10()}, {"r11", regs.R11, g.GetR11()}, {"r12", regs.R12, g.GetR12()},
		{"r13", regs.R13, g.GetR13()}, {"r14", regs.R14, g.GetR14()}, {"r15", regs.R15, g.GetR15()},
		{"fs_base", regs.Fs_base, g.GetFsBase()}, {"cs", regs.Cs, g.GetCs()}, {"ss", regs.Ss, g.GetSs()},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}

	buf := make([]byte, 16384)
	iov := syscall.Iovec{Base: &buf[0], Len: uint64(len(buf))}
	if _, _, errno := syscall.Syscall6(syscall.SYS_PTRACE, ptraceGetRegset, uintptr(host), ntX86XState,
		uintptr(unsafe.Pointer(&iov)), 0, 0); errno != 0 {
		t.Fatalf("PTRACE_GETREGSET NT_X86_XSTATE: %v", errno)
	}
	buf = buf[:iov.Len]
	if got := binary.LittleEndian.Uint64(buf[512:]); got&bv != bv {
		t.Errorf("xstate_bv %#x, want the bits of %#x", got, bv)
	}
	if got, w := buf[160:416], words32(ti.GetFpregs().GetXmmSpace()); !bytes.Equal(got, w) {
		t.Errorf("xmm0-15 differ from the image")
	}
	offs := xstateOffsets(t)
	for name, w := range want {
		off := offs[name]
		if len(buf) < off+len(w) || !bytes.Equal(buf[off:off+len(w)], w) {
			t.Errorf("%s differs from the image", name)
		}
	}
}

func words32(ws []uint32) []byte {
	b := make([]byte, 4*len(ws))
	for i, w := range ws {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
	return b
}

func words64(ws []uint64) []byte {
	b := make([]byte, 8*len(ws))
	for i, w := range ws {
		binary.LittleEndian.PutUint64(b[8*i:], w)
	}
	return b
}

// TestRestoreRefusesAMXCRIU: CRIU 4.2 dumps a process with AMX tiles in
// use without a word (images/testdata/criu-4.2-amx: xstate_bv 0x60002,
// and no field for the tiles), and its own restore gives a process that
// dies of SIGILL at its next tile instruction. crest refuses the set
// when it plans it, naming the task, the file and the components, before
// it looks at the tree's files (the program and log the images name are
// not on this machine) and before any task exists.
func TestRestoreRefusesAMXCRIU(t *testing.T) {
	needRoot(t)
	_, err := openPlan(t, filepath.Join("..", "images", "testdata", "criu-4.2-amx", "images"))
	var pe *PlanError
	want := "plan: task 1: core-1.img: xsave: xstate_bv 0x60002 has components crest does not know (0x60000)"
	if !errors.As(err, &pe) || err.Error() != want {
		t.Errorf("planning: %v, want a PlanError %q", err, want)
	}
}
