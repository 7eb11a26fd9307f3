package bench

import (
	"fmt"
	"html"
	"io"
	"strings"
	"time"
)

// stageColors tell the stages apart in the plots, in Stages' order.
var stageColors = []string{"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1"}

// SVG draws the report: for every mode a bar of its stages' medians, one
// after the other, and beneath it the spread of the stages together (10th
// to 90th percentile as a box, the median as a line, minimum and maximum
// as whiskers), all on one time axis.
func (rep *Report) SVG(w io.Writer) error {
	const (
		width, left, right = 900, 120, 30
		barH, rowGap, top  = 22, 14, 50
	)
	rows := len(rep.Modes)
	height := top + 2*rows*(barH+rowGap) + 120
	var scale time.Duration
	for _, m := range rep.Modes {
		scale = max(scale, m.Window.Max)
		var sum time.Duration
		for _, s := range m.Stages {
			sum += s.Median
		}
		scale = max(scale, sum)
	}
	if scale == 0 {
		scale = time.Millisecond
	}
	x := func(d time.Duration) float64 { return left + float64(d)/float64(scale)*(width-left-right) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	title := rep.Dir
	if rep.Workload != "" {
		title = "workload " + rep.Workload
	}
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14">crest bench: %s, %d restores per mode</text>`+"\n", left, html.EscapeString(title), rep.Runs)
	y := top
	b.WriteString(`<text x="10" y="40" font-weight="bold">stages (medians)</text>` + "\n")
	for _, m := range rep.Modes {
		fmt.Fprintf(&b, `<text x="10" y="%d">%s</text>`+"\n", y+barH-6, html.EscapeString(m.Name))
		var at time.Duration
		for j, s := range m.Stages {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s %s: %s</title></rect>`+"\n",
				x(at), y, x(at+s.Median)-x(at), barH, stageColors[j%len(stageColors)],
				html.EscapeString(m.Name), rep.Stages[j], Format(s.Median))
			at += s.Median
		}
		y += barH + rowGap
	}
	y += 10
	fmt.Fprintf(&b, `<text x="10" y="%d" font-weight="bold">stages together: 10th-90th percentile, median, min and max</text>`+"\n", y)
	y += 10
	for _, m := range rep.Modes {
		s, mid := m.Window, y+barH/2
		fmt.Fprintf(&b, `<text x="10" y="%d">%s</text>`+"\n", y+barH-6, html.EscapeString(m.Name))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#555"/>`+"\n", x(s.Min), mid, x(s.Max), mid)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#cfd8e3" stroke="#555"><title>%s: %s .. %s</title></rect>`+"\n",
			x(s.P10), y, x(s.P90)-x(s.P10), barH, html.EscapeString(m.Name), Format(s.P10), Format(s.P90))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000" stroke-width="2"><title>median %s</title></line>`+"\n",
			x(s.Median), y, x(s.Median), y+barH, Format(s.Median))
		y += barH + rowGap
	}
	// the axis, with five ticks
	y += 5
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#000"/>`+"\n", left, y, width-right, y)
	for i := 0; i <= 4; i++ {
		d := scale * time.Duration(i) / 4
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n",
			x(d), y, x(d), y+5, x(d), y+18, Format(d))
	}
	// the legend
	y += 40
	for j, name := range rep.Stages {
		lx := left + (j%4)*190
		ly := y + (j/4)*18
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			lx, ly-10, stageColors[j%len(stageColors)], lx+16, ly, name)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
