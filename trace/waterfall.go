package trace

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
)

// maxTasksShown bounds the task lines of one stage in the waterfall; the
// slowest are kept.
const maxTasksShown = 12

// WriteWaterfall prints the trace as a waterfall: the root, then every
// phase and stage with its tasks, bars scaled to the root's time, the
// slowest task of each stage marked and its steps (and a failed task's)
// shown below it.
func (t *Trace) WriteWaterfall(w io.Writer, width int) error {
	if width <= 0 {
		width = 100
	}
	const labelW, durW = 30, 11
	barW := max(width-labelW-durW-14, 10)
	root := t.Root
	total := root.Duration()
	bw := bufio.NewWriter(w)

	bar := func(s *Span) string {
		if total == 0 {
			return strings.Repeat(" ", barW)
		}
		from := int(float64(s.Start-root.Start) / float64(total) * float64(barW))
		to := int((float64(s.End-root.Start)/float64(total))*float64(barW) + 0.999)
		from = min(max(from, 0), barW-1)
		to = min(max(to, from+1), barW)
		return strings.Repeat(" ", from) + strings.Repeat("█", to-from) + strings.Repeat(" ", barW-to)
	}
	line := func(indent int, name string, s *Span, mark string) {
		label := strings.Repeat("  ", indent) + name
		if n := len([]rune(label)); n > labelW {
			label = string([]rune(label)[:labelW-1]) + "…"
		}
		if s.Err != "" {
			mark = strings.TrimSpace(mark + " ✗ " + s.Err)
		}
		fmt.Fprintln(bw, strings.TrimRight(fmt.Sprintf("%-*s %*s │%s│ %s", labelW, label, durW, fmtDuration(s.Duration()), bar(s), mark), " "))
	}

	fmt.Fprintf(bw, "%s\n", t.headline())
	line(0, "total", root, "")
	for _, c := range root.Children {
		line(0, c.Name, c, "")
		if c.Kind != KindStage {
			continue
		}
		tasks := c.Children
		var slowest *Span
		for _, p := range tasks {
			if p.Kind == KindTask && (slowest == nil || p.Duration() > slowest.Duration()) {
				slowest = p
			}
		}
		shown := tasks
		if len(tasks) > maxTasksShown {
			shown = slices.Clone(tasks)
			slices.SortStableFunc(shown, func(x, y *Span) int { return cmp.Compare(y.Duration(), x.Duration()) })
			shown = shown[:maxTasksShown]
			slices.SortStableFunc(shown, func(x, y *Span) int {
				return cmp.Or(cmp.Compare(x.PID, y.PID), cmp.Compare(x.TID, y.TID))
			})
		}
		for _, p := range shown {
			mark := ""
			if p == slowest && len(tasks) > 1 {
				mark = "◀ slowest"
			}
			line(1, p.Name, p, mark)
			if p == slowest || p.Err != "" {
				for _, s := range p.Children {
					line(2, s.Name, s, "")
				}
			}
		}
		if n := len(tasks) - len(shown); n > 0 {
			fmt.Fprintf(bw, "  … %d more\n", n)
		}
	}
	return bw.Flush()
}

func (t *Trace) headline() string {
	var b strings.Builder
	b.WriteString(t.Root.Name)
	get := func(k string) (string, bool) {
		for _, a := range t.Root.Attrs {
			if string(a.Key) == k {
				return a.Value.Emit(), true
			}
		}
		return "", false
	}
	if v, _ := get(string(keyImagesDir)); v != "" {
		fmt.Fprintf(&b, "  %s", v)
	}
	for _, k := range []struct{ key, label string }{
		{string(keyTasks), "tasks"}, {string(keyThreads), "threads"}, {string(keyPages), "pages"},
	} {
		if v, ok := get(k.key); ok {
			fmt.Fprintf(&b, "  %s %s", k.label, v)
		}
	}
	if v, ok := get(string(keyBytes)); ok && v != "0" {
		fmt.Fprintf(&b, " (%s bytes)", v)
	}
	if v, ok := get(string(keyVerdict)); ok {
		fmt.Fprintf(&b, "  verification: %s", v)
	}
	return b.String()
}

func fmtDuration(ns uint64) string {
	switch {
	case ns >= 1e9:
		return fmt.Sprintf("%.3f s", float64(ns)/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%.3f ms", float64(ns)/1e6)
	default:
		return fmt.Sprintf("%.1f µs", float64(ns)/1e3)
	}
}
