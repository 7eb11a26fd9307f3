package kerndat

import (
	"syscall"
	"unsafe"
)

// archGetXcompPerm is arch_prctl's ARCH_GET_XCOMP_PERM (Linux 5.16).
const archGetXcompPerm = 0x1022

// cpuid executes CPUID for leaf and subleaf.
func cpuid(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)

// xgetbv reads extended control register index; only call it when
// CPUID.1:ECX.OSXSAVE is set.
func xgetbv(index uint32) (eax, edx uint32)

// readXSave reads what the CPU and the OS say about xsave: whether the OS
// enabled it (CPUID.1:ECX.OSXSAVE), XCR0 (the user state components it
// enabled), the components the CPU supports (CPUID.0xD.0:EDX:EAX) and the
// size of an xsave area for XCR0 (CPUID.0xD.0:EBX).
func readXSave() (x xsaveInfo) {
	_, _, ecx1, _ := cpuid(1, 0)
	x.arch = true
	x.osxsave = ecx1&(1<<27) != 0
	if !x.osxsave {
		return x
	}
	lo, hi := xgetbv(0)
	x.xcr0 = uint64(lo) | uint64(hi)<<32
	eax, ebx, _, edx := cpuid(0xd, 0)
	x.supported = uint64(eax) | uint64(edx)<<32
	x.size = int(ebx)
	x.perm = x.xcr0
	var perm uint64
	if _, _, errno := syscall.RawSyscall(syscall.SYS_ARCH_PRCTL, archGetXcompPerm, uintptr(unsafe.Pointer(&perm)), 0); errno == 0 {
		x.perm = perm
	}
	return x
}

// XSaveComponent returns where xsave state component bit lies in the
// standard (non-compacted) layout that NT_X86_XSTATE and an rt_sigreturn
// frame use, and its size, as CPUID leaf 0xD says: the offsets differ
// between CPUs (AMD parts without MPX put AVX-512 state right after AVX).
func XSaveComponent(bit int) (off, size int) {
	eax, ebx, _, _ := cpuid(0xd, uint32(bit))
	return int(ebx), int(eax)
}
