// Package bench restores an image directory many times and reports how
// long each stage of the restore took: a distribution per stage and per
// mode (a plain restore, one watched by the eBPF monitor ...), side by
// side, when each task arrived at each stage, each step's time, and what
// each mode costs against the first. The modes take turns in shuffled
// rounds, so that the machine's drift falls on all of them alike, and a
// mode's overhead is also given paired by round. A Workload is a tree
// bench makes and dumps itself to restore; a Report prints as Markdown,
// JSON or an SVG plot.
//
// Timings are benchmarks, not tests: nothing here judges a duration.
package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"time"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore"
)

// Mode is one way to restore.
type Mode struct {
	Name string
	// Begin readies the mode for one restore of p. It returns the
	// observer to give the engine (nil: none) and what to call once
	// Start returned (nil: nothing), e.g. to verify and detach a
	// monitor, which returns the mode's verdict on the restore ("": none);
	// an error from either ends the benchmark.
	Begin func(p *restore.Plan) (obs restore.Observer, end End, err error)
}

// End ends a mode's part in one restore: r and startErr are what
// restore.Start returned (r nil when it rolled back), verdict what the
// mode found (the monitor's verdict), if it checks anything.
type End func(r *restore.Restore, startErr error) (verdict string, err error)

// Plain is a restore with nothing attached.
var Plain = Mode{Name: "plain", Begin: func(*restore.Plan) (restore.Observer, End, error) {
	return nil, nil, nil
}}

// Config says what to benchmark and how.
type Config struct {
	Dir      string // the image directory
	Workload string // what made Dir, when bench did (Workload.String)
	// Dump is what bench's dump of the workload took (nil: no workload).
	Dump  *DumpReport
	Runs  int    // restores per mode
	Modes []Mode // the first is what the others are compared with
	// Reset runs before every restore and puts back what the last one
	// changed outside the images (files the tree wrote to); nil: nothing.
	Reset func() error
	// Settle is a pause before each restore, so that none starts while
	// the last one's teardown (the tree's exit, frees the kernel
	// defers) still runs.
	Settle time.Duration
	// Warmup rounds run first and are not reported: the first restores
	// of a process pay for its cold code and caches.
	Warmup int
	Seed   uint64       // the order of the modes in each round
	Log    *slog.Logger // the engine's log (nil: none)
}

// Stages are the stages a report times, in order.
var Stages = []restore.Stage{
	restore.StageRootTask, restore.StagePrepareNamespaces, restore.StageForking, restore.StageRestore,
	restore.StageRestoreSigchld, restore.StageRestoreCreds, restore.StageComplete,
}

// Sample is one restore.
type Sample struct {
	Mode   string          `json:"mode"`
	Round  int             `json:"round"`
	Stages []time.Duration `json:"stages_ns"` // each stage of Stages, from its switch to its last arrival
	Window time.Duration   `json:"window_ns"` // from the switch to ROOT_TASK to the end of COMPLETE
	Start  time.Duration   `json:"start_ns"`  // restore.Start's wall time: launch, stages and finishing
	Plan   time.Duration   `json:"plan_ns"`   // opening the images and planning
	Tasks  []TaskSample    `json:"tasks"`     // in the plan's order
	// Verdict is the mode's verdict on the restore (the monitor's, for
	// --verify); empty for a mode that checks nothing.
	Verdict string `json:"verdict,omitempty"`
	// Steps is the time each step of the agent and the engine took,
	// summed over the tasks and threads that ran it (they run side by
	// side: a sum, not a span of the stages).
	Steps map[string]time.Duration `json:"steps_ns"`
}

// TaskSample is when one task arrived at each stage (the last of its
// threads), counted from the stage's switch; 0 where it takes no part.
type TaskSample struct {
	PID    int             `json:"pid"`
	Stages []time.Duration `json:"stages_ns"` // by Report.Stages
}

// ModeReport is what one mode measured.
type ModeReport struct {
	Name   string       `json:"name"`
	Stages []Summary    `json:"stages"` // by Report.Stages
	Window Summary      `json:"window"`
	Start  Summary      `json:"start"`
	Plan   Summary      `json:"plan"`
	Tasks  []TaskReport `json:"tasks"`
	Steps  []StepReport `json:"steps"` // by name
	// Overhead against the first mode; nil for the first.
	Overhead *Overhead `json:"overhead,omitempty"`
	// Verdicts are the mode's verdicts on its restores, each with how
	// many restores it was given to, in order of first appearance.
	Verdicts []VerdictCount `json:"verdicts,omitempty"`
}

// VerdictCount is a verdict and the number of restores it was given to.
type VerdictCount struct {
	Verdict string `json:"verdict"`
	N       int    `json:"n"`
}

// TaskReport is when a task arrived at each stage, from its switch.
type TaskReport struct {
	PID    int       `json:"pid"`
	Stages []Summary `json:"stages"` // N 0 where it takes no part
}

// StepReport is a step's time per restore, summed over the tasks.
type StepReport struct {
	Name string  `json:"name"`
	Time Summary `json:"time"`
}

// Overhead is a mode's cost against the first mode, in percent.
type Overhead struct {
	Against      string    `json:"against"`
	Stages       []float64 `json:"stages_pct"`    // median against median, by Report.Stages
	Window       Interval  `json:"window"`        // medians, with a bootstrap interval
	WindowPaired Interval  `json:"window_paired"` // the median of the ratios within each round
	StartPaired  Interval  `json:"start_paired"`
	// WindowAdded is what the mode added to the stages in absolute
	// terms: the median of the differences within each round.
	WindowAdded time.Duration `json:"window_added_ns"`
}

// Report is a benchmark's result.
type Report struct {
	Dir      string        `json:"dir"`
	Workload string        `json:"workload,omitempty"`
	Dump     *DumpReport   `json:"dump,omitempty"` // of the workload, once
	Tasks    int           `json:"tasks"`
	Threads  int           `json:"threads"`
	Runs     int           `json:"runs"` // per mode
	Settle   time.Duration `json:"settle_ns"`
	Stages   []string      `json:"stages"`
	Modes    []ModeReport  `json:"modes"`
	Samples  []Sample      `json:"samples"` // every restore, in the order they ran
}

// Run restores cfg.Dir cfg.Runs times in each mode. Every restored tree is
// killed (and gone) before the next restore; a restore that fails, or a
// mode that fails, ends the benchmark with an error naming the run.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Runs < 1 || cfg.Warmup < 0 {
		return nil, fmt.Errorf("bench: %d runs after %d warm-up rounds: need at least one, and no negative warm-up", cfg.Runs, cfg.Warmup)
	}
	if len(cfg.Modes) == 0 {
		return nil, errors.New("bench: no modes")
	}
	seen := map[string]bool{}
	for _, m := range cfg.Modes {
		if m.Name == "" || seen[m.Name] || m.Begin == nil {
			return nil, fmt.Errorf("bench: mode %q: empty, repeated or without Begin", m.Name)
		}
		seen[m.Name] = true
	}
	rep := &Report{Dir: cfg.Dir, Workload: cfg.Workload, Dump: cfg.Dump, Runs: cfg.Runs, Settle: cfg.Settle}
	for _, st := range Stages {
		rep.Stages = append(rep.Stages, st.String())
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x6372657374))
	for round := -cfg.Warmup; round < cfg.Runs; round++ {
		for _, k := range rng.Perm(len(cfg.Modes)) {
			s, p, err := runOnce(ctx, cfg, cfg.Modes[k])
			if err != nil {
				if round < 0 {
					return nil, fmt.Errorf("warm-up run %d of %d, %s: %w", round+cfg.Warmup+1, cfg.Warmup, cfg.Modes[k].Name, err)
				}
				return nil, fmt.Errorf("run %d of %d, %s: %w", round+1, cfg.Runs, cfg.Modes[k].Name, err)
			}
			if round < 0 {
				continue
			}
			s.Round = round
			rep.Samples = append(rep.Samples, s)
			rep.Tasks, rep.Threads = len(p.Tasks), p.NrThreads
		}
	}
	rep.summarize(cfg.Modes, rand.New(rand.NewPCG(cfg.Seed, 1)))
	return rep, nil
}

// runOnce restores once in mode m and kills the tree.
func runOnce(ctx context.Context, cfg Config, m Mode) (Sample, *restore.Plan, error) {
	s := Sample{Mode: m.Name}
	if cfg.Reset != nil {
		if err := cfg.Reset(); err != nil {
			return s, nil, fmt.Errorf("reset: %w", err)
		}
	}
	begin := time.Now()
	d, err := images.Open(cfg.Dir)
	if err != nil {
		return s, nil, err
	}
	p, err := restore.NewPlan(d)
	if err != nil {
		return s, nil, err
	}
	s.Plan = time.Since(begin)
	obs, end, err := m.Begin(p)
	if err != nil {
		return s, p, err
	}
	// A collection must not fall into the stages; the pause after it
	// lets the collector's background work end too.
	runtime.GC()
	if err := sleep(ctx, cfg.Settle); err != nil {
		if end != nil {
			_, eerr := end(nil, err)
			err = errors.Join(err, eerr)
		}
		return s, p, err
	}
	begin = time.Now()
	r, err := restore.Start(ctx, p, restore.Options{Observer: obs, Log: cfg.Log})
	s.Start = time.Since(begin)
	if end != nil {
		verdict, eerr := end(r, err)
		s.Verdict = verdict
		err = errors.Join(err, eerr)
	}
	if r == nil {
		return s, p, err // Start rolled back
	}
	tl := r.Timeline()
	if aerr := r.Abort(); aerr != nil {
		err = errors.Join(err, fmt.Errorf("killing the restored tree: %w", aerr))
	}
	if err != nil {
		return s, p, err
	}
	for _, st := range Stages {
		span := tl.Stage(st)
		if span == nil || span.Done == 0 {
			return s, p, fmt.Errorf("the engine's timeline has no end of %v", st)
		}
		s.Stages = append(s.Stages, time.Duration(span.Done-span.Switched))
	}
	first, last := tl.Stage(Stages[0]), tl.Stage(Stages[len(Stages)-1])
	s.Window = time.Duration(last.Done - first.Switched)
	s.Tasks = taskSamples(p, tl)
	s.Steps = map[string]time.Duration{}
	for _, st := range tl.Steps {
		if st.Succeeded && st.End >= st.Begin {
			s.Steps[st.Step] += time.Duration(st.End - st.Begin)
		}
	}
	return s, p, nil
}

// taskSamples is when each task of p arrived at each stage of tl.
func taskSamples(p *restore.Plan, tl *restore.Timeline) []TaskSample {
	index := map[int]int{}
	out := make([]TaskSample, len(p.Tasks))
	for i, t := range p.Tasks {
		index[t.PID] = i
		out[i] = TaskSample{PID: t.PID, Stages: make([]time.Duration, len(Stages))}
	}
	for _, a := range tl.Arrivals {
		i, ok := index[a.PID]
		j := slices.Index(Stages, a.Stage)
		span := tl.Stage(a.Stage)
		if !ok || j < 0 || span == nil || a.At < span.Switched {
			continue
		}
		out[i].Stages[j] = max(out[i].Stages[j], time.Duration(a.At-span.Switched))
	}
	return out
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// summarize fills rep.Modes from rep.Samples.
func (rep *Report) summarize(modes []Mode, rng *rand.Rand) {
	type series struct {
		stages              [][]time.Duration
		window, start, plan []time.Duration
	}
	by := make([]series, len(modes))
	index := map[string]int{}
	for i, m := range modes {
		index[m.Name] = i
		by[i].stages = make([][]time.Duration, len(Stages))
		// window and start in round order, for the pairing
		by[i].window = make([]time.Duration, rep.Runs)
		by[i].start = make([]time.Duration, rep.Runs)
	}
	for _, s := range rep.Samples {
		x := &by[index[s.Mode]]
		for j, d := range s.Stages {
			x.stages[j] = append(x.stages[j], d)
		}
		x.window[s.Round], x.start[s.Round] = s.Window, s.Start
		x.plan = append(x.plan, s.Plan)
	}
	for i, m := range modes {
		mr := ModeReport{Name: m.Name, Window: Summarize(by[i].window), Start: Summarize(by[i].start), Plan: Summarize(by[i].plan)}
		for _, ds := range by[i].stages {
			mr.Stages = append(mr.Stages, Summarize(ds))
		}
		mr.Tasks, mr.Steps, mr.Verdicts = rep.perTask(m.Name), rep.perStep(m.Name), rep.verdicts(m.Name)
		if i > 0 {
			base := rep.Modes[0]
			o := &Overhead{
				Against:      base.Name,
				Window:       RatioInterval(rng, by[0].window, by[i].window),
				WindowPaired: PairedInterval(rng, by[0].window, by[i].window),
				StartPaired:  PairedInterval(rng, by[0].start, by[i].start),
				WindowAdded:  pairedDelta(by[0].window, by[i].window),
			}
			for j := range Stages {
				o.Stages = append(o.Stages, pct(base.Stages[j].Median, mr.Stages[j].Median))
			}
			mr.Overhead = o
		}
		rep.Modes = append(rep.Modes, mr)
	}
}

func pct(base, d time.Duration) float64 {
	if base == 0 {
		return 0
	}
	return 100 * (float64(d)/float64(base) - 1)
}

// verdicts counts mode's verdicts, in order of first appearance.
func (rep *Report) verdicts(mode string) []VerdictCount {
	var out []VerdictCount
	for _, s := range rep.Samples {
		if s.Mode != mode || s.Verdict == "" {
			continue
		}
		k := slices.IndexFunc(out, func(v VerdictCount) bool { return v.Verdict == s.Verdict })
		if k < 0 {
			k = len(out)
			out = append(out, VerdictCount{Verdict: s.Verdict})
		}
		out[k].N++
	}
	return out
}

// perTask summarizes the tasks' arrivals in mode's samples.
func (rep *Report) perTask(mode string) []TaskReport {
	var pids []int
	byPID := map[int][][]time.Duration{} // pid -> stage -> arrivals
	for _, s := range rep.Samples {
		if s.Mode != mode {
			continue
		}
		for _, t := range s.Tasks {
			v, ok := byPID[t.PID]
			if !ok {
				pids = append(pids, t.PID)
				v = make([][]time.Duration, len(Stages))
				byPID[t.PID] = v
			}
			for j, d := range t.Stages {
				if d > 0 {
					v[j] = append(v[j], d)
				}
			}
		}
	}
	var out []TaskReport
	for _, pid := range pids {
		tr := TaskReport{PID: pid}
		for _, ds := range byPID[pid] {
			tr.Stages = append(tr.Stages, Summarize(ds))
		}
		out = append(out, tr)
	}
	return out
}

// perStep summarizes the steps' time per restore in mode's samples.
func (rep *Report) perStep(mode string) []StepReport {
	times := map[string][]time.Duration{}
	for _, s := range rep.Samples {
		if s.Mode != mode {
			continue
		}
		for name, d := range s.Steps {
			times[name] = append(times[name], d)
		}
	}
	var out []StepReport
	for _, name := range slices.Sorted(maps.Keys(times)) {
		out = append(out, StepReport{Name: name, Time: Summarize(times[name])})
	}
	return out
}

// pairedDelta is the median of b[i]-a[i].
func pairedDelta(a, b []time.Duration) time.Duration {
	n := min(len(a), len(b))
	d := make([]time.Duration, n)
	for i := range n {
		d[i] = b[i] - a[i]
	}
	return Median(d)
}
