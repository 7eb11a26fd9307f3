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
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/cgroup"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cgroupdir"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/procscan"
	"github.com/crest-restore/crest/test/workloads"
)

// testHierarchies are the hierarchies the tests put tasks in, as
// /proc/PID/cgroup names them ("" is cgroup v2), by their dir in the
// placement tables.
var testHierarchies = []string{"pids", "memory", "cpu", ""}

// testCgroups are the cgroups of one test: base, below crest's own cgroup
// in each of testHierarchies, and what is made below it. Cleanup kills
// whatever is in them and removes them.
type testCgroups struct {
	t     testing.TB
	mount map[string]string // hierarchy -> mount point
	base  map[string]string // hierarchy -> the test's cgroup in it
}

var testCgroupSeq int

func newTestCgroups(t testing.TB, name string) *testCgroups {
	t.Helper()
	mounts, err := readCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	own, err := readProcCgroup(os.Getpid(), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	testCgroupSeq++
	base := map[string]string{}
	for _, h := range testHierarchies {
		base[h] = cgJoin(own[h], fmt.Sprintf("%s-%d-%d", name, os.Getpid(), testCgroupSeq))
	}
	return testCgroupsAt(t, mounts, base)
}

// testCgroupsAt are the test's cgroups at base, by hierarchy.
func testCgroupsAt(t testing.TB, mounts cgroupMounts, base map[string]string) *testCgroups {
	t.Helper()
	tc := &testCgroups{t: t, mount: map[string]string{}, base: base}
	for _, h := range testHierarchies {
		c := &CgroupController{Names: []string{h}}
		if tc.mount[h] = mounts.find(c); tc.mount[h] == "" {
			t.Fatalf("cgroup hierarchy %q is not mounted", h)
		}
	}
	t.Cleanup(tc.removeAll)
	return tc
}

func cgJoin(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// path returns the cgroup sub of the test in hierarchy h ("" for base).
func (tc *testCgroups) path(h, sub string) string {
	if sub == "" {
		return tc.base[h]
	}
	return tc.base[h] + "/" + sub
}

func (tc *testCgroups) host(h, sub string) string { return tc.mount[h] + tc.path(h, sub) }

func (tc *testCgroups) mkdir(h, sub string) {
	tc.t.Helper()
	if err := os.MkdirAll(tc.host(h, sub), 0o755); err != nil {
		tc.t.Fatal(err)
	}
}

func (tc *testCgroups) write(h, sub, file, value string) {
	tc.t.Helper()
	if err := writeCgroupFile(tc.host(h, sub)+"/"+file, value); err != nil {
		tc.t.Fatal(err)
	}
}

func (tc *testCgroups) read(h, sub, file string) string {
	tc.t.Helper()
	b, err := os.ReadFile(tc.host(h, sub) + "/" + file)
	if err != nil {
		tc.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// stat returns a line of memory.stat ("rss") of the memory cgroup sub.
func (tc *testCgroups) memStat(sub, key string) int64 {
	tc.t.Helper()
	for _, l := range strings.Split(tc.read("memory", sub, "memory.stat"), "\n") {
		if k, v, ok := strings.Cut(l, " "); ok && k == key {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				tc.t.Fatal(err)
			}
			return n
		}
	}
	tc.t.Fatalf("memory.stat of %s: no %s", sub, key)
	return 0
}

// exists reports whether the test's cgroup sub of hierarchy h exists.
func (tc *testCgroups) exists(h, sub string) bool {
	_, err := os.Stat(tc.host(h, sub))
	return err == nil
}

// removeAll kills what is in the test's cgroups and removes them,
// children first.
func (tc *testCgroups) removeAll() {
	for _, h := range testHierarchies {
		cgroupdir.Remove(tc.t, tc.host(h, ""))
	}
}

// readProcCgroup reads /proc/PID/task/TID/cgroup: hierarchy -> path.
func readProcCgroup(pid, tid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/cgroup", pid, tid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 {
			out[f[1]] = f[2]
		}
	}
	return out, nil
}

// The cgroups workload (test/workloads/src/cgroups.c) in its pid
// namespace: the init, its children, and child2's second thread.
const (
	cgInit   = 1
	cgChild1 = 2
	cgChild2 = 3
	cgThread = 4
)

var cgroupsLogs = map[string]check.Next{"out-init.log": check.Counter, "out-child1.log": check.Counter,
	"out-child2.log": check.Counter, "out-thread.log": check.Counter}

// cgroupPlaces is where the test puts the cgroups workload, by thread
// (tid in its pid namespace) and hierarchy: the init and child2 in a,
// child1 in b but for cpu, child2's second thread in cpu's c.
var cgroupPlaces = map[int]map[string]string{
	cgInit:   {"pids": "a", "memory": "a", "cpu": "a", "": "a"},
	cgChild1: {"pids": "b", "memory": "b", "cpu": "a", "": "b"},
	cgChild2: {"pids": "a", "memory": "a", "cpu": "a", "": "a"},
	cgThread: {"pids": "a", "memory": "a", "cpu": "c", "": "a"},
}

// cgroupLimits are the properties the test sets: each must come back in
// a cgroup the restore makes.
var cgroupLimits = []struct{ h, sub, file, value string }{
	{"pids", "b", "pids.max", "7"},
	{"memory", "a", "memory.limit_in_bytes", "67108864"},
	{"cpu", "c", "cpu.cfs_quota_us", "50000"},
}

// cgroupImages starts the cgroups workload, puts its tasks into cgroups
// of the test's (cgroupPlaces, with cgroupLimits), dumps it with crest
// (which kills it) and returns the workload, its cgroups and the images.
func cgroupImages(t *testing.T) (*workloads.Process, *testCgroups, string) {
	t.Helper()
	needRoot(t)
	cli.Subreaper(t)
	tc := newTestCgroups(t, "crest-cgtest")
	p := placeCgroupsWorkload(t, tc)
	checkCgroupPlaces(t, tc, p.Pid)
	imgs := dumpReaped(t, p, dump.Options{})
	if _, err := os.Stat(filepath.Join(imgs, "cgroup.img")); err != nil {
		t.Fatalf("crest dump wrote no cgroup.img: %v", err)
	}
	return p, tc, imgs
}

// placeCgroupsWorkload starts the cgroups workload and puts it into the
// cgroups of tc (cgroupPlaces, with cgroupLimits).
func placeCgroupsWorkload(t testing.TB, tc *testCgroups) *workloads.Process {
	t.Helper()
	p := startCgroupsWorkload(t)
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range testHierarchies {
		for _, sub := range []string{"a", "b", "c"} {
			tc.mkdir(h, sub)
		}
	}
	for _, pid := range []int{cgInit, cgChild1, cgChild2} {
		for h, sub := range cgroupPlaces[pid] {
			tc.write(h, sub, "cgroup.procs", strconv.Itoa(live[pid].Host))
		}
	}
	tc.write("cpu", cgroupPlaces[cgThread]["cpu"], "tasks", strconv.Itoa(live[cgChild2].Threads[cgThread]))
	for _, l := range cgroupLimits {
		tc.write(l.h, l.sub, l.file, l.value)
	}
	return p
}

// startCgroupsWorkload starts the cgroups workload and waits until each
// of its tasks and threads is under way.
func startCgroupsWorkload(t testing.TB) *workloads.Process {
	t.Helper()
	p := workloads.Start(t, "cgroups")
	for l := range cgroupsLogs {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if b, _ := os.ReadFile(filepath.Join(p.Dir, l)); strings.Count(string(b), "\n") >= 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: 3 lines not written within 10s", l)
			}
		}
	}
	return p
}

// checkCgroupPlaces checks that every thread of the cgroups workload,
// rooted at host pid root, is in its cgroups (cgroupPlaces).
func checkCgroupPlaces(t testing.TB, tc *testCgroups, root int) {
	t.Helper()
	live, err := check.Live(root)
	if err != nil {
		t.Fatal(err)
	}
	for tid, places := range cgroupPlaces {
		pid := tid
		if tid == cgThread {
			pid = cgChild2
		}
		lt := live[pid]
		if lt == nil || lt.Threads[tid] == 0 {
			t.Fatalf("no task %d thread %d in the tree of %d", pid, tid, root)
		}
		got, err := readProcCgroup(lt.Host, lt.Threads[tid])
		if err != nil {
			t.Fatal(err)
		}
		for h, sub := range places {
			if want := tc.path(h, sub); got[h] != want {
				t.Errorf("task %d thread %d: cgroup %s in hierarchy %q, want %s", pid, tid, got[h], h, want)
			}
		}
	}
}

// restoreCgroups restores imgs and returns the restore, aborted when the
// test ends.
func restoreCgroups(t *testing.T, imgs string) *Restore {
	t.Helper()
	p := planDir(t, imgs)
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Abort() })
	return r
}

// resetLogs puts back the logs as they were at the dump, for another
// restore of the same images.
func resetLogs(t *testing.T, dir string, before map[string][]byte) {
	t.Helper()
	for base, b := range before {
		if err := os.WriteFile(filepath.Join(dir, base), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// cgroupSteps returns the cgroup steps of the restore's timeline:
// "stage step pid/tid", the agent's marked "(agent)".
func cgroupSteps(r *Restore) []string {
	var out []string
	for _, e := range r.Timeline().Steps {
		if !strings.HasPrefix(e.Step, "cgroup") || !e.Succeeded {
			continue
		}
		s := fmt.Sprintf("%v %s %d/%d", e.Stage, e.Step, e.PID, e.TID)
		if !e.Engine {
			s += " (agent)"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// TestCgroupRestore dumps the cgroups workload placed in cgroups of the
// test's (four hierarchies, v1 and v2, tasks and a thread in different
// ones, limits set) with crest and restores it: with the cgroups left in
// place (used as they are: nothing in them changes) and removed (the
// restore makes them, with the dumped limits). Every task and the thread
// must be back in their cgroups, their memory charged there, and run on.
// Then the plan's refusals of broken images, and the rollback of restores
// that fail after they made cgroups.
func TestCgroupRestore(t *testing.T) {
	p, tc, imgs := cgroupImages(t)
	before := check.Snapshot(t, p.Dir, cgroupsLogs)

	placed := func(t *testing.T, r *Restore) {
		t.Helper()
		checkCgroupPlaces(t, tc, r.RootPID())
		// memory restored after the moves is charged where it was: 8 and
		// 4 MiB the init and child2 hold in a, 4 MiB child1 in b
		if rss := tc.memStat("a", "rss"); rss < 12<<20 {
			t.Errorf("memory cgroup a: rss %d, want at least 12 MiB", rss)
		}
		if rss := tc.memStat("b", "rss"); rss < 4<<20 {
			t.Errorf("memory cgroup b: rss %d, want at least 4 MiB", rss)
		}
		if n := tc.read("pids", "a", "pids.current"); n != "3" {
			t.Errorf("pids cgroup a: %s tasks, want 3 (init, child2 and its thread)", n)
		}
		if n := tc.read("pids", "b", "pids.current"); n != "1" {
			t.Errorf("pids cgroup b: %s tasks, want 1 (child1)", n)
		}
		// child1 enters its cgroups itself, child2 is in its
		// parent's, the root's
		want := []string{
			"FORKING cgroups 2/2 (agent)",
			"PREPARE_NAMESPACES cgroup dirs 1/1",
			"PREPARE_NAMESPACES cgroups 1/1",
			"RESTORE cgroups 3/4",
		}
		if r.cgroups == nil || len(r.cgroups.created) > 0 {
			want = append(want, "RESTORE cgroup properties 1/1")
			slices.Sort(want)
		}
		if got := cgroupSteps(r); !slices.Equal(got, want) {
			t.Errorf("cgroup steps %q, want %q", got, want)
		}
		check.Logs(t, p.Dir, before, cgroupsLogs, 200*time.Millisecond)
	}

	t.Run("in place", func(t *testing.T) {
		// The dump left the cgroups; changed since, they must stay so.
		tc.write("pids", "b", "pids.max", "9")
		tc.write("memory", "a", "memory.limit_in_bytes", "134217728")
		if err := os.Chmod(tc.host("pids", "a"), 0o700); err != nil {
			t.Fatal(err)
		}
		r := restoreCgroups(t, imgs)
		if len(r.cgroups.made) != 0 {
			t.Errorf("the restore made cgroups %q, which existed", r.cgroups.made)
		}
		placed(t, r)
		if v := tc.read("pids", "b", "pids.max"); v != "9" {
			t.Errorf("pids.max of the existing cgroup b: %s, want 9 (as it was)", v)
		}
		if v := tc.read("memory", "a", "memory.limit_in_bytes"); v != "134217728" {
			t.Errorf("memory.limit_in_bytes of the existing cgroup a: %s, want 134217728 (as it was)", v)
		}
		if st, err := os.Stat(tc.host("pids", "a")); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("the existing cgroup a: %v, %v: want mode 0700, as it was", st.Mode(), err)
		}
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		if !tc.exists("pids", "a") {
			t.Error("the abort removed a cgroup the restore did not make")
		}
	})

	t.Run("made", func(t *testing.T) {
		resetLogs(t, p.Dir, before)
		tc.removeAll()
		r := restoreCgroups(t, imgs)
		placed(t, r)
		for _, l := range cgroupLimits {
			if v := tc.read(l.h, l.sub, l.file); v != l.value {
				t.Errorf("%s of the cgroup %s the restore made: %s, want %s", l.file, tc.path(l.h, l.sub), v, l.value)
			}
		}
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		for _, h := range testHierarchies {
			if tc.exists(h, "") {
				t.Errorf("hierarchy %q: the cgroup %s the restore made is still there after the abort", h, tc.base[h])
			}
		}
	})

	t.Run("refused", func(t *testing.T) {
		testCgroupPlanRefusals(t, imgs)
	})

	t.Run("rollback", func(t *testing.T) {
		resetLogs(t, p.Dir, before)
		testCgroupRollback(t, tc, imgs, p.Dir)
	})
}

// TestCgroupThreadedV2: a thread in a threaded cgroup v2 (its process in
// the domain above it) comes back there, the threaded cgroup made again
// as one (cgroup.type, written when it is made), as CRIU restores it.
// child1 stays in crest's own cgroups, the dump's set (root_cg_set) under
// a root in another: it comes back into the restoring crest's (CRIU
// refuses such images: "No set 1 found").
func TestCgroupThreadedV2(t *testing.T) {
	needRoot(t)
	cli.Subreaper(t)
	tc := newTestCgroups(t, "crest-cgthr")
	p := startCgroupsWorkload(t)
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	tc.mkdir("", "a/t")
	tc.write("", "a/t", "cgroup.type", "threaded")
	for _, pid := range []int{cgInit, cgChild2} {
		tc.write("", "a", "cgroup.procs", strconv.Itoa(live[pid].Host))
	}
	tc.write("", "a/t", "cgroup.threads", strconv.Itoa(live[cgChild2].Threads[cgThread]))
	imgs := dumpReaped(t, p, dump.Options{})
	tc.removeAll()
	r := restoreCgroups(t, imgs)
	if live, err = check.Live(r.RootPID()); err != nil {
		t.Fatal(err)
	}
	for tid, want := range map[int]string{cgChild2: "a", cgThread: "a/t"} {
		got, err := readProcCgroup(live[cgChild2].Host, live[cgChild2].Threads[tid])
		if err != nil {
			t.Fatal(err)
		}
		if got[""] != tc.path("", want) {
			t.Errorf("thread %d of task %d: cgroup v2 %s, want %s", tid, cgChild2, got[""], tc.path("", want))
		}
	}
	own, err := readProcCgroup(os.Getpid(), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := readProcCgroup(live[cgChild1].Host, live[cgChild1].Host); err != nil || got[""] != own[""] {
		t.Errorf("task %d, in the dump's own cgroups: cgroup v2 %s (%v), want crest's %s", cgChild1, got[""], err, own[""])
	}
	if ty := tc.read("", "a/t", "cgroup.type"); ty != "threaded" {
		t.Errorf("cgroup.type of the cgroup %s the restore made: %s, want threaded", tc.path("", "a/t"), ty)
	}
	if err := r.Abort(); err != nil {
		t.Fatal(err)
	}
	if tc.exists("", "") {
		t.Errorf("the cgroup %s the restore made is still there after the abort", tc.base[""])
	}
}

// cgroupForkPlaces is where TestCgroupEntersBeforeFork puts the tasks
// of the cgroups workload, in every hierarchy: each in a cgroup of its
// own, child2's thread with child2.
var cgroupForkPlaces = map[int]string{cgInit: "a", cgChild1: "b", cgChild2: "c"}

// TestCgroupEntersBeforeFork: every task enters its cgroups before it
// forks its children, as CRIU's restore_task_cgroup, so that each child is
// born, and its fork charged (pids, the kernel memory a fork takes), in
// its parent's cgroups, never in the root's. The cgroups workload with
// each task in a cgroup of its own (cgroupForkPlaces) and child2 made
// child1's child (pstree.img edited), restored into fresh cgroups: the
// init's, a, allows 2 tasks (pids.max), itself and a child being born.
// A task that forked in the init's cgroups (child1 forking child2 there)
// would fail its fork with EAGAIN. Each cgroup's pids.peak then says
// where each fork was charged: 2 in every one, its task and the child
// it forked (c: child2 and its thread). The timeline shows each task's
// cgroups step done before its fork.
func TestCgroupEntersBeforeFork(t *testing.T) {
	needRoot(t)
	cli.Subreaper(t)
	tc := newTestCgroups(t, "crest-cgfork")
	mkdirs := func() {
		for _, h := range testHierarchies {
			for _, sub := range []string{"a", "b", "c"} {
				tc.mkdir(h, sub)
			}
		}
	}
	p := startCgroupsWorkload(t)
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	mkdirs()
	for pid, sub := range cgroupForkPlaces {
		for _, h := range testHierarchies {
			tc.write(h, sub, "cgroup.procs", strconv.Itoa(live[pid].Host))
		}
	}
	imgs := dumpReaped(t, p, dump.Options{})
	before := check.Snapshot(t, p.Dir, cgroupsLogs)
	editImage(t, imgs, "pstree.img", func(img *images.Image) {
		for _, e := range img.Entries {
			if pe := e.Message.(*pstree.PstreeEntry); pe.GetPid() == cgChild2 {
				pe.Ppid = proto.Uint32(cgChild1)
			}
		}
	})
	// fresh cgroups: their pids.peak counts the restore's tasks alone
	tc.removeAll()
	mkdirs()
	tc.write("pids", "a", "pids.max", "2")

	r := restoreCgroups(t, imgs)
	if live, err = check.Live(r.RootPID()); err != nil {
		t.Fatal(err)
	}
	if got := live[cgChild2].PPID; got != cgChild1 {
		t.Fatalf("task %d: parent %d, want %d (pstree.img edited)", cgChild2, got, cgChild1)
	}
	for pid, sub := range cgroupForkPlaces {
		for tid, host := range live[pid].Threads {
			got, err := readProcCgroup(live[pid].Host, host)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range testHierarchies {
				if want := tc.path(h, sub); got[h] != want {
					t.Errorf("task %d thread %d: cgroup %s in hierarchy %q, want %s", pid, tid, got[h], h, want)
				}
			}
		}
	}
	for _, sub := range []string{"a", "b", "c"} {
		if n := tc.read("pids", sub, "pids.peak"); n != "2" {
			t.Errorf("pids cgroup %s: pids.peak %s, want 2 (its task and the one it forked)", sub, n)
		}
	}
	if ev := tc.read("pids", "a", "pids.events"); !slices.Contains(strings.Split(ev, "\n"), "max 0") {
		t.Errorf("pids cgroup a: pids.events %q: a fork was refused", ev)
	}

	// In the timeline: the root is moved by the engine while it waits
	// in PREPARE_NAMESPACES, the others move themselves in FORKING; each
	// before it forks.
	moved, forked := map[int]StepEvent{}, map[int]StepEvent{}
	for _, e := range r.Timeline().Steps {
		switch {
		case e.Step == stepCgroups && e.PID == e.TID:
			moved[e.PID] = e
		case e.Step == "fork children":
			forked[e.PID] = e
		}
	}
	for pid := range cgroupForkPlaces {
		m, f := moved[pid], forked[pid]
		wantStage, wantEngine := StageForking, false
		if pid == cgInit {
			wantStage, wantEngine = StagePrepareNamespaces, true
		}
		switch {
		case !m.Succeeded || m.Stage != wantStage || m.Engine != wantEngine:
			t.Errorf("task %d: cgroups step %+v, want one in %v (by the engine: %v)", pid, m, wantStage, wantEngine)
		case !f.Succeeded:
			t.Errorf("task %d: no fork children step", pid)
		case m.End > f.Begin:
			t.Errorf("task %d: cgroups step ended at %d, after its fork children step began at %d", pid, m.End, f.Begin)
		}
	}
	check.Logs(t, p.Dir, before, cgroupsLogs, 200*time.Millisecond)
}

// nothingLeftIn fails the test for every process running from dir or in
// it, or a child of the test's, after a second for zombies on their way
// to their reaper; it kills those under dir. Unlike cli.NothingLeft it
// leaves processes of crest's agent elsewhere alone: other tests of the
// machine restore trees at the same time.
func nothingLeftIn(t *testing.T, dir string) {
	t.Helper()
	match := procscan.Any(procscan.Under(dir), procscan.ChildOf(os.Getpid()))
	var left []procscan.Process
	for try := 0; try < 100; try++ {
		var err error
		if left, err = procscan.Find(match); err != nil {
			t.Fatal(err)
		}
		if len(left) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, p := range left {
		t.Errorf("left alive: %v", p)
		if procscan.Under(dir)(p) {
			syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
}

// copyImages copies the image directory src into a new temporary one.
func copyImages(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "images")
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}

// editCgroupImage rewrites cgroup.img of dir through edit.
func editCgroupImage(t *testing.T, dir string, edit func(e *cgroup.CgroupEntry)) {
	t.Helper()
	editImage(t, dir, "cgroup.img", func(img *images.Image) { edit(img.Entries[0].Message.(*cgroup.CgroupEntry)) })
}

// cgController returns the controller entry of e with first name n.
func cgController(t *testing.T, e *cgroup.CgroupEntry, n string) *cgroup.CgControllerEntry {
	t.Helper()
	for _, c := range e.Controllers {
		if c.Cnames[0] == n {
			return c
		}
	}
	t.Fatalf("cgroup.img: no controller %q", n)
	return nil
}

// cgProp returns the property name of the dir entry of c whose path from
// the hierarchy's root ends in sub.
func cgProp(t *testing.T, c *cgroup.CgControllerEntry, sub, name string) *cgroup.CgroupPropEntry {
	t.Helper()
	var found *cgroup.CgroupPropEntry
	var walk func(ds []*cgroup.CgroupDirEntry, parent string)
	walk = func(ds []*cgroup.CgroupDirEntry, parent string) {
		for _, d := range ds {
			p := parent + "/" + d.GetDirName()
			if strings.HasSuffix(p, "/"+sub) {
				for _, pr := range d.Properties {
					if pr.GetName() == name {
						found = pr
					}
				}
			}
			walk(d.Children, p)
		}
	}
	walk(c.Dirs, "")
	if found == nil {
		t.Fatalf("cgroup.img: no %s in cgroup %s of %v", name, sub, c.Cnames)
	}
	return found
}

func editCore(t *testing.T, dir string, tid int, edit func(c *criu_core.CoreEntry)) {
	t.Helper()
	editImage(t, dir, fmt.Sprintf("core-%d.img", tid), func(img *images.Image) { edit(img.Entries[0].Message.(*criu_core.CoreEntry)) })
}

// testCgroupPlanRefusals: broken cgroup images, each refused by the plan
// with the file, set, controller, task or cgroup named.
func testCgroupPlanRefusals(t *testing.T, imgs string) {
	notMounted := func(e *cgroup.CgroupEntry) {
		e.Controllers = append(e.Controllers, &cgroup.CgControllerEntry{Cnames: []string{"net_cls"}})
	}
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"unknown set of a task", func(t *testing.T, dir string) {
			editCore(t, dir, cgChild1, func(c *criu_core.CoreEntry) { c.ThreadCore.CgSet = proto.Uint32(99) })
		}, "task 2: core-2.img: cg_set 99 is not in cgroup.img"},
		{"unknown set of a thread", func(t *testing.T, dir string) {
			editCore(t, dir, cgThread, func(c *criu_core.CoreEntry) { c.ThreadCore.CgSet = proto.Uint32(99) })
		}, "task 3: core-4.img: thread 4: cg_set 99 is not in cgroup.img"},
		{"set id 0", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) { e.Sets[0].Id = proto.Uint32(0) })
		}, "cgroup.img: set 0: id 0 or given twice"},
		{"set twice", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) { e.Sets[1].Id = proto.Uint32(e.Sets[0].GetId()) })
		}, "id 0 or given twice"},
		{"unknown controller", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) { e.Sets[0].Ctls[1].Name = proto.String("net_cls") })
		}, `set 2: controller "net_cls" is none of the image's controllers`},
		{"controller twice", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) { e.Sets[0].Ctls[2].Name = e.Sets[0].Ctls[1].Name })
		}, "set 2: controller blkio twice"},
		{"no controller names", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) { e.Controllers[0].Cnames = nil })
		}, "cgroup.img: controller 0: no names"},
		{"bad controller name", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) { e.Controllers[0].Cnames = []string{"pids/x"} })
		}, `controller 0: name "pids/x"`},
		{"controller not mounted, a cgroup to make", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) {
				notMounted(e)
				c := e.Controllers[len(e.Controllers)-1]
				c.Dirs = []*cgroup.CgroupDirEntry{{DirName: proto.String("x")}}
			})
		}, "controller net_cls: not mounted here, and its cgroup /x is to be made"},
		{"controller not mounted, a task in it", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) {
				notMounted(e)
				s := e.Sets[1] // child1's
				s.Ctls = append(s.Ctls, &cgroup.CgMemberEntry{Name: proto.String("net_cls"), Path: proto.String("/")})
			})
		}, "task 2: cgroup.img: set 3: controller net_cls: not mounted here, and task 2 is in its cgroup /"},
		{"controller not mounted, a thread in it", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) {
				notMounted(e)
				s := e.Sets[2] // the thread's
				s.Ctls = append(s.Ctls, &cgroup.CgMemberEntry{Name: proto.String("net_cls"), Path: proto.String("/")})
			})
		}, "set 4: controller net_cls: not mounted here, and thread 4 of task 3 is in its cgroup /"},
		{"path escapes", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) { e.Sets[1].Ctls[0].Path = proto.String("/a/../../etc") })
		}, `set 3: controller cgroup2: path "/a/../../etc" is not a path in its hierarchy`},
		{"relative path", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) { e.Sets[1].Ctls[0].Path = proto.String("a") })
		}, `path "a" is not a path in its hierarchy`},
		{"cgroup namespace", func(t *testing.T, dir string) {
			// a child's set in a namespace, the root's in none
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) {
				m := e.Sets[1].Ctls[0]
				m.CgnsPrefix = proto.Uint32(uint32(len(m.GetPath())))
			})
		}, "a cgroup namespace other than the root's is not restored"},
		{"dir escapes", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) {
				cgController(t, e, "pids").Dirs[0].DirName = proto.String("../../etc")
			})
		}, `controller pids: cgroup "../../etc" under "/": not a path below it`},
		{"child dir escapes", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) {
				d := cgController(t, e, "pids").Dirs[0]
				d.Children = append(d.Children, &cgroup.CgroupDirEntry{DirName: proto.String("x/..")})
			})
		}, `cgroup "x/.." under`},
		{"property name", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) {
				pr := cgProp(t, cgController(t, e, "pids"), "b", "pids.max")
				pr.Name = proto.String("../../release_agent")
			})
		}, `property "../../release_agent" is not a file name`},
		{"freezer.state", func(t *testing.T, dir string) {
			editCgroupImage(t, dir, func(e *cgroup.CgroupEntry) {
				pr := cgProp(t, cgController(t, e, "pids"), "b", "pids.max")
				pr.Name = proto.String("freezer.state")
			})
		}, "freezer.state (criu dump --freeze-cgroup) is not restored"},
		{"root_cg_set 0", func(t *testing.T, dir string) {
			editImage(t, dir, "inventory.img", func(img *images.Image) {
				img.Entries[0].Message.(*inventory.InventoryEntry).RootCgSet = proto.Uint32(0)
			})
		}, "inventory.img: root_cg_set 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyImages(t, imgs)
			tc.edit(t, dir)
			wantPlanError(t, dir, tc.want)
		})
	}
}

// testCgroupRollback: restores that fail on purpose after they made
// cgroups (a property the kernel refuses, when made or once the tasks are
// restored; a cgroup a task can not enter) remove every cgroup they made,
// and only those, and leave no process behind.
func testCgroupRollback(t *testing.T, tc *testCgroups, imgs, wdir string) {
	// child1 in a cpuset cgroup the restore makes without cpus (no
	// cpuset.cpus in the image), which no task can enter: its own write
	// into cgroup.procs fails (ENOSPC), in the agent
	own, err := readProcCgroup(os.Getpid(), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := readCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	cpusetTop := cgJoin(own["cpuset"], filepath.Base(tc.base["pids"]))
	cpusetHost := mounts.find(&CgroupController{Names: []string{"cpuset"}}) + cpusetTop
	t.Cleanup(func() { os.Remove(cpusetHost + "/x"); os.Remove(cpusetHost) })
	for _, c := range []struct {
		name  string
		edit  func(e *cgroup.CgroupEntry)
		stage Stage
		step  string
		want  string
		errno syscall.Errno // the failure's, when not 0
		made  string        // a cgroup the restore made outside tc, gone after it
	}{
		{"property made", func(e *cgroup.CgroupEntry) {
			cgProp(t, cgController(t, e, "memory"), "b", "memory.use_hierarchy").Value = proto.String("0")
		}, StagePrepareNamespaces, stepCgroupDirs, "memory.use_hierarchy", 0, ""},
		{"property restored", func(e *cgroup.CgroupEntry) {
			cgProp(t, cgController(t, e, "memory"), "a", "memory.limit_in_bytes").Value = proto.String("junk")
		}, StageRestore, stepCgroupProps, `memory.limit_in_bytes = "junk"`, 0, ""},
		{"entering a cpuset without cpus", func(e *cgroup.CgroupEntry) {
			c := cgController(t, e, "cpuset")
			c.Dirs = append(c.Dirs, &cgroup.CgroupDirEntry{DirName: proto.String(strings.TrimPrefix(cpusetTop, "/") + "/x")})
			for _, m := range e.Sets[1].Ctls { // child1's
				if m.GetName() == "cpuset" {
					m.Path = proto.String(cpusetTop + "/x")
				}
			}
		}, StageForking, stepCgroups, "task 2: cgroups: no space left on device (errno 28): entering set 3: writing 0 into one of ",
			syscall.ENOSPC, cpusetHost},
	} {
		t.Run(c.name, func(t *testing.T) {
			tc.removeAll()
			// the pids cgroups exist: the rollback must leave them
			tc.mkdir("pids", "a")
			tc.mkdir("pids", "b")
			dir := copyImages(t, imgs)
			editCgroupImage(t, dir, c.edit)
			r, err := Start(context.Background(), planDir(t, dir), Options{})
			if err == nil {
				r.Abort()
				t.Fatal("the restore did not fail")
			}
			var se *StageError
			if !errors.As(err, &se) || se.Stage != c.stage || se.Step != c.step || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want a StageError in %v, step %q, naming %q", err, c.stage, c.step, c.want)
			}
			if c.made != "" && !strings.Contains(err.Error(), c.made+"/x/cgroup.procs") {
				t.Errorf("error %v: the cgroup.procs file of %s/x not named", err, c.made)
			}
			if c.errno != 0 && !errors.Is(err, c.errno) {
				t.Errorf("error %v, want one that is %v", err, c.errno)
			}
			t.Log(err)
			nothingLeftIn(t, wdir)
			for _, h := range testHierarchies {
				if h != "pids" && tc.exists(h, "") {
					t.Errorf("hierarchy %q: the cgroup %s the failed restore made is still there", h, tc.base[h])
				}
			}
			if _, err := os.Stat(c.made); c.made != "" && err == nil {
				t.Errorf("the cgroup %s the failed restore made is still there", c.made)
			}
			if !tc.exists("pids", "a") || !tc.exists("pids", "b") {
				t.Error("the rollback removed pids cgroups that existed before the restore")
			}
		})
	}
}

// The images of images/testdata/criu-4.2-cgroup, CRIU 4.2's dump of its
// prog: where it ran, the cgroups it was in (the same path in every
// hierarchy), its tasks' places and the limits set.
const (
	criuCgroupDir  = "/tmp/crest-criu-4.2-cgroup"
	criuCgroupBase = "/crest-criu-cgroup"
)

var (
	criuCgroupLogs   = map[string]check.Next{"out-init.log": check.Counter, "out-child.log": check.Counter}
	criuCgroupPlaces = map[int]map[string]string{
		1: {"pids": "a", "memory": "a", "cpu": "a", "": "a"},
		2: {"pids": "b", "memory": "b", "cpu": "a", "": "b"},
	}
	criuCgroupLimits = []struct{ h, sub, file, value string }{
		{"pids", "b", "pids.max", "5"},
		{"memory", "a", "memory.limit_in_bytes", "33554432"},
		{"cpu", "a", "cpu.cfs_quota_us", "50000"},
	}
)

// TestCgroupCRIUImages restores CRIU 4.2's images of a tree in cgroups of
// its own (images/testdata/criu-4.2-cgroup): with the cgroups removed,
// made again with the dumped limits, and with them in place, used as they
// are. Each task must be in its cgroups and run on.
func TestCgroupCRIUImages(t *testing.T) {
	needRoot(t)
	fx := filepath.Join("..", "images", "testdata", "criu-4.2-cgroup")
	imgs := filepath.Join(fx, "images")
	mounts, err := readCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	base := map[string]string{}
	for _, h := range testHierarchies {
		base[h] = criuCgroupBase
	}
	tc := testCgroupsAt(t, mounts, base)
	// the program and its logs where they were at the dump
	install := func(t *testing.T) map[string][]byte {
		t.Helper()
		nothingLeftIn(t, criuCgroupDir)
		putCRIUTestdata(t, fx, criuCgroupDir)
		return check.Snapshot(t, criuCgroupDir, criuCgroupLogs)
	}
	t.Cleanup(func() { os.RemoveAll(criuCgroupDir) })
	placed := func(t *testing.T, r *Restore) {
		t.Helper()
		live, err := check.Live(r.RootPID())
		if err != nil {
			t.Fatal(err)
		}
		for pid, places := range criuCgroupPlaces {
			got, err := readProcCgroup(live[pid].Host, live[pid].Host)
			if err != nil {
				t.Fatal(err)
			}
			for h, sub := range places {
				if want := tc.path(h, sub); got[h] != want {
					t.Errorf("task %d: cgroup %s in hierarchy %q, want %s", pid, got[h], h, want)
				}
			}
		}
	}

	t.Run("made", func(t *testing.T) {
		before := install(t)
		tc.removeAll()
		r := restoreCgroups(t, imgs)
		placed(t, r)
		for _, l := range criuCgroupLimits {
			if v := tc.read(l.h, l.sub, l.file); v != l.value {
				t.Errorf("%s of the cgroup %s the restore made: %s, want %s", l.file, tc.path(l.h, l.sub), v, l.value)
			}
		}
		check.Logs(t, criuCgroupDir, before, criuCgroupLogs, 200*time.Millisecond)
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		for _, h := range testHierarchies {
			if tc.exists(h, "") {
				t.Errorf("hierarchy %q: the cgroup %s the restore made is still there after the abort", h, tc.base[h])
			}
		}
	})

	t.Run("in place", func(t *testing.T) {
		before := install(t)
		for _, places := range criuCgroupPlaces {
			for h, sub := range places {
				tc.mkdir(h, sub)
			}
		}
		tc.write("pids", "b", "pids.max", "9")
		r := restoreCgroups(t, imgs)
		placed(t, r)
		if v := tc.read("pids", "b", "pids.max"); v != "9" {
			t.Errorf("pids.max of the existing cgroup b: %s, want 9 (as it was)", v)
		}
		check.Logs(t, criuCgroupDir, before, criuCgroupLogs, 200*time.Millisecond)
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		if !tc.exists("pids", "b") {
			t.Error("the abort removed a cgroup the restore did not make")
		}
	})
}

// BenchmarkCgroupRestore: what cgroups cost a restore of the cgroups
// workload (3 tasks, 4 threads, 18 MiB), placed as in TestCgroupRestore:
// its images without cgroup.img (every core in crest's set), with the
// cgroups in place, and with them made by each restore. Timed as
// BenchmarkRestore: images.Open, NewPlan, Start to COMPLETE, Detach;
// cgroup-us is the time of the cgroup steps in one restore, the engine's
// and the agent's (-v logs each step's).
//
//	go test -p 1 -run '^$' -bench '^BenchmarkCgroupRestore' -benchtime 50x ./restore
func BenchmarkCgroupRestore(b *testing.B) {
	benchNeedRoot(b)
	cli.Subreaper(b)
	tc := newTestCgroups(b, "crest-cgbench")
	p := placeCgroupsWorkload(b, tc)
	imgs := filepath.Join(b.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: imgs}); err != nil {
		b.Fatal(err)
	}
	syscall.Wait4(p.Pid, nil, syscall.WALL, nil)
	none := filepath.Join(b.TempDir(), "images")
	if err := os.CopyFS(none, os.DirFS(imgs)); err != nil {
		b.Fatal(err)
	}
	os.Remove(filepath.Join(none, "cgroup.img"))
	for tid := cgInit; tid <= cgThread; tid++ {
		file := filepath.Join(none, fmt.Sprintf("core-%d.img", tid))
		img, err := images.ReadFile(file)
		if err != nil {
			b.Fatal(err)
		}
		img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore.CgSet = proto.Uint32(1)
		if err := images.WriteFile(file, img); err != nil {
			b.Fatal(err)
		}
	}
	for _, v := range []struct {
		name   string
		imgs   string
		remove bool
	}{{"no cgroup.img", none, false}, {"in place", imgs, false}, {"made", imgs, true}} {
		b.Run(v.name, func(b *testing.B) {
			var times []time.Duration
			var cg time.Duration
			steps := map[string]time.Duration{}
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if v.remove {
					tc.removeAll()
				}
				b.StartTimer()
				start := time.Now()
				d, err := images.Open(v.imgs)
				if err != nil {
					b.Fatal(err)
				}
				p, err := NewPlan(d)
				if err != nil {
					b.Fatal(err)
				}
				r, err := Start(context.Background(), p, Options{})
				if err != nil {
					b.Fatal(err)
				}
				root := r.RootPID()
				r.Detach()
				times = append(times, time.Since(start))
				b.StopTimer()
				for _, e := range r.Timeline().Steps {
					if strings.HasPrefix(e.Step, "cgroup") {
						name := e.Stage.String() + "/" + e.Step
						if !e.Engine {
							name += " (agent)"
						}
						cg += time.Duration(e.End - e.Begin)
						steps[name] += time.Duration(e.End - e.Begin)
					}
				}
				killTree(b, root)
				b.StartTimer()
			}
			reportLatency(b, times)
			b.ReportMetric(float64(cg.Microseconds())/float64(b.N), "cgroup-us/op")
			for name, d := range steps {
				b.Logf("%s: %.0f us/op", name, float64(d.Microseconds())/float64(b.N))
			}
		})
	}
}
