package trace

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"syscall"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/sys/unix"
)

// Kind says what a span stands for.
type Kind int

const (
	KindRoot   Kind = iota // the whole restore or dump
	KindPhase              // engine work outside the stages
	KindStage              // one stage
	KindTask               // one task or thread inside a stage
	KindStep               // one step of a task
	KindKernel             // a kernel event with a duration
)

func (k Kind) String() string {
	return [...]string{"root", "phase", "stage", "task", "step", "kernel"}[k]
}

// Span is one span of the model. Times are boot-time nanoseconds; the
// Trace's Clock turns them into wall time.
type Span struct {
	Name       string
	Kind       Kind
	Start, End uint64
	Attrs      []attribute.KeyValue
	Events     []Event
	Children   []*Span
	Err        string // non-empty: the span failed

	Stage    string // stage, task, step and kernel spans
	PID, TID int    // task, step and kernel spans (image ids)
}

// Event is a point in time on a span (a kernel event without duration).
type Event struct {
	Name  string
	At    uint64
	Attrs []attribute.KeyValue
}

// Duration returns End - Start in nanoseconds.
func (s *Span) Duration() uint64 { return s.End - s.Start }

// Walk calls fn for s and every span below it, parents first.
func (s *Span) Walk(fn func(s, parent *Span)) {
	var walk func(s, parent *Span)
	walk = func(s, parent *Span) {
		fn(s, parent)
		for _, c := range s.Children {
			walk(c, s)
		}
	}
	walk(s, nil)
}

// Trace is the model of one restore or dump.
type Trace struct {
	Root  *Span
	Clock Clock
	Op    Op

	sdk sdkSpans // the SDK spans, made once for every exporter
}

// Stages returns the stage spans in order.
func (t *Trace) Stages() []*Span {
	var out []*Span
	for _, c := range t.Root.Children {
		if c.Kind == KindStage {
			out = append(out, c)
		}
	}
	return out
}

// Build makes the trace of rec.
func Build(rec *Record) *Trace {
	b := builder{rec: rec, tasks: map[int]*Task{}, hostToImage: map[int]int{}}
	return b.build()
}

type builder struct {
	rec         *Record
	tasks       map[int]*Task // by image pid
	hostToImage map[int]int
	root        *Span
	stages      []*Span
	// participant spans by stage name and image tid
	parts      map[string]map[int]*Span
	unfinished []*Span // failed steps without an end
	prepare    []*Span // engine steps done before the first stage
}

func (b *builder) build() *Trace {
	rec := b.rec
	for i := range rec.Tasks {
		t := &rec.Tasks[i]
		b.tasks[t.PID] = t
		if t.HostPID != 0 {
			b.hostToImage[t.HostPID] = t.PID
		}
	}
	for _, a := range rec.Arrivals {
		if a.HostPID != 0 {
			b.hostToImage[a.HostPID] = a.PID
		}
	}
	op := cmp.Or(rec.Op, OpRestore)
	b.root = &Span{Name: "crest " + string(op), Kind: KindRoot}
	b.buildStages()
	b.buildParticipants()
	b.placeSteps()
	b.closeStages()
	b.frameRoot()
	b.placeKernel()
	b.rootAttrs(op)
	for _, s := range b.stages {
		sortChildren(s)
	}
	slices.SortStableFunc(b.root.Children, func(x, y *Span) int { return cmp.Compare(x.Start, y.Start) })
	return &Trace{Root: b.root, Clock: rec.Clock, Op: op}
}

func (b *builder) buildStages() {
	evs := slices.Clone(b.rec.Stages)
	slices.SortStableFunc(evs, func(x, y StageEvent) int {
		return cmp.Or(cmp.Compare(x.At, y.At), cmp.Compare(x.Number, y.Number))
	})
	b.parts = map[string]map[int]*Span{}
	for _, e := range evs {
		s := &Span{Name: e.Stage, Kind: KindStage, Stage: e.Stage, Start: e.At, End: e.At,
			Attrs: []attribute.KeyValue{keyStage.String(e.Stage), keyStageNumber.Int(e.Number),
				keyParticipants.Int(e.Participants)}}
		b.stages = append(b.stages, s)
		b.parts[e.Stage] = map[int]*Span{}
	}
}

// stage returns the span of the stage named name, creating one (for an
// event of a stage that was never switched to) at time at.
func (b *builder) stage(name string, at uint64) *Span {
	for _, s := range b.stages {
		if s.Stage == name {
			return s
		}
	}
	s := &Span{Name: name, Kind: KindStage, Stage: name, Start: at, End: at,
		Attrs: []attribute.KeyValue{keyStage.String(name)}}
	i, _ := slices.BinarySearchFunc(b.stages, at, func(s *Span, at uint64) int { return cmp.Compare(s.Start, at) })
	b.stages = slices.Insert(b.stages, i, s)
	b.parts[name] = map[int]*Span{}
	return s
}

// participant returns the span of task pid (thread tid) in stage st,
// creating it from the stage's switch.
func (b *builder) participant(st *Span, pid, tid int) *Span {
	if tid == 0 {
		tid = pid
	}
	if p := b.parts[st.Stage][tid]; p != nil {
		return p
	}
	name := fmt.Sprintf("task %d", pid)
	attrs := []attribute.KeyValue{keyStage.String(st.Stage), keyVPID.Int(pid), keyImagePID.Int(pid)}
	if tid != pid {
		name = fmt.Sprintf("task %d thread %d", pid, tid)
		attrs = append(attrs, keyThreadID.Int(tid), keyImageTID.Int(tid))
	}
	if t := b.tasks[pid]; t != nil {
		attrs = append(attrs, keyImagePPID.Int(t.PPID), keyPGID.Int(t.PGID), keySID.Int(t.SID))
		if t.Comm != "" {
			attrs = append(attrs, keyCommand.String(t.Comm))
		}
		if t.HostPID != 0 {
			attrs = append(attrs, keyPID.Int(t.HostPID))
		}
		if pt := b.tasks[t.PPID]; pt != nil && pt.HostPID != 0 {
			attrs = append(attrs, keyParentPID.Int(pt.HostPID))
		}
	}
	p := &Span{Name: name, Kind: KindTask, Stage: st.Stage, PID: pid, TID: tid,
		Start: st.Start, End: st.Start, Attrs: attrs}
	st.Children = append(st.Children, p)
	b.parts[st.Stage][tid] = p
	return p
}

func (b *builder) buildParticipants() {
	for _, a := range b.rec.Arrivals {
		st := b.stage(a.Stage, a.At)
		p := b.participant(st, a.PID, a.TID)
		p.End = max(p.End, a.At)
		p.Attrs = append(p.Attrs, keyArrived.Bool(true))
		if a.HostPID != 0 && !hasKey(p.Attrs, keyPID) {
			p.Attrs = append(p.Attrs, keyPID.Int(a.HostPID))
		}
	}
}

func (b *builder) placeSteps() {
	for _, e := range b.rec.Steps {
		tid := cmp.Or(e.TID, e.PID)
		if len(b.stages) > 0 && e.End != 0 && e.End <= b.stages[0].Start && e.Errno == 0 {
			// The engine's preparation for a task (its files, its pipes)
			// happens before the first stage opens: it belongs to the
			// "prepare" phase, not to a stage the task may not even take
			// part in.
			s := &Span{Name: e.Step, Kind: KindStep, PID: e.PID, TID: tid, Start: e.Begin, End: e.End,
				Attrs: []attribute.KeyValue{keyStep.String(e.Step), keyPhase.String("prepare"), keyVPID.Int(e.PID)}}
			b.prepare = append(b.prepare, s)
			continue
		}
		st := b.stage(e.Stage, e.Begin)
		if e.Engine {
			b.placeEngineStep(st, e)
			continue
		}
		p := b.parts[st.Stage][tid]
		if p == nil {
			p = b.parts[st.Stage][e.PID]
		}
		if p == nil {
			// No arrival (a dump, or a failure mid-stage): the task's span
			// runs from the switch to its last step.
			p = b.participant(st, e.PID, tid)
		}
		s := &Span{Name: e.Step, Kind: KindStep, Stage: st.Stage, PID: e.PID, TID: tid,
			Start: e.Begin, End: e.End,
			Attrs: []attribute.KeyValue{keyStep.String(e.Step), keyStage.String(st.Stage), keyVPID.Int(e.PID)}}
		if tid != e.PID {
			s.Attrs = append(s.Attrs, keyThreadID.Int(tid))
		}
		if e.Errno != 0 {
			errno := syscall.Errno(e.Errno)
			s.Err = fmt.Sprintf("%s: %v", e.Step, errno)
			s.Attrs = append(s.Attrs, keyErrno.Int(e.Errno), keyErrorType.String(errnoName(errno)))
			p.Err = s.Err
		}
		if s.End < s.Start { // never finished: runs until the failure was noticed
			s.End = s.Start
			b.unfinished = append(b.unfinished, s)
		}
		if !hasKey(p.Attrs, keyArrived) {
			p.End = max(p.End, s.End)
			if b.rec.Op == OpDump {
				// A dump works on one task after the other: a task's
				// span starts with its first step, not with the stage.
				if len(p.Children) == 0 {
					p.Start = s.Start
				}
				p.Start = max(min(p.Start, s.Start), st.Start)
			}
		}
		p.Children = append(p.Children, s)
	}
}

// placeEngineStep puts a step the engine did for a task during a stage
// (while the task waited at the barrier) on the stage itself: on the
// task's span it would lie past the task's arrival, clamped to nothing.
func (b *builder) placeEngineStep(st *Span, e StepEvent) {
	s := &Span{Name: e.Step, Kind: KindStep, Stage: st.Stage, PID: e.PID, TID: cmp.Or(e.TID, e.PID),
		Start: e.Begin, End: e.End,
		Attrs: []attribute.KeyValue{keyStep.String(e.Step), keyStage.String(st.Stage), keyVPID.Int(e.PID), keyEngine.Bool(true)}}
	if e.Errno != 0 {
		errno := syscall.Errno(e.Errno)
		s.Err = fmt.Sprintf("%s: %v", e.Step, errno)
		s.Attrs = append(s.Attrs, keyErrno.Int(e.Errno), keyErrorType.String(errnoName(errno)))
	}
	if s.End < s.Start {
		s.End = s.Start
		b.unfinished = append(b.unfinished, s)
	}
	st.Children = append(st.Children, s)
}

// closeStages ends every stage at the next one's switch (the engine's
// work between a stage's last arrival and the next switch belongs to the
// stage it finishes), the last one at its last arrival or step, clamps
// children that stray outside their parent, and marks unarrived
// participants.
func (b *builder) closeStages() {
	for i, st := range b.stages {
		last := st.Start
		arrived := 0
		for _, p := range st.Children {
			last = max(last, p.End)
			if p.Kind != KindTask {
				continue // the engine's steps
			}
			if hasKey(p.Attrs, keyArrived) {
				arrived++
			} else {
				p.Attrs = append(p.Attrs, keyArrived.Bool(false))
			}
		}
		st.Attrs = append(st.Attrs, keyArrivals.Int(arrived))
		if i+1 < len(b.stages) {
			st.End = max(b.stages[i+1].Start, st.Start)
		} else {
			st.End = last
			if b.rec.Err != nil && b.rec.End > st.End {
				// The stage that failed lasted until the engine gave up,
				// and so did the tasks that never arrived.
				st.End = b.rec.End
				for _, p := range st.Children {
					if p.Kind == KindTask && !attr(p.Attrs, keyArrived).AsBool() {
						p.End = st.End
					}
				}
			}
		}
		for _, p := range st.Children {
			if slices.Contains(b.unfinished, p) {
				p.End = max(p.Start, st.End) // an engine step that failed
			}
			clamp(p, st)
			for _, s := range p.Children {
				if slices.Contains(b.unfinished, s) {
					s.End = max(s.Start, p.End)
				}
				clamp(s, p)
			}
		}
	}
	if b.rec.Err != nil && len(b.stages) > 0 {
		st := b.stages[len(b.stages)-1]
		st.Err = b.rec.Err.Error()
	}
}

// clamp keeps child inside parent's time, noting that it had to.
func clamp(child, parent *Span) {
	if child.Start >= parent.Start && child.End <= parent.End {
		return
	}
	child.Attrs = append(child.Attrs, keyClamped.Bool(true))
	child.Start = min(max(child.Start, parent.Start), parent.End)
	child.End = min(max(child.End, child.Start), parent.End)
}

func (b *builder) placeKernel() {
	for _, e := range b.rec.Kernel {
		pid, tid := e.PID, e.TID
		if pid == 0 {
			pid = b.hostToImage[e.HostPID]
		}
		if tid == 0 && e.HostTID == e.HostPID {
			tid = pid
		}
		attrs := append([]attribute.KeyValue{keyKernel.String(e.Kind)}, e.Attrs...)
		if pid == 0 && e.HostPID != 0 && e.HostPID == b.rec.EnginePID {
			attrs = append(attrs, keyEngine.Bool(true))
		}
		if e.HostPID != 0 {
			attrs = append(attrs, keyPID.Int(e.HostPID))
		}
		if e.HostTID != 0 && e.HostTID != e.HostPID {
			attrs = append(attrs, keyHostTID.Int(e.HostTID))
		}
		parent := b.kernelParent(pid, tid, e.At)
		if parent.Kind != KindRoot && parent.Kind != KindPhase && pid != 0 {
			attrs = append(attrs, keyVPID.Int(pid))
		}
		if e.End > e.At {
			s := &Span{Name: e.Kind, Kind: KindKernel, Stage: parent.Stage, PID: pid, TID: tid,
				Start: e.At, End: e.End, Attrs: attrs}
			if parent.Kind != KindRoot {
				clamp(s, parent)
			}
			parent.Children = append(parent.Children, s)
			continue
		}
		parent.Events = append(parent.Events, Event{Name: e.Kind, At: e.At, Attrs: attrs})
	}
}

// kernelParent finds the span an event of task pid (thread tid) at time
// at belongs to: that thread's span, else its task's, else the stage's
// that was running, else the phase's, else the root.
func (b *builder) kernelParent(pid, tid int, at uint64) *Span {
	var stage *Span
	for _, st := range b.stages {
		if at < st.Start || at > st.End {
			continue
		}
		if stage == nil {
			stage = st
		}
		for _, id := range []int{tid, pid} {
			if p := b.parts[st.Stage][id]; id != 0 && p != nil && p.PID == pid && at >= p.Start && at <= p.End {
				return p
			}
		}
	}
	if stage != nil {
		return stage
	}
	for _, c := range b.root.Children {
		if c.Kind == KindPhase && at >= c.Start && at <= c.End {
			return c
		}
	}
	return b.root
}

// frameRoot sets the root's time and its children: the phases, and the
// stages. The time before the first stage is the phase "prepare" (with
// the engine's steps done then), the time after the last one until the
// next explicit phase (or the end) "finish", so that without explicit
// phases the root's children tile it.
func (b *builder) frameRoot() {
	rec := b.rec
	var lo, hi uint64
	first := true
	widen := func(s, e uint64) {
		if s == 0 && e == 0 {
			return
		}
		if first || s < lo {
			lo = s
		}
		if first || e > hi {
			hi = e
		}
		first = false
	}
	for _, st := range b.stages {
		widen(st.Start, st.End)
	}
	stagesLo, stagesHi := lo, hi
	for _, s := range b.prepare {
		widen(s.Start, s.End)
	}
	for _, p := range rec.Phases {
		widen(p.Begin, max(p.End, p.Begin))
	}
	// Kernel events outside every stage hang on a phase or the root: it
	// spans them.
	for _, e := range rec.Kernel {
		widen(e.At, max(e.End, e.At))
	}
	if rec.Begin != 0 && (first || rec.Begin < lo) {
		lo = rec.Begin
	}
	if rec.End != 0 && (first || rec.End > hi) {
		hi = rec.End
	}
	b.root.Start, b.root.End = lo, hi
	var phases []*Span
	named := func(name string) *Span {
		for _, p := range phases {
			if p.Name == name {
				return p
			}
		}
		return nil
	}
	for _, p := range rec.Phases {
		phases = append(phases, &Span{Name: p.Name, Kind: KindPhase, Start: p.Begin, End: max(p.End, p.Begin),
			Attrs: []attribute.KeyValue{keyPhase.String(p.Name)}})
	}
	if len(b.stages) > 0 {
		if p := named("prepare"); p == nil && (lo < stagesLo || len(b.prepare) > 0) {
			phases = append(phases, &Span{Name: "prepare", Kind: KindPhase, Start: lo, End: stagesLo,
				Attrs: []attribute.KeyValue{keyPhase.String("prepare")}})
		}
		if p := named("finish"); p == nil && hi > stagesHi {
			end := hi
			for _, p := range phases {
				if p.Start >= stagesHi && p.Start < end {
					end = p.Start
				}
			}
			if end > stagesHi {
				phases = append(phases, &Span{Name: "finish", Kind: KindPhase, Start: stagesHi, End: end,
					Attrs: []attribute.KeyValue{keyPhase.String("finish")}})
			}
		}
	}
	if p := named("prepare"); p != nil {
		for _, s := range b.prepare {
			clamp(s, p)
		}
		p.Children = append(p.Children, b.prepare...)
		slices.SortStableFunc(p.Children, func(x, y *Span) int { return cmp.Compare(x.Start, y.Start) })
	}
	b.root.Children = append(b.root.Children, phases...)
	b.root.Children = append(b.root.Children, b.stages...)
	slices.SortStableFunc(b.root.Children, func(x, y *Span) int { return cmp.Compare(x.Start, y.Start) })
}

// measured is the stages' duration as the engine's own events say: from
// the first switch to the last arrival (without arrivals, a dump: to the
// last step's end).
func (b *builder) measured() (uint64, bool) {
	rec := b.rec
	if len(rec.Stages) == 0 {
		return 0, false
	}
	begin := rec.Stages[0].At
	for _, e := range rec.Stages {
		begin = min(begin, e.At)
	}
	var end uint64
	for _, a := range rec.Arrivals {
		end = max(end, a.At)
	}
	if len(rec.Arrivals) == 0 {
		for _, s := range rec.Steps {
			end = max(end, s.End)
		}
	}
	if end < begin {
		return 0, false
	}
	return end - begin, true
}

func (b *builder) rootAttrs(op Op) {
	rec := b.rec
	c := rec.Counts
	if c.Tasks == 0 {
		c.Tasks = len(rec.Tasks)
	}
	if c.Threads == 0 {
		for _, t := range rec.Tasks {
			c.Threads += max(len(t.Threads), 1)
		}
	}
	verdict := "not verified"
	if rec.Verdict.Checked {
		verdict = "failed"
		if rec.Verdict.OK {
			verdict = "ok"
		}
	}
	b.root.Attrs = append(b.root.Attrs, keyOp.String(string(op)), keyImagesDir.String(rec.ImagesDir),
		keyTasks.Int(c.Tasks), keyThreads.Int(c.Threads), keyPages.Int64(c.Pages), keyBytes.Int64(c.Bytes),
		keyVerified.Bool(rec.Verdict.Checked), keyVerdict.String(verdict),
		keyClockUncert.Int64(rec.Clock.Uncertainty))
	if d, ok := b.measured(); ok {
		b.root.Attrs = append(b.root.Attrs, keyMeasured.Int64(int64(d)))
	}
	if rec.Verdict.Detail != "" {
		b.root.Attrs = append(b.root.Attrs, keyVerdictText.String(rec.Verdict.Detail))
	}
	if rec.Err != nil {
		b.root.Err = rec.Err.Error()
		var errno syscall.Errno
		if errors.As(rec.Err, &errno) {
			b.root.Attrs = append(b.root.Attrs, keyErrorType.String(errnoName(errno)))
		}
	} else if rec.Verdict.Checked && !rec.Verdict.OK {
		b.root.Err = "verification failed: " + rec.Verdict.Detail
	}
}

// sortChildren orders a stage's participants by pid then tid, and every
// span's children by start.
func sortChildren(st *Span) {
	slices.SortStableFunc(st.Children, func(x, y *Span) int {
		return cmp.Or(cmp.Compare(x.PID, y.PID), cmp.Compare(x.TID, y.TID))
	})
	for _, p := range st.Children {
		slices.SortStableFunc(p.Children, func(x, y *Span) int { return cmp.Compare(x.Start, y.Start) })
	}
}

func attr(attrs []attribute.KeyValue, k attribute.Key) attribute.Value {
	for _, a := range attrs {
		if a.Key == k {
			return a.Value
		}
	}
	return attribute.Value{}
}

func hasKey(attrs []attribute.KeyValue, k attribute.Key) bool {
	for _, a := range attrs {
		if a.Key == k {
			return true
		}
	}
	return false
}

// errnoName returns the errno's symbolic name (EPERM), for error.type.
func errnoName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return fmt.Sprintf("errno %d", int(e))
}
