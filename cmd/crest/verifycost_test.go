package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/crest-restore/crest/bench"
	"github.com/crest-restore/crest/bpf"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore"
	"github.com/crest-restore/crest/test/bpffs"
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

// BenchmarkStageCost measures what the monitor costs a restore's own
// stages, in this process, for counter and tree (run with -benchtime=1x):
// each stage's duration (switch to last arrival, from the engine's
// Timeline) and ROOT_TASK..COMPLETE, with no monitor, with the monitor
// attached but tracking nothing (what its programs cost every syscall of
// the machine), with the monitor watching the restore (--verify's
// kernelCheck, verification included), and with empty programs on the
// two syscall tracepoints (the floor of any monitor built on them). Each
// round runs every kind once in a shuffled order (fixed seed), so that
// neither the machine's other load nor the aftermath of the kind before
// falls on one kind more than on another; medians, and for the whole
// ROOT_TASK..COMPLETE a bootstrap 90% interval of the ratio of medians,
// and the ratio paired within each round. Restores are 20 ms apart unless
// CREST_COST_SETTLE says otherwise; the programs stay loaded throughout
// unless CREST_COST_KEEP=0. CREST_COST_FIXTURES picks the
// fixtures (default counter,tree).
func BenchmarkStageCost(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("needs root")
	}
	fixture.Require(b)
	runs := costRuns(60)
	// CREST_COST_GC=1 collects garbage before each restore, so that a
	// collection the monitor's loading set off does not fall in it.
	gcFirst := os.Getenv("CREST_COST_GC") == "1"
	// Each restore begins 20 ms after the one before ended, as separate
	// crest runs are apart: back to back, the last restore's teardown
	// (the tree's exit, the monitor's detach and the frees the kernel
	// defers) runs into the next one. CREST_COST_SETTLE=0 measures back
	// to back, another duration waits that long.
	settle := 20 * time.Millisecond
	if v := os.Getenv("CREST_COST_SETTLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("CREST_COST_SETTLE=%q: %v", v, err)
		}
		settle = d
	}
	kinds := []string{"plain", "untracked", "watched", "floor", "floor-enter"}
	// CREST_COST_KINDS=watched,floor picks the kinds besides plain; it
	// may also name floor-exit, an empty program on sys_exit alone (the
	// floor of a monitor without entry events).
	if v := os.Getenv("CREST_COST_KINDS"); v != "" {
		kinds = append([]string{"plain"}, strings.Split(v, ",")...)
	}
	// Every program stays loaded for the whole benchmark (the monitor's
	// on pins, as --verify-pins keeps them), so that only links are
	// attached and detached between restores: freeing a program's JIT
	// image is deferred past RCU grace periods, and its TLB flush then
	// falls into some later restore of any kind. CREST_COST_KEEP=0 loads
	// and frees them for each restore instead.
	keep := os.Getenv("CREST_COST_KEEP") != "0"
	var pins string
	var floorProgs []*ebpf.Program
	if keep {
		pins = bpffs.Mount(b)
		floorProgs = loadEmptyPrograms(b, "sys_enter", "sys_exit")
		defer func() {
			for _, p := range floorProgs {
				p.Close()
			}
		}()
	}
	pct := func(a, b time.Duration) float64 { return 100 * (float64(b)/float64(a) - 1) }
	names := []string{"counter", "tree"}
	if v := os.Getenv("CREST_COST_FIXTURES"); v != "" {
		names = strings.Split(v, ",")
	}
	// b.Logf keeps only 10 lines of a benchmark's output
	logf := func(format string, args ...any) { fmt.Printf("    "+format+"\n", args...) }
	rng := rand.New(rand.NewPCG(1, 2))
	order := make([]int, 0, len(kinds)*runs)
	for range runs {
		round := rng.Perm(len(kinds))
		order = append(order, round...)
	}
	for b.Loop() {
		for _, name := range names {
			stages := map[restore.Stage][][]time.Duration{}
			total := make([][]time.Duration, len(kinds))
			// rounds[i][k]: ROOT_TASK..COMPLETE of kind k in round i
			rounds := make([][]time.Duration, runs)
			for i := range rounds {
				rounds[i] = make([]time.Duration, len(kinds))
			}
			for n, kind := range order {
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
					if keep {
						floor = attachPrograms(b, floorProgs)
					} else {
						floor = emptySyscallPrograms(b, "sys_enter", "sys_exit")
					}
				case "floor-enter":
					if keep {
						floor = attachPrograms(b, floorProgs[:1])
					} else {
						floor = emptySyscallPrograms(b, "sys_enter")
					}
				case "floor-exit":
					if keep {
						floor = attachPrograms(b, floorProgs[1:])
					} else {
						floor = emptySyscallPrograms(b, "sys_exit")
					}
				case "untracked":
					if idle, err = bpf.Open(bpf.Options{PinDir: pins}); err != nil {
						b.Fatal(err)
					}
				case "watched":
					kc = startKernelCheck(verifyOptions{mode: "on", pinDir: pins})
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
				totalD := time.Duration(tl.Stage(restore.StageComplete).Done - tl.Stages[0].Switched)
				total[kind] = append(total[kind], totalD)
				rounds[n/len(kinds)][kind] = totalD
			}
			sum := make([]time.Duration, len(kinds))
			pcts := func(ds []time.Duration) string {
				var out []string
				for k := 1; k < len(kinds); k++ {
					out = append(out, fmt.Sprintf("%s %v (%+.1f%%)", kinds[k], ds[k], pct(ds[0], ds[k])))
				}
				return fmt.Sprintf("%v plain, %s", ds[0], strings.Join(out, ", "))
			}
			for st := restore.StageRootTask; st <= restore.StageComplete; st++ {
				v := stages[st]
				if v == nil {
					continue
				}
				for k := range kinds {
					sum[k] += bench.Median(v[k])
				}
				med := make([]time.Duration, len(kinds))
				for k := range kinds {
					med[k] = bench.Median(v[k])
				}
				logf("%s: %-18s median %s", name, st, pcts(med))
			}
			logf("%s: %-18s        %s", name, "sum of medians", pcts(sum))
			m := make([]time.Duration, len(kinds))
			for k := range kinds {
				m[k] = bench.Median(total[k])
			}
			logf("%s: %-18s median %s [n=%d each]", name, "ROOT_TASK..COMPLETE", pcts(m), runs)
			for k := 1; k < len(kinds); k++ {
				iv := bench.RatioInterval(rng, total[0], total[k])
				logf("%s: %-18s %s vs plain: 90%% interval %+.1f%% .. %+.1f%%", name, "ROOT_TASK..COMPLETE", kinds[k], iv.Lo, iv.Hi)
			}
			// Paired: the ratio to plain within each round (same
			// minute, same machine state), its median over the rounds
			// and a bootstrap 90% interval of that median.
			for k := 1; k < len(kinds); k++ {
				base, other := make([]time.Duration, runs), make([]time.Duration, runs)
				for i, r := range rounds {
					base[i], other[i] = r[0], r[k]
				}
				iv := bench.PairedInterval(rng, base, other)
				logf("%s: %-18s %s vs plain, paired by round: median %+.1f%%, 90%% interval %+.1f%% .. %+.1f%%",
					name, "ROOT_TASK..COMPLETE", kinds[k], iv.Estimate, iv.Lo, iv.Hi)
			}
		}
	}
}

// emptySyscallPrograms attaches programs that do nothing to the
// tp_btf sys_enter and sys_exit tracepoints, the floor of any monitor of
// syscalls built on them (the slow syscall path and two program runs per
// syscall), and returns what detaches and frees them.
func emptySyscallPrograms(b *testing.B, targets ...string) func() {
	progs := loadEmptyPrograms(b, targets...)
	detach := attachPrograms(b, progs)
	return func() {
		detach()
		for _, p := range progs {
			p.Close()
		}
	}
}

// loadEmptyPrograms loads a program that does nothing for each tp_btf
// target.
func loadEmptyPrograms(b *testing.B, targets ...string) []*ebpf.Program {
	var progs []*ebpf.Program
	for _, target := range targets {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "crest_floor", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: target,
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, License: "GPL",
		})
		if err != nil {
			b.Fatal(err)
		}
		progs = append(progs, prog)
	}
	return progs
}

// attachPrograms attaches progs and returns what detaches them.
func attachPrograms(b *testing.B, progs []*ebpf.Program) func() {
	var links []io.Closer
	for _, prog := range progs {
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			b.Fatal(err)
		}
		links = append(links, l)
	}
	return func() {
		for _, l := range links {
			l.Close()
		}
	}
}
