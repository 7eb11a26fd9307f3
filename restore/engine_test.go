package restore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/test/fixture"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("restoring a tree needs root (CAP_SYS_ADMIN for clone3 set_tid and new pid namespaces)")
	}
}

// installFixture puts fixture name's program and files in place under
// /opt/crest-fixtures, holding the machine-wide fixture lock for the rest of
// the test process (test/fixture.Install): the engine opens them as the
// images name them.
func installFixture(t *testing.T, name string) string {
	t.Helper()
	return fixture.Install(t, name)
}

// procStatus reads the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string][]string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		st[k] = strings.Fields(v)
	}
	return st
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// recorder keeps every event, to check what the engine published.
type recorder struct {
	Timeline
	prepared []PreparedEvent
}

func (r *recorder) Prepared(e PreparedEvent) { r.prepared = append(r.prepared, e) }

// abortAtCleanup aborts restore r of plan p when the test ends, and checks
// that none of its tasks is left. It returns their host pids, in the
// plan's order.
func abortAtCleanup(t *testing.T, r *Restore, p *Plan) []int {
	t.Helper()
	var hosts []int
	for _, task := range p.Tasks {
		hosts = append(hosts, r.HostPID(task.PID))
	}
	t.Cleanup(func() {
		if err := r.Abort(); err != nil {
			t.Error(err)
		}
		checkGone(t, hosts)
	})
	return hosts
}

// startChecked restores p, rolls it back when the test ends, and checks
// every task against its image; it returns the restore and the tasks'
// host pids, in the plan's order.
func startChecked(t *testing.T, p *Plan) (*Restore, []int) {
	t.Helper()
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	hosts := abortAtCleanup(t, r, p)
	for i, task := range p.Tasks {
		checkTask(t, task, hosts[i])
	}
	return r, hosts
}

// gone reports whether no process of pids exists any more.
func checkGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pid %d still exists after the rollback (%v)", pid, err)
		}
	}
}

// TestForkTree restores the shape of the tree fixture (pids, parents,
// sessions, groups, in a new pid namespace) with every task parked at the
// FORKING barrier, checks it through /proc, then lets the restore go on to
// the end, and finally kills the tree.
func TestForkTree(t *testing.T) {
	needRoot(t)
	installFixture(t, "tree")
	p := loadPlan(t, "tree")
	rec := &recorder{}
	r, err := Start(context.Background(), p, Options{Until: StageForking, Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	var hosts []int
	defer func() {
		if err := r.Abort(); err != nil {
			t.Error(err)
		}
		checkGone(t, hosts)
	}()

	for _, task := range p.Tasks {
		host := r.HostPID(task.PID)
		if host <= 0 {
			t.Fatalf("task %d: no host pid", task.PID)
		}
		hosts = append(hosts, host)
	}
	if r.RootPID() != hosts[0] {
		t.Errorf("RootPID %d, HostPID(1) %d", r.RootPID(), hosts[0])
	}
	for i, task := range p.Tasks {
		st := procStatus(t, hosts[i])
		last := func(k string) int {
			v := st[k]
			if len(v) != 2 {
				t.Fatalf("task %d: %s %v, want two levels (host, new namespace)", task.PID, k, v)
			}
			if atoi(t, v[0]) == 0 {
				t.Errorf("task %d: %s %v", task.PID, k, v)
			}
			return atoi(t, v[1])
		}
		if got := last("NSpid"); got != task.PID {
			t.Errorf("task %d: NSpid %v", task.PID, st["NSpid"])
		}
		if got := last("NSpgid"); got != task.PGID {
			t.Errorf("task %d: NSpgid %v, want %d", task.PID, st["NSpgid"], task.PGID)
		}
		if got := last("NSsid"); got != task.SID {
			t.Errorf("task %d: NSsid %v, want %d", task.PID, st["NSsid"], task.SID)
		}
		wantPPid := os.Getpid() // CLONE_PARENT: the root is the engine's child
		if task.Parent != nil {
			wantPPid = hosts[task.Parent.Index]
		}
		if got := atoi(t, st["PPid"][0]); got != wantPPid {
			t.Errorf("task %d: PPid %d, want %d", task.PID, got, wantPPid)
		}
		if s := r.shared.slot(i); int(s.SeenPID) != task.PID || s.Err != 0 || Stage(s.Stage) != StageForking {
			t.Errorf("task %d slot: seen pid %d, err %d, stage %d", task.PID, s.SeenPID, s.Err, s.Stage)
		}
	}
	// Every task goes to sleep on the start futex, waiting for the switch
	// after FORKING (it may still be on its way there when Start returns).
	for i, task := range p.Tasks {
		var wchan []byte
		for try := 0; try < 1000; try++ {
			wchan, err = os.ReadFile(fmt.Sprintf("/proc/%d/wchan", hosts[i]))
			if err != nil || strings.Contains(string(wchan), "futex") {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if err != nil || !strings.Contains(string(wchan), "futex") {
			t.Errorf("task %d waits in %q (%v), want a futex", task.PID, wchan, err)
		}
	}

	tl := r.Timeline()
	want := []struct {
		stage Stage
		n     int
	}{{StageRootTask, 1}, {StagePrepareNamespaces, 1}, {StageForking, 4}}
	if len(tl.Stages) != len(want) {
		t.Fatalf("timeline stages %+v", tl.Stages)
	}
	for i, w := range want {
		s := tl.Stages[i]
		if s.Stage != w.stage || s.Participants != w.n || s.Switched == 0 || s.Done < s.Switched {
			t.Errorf("stage %d: %+v, want %v with %d participants, done after switched", i, s, w.stage, w.n)
		}
		arrived := 0
		for _, a := range tl.Arrivals {
			if a.Stage == w.stage {
				arrived++
				if a.At < s.Switched {
					t.Errorf("%v: task %d arrived at %d, before the switch at %d", w.stage, a.PID, a.At, s.Switched)
				}
			}
		}
		if arrived != w.n {
			t.Errorf("%v: %d arrivals, want %d", w.stage, arrived, w.n)
		}
	}
	steps := map[string]int{}
	for _, s := range tl.Steps {
		steps[s.Step]++
		if !s.Succeeded || s.End < s.Begin {
			t.Errorf("step %+v", s)
		}
	}
	// check pid: every task; setsid: the root; setpgid: child2 (pid 3);
	// fork children: the root, whose children have none to fork.
	if steps["check pid"] != 4 || steps["setsid"] != 1 || steps["setpgid"] != 1 || steps["fork children"] != 4 {
		t.Errorf("steps %v", steps)
	}
	// The futex addresses published before the launch are where the
	// tasks wait: every task's wchan is a futex at StartAddr.
	if len(rec.prepared) != 1 {
		t.Fatalf("%d Prepared events, want 1", len(rec.prepared))
	}
	pe := rec.prepared[0]
	if pe.InProgressAddr != pe.StartAddr+4 || pe.EngineInProgressAddr != pe.EngineStartAddr+4 ||
		pe.Participants[StageForking] != 4 || pe.Participants[StageRestore] != 4 ||
		fmt.Sprint(pe.TIDs[StageForking]) != "[1 2 3 4]" || fmt.Sprint(pe.TIDs[StageRootTask]) != "[1]" {
		t.Errorf("prepared %+v", pe)
	}
	for i, task := range p.Tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", hosts[i]))
		// "202 0xADDR 0x0 0x2 ...": futex(uaddr, FUTEX_WAIT, FORKING)
		if err != nil || !strings.HasPrefix(string(b), fmt.Sprintf("202 %#x 0x0 0x2 ", pe.StartAddr)) {
			t.Errorf("task %d: syscall %q (%v), want futex(%#x, FUTEX_WAIT, %d)", task.PID, b, err, pe.StartAddr, StageForking)
		}
	}
	if len(rec.Arrivals) != len(tl.Arrivals) || len(rec.Stages) != len(tl.Stages) || len(rec.Steps) != len(tl.Steps) {
		t.Errorf("the observer saw %d/%d/%d events, the timeline %d/%d/%d", len(rec.Stages), len(rec.Arrivals),
			len(rec.Steps), len(tl.Stages), len(tl.Arrivals), len(tl.Steps))
	}

	// From the FORKING barrier, the restore goes on to the end and the
	// tree runs on.
	if err := r.Continue(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if n := len(r.Timeline().Stages); n != 7 {
		t.Errorf("%d stages after Continue, want 7", n)
	}
	for i, task := range p.Tasks {
		checkTask(t, task, hosts[i])
	}
	checkLogsContinue(t, "tree", "/opt/crest-fixtures/tree", 10)
}

// TestRestoreFailure runs the tree fixture until it fails and checks the
// error names the stage, task, step and errno, and that nothing is left.
func TestRestoreFailure(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name    string
		fixture string
		tamper  func(p *Plan)
		stage   Stage
		pid     int // 0: any task
		step    string
		errno   syscall.Errno
	}{
		// A capability the engine does not have (CAP_SYS_RESOURCE is
		// not in this machine's bounding set): the threads fixture
		// fails late, in the restorer's copy of the agent.
		{"capability beyond the engine's", "threads", func(p *Plan) { p.Tasks[0].Creds.CapPrm |= 1 << 24 }, StageRestoreCreds, 1, "creds", syscall.EPERM},
		// Task 4 asks for pid 2, which its sibling already has.
		{"pid taken", "tree", func(p *Plan) { p.Tasks[3].PID = 2 }, StageForking, 1, "fork children", syscall.EEXIST},
		// A page run past the end of pages-1.img.
		{"pages file too short", "counter", func(p *Plan) {
			r := &p.Tasks[0].Mem.Runs[len(p.Tasks[0].Mem.Runs)-1]
			r.Offset += 1 << 30
		}, StageRestore, 1, "memory", syscall.EIO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installFixture(t, tt.fixture)
			p := loadPlan(t, tt.fixture)
			if tt.tamper != nil {
				tt.tamper(p)
			}
			rec := &recorder{}
			r, err := Start(context.Background(), p, Options{Observer: rec, StageTimeout: 5 * time.Second})
			if err == nil {
				r.Abort()
				t.Fatal("the restore succeeded")
			}
			var se *StageError
			if !errors.As(err, &se) {
				t.Fatalf("error %v (%T), want a *StageError", err, err)
			}
			if se.Stage != tt.stage || (tt.pid != 0 && se.PID != tt.pid) || se.PID == 0 || se.Step != tt.step || se.Errno != tt.errno {
				t.Errorf("error %q: %+v, want stage %v pid %d step %q errno %v", err, se, tt.stage, tt.pid, tt.step, tt.errno)
			}
			if !errors.Is(err, tt.errno) {
				t.Errorf("errors.Is(%v, %v) is false", err, tt.errno)
			}
			var hosts []int
			seen := map[int]bool{}
			for _, a := range rec.Arrivals {
				if a.HostPID != 0 && !seen[a.HostPID] {
					seen[a.HostPID] = true
					hosts = append(hosts, a.HostPID)
				}
			}
			if tt.stage > StageForking && len(hosts) != len(p.Tasks) {
				t.Errorf("%d host pids were published, want %d", len(hosts), len(p.Tasks))
			}
			checkGone(t, hosts)
			failed := false
			for _, s := range rec.Steps {
				if s.Errno == int(tt.errno) && s.Step == tt.step && s.PID == se.PID {
					failed = true
				}
			}
			if !failed {
				t.Errorf("no failed step event for %v", se)
			}
		})
	}
}
