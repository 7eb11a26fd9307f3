package restore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/fixture"
)

var mntnsLogs = map[string]check.Next{"out-mntns.log": check.Counter}

// mntnsImages dumps the workload mntns with crest and returns its images
// and its directory.
func mntnsImages(t *testing.T) (imgs, wdir string) {
	t.Helper()
	p, imgs := dumpedWorkload(t, "mntns", mntnsLogs, 3, dump.Options{})
	return imgs, p.Dir
}

func mntnsFile(t *testing.T, dir string) string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "mountpoints-*.img"))
	if err != nil || len(m) != 1 {
		t.Fatalf("mountpoints images in %s: %v %v", dir, m, err)
	}
	return filepath.Base(m[0])
}

func editMounts(t *testing.T, dir string, edit func(es []*mnt.MntEntry)) {
	t.Helper()
	editImage(t, dir, mntnsFile(t, dir), func(img *images.Image) {
		var es []*mnt.MntEntry
		for _, e := range img.Entries {
			es = append(es, e.Message.(*mnt.MntEntry))
		}
		edit(es)
	})
}

// mountAt is the entry of es at mount point suffix.
func mountAt(t *testing.T, es []*mnt.MntEntry, suffix string) *mnt.MntEntry {
	t.Helper()
	for _, e := range es {
		if strings.HasSuffix(e.GetMountpoint(), suffix) {
			return e
		}
	}
	t.Fatalf("no mount at *%s", suffix)
	return nil
}

// ourMounts are the lines of our own mountinfo under dir: a restore must
// never make one.
func ourMounts(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, dir) {
			out = append(out, l)
		}
	}
	return out
}

// checkOurThreads checks that every thread of ours is in our mount
// namespace (own): the thread that made a tree's mounts has ended.
func checkOurThreads(t *testing.T, own uint64) {
	t.Helper()
	tids, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range tids {
		ino, err := nsIno("/proc/self/task/" + tid.Name() + "/ns/mnt")
		if err == nil && ino != own {
			t.Errorf("our thread %s is in mount namespace %d, not ours %d", tid.Name(), ino, own)
		}
	}
}

func ourMntNS(t *testing.T) uint64 {
	t.Helper()
	ino, err := nsIno("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

// mntnsRun restores dir and returns what the workload's log grew by.
func mntnsRun(t *testing.T, dir, wdir string) (string, *Restore, *recorder) {
	t.Helper()
	p := planDir(t, dir)
	if p.Mnt == nil {
		t.Fatal("the plan has no mount namespace")
	}
	from := logSize(wdir, "out-mntns.log")
	rec := &recorder{}
	r, err := Start(context.Background(), p, Options{Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	return waitLog(t, wdir, "out-mntns.log", from, lines(5)), r, rec
}

// TestRestoreMntNS restores crest dump's images of mntns: the workload
// finds its mounts, their files and its open files as they were, and
// nothing of it is mounted where we are.
func TestRestoreMntNS(t *testing.T) {
	own := ourMntNS(t)
	imgs, wdir := mntnsImages(t)
	out, r, rec := mntnsRun(t, imgs, wdir)
	checkOurThreads(t, own)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntns wrote:\n%s", out)
	}
	if m := ourMounts(t, wdir); len(m) > 0 {
		t.Errorf("mounts of the tree in our namespace:\n%s", strings.Join(m, "\n"))
	}
	tree, err := nsIno("/proc/" + strconv.Itoa(r.RootPID()) + "/ns/mnt")
	if err != nil || tree == own {
		t.Errorf("the root's mount namespace %d, ours %d (%v)", tree, own, err)
	}
	for _, name := range []string{stepMntNamespace, stepMntFiles} {
		var s *StepEvent
		for i := range rec.Steps {
			if rec.Steps[i].Step == name {
				s = &rec.Steps[i]
			}
		}
		if s == nil || !s.Succeeded || !s.Engine || s.Stage != StagePrepareNamespaces || s.PID != 1 {
			t.Errorf("step %q: %+v", name, s)
		}
	}
}

// TestRestoreMntNSCRIU restores CRIU 4.2's images of the mount namespace
// of the same workload (images/testdata/criu-4.2-mntns: its mountpoints
// and tmpfs tarballs, its paths moved to this run's directory) with
// crest dump's task images, whose files get CRIU's mount ids: the
// workload runs on.
func TestRestoreMntNSCRIU(t *testing.T) {
	imgs, wdir := mntnsImages(t)
	dir := fixture.CopyDir(t, imgs)
	const criuDir = "/tmp/h43/c1/w"
	ours := map[uint32]string{} // crest's mount id -> mount point
	editMounts(t, dir, func(es []*mnt.MntEntry) {
		for _, e := range es {
			ours[e.GetMntId()] = e.GetMountpoint()
		}
	})
	old := mntnsFile(t, dir)
	os.Remove(filepath.Join(dir, old))
	tarballs, _ := filepath.Glob(filepath.Join(dir, "tmpfs-*.img"))
	for _, f := range tarballs {
		os.Remove(f)
	}
	src := filepath.Join("..", "images", "testdata", "criu-4.2-mntns")
	for _, name := range []string{"mountpoints-10.img", "tmpfs-dev-45.tar.gz.img", "tmpfs-dev-46.tar.gz.img"} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "mountpoints-10.img" {
			name = old // crest's id of the namespace, as ids-1.img has it
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	criuID := map[string]uint32{} // mount point -> CRIU's mount id
	editMounts(t, dir, func(es []*mnt.MntEntry) {
		for _, e := range es {
			for _, f := range []*string{e.Mountpoint, e.Root} {
				if strings.HasPrefix(*f, criuDir) {
					*f = wdir + strings.TrimPrefix(*f, criuDir)
				}
			}
			criuID[e.GetMountpoint()] = e.GetMntId()
		}
	})
	editImage(t, dir, "files.img", func(img *images.Image) {
		for _, e := range img.Entries {
			r := e.Message.(*fdinfo.FileEntry).GetReg()
			if r == nil {
				continue
			}
			id, ok := criuID[ours[uint32(r.GetMntId())]]
			if !ok {
				t.Fatalf("file %s on mount %d: no CRIU mount at %s", r.GetName(), r.GetMntId(), ours[uint32(r.GetMntId())])
			}
			r.MntId = proto.Int32(int32(id))
		}
	})
	out, _, _ := mntnsRun(t, dir, wdir)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntns wrote:\n%s", out)
	}
}

// TestPlanMntNS: what the plan refuses of a mount namespace, naming the
// image, the entry and the mount.
func TestPlanMntNS(t *testing.T) {
	imgs, _ := mntnsImages(t)
	p := planDir(t, imgs)
	ns := p.Mnt
	if ns == nil || ns.Root == nil || ns.Root.Mountpoint != "/" || len(ns.Mounts) != 7 {
		t.Fatalf("mount namespace %+v", ns)
	}
	kinds := map[string]string{}
	for _, m := range ns.Mounts {
		how := "new " + m.FSType
		if m.BindOf != nil {
			how = "bind " + m.BindPath + " of " + m.BindOf.Mountpoint
		}
		kinds[strings.TrimPrefix(m.Mountpoint, filepath.Dir(ns.Mounts[len(ns.Mounts)-1].Mountpoint))] = how
	}
	t.Logf("%v", kinds)
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"slave of the host's", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { mountAt(t, es, "/scratch").MasterId = proto.Uint32(7) })
		}, "a slave of peer group 7, which no mount of the namespace is in"},
		{"external", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { mountAt(t, es, "/bind").ExtKey = proto.String("ext") })
		}, "an external mount"},
		{"bpf", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) {
				e := mountAt(t, es, "/sys")
				e.Fstype, e.RootDev = proto.Uint32(uint32(mnt.Fstype_UNSUPPORTED)), proto.Uint32(images.Kdev(0, 9999))
			})
		}, "file system type unsupported"},
		{"fuse", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { mountAt(t, es, "/sys").Fstype = proto.Uint32(uint32(mnt.Fstype_FUSE)) })
		}, "file system type fuse"},
		{"bind without source", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { mountAt(t, es, "/subbind").RootDev = proto.Uint32(images.Kdev(0, 9998)) })
		}, "with no mount of its file system to take it from"},
		{"root not whole", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { mountAt(t, es, "/").Root = proto.String("/srv") })
		}, "needs CRIU's --root"},
		{"no tarball", func(t *testing.T, dir string) {
			m, _ := filepath.Glob(filepath.Join(dir, "tmpfs-dev-*.img"))
			for _, f := range m {
				os.Remove(f)
			}
		}, "no tarball of its files"},
		{"flags", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { e := mountAt(t, es, "/bind"); e.Flags = proto.Uint32(e.GetFlags() | 0x40) })
		}, "mount flags 0x40"},
		{"file on no mount", func(t *testing.T, dir string) {
			editImage(t, dir, "files.img", func(img *images.Image) {
				for _, e := range img.Entries {
					if r := e.Message.(*fdinfo.FileEntry).GetReg(); r != nil && strings.HasSuffix(r.GetName(), "data.bin") {
						r.MntId = proto.Int32(99999)
					}
				}
			})
		}, "mnt_id 99999 is not a mount of"},
		{"second image", func(t *testing.T, dir string) {
			b, err := os.ReadFile(filepath.Join(dir, mntnsFile(t, dir)))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, "mountpoints-99.img"), b, 0o600)
		}, "mountpoints-99.img"},
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

// TestRestoreMntNSBroken breaks the images so that the restore makes
// something else than the dumped namespace: the workload sees it, or the
// restore fails in PREPARE_NAMESPACES naming what, and leaves no process
// and no mount behind.
func TestRestoreMntNSBroken(t *testing.T) {
	own := ourMntNS(t)
	defer checkOurThreads(t, own)
	imgs, wdir := mntnsImages(t)
	for _, tc := range []struct {
		name    string
		edit    func(t *testing.T, dir string)
		corrupt string // what the workload says; "" when the restore fails
		fail    string
	}{
		{"tmpfs size", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { mountAt(t, es, "/scratch/inner").Options = proto.String("size=128k") })
		}, "mountinfo now", ""},
		// The dump may have frozen the workload in the middle of a
		// check, past its mountinfo comparison: the restored one goes
		// on from there, and another check of that tick may see the
		// writable bind first; the workload then names the mountinfo
		// all the same (mntns.c, corrupt).
		{"bind not read-only", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { e := mountAt(t, es, "/bind"); e.Flags = proto.Uint32(e.GetFlags() &^ 1) })
		}, "mountinfo now", ""},
		{"tarball broken", func(t *testing.T, dir string) {
			m, _ := filepath.Glob(filepath.Join(dir, "tmpfs-dev-*.img"))
			for _, f := range m {
				os.WriteFile(f, []byte("not a tarball"), 0o600)
			}
		}, "", "tar --extract"},
		{"no mount point", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) {
				e := mountAt(t, es, "/subbind")
				e.Mountpoint = proto.String(e.GetMountpoint() + "-gone")
			})
		}, "", "subbind-gone"},
		{"file on another mount", func(t *testing.T, dir string) {
			var rootID int32
			editMounts(t, dir, func(es []*mnt.MntEntry) { rootID = int32(mountAt(t, es, "/bind").GetMntId()) })
			editImage(t, dir, "files.img", func(img *images.Image) {
				for _, e := range img.Entries {
					if r := e.Message.(*fdinfo.FileEntry).GetReg(); r != nil && strings.HasSuffix(r.GetName(), "data.bin") {
						r.MntId = proto.Int32(rootID)
					}
				}
			})
		}, "", "not on mount"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			if tc.fail == "" {
				out, _, _ := mntnsRun(t, dir, wdir)
				if !strings.Contains(out, "CORRUPT") || !strings.Contains(out, tc.corrupt) {
					t.Errorf("the workload wrote %q, want CORRUPT with %q", out, tc.corrupt)
				}
				return
			}
			p := planDir(t, dir)
			kids := childrenOfOurs(t)
			r, err := Start(context.Background(), p, Options{})
			if err == nil {
				abortAtCleanup(t, r, p)
				t.Fatal("the restore did not fail")
			}
			var se *StageError
			if !errors.As(err, &se) || se.Stage != StagePrepareNamespaces || !strings.Contains(err.Error(), tc.fail) {
				t.Errorf("error %v, want one of PREPARE_NAMESPACES with %q", err, tc.fail)
			}
			if now := childrenOfOurs(t); len(now) > len(kids) {
				t.Errorf("processes left: %v (before: %v)", now, kids)
			}
			if m := ourMounts(t, wdir); len(m) > 0 {
				t.Errorf("mounts left in our namespace:\n%s", strings.Join(m, "\n"))
			}
		})
	}
}
