package bpf

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/test/bpffs"
)

// BenchmarkSyscallFloor splits what an attached monitor costs every
// syscall of the machine (this process untracked): the syscall alone, an
// empty tp_btf program on sys_enter (the tracepoint's floor: the slow
// syscall path plus one program run), empty programs on sys_enter and
// sys_exit, and the monitor itself. getppid is a syscall the monitor does
// not watch; a shared FUTEX_WAKE is one it does.
func BenchmarkSyscallFloor(b *testing.B) {
	var word uint32
	calls := []struct {
		name string
		call func()
	}{
		{"exec", func() {
			if err := exec.Command("/bin/true").Run(); err != nil {
				panic(err)
			}
		}},
		{"getppid", func() { unix.Syscall(unix.SYS_GETPPID, 0, 0, 0) }},
		{"futex", func() {
			unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&word)), FutexWake, 1, 0, 0, 0)
		}},
	}
	empty := func(b *testing.B, targets ...string) func() {
		var closers []func()
		for _, target := range targets {
			prog, err := loadTpBTF(target, asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()})
			if err != nil {
				b.Fatal(err)
			}
			l, err := link.AttachTracing(link.TracingOptions{Program: prog})
			if err != nil {
				b.Fatal(err)
			}
			closers = append(closers, func() { l.Close(); prog.Close() })
		}
		return func() {
			for _, c := range closers {
				c()
			}
		}
	}
	setups := []struct {
		name  string
		setup func(b *testing.B) func()
	}{
		{"none", func(*testing.B) func() { return func() {} }},
		{"empty-enter", func(b *testing.B) func() { return empty(b, "sys_enter") }},
		{"empty-enter-exit", func(b *testing.B) func() { return empty(b, "sys_enter", "sys_exit") }},
		{"empty-all", func(b *testing.B) func() {
			return empty(b, "sys_enter", "sys_exit", "sched_process_fork", "sched_process_exit")
		}},
		{"monitor", func(b *testing.B) func() {
			m := openMonitor(b, Options{})
			return func() { m.Close() }
		}},
	}
	for _, c := range calls {
		for _, s := range setups {
			b.Run(c.name+"/"+s.name, func(b *testing.B) {
				done := s.setup(b)
				defer done()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				for b.Loop() {
					c.call()
				}
			})
		}
	}
}

// coldOpenEnv makes the test binary a fresh process that opens one
// monitor (pinned under the directory the variable names, if any), prints
// its Timing as JSON and exits: see BenchmarkColdOpen.
const coldOpenEnv = "CREST_BPF_COLD_OPEN"

func coldOpen(pinDir string) int {
	m, err := Open(Options{PinDir: pinDir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := m.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(m.Timing()); err != nil {
		return 1
	}
	return 0
}

// BenchmarkColdOpen: Open in a fresh process (the kernel's BTF decoded
// anew, as in every crest restore --verify), loading afresh and reusing
// pins, median of 20 of each (run with -benchtime=1x). The first pinned
// run pins and is left out.
func BenchmarkColdOpen(b *testing.B) {
	pins := bpffs.Mount(b)
	open := func(b *testing.B, dir string) Timing {
		// Attaching a syscall tracepoint within an RCU grace period of
		// the last detach from it waits for the grace period (the
		// kernel's tracepoint 1->0->1 transition): restores are not
		// that close together, so neither are these runs.
		time.Sleep(50 * time.Millisecond)
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), coldOpenEnv+"="+dir)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("%s=%s: %v", coldOpenEnv, dir, err)
		}
		var tm Timing
		if err := json.Unmarshal(out, &tm); err != nil {
			b.Fatalf("%q: %v", out, err)
		}
		return tm
	}
	median := func(ds []time.Duration) time.Duration {
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	const runs = 20
	for b.Loop() {
		open(b, pins)
		var load, attach, detach [2][]time.Duration
		for i := range 2 * runs {
			k, dir := i%2, ""
			if k == 1 {
				dir = pins
			}
			tm := open(b, dir)
			if tm.Reused != (k == 1) {
				b.Fatalf("run %d: reused %v", i, tm.Reused)
			}
			load[k], attach[k], detach[k] = append(load[k], tm.Load), append(attach[k], tm.Attach), append(detach[k], tm.Detach)
		}
		for k, name := range []string{"fresh", "pinned"} {
			b.Logf("%-6s process, median of %d: load %v, attach %v, detach %v", name, runs, median(load[k]), median(attach[k]), median(detach[k]))
		}
	}
}
