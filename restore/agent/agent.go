// Package agent holds crest's agent: the small freestanding C program that
// runs inside every restored task and carries out the flat plan the engine
// wrote for it, and the Go side of their shared layout (abi.go, checked
// against the C by TestLayout).
//
// The C is in c/, kernel style, one file per concern:
//
//	plan.h       the plan and the shared area: the one definition of the layout
//	sys.h        system calls without libc
//	agent.h      what the files share
//	main.c       the launcher: map the plan, clone the root (CLONE_NEWPID, set_tid)
//	fork.c       a task's life until RESTORE: pid check, session, group, children
//	stage.c      the stage barrier, step clock readings, failure
//	vdso.c       clock_gettime through the vDSO, for the step clock
//	files.c      take the engine's files (pidfd_getfd), fd table, cwd/root/umask
//	mem.c        move into the crest area, unmap, map and fill VMAs, vdso, mm
//	restorer.c   the rest of RESTORE, from the copy in the crest area
//	threads.c    clone the other threads (set_tid) and their last stages
//	signals.c    sigactions, pending signals, interval and POSIX timers
//	creds.c      ids, groups, capabilities, securebits; only what differs from the launcher's
//	fpu.c        the XSAVE image for rt_sigreturn
//	sigreturn.c  per-thread kernel state and the rt_sigreturn into the image
//	exit.c       zombies and helpers end after RESTORE; their parents wait for them
//	lib.c        memset, memcpy
//
// The built binary, crest-agent, is committed and embedded, so building
// crest needs no C compiler (crest-agent.compiler names the gcc that built
// it). Rebuild it after editing the C with `go generate ./restore/agent`
// (gcc and make); TestBinaryUpToDate fails when the committed binary is
// stale.
package agent

import (
	"bytes"
	"debug/elf"
	_ "embed"
	"fmt"
)

//go:generate make -s -B -C c

// Binary is the agent, a static PIE without libc and without run-time
// relocations, to be executed from a memfd.
//
//go:embed crest-agent
var Binary []byte

// ImageSize returns how many bytes the agent's loaded image spans (from its
// ELF header to the end of its bss, page aligned): what each task copies
// into the crest area as its restorer.
func ImageSize() (uint64, error) {
	f, err := elf.NewFile(bytes.NewReader(Binary))
	if err != nil {
		return 0, fmt.Errorf("agent: %w", err)
	}
	var end uint64
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Vaddr+p.Memsz > end {
			end = p.Vaddr + p.Memsz
		}
	}
	if end == 0 {
		return 0, fmt.Errorf("agent: no loadable segment")
	}
	return (end + 4095) &^ 4095, nil
}

// SymbolOffset returns the offset from the agent's image base of a symbol
// of the agent (such as crest_syscall), to find it in a task's copy.
func SymbolOffset(name string) (uint64, error) {
	f, err := elf.NewFile(bytes.NewReader(Binary))
	if err != nil {
		return 0, fmt.Errorf("agent: %w", err)
	}
	syms, err := f.Symbols()
	if err != nil {
		return 0, fmt.Errorf("agent: %w", err)
	}
	for _, s := range syms {
		if s.Name == name {
			return s.Value, nil
		}
	}
	return 0, fmt.Errorf("agent: no symbol %s", name)
}
