package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Markdown writes the report as a table: one row per stage with each
// mode's median (and its overhead against the first mode), then the
// stages together, restore.Start and planning with their 10th and 90th
// percentiles, and the paired overheads; then, for each mode, when each
// task arrived at each stage, and the steps' time side by side.
func (rep *Report) Markdown(w io.Writer) error {
	var b strings.Builder
	what := rep.Dir
	if rep.Workload != "" {
		what = "workload " + rep.Workload
	}
	fmt.Fprintf(&b, "crest bench: %s (%s, %s), %d restores per mode in shuffled rounds",
		what, plural(rep.Tasks, "task"), plural(rep.Threads, "thread"), rep.Runs)
	if rep.Settle > 0 {
		fmt.Fprintf(&b, ", %v apart", rep.Settle)
	}
	if d := rep.Dump; d != nil {
		fmt.Fprintf(&b, "\ndumped once with crest dump in %s (the tree frozen %s): %d pages of the tasks' own memory (%.1f MiB), %d of shared memory",
			Format(d.Wall), Format(d.Frozen), d.Pages, float64(d.Bytes)/(1<<20), d.Shared)
	}
	b.WriteString("\n\n")
	tableHead(&b, "stage", "---", rep.modeNames())
	for j, name := range rep.Stages {
		fmt.Fprintf(&b, "| %s |", name)
		for _, m := range rep.Modes {
			fmt.Fprintf(&b, " %s%s |", Format(m.Stages[j].Median), overheadOf(m, j))
		}
		b.WriteString("\n")
	}
	rows := []struct {
		name string
		of   func(ModeReport) Summary
		pct  func(*Overhead) float64
	}{
		{"stages (ROOT_TASK .. COMPLETE)", func(m ModeReport) Summary { return m.Window }, func(o *Overhead) float64 { return o.Window.Estimate }},
		{"restore.Start (launch, stages, finishing)", func(m ModeReport) Summary { return m.Start }, nil},
		{"planning (images and plan)", func(m ModeReport) Summary { return m.Plan }, nil},
	}
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s |", r.name)
		for _, m := range rep.Modes {
			s := r.of(m)
			extra := ""
			if m.Overhead != nil && r.pct != nil {
				extra = fmt.Sprintf(" (%+.1f%%)", r.pct(m.Overhead))
			}
			fmt.Fprintf(&b, " %s%s [%s .. %s] |", Format(s.Median), extra, Format(s.P10), Format(s.P90))
		}
		b.WriteString("\n")
	}
	b.WriteString("\nmedians, [10th .. 90th percentile]\n")
	for _, m := range rep.Modes {
		if o := m.Overhead; o != nil {
			fmt.Fprintf(&b, "%s against %s: stages %+.1f%% (90%% interval %+.1f%% .. %+.1f%%), paired by round %+.1f%% (%+.1f%% .. %+.1f%%), %s%s a restore; restore.Start paired %+.1f%% (%+.1f%% .. %+.1f%%)\n",
				m.Name, o.Against, o.Window.Estimate, o.Window.Lo, o.Window.Hi,
				o.WindowPaired.Estimate, o.WindowPaired.Lo, o.WindowPaired.Hi, sign(o.WindowAdded), Format(o.WindowAdded.Abs()),
				o.StartPaired.Estimate, o.StartPaired.Lo, o.StartPaired.Hi)
		}
	}
	for _, m := range rep.Modes {
		for _, v := range m.Verdicts {
			fmt.Fprintf(&b, "%s: %d of %d restores: %s\n", m.Name, v.N, m.Window.N, v.Verdict)
		}
	}
	for _, m := range rep.Modes {
		rep.taskTable(&b, m)
	}
	rep.stepTable(&b)
	_, err := io.WriteString(w, b.String())
	return err
}

// tableHead writes a Markdown table's head: the first column (aligned as
// align says) and the right-aligned cols.
func tableHead(b *strings.Builder, first, align string, cols []string) {
	fmt.Fprintf(b, "| %s |", first)
	for _, c := range cols {
		fmt.Fprintf(b, " %s |", c)
	}
	fmt.Fprintf(b, "\n| %s |", align)
	for range cols {
		b.WriteString(" ---: |")
	}
	b.WriteString("\n")
}

func (rep *Report) modeNames() []string {
	var names []string
	for _, m := range rep.Modes {
		names = append(names, m.Name)
	}
	return names
}

func overheadOf(m ModeReport, stage int) string {
	if m.Overhead == nil {
		return ""
	}
	return fmt.Sprintf(" (%+.1f%%)", m.Overhead.Stages[stage])
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// Format prints d with a unit that suits it: 12.3 µs, 1.234 ms, 2.50 s.
func Format(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.3f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// taskTable writes when each task arrived at each stage in mode m
// (medians, from the stage's switch): the last to arrive made the stage
// as long as it was.
func (rep *Report) taskTable(b *strings.Builder, m ModeReport) {
	if len(m.Tasks) == 0 {
		return
	}
	fmt.Fprintf(b, "\n%s: each task's arrival, from the stage's switch (medians)\n\n", m.Name)
	tableHead(b, "task", "---:", rep.Stages)
	for _, t := range m.Tasks {
		fmt.Fprintf(b, "| %d |", t.PID)
		for _, s := range t.Stages {
			if s.N == 0 {
				b.WriteString(" - |")
				continue
			}
			fmt.Fprintf(b, " %s |", Format(s.Median))
		}
		b.WriteString("\n")
	}
}

// stepTable writes each step's time per restore, summed over the tasks
// (medians), side by side for the modes.
func (rep *Report) stepTable(b *strings.Builder) {
	var names []string
	for _, m := range rep.Modes {
		for _, st := range m.Steps {
			if !slices.Contains(names, st.Name) {
				names = append(names, st.Name)
			}
		}
	}
	if len(names) == 0 {
		return
	}
	slices.Sort(names)
	b.WriteString("\nsteps: time per restore, summed over the tasks that ran them (medians)\n\n")
	tableHead(b, "step", "---", rep.modeNames())
	for _, name := range names {
		fmt.Fprintf(b, "| %s |", name)
		for _, m := range rep.Modes {
			i := slices.IndexFunc(m.Steps, func(s StepReport) bool { return s.Name == name })
			if i < 0 {
				b.WriteString(" - |")
				continue
			}
			fmt.Fprintf(b, " %s |", Format(m.Steps[i].Time.Median))
		}
		b.WriteString("\n")
	}
}

func sign(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return "+"
}
