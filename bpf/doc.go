// Package bpf is crest's kernel-side monitor: the eBPF C programs that watch
// a restore (clone3 and its set_tid array, setns, the stage futexes, fork at
// every pid-namespace level, exit), their bpf2go output, the Go loader that
// attaches them as tp_btf programs for the restore's own processes only, and
// the typed events that reach Go through a ring buffer, which the monitor
// checks against the restore's plan.
//
// Only the feature probe exists yet (probe.go): it finds out, once per
// process, whether this kernel has what the monitor needs (vmlinux BTF,
// tp_btf programs, ring buffers) and reports it as kerndat Features.
package bpf
