package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/fixture"
)

// editSysVVMAs rewrites the VMAs of nsuts's mm-1.img: edit gets them
// all and the indexes of segment 7's mappings (by address: the read-only
// attachment, then the three of the read-write one), and returns the new
// list.
func editSysVVMAs(t *testing.T, dir string, edit func(vmas []*vma.VmaEntry, sysv []int) []*vma.VmaEntry) {
	t.Helper()
	editImage(t, dir, "mm-1.img", func(img *images.Image) {
		m := img.Entries[0].Message.(*mm.MmEntry)
		var sysv []int
		for i, v := range m.Vmas {
			if v.GetStatus()&vmaAreaSysVIPC != 0 {
				sysv = append(sysv, i)
			}
		}
		if len(sysv) != 4 {
			t.Fatalf("mm-1.img: %d SysV vmas, want nsuts's 4", len(sysv))
		}
		m.Vmas = edit(m.Vmas, sysv)
	})
}

// dropSysVVMAs removes the SysV mappings from nsuts's mm-1.img.
func dropSysVVMAs(t *testing.T, dir string) {
	editSysVVMAs(t, dir, func(vmas []*vma.VmaEntry, sysv []int) []*vma.VmaEntry {
		return append(vmas[:sysv[0]], vmas[sysv[3]+1:]...)
	})
}

// TestPlanSysVShm: how the plan reads nsuts's attachments of segment 7
// (crest dump's images), and what it refuses, naming the image, task,
// VMA and why.
func TestPlanSysVShm(t *testing.T) {
	imgs, _ := nsutsImages(t)
	p := planDir(t, imgs)
	var got []string
	var sysv []VMA
	idx := -1 // of the first in mm-1.img
	for i, v := range p.Root().Mem.VMAs {
		if v.Kind != VMASysVShm {
			continue
		}
		if idx < 0 {
			idx = i
		}
		sysv = append(sysv, v)
		a := v.SysV
		got = append(got, fmt.Sprintf("+%#x %d prot %d shm %d first %v shmflags %#o", v.Start-sysv[0].Start, v.Pgoff, v.Prot, a.Shm.ID, a.First, a.ShmFlags))
	}
	want := []string{
		"+0x0 0 prot 1 shm 7 first true shmflags 010000", // the read-only attachment
		"+0x4000 0 prot 3 shm 7 first true shmflags 0",   // the read-write one, cut in three
		"+0x6000 8192 prot 1 shm 7 first false shmflags 0",
		"+0x7000 12288 prot 3 shm 7 first false shmflags 0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("SysV vmas:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// vma k of mm-1.img, the i-th SysV one
	vmaName := func(k, i int) string {
		v := sysv[i]
		return fmt.Sprintf("vma %d (%#x-%#x, SysV shm 7 at offset %#x)", k, v.Start, v.End, v.Pgoff)
	}
	vmas := func(edit func(vmas []*vma.VmaEntry, sysv []int) []*vma.VmaEntry) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { editSysVVMAs(t, dir, edit) }
	}
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"the host's IPC namespace", func(t *testing.T, dir string) {
			editImage(t, dir, "inventory.img", func(img *images.Image) {
				img.Entries[0].Message.(*inventory.InventoryEntry).RootIds.IpcNsId = proto.Uint32(nsutsIPC)
			})
		}, "task 1: mm-1.img: " + vmaName(idx, 0) + ": the segment is in an IPC namespace that is not the tree's own"},
		{"no such segment", vmas(func(v []*vma.VmaEntry, s []int) []*vma.VmaEntry {
			v[s[0]].Shmid = proto.Uint64(9)
			return v
		}), fmt.Sprintf("task 1: mm-1.img: vma %d (%#x-%#x, SysV shm 9", idx, sysv[0].Start, sysv[0].End) + " at offset 0x0): ipcns-shm-10.img has no segment 9"},
		{"tail unmapped", vmas(func(v []*vma.VmaEntry, s []int) []*vma.VmaEntry { return append(v[:s[3]], v[s[3]+1:]...) }),
			fmt.Sprintf("task 1: mm-1.img: SysV shm 7 attached at %#x: mapped up to %#x, the segment's 12388 bytes reach %#x: an attachment with its tail unmapped", sysv[1].Start, sysv[2].End, sysv[3].End)},
		{"head unmapped", vmas(func(v []*vma.VmaEntry, s []int) []*vma.VmaEntry { return append(v[:s[1]], v[s[1]+1:]...) }),
			"task 1: mm-1.img: " + vmaName(idx+1, 2) + ": a part of an attachment without the part before it"},
		{"misordered", vmas(func(v []*vma.VmaEntry, s []int) []*vma.VmaEntry {
			v[s[2]].Pgoff = proto.Uint64(3 * 4096)
			return v
		}), fmt.Sprintf("task 1: mm-1.img: vma %d (%#x-%#x", idx+2, sysv[2].Start, sysv[2].End) + ", SysV shm 7 at offset 0x3000): offset 0x3000 where the attachment at " +
			fmt.Sprintf("%#x puts 0x2000 (misordered parts)", sysv[1].Start)},
		{"private", vmas(func(v []*vma.VmaEntry, s []int) []*vma.VmaEntry {
			v[s[0]].Flags = proto.Uint32(unix.MAP_PRIVATE | unix.MAP_ANONYMOUS)
			return v
		}), "task 1: mm-1.img: " + vmaName(idx, 0) + ": not MAP_SHARED"},
		{"pages in the task's pagemap", func(t *testing.T, dir string) {
			// the segment's content, written twice: into the task's
			// pages too
			editImage(t, dir, "pagemap-1.img", func(img *images.Image) {
				for _, e := range img.Entries[1:] {
					if pe := e.Message.(*pagemap.PagemapEntry); pe.GetVaddr() > sysv[0].Start {
						pe.Vaddr, pe.NrPages = proto.Uint64(sysv[1].Start), proto.Uint64(1)
						return
					}
				}
			})
		}, fmt.Sprintf("task 1: pagemap-1.img: run %#x-", sysv[1].Start)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			wantPlanError(t, dir, tc.want)
		})
	}
}

// inTreeIPC runs fn on a locked thread in the IPC namespace of pid, and
// goes back to ours before the thread is let go.
func inTreeIPC(pid int, fn func() error) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pidfd)
	return inIPC(func() error { return unix.Setns(pidfd, unix.CLONE_NEWIPC) }, fn)
}

// TestRestoreSysVShm restores crest dump's images of nsuts: its segment 7
// is attached again at the dumped addresses, read-only where it was (its
// map_files link 0400) and cut into the same mappings, the workload's
// check of its contents through both attachments holds every tick, a
// write by the task through its read-write mapping is seen by another
// attacher (and by the task through the read-only one), and the
// segment counts the same attaches as at the dump.
func TestRestoreSysVShm(t *testing.T) {
	imgs, wdir := nsutsImages(t)
	p := planDir(t, imgs)
	var want []string
	for _, v := range p.Root().Mem.VMAs {
		if v.Kind != VMASysVShm {
			continue
		}
		perms, mode := "r--s", "400"
		if v.Prot&unix.PROT_WRITE != 0 {
			perms = "rw-s"
		}
		if v.SysV.FDFlags == unix.O_RDWR {
			mode = "600"
		}
		want = append(want, fmt.Sprintf("%x-%x %s %08x 7 %s", v.Start, v.End, perms, v.Pgoff, mode))
	}
	out, r, _ := restoreNsuts(t, imgs, wdir)
	if strings.Contains(out, "CORRUPT") || !strings.Contains(out, "shm ok") {
		t.Fatalf("the restored nsuts wrote:\n%s", out)
	}
	root := r.RootPID()
	if got := check.SysVMaps(t, root); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("SysV mappings of the restored root:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	nattch := func() string {
		var n string
		err := inTreeIPC(root, func() error {
			b, err := os.ReadFile("/proc/sysvipc/shm")
			for _, l := range strings.Split(string(b), "\n") {
				if f := strings.Fields(l); len(f) > 6 && f[1] == "7" {
					n = f[6]
				}
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := nattch(); n != "4" {
		t.Errorf("segment 7: %s attaches, want 4 (a mapping each)", n)
	}

	from, nFrom := logSize(wdir, "out-shm.log"), logSize(wdir, "out-nsuts.log")
	if err := os.WriteFile(filepath.Join(wdir, "write-shm"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if s := waitLog(t, wdir, "out-shm.log", from, func(s string) bool { return strings.Contains(s, "shm written") }); strings.Contains(s, "CORRUPT") {
		t.Fatal(s)
	}
	var b byte
	err := inTreeIPC(root, func() error {
		mem, err := unix.SysvShmAttach(7, 0, unix.SHM_RDONLY)
		if err != nil {
			return os.NewSyscallError("shmat", err)
		}
		b = mem[10]
		return unix.SysvShmDetach(mem)
	})
	if err != nil {
		t.Fatal(err)
	}
	if b != 0x5a {
		t.Errorf("segment 7 byte 10, as another attacher reads it after the task wrote 0x5a: %#x", b)
	}
	if s := waitLog(t, wdir, "out-nsuts.log", nFrom, lines(5)); strings.Contains(s, "CORRUPT") {
		t.Errorf("after the write, nsuts wrote:\n%s", s)
	}
}

// TestRestoreSysVShmRollback: a restore that fails after the tasks
// attached their segments (madvise with advice 40, which no kernel has,
// on the stack, in the memory step after shmat) leaves
// nothing behind: no task in the tree's IPC namespace, so no segment of
// it and no attachment, and no SysV object in ours.
func TestRestoreSysVShmRollback(t *testing.T) {
	imgs, _ := nsutsImages(t)
	if left := sysvKeys(t); len(left) != 0 {
		t.Fatalf("nsuts's objects in our IPC namespace before the restore: %q", left)
	}
	dir := fixture.CopyDir(t, imgs)
	editImage(t, dir, "mm-1.img", func(img *images.Image) {
		vmas := img.Entries[0].Message.(*mm.MmEntry).Vmas
		for i := len(vmas) - 1; i >= 0; i-- {
			if vmas[i].GetStatus() == vmaAreaRegular|vmaAnonPrivate { // the stack
				vmas[i].Madv = proto.Uint64(1 << 40)
				return
			}
		}
		t.Fatal("mm-1.img: no anonymous private memory")
	})
	obs := &rootArrival{}
	p := planDir(t, dir)
	r, err := Start(context.Background(), p, Options{Observer: obs})
	if err == nil {
		abortAtCleanup(t, r, p) // it should have failed: leave nothing running
	}
	var se *StageError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("error %v, want a StageError of the memory step", err)
	}
	t.Logf("restore: %v", err)
	if obs.ipc == 0 {
		t.Fatal("no IPC namespace of the root seen")
	}
	if h := holders("ipc", obs.ipc); len(h) > 0 {
		t.Errorf("the tree's IPC namespace is still held by %q", h)
	}
	if left := sysvKeys(t); len(left) > 0 {
		t.Errorf("SysV objects in our IPC namespace: %q", left)
	}
}
