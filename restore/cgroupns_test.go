package restore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/cgroup"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cgroupdir"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// The images of images/testdata/criu-4.2-cgroupns: CRIU 4.2's dump of
// its prog in a cgroup namespace of its own, rooted at a below
// /crest-criu-cgroupns of pids, cpu, name=systemd and cgroup v2 (and at
// the dumper's memory cgroup), the child moved to a/b of pids and v2.
const (
	criuCgroupNSDir  = "/tmp/crest-criu-4.2-cgroupns"
	criuCgroupNSBase = "/crest-criu-cgroupns"
)

var (
	criuCgroupNSHierarchies = []string{"pids", "cpu", "name=systemd", ""}
	criuCgroupNSPlaces      = map[int]map[string]string{
		1: {"pids": "a", "cpu": "a", "name=systemd": "a", "": "a"},
		2: {"pids": "a/b", "cpu": "a", "name=systemd": "a", "": "a/b"},
	}
	// seen from inside the namespace: the paths below a
	criuCgroupNSInside = map[int]map[string]string{
		1: {"pids": "/", "cpu": "/", "name=systemd": "/", "": "/", "memory": "/", "blkio": "/"},
		2: {"pids": "/b", "cpu": "/", "name=systemd": "/", "": "/b", "memory": "/", "blkio": "/"},
	}
)

// readCgroupFrom reads /proc/PID/cgroup (paths as its reader's cgroup
// namespace shows them) from a thread that entered the cgroup namespace
// of process nsOf for the read and then went back to its own. A thread
// that could not go back stays locked and ends with its goroutine (the
// main thread, which Go does not end, would keep the other namespace:
// /proc/self/ns/cgroup is the main thread's).
func readCgroupFrom(t *testing.T, nsOf, pid int) map[string]string {
	t.Helper()
	type result struct {
		m   map[string]string
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/cgroup", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer unix.Close(own)
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/cgroup", nsOf), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWCGROUP)
		unix.Close(fd)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: os.NewSyscallError("setns", err)}
			return
		}
		m, err := readProcCgroup(pid, pid)
		if serr := unix.Setns(own, unix.CLONE_NEWCGROUP); serr != nil {
			done <- result{err: os.NewSyscallError("setns back", serr)}
			return
		}
		runtime.UnlockOSThread()
		done <- result{m, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.m
}

func cgnsIno(t *testing.T, pid int, kind string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, kind), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// checkCgroupNSOf checks that the tree at host pid root has a cgroup
// namespace that is not crest's and that every task of it is in the
// root's.
func checkCgroupNSOf(t *testing.T, live map[int]*check.Task, root int) {
	t.Helper()
	rootNS := cgnsIno(t, root, "cgroup")
	if own := cgnsIno(t, os.Getpid(), "cgroup"); rootNS == own {
		t.Errorf("the restored root (host %d) is in crest's cgroup namespace %d, not one of its own", root, own)
	}
	for pid, lt := range live {
		for tid, host := range lt.Threads {
			var st unix.Stat_t
			if err := unix.Stat(fmt.Sprintf("/proc/%d/task/%d/ns/cgroup", lt.Host, host), &st); err != nil {
				t.Fatal(err)
			}
			if st.Ino != rootNS {
				t.Errorf("task %d thread %d: cgroup namespace %d, not the root's %d", pid, tid, st.Ino, rootNS)
			}
		}
	}
}

// TestCgroupNSCRIUImages restores CRIU 4.2's images of a tree in a
// cgroup namespace of its own (images/testdata/criu-4.2-cgroupns), with
// its cgroups removed (made again, with the dumped pids.max) and in
// place: each task must be in its cgroups, see them from inside as at the
// dump, share the root's cgroup namespace, which is not crest's, and run
// on; the abort removes the cgroups it made.
func TestCgroupNSCRIUImages(t *testing.T) {
	needRoot(t)
	fx := filepath.Join("..", "images", "testdata", "criu-4.2-cgroupns")
	imgs := filepath.Join(fx, "images")
	mounts, err := readCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	base := map[string]string{}
	for _, h := range criuCgroupNSHierarchies {
		m := mounts.find(&CgroupController{Names: []string{h}})
		if m == "" {
			t.Fatalf("cgroup hierarchy %q is not mounted", h)
		}
		base[h] = m + criuCgroupNSBase
	}
	removeAll := func() {
		for _, dir := range base {
			cgroupdir.Remove(t, dir)
		}
	}
	t.Cleanup(removeAll)
	// the memory cgroup of the images: where the dumper was, the
	// namespace's root there
	memory := ""
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	e, err := d.Cgroup()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range e.GetSets()[0].GetCtls() {
		if m.GetName() == "memory" {
			memory = m.GetPath()
			if m.GetCgnsPrefix() != uint32(len(memory)) {
				t.Fatalf("cgroup.img: memory %s with cgns_prefix %d, want the whole path", memory, m.GetCgnsPrefix())
			}
		}
	}
	install := func(t *testing.T) map[string][]byte {
		t.Helper()
		nothingLeftIn(t, criuCgroupNSDir)
		putCRIUTestdata(t, fx, criuCgroupNSDir)
		return check.Snapshot(t, criuCgroupNSDir, criuCgroupLogs)
	}
	t.Cleanup(func() { os.RemoveAll(criuCgroupNSDir) })
	placed := func(t *testing.T, r *Restore) {
		t.Helper()
		live, err := check.Live(r.RootPID())
		if err != nil {
			t.Fatal(err)
		}
		root := live[1].Host
		checkCgroupNSOf(t, live, root)
		for pid, places := range criuCgroupNSPlaces {
			got, err := readProcCgroup(live[pid].Host, live[pid].Host)
			if err != nil {
				t.Fatal(err)
			}
			for h, sub := range places {
				if want := criuCgroupNSBase + "/" + sub; got[h] != want {
					t.Errorf("task %d: cgroup %s in hierarchy %q, want %s", pid, got[h], h, want)
				}
			}
			if got["memory"] != memory {
				t.Errorf("task %d: memory cgroup %s, want %s", pid, got["memory"], memory)
			}
			inside := readCgroupFrom(t, root, live[pid].Host)
			for h, want := range criuCgroupNSInside[pid] {
				if inside[h] != want {
					t.Errorf("task %d: seen from its cgroup namespace, cgroup %s in hierarchy %q, want %s (as at the dump)", pid, inside[h], h, want)
				}
			}
		}
	}

	t.Run("made", func(t *testing.T) {
		before := install(t)
		removeAll()
		r := restoreCgroups(t, imgs)
		placed(t, r)
		if b, err := os.ReadFile(base["pids"] + "/a/b/pids.max"); err != nil || strings.TrimSpace(string(b)) != "7" {
			t.Errorf("pids.max of the cgroup a/b the restore made: %q, %v; want 7", b, err)
		}
		check.Logs(t, criuCgroupNSDir, before, criuCgroupLogs, 200*time.Millisecond)
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		for h, dir := range base {
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("hierarchy %q: the cgroup %s the restore made is still there after the abort", h, dir)
			}
		}
	})

	t.Run("in place", func(t *testing.T) {
		before := install(t)
		for _, dir := range base {
			if err := os.MkdirAll(dir+"/a/b", 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := writeCgroupFile(base["pids"]+"/a/b/pids.max", "9"); err != nil {
			t.Fatal(err)
		}
		r := restoreCgroups(t, imgs)
		placed(t, r)
		if b, _ := os.ReadFile(base["pids"] + "/a/b/pids.max"); strings.TrimSpace(string(b)) != "9" {
			t.Errorf("pids.max of the existing cgroup a/b: %q, want 9 (as it was)", b)
		}
		check.Logs(t, criuCgroupNSDir, before, criuCgroupLogs, 200*time.Millisecond)
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(base["pids"] + "/a/b"); err != nil {
			t.Error("the abort removed a cgroup the restore did not make")
		}
	})
}

// startInCgroupNS starts workload name (args after its name) as pid 1 of
// a new pid namespace and in a new cgroup namespace rooted at the
// cgroups whose cgroup.procs files are enter: a shell writes itself into
// them, then runs launch under unshare -C.
func startInCgroupNS(t *testing.T, name string, enter []string, args ...string) *workloads.Process {
	t.Helper()
	launch, prog, dir := workloads.Build(t, "launch"), workloads.Build(t, name), t.TempDir()
	script := `for f in "$@"; do echo $$ > "$f" || exit 1; done; exec unshare -C "$LAUNCH" "$DIR" "$PROG" $ARGS`
	cmd := exec.Command("sh", append([]string{"-c", script, "sh"}, enter...)...)
	cmd.Env = append(os.Environ(), "LAUNCH="+launch, "DIR="+dir, "PROG="+prog, "ARGS="+strings.Join(args, " "))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("start %s in a cgroup namespace: %v\n%s", name, err, stderr.Bytes())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(stdout.String()))
	if err != nil {
		t.Fatalf("start %s: pid %q", name, stdout.String())
	}
	p := workloads.Adopt(pid, dir)
	// the test is the tree's subreaper (cli.Subreaper): Kill reaps it
	t.Cleanup(func() { p.Kill(t) })
	return p
}

// cgnsReports waits until the cgroupns workload's tasks and thread
// report their cgroups as they see them (cg-ROLE.txt) and ok accepts
// them, and returns them: role -> hierarchy -> path.
func cgnsReports(t *testing.T, dir string, ok func(map[string]map[string]string) bool) map[string]map[string]string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		out := map[string]map[string]string{}
		for _, role := range []string{"init", "thread", "child"} {
			b, err := os.ReadFile(filepath.Join(dir, "cg-"+role+".txt"))
			if err != nil {
				break
			}
			m := map[string]string{}
			for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				if f := strings.SplitN(l, ":", 3); len(f) == 3 {
					m[f[1]] = f[2]
				}
			}
			out[role] = m
		}
		if len(out) == 3 && ok(out) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cgroupns workload's reports in %s: %v", dir, out)
		}
	}
}

// TestCgroupNSRoundTrip: the cgroupns workload started in a cgroup
// namespace of its own rooted at the test's cgroups a (four hierarchies,
// v1 and v2), its child moved to a/b in pids and cgroup v2, is dumped by
// crest and restored: every task and the init's thread must be in its
// cgroups, report (its own /proc/thread-self/cgroup) what it reported
// before the dump, and share the root's cgroup namespace, not crest's.
func TestCgroupNSRoundTrip(t *testing.T) {
	needRoot(t)
	cli.Subreaper(t)
	tc := newTestCgroups(t, "crest-cgns")
	var enter []string
	for _, h := range testHierarchies {
		tc.mkdir(h, "a/b")
		enter = append(enter, tc.host(h, "a")+"/cgroup.procs")
	}
	p := startInCgroupNS(t, "cgroupns", enter)
	cgnsReports(t, p.Dir, func(map[string]map[string]string) bool { return true })
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.Pid, p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("the init's children: %q", b)
	}
	for _, h := range []string{"pids", ""} {
		tc.write(h, "a/b", "cgroup.procs", strconv.Itoa(child))
	}
	before := cgnsReports(t, p.Dir, func(r map[string]map[string]string) bool { return r["child"]["pids"] == "/b" })
	for role, want := range map[string]map[string]string{
		"init": {"pids": "/", "memory": "/", "cpu": "/", "": "/"}, "thread": {"pids": "/", "": "/"},
		"child": {"pids": "/b", "memory": "/", "cpu": "/", "": "/b"}} {
		for h, w := range want {
			if before[role][h] != w {
				t.Fatalf("before the dump, %s sees itself in %s of %q, want %s: the test's placement failed", role, before[role][h], h, w)
			}
		}
	}
	imgs := dumpCgroupNS(t, p)
	for _, role := range []string{"init", "thread", "child"} {
		os.Remove(filepath.Join(p.Dir, "cg-"+role+".txt"))
	}
	r := restoreCgroups(t, imgs)
	after := cgnsReports(t, p.Dir, func(map[string]map[string]string) bool { return true })
	for role, m := range before {
		for h, w := range m {
			if after[role][h] != w {
				t.Errorf("%s sees itself in %s of hierarchy %q after the restore, %s before", role, after[role][h], h, w)
			}
		}
	}
	live, err := check.Live(r.RootPID())
	if err != nil {
		t.Fatal(err)
	}
	checkCgroupNSOf(t, live, live[1].Host)
	for pid, places := range map[int]map[string]string{1: {"pids": "a", "memory": "a", "cpu": "a", "": "a"},
		2: {"pids": "a/b", "memory": "a", "cpu": "a", "": "a/b"}} {
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
	if err := r.Abort(); err != nil {
		t.Fatal(err)
	}
}

// dumpCgroupNS dumps the cgroupns workload p as dumpReaped does. The
// workload reads /proc/thread-self/cgroup every tick: a dump that froze it
// with that file open is refused (crest's proc is not the tree's) and
// leaves it running, and is tried again.
func dumpCgroupNS(t *testing.T, p *workloads.Process) string {
	t.Helper()
	for try := 1; ; try++ {
		dir := filepath.Join(t.TempDir(), "images")
		_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir})
		if err != nil && strings.Contains(err.Error(), "in a proc of another pid namespace") && try < 5 {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		reapDumped(t, p) // tcpest_test.go
		return dir
	}
}

// TestCgroupNSRefused: planning refuses, by name, the cgroup namespaces
// crest does not restore, in edited copies of CRIU's images
// (images/testdata/criu-4.2-cgroupns: the root, task 1, in set 2 and
// cgroup namespace 10, its child, task 2, in set 3).
func TestCgroupNSRefused(t *testing.T) {
	src := filepath.Join("..", "images", "testdata", "criu-4.2-cgroupns", "images")
	editCgroup := func(f func(e *cgroup.CgroupEntry)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			file := filepath.Join(dir, "cgroup.img")
			img, err := images.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			f(img.Entries[0].Message.(*cgroup.CgroupEntry))
			if err := images.WriteFile(file, img); err != nil {
				t.Fatal(err)
			}
		}
	}
	member := func(e *cgroup.CgroupEntry, set uint32, name string) *cgroup.CgMemberEntry {
		for _, s := range e.Sets {
			for _, m := range s.Ctls {
				if s.GetId() == set && m.GetName() == name {
					return m
				}
			}
		}
		t.Fatalf("cgroup.img: no set %d member %q", set, name)
		return nil
	}
	setIDs := func(ns map[int]uint32) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			for pid, id := range ns {
				file := filepath.Join(dir, fmt.Sprintf("ids-%d.img", pid))
				img, err := images.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry).CgroupNsId = proto.Uint32(id)
				if err := images.WriteFile(file, img); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	noPrefixes := editCgroup(func(e *cgroup.CgroupEntry) {
		for _, s := range e.Sets {
			for _, m := range s.Ctls {
				m.CgnsPrefix = nil
			}
		}
	})
	for _, tc := range []struct {
		name  string
		edits []func(t *testing.T, dir string)
		want  []string
	}{
		{"nested", []func(*testing.T, string){editCgroup(func(e *cgroup.CgroupEntry) {
			member(e, 3, "pids").CgnsPrefix = proto.Uint32(uint32(len("/crest-criu-cgroupns/a/b")))
		})}, []string{"cgroup.img", "set 3", "controller pids", "task 2", "rooted at /crest-criu-cgroupns/a/b", "nested cgroup namespaces are not restored"}},
		{"outside", []func(*testing.T, string){editCgroup(func(e *cgroup.CgroupEntry) {
			m := member(e, 3, "")
			m.Path, m.CgnsPrefix = proto.String("/"), nil
		})}, []string{"cgroup.img", "set 3", "controller cgroup2", "task 2", "outside the tree's cgroup namespace (its root /crest-criu-cgroupns/a)"}},
		{"prefix too long", []func(*testing.T, string){editCgroup(func(e *cgroup.CgroupEntry) {
			member(e, 2, "cpu").CgnsPrefix = proto.Uint32(99)
		})}, []string{"cgroup.img", "set 2", "controller cpu", "prefix 99 is longer than the path"}},
		{"prefix inside a name", []func(*testing.T, string){editCgroup(func(e *cgroup.CgroupEntry) {
			member(e, 2, "cpu").CgnsPrefix = proto.Uint32(5)
		})}, []string{"cgroup.img", "set 2", "controller cpu", "ends inside a name"}},
		{"another namespace", []func(*testing.T, string){setIDs(map[int]uint32{2: 8})},
			[]string{"ids-2.img", "task 2 is in cgroup namespace 8, not the root task 1's 10", "not restored"}},
		{"no roots", []func(*testing.T, string){noPrefixes},
			[]string{"ids-1.img", "cgroup namespace 10 of the tree's own", "set 2 no namespace root (cgns_prefix)"}},
		{"no cgroup.img", []func(*testing.T, string){func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "cgroup.img"))
			for _, pid := range []int{1, 2} {
				file := filepath.Join(dir, fmt.Sprintf("core-%d.img", pid))
				img, err := images.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore.CgSet = proto.Uint32(1)
				if err := images.WriteFile(file, img); err != nil {
					t.Fatal(err)
				}
			}
		}}, []string{"ids-1.img", "cgroup namespace 10 of the tree's own, and no cgroup.img"}},
		{"the child's only", []func(*testing.T, string){setIDs(map[int]uint32{1: 8, 2: 8}), editCgroup(func(e *cgroup.CgroupEntry) {
			for _, m := range e.Sets[0].Ctls {
				m.CgnsPrefix = nil
			}
		})}, []string{"cgroup.img", "set 3", "task 2 is in a cgroup namespace rooted at", "the root task 1 in none (its set 2)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyImages(t, src)
			for _, edit := range tc.edits {
				edit(t, dir)
			}
			_, err := openPlan(t, dir)
			if err == nil {
				t.Fatal("planned, want a refusal")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestCgnsRoot: the namespace root a cgns_prefix gives a path.
func TestCgnsRoot(t *testing.T) {
	for _, tc := range []struct {
		path   string
		prefix uint32
		want   string
		err    bool
	}{
		{"/a/b", 0, "", false},
		{"/a/b", 2, "/a", false},
		{"/a/b", 4, "/a/b", false},
		{"/a/b", 1, "/", false},
		{"/ab/c", 2, "", true},
		{"/a", 3, "", true},
	} {
		got, err := cgnsRoot(tc.path, tc.prefix)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("cgnsRoot(%q, %d) = %q, %v; want %q (error %v)", tc.path, tc.prefix, got, err, tc.want, tc.err)
		}
	}
}
