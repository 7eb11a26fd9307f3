package bpf

import (
	"encoding/json"
	"fmt"
	"slices"
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

// withTreeNS adds to exp what the tracee (process engine, forked from
// this one) means for the tree's namespaces: a root in a new pid
// namespace, in ours of every other type, no setns of the engine.
func withTreeNS(t testing.TB, exp Expect, engine int) Expect {
	t.Helper()
	own, err := ReadNamespaces("/proc/self")
	if err != nil {
		t.Fatal(err)
	}
	exp.TreeNS = &ExpectTreeNS{EnginePID: engine, Engine: own, New: unix.CLONE_NEWPID, Stage: 1}
	return exp
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
				engine := runTracked(t, m, "none", protocol)
				r, err := m.Verify(withTreeNS(t, exp, engine))
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
			engine := runTracked(t, m, tt.fault)
			r, err := m.Verify(withTreeNS(t, exp, engine))
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

// nsRestore is a crafted restore of a tree with its own UTS and IPC
// namespaces, as the kernel would show it: the engine (pid 50) has the
// launcher (60) fork the root (100, pid 1) with CLONE_NEWPID, NEWUTS and
// NEWIPC into a new time namespace too; in PREPARE_NAMESPACES an engine
// thread (51) joins the root's UTS and IPC namespaces through its pidfd
// and goes back to its own, one setns each; in FORKING the root forks
// task 2 (101), which makes thread 3 (102). Its fields name the events,
// for the cases to break.
type nsRestore struct {
	exp                        Expect
	engine, root, decoy        Namespaces
	rootFork, taskFork, thFork *ForkEvent
	join, backUTS, backIPC     *SetnsEvent
	forking                    *FutexEvent
	events                     []Event
}

func newNSRestore() *nsRestore {
	r := &nsRestore{
		engine: Namespaces{UTS: 11, IPC: 12, Mnt: 13, PID: 14, Net: 15, Time: 16, Cgroup: 17, User: 18},
		decoy:  Namespaces{UTS: 31, IPC: 32},
	}
	r.root = r.engine
	r.root.UTS, r.root.IPC, r.root.PID, r.root.Time = 21, 22, 24, 26
	const te = 0x1000
	r.exp = Expect{
		Tasks: []ExpectTask{
			{PID: 1, Threads: []int{1}, NSLevel: 1},
			{PID: 2, ParentPID: 1, Threads: []int{2, 3}, NSLevel: 1},
		},
		Stages:  []ExpectStage{{Stage: 0, Name: "ROOT_TASK"}, {Stage: 1, Name: "PREPARE_NAMESPACES"}, {Stage: 2, Name: "FORKING"}},
		Barrier: Barrier{Start: []uint64{te}, InProgress: []uint64{te + 4}},
		TreeNS: &ExpectTreeNS{EnginePID: 50, Engine: r.engine, Stage: 1,
			New:    unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWTIME,
			Joined: unix.CLONE_NEWUTS | unix.CLONE_NEWIPC},
	}
	hdr := func(kind string, t uint64, pid, tid int) Header {
		return Header{Kind: kind, Time: t, PID: pid, TID: tid}
	}
	ret := func(t uint64, v int64) Return { return Return{Returned: true, Exit: t + 2, Ret: v} }
	sw := func(t uint64, stage int) *FutexEvent {
		return &FutexEvent{Header: hdr("futex", t, 50, 50), Return: ret(t, 0), Addr: te, Op: FutexWakeOp, Addr2: te,
			Val3: uint32(futexOpSet)<<28 | uint32(stage)<<12}
	}
	clone3 := func(t uint64, pid, tid int, flags uint64, set int32, child int64) *Clone3Event {
		return &Clone3Event{Header: hdr("clone3", t, pid, tid), Return: ret(t, child), ArgsRead: true, Flags: flags,
			SetTIDSize: 1, SetTID: []int32{set}}
	}
	setns := func(t uint64, fd, nstype int, after Namespaces) *SetnsEvent {
		return &SetnsEvent{Header: hdr("setns", t, 50, 51), Return: ret(t, 0), FD: fd, NSType: nstype, Resolved: true, After: after}
	}
	r.rootFork = &ForkEvent{Header: hdr("fork", 21, 60, 60), ChildPID: 100, ChildTID: 100,
		ParentTIDs: []int{60}, ParentPIDs: []int{60}, ChildTIDs: []int{100, 1}, ChildPIDs: []int{100, 1},
		RealParentPIDs: []int{50}, ChildNS: r.root}
	joined := r.engine
	joined.UTS, joined.IPC = r.root.UTS, r.root.IPC
	r.join = setns(50, 7, unix.CLONE_NEWUTS|unix.CLONE_NEWIPC, joined)
	half := r.engine
	half.IPC = r.root.IPC
	r.backUTS = setns(60, 8, unix.CLONE_NEWUTS, half)
	r.backIPC = setns(70, 9, unix.CLONE_NEWIPC, r.engine)
	r.forking = sw(80, 2)
	r.taskFork = &ForkEvent{Header: hdr("fork", 91, 100, 100), ChildPID: 101, ChildTID: 101,
		ParentTIDs: []int{100, 1}, ParentPIDs: []int{100, 1}, ChildTIDs: []int{101, 2}, ChildPIDs: []int{101, 2},
		RealParentPIDs: []int{100, 1}, ChildNS: r.root}
	r.thFork = &ForkEvent{Header: hdr("fork", 96, 101, 101), ChildPID: 101, ChildTID: 102,
		ParentTIDs: []int{101, 2}, ParentPIDs: []int{101, 2}, ChildTIDs: []int{102, 3}, ChildPIDs: []int{101, 2},
		RealParentPIDs: []int{100, 1}, ChildNS: r.root}
	r.events = []Event{
		clone3(20, 60, 60, unix.CLONE_NEWPID|unix.CLONE_NEWUTS|unix.CLONE_NEWIPC|unix.CLONE_PARENT, 1, 100), r.rootFork,
		sw(30, 0), sw(40, 1), r.join, r.backUTS, r.backIPC, r.forking,
		clone3(90, 100, 100, 0, 2, 2), r.taskFork,
		clone3(95, 101, 101, unix.CLONE_THREAD|unix.CLONE_VM, 3, 3), r.thFork,
	}
	return r
}

// without returns the events but e.
func (r *nsRestore) without(e Event) []Event {
	return slices.DeleteFunc(slices.Clone(r.events), func(x Event) bool { return x == e })
}

// unsharedCgroup makes r a restore whose root, born in the engine's
// cgroup namespace, unshares one of its own (which the monitor does not
// see) before it forks task 2, which is born in it, as is its thread.
func (r *nsRestore) unsharedCgroup() {
	r.exp.TreeNS.Unshared = unix.CLONE_NEWCGROUP
	r.taskFork.ChildNS.Cgroup, r.thFork.ChildNS.Cgroup = 47, 47
}

// madeTime makes r a restore whose root makes its time namespace itself,
// as in a tree with a user namespace of its own: born in the engine's time
// namespace, it enters its new one with setns on an nsfs fd in
// PREPARE_NAMESPACES, before it forks task 2. It returns that setns.
func (r *nsRestore) madeTime() *SetnsEvent {
	r.exp.TreeNS.New &^= unix.CLONE_NEWTIME
	r.exp.TreeNS.Made = unix.CLONE_NEWTIME
	r.rootFork.ChildNS.Time = r.engine.Time
	s := &SetnsEvent{Header: Header{Kind: "setns", Time: 44, PID: 100, TID: 100}, Return: Return{Returned: true, Exit: 45},
		FD: 3, NSType: unix.CLONE_NEWTIME, Resolved: true, Inode: r.root.Time, FSMagic: unix.NSFS_MAGIC, After: r.root}
	r.events = append(r.events, s)
	return s
}

// inEngineTime puts task 2 and its thread in the engine's time namespace,
// where they are when the root forks them from there.
func (r *nsRestore) inEngineTime() {
	r.taskFork.ChildNS.Time, r.thFork.ChildNS.Time = r.engine.Time, r.engine.Time
}

// TestVerifyTreeNamespaces: the namespace findings from crafted events,
// each on its own: the clean restore gives none and "namespaces ok"; each
// broken one names the task, the stage where it has one, and its evidence.
func TestVerifyTreeNamespaces(t *testing.T) {
	const clean = "pids 2/2, threads 3/3, stages 3/3 in order, namespaces ok"
	tests := []struct {
		name   string
		break_ func(r *nsRestore) // changes r.exp, the events, or r.events
		// the findings, each as "pid stage: message words" (stage may be
		// empty), in the order Verify gives them
		want    []string
		verdict string // "": the clean one
	}{
		{name: "clean", break_: func(r *nsRestore) {}},
		{name: "no tree expectation", break_: func(r *nsRestore) { r.exp.TreeNS = nil },
			verdict: "pids 2/2, threads 3/3, stages 3/3 in order"},
		// a root that setns()es (a planned setns) takes its later
		// children along: they are in the root's namespaces as it is then
		{name: "root moved before forking", break_: func(r *nsRestore) {
			moved := r.root
			moved.Cgroup = 47
			r.exp.Namespaces = []ExpectNS{{PID: 1, NSType: unix.CLONE_NEWCGROUP, Inode: 47}}
			r.events = append(r.events, &SetnsEvent{Header: Header{Kind: "setns", Time: 85, PID: 100, TID: 100},
				Return: Return{Returned: true, Exit: 86}, FD: 3, NSType: unix.CLONE_NEWCGROUP, Resolved: true, Inode: 47, After: moved})
			r.taskFork.ChildNS, r.thFork.ChildNS = moved, moved
		}},
		{name: "root not in a new namespace", break_: func(r *nsRestore) { r.rootFork.ChildNS.UTS = r.engine.UTS },
			want: []string{"1 : task 1 was born in the engine's uts namespace 11, not in a new one [fork]",
				// its children are in the root's, which the engine joined
				"1 PREPARE_NAMESPACES: the engine joined uts namespace 21 with setns(fd 7, uts|ipc), not the root's 11 [setns fork]",
				"1 PREPARE_NAMESPACES: the engine never joined the root's uts namespace 11 [setns setns fork]",
				"2 : task 2 is not in the root's namespaces: uts 21, the root's 11 [fork fork]",
				"2 : thread 3 of task 2 is not in the root's namespaces: uts 21, the root's 11 [fork fork]"},
			verdict: "namespaces 1/2"},
		{name: "root in a new namespace the plan has not", break_: func(r *nsRestore) {
			r.rootFork.ChildNS.Net, r.taskFork.ChildNS.Net, r.thFork.ChildNS.Net = 45, 45, 45
		}, want: []string{"1 : task 1 was born in a new net namespace 45, not in the engine's 15: the plan has none [fork]"},
			verdict: "namespaces 2/3"},
		// user namespaces: the fork event reads the child's credentials'
		{name: "root in a new user namespace the plan has not", break_: func(r *nsRestore) {
			r.rootFork.ChildNS.User, r.taskFork.ChildNS.User, r.thFork.ChildNS.User = 48, 48, 48
		}, want: []string{"1 : task 1 was born in a new user namespace 48, not in the engine's 18: the plan has none [fork]"},
			verdict: "namespaces 2/3"},
		{name: "root not in a new user namespace", break_: func(r *nsRestore) { r.exp.TreeNS.New |= unix.CLONE_NEWUSER },
			want:    []string{"1 : task 1 was born in the engine's user namespace 18, not in a new one [fork]"},
			verdict: "namespaces 2/3"},
		{name: "task in another user namespace", break_: func(r *nsRestore) { r.taskFork.ChildNS.User = 58 },
			want:    []string{"2 : task 2 is not in the root's namespaces: user 58, the root's 18 [fork fork]"},
			verdict: "namespaces 2/3"},
		{name: "task elsewhere", break_: func(r *nsRestore) { r.taskFork.ChildNS.IPC = r.engine.IPC },
			want:    []string{"2 : task 2 is not in the root's namespaces: ipc 12, the root's 22 [fork fork]"},
			verdict: "namespaces 1/2"},
		{name: "thread elsewhere", break_: func(r *nsRestore) { r.thFork.ChildNS.Time = r.engine.Time },
			want:    []string{"2 : thread 3 of task 2 is not in the root's namespaces: time 16, the root's 26 [fork fork]"},
			verdict: "namespaces 2/3"},
		{name: "decoy joined", break_: func(r *nsRestore) {
			r.join.After.UTS, r.join.After.IPC = r.decoy.UTS, r.decoy.IPC
			r.backUTS.After.IPC = r.decoy.IPC
		}, want: []string{
			"1 PREPARE_NAMESPACES: the engine joined uts namespace 31 with setns(fd 7, uts|ipc), not the root's 21 [setns fork]",
			"1 PREPARE_NAMESPACES: the engine joined ipc namespace 32 with setns(fd 7, uts|ipc), not the root's 22 [setns fork]",
			"1 PREPARE_NAMESPACES: the engine never joined the root's uts namespace 21 [setns setns fork]",
			"1 PREPARE_NAMESPACES: the engine never joined the root's ipc namespace 22 [setns setns fork]"},
			verdict: "namespaces 0/2"},
		{name: "join failed", break_: func(r *nsRestore) {
			r.join.Ret, r.join.After = -int64(unix.EPERM), r.engine
			r.events = slices.DeleteFunc(r.events, func(e Event) bool { return e == r.backUTS || e == r.backIPC })
		}, want: []string{
			"1 PREPARE_NAMESPACES: the engine's setns(fd 7, uts|ipc) failed with -1 [setns fork]",
			"1 PREPARE_NAMESPACES: the engine never joined the root's uts namespace 21 [setns fork]",
			"1 PREPARE_NAMESPACES: the engine never joined the root's ipc namespace 22 [setns fork]"},
			verdict: "namespaces 0/2"},
		{name: "never joined", break_: func(r *nsRestore) {
			r.events = slices.DeleteFunc(r.events, func(e Event) bool { return e == r.join || e == r.backUTS || e == r.backIPC })
		}, want: []string{
			"1 PREPARE_NAMESPACES: the engine never joined the root's uts namespace 21 [fork]",
			"1 PREPARE_NAMESPACES: the engine never joined the root's ipc namespace 22 [fork]"},
			verdict: "namespaces 0/2"},
		{name: "joined late", break_: func(r *nsRestore) { r.forking.Time, r.forking.Exit = 45, 46 },
			want:    []string{"1 FORKING: the engine first joined the root's uts|ipc namespaces during FORKING, not PREPARE_NAMESPACES [setns]"},
			verdict: "namespaces 0/2"},
		{name: "not back", break_: func(r *nsRestore) { r.events = r.without(r.backIPC) },
			want: []string{"1 PREPARE_NAMESPACES: engine thread 51 did not go back to the engine's namespaces after its last setns: " +
				"ipc 22, not its own 12 [setns]"},
			verdict: "namespaces 1/2"},
		// a thread that could not go back ends with its goroutine
		{name: "not back, thread ended", break_: func(r *nsRestore) {
			r.events = append(r.without(r.backIPC), &ExitEvent{Header: Header{Kind: "exit", Time: 75, PID: 50, TID: 51}})
		}},
		// going back into a namespace of its own it had not left
		// changes nothing, and is no finding
		{name: "back where it was", break_: func(r *nsRestore) {
			r.events = append(r.events, &SetnsEvent{Header: Header{Kind: "setns", Time: 72, PID: 50, TID: 51},
				Return: Return{Returned: true, Exit: 73}, FD: 10, NSType: unix.CLONE_NEWNET, Resolved: true, Inode: 15, After: r.engine})
		}},
		// a second join, while in the root's namespaces already
		{name: "other setns", break_: func(r *nsRestore) {
			again := *r.join
			again.Time, again.Exit, again.FD = 55, 56, 10
			r.events = append(r.events, &again)
		}, want: []string{"1 PREPARE_NAMESPACES: the engine called setns(fd 10, uts|ipc), which the plan does not have: " +
			"it joined none of the root's namespaces and left none [setns]"},
			verdict: "namespaces 0/2"},
		// it may visit the root's namespaces again later, and go back
		{name: "visits again", break_: func(r *nsRestore) {
			in := r.engine
			in.IPC = r.root.IPC
			r.events = append(r.events,
				&SetnsEvent{Header: Header{Kind: "setns", Time: 100, PID: 50, TID: 54}, Return: Return{Returned: true, Exit: 101},
					FD: 12, NSType: unix.CLONE_NEWIPC, After: in},
				&SetnsEvent{Header: Header{Kind: "setns", Time: 102, PID: 50, TID: 54}, Return: Return{Returned: true, Exit: 103},
					FD: 13, NSType: unix.CLONE_NEWIPC, Resolved: true, After: r.engine})
		}},
		// a thread that unshared (untraced) shows it at its next setns
		{name: "unshared", break_: func(r *nsRestore) {
			in := r.engine
			in.IPC = 99
			r.events = append(r.events,
				&SetnsEvent{Header: Header{Kind: "setns", Time: 100, PID: 50, TID: 53}, Return: Return{Returned: true, Exit: 101},
					FD: 10, NSType: unix.CLONE_NEWUTS, Resolved: true, After: in},
				&SetnsEvent{Header: Header{Kind: "setns", Time: 102, PID: 50, TID: 53}, Return: Return{Returned: true, Exit: 103},
					FD: 11, NSType: unix.CLONE_NEWIPC, Resolved: true, After: r.engine})
		}, want: []string{"1 FORKING: the engine was in ipc namespace 99 after setns(fd 10, uts), which joins no ipc namespace: " +
			"neither the root's 22 nor its own 12 [setns fork]"},
			verdict: "namespaces 1/2"},
		{name: "joined a type the plan does not", break_: func(r *nsRestore) { r.exp.TreeNS.Joined = unix.CLONE_NEWUTS },
			want: []string{"1 PREPARE_NAMESPACES: the engine joined the root's ipc namespace 22 with setns(fd 7, uts|ipc), " +
				"which the plan does not have it enter [setns fork]"},
			verdict: "namespaces 1/2"},
		// a tree with a user namespace of its own: the root makes its
		// time namespace there and enters it before it forks
		{name: "root makes its time namespace", break_: func(r *nsRestore) { r.madeTime() }},
		// what the expectation of a time namespace the root is born in
		// finds when the root makes it
		{name: "root makes a time namespace the plan has it born in", break_: func(r *nsRestore) {
			r.madeTime()
			r.exp.TreeNS.New, r.exp.TreeNS.Made = r.exp.TreeNS.New|unix.CLONE_NEWTIME, 0
		}, want: []string{"1 : task 1 was born in the engine's time namespace 16, not in a new one [fork]",
			"1 : task 1 called setns(fd 3, time), which the plan does not have [setns]"},
			verdict: "namespaces 2/3"},
		{name: "root makes time, born in a new one", break_: func(r *nsRestore) {
			r.madeTime()
			r.rootFork.ChildNS.Time = 36
		}, want: []string{"1 : task 1 was born in a new time namespace 36, not in the engine's 16: the plan has it make one itself [fork]"},
			verdict: "namespaces 2/3"},
		{name: "root makes time, enters the engine's", break_: func(r *nsRestore) {
			s := r.madeTime()
			s.Inode, s.After.Time = r.engine.Time, r.engine.Time
			r.inEngineTime()
		}, want: []string{"1 : task 1 entered the engine's time namespace 16 with setns(fd 3, time), not one of its own [setns fork]"},
			verdict: "namespaces 2/3"},
		{name: "root makes time, never enters", break_: func(r *nsRestore) {
			r.events = r.without(r.madeTime())
			r.inEngineTime()
		}, want: []string{"1 : task 1 never entered a time namespace of its own: the plan has it make one [fork]"},
			verdict: "namespaces 2/3"},
		{name: "root makes time, setns fails", break_: func(r *nsRestore) {
			s := r.madeTime()
			s.Ret, s.After = -int64(unix.EPERM), r.rootFork.ChildNS
			r.inEngineTime()
		}, want: []string{"1 : task 1's setns(fd 3, time) failed with -1 [setns]"},
			verdict: "namespaces 2/3"},
		{name: "root makes time, setns on a pidfd", break_: func(r *nsRestore) { r.madeTime().FSMagic = 0 },
			want:    []string{"1 : task 1's setns(fd 3, time): the fd was not a namespace file [setns]"},
			verdict: "namespaces 2/3"},
		{name: "root makes time, enters it after forking", break_: func(r *nsRestore) {
			s := r.madeTime()
			s.Time, s.Exit = 92, 93
			r.inEngineTime()
		}, want: []string{"1 : task 1 entered its time namespace 26 after it forked task 2 [setns fork]",
			"2 : thread 3 of task 2 is not in the root's namespaces: time 16, the root's 26 [fork fork]"},
			verdict: "namespaces 2/3"},
		{name: "root makes time, enters twice", break_: func(r *nsRestore) {
			again := *r.madeTime()
			again.Time, again.Exit, again.FD = 46, 47, 4
			r.events = append(r.events, &again)
		}, want: []string{"1 : task 1 called setns(fd 4, time) again, after it entered its time namespace 26 [setns setns]"},
			verdict: "namespaces 2/3"},
		// a tree with a cgroup namespace of its own: the root unshares
		// it (untraced) before it forks; its task and thread show it
		{name: "root unshares its cgroup namespace", break_: func(r *nsRestore) { r.unsharedCgroup() }},
		{name: "root does not unshare", break_: func(r *nsRestore) { r.exp.TreeNS.Unshared = unix.CLONE_NEWCGROUP },
			want: []string{"1 : task 2, the first the root forked, was born in the cgroup namespace 17 the root was born in: " +
				"the root did not make one of its own (unshare) before it forked [fork fork]"},
			verdict: "namespaces 2/3"},
		{name: "task clones a cgroup namespace", break_: func(r *nsRestore) {
			r.unsharedCgroup()
			for _, e := range r.events {
				if c, ok := e.(*Clone3Event); ok && c.Time == 90 {
					c.Flags |= unix.CLONE_NEWCGROUP
				}
			}
		}, want: []string{"1 : task 1 cloned with a new cgroup namespace: the plan has the root alone make one, with unshare [clone3]"},
			verdict: "namespaces 2/3"},
		{name: "thread in the root's born cgroup namespace", break_: func(r *nsRestore) {
			r.unsharedCgroup()
			r.thFork.ChildNS.Cgroup = r.engine.Cgroup
		}, want: []string{"2 : thread 3 of task 2 is not in the root's namespaces: cgroup 17, the root's 47 [fork fork]"},
			verdict: "namespaces 2/3"},
		{name: "setns did not return", break_: func(r *nsRestore) {
			r.backIPC.Return = Return{}
		}, want: []string{
			"1 PREPARE_NAMESPACES: the engine's setns(fd 9, ipc) did not return [setns]",
			"1 PREPARE_NAMESPACES: engine thread 51 did not go back to the engine's namespaces after its last setns: ipc 22, not its own 12 [setns]"},
			verdict: "namespaces 1/2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newNSRestore()
			tt.break_(r)
			rep := Verify(r.exp, r.events)
			var got []string
			for _, f := range rep.Findings {
				var kinds []string
				for _, e := range f.Evidence {
					kinds = append(kinds, e.Head().Kind)
				}
				if f.Check != "namespace" {
					t.Errorf("finding %s, want only namespace ones", f)
					continue
				}
				got = append(got, fmt.Sprintf("%d %s: %s [%s]", f.PID, f.Stage, f.Message, strings.Join(kinds, " ")))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			verdict := tt.verdict
			if verdict == "" {
				verdict = clean
			}
			if rep.OK != (len(tt.want) == 0) || !strings.Contains(rep.Verdict, verdict) {
				t.Errorf("ok %v, verdict %q, want %q", rep.OK, rep.Verdict, verdict)
			}
		})
	}
}
