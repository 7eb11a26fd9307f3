// Package bpf is crest's kernel-side monitor: the eBPF C programs that watch
// a restore (clone3 and its set_tid array, setns, the stage futexes, fork at
// every pid-namespace level, exit), their bpf2go output, the Go loader that
// attaches them as tp_btf programs for the restore's own processes only, and
// the typed events that reach Go through a ring buffer, which the monitor
// checks against the restore's plan.
//
//   - c/monitor.bpf.c, c/events.h, c/kernel.h: the programs, the event
//     layouts shared with Go, and the few kernel structs they read (CO-RE,
//     no vmlinux.h). gen.go's go:generate line rebuilds
//     monitor_x86_bpfel.{go,o} with clang-14; both are committed.
//   - monitor.go: Open (load, attach, timed), Track, WatchFutexes, Sync,
//     Events, Dropped, Close (tp_btf links detach in well under a
//     millisecond). ErrNotSupported when the kernel or the permissions do
//     not allow it.
//   - events.go: the typed events (CloneEvent, Clone3Event, SetnsEvent,
//     FutexEvent, ForkEvent, ExitEvent) and the record decoder, which joins
//     each sys_enter with its sys_exit.
//   - verify.go: Expect (the plan as the kernel should see it) and Verify,
//     whose Report has a short verdict and findings with their evidence:
//     pid assignment, the stage barrier, namespaces.
//   - probe.go: the feature probes behind `crest check`: vmlinux BTF,
//     tp_btf programs, ring buffers, run once per process and reported as
//     kerndat Features.
//
// The programs know x86_64's syscall numbers and pt_regs only.
package bpf
