package dump_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	fdinfo "github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// criuMntPropDir is the workload directory CRIU 4.2's images of mntprop
// were made in (images/testdata/criu-4.2-mntprop).
const criuMntPropDir = "/tmp/crest-criu-4.2-mntprop"

// mntpropShape is every mount entry of a mountpoints image as both
// dumpers of the same workload must write it, by mount point: ids as the
// mount points they stand for, the workload's directory as W, the device
// as the first mount point of its superblock, and the peer groups (shared
// and master ids) as g1, g2 ... in the order the sorted mount points
// first name them: the kernel numbers them, who shares with whom is what
// must match.
func mntpropShape(t *testing.T, file, wdir string) map[string]string {
	t.Helper()
	img, err := images.ReadKindFile(file, images.KindMnts)
	if err != nil {
		t.Fatal(err)
	}
	w := func(s string) string {
		for _, d := range []string{wdir, criuMntPropDir} {
			if s == d || strings.HasPrefix(s, d+"/") {
				return "W" + strings.TrimPrefix(s, d)
			}
		}
		return s
	}
	at, firstOfDev := map[uint32]string{}, map[uint32]string{}
	var es []*mnt.MntEntry
	for i := len(img.Entries) - 1; i >= 0; i-- { // mountinfo's order
		e := img.Entries[i].Message.(*mnt.MntEntry)
		if mntpropProbe(e.GetMountpoint()) {
			continue // the dump caught the workload within a tick
		}
		es = append(es, e)
		at[e.GetMntId()] = w(e.GetMountpoint())
		if _, ok := firstOfDev[e.GetRootDev()]; !ok {
			firstOfDev[e.GetRootDev()] = w(e.GetMountpoint())
		}
	}
	sorted := slices.Clone(es)
	slices.SortFunc(sorted, func(a, b *mnt.MntEntry) int { return strings.Compare(w(a.GetMountpoint()), w(b.GetMountpoint())) })
	label := map[uint32]string{0: "-"}
	group := func(id uint32) string {
		if _, ok := label[id]; !ok {
			label[id] = fmt.Sprintf("g%d", len(label))
		}
		return label[id]
	}
	for _, e := range sorted {
		group(e.GetSharedId())
		group(e.GetMasterId())
	}
	out := map[string]string{}
	for _, e := range es {
		opts, source := e.GetOptions(), e.GetSource()
		if mnt.Fstype(e.GetFstype()) == mnt.Fstype_DEVTMPFS || mnt.Fstype(e.GetFstype()) == mnt.Fstype_UNSUPPORTED {
			opts, source = "(the host's)", "(the host's)"
		}
		out[w(e.GetMountpoint())] = fmt.Sprintf("type %d parent %s dev-of %s flags %#x sb %#x root %s source %s options %s shared %s master %s internal %v ext %v plugin %v deleted %v",
			e.GetFstype(), at[e.GetParentMntId()], firstOfDev[e.GetRootDev()], e.GetFlags(), e.GetSbFlags(), w(e.GetRoot()),
			source, opts, group(e.GetSharedId()), group(e.GetMasterId()), e.GetInternalSharing(), e.ExtKey != nil, e.GetWithPlugin(), e.GetDeleted())
	}
	return out
}

// mntpropProbe says whether mount point mp is one of the probes mntprop
// mounts and unmounts within a tick (a dump may catch them, and so may a
// look at the running workload's mountinfo).
func mntpropProbe(mp string) bool {
	return strings.HasSuffix(mp, "/sub/p") || strings.HasSuffix(mp, "/peer2/p") || strings.HasSuffix(mp, "/sub/q")
}

// TestDumpMntProp dumps the workload mntprop and compares its mount
// namespace images with CRIU 4.2's of the same workload: every mount
// entry field by field (its peer group and master among them), the
// tarballs' members, and the mount of every regular file.
func TestDumpMntProp(t *testing.T) {
	netnsRoot(t)
	p := workloads.Start(t, "mntprop")
	waitLines(t, p, "out-mntprop.log", 3)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	criu := filepath.Join("..", "images", "testdata", "criu-4.2-mntprop", "images")
	ours := mntpropShape(t, filepath.Join(dir, "mountpoints-10.img"), p.Dir)
	theirs := mntpropShape(t, filepath.Join(criu, "mountpoints-10.img"), p.Dir)
	for _, mp := range slices.Sorted(func(yield func(string) bool) {
		for k := range theirs {
			if !yield(k) {
				return
			}
		}
	}) {
		if ours[mp] != theirs[mp] {
			t.Errorf("mount %s:\ncrest %s\nCRIU  %s", mp, ours[mp], theirs[mp])
		}
	}
	if len(ours) != len(theirs) {
		t.Errorf("crest wrote %d mounts, CRIU %d: %v", len(ours), len(theirs), ours)
	}
	// one tarball per tmpfs (share, its inner one, unbind, and a probe
	// the dump caught), however often each is mounted
	img, err := images.ReadKindFile(filepath.Join(dir, "mountpoints-10.img"), images.KindMnts)
	if err != nil {
		t.Fatal(err)
	}
	probes := map[uint32]bool{}
	for _, e := range img.Entries {
		if m := e.Message.(*mnt.MntEntry); mntpropProbe(m.GetMountpoint()) {
			probes[m.GetRootDev()] = true
		}
	}
	tarballs, _ := filepath.Glob(filepath.Join(dir, "tmpfs-dev-*.tar.gz.img"))
	theirTarballs, _ := filepath.Glob(filepath.Join(criu, "tmpfs-dev-*.tar.gz.img"))
	if len(tarballs) != 3+len(probes) || len(theirTarballs) != 3 {
		t.Fatalf("tarballs %v, CRIU's %v: want share's, share/sub/in's and unbind's", tarballs, theirTarballs)
	}
	for _, c := range theirTarballs {
		want := tarList(t, c)
		found := false
		for _, f := range tarballs {
			got := tarList(t, f)
			if len(got) != len(want) || got[len(got)-1] != want[len(want)-1] {
				continue
			}
			found = true
			for i := range got {
				// crest's tar sees the inner tmpfs's root where CRIU's
				// sees the directory under it (as mntns's)
				if got[i] != want[i] && !strings.HasSuffix(want[i], " ./sub/in/") {
					t.Errorf("%s member %d: %q, CRIU's %q", f, i, got[i], want[i])
				}
			}
		}
		if !found {
			t.Errorf("no tarball like CRIU's %s: %v", c, want)
		}
	}
	// the regular files (the log, the program) on the root mount
	at := map[int32]string{}
	for _, e := range img.Entries {
		m := e.Message.(*mnt.MntEntry)
		at[int32(m.GetMntId())] = m.GetMountpoint()
	}
	files, err := images.ReadKindFile(filepath.Join(dir, "files.img"), images.KindFiles)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range files.Entries {
		if r := e.Message.(*fdinfo.FileEntry).GetReg(); r != nil && !strings.HasPrefix(r.GetName(), "/dev/") && at[r.GetMntId()] != "/" {
			t.Errorf("file %s on mount %d (%s), want /", r.GetName(), r.GetMntId(), at[r.GetMntId()])
		}
	}
}

// TestRoundTripMntProp dumps mntprop with `crest dump` and restores it
// with `crest restore -d`: the restored tree's mounts have the peer
// groups, masters and unbindable mount of the images (numbered anew),
// and the workload runs on, its probe mounts propagating as before.
func TestRoundTripMntProp(t *testing.T) {
	netnsRoot(t)
	bin := cli.Binary(t)
	cli.Subreaper(t)
	rules := map[string]check.Next{"out-mntprop.log": check.Counter}
	p := workloads.Start(t, "mntprop")
	waitLines(t, p, "out-mntprop.log", 3)
	dumped, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	imgs := dumpKilled(t, bin, p, dumped)
	before := check.Snapshot(t, p.Dir, rules)
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := restoreTree(t, bin, imgs, d, p.Dir)
	want := mntpropShape(t, filepath.Join(imgs, "mountpoints-10.img"), p.Dir)
	got := liveMntpropShape(t, root, p.Dir)
	for mp, w := range want {
		// the group fields of the entry: what the kernel shows
		if i := strings.Index(w, " shared "); got[mp] != w[i:strings.Index(w, " internal ")] {
			t.Errorf("%s restored%s, the image has%s", mp, got[mp], w[i:strings.Index(w, " internal ")])
		}
	}
	if len(got) != len(want) {
		t.Errorf("restored %d mounts, the image has %d", len(got), len(want))
	}
	check.Logs(t, p.Dir, before, rules, time.Second)
}

// liveMntpropShape is the peer groups of each mount of pid's mountinfo,
// as mntpropShape writes them (" shared gN master gM").
func liveMntpropShape(t *testing.T, pid int, wdir string) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	type line struct {
		point          string
		shared, master string
	}
	var ls []line
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if mntpropProbe(f[4]) {
			continue
		}
		ln := line{point: f[4], shared: "0", master: "0"}
		if ln.point == wdir || strings.HasPrefix(ln.point, wdir+"/") {
			ln.point = "W" + strings.TrimPrefix(ln.point, wdir)
		}
		for _, o := range f[6:slices.Index(f, "-")] {
			if k, v, ok := strings.Cut(o, ":"); ok && k == "shared" {
				ln.shared = v
			} else if ok && k == "master" {
				ln.master = v
			}
		}
		ls = append(ls, ln)
	}
	slices.SortFunc(ls, func(a, b line) int { return strings.Compare(a.point, b.point) })
	label := map[string]string{"0": "-"}
	group := func(id string) string {
		if _, ok := label[id]; !ok {
			label[id] = fmt.Sprintf("g%d", len(label))
		}
		return label[id]
	}
	out := map[string]string{}
	for _, l := range ls {
		out[l.point] = fmt.Sprintf(" shared %s master %s", group(l.shared), group(l.master))
	}
	return out
}

// TestDumpMntPropRefused: a tree whose mount is a slave of a peer group
// outside its mount namespace is refused by name, and left running. The
// tree's init makes a shared tmpfs in a mount namespace of its own (A,
// launch -m), which the test holds open, then execs unshare -m
// --propagation slave: its namespace is a copy of A with the copy of the
// tmpfs a slave of A's.
func TestDumpMntPropRefused(t *testing.T) {
	netnsRoot(t)
	launch := workloads.Build(t, "launch")
	dir := t.TempDir()
	hs := filepath.Join(dir, "hs")
	// the host's mounts but /, /dev, /proc, /sys and hs go
	prune := `for i in 1 2 3; do for m in $(awk '$5 != "/" && $5 != "/dev" && $5 != "/proc" && $5 != "/sys" && $5 != "` + hs + `" {print $5}' /proc/self/mountinfo | sort -r); do umount -l "$m" 2>/dev/null; done; done; `
	inside := prune + "while :; do echo x >> out.log; sleep 0.01; done\n"
	if err := os.WriteFile(filepath.Join(dir, "inside.sh"), []byte(inside), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `mkdir -p hs && mount -t tmpfs -o size=16k tmpfs hs && mount --make-shared hs && touch ready && ` +
		`while [ ! -e go ]; do sleep 0.01; done && exec unshare -m --propagation slave /bin/sh inside.sh`
	out, err := exec.Command(launch, "-m", dir, "/bin/sh", "-c", script).Output()
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	p := workloads.Adopt(pid, dir)
	t.Cleanup(func() { p.Kill(t) })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the tree made no shared tmpfs in 10s")
		}
	}
	// A, with the master, outlives the init's exec
	a, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitLines(t, p, "out.log", 3)
	mi, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil || !strings.Contains(string(mi), hs+" ") || !strings.Contains(string(mi), "master:") {
		t.Fatalf("the tree's mountinfo has no slave at %s (%v):\n%s", hs, err, mi)
	}
	parent := t.TempDir()
	_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
	refusedCleanly(t, err, p, parent, "out.log", hs+" (tmpfs", "a slave of peer group", "outside the namespace")
}
