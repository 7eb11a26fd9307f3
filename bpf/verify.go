package bpf

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Expect is what a restore should look like from the kernel: the plan's
// tasks and threads, its stages and who arrives at each, where the stage
// futexes are, which namespaces tasks join, and the namespaces the tree is
// born in and the engine visits. bpf does not import restore; the caller
// translates its plan.
type Expect struct {
	Tasks      []ExpectTask  `json:"tasks"`
	Stages     []ExpectStage `json:"stages"` // in the order they are switched to
	Barrier    Barrier       `json:"barrier"`
	Namespaces []ExpectNS    `json:"namespaces,omitempty"`
	// TreeNS, when set, is what the plan means for the root's namespaces
	// and the engine's setns calls. Without it only the tasks' setns
	// calls are checked, and that every task and thread is in the
	// root's namespaces.
	TreeNS *ExpectTreeNS `json:"tree_ns,omitempty"`
}

// ExpectTask is one task of the plan. Pids are the image's: the numbers
// at pid-namespace level NSLevel (the restored namespace's level as the
// monitor's namespace sees it).
type ExpectTask struct {
	PID       int   `json:"pid"`
	ParentPID int   `json:"parent_pid"` // 0: the root, forked from outside the namespace
	Threads   []int `json:"threads"`    // every thread's tid, the leader's included
	NSLevel   int   `json:"ns_level"`
}

// ExpectStage is one stage of the barrier: its number (CRIU's), its name,
// how many arrivals close it and, when known, which threads (image tids)
// arrive. Without TIDs only the count is checked.
type ExpectStage struct {
	Stage        int    `json:"stage"`
	Name         string `json:"name"`
	Participants int    `json:"participants"`
	TIDs         []int  `json:"tids,omitempty"`
}

// Barrier gives the addresses of the two futex words of task_entries as
// each process maps them (the engine's mapping and the tasks' may
// differ).
//
// The monitor orders a decrement or a stage store exactly when it happens
// inside the futex call: FUTEX_WAKE_OP(nr_in_progress, ADD -1) for an
// arrival and FUTEX_WAKE_OP(start, SET stage) for a switch. With CRIU's
// plain FUTEX_WAKE after an atomic operation the store happened at some
// point before the call, so the checks only flag what is certain.
type Barrier struct {
	Start      []uint64 `json:"start"`       // task_entries.start
	InProgress []uint64 `json:"in_progress"` // task_entries.nr_in_progress
}

// ExpectNS is a namespace a task must join with setns.
type ExpectNS struct {
	PID    int    `json:"pid"`
	NSType int    `json:"nstype"` // CLONE_NEW*
	Inode  uint64 `json:"inode"`
}

// ExpectTreeNS is what the plan means for the namespaces the tree is born
// in. The root is born in new namespaces of the types New, and in the
// engine's of every other type; every other task and thread is in the
// root's. The engine joins the root's namespaces of the types Joined (with
// setns on the root's pidfd, first during stage Stage, to fill them
// before any task is forked into them; later visits are allowed) and goes
// back to its own (setns on nsfs files of them) each time; it calls setns
// for nothing else. Of the types Made the root is born in the engine's
// namespace and makes a new one itself (unshare, which the monitor does
// not see), entering it with one setns of its own on an nsfs file of it
// before it forks any task: a time namespace its own user namespace must
// own. Types are CLONE_NEW* flags (NSTypes); a type whose inode is 0 in
// Engine is not checked.
type ExpectTreeNS struct {
	EnginePID int        `json:"engine_pid"` // the engine's process, as Track was given it
	Engine    Namespaces `json:"engine"`     // the engine's own namespaces
	New       int        `json:"new"`
	Joined    int        `json:"joined"`
	Stage     int        `json:"stage"`
	Made      int        `json:"made,omitempty"`
	// Unshared are the types of which the root, born in the engine's
	// namespace, makes a new one with unshare(2) and is in it at once,
	// before it forks any task or thread (a cgroup namespace, unshared
	// in the namespace's root cgroups: restore/cgroupns.go). The monitor
	// does not trace unshare: the root's namespace of such a type shows
	// only in the tasks and threads it forks, which must be born in one
	// other than the one the root was born in, and no task may clone
	// one (CLONE_NEW* in its clone flags).
	Unshared int `json:"unshared,omitempty"`
}

// Finding is one thing the kernel saw that the plan did not mean, with the
// events that show it.
type Finding struct {
	Check    string  `json:"check"` // pid, thread, stage, namespace, monitor
	PID      int     `json:"pid,omitempty"`
	TID      int     `json:"tid,omitempty"`
	Stage    string  `json:"stage,omitempty"`
	Message  string  `json:"message"`
	Evidence []Event `json:"evidence"`
}

func (f Finding) String() string { return f.Check + ": " + f.Message }

// Count is how many of what was expected were seen right.
type Count struct {
	OK   int `json:"ok"`
	Want int `json:"want"`
}

func (c Count) String() string { return fmt.Sprintf("%d/%d", c.OK, c.Want) }

// Report is the verdict on one restore.
type Report struct {
	OK            bool      `json:"ok"`
	Verdict       string    `json:"verdict"`
	PIDs          Count     `json:"pids"`
	Threads       Count     `json:"threads"`
	Stages        Count     `json:"stages"`
	StagesInOrder bool      `json:"stages_in_order"`
	Namespaces    Count     `json:"namespaces"`
	Failed        string    `json:"failed,omitempty"` // the stage a FAIL switch ended
	Dropped       uint64    `json:"dropped"`
	Findings      []Finding `json:"findings"`
}

// Verify checks a monitor's events (Events, after the restore reached
// COMPLETE or FAIL) against exp.
func Verify(exp Expect, events []Event) Report {
	v := &verifier{exp: exp, who: map[int]ident{}}
	events = slices.Clone(events)
	slices.SortStableFunc(events, func(a, b Event) int { return cmp.Compare(a.Head().Time, b.Head().Time) })
	v.events = events
	v.pids()
	v.stages()
	v.namespaces()
	// Causes before consequences: a task that does not exist explains its
	// missing arrivals.
	slices.SortStableFunc(v.r.Findings, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(checkOrder[a.Check], checkOrder[b.Check]), cmp.Compare(firstTime(a), firstTime(b)))
	})
	v.r.OK = len(v.r.Findings) == 0
	v.r.Verdict = v.verdict()
	return v.r
}

// Verify syncs and checks the events seen so far; drops make a finding,
// since a verdict on a partial log proves nothing. A task deeper in pid
// namespaces than the fork events record (levels 0 to 7) gets no verdict:
// its pids could not be told apart from wrong ones.
func (m *Monitor) Verify(exp Expect) (Report, error) {
	for _, t := range exp.Tasks {
		if t.NSLevel >= maxLevels {
			return Report{}, fmt.Errorf("bpf: task %d is at pid-namespace level %d: the monitor records a task's pids at levels 0 to %d only",
				t.PID, t.NSLevel, maxLevels-1)
		}
	}
	if err := m.Sync(); err != nil {
		return Report{}, err
	}
	r := Verify(exp, m.Events())
	if r.Dropped = m.Dropped(); r.Dropped > 0 {
		r.Findings = append(r.Findings, Finding{Check: "monitor",
			Message: fmt.Sprintf("%d events dropped (ring buffer full): the log is incomplete", r.Dropped)})
		r.OK = false
		r.Verdict += fmt.Sprintf(", %d events dropped", r.Dropped)
	}
	return r, nil
}

var checkOrder = map[string]int{"monitor": 0, "pid": 1, "thread": 2, "namespace": 3, "stage": 4}

func firstTime(f Finding) uint64 {
	if len(f.Evidence) == 0 {
		return ^uint64(0)
	}
	return f.Evidence[0].Head().Time
}

// ident is who a global tid is in the restored namespace.
type ident struct {
	PID, TID int        // at the restored namespace's level
	Expected bool       // a task or thread of the plan
	Fork     *ForkEvent // its creation
}

type verifier struct {
	exp     Expect
	events  []Event
	r       Report
	who     map[int]ident // by global tid
	global  map[int]int   // image pid -> global tgid, for the tasks found
	created map[int]bool  // image tids of the plan that were forked
	level   int           // the restored namespace's level
	failAt  uint64        // time of a switch to FAIL, 0 if none
	// switches are the engine's stage switches, in order (stages)
	switches []switchEv
}

func (v *verifier) find(check string, pid, tid int, stage, format string, args ...any) *Finding {
	v.r.Findings = append(v.r.Findings, Finding{Check: check, PID: pid, TID: tid, Stage: stage,
		Message: fmt.Sprintf(format, args...)})
	return &v.r.Findings[len(v.r.Findings)-1]
}

func (f *Finding) with(evs ...Event) *Finding {
	for _, e := range evs {
		if e != nil && !isNil(e) {
			f.Evidence = append(f.Evidence, e)
		}
	}
	return f
}

func isNil(e Event) bool {
	switch e := e.(type) {
	case *ForkEvent:
		return e == nil
	case *FutexEvent:
		return e == nil
	case *Clone3Event:
		return e == nil
	case *CloneEvent:
		return e == nil
	case *SetnsEvent:
		return e == nil
	case *ExitEvent:
		return e == nil
	}
	return false
}

// pids checks that every task and thread was forked with its image pid at
// the right level by the right parent, through clone3 with set_tid, and
// that nothing else was forked into the namespace.
func (v *verifier) pids() {
	var forks []*ForkEvent
	for _, e := range v.events {
		if f, ok := e.(*ForkEvent); ok {
			forks = append(forks, f)
		}
	}
	v.global = map[int]int{}
	v.created = map[int]bool{}
	v.level = -1
	for _, t := range v.exp.Tasks {
		if v.level < 0 || t.NSLevel < v.level {
			v.level = t.NSLevel
		}
	}
	at := func(nrs []int, level int) int {
		if level < len(nrs) && level >= 0 {
			return nrs[level]
		}
		return 0
	}
	// Everyone forked into (or below) the restored namespace, by the
	// numbers at its level.
	for _, f := range forks {
		if v.level >= 0 && len(f.ChildTIDs) > v.level {
			v.who[f.ChildTID] = ident{PID: at(f.ChildPIDs, v.level), TID: at(f.ChildTIDs, v.level), Fork: f}
		}
	}
	used := map[*ForkEvent]bool{}
	rootParentLevel := -1
	for _, t := range v.exp.Tasks {
		threads := t.Threads
		if !slices.Contains(threads, t.PID) {
			threads = append([]int{t.PID}, threads...)
		}
		v.r.PIDs.Want++
		v.r.Threads.Want += len(threads)
		var fork *ForkEvent
		for _, f := range forks {
			if !f.Thread() && at(f.ChildPIDs, t.NSLevel) == t.PID && at(f.ChildTIDs, t.NSLevel) == t.PID {
				fork = f
				break
			}
		}
		if fork == nil {
			fd := v.find("pid", t.PID, 0, "", "task %d (parent %d) was not created: no fork gave pid %d at pid-namespace level %d",
				t.PID, t.ParentPID, t.PID, t.NSLevel)
			if gp, ok := v.global[t.ParentPID]; ok {
				fd.with(v.clonesBy(gp)...)
			}
			continue
		}
		used[fork] = true
		v.global[t.PID] = fork.ChildPID
		v.created[t.PID] = true
		ok := v.checkFork(t, t.PID, fork)
		if t.ParentPID == 0 {
			rootParentLevel = len(fork.ParentTIDs) - 1
		}
		if ok {
			v.r.PIDs.OK++
			v.r.Threads.OK++
		}
		id := v.who[fork.ChildTID]
		id.Expected = true
		v.who[fork.ChildTID] = id
		for _, tid := range threads {
			if tid == t.PID {
				continue
			}
			var tf *ForkEvent
			for _, f := range forks {
				if f.Thread() && f.ChildPID == fork.ChildPID && at(f.ChildTIDs, t.NSLevel) == tid {
					tf = f
					break
				}
			}
			if tf == nil {
				v.find("thread", t.PID, tid, "", "thread %d of task %d was not created: no clone gave tid %d in process %d",
					tid, t.PID, tid, t.PID).with(append(v.clonesBy(fork.ChildPID), fork)...)
				continue
			}
			used[tf] = true
			v.created[tid] = true
			id := v.who[tf.ChildTID]
			id.Expected = true
			v.who[tf.ChildTID] = id
			if v.checkFork(t, tid, tf) {
				v.r.Threads.OK++
			}
		}
	}
	// Anything else forked by a task of the restore, or into the new
	// namespace, was not in the plan.
	restored := map[int]bool{}
	for _, g := range v.global {
		restored[g] = true
	}
	for _, f := range forks {
		if used[f] || len(f.ChildTIDs) <= v.level || v.level < 0 {
			continue
		}
		if !restored[f.PID] && !(rootParentLevel >= 0 && v.level > rootParentLevel) {
			continue
		}
		what := "process"
		if f.Thread() {
			what = "thread"
		}
		pid, tid := at(f.ChildPIDs, v.level), at(f.ChildTIDs, v.level)
		fd := v.find("pid", pid, tid, "", "unexpected %s pid %d tid %d in the restored namespace, forked by pid %d",
			what, pid, tid, at(f.ParentPIDs, v.level))
		fd.with(v.creatingClone(f), f)
	}
}

// checkFork checks the level, the parent and the creating clone3 of task
// t's thread tid (tid == t.PID for the task itself).
func (v *verifier) checkFork(t ExpectTask, tid int, f *ForkEvent) bool {
	ok := true
	what := fmt.Sprintf("task %d", t.PID)
	if tid != t.PID {
		what = fmt.Sprintf("thread %d of task %d", tid, t.PID)
	}
	check := "pid"
	if tid != t.PID {
		check = "thread"
	}
	if f.ChildLevel() != t.NSLevel {
		v.find(check, t.PID, tid, "", "%s is at pid-namespace level %d, want %d", what, f.ChildLevel(), t.NSLevel).with(f)
		ok = false
	}
	if tid == t.PID {
		// The real parent, as pstree.img means it (with CLONE_PARENT
		// it is not the forker).
		parentLevel := len(f.RealParentPIDs) - 1
		switch {
		case t.ParentPID == 0 && parentLevel >= t.NSLevel:
			v.find(check, t.PID, 0, "", "%s should start the namespace, but its parent is pid %d inside it",
				what, f.RealParentPIDs[t.NSLevel]).with(f)
			ok = false
		case t.ParentPID != 0 && (parentLevel < t.NSLevel || f.RealParentPIDs[t.NSLevel] != t.ParentPID):
			got := 0
			if parentLevel >= t.NSLevel {
				got = f.RealParentPIDs[t.NSLevel]
			}
			v.find(check, t.PID, 0, "", "%s has parent %d, want %d", what, got, t.ParentPID).with(f)
			ok = false
		}
	}
	c := v.creatingClone(f)
	switch c := c.(type) {
	case nil:
		v.find(check, t.PID, tid, "", "%s: the clone that created it was not seen", what).with(f)
		ok = false
	case *CloneEvent:
		v.find(check, t.PID, tid, "", "%s was created by clone(2), not clone3 with set_tid", what).with(c, f)
		ok = false
	case *Clone3Event:
		switch {
		case len(c.SetTID) == 0:
			v.find(check, t.PID, tid, "", "%s was created by clone3 without set_tid", what).with(c, f)
			ok = false
		case int(c.SetTID[0]) != tid:
			v.find(check, t.PID, tid, "", "%s was created by clone3 with set_tid %v, want [%d]", what, c.SetTID, tid).with(c, f)
			ok = false
		}
	}
	return ok
}

// creatingClone returns the clone or clone3 whose return was f's child,
// as the forking thread's namespace numbers it.
func (v *verifier) creatingClone(f *ForkEvent) Event {
	level := len(f.ParentTIDs) - 1
	if level < 0 || level >= len(f.ChildTIDs) {
		return nil
	}
	want := int64(f.ChildTIDs[level])
	var found Event
	for _, e := range v.events {
		if e.Head().TID != f.TID {
			continue
		}
		switch c := e.(type) {
		case *Clone3Event:
			if c.Returned && c.Ret == want {
				found = c
			}
		case *CloneEvent:
			if c.Returned && c.Ret == want {
				found = c
			}
		}
	}
	return found
}

// clonesBy returns the clone and clone3 calls of process pid (global).
func (v *verifier) clonesBy(pid int) []Event {
	var out []Event
	for _, e := range v.events {
		switch e.(type) {
		case *Clone3Event, *CloneEvent:
			if e.Head().PID == pid {
				out = append(out, e)
			}
		}
	}
	return out
}

// FUTEX_WAKE_OP's encoded operation (futex(2)): op<<28 | cmp<<24 |
// oparg<<12 | cmparg.
func wakeOp(val3 uint32) (op int, oparg int32) {
	op = int(val3>>28) & 7
	oparg = int32(val3>>12&0xfff) << 20 >> 20
	return op, oparg
}

const (
	futexOpSet = 0
	futexOpAdd = 1
)

// arrival is a thread counting itself out of a stage; the decrement
// happened within [lo, hi].
type arrival struct {
	tid    int // global
	stage  int
	lo, hi uint64
	ev     *FutexEvent
}

// switchEv is the engine opening a stage; the store of start happened
// within [lo, hi], and at is the call's entry.
type switchEv struct {
	stage  int
	at     uint64
	lo, hi uint64
	ev     *FutexEvent
	plain  bool // FUTEX_WAKE after a store, not FUTEX_WAKE_OP
}

func (v *verifier) stageName(st int) string {
	if st == -1 {
		return "FAIL"
	}
	for _, s := range v.exp.Stages {
		if s.Stage == st && s.Name != "" {
			return s.Name
		}
	}
	return fmt.Sprintf("stage %d", st)
}

func (v *verifier) describe(gtid int) (string, int, int) {
	id, ok := v.who[gtid]
	switch {
	case !ok:
		return fmt.Sprintf("global tid %d", gtid), 0, 0
	case id.PID == id.TID:
		return fmt.Sprintf("task %d", id.PID), id.PID, id.TID
	}
	return fmt.Sprintf("thread %d of task %d", id.TID, id.PID), id.PID, id.TID
}

// stages checks the barrier: every participant counted out of a stage
// before the switch to the next, nobody went on before it, each switch
// happened once and in order, and the counts match.
func (v *verifier) stages() {
	isStart := func(a uint64) bool { return slices.Contains(v.exp.Barrier.Start, a) }
	isInProg := func(a uint64) bool { return slices.Contains(v.exp.Barrier.InProgress, a) }

	stagesOf := map[int][]int{} // image tid -> its stages, in order
	for _, s := range v.exp.Stages {
		for _, tid := range s.TIDs {
			stagesOf[tid] = append(stagesOf[tid], s.Stage)
		}
	}
	nextOf := func(tid int, after int, started bool) (int, bool) {
		for _, st := range stagesOf[tid] {
			if !started || v.stageIndex(st) > v.stageIndex(after) {
				return st, true
			}
		}
		return 0, false
	}

	var switches []switchEv
	var arrivals []arrival
	var engineWaits []*FutexEvent // waits on nr_in_progress
	type waitEv struct {
		stage int
		ev    *FutexEvent
	}
	waits := map[int][]waitEv{}    // by global tid
	last := map[int]int{}          // global tid -> its last stage
	started := map[int]bool{}      // global tid has a last stage
	prevExit := map[int]uint64{}   // global tid -> its last event's end
	strangers := map[int][]Event{} // futex calls of threads not in the plan
	lastArrival := map[int]int{}   // global tid -> index in arrivals of its latest count-out
	for _, e := range v.events {
		h := e.Head()
		prev := prevExit[h.TID]
		if f, ok := e.(*ForkEvent); ok && prevExit[f.ChildTID] == 0 {
			prevExit[f.ChildTID] = f.Time
		}
		end := h.Time
		if r, ok := e.(syscallEvent); ok && r.ret().Returned {
			end = r.ret().Exit
		}
		prevExit[h.TID] = end
		f, ok := e.(*FutexEvent)
		if !ok {
			continue
		}
		hi := f.Exit
		if !f.Returned {
			hi = ^uint64(0)
		}
		cmd := f.Cmd()
		op, oparg := wakeOp(f.Val3)
		switch {
		case cmd == FutexWakeOp && isStart(f.Addr2) && op == futexOpSet:
			switches = append(switches, switchEv{stage: int(oparg), at: f.Time, lo: f.Time, hi: hi, ev: f})
			continue
		case cmd == FutexWake && isStart(f.Addr) && f.WordOK:
			// lo is set below: the engine's goroutine may have stored
			// start on another thread than the one that wakes.
			switches = append(switches, switchEv{stage: int(int32(f.Word)), at: f.Time, hi: f.Time, ev: f, plain: true})
			continue
		}
		id, known := v.who[f.TID]
		var a *arrival
		switch {
		case cmd == FutexWakeOp && isInProg(f.Addr2) && op == futexOpAdd && oparg == -1:
			a = &arrival{tid: f.TID, lo: f.Time, hi: hi, ev: f}
		case cmd == FutexWake && isInProg(f.Addr) && known:
			a = &arrival{tid: f.TID, lo: prev, hi: f.Time, ev: f}
		case cmd == FutexWait && isInProg(f.Addr):
			engineWaits = append(engineWaits, f)
			continue
		case cmd == FutexWait && isStart(f.Addr):
			st := int(int32(f.Val))
			// After counting out of a stage a thread waits while start
			// still holds that stage, never a later one: a wait on a
			// later stage shows that its count-out was out of that
			// stage, and that it skipped the ones between.
			if i, ok := lastArrival[f.TID]; ok && v.stageIndex(st) > v.stageIndex(arrivals[i].stage) {
				arrivals[i].stage = st
				last[f.TID] = st
			}
			if !started[f.TID] || last[f.TID] != st {
				// CRIU's non-last participants only wait: the wait
				// shows the arrival.
				arrivals = append(arrivals, arrival{tid: f.TID, stage: st, lo: prev, hi: f.Time, ev: f})
				last[f.TID], started[f.TID] = st, true
			}
			waits[f.TID] = append(waits[f.TID], waitEv{st, f})
			continue
		default:
			continue
		}
		if !known || !id.Expected {
			strangers[f.TID] = append(strangers[f.TID], f)
			continue
		}
		st, ok := nextOf(id.TID, last[f.TID], started[f.TID])
		if !ok {
			// No plan for who arrives where: the stage open now.
			st = v.openStage(switches, a.lo)
		}
		a.stage = st
		last[f.TID], started[f.TID] = st, true
		lastArrival[f.TID] = len(arrivals)
		arrivals = append(arrivals, *a)
	}

	// A count-out that woke the engine's wait on nr_in_progress made its
	// decrement before that wait returned, whatever its own exit says: a
	// thread preempted between its decrement and its exit may come back
	// after the engine, woken, already switched. Of the engine's waits
	// that overlap the count-out and were woken (ret 0), the first to
	// return bounds it. The bound stays above the count-out's entry, so
	// an arrival after its stage opened can not look early by it.
	for i := range arrivals {
		a := &arrivals[i]
		if a.ev.Cmd() != FutexWakeOp || !a.ev.Returned || a.ev.Ret <= 0 {
			continue
		}
		for _, w := range engineWaits {
			if w.Returned && w.Ret == 0 && w.Time < a.hi && w.Exit > a.lo && w.Exit < a.hi {
				a.hi = w.Exit
			}
		}
	}

	// A plain store of start came after the last decrement of the stage
	// before (that is what the engine waits for): the surest lower bound.
	for i := range switches {
		sw := &switches[i]
		if !sw.plain {
			continue
		}
		k := v.stageIndex(sw.stage)
		if k <= 0 {
			continue
		}
		prevStage := v.exp.Stages[k-1].Stage
		for _, a := range arrivals {
			if a.stage == prevStage && a.lo > sw.lo && a.lo <= sw.at {
				sw.lo = a.lo
			}
		}
	}

	v.switches = switches

	for gtid, evs := range strangers {
		name, pid, tid := v.describe(gtid)
		v.find("stage", pid, tid, "", "%s counted itself out of the barrier %d times but is not in the plan", name, len(evs)).with(evs[0])
	}

	// Switches: once each, in order; a FAIL ends the checks.
	for _, s := range switches {
		if s.stage == -1 {
			v.failAt = s.at
			v.r.Failed = v.stageName(v.openStage(switches, s.at-1))
			break
		}
	}
	byStage := map[int][]switchEv{}
	for _, s := range switches {
		byStage[s.stage] = append(byStage[s.stage], s)
	}
	v.r.StagesInOrder = true
	var prevSw *switchEv
	for i, s := range v.exp.Stages {
		sws := byStage[s.Stage]
		if len(sws) == 0 {
			if v.failAt == 0 {
				v.find("stage", 0, 0, s.Name, "the engine never switched to %s", s.Name)
				v.r.StagesInOrder = false
			}
			continue
		}
		if len(sws) > 1 {
			fd := v.find("stage", 0, 0, s.Name, "the engine switched to %s %d times", s.Name, len(sws))
			for _, sw := range sws {
				fd.with(sw.ev)
			}
		}
		if prevSw != nil && sws[0].at < prevSw.at {
			v.find("stage", 0, 0, s.Name, "the switch to %s came before the switch to %s", s.Name, v.exp.Stages[i-1].Name).
				with(sws[0].ev, prevSw.ev)
			v.r.StagesInOrder = false
		}
		sw := sws[0]
		prevSw = &sw
	}

	for i, s := range v.exp.Stages {
		v.r.Stages.Want++
		before := len(v.r.Findings)
		sws := byStage[s.Stage]
		var open, next *switchEv
		if len(sws) > 0 {
			open = &sws[0]
		}
		if i+1 < len(v.exp.Stages) {
			if n := byStage[v.exp.Stages[i+1].Stage]; len(n) > 0 {
				next = &n[0]
			}
		}
		failedHere := v.failAt != 0 && (open == nil || open.at < v.failAt) && (next == nil || next.at > v.failAt)
		seen := map[int]bool{} // image tids arrived
		count := 0
		for _, a := range arrivals {
			if a.stage != s.Stage {
				continue
			}
			name, pid, tid := v.describe(a.tid)
			if id := v.who[a.tid]; id.Expected {
				if seen[id.TID] {
					v.find("stage", pid, tid, s.Name, "%s arrived at %s twice", name, s.Name).with(a.ev)
				}
				seen[id.TID] = true
			}
			count++
			if open != nil && a.hi < open.lo {
				prevName := "the previous stage"
				if i > 0 {
					prevName = v.exp.Stages[i-1].Name
				}
				v.find("stage", pid, tid, prevName, "%s left %s without waiting: it counted out of %s before the switch to %s",
					name, prevName, s.Name, s.Name).with(a.ev, open.ev)
			}
			if next != nil && a.lo > next.at {
				v.find("stage", pid, tid, s.Name, "%s arrived at %s after the switch to %s: the engine switched before all had arrived",
					name, s.Name, v.exp.Stages[i+1].Name).with(next.ev, a.ev)
			}
		}
		if !failedHere && !(v.failAt != 0 && open != nil && open.at > v.failAt) && open != nil {
			// Who was not created is a pid finding already; the
			// stage still closed short.
			for _, tid := range s.TIDs {
				if !seen[tid] && v.created[tid] {
					pid := v.pidOf(tid)
					v.find("stage", pid, tid, s.Name, "%s never arrived at %s", describeImage(pid, tid), s.Name).with(open.ev)
				}
			}
			planned := count
			if len(s.TIDs) > 0 {
				planned = len(seen)
			}
			switch {
			case planned >= s.Participants:
			case next != nil:
				v.find("stage", 0, 0, s.Name, "the engine switched to %s after %d of %d arrivals at %s",
					v.exp.Stages[i+1].Name, planned, s.Participants, s.Name).with(open.ev, next.ev)
			case len(s.TIDs) == 0:
				v.find("stage", 0, 0, s.Name, "%d arrivals at %s, want %d", count, s.Name, s.Participants).with(open.ev)
			}
		}
		if open != nil && len(v.r.Findings) == before {
			v.r.Stages.OK++
		}
	}

	// A wait that returned while start still held its stage, after which
	// the thread went on instead of waiting again. A wait the tracer broke
	// off (the engine's interrupt before COMPLETE, finish.go) did not
	// return to the thread: the kernel would restart it, and the tracer
	// lets the thread go on only once it switched; what counts then is
	// that the thread's next call came after the switch out of the stage.
	for gtid, ws := range waits {
		for i, w := range ws {
			if !w.ev.Returned || !w.ev.WordAtExitOK || int32(w.ev.WordAtExit) != int32(w.stage) {
				continue
			}
			if i+1 < len(ws) && ws[i+1].stage == w.stage {
				continue
			}
			next := v.nextCall(gtid, w.ev)
			if next == nil {
				continue
			}
			if restarted(w.ev.Ret) && v.switchedBefore(switches, w.stage, next.Head().Time) {
				continue
			}
			name, pid, tid := v.describe(gtid)
			v.find("stage", pid, tid, v.stageName(w.stage), "%s returned from its wait at %s (ret %d) while start was still %s, and went on",
				name, v.stageName(w.stage), w.ev.Ret, v.stageName(w.stage)).with(w.ev)
		}
	}
}

// nextCall returns the traced call thread gtid made after w, nil if it
// made none (or exited).
func (v *verifier) nextCall(gtid int, w *FutexEvent) Event {
	for _, e := range v.events {
		if e.Head().TID == gtid && e.Head().Time > w.Exit {
			if _, ok := e.(*ExitEvent); ok {
				return nil
			}
			return e
		}
	}
	return nil
}

// restarted reports whether ret is one of the kernel's restart codes: the
// call was interrupted and returns to the thread only once restarted
// (or as the tracer decides).
func restarted(ret int64) bool {
	switch ret {
	case -512, -513, -514, -516: // ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK
		return true
	}
	return false
}

// switchedBefore reports whether the engine switched out of stage st
// before the time t.
func (v *verifier) switchedBefore(switches []switchEv, st int, t uint64) bool {
	for _, sw := range switches {
		if v.stageIndex(sw.stage) > v.stageIndex(st) && sw.at < t {
			return true
		}
	}
	return false
}

func (v *verifier) stageIndex(st int) int {
	for i, s := range v.exp.Stages {
		if s.Stage == st {
			return i
		}
	}
	return -1
}

// openStage is the stage the last switch before t opened.
func (v *verifier) openStage(switches []switchEv, t uint64) int {
	st := -2
	for _, s := range switches {
		if s.at <= t {
			st = s.stage
		}
	}
	return st
}

func (v *verifier) pidOf(tid int) int {
	for _, t := range v.exp.Tasks {
		if t.PID == tid || slices.Contains(t.Threads, tid) {
			return t.PID
		}
	}
	return 0
}

func describeImage(pid, tid int) string {
	if pid == tid || tid == 0 {
		return fmt.Sprintf("task %d", pid)
	}
	return fmt.Sprintf("thread %d of task %d", tid, pid)
}

// Namespace types (CLONE_NEW*), for messages.
var nsNames = map[int]string{
	0x00020000: "mnt", 0x02000000: "cgroup", 0x04000000: "uts", 0x08000000: "ipc",
	0x10000000: "user", 0x20000000: "pid", 0x40000000: "net", 0x00000080: "time",
}

func nsName(t int) string {
	if n, ok := nsNames[t]; ok {
		return n
	}
	return fmt.Sprintf("nstype %#x", t)
}

// namespaces checks the namespaces: what restored tasks joined with setns
// (plannedSetns), and the namespaces the tree is born in and the engine's
// visit to them (treeNamespaces).
func (v *verifier) namespaces() {
	v.plannedSetns()
	v.treeNamespaces()
}

// plannedSetns checks that every setns of a restored task joined the
// namespace the plan meant, and that the plan's happened.
func (v *verifier) plannedSetns() {
	type key struct{ pid, nstype int }
	want := map[key]ExpectNS{}
	for _, n := range v.exp.Namespaces {
		want[key{n.PID, n.NSType}] = n
		v.r.Namespaces.Want++
	}
	done := map[key]bool{}
	bad := map[key]bool{}
	_, rootFork := v.rootFork()
	for _, e := range v.events {
		s, ok := e.(*SetnsEvent)
		if !ok {
			continue
		}
		id, known := v.who[s.TID]
		if !known || !id.Expected {
			continue
		}
		if rootEntersMade(v.exp.TreeNS, rootFork, s) {
			continue // treeNamespaces' (rootMade)
		}
		name, pid, tid := v.describe(s.TID)
		k := key{id.PID, s.NSType}
		n, planned := want[k]
		switch {
		case !planned:
			v.find("namespace", pid, tid, "", "%s called setns(fd %d, %s), which the plan does not have", name, s.FD, nsName(s.NSType)).with(s)
			continue
		case s.Returned && s.Ret < 0:
			v.find("namespace", pid, tid, "", "%s: setns(fd %d, %s) failed with %d", name, s.FD, nsName(s.NSType), s.Ret).with(s)
			bad[k] = true
		case !s.Resolved:
			v.find("namespace", pid, tid, "", "%s: setns(fd %d, %s): the fd was not an open file", name, s.FD, nsName(s.NSType)).with(s)
			bad[k] = true
		case s.Inode != n.Inode:
			v.find("namespace", pid, tid, "", "%s joined %s namespace %d, want %d", name, nsName(s.NSType), s.Inode, n.Inode).with(s)
			bad[k] = true
		}
		done[k] = true
	}
	for _, n := range v.exp.Namespaces {
		k := key{n.PID, n.NSType}
		switch {
		case !done[k]:
			if v.failAt == 0 {
				v.find("namespace", n.PID, 0, "", "task %d never joined %s namespace %d", n.PID, nsName(n.NSType), n.Inode)
			}
		case !bad[k]:
			v.r.Namespaces.OK++
		}
	}
}

// nsList names the namespace types of flags (CLONE_NEW*), "none" for 0.
func nsList(flags int) string {
	var names []string
	for _, t := range []int{0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080} {
		if flags&t != 0 {
			names = append(names, nsName(t))
			flags &^= t
		}
	}
	if flags != 0 {
		names = append(names, fmt.Sprintf("%#x", flags))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "|")
}

// with returns n with the inodes o knows in place of its own.
func (n Namespaces) with(o Namespaces) Namespaces {
	for _, t := range NSTypes {
		if ino := o.Get(t); ino != 0 {
			n.Set(t, ino)
		}
	}
	return n
}

// rootFork returns the plan's root task and the fork that created it, nil
// if it was not created (a pid finding).
func (v *verifier) rootFork() (ExpectTask, *ForkEvent) {
	for _, t := range v.exp.Tasks {
		if t.ParentPID != 0 {
			continue
		}
		if g, ok := v.global[t.PID]; ok {
			return t, v.who[g].Fork
		}
		return t, nil
	}
	return ExpectTask{}, nil
}

// treeNamespaces checks, from the kernel's fork and setns events, the
// namespaces the tree is born in and the engine's visit to them: the root
// in new namespaces of the types the plan makes, in the engine's of the
// others; every other task and thread in the root's (as they were when it
// was forked: a planned setns of the root moves them); and the engine's
// setns calls, each of which either joins the root's namespaces of the
// types it fills (first in the plan's stage, maybe again later) or goes
// back to the engine's own, and leaves it in its own namespaces at the
// end.
//
// Namespaces counts one item for each type the engine must enter, and
// one for each other type found wrong (a restore without namespaces to
// fill shows none unless something is wrong).
func (v *verifier) treeNamespaces() {
	tree := v.exp.TreeNS
	items := map[int]bool{} // CLONE_NEW* type (0: none in particular) -> no finding
	if tree != nil {
		for _, t := range NSTypes {
			if (tree.Joined|tree.Made)&t != 0 {
				items[t] = true
			}
		}
	}
	bad := func(types int) {
		n := 0
		for _, t := range NSTypes {
			if types&t != 0 {
				items[t] = false
				n++
			}
		}
		if n == 0 {
			items[0] = false
		}
	}
	root, rootFork := v.rootFork()
	if rootFork == nil {
		return // not created: nothing to compare with, and a pid finding
	}
	defer func() {
		for _, ok := range items {
			v.r.Namespaces.Want++
			if ok {
				v.r.Namespaces.OK++
			}
		}
	}()
	// The root's namespaces at time t: where it was born, moved by its
	// own setns calls that returned before t.
	var rootSetns []*SetnsEvent
	for _, e := range v.events {
		if s, ok := e.(*SetnsEvent); ok && s.TID == rootFork.ChildTID && s.Returned && s.Ret == 0 {
			rootSetns = append(rootSetns, s)
		}
	}
	rootAt := func(t uint64) Namespaces {
		ns := rootFork.ChildNS
		for _, s := range rootSetns {
			if s.Exit <= t {
				ns = ns.with(s.After)
			}
		}
		return ns
	}

	if tree != nil {
		for _, t := range NSTypes {
			eng, got := tree.Engine.Get(t), rootFork.ChildNS.Get(t)
			switch {
			case eng == 0 || got == 0:
			case tree.New&t != 0 && got == eng:
				v.find("namespace", root.PID, 0, "", "task %d was born in the engine's %s namespace %d, not in a new one",
					root.PID, nsName(t), got).with(rootFork)
				bad(t)
			case tree.Made&t != 0 && got != eng:
				v.find("namespace", root.PID, 0, "", "task %d was born in a new %s namespace %d, not in the engine's %d: the plan has it make one itself",
					root.PID, nsName(t), got, eng).with(rootFork)
				bad(t)
			case tree.New&t == 0 && got != eng:
				v.find("namespace", root.PID, 0, "", "task %d was born in a new %s namespace %d, not in the engine's %d: the plan has none",
					root.PID, nsName(t), got, eng).with(rootFork)
				bad(t)
			}
		}
		v.rootMade(tree, root, rootFork, bad)
	}

	unshared := v.rootUnshared(tree, root, rootFork, items, bad)
	for _, e := range v.events {
		f, ok := e.(*ForkEvent)
		if !ok || f == rootFork {
			continue
		}
		id, known := v.who[f.ChildTID]
		if !known || !id.Expected || id.Fork != f {
			continue
		}
		ref := rootAt(f.Time).with(unshared)
		var diff []string
		types := 0
		for _, t := range NSTypes {
			got, want := f.ChildNS.Get(t), ref.Get(t)
			if got != 0 && want != 0 && got != want {
				diff = append(diff, fmt.Sprintf("%s %d, the root's %d", nsName(t), got, want))
				types |= t
			}
		}
		if types != 0 {
			tid := 0
			if id.TID != id.PID {
				tid = id.TID
			}
			v.find("namespace", id.PID, tid, "", "%s is not in the root's namespaces: %s", describeImage(id.PID, id.TID),
				strings.Join(diff, "; ")).with(f, rootFork)
			bad(types)
		}
	}
	if tree == nil {
		return
	}

	// The engine's setns calls, thread by thread: where each left the
	// thread, from where the monitor last saw it (the engine's own
	// namespaces at first).
	stageAt := func(t uint64) string {
		if st := v.openStage(v.switches, t); st != -2 {
			return v.stageName(st)
		}
		return v.stageName(tree.Stage)
	}
	state := map[int]Namespaces{} // engine tid -> its namespaces
	last := map[int]*SetnsEvent{} // engine tid -> its last setns
	joined := map[int]*SetnsEvent{}
	calls := map[int][]Event{} // type -> the engine's setns calls that may join one
	for _, e := range v.events {
		s, ok := e.(*SetnsEvent)
		if !ok || s.PID != tree.EnginePID {
			continue
		}
		for _, t := range NSTypes {
			if s.NSType == 0 || s.NSType&t != 0 {
				calls[t] = append(calls[t], s)
			}
		}
		stage := stageAt(s.Time)
		call := fmt.Sprintf("setns(fd %d, %s)", s.FD, nsList(s.NSType))
		before, seen := state[s.TID]
		if !seen {
			before = tree.Engine
		}
		last[s.TID] = s
		switch {
		case !s.Returned:
			v.find("namespace", root.PID, 0, stage, "the engine's %s did not return", call).with(s)
			bad(s.NSType)
			continue
		case s.Ret < 0:
			v.find("namespace", root.PID, 0, stage, "the engine's %s failed with %d", call, s.Ret).with(s, rootFork)
			bad(s.NSType)
			continue
		}
		ref := rootAt(s.Time)
		after := before.with(s.After)
		state[s.TID] = after
		changed, first := 0, 0 // first: types this call joined first
		for _, t := range NSTypes {
			now, was := after.Get(t), before.Get(t)
			if now == 0 || now == was {
				continue
			}
			changed |= t
			eng, rt := tree.Engine.Get(t), ref.Get(t)
			switch {
			case now == eng:
				// back in its own
			case now == rt && tree.Joined&t != 0:
				if joined[t] == nil {
					joined[t] = s
					first |= t
				}
			case now == rt:
				v.find("namespace", root.PID, 0, stage, "the engine joined the root's %s namespace %d with %s, which the plan does not have it enter",
					nsName(t), now, call).with(s, rootFork)
				bad(t)
			case s.NSType != 0 && s.NSType&t == 0:
				// the call could not join it: the thread got there
				// otherwise (unshare), and only now the monitor sees it
				v.find("namespace", root.PID, 0, stage, "the engine was in %s namespace %d after %s, which joins no %s namespace: "+
					"neither the root's %d nor its own %d", nsName(t), now, call, nsName(t), rt, eng).with(s, rootFork)
				bad(t)
			case tree.Joined&t != 0:
				v.find("namespace", root.PID, 0, stage, "the engine joined %s namespace %d with %s, not the root's %d",
					nsName(t), now, call, rt).with(s, rootFork)
				bad(t)
			default:
				v.find("namespace", root.PID, 0, stage, "the engine joined %s namespace %d with %s, neither the root's %d nor its own %d",
					nsName(t), now, call, rt, eng).with(s, rootFork)
				bad(t)
			}
		}
		// It fills them before any task is forked into them; it may
		// come back later (for the network lock, say).
		if want := v.stageName(tree.Stage); first != 0 && stage != want {
			v.find("namespace", root.PID, 0, stage, "the engine first joined the root's %s namespaces during %s, not %s",
				nsList(first), stage, want).with(s)
			bad(first)
		}
		// A call that moved nothing is a finding, unless it went "back"
		// into the engine's own namespaces it had not left (the engine
		// may go back to every namespace it could fill).
		home := true
		for _, t := range NSTypes {
			if own := tree.Engine.Get(t); (s.NSType == 0 || s.NSType&t != 0) && own != 0 && after.Get(t) != own {
				home = false
			}
		}
		if changed == 0 && !home {
			v.find("namespace", root.PID, 0, stage, "the engine called %s, which the plan does not have: it joined none of the root's namespaces and left none",
				call).with(s)
			bad(s.NSType)
		}
	}

	// The plan's joins happened, unless the restore failed before the
	// stage that makes them was over.
	if v.failAt == 0 || v.switchedBefore(v.switches, tree.Stage, v.failAt) {
		for _, t := range NSTypes {
			if tree.Joined&t == 0 || joined[t] != nil {
				continue
			}
			v.find("namespace", root.PID, 0, v.stageName(tree.Stage), "the engine never joined the root's %s namespace %d",
				nsName(t), rootFork.ChildNS.Get(t)).with(append(slices.Clone(calls[t]), rootFork)...)
			bad(t)
		}
	}

	// Back in its own namespaces: every engine thread that called setns,
	// unless it ended after its last call.
	ended := map[int]uint64{}
	for _, e := range v.events {
		if x, ok := e.(*ExitEvent); ok && x.PID == tree.EnginePID {
			ended[x.TID] = x.Time
		}
	}
	tids := slices.Sorted(maps.Keys(state))
	for _, tid := range tids {
		ns, s := state[tid], last[tid]
		if end, ok := ended[tid]; ok && end > s.Time {
			continue
		}
		var away []string
		types := 0
		for _, t := range NSTypes {
			if now, own := ns.Get(t), tree.Engine.Get(t); now != 0 && own != 0 && now != own {
				away = append(away, fmt.Sprintf("%s %d, not its own %d", nsName(t), now, own))
				types |= t
			}
		}
		if types != 0 {
			v.find("namespace", root.PID, 0, stageAt(s.Time), "engine thread %d did not go back to the engine's namespaces after its last setns: %s",
				tid, strings.Join(away, "; ")).with(s)
			bad(types)
		}
	}
}

// rootUnshared checks the namespaces the root makes with unshare
// (tree.Unshared), which the monitor does not see: the first task or
// thread the root forks shows where the root was then, in a namespace
// other than the one it was born in; and no task of the tree clones one
// of those types (the root's unshare is the one way the plan makes it).
// It returns the root's namespaces of those types as its first fork
// shows them, for the tasks forked after. With nothing forked by the
// root (one task, one thread), nothing shows them: not counted.
func (v *verifier) rootUnshared(tree *ExpectTreeNS, root ExpectTask, rootFork *ForkEvent, items map[int]bool, bad func(int)) Namespaces {
	var ns Namespaces
	if tree == nil || tree.Unshared == 0 {
		return ns
	}
	var first *ForkEvent
	for _, e := range v.events {
		switch e := e.(type) {
		case *ForkEvent:
			if e == rootFork || e.PID != rootFork.ChildPID || first != nil {
				continue
			}
			if id, known := v.who[e.ChildTID]; known && id.Expected && id.Fork == e {
				first = e
			}
		case *CloneEvent, *Clone3Event:
			var flags uint64
			var h Header
			if c, ok := e.(*CloneEvent); ok {
				flags, h = c.Flags, c.Header
			} else {
				c := e.(*Clone3Event)
				flags, h = c.Flags, c.Header
			}
			id, known := v.who[h.TID]
			if types := int(flags) & tree.Unshared; known && id.Expected && types != 0 {
				v.find("namespace", id.PID, 0, "", "%s cloned with a new %s namespace: the plan has the root alone make one, with unshare",
					describeImage(id.PID, id.TID), nsList(types)).with(e)
				bad(types)
			}
		}
	}
	for _, t := range NSTypes {
		if tree.Unshared&t == 0 || first == nil {
			continue
		}
		born, got := rootFork.ChildNS.Get(t), first.ChildNS.Get(t)
		if born == 0 || got == 0 {
			continue
		}
		if _, seen := items[t]; !seen {
			items[t] = true
		}
		if got == born {
			fid := v.who[first.ChildTID]
			v.find("namespace", root.PID, 0, "", "%s, the first the root forked, was born in the %s namespace %d the root was born in: the root did not make one of its own (unshare) before it forked",
				describeImage(fid.PID, fid.TID), nsName(t), got).with(first, rootFork)
			bad(t)
			continue
		}
		ns.Set(t, got)
	}
	return ns
}

// rootEntersMade says whether s is the root's setns into a namespace of a
// type it makes itself (ExpectTreeNS.Made), which rootMade checks.
func rootEntersMade(tree *ExpectTreeNS, rootFork *ForkEvent, s *SetnsEvent) bool {
	return tree != nil && rootFork != nil && s.TID == rootFork.ChildTID && s.NSType != 0 && s.NSType&^tree.Made == 0
}

// rootMade checks the root's entry into the namespaces it makes itself
// (tree.Made): for each type one setns of the root on an nsfs file, which
// returned 0 and left it in that namespace, not the engine's, before it
// forked any task of the plan. A missing one is a finding unless the
// restore failed.
func (v *verifier) rootMade(tree *ExpectTreeNS, root ExpectTask, rootFork *ForkEvent, bad func(int)) {
	if tree.Made == 0 {
		return
	}
	var firstFork *ForkEvent // the first task or thread the root made
	for _, e := range v.events {
		if f, ok := e.(*ForkEvent); ok && f != rootFork && f.PID == rootFork.ChildPID {
			if id, known := v.who[f.ChildTID]; known && id.Expected && id.Fork == f {
				firstFork = f
				break
			}
		}
	}
	for _, t := range NSTypes {
		if tree.Made&t == 0 {
			continue
		}
		var calls []*SetnsEvent
		for _, e := range v.events {
			if s, ok := e.(*SetnsEvent); ok && s.NSType == t && rootEntersMade(tree, rootFork, s) {
				calls = append(calls, s)
			}
		}
		if len(calls) == 0 {
			if v.failAt == 0 {
				v.find("namespace", root.PID, 0, "", "task %d never entered a %s namespace of its own: the plan has it make one",
					root.PID, nsName(t)).with(rootFork)
				bad(t)
			}
			continue
		}
		s, eng := calls[0], tree.Engine.Get(t)
		call := fmt.Sprintf("setns(fd %d, %s)", s.FD, nsName(t))
		switch {
		case !s.Returned:
			v.find("namespace", root.PID, 0, "", "task %d's %s did not return", root.PID, call).with(s)
		case s.Ret < 0:
			v.find("namespace", root.PID, 0, "", "task %d's %s failed with %d", root.PID, call, s.Ret).with(s)
		case !s.Resolved || s.FSMagic != unix.NSFS_MAGIC:
			v.find("namespace", root.PID, 0, "", "task %d's %s: the fd was not a namespace file", root.PID, call).with(s)
		case s.Inode == eng || s.After.Get(t) == eng:
			v.find("namespace", root.PID, 0, "", "task %d entered the engine's %s namespace %d with %s, not one of its own",
				root.PID, nsName(t), eng, call).with(s, rootFork)
		case s.After.Get(t) != s.Inode:
			v.find("namespace", root.PID, 0, "", "task %d was in %s namespace %d after %s, not in %d, the one the fd names",
				root.PID, nsName(t), s.After.Get(t), call, s.Inode).with(s)
		case firstFork != nil && s.Exit >= firstFork.Time:
			v.find("namespace", root.PID, 0, "", "task %d entered its %s namespace %d after it forked %s",
				root.PID, nsName(t), s.Inode, describeImage(v.who[firstFork.ChildTID].PID, v.who[firstFork.ChildTID].TID)).with(s, firstFork)
		default:
			for _, again := range calls[1:] {
				v.find("namespace", root.PID, 0, "", "task %d called setns(fd %d, %s) again, after it entered its %s namespace %d",
					root.PID, again.FD, nsName(t), nsName(t), s.Inode).with(again, s)
			}
			if len(calls) == 1 {
				continue
			}
		}
		bad(t)
	}
}

func (v *verifier) verdict() string {
	var parts []string
	parts = append(parts, "pids "+v.r.PIDs.String(), "threads "+v.r.Threads.String())
	st := "stages " + v.r.Stages.String()
	if v.r.StagesInOrder {
		st += " in order"
	} else {
		st += " out of order"
	}
	parts = append(parts, st)
	switch {
	case v.r.Namespaces.Want == 0:
	case v.r.Namespaces.OK == v.r.Namespaces.Want:
		parts = append(parts, "namespaces ok")
	default:
		parts = append(parts, "namespaces "+v.r.Namespaces.String())
	}
	if v.r.Failed != "" {
		parts = append(parts, "failed in "+v.r.Failed)
	}
	if n := len(v.r.Findings); n > 0 {
		parts = append(parts, fmt.Sprintf("%d findings", n))
	}
	return strings.Join(parts, ", ")
}
