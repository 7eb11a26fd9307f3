package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/fixture"
)

var mntpropLogs = map[string]check.Next{"out-mntprop.log": check.Counter}

// mntpropImages dumps the workload mntprop with crest and returns its
// images and its directory.
func mntpropImages(t *testing.T) (imgs, wdir string) {
	t.Helper()
	for try := 1; ; try++ {
		p, imgs := dumpedWorkload(t, "mntprop", mntpropLogs, 3, dump.Options{})
		// a dump that froze a tick with its probe mounted (share/sub/p
		// and its copies) holds mounts the restored workload removes at
		// once: the tests compare the images with the restored tree,
		// so they take a dump between probes
		probe := slices.ContainsFunc(planDir(t, imgs).Mnt.Mounts, func(m *Mount) bool {
			return m.Mountpoint == filepath.Join(p.Dir, "share/sub/p")
		})
		if !probe || try == 5 {
			return imgs, p.Dir
		}
		t.Logf("the dump of mntprop has its probe mounted: dumping a new one")
	}
}

// mntpropRun restores dir, whose workload ran in wdir, and returns what
// its log grew by and the restore.
func mntpropRun(t *testing.T, dir, wdir string) (string, *Restore) {
	t.Helper()
	p := planDir(t, dir)
	if p.Mnt == nil || len(p.Mnt.Groups) == 0 {
		t.Fatalf("the plan's mount namespace has no peer groups: %+v", p.Mnt)
	}
	from := logSize(wdir, "out-mntprop.log")
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	return waitLog(t, wdir, "out-mntprop.log", from, lines(5)), r
}

// groupShape is the propagation of each mount point: shared:gN,
// master:gN and unbindable, the peer group numbers replaced by g1, g2 ...
// in the order the sorted mount points first name them (a restore makes
// its own numbers: who shares with whom is what must stay).
type groupShape map[string]string

// propMount is what groupShapeOf reads of a mount.
type propMount struct {
	point          string
	shared, master uint64
	unbindable     bool
}

// mntpropProbe says whether mount point mp is one of the probes mntprop
// mounts and unmounts within a tick (a dump may catch them, and so may a
// look at the running workload's mountinfo).
func mntpropProbe(mp string) bool {
	return strings.HasSuffix(mp, "/sub/p") || strings.HasSuffix(mp, "/peer2/p") || strings.HasSuffix(mp, "/sub/q")
}

// groupShapeOf is the group shape of ms, the probes of mntprop left out.
func groupShapeOf(ms []propMount) groupShape {
	ms = slices.DeleteFunc(ms, func(m propMount) bool { return mntpropProbe(m.point) })
	slices.SortFunc(ms, func(a, b propMount) int { return strings.Compare(a.point, b.point) })
	label := map[uint64]string{}
	name := func(n uint64) string {
		if label[n] == "" {
			label[n] = fmt.Sprintf("g%d", len(label)+1)
		}
		return label[n]
	}
	out := groupShape{}
	for _, m := range ms {
		var w []string
		if m.shared != 0 {
			w = append(w, "shared:"+name(m.shared))
		}
		if m.master != 0 {
			w = append(w, "master:"+name(m.master))
		}
		if m.unbindable {
			w = append(w, "unbindable")
		}
		out[m.point] = strings.Join(w, " ")
	}
	return out
}

// imageGroups is the group shape of a mountpoints image, its paths
// under from moved to to.
func imageGroups(t *testing.T, file, from, to string) groupShape {
	t.Helper()
	img, err := images.ReadKindFile(file, images.KindMnts)
	if err != nil {
		t.Fatal(err)
	}
	var ms []propMount
	for _, e := range img.Entries {
		m := e.Message.(*mnt.MntEntry)
		point := m.GetMountpoint()
		if from != "" && strings.HasPrefix(point, from) {
			point = to + strings.TrimPrefix(point, from)
		}
		ms = append(ms, propMount{point, uint64(m.GetSharedId()), uint64(m.GetMasterId()), m.GetFlags()&unix.MS_UNBINDABLE != 0})
	}
	return groupShapeOf(ms)
}

// liveGroups is the group shape of /proc/PID/mountinfo.
func liveGroups(t *testing.T, pid int) groupShape {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines, err := parseMountinfo(f.Name(), f)
	if err != nil {
		t.Fatal(err)
	}
	var ms []propMount
	for _, l := range lines {
		shared, master, unbindable := lineGroups(l.optional)
		ms = append(ms, propMount{l.mountpoint, shared, master, unbindable})
	}
	return groupShapeOf(ms)
}

// ourPropagation is the optional fields of each of our mounts, by
// mount id.
func ourPropagation(t *testing.T) map[uint64]string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines, err := parseMountinfo(f.Name(), f)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]string{}
	for _, l := range lines {
		out[l.id] = strings.Join(l.optional, " ")
	}
	return out
}

// checkOurPropagation checks that none of our mounts of before (others
// may come and go meanwhile) changed its peer group, master or
// unbindable flag: a restore makes its groups in the tree's namespace
// only.
func checkOurPropagation(t *testing.T, before map[uint64]string) {
	t.Helper()
	for id, now := range ourPropagation(t) {
		if was, ok := before[id]; ok && was != now {
			t.Errorf("our mount %d: %q, before the restore %q", id, now, was)
		}
	}
}

// checkGroups compares the restored tree's propagation with its image's.
func checkGroups(t *testing.T, want groupShape, pid int) {
	t.Helper()
	got := liveGroups(t, pid)
	for _, mp := range slices.Sorted(func(yield func(string) bool) {
		for k := range want {
			if !yield(k) {
				return
			}
		}
	}) {
		if got[mp] != want[mp] {
			t.Errorf("%s restored %q, the image has %q", mp, got[mp], want[mp])
		}
	}
	if len(got) != len(want) {
		t.Errorf("restored %d mounts, the image has %d: %v", len(got), len(want), got)
	}
}

// TestRestoreMntProp restores crest dump's images of mntprop: its peer
// group, slaves, the propagated copies of its inner tmpfs and its
// unbindable mount come back as they were (from outside: the same
// groups, numbered anew), and the workload finds that mounts propagate
// as before; nothing of it is mounted where we are.
func TestRestoreMntProp(t *testing.T) {
	own := ourMntNS(t)
	ours := ourPropagation(t)
	imgs, wdir := mntpropImages(t)
	p := planDir(t, imgs)
	members := func(g *PeerGroup) string {
		var ms []string
		for _, m := range g.Mounts {
			ms = append(ms, strings.TrimPrefix(m.Mountpoint, wdir+"/"))
		}
		slices.Sort(ms)
		return strings.Join(ms, ",")
	}
	var groups []string
	for _, g := range p.Mnt.Groups {
		master := ""
		if g.Master != nil {
			master = " <- " + members(g.Master)
		}
		groups = append(groups, members(g)+master)
	}
	want := []string{"peer,peer2,share", "slave <- peer,peer2,share", "slave2 <- peer,peer2,share", "peer/sub/in,peer2/in,share/sub/in",
		"slave/sub/in <- peer/sub/in,peer2/in,share/sub/in", "slave2/sub/in <- peer/sub/in,peer2/in,share/sub/in"}
	slices.Sort(groups)
	slices.Sort(want)
	if !slices.Equal(groups, want) {
		t.Errorf("peer groups %q, want %q", groups, want)
	}
	out, r := mntpropRun(t, imgs, wdir)
	checkOurThreads(t, own)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntprop wrote:\n%s", out)
	}
	checkGroups(t, imageGroups(t, filepath.Join(imgs, mntnsFile(t, imgs)), "", ""), r.RootPID())
	if m := ourMounts(t, wdir); len(m) > 0 {
		t.Errorf("mounts of the tree in our namespace:\n%s", strings.Join(m, "\n"))
	}
	checkOurPropagation(t, ours)
}

// criuMntPropDir is where CRIU 4.2's images of mntprop were made
// (images/testdata/criu-4.2-mntprop).
const criuMntPropDir = "/tmp/crest-criu-4.2-mntprop"

// TestRestoreMntPropCRIU restores CRIU 4.2's images of mntprop
// (images/testdata/criu-4.2-mntprop), its program and log put back where
// they were: the workload runs on, its mounts propagating as at the dump.
func TestRestoreMntPropCRIU(t *testing.T) {
	needRoot(t)
	fx := filepath.Join("..", "images", "testdata", "criu-4.2-mntprop")
	t.Cleanup(func() { os.RemoveAll(criuMntPropDir) })
	putCRIUTestdata(t, fx, criuMntPropDir)
	for _, d := range []string{"share", "peer", "peer2", "slave", "slave2", "unbind", "bindtry"} {
		if err := os.Mkdir(filepath.Join(criuMntPropDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	imgs := filepath.Join(fx, "images")
	before := check.Snapshot(t, criuMntPropDir, mntpropLogs)
	out, r := mntpropRun(t, imgs, criuMntPropDir)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntprop wrote:\n%s", out)
	}
	checkGroups(t, imageGroups(t, filepath.Join(imgs, mntnsFile(t, imgs)), "", ""), r.RootPID())
	check.Logs(t, criuMntPropDir, before, mntpropLogs, 100*time.Millisecond)
}

// TestPlanMntProp: the propagation the plan refuses, naming the image,
// the entry, the mount and why.
func TestPlanMntProp(t *testing.T) {
	imgs, _ := mntpropImages(t)
	sharedOf := func(t *testing.T, es []*mnt.MntEntry, suffix string) uint32 {
		return mountAt(t, es, suffix).GetSharedId()
	}
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, es []*mnt.MntEntry)
		want string
	}{
		{"external master", func(t *testing.T, es []*mnt.MntEntry) {
			mountAt(t, es, "/slave").MasterId = proto.Uint32(99999)
		}, "/slave): a slave of peer group 99999, which no mount of the namespace is in: its master is outside the tree's mount namespace"},
		{"peers with two masters", func(t *testing.T, es []*mnt.MntEntry) {
			mountAt(t, es, "/peer2").MasterId = proto.Uint32(sharedOf(t, es, "/slave2"))
		}, "peers have one master"},
		{"peer on another file system", func(t *testing.T, es []*mnt.MntEntry) {
			e := mountAt(t, es, "/peer2")
			e.RootDev = mountAt(t, es, "/unbind").RootDev
			e.Root = proto.String("/")
		}, "another file system"},
		{"unbindable and shared", func(t *testing.T, es []*mnt.MntEntry) {
			e := mountAt(t, es, "/unbind")
			e.SharedId = proto.Uint32(sharedOf(t, es, "/share"))
		}, "/unbind): unbindable and shared:"},
		{"loop of masters", func(t *testing.T, es []*mnt.MntEntry) {
			s2 := sharedOf(t, es, "/slave2")
			for _, mp := range []string{"/share", "/peer", "/peer2"} {
				mountAt(t, es, mp).MasterId = proto.Uint32(s2)
			}
		}, "a loop of masters"},
		{"internal sharing", func(t *testing.T, es []*mnt.MntEntry) {
			mountAt(t, es, "/peer").InternalSharing = proto.Bool(true)
		}, "/peer): sharing internal to an external mount"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			editMounts(t, dir, func(es []*mnt.MntEntry) { tc.edit(t, es) })
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewPlan(d, Options{})
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), mntnsFile(t, dir)+": entry ") {
				t.Errorf("error %v, want a PlanError naming the image and entry with %q", err, tc.want)
			}
		})
	}
}

// TestRestoreMntPropBroken breaks the images' propagation so that the
// restore makes another one: the workload sees it in its mountinfo; and
// a restore that fails once the propagation is set (a file of the tree
// not on the mount its image names) fails in PREPARE_NAMESPACES and
// leaves nothing behind: no process, no mount, no fd, our own mounts'
// propagation as it was.
func TestRestoreMntPropBroken(t *testing.T) {
	own := ourMntNS(t)
	defer checkOurThreads(t, own)
	imgs, wdir := mntpropImages(t)
	for _, tc := range []struct {
		name    string
		edit    func(t *testing.T, dir string)
		corrupt string // what the workload says; "" when the restore fails
		fail    string
	}{
		{"slave made private", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { mountAt(t, es, "/slave").MasterId = proto.Uint32(0) })
		}, "mountinfo now", ""},
		{"peer in a group of its own", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) { mountAt(t, es, "/peer2").SharedId = proto.Uint32(99998) })
		}, "mountinfo now", ""},
		{"not unbindable", func(t *testing.T, dir string) {
			editMounts(t, dir, func(es []*mnt.MntEntry) {
				e := mountAt(t, es, "/unbind")
				e.Flags = proto.Uint32(e.GetFlags() &^ unix.MS_UNBINDABLE)
			})
		}, "mountinfo now", ""},
		{"file on another mount", func(t *testing.T, dir string) {
			var share int32
			editMounts(t, dir, func(es []*mnt.MntEntry) { share = int32(mountAt(t, es, "/share").GetMntId()) })
			editImage(t, dir, "files.img", func(img *images.Image) {
				for _, e := range img.Entries {
					if r := e.Message.(*fdinfo.FileEntry).GetReg(); r != nil && strings.HasSuffix(r.GetName(), "out-mntprop.log") {
						r.MntId = proto.Int32(share)
					}
				}
			})
		}, "", "not on mount"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			if tc.fail == "" {
				out, _ := mntpropRun(t, dir, wdir)
				if !strings.Contains(out, "CORRUPT") || !strings.Contains(out, tc.corrupt) {
					t.Errorf("the workload wrote %q, want CORRUPT with %q", out, tc.corrupt)
				}
				return
			}
			ours := ourPropagation(t)
			p := planDir(t, dir)
			kids, fds := childrenOfOurs(t), dirNames(t, "/proc/self/fd")
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
			if now := dirNames(t, "/proc/self/fd"); now != fds {
				t.Errorf("our fds: %s, before the restore: %s", now, fds)
			}
			if m := ourMounts(t, wdir); len(m) > 0 {
				t.Errorf("mounts left in our namespace:\n%s", strings.Join(m, "\n"))
			}
			checkOurPropagation(t, ours)
		})
	}
}
