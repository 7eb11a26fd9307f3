package main

import (
	"context"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/crest-restore/crest/bpf"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore"
	"github.com/crest-restore/crest/test/fixture"
)

// costRuns is how many restores BenchmarkStageCost makes of each fixture
// in each mode (CREST_COST_RUNS, default 60).
func costRuns(def int) int {
	if n, err := strconv.Atoi(os.Getenv("CREST_COST_RUNS")); err == nil && n > 0 {
		return n
	}
	return def
}

func medianOf(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// BenchmarkStageCost measures what the monitor costs a restore's own
// stages, in this process, for counter and tree (run with -benchtime=1x):
// each stage's duration (switch to last arrival, from the engine's
// Timeline) and ROOT_TASK..COMPLETE, with no monitor, with the monitor
// attached but tracking nothing (what its programs cost every syscall of
// the machine), and with the monitor watching the restore (--verify's
// kernelCheck, verification included). The three kinds are interleaved
// so that the machine's other load falls on all of them alike; medians.
func BenchmarkStageCost(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("needs root")
	}
	fixture.Require(b)
	runs := costRuns(60)
	// CREST_COST_GC=1 collects garbage before each restore, so that a
	// collection the monitor's loading set off does not fall in it.
	gcFirst := os.Getenv("CREST_COST_GC") == "1"
	// CREST_COST_SETTLE=20ms waits that long before each restore.
	settle, _ := time.ParseDuration(os.Getenv("CREST_COST_SETTLE"))
	kinds := []string{"plain", "untracked", "watched", "floor"}
	pct := func(a, b time.Duration) float64 { return 100 * (float64(b)/float64(a) - 1) }
	for b.Loop() {
		for _, name := range []string{"counter", "tree"} {
			stages := map[restore.Stage][][]time.Duration{}
			total := make([][]time.Duration, len(kinds))
			for i := range len(kinds) * runs {
				kind := i % len(kinds)
				fixture.Install(b, name)
				d, err := images.Open(fixture.Images(b, name))
				if err != nil {
					b.Fatal(err)
				}
				p, err := restore.NewPlan(d)
				if err != nil {
					b.Fatal(err)
				}
				tl := &restore.Timeline{}
				opts := restore.Options{Observer: tl}
				var kc *kernelCheck
				var idle *bpf.Monitor
				var floor func()
				switch kinds[kind] {
				case "floor":
					floor = emptySyscallPrograms(b)
				case "untracked":
					if idle, err = bpf.Open(bpf.Options{}); err != nil {
						b.Fatal(err)
					}
				case "watched":
					kc = startKernelCheck(verifyOptions{mode: "on"})
					if err := kc.ready(); err != nil {
						b.Fatal(err)
					}
					opts.Observer = observerList{kc, tl}
				}
				if gcFirst {
					runtime.GC()
				}
				time.Sleep(settle)
				r, err := restore.Start(context.Background(), p, opts)
				if err != nil {
					b.Fatal(err)
				}
				if kc != nil {
					if err := kc.verify(p); err != nil || !kc.report.OK {
						b.Fatalf("verify: %v %q", err, kc.report.Verdict)
					}
					kc.close()
				}
				if idle != nil {
					idle.Close()
				}
				if floor != nil {
					floor()
				}
				if err := r.Abort(); err != nil {
					b.Fatal(err)
				}
				for _, s := range tl.Stages {
					v := stages[s.Stage]
					if v == nil {
						v = make([][]time.Duration, len(kinds))
					}
					v[kind] = append(v[kind], time.Duration(s.Done-s.Switched))
					stages[s.Stage] = v
				}
				total[kind] = append(total[kind], time.Duration(tl.Stage(restore.StageComplete).Done-tl.Stages[0].Switched))
			}
			sum := make([]time.Duration, len(kinds))
			for st := restore.StageRootTask; st <= restore.StageComplete; st++ {
				v := stages[st]
				if v == nil {
					continue
				}
				for k := range kinds {
					sum[k] += medianOf(v[k])
				}
				b.Logf("%s: %-18s median %9v plain, %9v untracked, %9v watched, %9v floor", name, st, medianOf(v[0]), medianOf(v[1]), medianOf(v[2]), medianOf(v[3]))
			}
			b.Logf("%s: %-18s        %9v plain, %9v untracked (%+.1f%%), %9v watched (%+.1f%%), %9v floor (%+.1f%%)", name, "sum of medians",
				sum[0], sum[1], pct(sum[0], sum[1]), sum[2], pct(sum[0], sum[2]), sum[3], pct(sum[0], sum[3]))
			m := []time.Duration{medianOf(total[0]), medianOf(total[1]), medianOf(total[2]), medianOf(total[3])}
			b.Logf("%s: %-18s median %9v plain, %9v untracked (%+.1f%%), %9v watched (%+.1f%%), %9v floor (%+.1f%%) [n=%d each]", name, "ROOT_TASK..COMPLETE",
				m[0], m[1], pct(m[0], m[1]), m[2], pct(m[0], m[2]), m[3], pct(m[0], m[3]), runs)
		}
	}
}

// emptySyscallPrograms attaches programs that do nothing to the
// tp_btf sys_enter and sys_exit tracepoints, the floor of any monitor of
// syscalls built on them (the slow syscall path and two program runs per
// syscall), and returns what detaches and frees them.
func emptySyscallPrograms(b *testing.B) func() {
	var closers []io.Closer
	for _, target := range []string{"sys_enter", "sys_exit"} {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "crest_floor", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: target,
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, License: "GPL",
		})
		if err != nil {
			b.Fatal(err)
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			b.Fatal(err)
		}
		closers = append(closers, l, prog)
	}
	return func() {
		for _, c := range closers {
			c.Close()
		}
	}
}
