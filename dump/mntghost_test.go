package dump_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/workloads"
)

// criuMntGhostDir is the workload directory CRIU 4.2's images of
// mntghost were made in (images/testdata/criu-4.2-mntghost).
const criuMntGhostDir = "/tmp/crest-criu-4.2-mntghost"

// tmpfileName is the name the kernel gives an O_TMPFILE file: its inode.
var tmpfileName = regexp.MustCompile(`/#[0-9]+$`)

// ghostShapes are the deleted files of the image set in dir, as both
// dumpers of mntghost (run in wdir) must write them: the file's path and
// the mount point of its mnt_id (the workload's directory as W, an
// O_TMPFILE file's inode as #), its flags, offset, size and mode, and its
// ghost's mode, size and contents.
func ghostShapes(t *testing.T, dir, wdir string) []string {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	mps, _ := filepath.Glob(filepath.Join(dir, "mountpoints-*.img"))
	if len(mps) != 1 {
		t.Fatalf("mount images %v", mps)
	}
	img, err := images.ReadKindFile(mps[0], images.KindMnts)
	if err != nil {
		t.Fatal(err)
	}
	at := map[int32]string{}
	for _, e := range img.Entries {
		m := e.Message.(*mnt.MntEntry)
		at[int32(m.GetMntId())] = m.GetMountpoint()
	}
	w := func(s string) string {
		s = tmpfileName.ReplaceAllString(s, "/#")
		if s == wdir || strings.HasPrefix(s, wdir+"/") {
			return "W" + strings.TrimPrefix(s, wdir)
		}
		return s
	}
	remaps, err := d.RemapFpath()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rm := range remaps {
		fe, err := d.File(rm.GetOrigId())
		if err != nil {
			t.Fatal(err)
		}
		r := fe.GetReg()
		g, err := d.GhostFile(rm.GetRemapId())
		if err != nil || g == nil {
			t.Fatalf("ghost %d of file %d: %v", rm.GetRemapId(), rm.GetOrigId(), err)
		}
		h := sha256.New()
		for _, c := range g.Chunks {
			fmt.Fprintf(h, "%d:%x;", c.Off, c.Data)
		}
		mp, ok := at[r.GetMntId()]
		if r.MntId == nil || !ok {
			mp = fmt.Sprintf("no mount (mnt_id %v)", r.MntId)
		}
		out = append(out, fmt.Sprintf("%s on %s: %s flags %#o pos %d size %d mode %#o; ghost mode %#o size %d contents %x",
			w(r.GetName()), w(mp), rm.GetRemapType(), r.GetFlags(), r.GetPos(), r.GetSize(), r.GetMode(),
			g.Entry.GetMode(), g.Entry.GetSize(), h.Sum(nil)[:8]))
	}
	slices.Sort(out)
	return out
}

// TestDumpMntGhost dumps the workload mntghost, whose files deleted while
// open are on its tmpfs and on a bind mount of a host directory, and
// compares them with CRIU 4.2's images of the same workload: each with
// the mount it is on in the tree's namespace, and its ghost.
func TestDumpMntGhost(t *testing.T) {
	netnsRoot(t)
	p := workloads.Start(t, "mntghost")
	waitLines(t, p, "out-mntghost.log", 3)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	ours := ghostShapes(t, dir, p.Dir)
	theirs := ghostShapes(t, filepath.Join("..", "images", "testdata", "criu-4.2-mntghost", "images"), criuMntGhostDir)
	if len(ours) != 3 {
		t.Errorf("crest dumped %d ghosts, want 3: %q", len(ours), ours)
	}
	if fmt.Sprint(ours) != fmt.Sprint(theirs) {
		t.Errorf("crest's ghosts:\n%s\nCRIU's:\n%s", strings.Join(ours, "\n"), strings.Join(theirs, "\n"))
	}
}
