// Package bpffs gives a test a BPF file system of its own, for pinning.
package bpffs

import (
	"testing"

	"golang.org/x/sys/unix"
)

// Mount mounts a BPF file system on a temporary directory of t and
// unmounts it (and with it every pin) when t ends.
func Mount(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
