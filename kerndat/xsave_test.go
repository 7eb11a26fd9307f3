package kerndat

import (
	"runtime"
	"strings"
	"testing"
)

func TestXSave(t *testing.T) {
	here := readXSave()
	if runtime.GOARCH == "amd64" {
		if !here.osxsave {
			t.Fatal("amd64 without OSXSAVE: Linux enables xsave on every x86-64 CPU that has it")
		}
		if here.xcr0&3 != 3 || here.xcr0&^here.supported != 0 || here.size < 576 {
			t.Errorf("XCR0 %#x, supported %#x, size %d: want x87|sse enabled, nothing unsupported, at least the legacy area and header", here.xcr0, here.supported, here.size)
		}
		if avx512 := here.xcr0&0xe0 == 0xe0; avx512 != cpuinfoHasFlag(t, "avx512f") {
			t.Errorf("XCR0 %#x says AVX-512 %v, /proc/cpuinfo says avx512f %v", here.xcr0, avx512, !avx512)
		}
	}
	tests := []struct {
		name     string
		x        xsaveInfo
		need     uint64
		ok       bool
		contains string
	}{
		{"no xsave", xsaveInfo{}, FixturesXFeatures, false, "no xsave on this architecture"},
		{"not enabled", xsaveInfo{arch: true}, FixturesXFeatures, false, "OSXSAVE clear"},
		{"avx only", xsaveInfo{arch: true, osxsave: true, xcr0: 0x7, supported: 0x7, size: 832}, FixturesXFeatures, false,
			"XCR0 0x7 (x87 sse avx), CPU supports 0x7, xsave area 832 bytes; lacks 0xe0 (avx512_opmask avx512_zmm_hi256 avx512_hi16_zmm) of the fixtures' 0xe5"},
		{"avx-512", xsaveInfo{arch: true, osxsave: true, xcr0: 0x2e7, supported: 0x2e7, size: 2696}, FixturesXFeatures, true,
			"XCR0 0x2e7 (x87 sse avx avx512_opmask avx512_zmm_hi256 avx512_hi16_zmm pkru)"},
		{"a bit no CPU has, here", here, 1 << 63, false, "lacks 0x8000000000000000 (bit63)"},
		{"amx", xsaveInfo{arch: true, osxsave: true, xcr0: 0x600e7, supported: 0x600e7, size: 11008, perm: 0x200e7}, FixturesXFeatures, true,
			"xsave area 11008 bytes (2816 bytes in a signal frame, without amx_tiledata, given on request); covers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := probeXSave(tt.x, tt.need)
			t.Log(f)
			if f.OK != tt.ok || !strings.Contains(f.Reason, tt.contains) {
				t.Errorf("ok = %v, reason %q; want ok = %v and %q", f.OK, f.Reason, tt.ok, tt.contains)
			}
		})
	}
}

// TestXSaveLayout: a signal frame holds the components the process may
// use, and its size is theirs: on a CPU with AMX (XCR0 0x600e7) a process
// that never asked for tile data gets 2816 bytes (up to the tile config),
// not CPUID's 11008 for all of XCR0, which rt_sigreturn would take for a
// frame too big and restore x87 and SSE only.
func TestXSaveLayout(t *testing.T) {
	// the standard (not compacted) offsets and sizes of a Sapphire
	// Rapids part, as CPUID leaf 0xd gives them
	parts := map[int][2]int{2: {576, 256}, 5: {1088, 64}, 6: {1152, 512}, 7: {1664, 1024}, 9: {2688, 8},
		17: {2752, 64}, 18: {2816, 8192}}
	component := func(bit int) (int, int) {
		p, ok := parts[bit]
		if !ok {
			t.Fatalf("component %d asked for", bit)
		}
		return p[0], p[1]
	}
	tests := []struct {
		name       string
		xcr0, perm uint64
		features   uint64
		size       int
	}{
		{"amx not asked for", 0x600e7, 0x200e7, 0x200e7, 2816},
		{"amx asked for", 0x600e7, 0x600e7, 0x600e7, 11008},
		{"avx-512", 0xe7, 0xe7, 0xe7, 2688},
		{"sse only", 0x3, 0x3, 0x3, 576},
	}
	for _, tt := range tests {
		l := xsaveLayout(xsaveInfo{arch: true, osxsave: true, xcr0: tt.xcr0, perm: tt.perm}, component)
		if l.XCR0 != tt.features || l.Size != tt.size {
			t.Errorf("%s: features %#x, size %d; want %#x, %d", tt.name, l.XCR0, l.Size, tt.features, tt.size)
		}
		if tt.xcr0&0x80 != 0 && (l.Off[7] != 1664 || l.Len[7] != 1024) {
			t.Errorf("%s: hi16_zmm at %d+%d", tt.name, l.Off[7], l.Len[7])
		}
	}
	if l := xsaveLayout(xsaveInfo{arch: true}, component); l.XCR0 != 0 || l.Size != 0 {
		t.Errorf("no xsave: %+v", l)
	}
	// here: the process never asked for more than the kernel gives
	here := readXSave()
	if runtime.GOARCH == "amd64" && (here.perm&^here.xcr0 != 0 || here.perm&3 != 3) {
		t.Errorf("permitted %#x, XCR0 %#x", here.perm, here.xcr0)
	}
}
