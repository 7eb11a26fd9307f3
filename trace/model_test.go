package trace

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	oteltrace "go.opentelemetry.io/otel/trace"
)

// The synthetic restore: task 1 forks 2 and 3; task 3 has a second
// thread, 4. Times are microseconds after base.
const base = uint64(5_000_000_000_000)

func us(n int) uint64 { return base + uint64(n)*1000 }

var stageTable = []struct {
	name   string
	number int
	at     int
	// arrivals: image tid -> time
	arrivals map[int]int
}{
	{"ROOT_TASK", 0, 0, map[int]int{1: 40}},
	{"PREPARE_NAMESPACES", 1, 50, map[int]int{1: 60}},
	{"FORKING", 2, 70, map[int]int{1: 300, 2: 200, 3: 250}},
	{"RESTORE", 3, 310, map[int]int{1: 700, 2: 650, 3: 900, 4: 880}},
	{"RESTORE_SIGCHLD", 4, 910, map[int]int{1: 920, 2: 925, 3: 930, 4: 931}},
	{"RESTORE_CREDS", 5, 940, map[int]int{1: 950, 2: 951, 3: 960, 4: 955}},
	{"COMPLETE", 6, 970, map[int]int{1: 990, 2: 985, 3: 1000, 4: 995}},
}

var taskOf = map[int]int{1: 1, 2: 2, 3: 3, 4: 3} // tid -> pid

var stepTable = []StepEvent{
	{PID: 1, Stage: "ROOT_TASK", Step: "launch", Begin: us(5), End: us(30)},
	{PID: 1, Stage: "FORKING", Step: "memory", Begin: us(80), End: us(150)},
	{PID: 1, Stage: "FORKING", Step: "fork children", Begin: us(150), End: us(290)},
	{PID: 2, Stage: "FORKING", Step: "check pid", Begin: us(160), End: us(170)},
	{PID: 3, Stage: "FORKING", Step: "check pid", Begin: us(210), End: us(215)},
	{PID: 3, Stage: "FORKING", Step: "setsid", Begin: us(215), End: us(220)},
	{PID: 1, Stage: "RESTORE", Step: "files", Begin: us(320), End: us(400)},
	{PID: 2, Stage: "RESTORE", Step: "files", Begin: us(320), End: us(380)},
	{PID: 3, Stage: "RESTORE", Step: "files", Begin: us(320), End: us(500)},
	{PID: 3, Stage: "RESTORE", Step: "memory", Begin: us(500), End: us(850)},
	{PID: 3, Stage: "RESTORE", Step: "threads", Begin: us(850), End: us(870)},
	{PID: 3, TID: 4, Stage: "RESTORE", Step: "memory", Begin: us(872), End: us(878)},
	{PID: 1, Stage: "RESTORE_CREDS", Step: "creds", Begin: us(941), End: us(949)},
}

func syntheticRecord() *Record {
	rec := &Record{
		Op:        OpRestore,
		ImagesDir: "/images/tree",
		Clock:     Clock{Offset: 1_700_000_000_000_000_000 - int64(base), Uncertainty: 20},
		Tasks: []Task{
			{PID: 1, PPID: 0, PGID: 1, SID: 1, HostPID: 9001, Comm: "tree", Threads: []int{1}},
			{PID: 2, PPID: 1, PGID: 1, SID: 1, HostPID: 9002, Comm: "tree", Threads: []int{2}},
			{PID: 3, PPID: 1, PGID: 3, SID: 3, HostPID: 9003, Comm: "tree", Threads: []int{3, 4}},
		},
		Counts:  Counts{Tasks: 3, Threads: 4, Pages: 120, Bytes: 120 * 4096},
		Verdict: Verdict{Checked: true, OK: true},
	}
	for _, s := range stageTable {
		rec.Stages = append(rec.Stages, StageEvent{Stage: s.name, Number: s.number, Participants: len(s.arrivals), At: us(s.at)})
		for tid, at := range s.arrivals {
			rec.Arrivals = append(rec.Arrivals, ArrivalEvent{Stage: s.name, PID: taskOf[tid], TID: tid,
				HostPID: 9000 + taskOf[tid], At: us(at)})
		}
	}
	rec.Steps = append(rec.Steps, stepTable...)
	rec.Kernel = []KernelEvent{
		Clone3(9001, 9001, us(180), 0, 0, []int{2}, 2),
		Clone3(9001, 9001, us(230), 0, 0, []int{3}, 3),
		{Kind: "clone3", PID: 3, TID: 3, At: us(860), Attrs: []attribute.KeyValue{attribute.Int("crest.clone.child_pid", 4)}},
		{Kind: "futex_wait", PID: 2, TID: 2, At: us(640), End: us(905)}, // runs past its arrival: clamped
		{Kind: "futex_wake", PID: 2, TID: 2, At: us(660)},               // after its arrival: on the stage
		{Kind: "setns", HostPID: 4242, HostTID: 4242, At: us(55)},       // not a task: on the stage
	}
	return rec
}

func TestBuildShape(t *testing.T) {
	rec := syntheticRecord()
	tr := Build(rec)
	root := tr.Root

	// stages in order
	stages := tr.Stages()
	if len(stages) != len(stageTable) {
		t.Fatalf("%d stage spans, want %d", len(stages), len(stageTable))
	}
	var sum uint64
	for i, st := range stages {
		if st.Name != stageTable[i].name {
			t.Errorf("stage %d is %s, want %s", i, st.Name, stageTable[i].name)
		}
		sum += st.Duration()
		// one span per participant
		got := map[int]int{}
		for _, p := range st.Children {
			if p.Kind == KindTask {
				got[p.TID]++
			}
		}
		for tid := range stageTable[i].arrivals {
			if got[tid] != 1 {
				t.Errorf("stage %s: %d spans for tid %d, want 1", st.Name, got[tid], tid)
			}
		}
		if len(got) != len(stageTable[i].arrivals) {
			t.Errorf("stage %s: task spans for %v, want %v", st.Name, got, stageTable[i].arrivals)
		}
	}
	if d := int64(sum) - int64(root.Duration()); d > 1e6 || d < -1e6 {
		t.Errorf("stages add up to %d ns, root lasts %d ns", sum, root.Duration())
	}
	// steps inside their task span
	steps := 0
	root.Walk(func(s, parent *Span) {
		if parent != nil && (s.Start < parent.Start || s.End > parent.End) {
			t.Errorf("%s [%d,%d] outside its parent %s [%d,%d]", s.Name, s.Start, s.End, parent.Name, parent.Start, parent.End)
		}
		if s.Kind == KindStep {
			steps++
			if parent.Kind != KindTask || parent.PID != s.PID || parent.TID != s.TID || parent.Stage != s.Stage {
				t.Errorf("step %s of %d/%d in %s is under %s", s.Name, s.PID, s.TID, s.Stage, parent.Name)
			}
		}
	})
	if steps != len(stepTable) {
		t.Errorf("%d step spans, want %d", steps, len(stepTable))
	}
	// root attributes
	for k, want := range map[attribute.Key]attribute.Value{
		keyImagesDir: attribute.StringValue("/images/tree"), keyTasks: attribute.IntValue(3),
		keyThreads: attribute.IntValue(4), keyPages: attribute.Int64Value(120),
		keyBytes: attribute.Int64Value(120 * 4096), keyVerdict: attribute.StringValue("ok"),
	} {
		if got := attr(root.Attrs, k); got != want {
			t.Errorf("root %s = %v, want %v", k, got.String(), want.String())
		}
	}
}

func findSpan(root *Span, fn func(*Span) bool) *Span {
	var found *Span
	root.Walk(func(s, _ *Span) {
		if found == nil && fn(s) {
			found = s
		}
	})
	return found
}

func TestBuildKernelEvents(t *testing.T) {
	tr := Build(syntheticRecord())
	forking1 := findSpan(tr.Root, func(s *Span) bool { return s.Kind == KindTask && s.Stage == "FORKING" && s.TID == 1 })
	if n := len(forking1.Events); n != 2 {
		t.Fatalf("task 1 in FORKING has %d events, want the 2 clone3s", n)
	}
	for i, want := range []int64{2, 3} {
		if got := attr(forking1.Events[i].Attrs, "crest.clone.child_pid").AsInt64(); got != want {
			t.Errorf("clone3 %d child %d, want %d", i, got, want)
		}
		if got := attr(forking1.Events[i].Attrs, keyPID).AsInt64(); got != 9001 {
			t.Errorf("clone3 %d process.pid %d, want 9001", i, got)
		}
	}
	restore3 := findSpan(tr.Root, func(s *Span) bool { return s.Kind == KindTask && s.Stage == "RESTORE" && s.TID == 3 })
	if len(restore3.Events) != 1 || restore3.Events[0].Name != "clone3" {
		t.Errorf("task 3 in RESTORE has events %v, want its clone3", restore3.Events)
	}
	wait := findSpan(tr.Root, func(s *Span) bool { return s.Kind == KindKernel })
	if wait == nil || wait.Name != "futex_wait" {
		t.Fatalf("no futex_wait span")
	}
	if got := attr(wait.Attrs, keyClamped); !got.AsBool() {
		t.Errorf("futex_wait past its task's arrival is not marked clamped")
	}
	restore := findSpan(tr.Root, func(s *Span) bool { return s.Name == "RESTORE" })
	if len(restore.Events) != 1 || restore.Events[0].Name != "futex_wake" || attr(restore.Events[0].Attrs, keyVPID).AsInt64() != 2 {
		t.Errorf("task 2's futex_wake after its arrival is not on the stage: %v", restore.Events)
	}
	pns := findSpan(tr.Root, func(s *Span) bool { return s.Name == "PREPARE_NAMESPACES" })
	if len(pns.Events) != 1 || pns.Events[0].Name != "setns" {
		t.Errorf("a setns of an unknown pid during PREPARE_NAMESPACES is not on the stage: %v", pns.Events)
	}
}

func TestBuildPhasesTileRoot(t *testing.T) {
	rec := syntheticRecord()
	rec.Begin = us(-300)
	rec.End = us(1100)
	tr := Build(rec)
	var names []string
	var sum uint64
	for _, c := range tr.Root.Children {
		names = append(names, c.Name)
		sum += c.Duration()
	}
	if names[0] != "prepare" || names[len(names)-1] != "finish" {
		t.Errorf("root children %v, want prepare first and finish last", names)
	}
	if sum != tr.Root.Duration() || tr.Root.Duration() != 1400*1000 {
		t.Errorf("children add up to %d ns, root %d ns, want 1400000", sum, tr.Root.Duration())
	}
}

func TestBuildFailure(t *testing.T) {
	rec := syntheticRecord()
	// cut the restore at RESTORE: task 3 fails in memory with ENOMEM
	rec.Stages = rec.Stages[:4]
	var arr []ArrivalEvent
	for _, a := range rec.Arrivals {
		if a.Stage != "RESTORE" && a.Stage != "RESTORE_SIGCHLD" && a.Stage != "RESTORE_CREDS" && a.Stage != "COMPLETE" {
			arr = append(arr, a)
		}
	}
	rec.Arrivals = arr
	rec.Steps = rec.Steps[:9]
	rec.Steps = append(rec.Steps, StepEvent{PID: 3, TID: 3, Stage: "RESTORE", Step: "memory", Begin: us(500), Errno: int(syscall.ENOMEM)})
	rec.Err = fmt.Errorf("restore: stage RESTORE: task 3: memory: %w", syscall.ENOMEM)
	rec.End = us(800)
	rec.Verdict = Verdict{}
	tr := Build(rec)
	if tr.Root.Err == "" || attr(tr.Root.Attrs, keyErrorType).AsString() != "ENOMEM" {
		t.Errorf("root err %q error.type %q", tr.Root.Err, attr(tr.Root.Attrs, keyErrorType).AsString())
	}
	st := tr.Stages()[3]
	if st.Err == "" || st.End != us(800) {
		t.Errorf("failed stage %s: err %q end %d, want an error and the restore's end", st.Name, st.Err, st.End)
	}
	step := findSpan(tr.Root, func(s *Span) bool { return s.Kind == KindStep && s.Err != "" })
	if step == nil || step.Name != "memory" || step.PID != 3 {
		t.Fatalf("no failed memory step of task 3: %+v", step)
	}
	if step.End != us(800) {
		t.Errorf("the failed step ends at %d, want the restore's end %d", step.End, us(800))
	}
	if attr(tr.Root.Attrs, keyVerdict).AsString() != "not verified" {
		t.Errorf("verdict %v", attr(tr.Root.Attrs, keyVerdict).String())
	}
	if !errors.Is(rec.Err, syscall.ENOMEM) {
		t.Fatal("test setup")
	}
}

// The SDK spans keep the model's shape: one root, real parent links,
// children inside their parents, wall times from the clock.
func TestSpansThroughSDK(t *testing.T) {
	tr := Build(syntheticRecord())
	spans, id, _ := tr.Spans()
	if !id.IsValid() {
		t.Fatal("no trace id")
	}
	n := 0
	tr.Root.Walk(func(*Span, *Span) { n++ })
	if len(spans) != n {
		t.Fatalf("%d SDK spans, model has %d", len(spans), n)
	}
	byID := map[oteltrace.SpanID]sdktrace.ReadOnlySpan{}
	roots := 0
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = s
		if s.SpanContext().TraceID() != id {
			t.Errorf("span %s in trace %s", s.Name(), s.SpanContext().TraceID())
		}
		if !s.Parent().IsValid() {
			roots++
		}
	}
	if roots != 1 {
		t.Errorf("%d roots", roots)
	}
	for _, s := range spans {
		if !s.Parent().IsValid() {
			if want := tr.Clock.Wall(tr.Root.Start); !s.StartTime().Equal(want) {
				t.Errorf("root starts %v, want %v", s.StartTime(), want)
			}
			continue
		}
		p, ok := byID[s.Parent().SpanID()]
		if !ok {
			t.Errorf("%s: parent not in the trace", s.Name())
			continue
		}
		if s.StartTime().Before(p.StartTime()) || s.EndTime().After(p.EndTime()) {
			t.Errorf("%s outside its parent %s", s.Name(), p.Name())
		}
	}
	// Spans are made once: every exporter sends the same ids.
	if _, id2, _ := tr.Spans(); id2 != id {
		t.Error("a second call made new spans")
	}
}

// Records cut short anywhere still build, export and print.
func TestBuildPartial(t *testing.T) {
	full := syntheticRecord()
	for _, rec := range []*Record{
		{},
		{Op: OpDump, Begin: us(0), End: us(10)},
		{Stages: full.Stages[:1]},
		{Arrivals: full.Arrivals, Steps: full.Steps},
		{Kernel: full.Kernel},
		{Steps: []StepEvent{{PID: 1, Stage: "FORKING", Step: "fork children", Begin: us(5), Errno: int(syscall.EAGAIN)}}},
	} {
		tr := Build(rec)
		var b strings.Builder
		if err := tr.WriteWaterfall(&b, 80); err != nil {
			t.Error(err)
		}
		if _, err := tr.Request(); err != nil {
			t.Error(err)
		}
		tr.Root.Walk(func(s, parent *Span) {
			if s.End < s.Start || (parent != nil && (s.Start < parent.Start || s.End > parent.End)) {
				t.Errorf("record %+v: %s [%d,%d] under %v", rec, s.Name, s.Start, s.End, parent)
			}
		})
	}
}

func TestKernelEventKinds(t *testing.T) {
	for _, c := range []struct {
		e    KernelEvent
		kind string
		key  attribute.Key
		want attribute.Value
	}{
		{Futex(1, 1, 10, 20, 0, 0x10, 5, 0), "futex_wait", AttrFutexVal, attribute.Int64Value(5)},
		{Futex(1, 1, 10, 0, 1|128, 0x10, 1, 1), "futex_wake", AttrResult, attribute.Int64Value(1)},
		{Futex(1, 1, 10, 0, 9, 0x10, 1, 0), "futex_wait", AttrFutexAddr, attribute.StringValue("0x10")},
		{Futex(1, 1, 10, 0, 5, 0x10, 1, 0), "futex", AttrFutexOp, attribute.Int64Value(5)},
		{Clone3(1, 1, 10, 0, 0x20000000, []int{1, 7}, 42), "clone3", AttrCloneChild, attribute.Int64Value(42)},
		{Clone3(1, 1, 10, 0, 0, nil, -17), "clone3", AttrResult, attribute.Int64Value(-17)},
		{Setns(1, 1, 10, 0, 0x20000000, 4026531836, 0), "setns", AttrSetnsInode, attribute.Int64Value(4026531836)},
		{Fork(1, 1, 10, []int{900, 2}, false), "fork", AttrForkPIDs, attribute.IntSliceValue([]int{900, 2})},
		{Fork(1, 1, 10, []int{901, 3}, true), "thread created", AttrForkPIDs, attribute.IntSliceValue([]int{901, 3})},
		{Exit(1, 1, 10, 9), "exit", AttrExitCode, attribute.IntValue(9)},
	} {
		if c.e.Kind != c.kind {
			t.Errorf("%+v: kind %q, want %q", c.e, c.e.Kind, c.kind)
		}
		if got := attr(c.e.Attrs, c.key); got.String() != c.want.String() {
			t.Errorf("%s: %s = %s, want %s", c.kind, c.key, got.String(), c.want.String())
		}
	}
	if hasKey(Clone3(1, 1, 10, 0, 0, nil, -17).Attrs, AttrCloneChild) {
		t.Error("a failed clone3 names a child")
	}
}

// TestBuildEngineSteps: what the engine does for a task while the task
// waits at the barrier (filling the root's namespaces after it arrived
// at PREPARE_NAMESPACES) is a step of the stage, with its own length,
// not a step of the task clamped to the task's arrival.
func TestBuildEngineSteps(t *testing.T) {
	rec := syntheticRecord()
	rec.Steps = append(rec.Steps,
		StepEvent{PID: 1, TID: 1, Stage: "PREPARE_NAMESPACES", Step: "uts namespace", Begin: us(61), End: us(63), Engine: true},
		StepEvent{PID: 1, TID: 1, Stage: "PREPARE_NAMESPACES", Step: "ipc namespace", Begin: us(63), End: us(68), Engine: true})
	tr := Build(rec)
	st := tr.Stages()[1]
	if st.Name != "PREPARE_NAMESPACES" {
		t.Fatalf("stage 1 is %s", st.Name)
	}
	want := map[string][2]uint64{"uts namespace": {us(61), us(63)}, "ipc namespace": {us(63), us(68)}}
	var tasks int
	for _, c := range st.Children {
		switch c.Kind {
		case KindTask:
			tasks++
			if c.End != us(60) || len(c.Children) != 0 {
				t.Errorf("task span %s ends at %d with %d steps, want its arrival %d and none", c.Name, c.End, len(c.Children), us(60))
			}
		case KindStep:
			w, ok := want[c.Name]
			if !ok || c.Start != w[0] || c.End != w[1] || c.PID != 1 || !attr(c.Attrs, keyEngine).AsBool() || hasKey(c.Attrs, keyClamped) {
				t.Errorf("engine step %s [%d,%d] pid %d attrs %v, want %v for task 1, engine, not clamped", c.Name, c.Start, c.End, c.PID, c.Attrs, w)
			}
			delete(want, c.Name)
		}
	}
	if tasks != 1 || len(want) != 0 {
		t.Errorf("%d task spans, engine steps missing: %v", tasks, want)
	}
	if n := attr(st.Attrs, keyArrivals).AsInt64(); n != 1 {
		t.Errorf("stage arrivals %d, want 1 (engine steps are no participants)", n)
	}
	var out strings.Builder
	if err := tr.WriteWaterfall(&out, 120); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "engine: ipc namespace") {
		t.Errorf("the waterfall does not show the engine's step:\n%s", out.String())
	}

	// failing there: the step runs until the restore gave up
	rec = syntheticRecord()
	rec.Stages = rec.Stages[:2]
	var arr []ArrivalEvent
	for _, a := range rec.Arrivals {
		if a.Stage == "ROOT_TASK" || a.Stage == "PREPARE_NAMESPACES" {
			arr = append(arr, a)
		}
	}
	rec.Arrivals = arr
	rec.Steps = []StepEvent{{PID: 1, TID: 1, Stage: "PREPARE_NAMESPACES", Step: "ipc namespace", Begin: us(62), Errno: int(syscall.EINVAL), Engine: true}}
	rec.Err = fmt.Errorf("restore: stage PREPARE_NAMESPACES: %w", syscall.EINVAL)
	rec.End = us(90)
	tr = Build(rec)
	step := findSpan(tr.Root, func(s *Span) bool { return s.Kind == KindStep && s.Name == "ipc namespace" })
	if step == nil || step.Err == "" || step.Start != us(62) || step.End != us(90) {
		t.Errorf("failed engine step %+v, want an error, [%d,%d]", step, us(62), us(90))
	}
}
