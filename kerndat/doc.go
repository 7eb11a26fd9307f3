// Package kerndat finds out what the running kernel can do for crest, as
// CRIU's kerndat does: clone3 with set_tid, pidfds, the checkpoint/restore
// capability, time namespaces, userfaultfd, tracefs, the CPU's xsave
// features, TCP repair mode and the tools that take CRIU's network lock
// off.
//
// Every probe really exercises the feature (it creates the child, opens the
// fd, unshares the namespace) and cleans up after itself, so a Feature says
// ok only when crest could use it, and otherwise names the syscall and errno
// or what was found. Each probe runs at most once per process and its
// result is cached, like cilium/ebpf's feature tests, so the restore engine
// may ask for a single feature as often as it likes.
//
// kerndat imports only the standard library and golang.org/x/sys, so every
// crest package may use it; the eBPF probes live in package bpf (which
// returns kerndat Features) and cmd/crest combines both with Check.
package kerndat
