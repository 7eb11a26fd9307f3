package dump_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	fdinfo "github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/workloads"
)

// criuMntnsDir is the workload directory CRIU 4.2's images of mntns
// were made in (images/testdata/criu-4.2-mntns).
const criuMntnsDir = "/tmp/h43/c1/w"

// mountShape is a mount entry as both dumpers of the same workload must
// write it: ids as the mount points they stand for, the workload's
// directory as W, the device as the first mount point of its superblock.
func mountShape(t *testing.T, file, wdir string) map[string]string {
	t.Helper()
	img, err := images.ReadKindFile(file, images.KindMnts)
	if err != nil {
		t.Fatal(err)
	}
	at, firstOfDev := map[uint32]string{}, map[uint32]string{}
	w := func(s string) string {
		for _, d := range []string{wdir, criuMntnsDir} {
			if s == d || strings.HasPrefix(s, d+"/") {
				return "W" + strings.TrimPrefix(s, d)
			}
		}
		return s
	}
	var es []*mnt.MntEntry
	for i := len(img.Entries) - 1; i >= 0; i-- { // mountinfo's order
		e := img.Entries[i].Message.(*mnt.MntEntry)
		es = append(es, e)
		at[e.GetMntId()] = w(e.GetMountpoint())
		if _, ok := firstOfDev[e.GetRootDev()]; !ok {
			firstOfDev[e.GetRootDev()] = w(e.GetMountpoint())
		}
	}
	out := map[string]string{}
	for _, e := range es {
		// the host's file systems: options and source are this
		// machine's, not the workload's
		opts, source := e.GetOptions(), e.GetSource()
		if mnt.Fstype(e.GetFstype()) == mnt.Fstype_DEVTMPFS || mnt.Fstype(e.GetFstype()) == mnt.Fstype_UNSUPPORTED {
			opts, source = "(the host's)", "(the host's)"
		}
		out[w(e.GetMountpoint())] = fmt.Sprintf("type %d parent %s dev-of %s flags %#x sb %#x root %s source %s options %s shared %d master %d ext %v plugin %v deleted %v",
			e.GetFstype(), at[e.GetParentMntId()], firstOfDev[e.GetRootDev()], e.GetFlags(), e.GetSbFlags(), w(e.GetRoot()),
			source, opts, e.GetSharedId(), e.GetMasterId(), e.ExtKey != nil, e.GetWithPlugin(), e.GetDeleted())
	}
	return out
}

// tarList is what `tar --list --verbose` shows of a tarball: type, mode,
// owner, size and name of each member.
func tarList(t *testing.T, file string) []string {
	t.Helper()
	out, err := exec.Command("tar", "--list", "--verbose", "--numeric-owner", "--gzip", "--file", file).Output()
	if err != nil {
		t.Fatalf("tar --list %s: %v", file, err)
	}
	var l []string
	for _, s := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(s)
		l = append(l, strings.Join(append(f[:3:3], f[5:]...), " "))
	}
	return l
}

// TestDumpMntNS dumps the workload mntns and compares its mount
// namespace images with CRIU 4.2's of the same workload: every mount
// entry, the tarballs' members, and the mount of every regular file.
func TestDumpMntNS(t *testing.T) {
	netnsRoot(t)
	p := workloads.Start(t, "mntns")
	waitLines(t, p, "out-mntns.log", 3)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	criu := filepath.Join("..", "images", "testdata", "criu-4.2-mntns")
	ours := mountShape(t, filepath.Join(dir, "mountpoints-10.img"), p.Dir)
	theirs := mountShape(t, filepath.Join(criu, "mountpoints-10.img"), p.Dir)
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
	// the tarballs, named by device: scratch's has the most members
	tarballs, _ := filepath.Glob(filepath.Join(dir, "tmpfs-dev-*.tar.gz.img"))
	if len(tarballs) != 2 {
		t.Fatalf("tarballs %v, want scratch's and inner's", tarballs)
	}
	for _, c := range []struct{ crest, criu string }{{"", "tmpfs-dev-45.tar.gz.img"}, {"", "tmpfs-dev-46.tar.gz.img"}} {
		want := tarList(t, filepath.Join(criu, c.criu))
		found := false
		for _, f := range tarballs {
			got := tarList(t, f)
			if len(got) != len(want) {
				continue
			}
			found = true
			for i := range got {
				// crest's tar sees the inner tmpfs's root where CRIU's
				// sees the directory under it (README.md)
				if got[i] != want[i] && !strings.HasSuffix(want[i], " ./inner/") {
					t.Errorf("%s member %d: %q, CRIU's %q", f, i, got[i], want[i])
				}
			}
		}
		if !found {
			t.Errorf("no tarball like CRIU's %s: %v", c.criu, want)
		}
	}
	// every regular file on its mount, as CRIU had them
	img, err := images.ReadKindFile(filepath.Join(dir, "mountpoints-10.img"), images.KindMnts)
	if err != nil {
		t.Fatal(err)
	}
	at := map[int32]string{}
	for _, e := range img.Entries {
		m := e.Message.(*mnt.MntEntry)
		at[int32(m.GetMntId())] = strings.Replace(m.GetMountpoint(), p.Dir, "W", 1)
	}
	files, err := images.ReadKindFile(filepath.Join(dir, "files.img"), images.KindFiles)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"/dev/null": "/dev", "data.bin": "W/scratch", "host.txt": "W/bind", "out-mntns.log": "/", "mntns": "/"}
	for _, e := range files.Entries {
		r := e.Message.(*fdinfo.FileEntry).GetReg()
		if r == nil {
			continue
		}
		if r.MntId == nil {
			t.Errorf("file %s: no mnt_id", r.GetName())
			continue
		}
		for suffix, mp := range want {
			if strings.HasSuffix(r.GetName(), suffix) && at[r.GetMntId()] != mp {
				t.Errorf("file %s on mount %d (%s), want %s", r.GetName(), r.GetMntId(), at[r.GetMntId()], mp)
			}
		}
	}
}

// TestDumpMntNSRefused: a mount crest would not restore makes the dump
// fail, naming it, and leaves the tree running (a slave of a mount
// outside the namespace: TestDumpMntPropRefused). The tree is a shell in a
// mount namespace of its own (launch -m) that made the mount, having
// detached the host's mounts but /, /dev, /proc and /sys.
func TestDumpMntNSRefused(t *testing.T) {
	netnsRoot(t)
	launch := workloads.Build(t, "launch")
	for _, tc := range []struct {
		name, setup string
		want        []string
	}{
		{"bpf", "mkdir -p b && mount -t bpf bpf b", []string{"/b (bpf", "file system type bpf is not supported"}},
		{"tmpfs root nowhere", "mkdir -p t x && mount -t tmpfs tmpfs t && mkdir t/y && mount --bind t/y x && umount -l t",
			[]string{"/x (tmpfs", "a bind mount of /y with no mount of its file system's root"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			// the host's mounts but /, /dev, /proc and /sys go, as the
			// mntns workload has it
			prune := `for i in 1 2 3; do for m in $(awk '$5 != "/" && $5 != "/dev" && $5 != "/proc" && $5 != "/sys" {print $5}' /proc/self/mountinfo | sort -r); do umount -l "$m" 2>/dev/null; done; done; `
			script := prune + tc.setup + " && while :; do echo x >> out.log; sleep 0.01; done"
			out, err := exec.Command(launch, "-m", dir, "/bin/sh", "-c", script).Output()
			if err != nil {
				t.Fatal(err)
			}
			pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
			p := workloads.Adopt(pid, dir)
			t.Cleanup(func() { p.Kill(t) })
			waitLines(t, p, "out.log", 3)
			parent := t.TempDir()
			_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
			var want []string
			for _, s := range tc.want {
				if strings.HasPrefix(s, "/") {
					s = dir + s
				}
				want = append(want, s)
			}
			refusedCleanly(t, err, p, parent, "out.log", want...)
		})
	}
}
