package bpf

import (
	"encoding/json"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// traceeExpect is the tracee's plan (testdata/tracee.c).
func traceeExpect(t testing.TB) Expect {
	level := pidLevel(t) + 1
	all := []int{1, 5, 6, 7, 9, 10}
	return Expect{
		Tasks: []ExpectTask{
			{PID: 1, Threads: []int{1}, NSLevel: level},
			{PID: 5, ParentPID: 1, Threads: []int{5, 6}, NSLevel: level},
			{PID: 7, ParentPID: 1, Threads: []int{7}, NSLevel: level},
			{PID: 9, ParentPID: 7, Threads: []int{9, 10}, NSLevel: level},
		},
		Stages: []ExpectStage{
			{0, "ROOT_TASK", 1, []int{1}},
			{1, "PREPARE_NAMESPACES", 1, []int{1}},
			{2, "FORKING", 4, []int{1, 5, 7, 9}},
			{3, "RESTORE", 6, all},
			{4, "RESTORE_SIGCHLD", 6, all},
			{5, "RESTORE_CREDS", 6, all},
			{6, "COMPLETE", 6, all},
		},
		Barrier:    Barrier{Start: []uint64{teAddr}, InProgress: []uint64{teAddr + 4}},
		Namespaces: []ExpectNS{{PID: 1, NSType: unix.CLONE_NEWUTS, Inode: utsInode(t)}},
	}
}

// TestVerifyClean: the tracee's protocol done right gives no finding,
// several times over (no false positive from a race), with the exact
// protocol (FUTEX_WAKE_OP) and with CRIU's plain one.
func TestVerifyClean(t *testing.T) {
	exp := traceeExpect(t)
	for _, protocol := range []string{"wake-op", "plain"} {
		t.Run(protocol, func(t *testing.T) {
			for i := range 5 {
				m := openMonitor(t, Options{})
				runTracked(t, m, "none", protocol)
				r, err := m.Verify(exp)
				if err != nil {
					t.Fatal(err)
				}
				if !r.OK || len(r.Findings) != 0 {
					t.Errorf("run %d: %s", i, r.Verdict)
					for _, f := range r.Findings {
						t.Errorf("  %s", f)
					}
				}
				want := "pids 4/4, threads 6/6, stages 7/7 in order, namespaces ok"
				if r.Verdict != want {
					t.Errorf("run %d: verdict %q, want %q", i, r.Verdict, want)
				}
				m.Close()
			}
		})
	}
}

// TestVerifyFaults injects each fault into the tracee and wants the
// finding that names the task and the stage.
func TestVerifyFaults(t *testing.T) {
	tests := []struct {
		fault    string
		check    string
		pid, tid int
		stage    string
		message  string
		evidence []string // kinds of the finding's events
		verdict  string
	}{
		{"no-set-tid", "pid", 7, 0, "", "task 7 (parent 1) was not created: no fork gave pid 7", []string{"clone3", "clone3"},
			"pids 2/4, threads 4/6"},
		{"no-wait", "stage", 5, 5, "RESTORE_SIGCHLD",
			"task 5 left RESTORE_SIGCHLD without waiting: it counted out of RESTORE_CREDS before the switch to RESTORE_CREDS",
			[]string{"futex", "futex"}, "pids 4/4, threads 6/6"},
		{"early-switch", "stage", 7, 7, "RESTORE_SIGCHLD",
			"task 7 arrived at RESTORE_SIGCHLD after the switch to RESTORE_CREDS: the engine switched before all had arrived",
			[]string{"futex", "futex"}, "pids 4/4, threads 6/6"},
		{"wrong-ns", "namespace", 1, 1, "", "task 1 joined uts namespace", []string{"setns"},
			"pids 4/4, threads 6/6, stages 7/7 in order, namespaces 0/1, 1 findings"},
		{"drop-thread", "thread", 9, 10, "", "thread 10 of task 9 was not created: no clone gave tid 10 in process 9",
			[]string{"fork"}, "pids 4/4, threads 5/6"},
		{"early-return", "stage", 5, 5, "RESTORE_SIGCHLD",
			"task 5 returned from its wait at RESTORE_SIGCHLD (ret -110) while start was still RESTORE_SIGCHLD, and went on",
			[]string{"futex"}, "pids 4/4, threads 6/6"},
		// the kernel would restart the wait, but the thread went on
		// before the switch: the exit tracepoint sees -ERESTARTSYS
		{"interrupted", "stage", 5, 5, "RESTORE_SIGCHLD",
			"task 5 returned from its wait at RESTORE_SIGCHLD (ret -512) while start was still RESTORE_SIGCHLD, and went on",
			[]string{"futex"}, "pids 4/4, threads 6/6"},
	}
	exp := traceeExpect(t)
	for _, tt := range tests {
		t.Run(tt.fault, func(t *testing.T) {
			m := openMonitor(t, Options{})
			runTracked(t, m, tt.fault)
			r, err := m.Verify(exp)
			if err != nil {
				t.Fatal(err)
			}
			t.Log(r.Verdict)
			for _, f := range r.Findings {
				t.Log("  ", f)
			}
			if r.OK {
				t.Fatal("no finding")
			}
			var found *Finding
			for i, f := range r.Findings {
				if f.Check == tt.check && f.PID == tt.pid && strings.Contains(f.Message, tt.message) {
					found = &r.Findings[i]
					break
				}
			}
			if found == nil {
				t.Fatalf("no %s finding for task %d with %q", tt.check, tt.pid, tt.message)
			}
			if found.TID != tt.tid || found.Stage != tt.stage {
				t.Errorf("finding names tid %d stage %q, want tid %d stage %q", found.TID, found.Stage, tt.tid, tt.stage)
			}
			var kinds []string
			for _, e := range found.Evidence {
				kinds = append(kinds, e.Head().Kind)
			}
			if strings.Join(kinds, ",") != strings.Join(tt.evidence, ",") {
				t.Errorf("evidence %v, want %v", kinds, tt.evidence)
			}
			if !strings.HasPrefix(r.Verdict, tt.verdict) {
				t.Errorf("verdict %q, want it to start %q", r.Verdict, tt.verdict)
			}
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), `"check":"`+tt.check+`"`) || !strings.Contains(string(b), `"evidence":[{"kind":"`) {
				t.Errorf("JSON lacks the finding or its evidence: %s", b)
			}
		})
	}
}

// TestVerifyPreemptedCountOut: a thread preempted between its count-out's
// decrement and the syscall's exit can return after the engine, woken by
// that decrement, switched. The count-out's exit then lies after the
// switch, but it woke the engine's wait, which returned before the switch:
// the early count-out is still found. The events are a real no-wait run
// with the count-out's exit moved past the switch, as the preemption
// would record it.
func TestVerifyPreemptedCountOut(t *testing.T) {
	exp := traceeExpect(t)
	const early = "task 5 left RESTORE_SIGCHLD without waiting"
	for try := 0; ; try++ {
		m := openMonitor(t, Options{})
		runTracked(t, m, "no-wait")
		evs := m.Events()
		m.Close()
		r := Verify(exp, evs)
		var found *Finding
		for i, f := range r.Findings {
			if strings.Contains(f.Message, early) {
				found = &r.Findings[i]
			}
		}
		if found == nil || len(found.Evidence) != 2 {
			t.Fatalf("the unchanged run: no finding %q with two events: %s", early, r.Verdict)
		}
		countOut, ok1 := found.Evidence[0].(*FutexEvent)
		sw, ok2 := found.Evidence[1].(*FutexEvent)
		if !ok1 || !ok2 || !countOut.Returned {
			t.Fatalf("evidence %+v", found.Evidence)
		}
		// The count-out must have woken the engine's wait (the engine
		// of the tracee mostly waits by then, but may be between two
		// waits).
		var woken *FutexEvent
		for _, e := range evs {
			if w, ok := e.(*FutexEvent); ok && w.Cmd() == FutexWait && w.Addr == teAddr+4 &&
				w.Returned && w.Ret == 0 && w.Time < countOut.Exit && w.Exit > countOut.Time {
				woken = w
			}
		}
		if countOut.Ret <= 0 || woken == nil {
			if try == 5 {
				t.Fatalf("in 6 runs the count-out never woke the engine's wait")
			}
			continue
		}
		if woken.Exit >= sw.Time {
			t.Fatalf("the engine's wait returned at %d, not before its switch at %d", woken.Exit, sw.Time)
		}
		countOut.Exit = sw.Time + 1000
		r = Verify(exp, evs)
		found = nil
		for i, f := range r.Findings {
			if strings.Contains(f.Message, early) {
				found = &r.Findings[i]
			}
		}
		if found == nil || found.Stage != "RESTORE_SIGCHLD" || found.TID != 5 {
			t.Errorf("count-out returning after the switch: no finding %q for tid 5 at RESTORE_SIGCHLD: %s", early, r.Verdict)
		}
		for _, f := range r.Findings {
			t.Log("  ", f)
		}
		// Without the wake-up as evidence the exit time alone can
		// not put the count-out before the switch.
		countOut.Ret = 0
		for _, f := range Verify(exp, evs).Findings {
			if strings.Contains(f.Message, early) {
				t.Errorf("a count-out that woke nobody and returned after the switch was found early: %s", f)
			}
		}
		return
	}
}
