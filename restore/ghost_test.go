package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	remap_file_path "github.com/checkpoint-restore/go-criu/v8/crit/images/remap-file-path"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/fixture"
)

// criuGhosts holds CRIU 4.2's images of the ghost workload's deleted
// files (README.md there).
var criuGhosts = filepath.Join("..", "images", "testdata", "criu-4.2-ghost")

// ghostFiles are the files of criuGhosts' files.img that are remapped, in
// the order the workload's init names them, and their ghosts: file 8, the
// init's fd 9, is the file that file 3 maps.
var (
	ghostFiles  = []uint32{2, 3, 6, 7, 8}
	ghostRemaps = []uint32{1, 2, 3, 4, 2}
)

// planGhosts plans the remapped files of the image set in dir for task 1,
// as loadTask would, and returns the first error.
func planGhosts(dir string) (*Plan, []*File, error) {
	d, err := images.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	p := &Plan{Dir: d, Files: map[uint32]*File{}}
	t := &Task{PID: 1}
	var fs []*File
	for _, id := range append([]uint32{1, 5}, ghostFiles...) {
		f, err := p.file(t, id, "test")
		if err != nil {
			return nil, nil, err
		}
		fs = append(fs, f)
	}
	return p, fs, nil
}

// TestPlanGhostCRIU plans the ghost files CRIU 4.2 wrote: each deleted
// file gets its ghost with the owner, mode, size and chunks of its image,
// made at CRIU's name for it, and the files that have a name get none.
func TestPlanGhostCRIU(t *testing.T) {
	p, fs, err := planGhosts(criuGhosts)
	if err != nil {
		t.Fatal(err)
	}
	if fs[0].Remap != nil || fs[1].Remap != nil {
		t.Errorf("files 1 and 5 have names, but remaps %+v, %+v", fs[0].Remap, fs[1].Remap)
	}
	type chunk struct{ off, n uint64 }
	for i, want := range []struct {
		id     uint32
		path   string
		mode   uint32
		size   uint64
		chunks []chunk
	}{
		{1, "/tmp/ghostw/w5/private.bin.cr.1.ghost", 0o100644, 8192, []chunk{{0, 8192}}},
		{2, "/dev/shm/crest-ghost.4rVBuE.cr.2.ghost", 0o100600, 4096, []chunk{{0, 4096}}},
		{3, "/tmp/ghostw/w5/scratch.bin.cr.3.ghost", 0o100640, 90112, []chunk{{0, 4096}, {65536, 4096}}},
		{4, "/tmp/ghostw/w5/#10027170.cr.4.ghost", 0o100600, 100, []chunk{{0, 100}}},
	} {
		f := fs[2+i]
		if f.Remap == nil || f.Remap.Ghost == nil {
			t.Errorf("file %d (%s): no ghost", f.ID, f.Path)
			continue
		}
		g := f.Remap.Ghost
		var chunks []chunk
		for _, c := range g.Chunks {
			chunks = append(chunks, chunk{c.Off, uint64(len(c.Data))})
		}
		got := fmt.Sprintf("ghost %d at %s, mode %#o, %d bytes, chunks %v, owner %d:%d", g.ID, g.Path, g.Mode, g.Size, chunks, g.UID, g.GID)
		exp := fmt.Sprintf("ghost %d at %s, mode %#o, %d bytes, chunks %v, owner 0:0", want.id, want.path, want.mode, want.size, want.chunks)
		if got != exp {
			t.Errorf("file %d (%s):\n%s, want\n%s", f.ID, f.Path, got, exp)
		}
		if g.Atime == nil || g.Mtime == nil || g.Mtime.Sec == 0 {
			t.Errorf("file %d: times %v %v", f.ID, g.Atime, g.Mtime)
		}
		if g.Files[0] != f || g.Owner.PID != 1 {
			t.Errorf("ghost %d: files %v, owner %v", g.ID, g.Files, g.Owner)
		}
	}
	// the init's fd on the page it maps: one ghost for both files
	if g := fs[6].Remap.Ghost; g != fs[3].Remap.Ghost || len(g.Files) != 2 || g.Files[1] != fs[6] {
		t.Errorf("file 8 (fd 9 of the page file 3 maps): ghost %+v, want the one of file 3", g)
	}
	if len(p.remaps.order) != 4 {
		t.Errorf("%d ghosts planned, want 4", len(p.remaps.order))
	}
	if fl := fs[5].Flags; fl&unix.O_TMPFILE != unix.O_TMPFILE {
		t.Errorf("the O_TMPFILE file's flags %#o lost O_TMPFILE", fl)
	}
}

// rewrite changes image file name of dir (of kind k) with change.
func rewrite(t *testing.T, dir, name string, k *images.Kind, change func(*images.Image)) {
	t.Helper()
	img, err := images.ReadKindFile(filepath.Join(dir, name), k)
	if err != nil {
		t.Fatal(err)
	}
	change(img)
	if err := images.WriteFile(filepath.Join(dir, name), img); err != nil {
		t.Fatal(err)
	}
}

func remapEntries(t *testing.T, dir string, change func([]*remap_file_path.RemapFilePathEntry) []*remap_file_path.RemapFilePathEntry) {
	t.Helper()
	rewrite(t, dir, "remap-fpath.img", images.KindRemapFpath, func(img *images.Image) {
		var es []*remap_file_path.RemapFilePathEntry
		for _, e := range img.Entries {
			es = append(es, e.Message.(*remap_file_path.RemapFilePathEntry))
		}
		img.Entries = nil
		for _, e := range change(es) {
			img.Entries = append(img.Entries, images.Entry{Message: e})
		}
	})
}

func ghostHead(img *images.Image) *ghost_file.GhostFileEntry {
	return img.Entries[0].Message.(*ghost_file.GhostFileEntry)
}

// TestPlanGhostImages: image sets that CRIU's older versions wrote, or
// links CRIU made, plan; broken ghost images and remaps crest does not
// restore are refused by name (image file, entry, file, task).
func TestPlanGhostImages(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, dir string)
		want  []string // nil: plans, see ok
		ok    func(t *testing.T, fs []*File)
	}{
		{"before remap_type", func(t *testing.T, dir string) {
			remapEntries(t, dir, func(es []*remap_file_path.RemapFilePathEntry) []*remap_file_path.RemapFilePathEntry {
				for _, e := range es {
					e.RemapType, e.RemapId = nil, proto.Uint32(e.GetRemapId()|remapGhostBit)
				}
				return es
			})
		}, nil, func(t *testing.T, fs []*File) {
			for i, f := range fs[2:] {
				if f.Remap == nil || f.Remap.Ghost == nil || f.Remap.Ghost.ID != ghostRemaps[i] {
					t.Errorf("file %d: remap %+v, want ghost %d", f.ID, f.Remap, ghostRemaps[i])
				}
			}
		}},
		{"link CRIU made", func(t *testing.T, dir string) {
			remapEntries(t, dir, func(es []*remap_file_path.RemapFilePathEntry) []*remap_file_path.RemapFilePathEntry {
				es[0].RemapType, es[0].RemapId = remap_file_path.RemapType_LINKED.Enum(), proto.Uint32(5)
				return es
			})
		}, nil, func(t *testing.T, fs []*File) {
			if r := fs[2].Remap; r == nil || r.Ghost != nil || r.Link != "/tmp/ghostw/w5/out-parent.log" {
				t.Errorf("file 2: remap %+v, want the link /tmp/ghostw/w5/out-parent.log", r)
			}
		}},
		{"ghost image missing", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "ghost-file-3.img"))
		}, []string{"task 1", "ghost-file-3.img", "missing", "remap-fpath.img entry 2 (file 6, /tmp/ghostw/w5/scratch.bin)"}, nil},
		{"wrong size", func(t *testing.T, dir string) {
			rewrite(t, dir, "ghost-file-2.img", images.KindGhostFile, func(img *images.Image) {
				img.Entries[0].Payload = img.Entries[0].Payload[:4000]
			})
		}, []string{"task 1", "ghost-file-2.img", "4000 bytes, but files.img has 4096 for file 3 (/dev/shm/crest-ghost.4rVBuE)"}, nil},
		{"chunks out of order", func(t *testing.T, dir string) {
			rewrite(t, dir, "ghost-file-3.img", images.KindGhostFile, func(img *images.Image) {
				img.Entries[1], img.Entries[2] = img.Entries[2], img.Entries[1]
			})
		}, []string{"task 1", "ghost-file-3.img", "entry 2 (chunk at 0, 4096 bytes)", "before the end of entry 1 at 69632", "out of order"}, nil},
		{"chunk past the size", func(t *testing.T, dir string) {
			rewrite(t, dir, "ghost-file-3.img", images.KindGhostFile, func(img *images.Image) {
				ghostHead(img).Size = proto.Uint64(65536)
			})
		}, []string{"task 1", "ghost-file-3.img", "entry 2 (chunk at 65536, 4096 bytes): past the file's size, 65536"}, nil},
		{"chunks without a size", func(t *testing.T, dir string) {
			rewrite(t, dir, "ghost-file-3.img", images.KindGhostFile, func(img *images.Image) {
				ghostHead(img).Size = nil
			})
		}, []string{"task 1", "ghost-file-3.img", "entry 0: chunks without the file's size"}, nil},
		{"mode differs", func(t *testing.T, dir string) {
			rewrite(t, dir, "ghost-file-1.img", images.KindGhostFile, func(img *images.Image) {
				ghostHead(img).Mode = proto.Uint32(0o100600)
			})
		}, []string{"task 1", "ghost-file-1.img", "mode 0100600, but files.img has 0100644 for file 2 (/tmp/ghostw/w5/private.bin)"}, nil},
		{"a deleted directory", func(t *testing.T, dir string) {
			rewrite(t, dir, "ghost-file-4.img", images.KindGhostFile, func(img *images.Image) {
				ghostHead(img).Mode = proto.Uint32(0o40700)
			})
		}, []string{"task 1", "ghost-file-4.img", "entry 0: a file of mode 040700", "entry 3 (file 7", "only deleted regular files"}, nil},
		{"a dead process's /proc", func(t *testing.T, dir string) {
			remapEntries(t, dir, func(es []*remap_file_path.RemapFilePathEntry) []*remap_file_path.RemapFilePathEntry {
				es[1].RemapType, es[1].RemapId = remap_file_path.RemapType_PROCFS.Enum(), proto.Uint32(42)
				return es
			})
		}, []string{"task 1", "remap-fpath.img", "entry 1 (file 3, /dev/shm/crest-ghost.4rVBuE)", "/proc of process 42", "not supported"}, nil},
		{"an unknown remap", func(t *testing.T, dir string) {
			remapEntries(t, dir, func(es []*remap_file_path.RemapFilePathEntry) []*remap_file_path.RemapFilePathEntry {
				es[2].RemapType = remap_file_path.RemapType(7).Enum()
				return es
			})
		}, []string{"task 1", "remap-fpath.img", "entry 2 (file 6", "remap type 7 is not known"}, nil},
		{"a remap of no file", func(t *testing.T, dir string) {
			remapEntries(t, dir, func(es []*remap_file_path.RemapFilePathEntry) []*remap_file_path.RemapFilePathEntry {
				return append(es, &remap_file_path.RemapFilePathEntry{OrigId: proto.Uint32(99), RemapId: proto.Uint32(1),
					RemapType: remap_file_path.RemapType_GHOST.Enum()})
			})
		}, []string{"remap-fpath.img", "entry 5 (file 99)", "no file with id 99"}, nil},
		{"a file remapped twice", func(t *testing.T, dir string) {
			remapEntries(t, dir, func(es []*remap_file_path.RemapFilePathEntry) []*remap_file_path.RemapFilePathEntry {
				return append(es, es[0])
			})
		}, []string{"remap-fpath.img", "entry 5 (file 2)", "remapped twice"}, nil},
		{"a link to no file", func(t *testing.T, dir string) {
			remapEntries(t, dir, func(es []*remap_file_path.RemapFilePathEntry) []*remap_file_path.RemapFilePathEntry {
				es[3].RemapType, es[3].RemapId = remap_file_path.RemapType_LINKED.Enum(), proto.Uint32(98)
				return es
			})
		}, []string{"task 1", "remap-fpath.img", "entry 3 (file 7", "its link", "no file with id 98"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, criuGhosts)
			tc.spoil(t, dir)
			_, fs, err := planGhosts(dir)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				tc.ok(t, fs)
				return
			}
			var pe *PlanError
			if !errors.As(err, &pe) {
				t.Fatalf("plan: %v, want a PlanError", err)
			}
			t.Log(err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

var ghostLogs = map[string]check.Next{"out-parent.log": check.Counter, "out-child.log": check.Counter}

// ghostsGone checks that nothing of the restore's ghosts is left: no
// ghost file, no link at a remapped file's path.
func ghostsGone(t *testing.T, p *Plan) {
	t.Helper()
	for _, g := range p.remaps.order {
		for _, path := range []string{g.Path} {
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: left behind (%v)", path, err)
			}
		}
		for _, f := range g.Files {
			for _, path := range []string{f.Path, f.Path + ".cr_link"} {
				if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s: left behind (%v)", path, err)
				}
			}
		}
	}
}

// ghostInodes returns the dev and inode that each fd and mapping of the
// tasks of p (host pids from r) that names ghost g is on, by where, and
// checks that each is deleted.
func ghostInodes(t *testing.T, p *Plan, r *Restore, g *Ghost) map[string]string {
	t.Helper()
	out := map[string]string{}
	look := func(where, link string) {
		var st unix.Stat_t
		if err := unix.Stat(link, &st); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		if st.Nlink != 0 {
			t.Errorf("%s: a file with %d links, want a deleted one", where, st.Nlink)
		}
		out[where] = fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	}
	for _, task := range p.Tasks {
		host := r.HostPID(task.PID)
		for _, fd := range task.FDs {
			if fd.File.Remap != nil && fd.File.Remap.Ghost == g {
				look(fmt.Sprintf("task %d fd %d", task.PID, fd.FD), fmt.Sprintf("/proc/%d/fd/%d", host, fd.FD))
			}
		}
		for _, v := range task.Mem.VMAs {
			if v.File != nil && v.File.Remap != nil && v.File.Remap.Ghost == g {
				look(fmt.Sprintf("task %d mapping %#x", task.PID, v.Start), fmt.Sprintf("/proc/%d/map_files/%x-%x", host, v.Start, v.End))
			}
		}
	}
	return out
}

// oneInode checks that every fd and mapping of every ghost of p is on
// one inode for that ghost, and that the shared page is in both tasks.
func oneInode(t *testing.T, p *Plan, r *Restore) {
	t.Helper()
	for _, g := range p.remaps.order {
		in := ghostInodes(t, p, r, g)
		seen := map[string]bool{}
		for _, ino := range in {
			seen[ino] = true
		}
		if len(seen) != 1 {
			t.Errorf("%s (%s) is %d files: %v", ghostImage(g.ID), g.Files[0].Path, len(seen), in)
		}
		if g == shmGhost(t, p) && len(in) != 3 {
			t.Errorf("the shared page is reached %d ways (%v), want 3: the mapping of each task and fd 9", len(in), in)
		}
	}
}

// ghostImages dumps the ghost workload with crest and plans its images.
func ghostImages(t *testing.T) (string, func() *Plan, string) {
	p, imgs := dumpedWorkload(t, "ghost", ghostLogs, 3, dump.Options{})
	return p.Dir, func() *Plan {
		d, err := images.Open(imgs)
		if err != nil {
			t.Fatal(err)
		}
		plan, err := NewPlan(d)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(plan.remaps.order); n != 4 {
			t.Fatalf("%d ghosts planned, want 4", n)
		}
		return plan
	}, imgs
}

// shmGhost is the ghost of the page the init and its child share.
func shmGhost(t *testing.T, p *Plan) *Ghost {
	t.Helper()
	for _, g := range p.remaps.order {
		if strings.HasPrefix(g.Files[0].Path, "/dev/shm/crest-ghost.") {
			return g
		}
	}
	t.Fatal("no ghost of /dev/shm/crest-ghost.*")
	return nil
}

// TestRestoreGhost restores crest's dump of the ghost workload: its
// deleted files come back deleted, the /dev/shm page its two tasks share
// one inode again, nothing is left behind, and both run on (they check
// their semaphore and counters, the private mapping, the file with holes
// and the O_TMPFILE file every tick).
func TestRestoreGhost(t *testing.T) {
	dir, plan, _ := ghostImages(t)
	p := plan()
	before := check.Snapshot(t, dir, ghostLogs)
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	root := r.RootPID()
	if !hasStep(r, 1, "make ghost files") {
		t.Error(`no step "make ghost files" for task 1 in the timeline`)
	}
	r.Detach()
	defer killTree(t, root)
	ghostsGone(t, p)
	oneInode(t, p, r)
	for _, fd := range p.Task(1).FDs {
		if fd.File.Remap == nil {
			continue
		}
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", root, fd.FD))
		if err != nil || link != fd.File.Path+" (deleted)" {
			t.Errorf("fd %d: %q (%v), want %q", fd.FD, link, err, fd.File.Path+" (deleted)")
		}
	}
	check.Logs(t, dir, before, ghostLogs, time.Second)
}

// TestRestoreGhostRollback: a restore that fails after the ghosts were
// made, or is aborted later, leaves no ghost and no link behind.
func TestRestoreGhostRollback(t *testing.T) {
	dir, plan, _ := ghostImages(t)
	t.Run("an open fails after the ghosts", func(t *testing.T) {
		p := plan()
		// the child's working directory, opened after every ghost
		p.Task(2).FS.CwdFile.Path = filepath.Join(dir, "gone")
		_, err := Start(context.Background(), p, Options{})
		var se *StageError
		if !errors.As(err, &se) || !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), "gone") {
			t.Fatalf("restore: %v, want a StageError for the missing directory", err)
		}
		ghostsGone(t, p)
	})
	t.Run("a ghost's name is taken", func(t *testing.T) {
		p := plan()
		taken := p.remaps.order[1].Path
		if err := os.Mkdir(taken, 0o700); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(taken)
		_, err := Start(context.Background(), p, Options{})
		if !errors.Is(err, syscall.EEXIST) || !strings.Contains(err.Error(), taken) {
			t.Fatalf("restore: %v, want EEXIST for %s", err, taken)
		}
		if st, err := os.Stat(taken); err != nil || !st.IsDir() {
			t.Errorf("%s, which was not the restore's: %v", taken, err)
		}
		os.Remove(taken)
		ghostsGone(t, p)
	})
	t.Run("parked, then aborted", func(t *testing.T) {
		p := plan()
		r, err := Start(context.Background(), p, Options{Until: StageRestore})
		if err != nil {
			t.Fatal(err)
		}
		// the tasks hold their files: the names are gone already
		ghostsGone(t, p)
		oneInode(t, p, r)
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		ghostsGone(t, p)
	})
}

// TestRestoreLinkRemap restores a file through a link CRIU's dump made
// (LINKED, criu dump --link-remap): crest's dump of the ghost workload
// with the init's log moved to such a link. The log is opened through it,
// deleted as it was, and the link goes once the restore completed; a
// restore that fails keeps it, as CRIU does: the images need it.
func TestRestoreLinkRemap(t *testing.T) {
	dir, _, imgs := ghostImages(t)
	log := filepath.Join(dir, "out-parent.log")
	link := filepath.Join(dir, "link_remap.99")
	if err := os.Rename(log, link); err != nil {
		t.Fatal(err)
	}
	var logID uint32
	rewrite(t, imgs, "files.img", images.KindFiles, func(img *images.Image) {
		for _, e := range img.Entries {
			if r := e.Message.(*fdinfo.FileEntry).GetReg(); r.GetName() == log {
				logID = r.GetId()
			}
		}
		img.Entries = append(img.Entries, images.Entry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(99),
			Reg: &regfile.RegFileEntry{Id: proto.Uint32(99), Flags: proto.Uint32(0), Pos: proto.Uint64(0), Name: proto.String(link),
				Fown: owner(0, 0, 0)}}})
	})
	remapEntries(t, imgs, func(es []*remap_file_path.RemapFilePathEntry) []*remap_file_path.RemapFilePathEntry {
		return append(es, &remap_file_path.RemapFilePathEntry{OrigId: proto.Uint32(logID), RemapId: proto.Uint32(99),
			RemapType: remap_file_path.RemapType_LINKED.Enum()})
	})
	plan := func() *Plan { return planDir(t, imgs) }
	t.Run("failed", func(t *testing.T) {
		p := plan()
		p.Task(2).FS.CwdFile.Path = filepath.Join(dir, "gone")
		if _, err := Start(context.Background(), p, Options{}); err == nil {
			t.Fatal("restore without the child's working directory worked")
		}
		if _, err := os.Stat(link); err != nil {
			t.Errorf("the link CRIU made: %v", err)
		}
		if _, err := os.Lstat(log); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: left behind (%v)", log, err)
		}
	})
	t.Run("completed", func(t *testing.T) {
		p := plan()
		r, err := Start(context.Background(), p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		root := r.RootPID()
		r.Detach()
		defer killTree(t, root)
		for _, path := range []string{link, log, log + ".cr_link"} {
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: left behind (%v)", path, err)
			}
		}
		// the init writes on into its log, deleted as at the dump
		fd := fmt.Sprintf("/proc/%d/fd/3", root)
		if l, err := os.Readlink(fd); err != nil || l != log+" (deleted)" {
			t.Errorf("fd 3: %q (%v), want %q", l, err, log+" (deleted)")
		}
		b0, err := os.ReadFile(fd)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, err := os.ReadFile(fd)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), "CORRUPT") {
				t.Fatalf("the init's log: %s", b[len(b0):])
			}
			if strings.Count(string(b[len(b0):]), "\n") >= 20 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the init wrote %q in 5s", b[len(b0):])
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// TestGhostNames makes a ghost and opens it as prepareFiles does, on the
// file system: the ghost goes beside its file, or in the directory above
// when the file's is gone (CRIU's trim_last_parent), with its mode,
// times, size and holes; the open links it at the file's path, made for
// the time of the open, or at PATH.cr_link when the path is taken, and
// leaves nothing but the open file, at its offset.
func TestGhostNames(t *testing.T) {
	for _, tc := range []struct {
		name       string
		dirMissing bool // the file's directory is gone
		taken      bool // the file's path is taken
		ghostIn    string
		fdName     string
	}{
		{"beside", false, false, "sub", "sub/x (deleted)"},
		{"directory gone", true, false, ".", "sub/x (deleted)"},
		{"path taken", false, true, "sub", "sub/x.cr_link (deleted)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if !tc.dirMissing {
				if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if tc.taken {
				if err := os.WriteFile(filepath.Join(dir, "sub", "x"), []byte("other"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			g := &Ghost{ID: 0x1f, Path: filepath.Join(dir, "sub", "x.cr.1f.ghost"), Mode: unix.S_IFREG | 0o640, Size: 3 << 12,
				Chunks: []images.GhostChunk{{Off: 0, Data: []byte("head")}, {Off: 2 << 12, Data: []byte("tail")}},
				Atime:  &unix.Timeval{Sec: 1000, Usec: 5}, Mtime: &unix.Timeval{Sec: 2000, Usec: 7}}
			f := &File{ID: 9, Kind: FileRegular, Path: filepath.Join(dir, "sub", "x"), Flags: unix.O_RDWR, Pos: 2,
				Size: g.Size, Mode: g.Mode, Remap: &Remap{Ghost: g}}
			pr := &prepared{index: map[string]int{}, ghostPaths: map[*Ghost]string{}}
			path, err := pr.makeGhost(g)
			if err != nil {
				t.Fatal(err)
			}
			pr.ghostPaths[g] = path
			if want := filepath.Join(dir, tc.ghostIn, "x.cr.1f.ghost"); path != want {
				t.Errorf("ghost made at %s, want %s", path, want)
			}
			var st unix.Stat_t
			if err := unix.Stat(path, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode != g.Mode || st.Size != int64(g.Size) || st.Atim.Sec != 1000 || st.Atim.Nsec != 5000 || st.Mtim.Sec != 2000 || st.Mtim.Nsec != 7000 {
				t.Errorf("ghost: mode %#o size %d atime %v mtime %v", st.Mode, st.Size, st.Atim, st.Mtim)
			}
			fd, err := pr.openPath(f, int(f.Flags))
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := pr.removeGhosts(); err != nil {
				t.Fatal(err)
			}
			name, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
			if want := filepath.Join(dir, tc.fdName); name != want {
				t.Errorf("fd on %q, want %q", name, want)
			}
			var got []string
			filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error {
				got = append(got, strings.TrimPrefix(p, dir))
				return nil
			})
			want := "[]"
			if !tc.dirMissing {
				want = "[/sub]"
			}
			if tc.taken {
				want = "[/sub /sub/x]"
			}
			if fmt.Sprint(got[1:]) != want {
				t.Errorf("left in the directory: %v, want %s", got[1:], want)
			}
			pos, _ := unix.Seek(fd, 0, unix.SEEK_CUR)
			hole, _ := unix.Seek(fd, 0, unix.SEEK_HOLE)
			data, _ := unix.Seek(fd, hole, unix.SEEK_DATA)
			b := make([]byte, 3<<12)
			n, _ := unix.Pread(fd, b, 0)
			if pos != 2 || hole != 1<<12 || data != 2<<12 || n != len(b) || string(b[:4]) != "head" || string(b[2<<12:2<<12+4]) != "tail" || b[100] != 0 {
				t.Errorf("the file: offset %d, a hole at %d, data at %d, %d bytes %q...%q", pos, hole, data, n, b[:4], b[2<<12:2<<12+4])
			}
		})
	}
}
