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
