package trace

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestWaterfall(t *testing.T) {
	tr := Build(syntheticRecord())
	var b strings.Builder
	tg, _ := ParseTarget("-")
	if err := Emit(t.Context(), tr, tg, Options{Out: &b, Width: 100}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if !strings.HasPrefix(lines[0], "crest restore  /images/tree  tasks 3  threads 4  pages 120") ||
		!strings.HasSuffix(lines[0], "verification: ok") {
		t.Errorf("headline %q", lines[0])
	}
	// every stage in order, each followed by its tasks
	var stages []string
	slowest := map[string]string{}
	cur := ""
	barStart := -1
	for _, l := range lines[1:] {
		name := strings.TrimSpace(l[:strings.Index(l, " │")])
		name = name[:strings.LastIndex(strings.TrimSpace(name[:len(name)-3]), " ")] // drop the duration
		name = strings.TrimSpace(name)
		if !strings.HasPrefix(l, " ") {
			cur = name
			if strings.ToUpper(name) == name {
				stages = append(stages, name)
			}
		}
		if strings.Contains(l, "◀ slowest") {
			slowest[cur] = name
		}
		// bars line up: the same column in every line
		col := utf8.RuneCountInString(l[:strings.Index(l, "│")])
		if barStart == -1 {
			barStart = col
		} else if col != barStart {
			t.Errorf("bar at column %d, want %d: %q", col, barStart, l)
		}
		if !strings.Contains(l, "█") {
			t.Errorf("no bar: %q", l)
		}
	}
	want := []string{"ROOT_TASK", "PREPARE_NAMESPACES", "FORKING", "RESTORE", "RESTORE_SIGCHLD", "RESTORE_CREDS", "COMPLETE"}
	if strings.Join(stages, ",") != strings.Join(want, ",") {
		t.Errorf("stages %v, want %v", stages, want)
	}
	// the slowest participant of each multi-task stage, by the table
	for stage, task := range map[string]string{"FORKING": "task 1", "RESTORE": "task 3", "COMPLETE": "task 3"} {
		if slowest[stage] != task {
			t.Errorf("slowest in %s: %q, want %q", stage, slowest[stage], task)
		}
	}
	if _, ok := slowest["ROOT_TASK"]; ok {
		t.Error("a stage with one task marks a slowest")
	}
	// the slowest task's steps are shown under it
	if !strings.Contains(out, "    memory ") || !strings.Contains(out, "    fork children ") {
		t.Errorf("steps of the slowest tasks missing")
	}
	// the root's bar fills the width
	if !strings.Contains(lines[1], "│"+strings.Repeat("█", 100-30-11-14)+"│") {
		t.Errorf("total bar %q", lines[1])
	}
}

// Kernel events read as summaries on the line of the task (or the engine)
// they belong to, never as lines of their own; the engine's steps before
// the first stage are lines under "prepare", not 0 µs steps of ROOT_TASK.
func TestWaterfallKernelAndPrepare(t *testing.T) {
	rec := syntheticRecord()
	rec.EnginePID = 8000
	rec.Begin = us(-100)
	rec.Steps = append(rec.Steps,
		StepEvent{PID: 1, TID: 1, Stage: "ROOT_TASK", Step: "prepare pipes", Begin: us(-80), End: us(-60)},
		StepEvent{PID: 1, TID: 1, Stage: "ROOT_TASK", Step: "open files", Begin: us(-60), End: us(-40)},
		StepEvent{PID: 2, TID: 2, Stage: "ROOT_TASK", Step: "open files", Begin: us(-40), End: us(-20)})
	rec.Kernel = append(rec.Kernel,
		Futex(8000, 8000, us(71), us(71)+100, 0x80|5, 0x1000, 1, 1), // the engine's switch to FORKING
		Futex(8000, 8000, us(72), us(300), 0, 0x1004, 3, 0),         // and its wait for the arrivals
		Futex(9002, 9002, us(201), us(309), 0, 0x2000, 2, 0),        // task 2 at the FORKING barrier
		Futex(9002, 9002, us(202), 0, 1, 0x2004, 1, 1),
		Futex(8000, 8000, us(-90), us(-89), 1, 0x1000, 1, 0), // the engine before any stage
	)
	tr := Build(rec)
	var b strings.Builder
	if err := tr.WriteWaterfall(&b, 120); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	label := func(l string) string { return strings.TrimSpace(l[:30]) }
	from := 0
	find := func(prefix string) (int, string) {
		for i, l := range lines[from:] {
			if strings.HasPrefix(l, prefix) {
				return from + i, l
			}
		}
		t.Fatalf("no line starting %q", prefix)
		return 0, ""
	}
	for _, l := range lines[1:] {
		if n := label(l); strings.HasPrefix(n, "futex") || strings.HasPrefix(n, "clone3") || strings.HasPrefix(n, "setns") {
			t.Errorf("a kernel event has a line of its own: %q", l)
		}
	}
	// prepare: the first row after total, with the engine's steps per task
	i, l := find("prepare ")
	if i != 2 || !strings.Contains(l, "engine: futex_wake") {
		t.Errorf("prepare is line %d %q, want line 2 with the engine's futex", i, l)
	}
	for j, want := range []string{"task 1 prepare pipes", "task 1 open files", "task 2 open files"} {
		if got := label(lines[i+1+j]); got != want {
			t.Errorf("prepare line %d %q, want %q", j, got, want)
		}
	}
	i, _ = find("ROOT_TASK ")
	for _, l := range lines[i+1:] {
		if !strings.HasPrefix(l, " ") {
			break
		}
		if strings.Contains(l, "open files") || strings.Contains(l, "prepare pipes") || label(l) == "task 2" {
			t.Errorf("ROOT_TASK shows preparation: %q", l)
		}
	}
	// FORKING: the engine's futexes on the stage, task 2's on its line
	from, l = find("FORKING ")
	if !strings.HasSuffix(l, "engine: futex, futex_wait") {
		t.Errorf("FORKING line %q, want the engine's futex and futex_wait", l)
	}
	_, l = find("  task 2  ")
	if !strings.Contains(l, "futex_wait, futex_wake") {
		t.Errorf("task 2 in FORKING %q, want its futex_wait and futex_wake", l)
	}
	_, l = find("  task 1  ")
	if !strings.HasSuffix(l, "clone3 ×2") {
		t.Errorf("task 1 in FORKING %q, want clone3 ×2", l)
	}
}
