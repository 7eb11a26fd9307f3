package restore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	remap_file_path "github.com/checkpoint-restore/go-criu/v8/crit/images/remap-file-path"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/fixture"
)

var mntghostLogs = map[string]check.Next{"out-mntghost.log": check.Counter}

// mntghostFiles are the deleted files the workload mntghost holds, as
// its fd links name them (the O_TMPFILE one by its directory).
var mntghostFiles = []string{"/scratch/ghost.txt (deleted)", "/bind/host.bin (deleted)", "/scratch/#"}

// mntghostRun restores the mntghost images in dir, whose workload ran in
// wdir, and returns what its log grew by and the restore.
func mntghostRun(t *testing.T, dir, wdir string) (string, *Restore) {
	t.Helper()
	p := planDir(t, dir)
	if p.Mnt == nil || len(p.Mnt.Ghosts) != 3 {
		t.Fatalf("the plan's mount namespace has ghosts %v, want 3", p.Mnt)
	}
	from := logSize(wdir, "out-mntghost.log")
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	return waitLog(t, wdir, "out-mntghost.log", from, lines(5)), r
}

// checkMntGhosts checks the restored root's deleted files from outside
// (the workload checks the rest): each fd of it names its file as at
// the dump, and no ghost or link is left in the workload's directory or
// the host directory the tree binds.
func checkMntGhosts(t *testing.T, r *Restore, wdir string) {
	t.Helper()
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(r.RootPID()) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	var links []string
	for _, fd := range fds {
		l, _ := os.Readlink("/proc/" + strconv.Itoa(r.RootPID()) + "/fd/" + fd.Name())
		links = append(links, l)
	}
	for _, want := range mntghostFiles {
		found := false
		for _, l := range links {
			found = found || strings.HasPrefix(l, wdir+want)
		}
		if !found {
			t.Errorf("no fd on %s%s: %q", wdir, want, links)
		}
	}
	for _, d := range []string{wdir, filepath.Join(wdir, "src"), filepath.Join(wdir, "scratch"), filepath.Join(wdir, "bind")} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.Contains(e.Name(), ".ghost") || strings.Contains(e.Name(), ".cr_link") || e.Name() == "host.bin" {
				t.Errorf("left in %s: %s", d, e.Name())
			}
		}
	}
}

// TestRestoreMntGhost restores crest dump's images of mntghost: its
// deleted files on its tmpfs (one O_TMPFILE) and on the bind mount of a
// host directory are made again on those mounts, opened there and
// removed; the workload finds them with their contents, modes, sizes,
// offsets and no link, and nothing of them is left.
func TestRestoreMntGhost(t *testing.T) {
	own := ourMntNS(t)
	p, imgs := dumpedWorkload(t, "mntghost", mntghostLogs, 3, dump.Options{})
	out, r := mntghostRun(t, imgs, p.Dir)
	checkOurThreads(t, own)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntghost wrote:\n%s", out)
	}
	checkMntGhosts(t, r, p.Dir)
	if m := ourMounts(t, p.Dir); len(m) > 0 {
		t.Errorf("mounts of the tree in our namespace:\n%s", strings.Join(m, "\n"))
	}
}

// The images of images/testdata/criu-4.2-mntghost: CRIU 4.2's dump of
// the workload mntghost, run in criuMntGhostDir.
const criuMntGhostDir = "/tmp/crest-criu-4.2-mntghost"

// TestRestoreMntGhostCRIU restores CRIU 4.2's images of mntghost
// (images/testdata/criu-4.2-mntghost), its program and log put back where
// they were: the workload runs on with its deleted files.
func TestRestoreMntGhostCRIU(t *testing.T) {
	needRoot(t)
	fx := filepath.Join("..", "images", "testdata", "criu-4.2-mntghost")
	t.Cleanup(func() { os.RemoveAll(criuMntGhostDir) })
	putCRIUTestdata(t, fx, criuMntGhostDir)
	for _, d := range []string{"scratch", "src", "bind"} {
		if err := os.Mkdir(filepath.Join(criuMntGhostDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	before := check.Snapshot(t, criuMntGhostDir, mntghostLogs)
	out, r := mntghostRun(t, filepath.Join(fx, "images"), criuMntGhostDir)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntghost wrote:\n%s", out)
	}
	checkMntGhosts(t, r, criuMntGhostDir)
	check.Logs(t, criuMntGhostDir, before, mntghostLogs, 100*time.Millisecond)
}

// TestRestoreMntGhostReadOnly restores mntghost's images with its bind
// mount read-only and its deleted file there open read-only: the ghost is
// made on the mount made writable for the time, which is read-only again
// when the tree runs.
func TestRestoreMntGhostReadOnly(t *testing.T) {
	p, imgs := dumpedWorkload(t, "mntghost", mntghostLogs, 3, dump.Options{})
	dir := fixture.CopyDir(t, imgs)
	editMounts(t, dir, func(es []*mnt.MntEntry) {
		e := mountAt(t, es, "/bind")
		e.Flags = proto.Uint32(e.GetFlags() | unix.MS_RDONLY)
	})
	editImage(t, dir, "files.img", func(img *images.Image) {
		for _, e := range img.Entries {
			if r := e.Message.(*fdinfo.FileEntry).GetReg(); r != nil && strings.HasSuffix(r.GetName(), "/bind/host.bin") {
				r.Flags = proto.Uint32(r.GetFlags()&^unix.O_ACCMODE | unix.O_RDONLY)
			}
		}
	})
	out, r := mntghostRun(t, dir, p.Dir)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntghost wrote:\n%s", out)
	}
	checkMntGhosts(t, r, p.Dir)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(r.RootPID()) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 5 && f[4] == filepath.Join(p.Dir, "bind") {
			found = true
			if !strings.HasPrefix(f[5], "ro,") {
				t.Errorf("the bind mount is not read-only again: %s", l)
			}
		}
	}
	if !found {
		t.Errorf("no bind mount in the tree's mountinfo:\n%s", b)
	}
}

// TestPlanMntGhost: the ghost files of a tree with its own mount
// namespace that are not restored, refused by the plan naming the ghost
// image, the file and the mount.
func TestPlanMntGhost(t *testing.T) {
	_, imgs := dumpedWorkload(t, "mntghost", mntghostLogs, 3, dump.Options{})
	fileOf := func(t *testing.T, dir, suffix string) *fdinfo.FileEntry {
		t.Helper()
		var out *fdinfo.FileEntry
		editImage(t, dir, "files.img", func(img *images.Image) {
			for _, e := range img.Entries {
				if fe := e.Message.(*fdinfo.FileEntry); fe.GetReg() != nil && strings.HasSuffix(fe.GetReg().GetName(), suffix) {
					out = fe
				}
			}
		})
		if out == nil {
			t.Fatalf("no file *%s in files.img", suffix)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"read-only file system", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { mountAt(t, es, "/scratch").SbFlags = proto.Uint32(unix.MS_RDONLY) })
		}, "a read-only file system, where its ghost can not be made"},
		{"linked remap", func(t *testing.T, dir string) {
			editImage(t, dir, "remap-fpath.img", func(img *images.Image) {
				e := img.Entries[0].Message.(*remap_file_path.RemapFilePathEntry)
				e.RemapType = remap_file_path.RemapType_LINKED.Enum()
				e.RemapId = proto.Uint32(fileOf(t, dir, "out-mntghost.log").GetId())
			})
		}, "a linked remap"},
		{"file on another file system", func(t *testing.T, dir string) {
			// bind/host.bin made a second file of the ghost of
			// scratch/ghost.txt, whose mount is the tmpfs
			txt, host := fileOf(t, dir, "/scratch/ghost.txt"), fileOf(t, dir, "/bind/host.bin")
			editImage(t, dir, "remap-fpath.img", func(img *images.Image) {
				var ghost uint32
				for _, e := range img.Entries {
					if r := e.Message.(*remap_file_path.RemapFilePathEntry); r.GetOrigId() == txt.GetId() {
						ghost = r.GetRemapId()
					}
				}
				for _, e := range img.Entries {
					if r := e.Message.(*remap_file_path.RemapFilePathEntry); r.GetOrigId() == host.GetId() {
						r.RemapId = proto.Uint32(ghost)
					}
				}
			})
			editImage(t, dir, "files.img", func(img *images.Image) {
				for _, e := range img.Entries {
					if r := e.Message.(*fdinfo.FileEntry).GetReg(); r != nil && r.GetId() == host.GetId() {
						r.Size, r.Mode = proto.Uint64(txt.GetReg().GetSize()), proto.Uint32(txt.GetReg().GetMode())
					}
				}
			})
		}, "host.bin): on mount"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewPlan(d, Options{})
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want a PlanError with %q", err, tc.want)
			}
		})
	}
}

// TestRestoreMntGhostFails: a restore of mntghost that fails once its
// ghosts are made (a file of the tree not on the mount its image names),
// or while it makes them (a ghost's path taken), fails in
// PREPARE_NAMESPACES and leaves nothing behind: no process, no fd, no
// mount, and no ghost in the host directory the tree binds (but what
// was there before).
func TestRestoreMntGhostFails(t *testing.T) {
	own := ourMntNS(t)
	defer checkOurThreads(t, own)
	p, imgs := dumpedWorkload(t, "mntghost", mntghostLogs, 3, dump.Options{})
	for _, tc := range []struct {
		name string
		// edit breaks the images in dir, or puts a file into the
		// host directory, whose name it returns
		edit func(t *testing.T, dir string) string
		want string
	}{
		{"file not on its mount", func(t *testing.T, dir string) string {
			var bind int32
			editMounts(t, dir, func(es []*mnt.MntEntry) { bind = int32(mountAt(t, es, "/bind").GetMntId()) })
			editImage(t, dir, "files.img", func(img *images.Image) {
				for _, e := range img.Entries {
					// the log, opened after the ghosts
					if r := e.Message.(*fdinfo.FileEntry).GetReg(); r != nil && strings.HasSuffix(r.GetName(), "out-mntghost.log") {
						r.MntId = proto.Int32(bind)
					}
				}
			})
			return ""
		}, "not on mount"},
		{"ghost path taken", func(t *testing.T, dir string) string {
			for _, mg := range planDir(t, dir).Mnt.Ghosts {
				if strings.HasSuffix(mg.Mount.Mountpoint, "/bind") {
					if err := os.WriteFile(filepath.Join(p.Dir, "src", mg.Path), []byte("not ours"), 0o644); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { os.Remove(filepath.Join(p.Dir, "src", mg.Path)) })
					return mg.Path
				}
			}
			t.Fatal("no ghost on the bind mount")
			return ""
		}, "left by another restore"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			there := tc.edit(t, dir)
			plan := planDir(t, dir)
			kids, fds := childrenOfOurs(t), dirNames(t, "/proc/self/fd")
			r, err := Start(context.Background(), plan, Options{})
			if err == nil {
				abortAtCleanup(t, r, plan)
				t.Fatal("the restore did not fail")
			}
			var se *StageError
			if !errors.As(err, &se) || se.Stage != StagePrepareNamespaces || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one of PREPARE_NAMESPACES with %q", err, tc.want)
			}
			if now := childrenOfOurs(t); len(now) > len(kids) {
				t.Errorf("processes left: %v (before: %v)", now, kids)
			}
			if now := dirNames(t, "/proc/self/fd"); now != fds {
				t.Errorf("our fds: %s, before the restore: %s", now, fds)
			}
			if m := ourMounts(t, p.Dir); len(m) > 0 {
				t.Errorf("mounts left in our namespace:\n%s", strings.Join(m, "\n"))
			}
			ents, _ := os.ReadDir(filepath.Join(p.Dir, "src"))
			for _, e := range ents {
				if e.Name() != there {
					t.Errorf("left in the bound host directory: %s", e.Name())
				}
			}
			if there != "" {
				if b, err := os.ReadFile(filepath.Join(p.Dir, "src", there)); string(b) != "not ours" {
					t.Errorf("the file that was there: %q %v", b, err)
				}
			}
		})
	}
}
