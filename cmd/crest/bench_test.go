package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/crest-restore/crest/bench"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/procscan"
)

func runBench(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"bench"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// benchReset is a --reset that puts the fixture's files back (this test
// process holds the fixtures' lock).
func benchReset(t *testing.T, name string) string {
	fixture.Lock(t)
	return "sh " + filepath.Join(fixture.Require(t), "install.sh") + " " + name
}

// noneLeft fails t if a restored tree of fixture name or a pin directory
// of bench's is still there.
func noneLeft(t *testing.T, name string) {
	t.Helper()
	left, err := procscan.Find(procscan.Under(filepath.Join(fixture.OptDir, name)))
	if err != nil || len(left) > 0 {
		t.Errorf("processes left: %v %v", left, err)
	}
	if pins, _ := filepath.Glob("/sys/fs/bpf/crest-bench-*"); len(pins) > 0 {
		t.Errorf("pin directories left: %v", pins)
	}
}

// TestBenchJSON: every restore of every mode is in the report, each stage
// timed, and the watched mode compared with the plain one; nothing of the
// restores is left.
func TestBenchJSON(t *testing.T) {
	needRoot(t)
	for _, name := range []string{"counter", "tree"} {
		t.Run(name, func(t *testing.T) {
			code, stdout, stderr := runBench("-D", fixture.Images(t, name), "--runs", "3", "--verify", "--settle", "0",
				"--reset", benchReset(t, name), "--json")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var rep bench.Report
			if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
				t.Fatalf("%v: %s", err, stdout)
			}
			if rep.Runs != 3 || len(rep.Samples) != 6 || len(rep.Modes) != 2 || rep.Modes[0].Name != "plain" || rep.Modes[1].Name != "verify" {
				t.Fatalf("runs %d, %d samples, modes %+v: want 3 runs of plain and verify", rep.Runs, len(rep.Samples), rep.Modes)
			}
			wantStages := []string{"ROOT_TASK", "PREPARE_NAMESPACES", "FORKING", "RESTORE", "RESTORE_SIGCHLD", "RESTORE_CREDS", "COMPLETE"}
			if strings.Join(rep.Stages, ",") != strings.Join(wantStages, ",") {
				t.Errorf("stages %v", rep.Stages)
			}
			rounds := map[string][]int{}
			for _, s := range rep.Samples {
				rounds[s.Mode] = append(rounds[s.Mode], s.Round)
				var sum time.Duration
				for j, d := range s.Stages {
					if d <= 0 {
						t.Errorf("%s round %d: %s took %v", s.Mode, s.Round, rep.Stages[j], d)
					}
					sum += d
				}
				// the stages follow one another: together they are
				// the window, less the engine's gaps between them
				if len(s.Stages) != len(wantStages) || s.Window < sum || s.Start < s.Window || s.Plan <= 0 {
					t.Errorf("%s round %d: stages %v (sum %v), window %v, start %v, plan %v", s.Mode, s.Round, s.Stages, sum, s.Window, s.Start, s.Plan)
				}
				// every task arrives at FORKING and after, no later
				// than the stage ended; only the root before
				for i, task := range s.Tasks {
					for j, d := range task.Stages {
						takesPart := j >= 2 || i == 0
						if takesPart != (d > 0) || d > s.Stages[j] {
							t.Errorf("%s round %d: task %d arrived %v into %s (which took %v)", s.Mode, s.Round, task.PID, d, wantStages[j], s.Stages[j])
						}
					}
				}
				if s.Steps["memory"] <= 0 || s.Steps["sigreturn"] <= 0 {
					t.Errorf("%s round %d: steps %v", s.Mode, s.Round, s.Steps)
				}
			}
			for _, m := range []string{"plain", "verify"} {
				if len(rounds[m]) != 3 {
					t.Errorf("%s ran in rounds %v, want 0, 1, 2", m, rounds[m])
				}
			}
			for _, m := range rep.Modes {
				if m.Window.N != 3 || len(m.Stages) != len(wantStages) || m.Window.Min > m.Window.Median || m.Window.Median > m.Window.Max {
					t.Errorf("mode %s: window %+v", m.Name, m.Window)
				}
			}
			if o := rep.Modes[1].Overhead; o == nil || o.Against != "plain" || len(o.Stages) != len(wantStages) ||
				o.WindowPaired.Lo > o.WindowPaired.Estimate || o.WindowPaired.Estimate > o.WindowPaired.Hi {
				t.Errorf("verify's overhead: %+v", o)
			}
			if rep.Modes[0].Overhead != nil {
				t.Errorf("plain has an overhead against itself: %+v", rep.Modes[0].Overhead)
			}
			// each watched restore has the monitor's clean verdict, a
			// plain one none
			clean := verifyFixtures[slices.IndexFunc(verifyFixtures, func(f struct{ name, verdict string }) bool { return f.name == name })].verdict
			for _, s := range rep.Samples {
				if want := map[string]string{"verify": clean}[s.Mode]; s.Verdict != want {
					t.Errorf("%s round %d: verdict %q, want %q", s.Mode, s.Round, s.Verdict, want)
				}
			}
			if v := rep.Modes[1].Verdicts; len(v) != 1 || v[0] != (bench.VerdictCount{Verdict: clean, N: 3}) || rep.Modes[0].Verdicts != nil {
				t.Errorf("verdicts: plain %+v, verify %+v; want %q for all 3 of verify", rep.Modes[0].Verdicts, v, clean)
			}
			wantTasks := map[string]int{"counter": 1, "tree": 4}[name]
			if rep.Tasks != wantTasks {
				t.Errorf("%d tasks, want %d", rep.Tasks, wantTasks)
			}
			for _, m := range rep.Modes {
				if len(m.Tasks) != wantTasks || m.Tasks[0].PID != 1 || m.Tasks[0].Stages[0].N != 3 {
					t.Errorf("mode %s: tasks %+v", m.Name, m.Tasks)
				}
				if i := slices.IndexFunc(m.Steps, func(s bench.StepReport) bool { return s.Name == "memory" }); i < 0 || m.Steps[i].Time.N != 3 {
					t.Errorf("mode %s: steps %+v", m.Name, m.Steps)
				}
			}
			noneLeft(t, name)
		})
	}
}

// TestBenchTable: the default output is a Markdown table with a row per
// stage, and a plain-only run has no overheads.
func TestBenchTable(t *testing.T) {
	needRoot(t)
	svg := filepath.Join(t.TempDir(), "bench.svg")
	code, stdout, stderr := runBench("-D", fixture.Images(t, "counter"), "--runs", "2", "--warmup", "0", "--settle", "1ms",
		"--reset", benchReset(t, "counter"), "--svg", svg)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"(1 task, 1 thread), 2 restores per mode", "| stage | plain |", "| ROOT_TASK | ",
		"| COMPLETE | ", "| stages (ROOT_TASK .. COMPLETE) | ", "| restore.Start", "plain: each task's arrival", "\n| 1 | ",
		"| step | plain |", "\n| memory | "} {
		if !strings.Contains(stdout, want) {
			t.Errorf("no %q in\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "against") || strings.Contains(stdout, "%") {
		t.Errorf("a plain-only report with overheads:\n%s", stdout)
	}
	// the plot: well-formed, a bar for each stage and a box for the mode
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(b))
	rects := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", svg, err)
		}
		if el, ok := tok.(xml.StartElement); ok && el.Name.Local == "rect" {
			rects++
		}
	}
	// 7 stage bars, 1 box, 7 legend swatches
	if rects != 15 || !strings.Contains(string(b), "plain COMPLETE: ") {
		t.Errorf("%s: %d rects, want 15:\n%s", svg, rects, b)
	}
	noneLeft(t, "counter")
}

// TestBenchErrors: bad usage exits 2; a failing --reset or restore ends
// the benchmark with an error naming the run, and leaves nothing behind.
func TestBenchErrors(t *testing.T) {
	needRoot(t)
	images := fixture.Images(t, "counter")
	usage := [][]string{
		{},
		{"-D", images, "--workload", "tasks=2"},
		{"--workload", "tasks=0"},
		{"--workload", "cpus=2"},
		{"-D", images, "--runs", "0"},
		{"-D", images, "--verify-pins", "/sys/fs/bpf/x"},
		{"-D", images, "--warmup", "-1"},
		{"-D", images, "extra"},
		{"-D", images, "--criu", "/bin/true", "--verify"},
		{"-D", images, "--criu", "/bin/true", "--svg", "x.svg"},
	}
	for _, args := range usage {
		if code, _, stderr := runBench(args...); code != 2 || !strings.HasPrefix(stderr, "crest bench: ") {
			t.Errorf("%q: exit %d, %q; want usage (2)", args, code, stderr)
		}
	}
	// a plot that can not be written fails before any restore
	badSVG := filepath.Join(t.TempDir(), "missing", "bench.svg")
	code, _, stderr := runBench("-D", images, "--runs", "2", "--reset", "echo restored >&2; exit 3", "--svg", badSVG)
	if code != 1 || !strings.Contains(stderr, badSVG) || strings.Contains(stderr, "restored") {
		t.Errorf("unwritable --svg: exit %d, %q", code, stderr)
	}
	// a failing restore leaves no plot behind
	svg := filepath.Join(t.TempDir(), "bench.svg")
	code, _, stderr = runBench("-D", images, "--runs", "2", "--reset", "echo no such fixture >&2; exit 3", "--svg", svg)
	if _, err := os.Stat(svg); !os.IsNotExist(err) {
		t.Errorf("a failed bench left %s (%v)", svg, err)
	}
	if code != 1 || !strings.Contains(stderr, "warm-up run 1 of 1, plain: reset:") || !strings.Contains(stderr, "no such fixture") {
		t.Errorf("failing reset: exit %d, %q", code, stderr)
	}
	// a file of the tree's is gone: the restore fails, in the first run,
	// naming it
	fixture.Install(t, "counter")
	prog := filepath.Join(fixture.OptDir, "counter", "prog")
	if err := os.Rename(prog, prog+".gone"); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runBench("-D", images, "--runs", "1", "--warmup", "0", "--verify")
	if err := os.Rename(prog+".gone", prog); err != nil {
		t.Fatal(err)
	}
	// (after a warning that the machine has no BPF file system, where it
	// has none)
	if code != 1 || !strings.HasPrefix(stderr, "crest bench: run 1 of 1, ") && !strings.Contains(stderr, "\ncrest bench: run 1 of 1, ") || !strings.Contains(stderr, prog) {
		t.Errorf("restore failing: exit %d, %q", code, stderr)
	}
	noneLeft(t, "counter")
}

// TestBenchWorkload: bench makes its own tree, dumps it, restores it in
// both modes without a finding, and removes everything.
func TestBenchWorkload(t *testing.T) {
	needRoot(t)
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), "crest-bench-*"))
	code, stdout, stderr := runBench("--workload", "tasks=2,threads=2,mem=256K,fds=2,pipes=1", "--runs", "2", "--verify", "--settle", "0", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	if rep.Workload != "tasks=2,threads=2,mem=256K,fds=2,pipes=1" || rep.Tasks != 2 || rep.Threads != 4 || len(rep.Samples) != 4 {
		t.Errorf("workload %q: %d tasks, %d threads, %d samples", rep.Workload, rep.Tasks, rep.Threads, len(rep.Samples))
	}
	if d := rep.Dump; d == nil || d.Bytes < 2*256<<10 || d.Wall <= 0 {
		t.Errorf("the workload's dump: %+v, want its time and at least the tasks' 512 KiB", d)
	}
	after, _ := filepath.Glob(filepath.Join(os.TempDir(), "crest-bench-*"))
	if len(after) != len(before) {
		t.Errorf("bench's directories left: %v (before: %v)", after, before)
	}
	workloads := func(p procscan.Process) bool { return strings.Contains(p.Exe, "/crest-bench-") }
	if left, err := procscan.Find(workloads); err != nil || len(left) > 0 {
		t.Errorf("processes left: %v %v", left, err)
	}
	noneLeft(t, "counter")
}
