package kerndat

import (
	"fmt"
	"strings"
	"sync"
)

// FixturesXFeatures is the xsave state the CRIU 4.2 fixtures carry: x87,
// AVX and AVX-512 (opmask, ZMM_Hi256, Hi16_ZMM). Restoring their registers
// needs a CPU and kernel that enable all of it.
const FixturesXFeatures = 0xe5

// XSave reports the CPU's xsave features as the OS enabled them (XCR0) and
// whether they cover the fixtures' state. A CPU without them can still
// restore images dumped on one like it, so this is information.
var XSave = NewProbe(XSaveName, 0, func() Feature {
	return probeXSave(readXSave(), FixturesXFeatures)
})

type xsaveInfo struct {
	arch      bool   // the machine has xsave at all (x86)
	osxsave   bool   // CPUID.1:ECX.OSXSAVE
	xcr0      uint64 // enabled user state components
	supported uint64 // components the CPU supports
	size      int    // bytes of an xsave area for xcr0
	// the user components this process may use (ARCH_GET_XCOMP_PERM):
	// xcr0 less those the kernel gives only on request (AMX tile
	// data), or xcr0 where the kernel does not say
	perm uint64
}

var readXSaveOnce = sync.OnceValue(readXSave)

// XFeatures returns XCR0, the user xsave state components the OS enabled,
// or 0 where there is no xsave.
func XFeatures() uint64 { return readXSaveOnce().xcr0 }

// XSaveComponents is how many state components XSaveLayout describes:
// x87 up to PKRU (9).
const XSaveComponents = 10

// XSaveLayoutInfo is where an xsave area in the standard layout (an
// rt_sigreturn frame's) keeps each user state component on this CPU.
type XSaveLayoutInfo struct {
	// the components of a signal frame: XCR0 less those the process
	// has no permission for (AMX tile data, until it asks); 0: no xsave
	XCR0 uint64
	// bytes of an xsave area for them: the kernel's user size, which
	// a frame's size must not pass (else rt_sigreturn restores x87 and
	// SSE only); less than CPUID's size for all of XCR0 where XCR0 has
	// components given on request
	Size int
	// each component's offset and size, by component number (0 for
	// x87 and SSE, which live in the legacy area, and for those XCR0
	// does not enable)
	Off, Len [XSaveComponents]int
}

// XSaveLayout returns the xsave layout, read once per process: CPUID traps
// to the hypervisor in a virtual machine (4-5 us each here), so the
// restore's tasks get it from the engine instead of asking the CPU.
var XSaveLayout = sync.OnceValue(func() XSaveLayoutInfo {
	return xsaveLayout(readXSaveOnce(), XSaveComponent)
})

// xsaveLayout is XSaveLayout for x, with component giving each
// component's offset and size.
func xsaveLayout(x xsaveInfo, component func(bit int) (off, size int)) XSaveLayoutInfo {
	if !x.osxsave {
		return XSaveLayoutInfo{}
	}
	l := XSaveLayoutInfo{XCR0: x.xcr0 & x.perm, Size: 512 + 64} // legacy area, header
	for bit := 2; bit < 64; bit++ {
		if l.XCR0&(1<<bit) == 0 {
			continue
		}
		off, size := component(bit)
		l.Size = max(l.Size, off+size)
		if bit < XSaveComponents {
			l.Off[bit], l.Len[bit] = off, size
		}
	}
	return l
}

func probeXSave(x xsaveInfo, need uint64) Feature {
	switch {
	case !x.arch:
		return Missing("no xsave on this architecture")
	case !x.osxsave:
		return Missing("cpuid: the OS has not enabled xsave (CPUID.1:ECX.OSXSAVE clear)")
	}
	have := fmt.Sprintf("XCR0 %#x (%s), CPU supports %#x, xsave area %d bytes",
		x.xcr0, XFeatureNames(x.xcr0), x.supported, x.size)
	if x.perm != 0 && x.perm&x.xcr0 != x.xcr0 {
		// what a signal frame (and a restored thread) holds
		have += fmt.Sprintf(" (%d bytes in a signal frame, without %s, given on request)",
			xsaveLayout(x, XSaveComponent).Size, XFeatureNames(x.xcr0&^x.perm))
	}
	if lack := need &^ x.xcr0; lack != 0 {
		return Missing("%s; lacks %#x (%s) of the fixtures' %#x", have, lack, XFeatureNames(lack), need)
	}
	return OK("%s; covers the fixtures' %#x", have, need)
}

// XFeatureNames names the state components in mask as the kernel's
// x86/fpu boot messages do.
func XFeatureNames(mask uint64) string {
	names := map[int]string{
		0: "x87", 1: "sse", 2: "avx", 3: "mpx_bndregs", 4: "mpx_bndcsr",
		5: "avx512_opmask", 6: "avx512_zmm_hi256", 7: "avx512_hi16_zmm",
		9: "pkru", 17: "amx_tilecfg", 18: "amx_tiledata", 19: "apx",
	}
	var out []string
	for bit := 0; bit < 64; bit++ {
		if mask&(1<<uint(bit)) == 0 {
			continue
		}
		if n, ok := names[bit]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("bit%d", bit))
		}
	}
	return strings.Join(out, " ")
}
