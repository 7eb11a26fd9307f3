package bpf

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/test/bpffs"
)

// sawFutexWake makes a shared FUTEX_WAKE on a word of its own, tracked,
// and reports whether m saw it.
func sawFutexWake(t *testing.T, m *Monitor) bool {
	t.Helper()
	word := new(uint32)
	runtime.LockOSThread()
	tid := unix.Gettid()
	if err := m.Track(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(word)), FutexWake, 1, 0, 0, 0)
	m.Untrack(os.Getpid())
	runtime.UnlockOSThread()
	if err := m.Sync(); err != nil {
		t.Fatal(err)
	}
	defer runtime.KeepAlive(word)
	return slices.ContainsFunc(m.Events(), func(e Event) bool {
		f, ok := e.(*FutexEvent)
		return ok && f.TID == tid && f.Addr == uint64(uintptr(unsafe.Pointer(word))) && f.Returned
	})
}

// TestPinned: with PinDir, the first Open loads and pins, the next one
// (after Close) reuses the pins and starts clean; two open at once get
// their own slots; Unpin makes the next Open load afresh.
func TestPinned(t *testing.T) {
	dir := bpffs.Mount(t)
	opts := Options{PinDir: dir}

	first := openMonitor(t, opts)
	if first.Timing().Reused {
		t.Fatal("first Open reused pins of an empty directory")
	}
	if err := first.Track(4242); err != nil {
		t.Fatal(err)
	}
	if !sawFutexWake(t, first) {
		t.Error("fresh pinned monitor: no futex event")
	}
	slot := first.slot.dir
	// Both open: the second must not share the first's maps.
	second := openMonitor(t, opts)
	if second.Timing().Reused || second.slot.dir == slot {
		t.Errorf("second monitor: reused %v, slot %s (first's %s)", second.Timing().Reused, second.slot.dir, slot)
	}
	if got := second.Tracked(); len(got) != 0 {
		t.Errorf("second monitor tracks %v", got)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}

	again := openMonitor(t, opts)
	tm := again.Timing()
	t.Logf("reused: load %v attach %v", tm.Load, tm.Attach)
	if !tm.Reused || again.slot.dir != slot {
		t.Fatalf("Open after Close: reused %v, slot %s, want %s reused", tm.Reused, again.slot.dir, slot)
	}
	if got := again.Tracked(); len(got) != 0 {
		t.Errorf("reused slot tracks %v, want nothing", got)
	}
	if len(again.Events()) != 0 || again.Dropped() != 0 {
		t.Errorf("reused slot: %d events, %d dropped before anything ran", len(again.Events()), again.Dropped())
	}
	if !sawFutexWake(t, again) {
		t.Error("reused pinned monitor: no futex event")
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}

	if err := Unpin(dir); err != nil {
		t.Fatal(err)
	}
	// The file system's own entries (maps.debug, progs.debug) stay.
	if ents, _ := os.ReadDir(dir); slices.ContainsFunc(ents, func(e os.DirEntry) bool { return pinKeyRE.MatchString(e.Name()) }) {
		t.Errorf("after Unpin: %v left in %s", ents, dir)
	}
	fresh := openMonitor(t, opts)
	if fresh.Timing().Reused {
		t.Error("Open after Unpin reused pins")
	}
}

// TestPinDirNotBPF: a pin directory elsewhere than on a BPF file system
// is refused, saying so.
func TestPinDirNotBPF(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(Options{PinDir: dir})
	if err == nil {
		t.Fatal("Open with a pin directory on tmpfs/ext4 succeeded")
	}
	if want := filepath.Clean(dir) + ": not on a BPF file system"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
}
