package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/bench"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore"
	"github.com/crest-restore/crest/test/bpffs"
	"github.com/crest-restore/crest/test/cgroupdir"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/procscan"
	"github.com/crest-restore/crest/test/workloads"

	_ "github.com/crest-restore/crest/internal/mainthread" // no test wedges the main thread in a tree's namespaces
)

// verifyReport mirrors verifyJSON for decoding.
type verifyReport struct {
	OK            bool   `json:"ok"`
	Verdict       string `json:"verdict"`
	PIDs          struct{ OK, Want int }
	Threads       struct{ OK, Want int }
	Stages        struct{ OK, Want int }
	StagesInOrder bool   `json:"stages_in_order"`
	Failed        string `json:"failed"`
	Dropped       uint64 `json:"dropped"`
	Strict        bool   `json:"strict"`
	RestoreError  string `json:"restore_error"`
	Monitor       struct {
		Load, Attach, Detach time.Duration
		Reused               bool
	} `json:"monitor"`
	Findings []verifyFinding `json:"findings"`
}

type verifyFinding struct {
	Check    string `json:"check"`
	PID      int    `json:"pid"`
	TID      int    `json:"tid"`
	Stage    string `json:"stage"`
	During   string `json:"during"`
	Message  string `json:"message"`
	Evidence []struct {
		Kind string `json:"kind"`
		Time uint64 `json:"time"`
		PID  int    `json:"pid"`
		TID  int    `json:"tid"`
	} `json:"evidence"`
}

func (f verifyFinding) String() string {
	return fmt.Sprintf("%s task %d tid %d stage %q during %q: %s (%d events)", f.Check, f.PID, f.TID, f.Stage, f.During, f.Message, len(f.Evidence))
}

// verifiedRestore is one `crest restore -d --pidfile F --verify... ARGS`
// of a freshly installed fixture, run in this process: the restored root
// is then this process's child, as it is crest's.
type verifiedRestore struct {
	code           int
	stdout, stderr string
	root           int // the restored root's pid, 0 when crest wrote none
	report         verifyReport
}

func restoreVerified(t *testing.T, name string, args ...string) verifiedRestore {
	t.Helper()
	fixture.Install(t, name)
	return restoreVerifiedDir(t, fixture.Images(t, name), args...)
}

// restoreVerifiedDir is restoreVerified of the images in dir.
func restoreVerifiedDir(t *testing.T, dir string, args ...string) verifiedRestore {
	t.Helper()
	pidfile := filepath.Join(t.TempDir(), "pid")
	var out, errb bytes.Buffer
	code := run(append([]string{"restore", "-D", dir, "-d", "--pidfile", pidfile}, args...), &out, &errb)
	v := verifiedRestore{code: code, stdout: out.String(), stderr: errb.String()}
	if b, err := os.ReadFile(pidfile); err == nil {
		v.root, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if slices.Contains(args, "--json") {
		if err := json.Unmarshal(out.Bytes(), &v.report); err != nil {
			t.Fatalf("--json output: %v\n%s\nstderr: %s", err, out.String(), errb.String())
		}
	}
	return v
}

// removeTree kills a restored tree through its root (our child, the init
// of its pid namespace), reaps the root and waits until every task of the
// tree is gone from /proc.
func removeTree(t testing.TB, root int) {
	t.Helper()
	if root <= 0 {
		return
	}
	tree := []int{root}
	if all, err := procscan.All(); err == nil {
		for again := true; again; {
			again = false
			for _, p := range all {
				if slices.Contains(tree, p.PPID) && !slices.Contains(tree, p.PID) {
					tree = append(tree, p.PID)
					again = true
				}
			}
		}
	}
	syscall.Kill(root, syscall.SIGKILL)
	for {
		if _, err := syscall.Wait4(root, nil, syscall.WALL, nil); err != syscall.EINTR {
			break
		}
	}
	if left := procscan.WaitGone(10*time.Second, tree...); len(left) > 0 {
		t.Fatalf("tree of %d: pids %v still exist after SIGKILL", root, left)
	}
}

// leftovers lists what a restore may leave behind: children of this
// process (zombies included), fixture programs and crest's agents of
// this process's restores (procscan.FindOwn: not another test binary's).
func leftovers(t *testing.T) []procscan.Process {
	t.Helper()
	ps, err := procscan.FindOwn(os.Getpid(), procscan.Any(procscan.MemfdExe("crest"), procscan.Under(fixture.OptDir)), procscan.ChildOf(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// verifyFixtures are the CRIU 4.2 fixtures crest restores, with the
// verdict of a clean restore.
var verifyFixtures = []struct{ name, verdict string }{
	{"counter", "pids 1/1, threads 1/1, stages 7/7 in order"},
	{"tree", "pids 4/4, threads 4/4, stages 7/7 in order"},
	{"threads", "pids 1/1, threads 3/3, stages 7/7 in order"},
	{"dynamic", "pids 1/1, threads 1/1, stages 7/7 in order"},
	{"files", "pids 1/1, threads 1/1, stages 7/7 in order"},
	{"pipe", "pids 2/2, threads 2/2, stages 7/7 in order"},
	{"shmem", "pids 2/2, threads 2/2, stages 7/7 in order"},
	{"signals", "pids 1/1, threads 1/1, stages 7/7 in order"},
}

// TestVerifyClean restores the fixtures 50 times in turn with --verify:
// every restore must be found right, with no finding and nothing dropped
// (no false positive from a race between the tasks, the engine and the
// ring buffer).
func TestVerifyClean(t *testing.T) {
	requireRoot(t)
	const runs = 50
	for i := range runs {
		fx := verifyFixtures[i%len(verifyFixtures)]
		v := restoreVerified(t, fx.name, "--verify", "--json")
		if v.code != 0 {
			removeTree(t, v.root)
			t.Fatalf("run %d (%s): exit %d: %s", i, fx.name, v.code, v.stderr)
		}
		r := v.report
		if !r.OK || len(r.Findings) != 0 || r.Verdict != fx.verdict || r.Dropped != 0 || r.Failed != "" || r.RestoreError != "" {
			t.Errorf("run %d (%s): ok %v, verdict %q (want %q), dropped %d, failed %q", i, fx.name, r.OK, r.Verdict, fx.verdict, r.Dropped, r.Failed)
			for _, f := range r.Findings {
				t.Errorf("  %s", f)
			}
		}
		if r.Strict || r.Monitor.Load <= 0 || r.Monitor.Attach <= 0 || r.Monitor.Detach <= 0 {
			t.Errorf("run %d (%s): strict %v, monitor timing %+v", i, fx.name, r.Strict, r.Monitor)
		}
		if v.root <= 0 {
			t.Fatalf("run %d (%s): no root pid", i, fx.name)
		}
		removeTree(t, v.root)
	}
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestVerifyCleanLoop restores every fixture 50 times in a row with the
// monitor through crest bench --verify, which keeps its programs loaded
// between the restores (as --verify-pins does) and ends at the first
// finding: every one of the 50 must get the fixture's clean verdict.
// TestVerifyClean does the same through crest restore, a fresh monitor
// each time, 50 restores over all the fixtures.
func TestVerifyCleanLoop(t *testing.T) {
	requireRoot(t)
	const runs = 50
	for _, fx := range verifyFixtures {
		t.Run(fx.name, func(t *testing.T) {
			code, stdout, stderr := runBench("-D", fixture.Images(t, fx.name), "--runs", strconv.Itoa(runs), "--warmup", "0",
				"--verify", "--settle", "0", "--reset", benchReset(t, fx.name), "--json")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var rep bench.Report
			if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
				t.Fatalf("%v: %s", err, stdout)
			}
			n := 0
			for _, s := range rep.Samples {
				if s.Mode != "verify" {
					continue
				}
				n++
				if s.Verdict != fx.verdict {
					t.Errorf("round %d: verdict %q, want %q", s.Round, s.Verdict, fx.verdict)
				}
			}
			if n != runs {
				t.Errorf("%d verified restores, want %d", n, runs)
			}
			noneLeft(t, fx.name)
		})
	}
}

// TestVerifyText checks the verdict line without --json, and the verdict
// on the trace's root span.
func TestVerifyText(t *testing.T) {
	requireRoot(t)
	file := filepath.Join(t.TempDir(), "trace.json")
	v := restoreVerified(t, "tree", "--verify", "--trace", file)
	defer removeTree(t, v.root)
	if v.code != 0 {
		t.Fatalf("exit %d: %s", v.code, v.stderr)
	}
	if want := "verify: ok: pids 4/4, threads 4/4, stages 7/7 in order\n"; v.stdout != want {
		t.Errorf("stdout %q, want %q", v.stdout, want)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// The root span (no parent) carries the verdict; the kernel's events
	// are in the trace too.
	var doc struct {
		ResourceSpans []struct {
			ScopeSpans []struct {
				Spans []struct {
					Name         string `json:"name"`
					ParentSpanID string `json:"parentSpanId"`
					Attributes   []struct {
						Key   string `json:"key"`
						Value struct {
							StringValue string `json:"stringValue"`
							BoolValue   bool   `json:"boolValue"`
						} `json:"value"`
					} `json:"attributes"`
				} `json:"spans"`
			} `json:"scopeSpans"`
		} `json:"resourceSpans"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var root, kernel int
	for _, rs := range doc.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				attrs := map[string]string{}
				for _, a := range s.Attributes {
					attrs[a.Key] = a.Value.StringValue
					if a.Key == "crest.kernel.event" || strings.HasPrefix(a.Key, "crest.futex.") {
						kernel++
					}
				}
				if s.ParentSpanID != "" {
					continue
				}
				root++
				if attrs["crest.verification.verdict"] != "ok" || attrs["crest.verification.detail"] != "pids 4/4, threads 4/4, stages 7/7 in order" {
					t.Errorf("root span %q: verdict %q, detail %q", s.Name, attrs["crest.verification.verdict"], attrs["crest.verification.detail"])
				}
			}
		}
	}
	if root != 1 {
		t.Errorf("%d root spans, want 1", root)
	}
	if kernel == 0 {
		t.Error("no kernel event in the trace")
	}
}

// verifyFaults are the faults the engine injects, each with the finding
// the monitor must make: its check, the task (image pid; tid for a
// thread), the stage it names (or during which its evidence happened) and
// words of its message.
var verifyFaults = []struct {
	fault, fixture string
	// workload, instead of fixture: a test/workloads program, dumped by
	// crest dump once per test (dumpedWorkloads)
	workload      string
	check         string
	pid, tid      int
	stage, during string
	message       string
	// restored: the restore itself completes despite the fault
	restored bool
	// racy: the fault does not always happen (TestVerifyEarlySwitch)
	racy bool
}{
	// Task 4 is forked first without set_tid and takes pid 2; task 2's
	// own clone3 then fails with EEXIST.
	{fault: "no-set-tid", fixture: "tree", check: "pid", pid: 4, during: "FORKING",
		message: "task 4 (parent 1) was not created: no fork gave pid 4"},
	// The root skips RESTORE_SIGCHLD: its count-out of RESTORE_CREDS
	// closes RESTORE_SIGCHLD before the switch to RESTORE_CREDS. It comes
	// 20 ms late, so it wakes the engine's wait: even when the root is
	// preempted between its decrement and its syscall's exit, and the
	// engine's switch enters before that exit, the wait's return puts the
	// count-out before the switch (bpf's TestVerifyPreemptedCountOut).
	{fault: "no-wait", fixture: "tree", check: "stage", pid: 1, tid: 1, stage: "RESTORE_SIGCHLD",
		message: "task 1 left RESTORE_SIGCHLD without waiting"},
	// The engine opens RESTORE_CREDS with one thread of RESTORE_SIGCHLD
	// still to come, when it sees that one missing: it mostly sleeps
	// until the last arrival wakes it, and then nothing is early.
	{fault: "early-switch", fixture: "threads", check: "stage", pid: 1, stage: "RESTORE_SIGCHLD",
		message: "arrived at RESTORE_SIGCHLD after the switch to RESTORE_CREDS", restored: true, racy: true},
	{fault: "drop-thread", fixture: "threads", check: "thread", pid: 1, tid: 3, during: "RESTORE",
		message: "thread 3 of task 1 was not created: no clone gave tid 3 in process 1"},
	// The engine fills decoy UTS and IPC namespaces instead of the
	// root's; the restore then fails in RESTORE (the root's SysV
	// segment is not in its IPC namespace).
	{fault: "wrong-ns", workload: "nsuts", check: "namespace", pid: 1, stage: "PREPARE_NAMESPACES",
		message: "the engine joined uts namespace"},
	// The launcher makes the time namespace of a tree with a user
	// namespace, before that exists, instead of the root in it; the
	// tree runs on, in a time namespace crest's user namespace owns.
	{fault: "timens-by-launcher", workload: "usernsclocks", check: "namespace", pid: 1,
		during: "ROOT_TASK", message: "task 1 was born in a new time namespace", restored: true},
	// The root does not unshare the tree's cgroup namespace: its child
	// and thread are born in crest's.
	{fault: "no-cgroupns", workload: "cgroupns", check: "namespace", pid: 1,
		during: "FORKING", message: "the first the root forked, was born in the cgroup namespace", restored: true},
}

// dumpedWorkloads returns what gives the images of a fault's restore:
// its fixture installed afresh, or its workload started and dumped with
// crest dump on first use, for the rest of test t.
func dumpedWorkloads(t *testing.T) func(t *testing.T, fixtureName, workload string, args ...string) verifiedRestore {
	dumped := map[string]string{}
	parent := t
	return func(t *testing.T, fixtureName, workload string, args ...string) verifiedRestore {
		t.Helper()
		if workload == "" {
			return restoreVerified(t, fixtureName, args...)
		}
		dir, ok := dumped[workload]
		if !ok {
			dir = dumpWorkload(parent, workload)
			dumped[workload] = dir
		}
		return restoreVerifiedDir(t, dir, args...)
	}
}

// workloadReady is the log a workload has written a few lines of once it
// runs as it should be dumped.
var workloadReady = map[string]string{"nsuts": "out-nsuts.log", "usernsclocks": "out.log", "cgroupns": "out-init.log"}

// workloadStart starts the workloads workloads.Start can not: cgroupns
// in a cgroup namespace of its own.
var workloadStart = map[string]func(t *testing.T) *workloads.Process{"cgroupns": startInCgroupNS}

// cgnsStarts counts startInCgroupNS's cgroups, each of its own.
var cgnsStarts int

// startInCgroupNS starts the cgroupns workload in a cgroup namespace of
// its own, rooted at a pids cgroup the test makes (so that cgroup.img
// has the namespace's root as cgns_prefix), which lasts as long as t.
func startInCgroupNS(t *testing.T) *workloads.Process {
	t.Helper()
	cgnsStarts++
	cg := fmt.Sprintf("/sys/fs/cgroup/pids/crest-verify-cgns-%d-%d", os.Getpid(), cgnsStarts)
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cgroupdir.Remove(t, cg) })
	launch, prog, dir := workloads.Build(t, "launch"), workloads.Build(t, "cgroupns"), t.TempDir()
	cmd := exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec unshare -C "$2" "$3" "$4"`, "sh", cg, launch, dir, prog)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("start cgroupns in a cgroup namespace: %v\n%s", err, stderr.Bytes())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(stdout.String()))
	if err != nil {
		t.Fatalf("start cgroupns: pid %q", stdout.String())
	}
	p := workloads.Adopt(pid, dir)
	t.Cleanup(func() { p.Kill(t) })
	return p
}

// dumpWorkload starts the workload name (test/workloads), waits until it
// has logged three lines, and dumps it with crest dump (which kills it)
// into an image directory, which it returns; the workload's directory,
// where a restored tree goes on logging, lasts as long as t.
func dumpWorkload(t *testing.T, name string) string {
	t.Helper()
	start := workloadStart[name]
	if start == nil {
		start = func(t *testing.T) *workloads.Process { return workloads.Start(t, name) }
	}
	for started := 1; ; started++ {
		p := start(t)
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, _ := os.ReadFile(filepath.Join(p.Dir, workloadReady[name]))
			if bytes.Count(b, []byte("\n")) >= 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s wrote %q in 10s", name, b)
			}
			time.Sleep(10 * time.Millisecond)
		}
		var dir string
		for try := 1; ; try++ {
			dir = filepath.Join(t.TempDir(), "images")
			var out, errb bytes.Buffer
			code := run([]string{"dump", "-t", strconv.Itoa(p.Pid), "-D", dir}, &out, &errb)
			if code == 0 {
				break
			}
			// cgroupns reads /proc/thread-self/cgroup every tick: a dump
			// that froze it with that file open is refused (crest's proc is
			// not the tree's), and leaves it running
			if name == "cgroupns" && strings.Contains(errb.String(), "in a proc of another pid namespace") && try < 5 {
				continue
			}
			t.Fatalf("crest dump of %s: exit %d: %s", name, code, errb.String())
		}
		if !workloads.WaitGone(p.Pid, 10*time.Second) {
			t.Fatalf("the dumped %s %d is still there", name, p.Pid)
		}
		// cgroupns writes its reports to .cg-ROLE.tmp and renames them:
		// images of it frozen in between restore once only (the restored
		// tree renames the file away), and a fault is restored three
		// times; start it again
		if tmp := openTmpReport(t, dir); tmp != "" && started < 5 {
			t.Logf("the dump of %s holds %s open: dumping a new one", name, tmp)
			continue
		}
		return dir
	}
}

// openTmpReport returns the path of a file named .cg-*.tmp that the
// images in dir hold open, or "".
func openTmpReport(t *testing.T, dir string) string {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := d.Files()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if name := filepath.Base(f.GetReg().GetName()); strings.HasPrefix(name, ".cg-") && strings.HasSuffix(name, ".tmp") {
			return f.GetReg().GetName()
		}
	}
	return ""
}

// nsutsKeys are the keys of the SysV objects of nsuts
// (test/workloads/src/nsuts.c): "NSU1" to "NSU3".
const nsutsKeyLo, nsutsKeyHi = 0x4e535531, 0x4e535533

// hostLeftovers says what a restore of nsuts left in our namespaces: a
// hostname other than host, SysV objects with nsuts's keys in our IPC
// namespace, a restored nsuts still running.
func hostLeftovers(t *testing.T, host string) []string {
	t.Helper()
	var left []string
	if h, err := os.Hostname(); err != nil || h != host {
		left = append(left, fmt.Sprintf("our hostname is %q (%v), was %q", h, err, host))
	}
	for _, kind := range []string{"shm", "sem", "msg"} {
		b, err := os.ReadFile("/proc/sysvipc/" + kind)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if key, err := strconv.ParseInt(safeField(f, 0), 10, 64); err == nil && key >= nsutsKeyLo && key <= nsutsKeyHi {
				left = append(left, "SysV "+kind+" in our IPC namespace: "+l)
			}
		}
	}
	ps, err := procscan.Find(procscan.Under(filepath.Dir(workloads.Build(t, "nsuts"))))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		left = append(left, "process "+p.String())
	}
	return left
}

func safeField(f []string, i int) string {
	if i < len(f) {
		return f[i]
	}
	return ""
}

// TestVerifyFaults injects each fault a few times and wants its finding
// every time; nothing of a restore is left afterwards.
func TestVerifyFaults(t *testing.T) {
	requireRoot(t)
	const repeat = 3
	restoreFault := dumpedWorkloads(t)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range verifyFaults {
		if tt.racy {
			continue
		}
		t.Run(tt.fault, func(t *testing.T) {
			for i := range repeat {
				v := restoreFault(t, tt.fixture, tt.workload, "--verify", "--json", "--fault", tt.fault, "--stage-timeout", "1s")
				removeTree(t, v.root)
				r := v.report
				if v.code == 0 && !tt.restored {
					t.Errorf("run %d: exit 0, want the restore to fail", i)
				}
				if r.OK || !strings.HasSuffix(r.Verdict, "findings") && !strings.Contains(r.Verdict, "findings,") {
					t.Errorf("run %d: ok %v, verdict %q: want findings", i, r.OK, r.Verdict)
				}
				var found *verifyFinding
				for j, f := range r.Findings {
					if f.Check == tt.check && f.PID == tt.pid && strings.Contains(f.Message, tt.message) {
						found = &r.Findings[j]
						break
					}
				}
				if found == nil {
					t.Errorf("run %d: no %s finding for task %d with %q; verdict %q; crest exit %d: %s", i, tt.check, tt.pid, tt.message, r.Verdict, v.code, v.stderr)
					for _, f := range r.Findings {
						t.Logf("  %s", f)
					}
					continue
				}
				if (tt.tid != 0 && found.TID != tt.tid) || found.Stage != tt.stage || found.During != tt.during {
					t.Errorf("run %d: finding %s, want tid %d stage %q during %q", i, found, tt.tid, tt.stage, tt.during)
				}
				if len(found.Evidence) == 0 {
					t.Errorf("run %d: finding %s has no evidence", i, found)
				}
			}
			if left := leftovers(t); len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
			if tt.workload == "nsuts" {
				if left := hostLeftovers(t, host); len(left) > 0 {
					t.Errorf("left behind: %q", left)
				}
			}
		})
	}
}

// TestVerifyStrict: under --verify=strict a restore with any finding
// fails, even one that completed, and its tree is gone when crest
// returns; a clean one stands.
func TestVerifyStrict(t *testing.T) {
	requireRoot(t)
	restoreFault := dumpedWorkloads(t)
	for _, tt := range verifyFaults {
		t.Run(tt.fault, func(t *testing.T) {
			args := []string{"--verify=strict", "--fault", tt.fault, "--stage-timeout", "1s"}
			v := restoreFault(t, tt.fixture, tt.workload, args...)
			for try := 1; tt.racy && v.code == 0 && try < 20; try++ {
				// The fault did not happen: a clean restore stands.
				removeTree(t, v.root)
				v = restoreFault(t, tt.fixture, tt.workload, args...)
			}
			if v.code == 0 {
				removeTree(t, v.root)
				t.Fatalf("exit 0 under --verify=strict with fault %s; stdout:\n%s", tt.fault, v.stdout)
			}
			// Gone before crest returned: no waiting here.
			if left := leftovers(t); len(left) > 0 {
				t.Errorf("left behind: %v", left)
				for _, p := range left {
					removeTree(t, p.PID)
				}
			}
			if v.root > 0 && procscan.Exists(v.root) {
				t.Errorf("root %d of the pidfile still exists", v.root)
			}
			if !strings.Contains(v.stdout, "verify: FAILED: ") {
				t.Errorf("stdout lacks the verdict:\n%s", v.stdout)
			}
			if tt.restored && !strings.Contains(v.stderr, "verification failed (--verify=strict)") {
				t.Errorf("stderr %q does not say the verification failed", v.stderr)
			}
		})
	}
	t.Run("clean", func(t *testing.T) {
		v := restoreVerified(t, "counter", "--verify=strict", "--json")
		defer removeTree(t, v.root)
		if v.code != 0 || !v.report.OK || !v.report.Strict || v.root <= 0 || !procscan.Exists(v.root) {
			t.Errorf("exit %d, ok %v, strict %v, root %d: want the restored tree running; stderr: %s",
				v.code, v.report.OK, v.report.Strict, v.root, v.stderr)
		}
	})
}

// TestVerifyUsage: the verification's flags are checked before anything
// runs.
func TestVerifyUsage(t *testing.T) {
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--verify=maybe"}, `invalid argument "maybe" for "--verify" flag: "maybe": want --verify or --verify=strict`},
		{[]string{"--json"}, "--json reports a verification: give --verify too"},
		{[]string{"--verify", "--fault", "no-such-fault"}, `--fault: restore: unknown fault "no-such-fault"`},
		{[]string{"--verify-pins", "/sys/fs/bpf"}, "--verify-pins keeps the monitor of --verify: give --verify too"},
	} {
		var out, errb bytes.Buffer
		code := run(append([]string{"restore", "-D", t.TempDir()}, tt.args...), &out, &errb)
		if code != 2 || out.Len() != 0 || !strings.Contains(errb.String(), tt.msg) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2 and %q", tt.args, code, out.String(), errb.String(), tt.msg)
		}
	}
	// The flags for tests stay out of the help.
	var out, errb bytes.Buffer
	run([]string{"help", "restore"}, &out, &errb)
	if h := out.String(); !strings.Contains(h, "--verify") || strings.Contains(h, "--fault") || strings.Contains(h, "--stage-timeout") {
		t.Errorf("help:\n%s", h)
	}
}

// TestVerifyUnsupported runs crest restore --verify as nobody, who may
// not load BPF programs: it must fail saying so, before anything is
// restored.
func TestVerifyUnsupported(t *testing.T) {
	if os.Getenv("CREST_VERIFY_AS_CHILD") == "1" {
		os.Exit(run([]string{"restore", "-D", os.Getenv("CREST_VERIFY_IMAGES"), "--verify"}, os.Stdout, os.Stderr))
	}
	requireRoot(t)
	cmd, dir := asNobody(t, "TestVerifyUnsupported", "CREST_VERIFY_AS_CHILD=1")
	// A plan needs readable images (a copy of counter's) and the files
	// they name.
	fixture.Install(t, "counter")
	images := filepath.Join(dir, "images")
	if err := os.CopyFS(images, os.DirFS(fixture.Images(t, "counter"))); err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(images, func(p string, _ os.DirEntry, _ error) error { return os.Chmod(p, 0o755) })
	var out, errb bytes.Buffer
	cmd.Env = append(cmd.Env, "CREST_VERIFY_IMAGES="+images)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("as nobody: %v, want exit status 1; stderr:\n%s", err, errb.String())
	}
	for _, want := range []string{"--verify: the kernel-side monitor can not run here", "bpf monitor not supported", "CAP_BPF"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
}

// requireRoot fails a test that needs root: restores and BPF need it, and
// the tests run as root (they must not skip).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: restoring a tree and loading the BPF monitor do")
	}
	fixture.Require(t)
}

// TestVerifyEarlySwitch: the engine switches from RESTORE_SIGCHLD to
// RESTORE_CREDS early only when it happens to look while one thread is
// still to come (it mostly sleeps until the last arrival wakes it), so the
// fault does not always happen, and only the kernel sees exactly when it
// did. Over 20 runs: the monitor must catch it at least once, name the
// thread and the stage every time, never make another finding, and agree
// with the agent's clock readings (the engine's Timeline) where those are
// certain: a thread whose arrival reading is later than the engine's
// switch reading counted out after the switch.
func TestVerifyEarlySwitch(t *testing.T) {
	requireRoot(t)
	const runs = 20
	late, flagged := 0, 0
	for i := range runs {
		fixture.Install(t, "threads")
		d, err := images.Open(fixture.Images(t, "threads"))
		if err != nil {
			t.Fatal(err)
		}
		p, err := restore.NewPlan(d)
		if err != nil {
			t.Fatal(err)
		}
		kc := startKernelCheck(verifyOptions{mode: "on"})
		if err := kc.ready(); err != nil {
			t.Fatal(err)
		}
		tl := &restore.Timeline{}
		r, rerr := restore.Start(context.Background(), p, restore.Options{Observer: observerList{kc, tl},
			Faults: restore.FaultEarlySwitch, StageTimeout: time.Second})
		verr := kc.verify(p)
		kc.close()
		if r != nil {
			if err := r.Abort(); err != nil {
				t.Error(err)
			}
		}
		if verr != nil {
			t.Fatal(verr)
		}
		// The late thread's count-out out of RESTORE_SIGCHLD counts for
		// RESTORE_CREDS, which then closes early too: its own count-out
		// of RESTORE_CREDS comes after the switch to COMPLETE.
		flaggedTIDs := map[int]bool{}
		consequences := 0
		for _, f := range kc.report.Findings {
			if f.Check == "stage" && f.PID == 1 && f.TID > 0 && f.Stage == "RESTORE_SIGCHLD" &&
				strings.Contains(f.Message, "arrived at RESTORE_SIGCHLD after the switch to RESTORE_CREDS") && len(f.Evidence) == 2 {
				flaggedTIDs[f.TID] = true
				continue
			}
			if f.Check == "stage" && f.PID == 1 && f.TID > 0 && f.Stage == "RESTORE_CREDS" &&
				strings.Contains(f.Message, "arrived at RESTORE_CREDS after the switch to COMPLETE") {
				consequences++
				continue
			}
			t.Errorf("run %d (restore error %v): finding %v, want only early arrivals", i, rerr, f)
		}
		if len(flaggedTIDs) > 0 {
			flagged++
		} else if consequences > 0 {
			t.Errorf("run %d: late arrivals at RESTORE_CREDS without their cause: %v", i, kc.report.Findings)
		}
		// At is read when the engine closes the stage (0 for a thread
		// that had not arrived yet: uncertain, its count-out may still
		// come before the switch).
		if creds := tl.Stage(restore.StageRestoreCreds); creds != nil {
			for _, a := range tl.Arrivals {
				if a.Stage != restore.StageRestoreSigchld || a.At <= creds.Switched {
					continue
				}
				late++
				if !flaggedTIDs[a.TID] {
					t.Errorf("run %d: thread %d arrived at RESTORE_SIGCHLD after the switch, but no finding names it: %q",
						i, a.TID, kc.report.Verdict)
				}
			}
		}
	}
	t.Logf("the monitor saw an early switch in %d of %d runs; the agent's clocks were sure of %d", flagged, runs, late)
	// The engine's fault is deterministic: the last thread comes 20 ms
	// late while the engine polls, so every run switches early.
	if flagged != runs {
		t.Errorf("early switch seen in %d of %d runs, want all", flagged, runs)
	}
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// BenchmarkVerifyCost measures what --verify costs a user, for counter and
// tree (run with -benchtime=1x): the wall time of `crest restore -d` of a
// built crest binary, from exec to exit, with and without --verify,
// and with --verify --verify-pins (pins kept on a bpffs mounted for the
// benchmark), interleaved (median of 20 each), and the monitor's
// load+attach and detach as the fresh crest process reports them
// (--json), cold BTF included. BenchmarkStageCost (verifycost_test.go) measures what the
// monitor costs the restore's own stages.
func BenchmarkVerifyCost(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("needs root")
	}
	fixture.Require(b)
	const runs = 20
	bin := cli.Binary(b)
	cli.Subreaper(b) // the restored roots outlive crest -d: reap them here
	pins := bpffs.Mount(b)
	for b.Loop() {
		for _, name := range []string{"counter", "tree"} {
			var wall [3][]time.Duration // plain, --verify, pinned
			var load, attach, detach, pinnedLoad []time.Duration
			for i := range 3 * runs {
				mode := i % 3
				verify := mode > 0
				fixture.Install(b, name)
				pidfile := filepath.Join(b.TempDir(), "pid")
				args := []string{"restore", "-D", fixture.Images(b, name), "-d", "--pidfile", pidfile}
				if verify {
					args = append(args, "--verify", "--json")
				}
				if mode == 2 {
					args = append(args, "--verify-pins", pins)
				}
				res := cli.Run(b, bin, args...)
				if res.Code != 0 {
					b.Fatalf("crest %v: exit %d: %s", args, res.Code, res.Stderr)
				}
				if verify {
					var r verifyReport
					if err := json.Unmarshal([]byte(res.Stdout), &r); err != nil || !r.OK {
						b.Fatalf("--json: %v %q", err, r.Verdict)
					}
					if mode == 2 {
						pinnedLoad = append(pinnedLoad, r.Monitor.Load)
					} else {
						load, attach, detach = append(load, r.Monitor.Load), append(attach, r.Monitor.Attach), append(detach, r.Monitor.Detach)
					}
					wall[mode] = append(wall[mode], res.Wall)
				} else {
					wall[0] = append(wall[0], res.Wall)
				}
				pb, err := os.ReadFile(pidfile)
				if err != nil {
					b.Fatal(err)
				}
				root, _ := strconv.Atoi(strings.TrimSpace(string(pb)))
				removeTree(b, root)
			}
			b.Logf("%s: crest restore -d wall time, median of %d: %v plain, %v with --verify (+%v), %v with pins (+%v); monitor load %v (pinned %v), attach %v, detach %v",
				name, runs, bench.Median(wall[0]), bench.Median(wall[1]), bench.Median(wall[1])-bench.Median(wall[0]), bench.Median(wall[2]), bench.Median(wall[2])-bench.Median(wall[0]),
				bench.Median(load), bench.Median(pinnedLoad), bench.Median(attach), bench.Median(detach))
		}
	}
}

// TestVerifyPins: --verify-pins keeps the monitor loaded on a BPF file
// system between restores: the first restore loads and pins, the second
// opens the pins, both verdicts clean; crest check --unpin removes the
// pins; a directory on another file system is refused before anything is
// restored.
func TestVerifyPins(t *testing.T) {
	requireRoot(t)
	dir := bpffs.Mount(t)
	names := func() []string {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var n []string
		for _, e := range ents {
			n = append(n, e.Name())
		}
		return n
	}
	fresh := names() // a new bpffs holds maps.debug and progs.debug
	for i, reused := range []bool{false, true} {
		v := restoreVerified(t, "counter", "--verify", "--json", "--verify-pins", dir)
		removeTree(t, v.root)
		if v.code != 0 {
			t.Fatalf("run %d: exit %d: %s", i, v.code, v.stderr)
		}
		if !v.report.OK || v.report.Monitor.Reused != reused {
			t.Errorf("run %d: ok %v (%q), monitor reused %v, want %v", i, v.report.OK, v.report.Verdict, v.report.Monitor.Reused, reused)
		}
	}
	if pinned := names(); len(pinned) <= len(fresh) {
		t.Fatalf("nothing pinned under %s: %v", dir, pinned)
	}

	var out, errb bytes.Buffer
	if code := run([]string{"check", "--unpin", dir}, &out, &errb); code != 0 || !strings.Contains(out.String(), "removed crest's monitor pins") {
		t.Errorf("check --unpin: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	if left := names(); !slices.Equal(left, fresh) {
		t.Errorf("after --unpin, %s holds %v, want %v", dir, left, fresh)
	}

	other := t.TempDir()
	v := restoreVerified(t, "counter", "--verify", "--verify-pins", other)
	removeTree(t, v.root)
	if v.code == 0 || v.root > 0 || !strings.Contains(v.stderr, "not on a BPF file system") {
		t.Errorf("--verify-pins %s (tmpfs): exit %d, root %d, stderr %q", other, v.code, v.root, v.stderr)
	}
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestVerifyNamespaces restores a tree with UTS and IPC namespaces of its
// own (nsuts, dumped by crest dump) with --verify, a few times: the root
// is born in new ones, the engine joins them through the root's pidfd to
// fill them and goes back to its own, and the monitor says so: no
// finding, "namespaces ok" (two namespaces checked). The restored nsuts
// runs on in them, and nothing reached ours.
func TestVerifyNamespaces(t *testing.T) {
	requireRoot(t)
	imgs := dumpWorkload(t, "nsuts")
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	var ours [2]uint64
	for i, kind := range []string{"uts", "ipc"} {
		var st syscall.Stat_t
		if err := syscall.Stat("/proc/self/ns/"+kind, &st); err != nil {
			t.Fatal(err)
		}
		ours[i] = st.Ino
	}
	const want = "pids 1/1, threads 1/1, stages 7/7 in order, namespaces ok"
	for i := range 3 {
		v := restoreVerifiedDir(t, imgs, "--verify", "--json")
		if v.code != 0 {
			removeTree(t, v.root)
			t.Fatalf("run %d: exit %d: %s", i, v.code, v.stderr)
		}
		r := v.report
		if !r.OK || len(r.Findings) != 0 || r.Verdict != want || r.Dropped != 0 {
			t.Errorf("run %d: ok %v, verdict %q (want %q), dropped %d", i, r.OK, r.Verdict, want, r.Dropped)
			for _, f := range r.Findings {
				t.Errorf("  %s", f)
			}
		}
		for j, kind := range []string{"uts", "ipc"} {
			var st syscall.Stat_t
			if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/%s", v.root, kind), &st); err != nil || st.Ino == ours[j] {
				t.Errorf("run %d: the restored root %d in %s namespace %d (%v), ours %d: want its own", i, v.root, kind, st.Ino, err, ours[j])
			}
		}
		removeTree(t, v.root)
	}
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if left := hostLeftovers(t, host); len(left) > 0 {
		t.Errorf("left behind: %q", left)
	}
}
