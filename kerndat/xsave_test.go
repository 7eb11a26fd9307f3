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
