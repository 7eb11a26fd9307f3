package trace

import "testing"

// A dump has stages but no barrier: a task's span in a stage runs from
// the task's first step there to its last.
func TestBuildDump(t *testing.T) {
	rec := &Record{
		Op:        OpDump,
		ImagesDir: "/images/out",
		Tasks:     []Task{{PID: 10, Threads: []int{10, 11}}, {PID: 12, PPID: 10, Threads: []int{12}}},
		Begin:     us(0),
		End:       us(500),
		Stages: []StageEvent{
			{Stage: "seize", Number: 0, At: us(0)},
			{Stage: "collect", Number: 1, At: us(100)},
			{Stage: "dump tasks", Number: 2, At: us(150)},
			{Stage: "resume", Number: 3, At: us(480)},
		},
		Steps: []StepEvent{
			{PID: 10, Stage: "seize", Step: "seize", Begin: us(1), End: us(40)},
			{PID: 12, Stage: "seize", Step: "seize", Begin: us(40), End: us(90)},
			{PID: 10, Stage: "dump tasks", Step: "memory", Begin: us(150), End: us(400)},
			{PID: 10, TID: 11, Stage: "dump tasks", Step: "registers", Begin: us(400), End: us(410)},
			{PID: 12, Stage: "dump tasks", Step: "memory", Begin: us(410), End: us(470)},
			{PID: 10, Stage: "resume", Step: "detach", Begin: us(480), End: us(490)},
		},
	}
	tr := Build(rec)
	if tr.Root.Name != "crest dump" || attr(tr.Root.Attrs, keyOp).AsString() != "dump" {
		t.Errorf("root %q op %v", tr.Root.Name, attr(tr.Root.Attrs, keyOp).String())
	}
	if n := attr(tr.Root.Attrs, keyThreads).AsInt64(); n != 3 {
		t.Errorf("crest.threads %d, want 3 from the task list", n)
	}
	st := tr.Stages()
	if len(st) != 4 {
		t.Fatalf("%d stages", len(st))
	}
	var sum uint64
	for _, s := range st {
		sum += s.Duration()
	}
	if sum != st[3].End-st[0].Start {
		t.Errorf("stages add up to %d, span [%d,%d]", sum, st[0].Start, st[3].End)
	}
	dumpTasks := st[2]
	// a thread without a span of its own shows its steps in its task's
	if len(dumpTasks.Children) != 2 || len(dumpTasks.Children[0].Children) != 2 {
		t.Fatalf("dump tasks has %d task spans, want 10 (with the step of thread 11) and 12", len(dumpTasks.Children))
	}
	for _, p := range dumpTasks.Children {
		if attr(p.Attrs, keyArrived).AsBool() {
			t.Errorf("%s marked arrived", p.Name)
		}
		// one task after the other: from its first step to its last
		if first, last := p.Children[0], p.Children[len(p.Children)-1]; p.End != last.End || p.Start != first.Start {
			t.Errorf("%s [%d,%d], want [first step start %d, last step end %d]", p.Name, p.Start, p.End, first.Start, last.End)
		}
	}
	if len(st[1].Children) != 0 {
		t.Errorf("collect has %d task spans, want none", len(st[1].Children))
	}
	tr.Root.Walk(func(s, parent *Span) {
		if parent != nil && (s.Start < parent.Start || s.End > parent.End) {
			t.Errorf("%s outside %s", s.Name, parent.Name)
		}
	})
	if names := tr.Root.Children; names[len(names)-1].Name != "finish" {
		t.Errorf("last child of the root %q, want finish", names[len(names)-1].Name)
	}
}
