package dump_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
)

// TestStoppedRoundTrip dumps a tree with stopped tasks (test/workloads/src/stopped.c:
// child1 of two threads stopped by SIGSTOP, child2 by SIGTSTP) and
// restores it, as CRIU does: the images say TASK_STOPPED and the signal
// (core's stop_signo), `crest dump --leave-running` leaves them stopped,
// and `crest restore` brings them back stopped by that signal. Their
// parent sees each stop with waitpid, the signal included, their logs do
// not grow while the init's does, and after SIGCONT they count on from
// where they stopped.
func TestStoppedRoundTrip(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	p, reaped := startReaped(t, "stopped")
	waitEvents(t, p.Dir, "child1 stopped by 19", "child2 stopped by 20")
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	kids := map[string]int{} // role -> pid in the namespace
	for pid, lt := range live {
		if lt.PPID == 1 {
			kids[roleOf(t, lt.Host)] = pid
		}
	}
	if kids["child1"] == 0 || kids["child2"] == 0 {
		t.Fatalf("children of the workload: %v", kids)
	}
	stopped := []string{"child1", "child2"}
	for _, role := range stopped {
		wantStopped(t, role, live[kids[role]].Host)
	}

	// --leave-running: the tree goes on, the children stay stopped
	kept := filepath.Join(t.TempDir(), "kept")
	if res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(p.Pid), "-D", kept, "--leave-running"); res.Code != 0 {
		t.Fatalf("crest dump --leave-running: exit %d: %s", res.Code, res.Stderr)
	}
	for _, role := range stopped {
		wantStopped(t, role, live[kids[role]].Host)
	}
	still := logsOf(t, p.Dir, "child1", "thread", "child2")
	waitGrowth(t, p.Dir, "init", 10)
	sameLogs(t, p.Dir, still)

	imgs := dumpKilled(t, bin, p, live)
	reaped()
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pid         int
		state, sig  uint32
		description string
	}{{1, 1, 0, "init"}, {kids["child1"], 3, 19, "child1"}, {kids["child2"], 3, 20, "child2"}} {
		core, err := d.Core(uint32(c.pid))
		if err != nil {
			t.Fatal(err)
		}
		tc := core.GetTc()
		if tc.GetTaskState() != c.state || tc.GetStopSigno() != c.sig {
			t.Errorf("core-%d.img (%s): task_state %d stop_signo %d, want %d and %d",
				c.pid, c.description, tc.GetTaskState(), tc.GetStopSigno(), c.state, c.sig)
		}
	}
	before := logsOf(t, p.Dir, "init", "child1", "thread", "child2")
	events := lines(t, filepath.Join(p.Dir, "out-events.log"))

	_, restored := restoreTree(t, bin, imgs, d, p.Dir)
	for _, role := range stopped {
		wantStopped(t, role, restored[kids[role]].Host)
	}
	// The restore stopped them again, each with its own signal: their
	// parent learns of it as it did at the first stop.
	waitEvents(t, p.Dir, append(events, "child1 stopped by 19", "child2 stopped by 20")...)
	waitGrowth(t, p.Dir, "init", 10)
	sameLogs(t, p.Dir, map[string][]byte{"child1": before["child1"], "thread": before["thread"], "child2": before["child2"]})

	for _, role := range stopped {
		if err := syscall.Kill(restored[kids[role]].Host, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	rules := map[string]check.Next{}
	logs := map[string][]byte{}
	for role, b := range before {
		rules["out-"+role+".log"] = check.Counter
		logs["out-"+role+".log"] = b
	}
	check.Logs(t, p.Dir, logs, rules, time.Second)
	waitEvents(t, p.Dir, append(events, "child1 stopped by 19", "child2 stopped by 20", "child1 continued", "child2 continued")...)
}

// roleOf tells a child of the workload by its comm-independent mark: the
// log it holds open.
func roleOf(t *testing.T, host int) string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", host))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", host, e.Name()))
		if err == nil && strings.HasSuffix(target, "/out-child1.log") {
			return "child1"
		}
		if err == nil && strings.HasSuffix(target, "/out-child2.log") {
			return "child2"
		}
	}
	return ""
}

// wantStopped fails unless every thread of host is in a group stop ('T'
// in /proc/PID/task/TID/stat).
func wantStopped(t *testing.T, role string, host int) {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", host))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", host, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) || s[i+2] != 'T' {
			t.Errorf("%s (pid %d) thread %s is not stopped: %s", role, host, e.Name(), s)
		}
	}
}

// lines returns the lines of the file at path.
func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

// waitEvents waits until out-events.log in dir has the lines of want, in
// any order (waitpid reports the children in an order of its own), and
// no other.
func waitEvents(t *testing.T, dir string, want ...string) {
	t.Helper()
	path := filepath.Join(dir, "out-events.log")
	want = slices.Sorted(slices.Values(want))
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		got := strings.TrimRight(string(b), "\n")
		if slices.Equal(slices.Sorted(slices.Values(strings.Split(got, "\n"))), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("out-events.log after 10s:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logsOf reads out-ROLE.log of each role.
func logsOf(t *testing.T, dir string, roles ...string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, r := range roles {
		b, err := os.ReadFile(filepath.Join(dir, "out-"+r+".log"))
		if err != nil {
			t.Fatal(err)
		}
		out[r] = b
	}
	return out
}

// waitGrowth waits until out-ROLE.log has n more lines than now: time
// passing, told by a task that runs.
func waitGrowth(t *testing.T, dir, role string, n int) {
	t.Helper()
	path := filepath.Join(dir, "out-"+role+".log")
	start := len(lines(t, path))
	deadline := time.Now().Add(10 * time.Second)
	for len(lines(t, path)) < start+n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %d new lines after 10s", path, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sameLogs fails if a log changed since logsOf read it: a stopped task wrote.
func sameLogs(t *testing.T, dir string, was map[string][]byte) {
	t.Helper()
	for role, b := range logsOf(t, dir, keys(was)...) {
		if string(b) != string(was[role]) {
			t.Errorf("out-%s.log grew while the task was stopped:\nwas %q\nnow %q", role, was[role], b)
		}
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestLeaveStopped runs `crest dump -s` and `crest restore -d -s`
// (--leave-stopped, as CRIU's): after each, every thread of every task of
// the tree is in a group stop, and after a SIGCONT to each task the tree
// counts on from where it was.
func TestLeaveStopped(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	p, reaped := startReaped(t, "tree")
	logs := []string{"init", "child1", "child2", "child3"}
	for _, l := range logs {
		waitLines(t, p, "out-"+l+".log", 3)
	}
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	rules := map[string]check.Next{}
	for _, l := range logs {
		rules["out-"+l+".log"] = check.Counter
	}
	// stopped, checked, continued, checked: every task of tree
	stoppedRunsOn := func(t *testing.T, tree map[int]*check.Task) {
		t.Helper()
		for pid, lt := range tree {
			wantStopped(t, fmt.Sprintf("task %d", pid), lt.Host)
		}
		before := map[string][]byte{}
		for l, b := range logsOf(t, p.Dir, logs...) {
			before["out-"+l+".log"] = b
		}
		for _, lt := range tree {
			if err := syscall.Kill(lt.Host, syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
		}
		check.Logs(t, p.Dir, before, rules, time.Second)
	}

	if res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(p.Pid), "-D", filepath.Join(t.TempDir(), "kept"), "-s"); res.Code != 0 {
		t.Fatalf("crest dump -s: exit %d: %s", res.Code, res.Stderr)
	}
	stoppedRunsOn(t, live)

	imgs := dumpKilled(t, bin, p, live)
	reaped()
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(t.TempDir(), "pid")
	if res := cli.Run(t, bin, "restore", "-D", imgs, "-d", "-s", "--pidfile", pidfile); res.Code != 0 || res.Stderr != "" {
		t.Fatalf("crest restore -d -s: exit %d: %s", res.Code, res.Stderr)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	root, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	var hosts []int
	defer func() {
		killRestored(t, root, hosts)
		cli.NothingLeft(t, p.Dir)
	}()
	restored := check.Tree(t, d, root)
	for _, lt := range restored {
		hosts = append(hosts, lt.Host)
	}
	stoppedRunsOn(t, restored)
}
