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

// startInCgroupNS starts prog (args after it) as pid 1 of a new pid
// namespace, through a shell that writes itself into the cgroup.procs
// files enter and, with unshare, runs launch under unshare -C: the tree's
// cgroup namespace is then rooted at those cgroups. The test is the
// tree's subreaper and reaps it.
func startInCgroupNS(t *testing.T, prog string, enter []string, unshare bool, args ...string) *workloads.Process {
	t.Helper()
	cli.Subreaper(t)
	launch, dir := workloads.Build(t, "launch"), t.TempDir()
	script := `for f in "$@"; do echo $$ > "$f" || exit 1; done; exec $UNSHARE "$LAUNCH" "$DIR" "$PROG" $ARGS`
	cmd := exec.Command("sh", append([]string{"-c", script, "sh"}, enter...)...)
	cmd.Env = append(os.Environ(), "LAUNCH="+launch, "DIR="+dir, "PROG="+prog, "ARGS="+strings.Join(args, " "))
	if unshare {
		cmd.Env = append(cmd.Env, "UNSHARE=unshare -C")
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("start %s: %v", prog, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("start %s: pid %q", prog, out)
	}
	p := workloads.Adopt(pid, dir)
	t.Cleanup(func() {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			syscall.Wait4(pid, nil, syscall.WALL, nil)
		}
		p.Kill(t)
	})
	return p
}

// childOf waits until host pid has a child and returns its host pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			child, _ := strconv.Atoi(f[0])
			return child
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %d forked no child within 10s", pid)
		}
	}
}

// TestDumpCgroupNS dumps CRIU's prog placed as in CRIU 4.2's images of
// it (images/testdata/criu-4.2-cgroupns): in a cgroup namespace of its
// own rooted at a below a cgroup of the test's in pids, cpu, name=systemd
// and cgroup v2, its child moved to a/b in pids and cgroup v2; crest's
// cgroup.img, cores and ids must be CRIU's field by field, the test's
// cgroup in place of CRIU's and crest's own cgroups in place of CRIU's
// (the namespace's root where the tree was not moved): the sets with
// their namespace prefixes, each task's set, the cgroups walked below
// the test's with their properties, and the namespace ids.
func TestDumpCgroupNS(t *testing.T) {
	fx := filepath.Join("..", "images", "testdata", "criu-4.2-cgroupns")
	const criuBase = "/crest-criu-cgroupns"
	base := fmt.Sprintf("/crest-dumpcgns-%d", os.Getpid())
	mounts, err := readCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	moved := []string{"pids", "cpu", "name=systemd", ""}
	host := map[string]string{}
	var enter []string
	for _, h := range moved {
		m := findCgroupMount(mounts, &cgController{names: []string{h}})
		if m == "" {
			t.Fatalf("cgroup hierarchy %q is not mounted", h)
		}
		host[h] = m + base
		if err := os.MkdirAll(host[h]+"/a/b", 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cgroupdir.Remove(t, m+base) })
		enter = append(enter, host[h]+"/a/cgroup.procs")
	}
	if err := os.WriteFile(host["pids"]+"/a/b/pids.max", []byte("7"), 0); err != nil {
		t.Fatal(err)
	}
	prog, err := filepath.Abs(filepath.Join(fx, "prog"))
	if err != nil {
		t.Fatal(err)
	}
	p := startInCgroupNS(t, prog, enter, true)
	child := childOf(t, p.Pid)
	for _, h := range []string{"pids", ""} {
		if err := os.WriteFile(host[h]+"/a/b/cgroup.procs", []byte(strconv.Itoa(child)), 0); err != nil {
			t.Fatal(err)
		}
	}
	d := dumpCgroupsWorkload(t, p)
	criu, err := images.Open(filepath.Join(fx, "images"))
	if err != nil {
		t.Fatal(err)
	}

	// the namespace ids, as CRIU numbers them
	for _, pid := range []uint32{1, 2} {
		mine, err := d.IDs(pid)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := criu.IDs(pid)
		if err != nil {
			t.Fatal(err)
		}
		if mine.GetCgroupNsId() != theirs.GetCgroupNsId() || mine.GetPidNsId() != theirs.GetPidNsId() {
			t.Errorf("ids-%d.img: cgroup_ns_id %d, pid_ns_id %d; CRIU's %d, %d", pid, mine.GetCgroupNsId(), mine.GetPidNsId(), theirs.GetCgroupNsId(), theirs.GetPidNsId())
		}
	}
	if a, b := d.Inventory.GetRootIds().GetCgroupNsId(), criu.Inventory.GetRootIds().GetCgroupNsId(); a != b {
		t.Errorf("inventory.img: root_ids.cgroup_ns_id %d, CRIU's %d", a, b)
	}
	for _, pid := range []uint32{1, 2} {
		mine, err := d.Core(pid)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := criu.Core(pid)
		if err != nil {
			t.Fatal(err)
		}
		if a, b := mine.GetThreadCore().GetCgSet(), theirs.GetThreadCore().GetCgSet(); a != b {
			t.Errorf("core-%d.img: cg_set %d, CRIU's %d", pid, a, b)
		}
	}

	// the sets: CRIU's with the test's cgroups for CRIU's, crest's own
	// for CRIU's own where the tree was not moved
	own, err := readCgroupFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	ownPath := map[string]string{}
	for _, m := range own {
		ownPath[m.name] = m.path
	}
	mine, err := d.Cgroup()
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := criu.Cgroup()
	if err != nil {
		t.Fatal(err)
	}
	type member struct {
		path   string
		prefix uint32
	}
	sets := func(e *cgroup.CgroupEntry, base string, own map[string]string) map[uint32]map[string]member {
		out := map[uint32]map[string]member{}
		for _, s := range e.Sets {
			ms := map[string]member{}
			for _, m := range s.Ctls {
				got := member{m.GetPath(), m.GetCgnsPrefix()}
				switch {
				case strings.HasPrefix(got.path, base+"/"):
					got = member{"BASE" + strings.TrimPrefix(got.path, base), got.prefix - uint32(len(base)) + 4}
				case got.path == own[m.GetName()] && (got.path == "/" && got.prefix == 0 || got.prefix == uint32(len(got.path))):
					got = member{"OWN", 0}
				}
				ms[m.GetName()] = got
			}
			out[s.GetId()] = ms
		}
		return out
	}
	criuOwn := map[string]string{}
	for _, m := range theirs.Sets[0].Ctls {
		if !strings.HasPrefix(m.GetPath(), criuBase+"/") {
			criuOwn[m.GetName()] = m.GetPath() // where CRIU was
		}
	}
	if a, b := sets(mine, base, ownPath), sets(theirs, criuBase, criuOwn); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("cgroup.img sets (paths below the test's cgroup as BASE, crest's or CRIU's own as OWN):\n crest %v\n CRIU  %v", a, b)
	}
	for _, s := range mine.Sets {
		var names []string
		for _, m := range s.Ctls {
			names = append(names, m.GetName())
		}
		var criuNames []string
		for _, cs := range theirs.Sets {
			if cs.GetId() == s.GetId() {
				for _, m := range cs.Ctls {
					criuNames = append(criuNames, m.GetName())
				}
			}
		}
		if !slices.Equal(names, criuNames) {
			t.Errorf("set %d: controllers %q, CRIU's %q", s.GetId(), names, criuNames)
		}
	}

	// the cgroups walked below the test's, with their properties
	walked := func(e *cgroup.CgroupEntry, base string) map[string]string {
		out := map[string]string{}
		for _, c := range e.Controllers {
			for p, dir := range cgDirs(c.Dirs, "", map[string]*cgroup.CgroupDirEntry{}) {
				if !strings.HasPrefix(p, base+"/") {
					continue
				}
				var props []string
				for _, pr := range dir.Properties {
					props = append(props, pr.GetName()+"="+pr.GetValue())
				}
				out[strings.Join(c.Cnames, ",")+":BASE"+strings.TrimPrefix(p, base)] = strings.Join(props, " ")
			}
		}
		return out
	}
	a, b := walked(mine, base), walked(theirs, criuBase)
	if len(a) != 8 || !maps.Equal(a, b) {
		t.Errorf("the cgroups walked below the test's (8 wanted), with their properties:\n crest %v\n CRIU  %v", a, b)
	}
}

// TestDumpCgroupNSRefused: crest dump refuses, naming the task, a task
// in another cgroup namespace than the root's: one of its own below the
// root's, or below crest's when the root is in crest's.
func TestDumpCgroupNSRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		unshare bool
	}{{"nested", true}, {"child only", false}} {
		t.Run(tc.name, func(t *testing.T) {
			p := startInCgroupNS(t, workloads.Build(t, "cgroupns"), nil, tc.unshare, "nested")
			child := childOf(t, p.Pid)
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				if _, err := os.Stat(filepath.Join(p.Dir, "cg-child.txt")); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the child reported nothing within 10s")
				}
			}
			_, err := Dump(context.Background(), Options{Pid: p.Pid, Dir: filepath.Join(t.TempDir(), "images")})
			var ue *UnsupportedError
			if !errors.As(err, &ue) || ue.Task != child || ue.Resource != "cgroup namespace" ||
				!strings.Contains(ue.Why, "a cgroup namespace other than the root's") {
				t.Fatalf("dump: %v, want the child (host %d) refused for its cgroup namespace", err, child)
			}
			if !workloads.Alive(p.Pid) || !workloads.Alive(child) {
				t.Error("the tree died after the refused dump")
			}
		})
	}
}
