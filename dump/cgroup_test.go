package dump

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/cgroup"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cgroupdir"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// cgTestHierarchies are the hierarchies the test puts the cgroups
// workload in, as /proc/PID/cgroup names them ("" is cgroup v2).
var cgTestHierarchies = []string{"pids", "memory", "cpu", ""}

// cgTest is the test's cgroups: one below crest's own in each hierarchy,
// a, b and c below that. Removed (what is in them killed) when the test
// ends.
type cgTest struct {
	t     *testing.T
	mount map[string]string
	base  map[string]string
}

func newCgTest(t *testing.T) *cgTest {
	t.Helper()
	mounts, err := readCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	own, err := readCgroupFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	ct := &cgTest{t: t, mount: map[string]string{}, base: map[string]string{}}
	for _, h := range cgTestHierarchies {
		if ct.mount[h] = findCgroupMount(mounts, &cgController{names: []string{h}}); ct.mount[h] == "" {
			t.Fatalf("cgroup hierarchy %q is not mounted", h)
		}
		for _, m := range own {
			if m.name == h {
				ct.base[h] = strings.TrimSuffix(m.path, "/") + fmt.Sprintf("/crest-dumpcg-%d", os.Getpid())
			}
		}
		for _, sub := range []string{"a", "b", "c"} {
			if err := os.MkdirAll(ct.host(h, sub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(ct.remove)
	return ct
}

func (ct *cgTest) path(h, sub string) string { return ct.base[h] + "/" + sub }
func (ct *cgTest) host(h, sub string) string { return ct.mount[h] + ct.path(h, sub) }

func (ct *cgTest) write(h, sub, file string, v int) {
	ct.t.Helper()
	if err := os.WriteFile(ct.host(h, sub)+"/"+file, []byte(strconv.Itoa(v)), 0); err != nil {
		ct.t.Fatal(err)
	}
}

func (ct *cgTest) remove() {
	for _, h := range cgTestHierarchies {
		cgroupdir.Remove(ct.t, ct.mount[h]+ct.base[h])
	}
}

// placeCgroupsWorkload starts the cgroups workload and puts the init and
// child2 in a, child1 in b (but cpu's a), child2's second thread in cpu's
// c, with a limit in each; it returns the workload and the host ids of
// its threads by their pids in its namespace (1 init, 2 child1, 3
// child2, 4 child2's thread).
func placeCgroupsWorkload(t *testing.T, ct *cgTest) (*workloads.Process, map[int]int) {
	t.Helper()
	p := workloads.Start(t, "cgroups")
	for _, l := range []string{"out-init.log", "out-child1.log", "out-child2.log", "out-thread.log"} {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if b, _ := os.ReadFile(filepath.Join(p.Dir, l)); len(b) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not written in 10s", l)
			}
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.Pid, p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	kids := strings.Fields(string(b))
	if len(kids) != 2 {
		t.Fatalf("the init has children %v, want 2", kids)
	}
	host := map[int]int{1: p.Pid}
	host[2], _ = strconv.Atoi(kids[0])
	host[3], _ = strconv.Atoi(kids[1])
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", host[3]))
	if err != nil || len(ents) != 2 {
		t.Fatalf("child2's threads: %v %v", ents, err)
	}
	for _, e := range ents {
		if tid, _ := strconv.Atoi(e.Name()); tid != host[3] {
			host[4] = tid
		}
	}
	for _, h := range cgTestHierarchies {
		ct.write(h, "a", "cgroup.procs", host[1])
		ct.write(h, "a", "cgroup.procs", host[3])
		if h != "cpu" {
			ct.write(h, "b", "cgroup.procs", host[2])
		}
	}
	ct.write("cpu", "a", "cgroup.procs", host[2])
	ct.write("cpu", "c", "tasks", host[4])
	ct.write("pids", "b", "pids.max", 7)
	ct.write("memory", "a", "memory.limit_in_bytes", 64<<20)
	ct.write("cpu", "c", "cpu.cfs_quota_us", 50000)
	return p, host
}

// dumpCgroupsWorkload dumps p (which kills it) into a new directory.
func dumpCgroupsWorkload(t *testing.T, p *workloads.Process) *images.Dir {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := Dump(context.Background(), Options{Pid: p.Pid, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func coreSets(t *testing.T, d *images.Dir) map[int]uint32 {
	t.Helper()
	out := map[int]uint32{}
	for tid := 1; tid <= 4; tid++ {
		c, err := d.Core(uint32(tid))
		if err != nil {
			t.Fatal(err)
		}
		if c.GetThreadCore().CgSet == nil {
			t.Fatalf("core-%d.img: no thread_core.cg_set", tid)
		}
		out[tid] = c.GetThreadCore().GetCgSet()
	}
	return out
}

// cgDirs flattens the dir entries of a controller: path from the
// hierarchy's root -> entry.
func cgDirs(ents []*cgroup.CgroupDirEntry, parent string, out map[string]*cgroup.CgroupDirEntry) map[string]*cgroup.CgroupDirEntry {
	for _, d := range ents {
		p := "/" + d.GetDirName()
		if parent != "" && parent != "/" {
			p = parent + p
		}
		out[p] = d
		cgDirs(d.Children, p, out)
	}
	return out
}

func propValue(d *cgroup.CgroupDirEntry, name string) (string, bool) {
	for _, pr := range d.Properties {
		if pr.GetName() == name {
			return pr.GetValue(), true
		}
	}
	return "", false
}

// TestDumpCgroups dumps the cgroups workload placed in cgroups of the
// test's and checks cgroup.img as CRIU 4.2 writes it: a set per
// placement, each core naming its thread's, every cgroup walked with the
// properties CRIU dumps (the same, controller by controller, as in CRIU's
// own images of such a tree, images/testdata/criu-4.2-cgroup) and the
// limits set.
func TestDumpCgroups(t *testing.T) {
	ct := newCgTest(t)
	p, _ := placeCgroupsWorkload(t, ct)
	d := dumpCgroupsWorkload(t, p)
	if d.Inventory.GetRootCgSet() != 1 {
		t.Errorf("inventory.img: root_cg_set %d, want 1 (crest's own)", d.Inventory.GetRootCgSet())
	}
	sets := coreSets(t, d)
	if sets[1] != sets[3] || sets[1] == sets[2] || sets[4] == sets[3] || sets[4] == sets[2] || slices.Contains([]uint32{sets[1], sets[2], sets[4]}, 1) {
		t.Errorf("the cores' cg_set by tid %v: want the init and child2 in one, child1 and the thread each in another, none in crest's (1)", sets)
	}
	e, err := d.Cgroup()
	if err != nil || e == nil {
		t.Fatalf("cgroup.img: %v, %v", e, err)
	}
	want := map[uint32]map[string]string{
		sets[1]: {"pids": "a", "memory": "a", "cpu": "a", "": "a"},
		sets[2]: {"pids": "b", "memory": "b", "cpu": "a", "": "b"},
		sets[4]: {"pids": "a", "memory": "a", "cpu": "c", "": "a"},
	}
	if len(e.Sets) != len(want) {
		t.Errorf("cgroup.img: %d sets, want %d", len(e.Sets), len(want))
	}
	for _, s := range e.Sets {
		w := want[s.GetId()]
		if w == nil {
			t.Errorf("cgroup.img: set %d is no thread's", s.GetId())
			continue
		}
		var names []string
		for _, m := range s.Ctls {
			names = append(names, m.GetName())
			if sub, ok := w[m.GetName()]; ok && m.GetPath() != ct.path(m.GetName(), sub) {
				t.Errorf("set %d: %q: %s, want %s", s.GetId(), m.GetName(), m.GetPath(), ct.path(m.GetName(), sub))
			}
		}
		if !slices.IsSorted(names) {
			t.Errorf("set %d: controllers %q not sorted, as CRIU sorts them", s.GetId(), names)
		}
	}
	ctls := map[string]*cgroup.CgControllerEntry{}
	for _, c := range e.Controllers {
		ctls[strings.Join(c.Cnames, ",")] = c
		if c.IsThreaded == nil {
			t.Errorf("controller %q: no is_threaded", c.Cnames)
		}
	}
	for _, l := range []struct{ h, sub, prop, value string }{
		{"pids", "b", "pids.max", "7"},
		{"pids", "a", "pids.max", "max"},
		{"memory", "a", "memory.limit_in_bytes", "67108864"},
		{"memory", "a", "memory.oom_control", "0"},
		{"cpu", "c", "cpu.cfs_quota_us", "50000"},
		{"cpu", "a", "cpu.cfs_quota_us", "-1"},
		{"pids", "a", "cgroup.procs", ""},
		{"", "b", "cgroup.type", "domain"},
	} {
		c := ctls[l.h]
		if c == nil {
			t.Errorf("cgroup.img: no controller %q", l.h)
			continue
		}
		dirs := cgDirs(c.Dirs, "", map[string]*cgroup.CgroupDirEntry{})
		dir := dirs[ct.path(l.h, l.sub)]
		if dir == nil {
			t.Errorf("controller %q: no cgroup %s among %v", l.h, ct.path(l.h, l.sub), slices.Collect(maps.Keys(dirs)))
			continue
		}
		if v, ok := propValue(dir, l.prop); !ok || v != l.value {
			t.Errorf("controller %q: cgroup %s: %s = %q (%v), want %q", l.h, l.sub, l.prop, v, ok, l.value)
		}
		if dir.GetDirPerms().GetMode() != syscall.S_IFDIR|0o755 {
			t.Errorf("controller %q: cgroup %s: mode %#o", l.h, l.sub, dir.GetDirPerms().GetMode())
		}
	}
	if !ctls["cpu"].GetIsThreaded() || ctls[""].GetIsThreaded() {
		t.Errorf("is_threaded: cpu %v (want true, v1), cgroup2 %v (want false: no threaded cgroup)", ctls["cpu"].GetIsThreaded(), ctls[""].GetIsThreaded())
	}

	// CRIU's images of a tree placed the same way: the same hierarchies
	// in the same order, and the same properties of each cgroup.
	criu, err := images.ReadKindFile(filepath.Join("..", "images", "testdata", "criu-4.2-cgroup", "images", "cgroup.img"), images.KindCgroup)
	if err != nil {
		t.Fatal(err)
	}
	ce := criu.Entries[0].Message.(*cgroup.CgroupEntry)
	propNames := func(c *cgroup.CgControllerEntry, root bool) []string {
		for _, dir := range cgDirs(c.Dirs, "", map[string]*cgroup.CgroupDirEntry{}) {
			if (dir.GetDirName() == "") == root {
				var out []string
				for _, pr := range dir.Properties {
					out = append(out, pr.GetName())
				}
				return out
			}
		}
		return nil
	}
	var order, criuOrder []string
	for _, c := range e.Controllers {
		order = append(order, strings.Join(c.Cnames, ","))
	}
	for _, c := range ce.Controllers {
		name := strings.Join(c.Cnames, ",")
		criuOrder = append(criuOrder, name)
		mine := ctls[name]
		if mine == nil {
			continue
		}
		if mine.GetIsThreaded() != c.GetIsThreaded() {
			t.Errorf("controller %q: is_threaded %v, CRIU's %v", name, mine.GetIsThreaded(), c.GetIsThreaded())
		}
		for _, root := range []bool{true, false} {
			if w := propNames(c, root); w != nil && !slices.Equal(propNames(mine, root), w) {
				t.Errorf("controller %q (root cgroup %v): properties %q, CRIU's %q", name, root, propNames(mine, root), w)
			}
		}
	}
	if !slices.Equal(order, criuOrder) {
		t.Errorf("controllers %q, CRIU's %q", order, criuOrder)
	}
}

// TestDumpCgroupsOwn: a tree in crest's own cgroups gets no cgroup.img,
// and every core names crest's set, as CRIU writes it for a tree in its
// own cgroups.
func TestDumpCgroupsOwn(t *testing.T) {
	p := workloads.Start(t, "cgroups")
	time.Sleep(50 * time.Millisecond) // the thread is made
	d := dumpCgroupsWorkload(t, p)
	if _, err := os.Stat(d.FilePath("cgroup.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup.img of a tree in crest's cgroups: %v", err)
	}
	for tid, set := range coreSets(t, d) {
		if set != 1 {
			t.Errorf("core-%d.img: cg_set %d, want 1", tid, set)
		}
	}
}

// TestDumpCgroupNotMounted: crest dump run where a hierarchy the tree's
// cgroups are in is not mounted (a mount namespace without the pids
// hierarchy) refuses the dump, naming the hierarchy.
func TestDumpCgroupNotMounted(t *testing.T) {
	bin := cli.Binary(t)
	ct := newCgTest(t)
	p, _ := placeCgroupsWorkload(t, ct)
	dir := filepath.Join(t.TempDir(), "images")
	// the crest binary is a memfd: its fd 3 in the shell
	f, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		fmt.Sprintf("umount %s && exec /proc/self/fd/3 dump -t %d -D %s", ct.mount["pids"], p.Pid, dir))
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("crest dump with the pids hierarchy unmounted: no error\n%s", out)
	}
	t.Logf("crest dump: %s", out)
	if want := "controller pids: not mounted here"; !strings.Contains(string(out), want) {
		t.Errorf("crest dump: %v\n%s\nwant it to say %q", err, out, want)
	}
	if !workloads.Alive(p.Pid) {
		t.Error("the tree died after the refused dump")
	}
}

// TestIsLLongMax: CRIU dumps a property that strtoll reads as LLONG_MAX
// as "-1".
func TestIsLLongMax(t *testing.T) {
	for s, want := range map[string]bool{
		"9223372036854775807": true, "99999999999999999999": true, " 9223372036854775807\n": true,
		"9223372036854771712": false, "max": false, "-1": false, "-9223372036854775808": false, "": false,
		"9223372036854775807 extra": true,
	} {
		if got := isLLongMax(s); got != want {
			t.Errorf("isLLongMax(%q) = %v, want %v", s, got, want)
		}
	}
}
