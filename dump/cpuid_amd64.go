package dump

// cpuid executes CPUID for leaf and subleaf.
func cpuid(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)

// xsaveOffset returns where xsave state component bit lies in the standard
// (non-compacted) layout that NT_X86_XSTATE returns, and its size, as
// CPUID leaf 0xD says: the offsets differ between CPUs (AMD parts without
// MPX put AVX-512 state right after AVX).
func xsaveOffset(bit int) (off, size int) {
	eax, ebx, _, _ := cpuid(0xd, uint32(bit))
	return int(ebx), int(eax)
}
