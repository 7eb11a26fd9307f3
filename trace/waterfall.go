package trace

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/attribute"
)

// maxTasksShown bounds the task lines of one stage in the waterfall; the
// slowest are kept.
const maxTasksShown = 12

// WriteWaterfall prints the trace as a waterfall: the root, then every
// phase and stage with its tasks, bars scaled to the root's time, the
// slowest task of each stage marked and its steps (and a failed task's)
// shown below it. Kernel events are not lines of their own: each task's
// line ends with a summary of what the kernel saw it do in that stage
// ("clone3, futex_wait ×2"), the stage's line with the engine's, and the
// engine's steps before the first stage are lines under "prepare".
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
	line := func(indent int, name string, s *Span, marks ...string) {
		label := strings.Repeat("  ", indent) + name
		if n := len([]rune(label)); n > labelW {
			label = string([]rune(label)[:labelW-1]) + "…"
		}
		if s.Err != "" {
			marks = append(marks, "✗ "+s.Err)
		}
		var ms []string
		for _, m := range marks {
			if m != "" {
				ms = append(ms, m)
			}
		}
		fmt.Fprintln(bw, strings.TrimRight(fmt.Sprintf("%-*s %*s │%s│ %s", labelW, label, durW,
			fmtDuration(s.Duration()), bar(s), strings.Join(ms, "  ")), " "))
	}

	fmt.Fprintf(bw, "%s\n", t.headline())
	line(0, "total", root, kernelSummary(root, false))
	for _, c := range root.Children {
		if c.Kind == KindKernel {
			continue // summarised on the total line
		}
		if c.Kind != KindStage {
			line(0, c.Name, c, kernelSummary(c, true))
			for _, s := range c.Children {
				if s.Kind == KindStep {
					line(1, fmt.Sprintf("task %d %s", s.PID, s.Name), s)
				}
			}
			continue
		}
		var tasks []*Span
		for _, p := range c.Children {
			if p.Kind == KindTask {
				tasks = append(tasks, p)
			}
		}
		line(0, c.Name, c, kernelSummary(c, false))
		var slowest *Span
		for _, p := range tasks {
			if slowest == nil || p.Duration() > slowest.Duration() {
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
			line(1, p.Name, p, mark, taskKernelSummary(c, p))
			if p == slowest || p.Err != "" {
				for _, s := range p.Children {
					if s.Kind == KindStep {
						line(2, s.Name, s)
					}
				}
			}
		}
		if n := len(tasks) - len(shown); n > 0 {
			fmt.Fprintf(bw, "  … %d more\n", n)
		}
		for _, s := range c.Children {
			if s.Kind == KindStep {
				line(1, "engine: "+s.Name, s, fmt.Sprintf("for task %d", s.PID))
			}
		}
	}
	return bw.Flush()
}

// kernelTally counts kernel events by kind, in the order of their first
// appearance.
type kernelTally struct {
	kinds []string
	n     map[string]int
}

func (k *kernelTally) add(kind string) {
	if k.n == nil {
		k.n = map[string]int{}
	}
	if k.n[kind] == 0 {
		k.kinds = append(k.kinds, kind)
	}
	k.n[kind]++
}

func (k *kernelTally) String() string {
	var parts []string
	for _, kind := range k.kinds {
		if n := k.n[kind]; n > 1 {
			parts = append(parts, fmt.Sprintf("%s ×%d", kind, n))
		} else {
			parts = append(parts, kind)
		}
	}
	return strings.Join(parts, ", ")
}

// kernelOf calls fn for every kernel event directly on s: its kernel
// child spans and its span events.
func kernelOf(s *Span, fn func(name string, pid, tid int, attrs []attribute.KeyValue)) {
	for _, c := range s.Children {
		if c.Kind == KindKernel {
			fn(c.Name, c.PID, c.TID, c.Attrs)
		}
	}
	for _, e := range s.Events {
		fn(e.Name, int(attr(e.Attrs, keyVPID).AsInt64()), 0, e.Attrs)
	}
}

// kernelSummary summarises the kernel events on s that belong to no task
// of it: the engine's ("engine: futex ×2") and other processes' ("pid
// 4242: setns"). all also counts those of tasks (a phase has no task
// lines to carry them).
func kernelSummary(s *Span, all bool) string {
	var order []string
	tallies := map[string]*kernelTally{}
	kernelOf(s, func(name string, pid, _ int, attrs []attribute.KeyValue) {
		who := ""
		switch {
		case attr(attrs, keyEngine).AsBool():
			who = "engine"
		case pid != 0 && (all || s.Kind != KindStage || !hasTask(s, pid)):
			who = fmt.Sprintf("task %d", pid)
		case pid != 0:
			return // on the task's line
		default:
			who = fmt.Sprintf("pid %d", attr(attrs, keyPID).AsInt64())
		}
		if tallies[who] == nil {
			tallies[who] = &kernelTally{}
			order = append(order, who)
		}
		tallies[who].add(name)
	})
	var parts []string
	for _, who := range order {
		parts = append(parts, who+": "+tallies[who].String())
	}
	return strings.Join(parts, "; ")
}

func hasTask(st *Span, pid int) bool {
	for _, p := range st.Children {
		if p.Kind == KindTask && p.PID == pid {
			return true
		}
	}
	return false
}

// taskKernelSummary summarises what the kernel saw task span p do in
// stage st: its own kernel spans and events, and those on the stage
// (after its arrival, at the barrier) that name its thread, or its task
// when p is the leader's span.
func taskKernelSummary(st, p *Span) string {
	var k kernelTally
	kernelOf(p, func(name string, _, _ int, _ []attribute.KeyValue) { k.add(name) })
	kernelOf(st, func(name string, pid, tid int, attrs []attribute.KeyValue) {
		if pid == 0 || pid != p.PID || attr(attrs, keyEngine).AsBool() {
			return
		}
		if tid == 0 {
			tid = pid
		}
		if tid == p.TID || (p.TID == p.PID && !hasThreadSpan(st, pid, tid)) {
			k.add(name)
		}
	})
	return k.String()
}

// hasThreadSpan reports whether stage st has a span of its own for
// thread tid of task pid.
func hasThreadSpan(st *Span, pid, tid int) bool {
	for _, p := range st.Children {
		if p.Kind == KindTask && p.PID == pid && p.TID == tid {
			return true
		}
	}
	return false
}

func (t *Trace) headline() string {
	var b strings.Builder
	b.WriteString(t.Root.Name)
	get := func(k string) (string, bool) {
		for _, a := range t.Root.Attrs {
			if string(a.Key) == k {
				return a.Value.String(), true
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
	if v, ok := get(string(keyVerdict)); ok && t.Op != OpDump {
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
