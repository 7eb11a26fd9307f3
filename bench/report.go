package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Markdown writes the report as a table: one row per stage with each
// mode's median (and its overhead against the first mode), then the
// stages together, restore.Start and planning with their 10th and 90th
// percentiles, and the paired overheads.
func (rep *Report) Markdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "crest bench: %s (%s, %s), %d restores per mode in shuffled rounds",
		rep.Dir, plural(rep.Tasks, "task"), plural(rep.Threads, "thread"), rep.Runs)
	if rep.Settle > 0 {
		fmt.Fprintf(&b, ", %v apart", rep.Settle)
	}
	b.WriteString("\n\n| stage |")
	for _, m := range rep.Modes {
		fmt.Fprintf(&b, " %s |", m.Name)
	}
	b.WriteString("\n| --- |")
	for range rep.Modes {
		b.WriteString(" ---: |")
	}
	b.WriteString("\n")
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
			fmt.Fprintf(&b, "%s against %s: stages %+.1f%% (90%% interval %+.1f%% .. %+.1f%%), paired by round %+.1f%% (%+.1f%% .. %+.1f%%); restore.Start paired %+.1f%% (%+.1f%% .. %+.1f%%)\n",
				m.Name, o.Against, o.Window.Estimate, o.Window.Lo, o.Window.Hi,
				o.WindowPaired.Estimate, o.WindowPaired.Lo, o.WindowPaired.Hi,
				o.StartPaired.Estimate, o.StartPaired.Lo, o.StartPaired.Hi)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
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
