package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/crest-restore/crest/bench"
	"github.com/crest-restore/crest/bpf"
	"github.com/crest-restore/crest/restore"
)

func init() {
	register(&verb{
		name:  "bench",
		usage: "-D DIR | --workload SPEC [--runs N] [--verify | --criu PATH] [--reset CMD] [--json]",
		short: "restore an image directory many times and report each stage's latency",
		long: `
bench restores the process tree in DIR (CRIU 4.2 images) N times, kills it
after each restore, and reports how long every stage of the restore took:
the median of each stage, and of the stages together, restore.Start (launch,
stages and finishing) and planning with their 10th and 90th percentiles.

With --verify every restore is done twice, plain and watched by the eBPF
monitor (and verified: a finding ends the benchmark), the two taking turns
in shuffled rounds; the report adds the monitor's overhead on each stage,
on the stages together (with a bootstrap 90% interval) and paired by round,
which takes out the machine's drift between rounds, and the monitor's
verdicts (each restore's is in the JSON). The monitor's programs
stay loaded between restores: under --verify-pins DIR, else in a pin
directory under /sys/fs/bpf that bench removes when it ends.

With --workload SPEC bench makes the tree itself: tasks=N processes (init
and its children, in a new pid namespace), each with threads=N threads,
mem=SIZE of memory filled with data (K, M or G, KiB without a unit;
default 1M), fds=N open files and both ends of pipes=N pipes that all
tasks share, a byte in each, and shm=SIZE of shared anonymous memory
(MAP_SHARED, filled with data) that all tasks share. It starts them,
dumps them once with crest dump (the report says what the dump took),
restores the images RUNS times and removes it all at the end. Such a tree
writes nothing after it is ready: no --reset is needed.

A restored tree may change what lies outside its images, e.g. append to a
log file whose size the images recorded; --reset CMD (a shell command) runs
before every restore to put that back. Timings are what this machine did
this time: compare runs made side by side. --svg FILE also draws the
stages' medians and the spread of the stages together.

With --criu PATH bench instead runs "crest restore -d" and "PATH restore
-d" (CRIU's) as processes, taking turns, and reports the wall time of each
command, its process start included, as a user sees it. CRIU keeps its
kernel checks between runs only when /run is a tmpfs; the report says
when it can not.`,
		setup: func(fs *pflag.FlagSet) runFunc {
			dir := fs.StringP("images-dir", "D", "", "restore the image directory `DIR`")
			workload := fs.String("workload", "", "instead of -D, start bench's own workload `SPEC` (tasks=N,threads=N,mem=SIZE,fds=N,pipes=N,shm=SIZE), dump it once and restore that")
			runs := fs.Int("runs", 20, "restores per mode")
			verify := fs.Bool("verify", false, "also restore with the eBPF monitor watching, and report its overhead")
			pins := fs.String("verify-pins", "", "keep the monitor's programs pinned under `DIR` (a BPF file system) and leave them there")
			reset := fs.String("reset", "", "run the shell command `CMD` before every restore")
			warmup := fs.Int("warmup", 1, "rounds to run first and leave out of the report")
			settle := fs.Duration("settle", 20*time.Millisecond, "pause before every restore")
			seed := fs.Uint64("seed", 1, "the order of the modes in each round")
			asJSON := fs.Bool("json", false, "print the report, with every sample, as JSON")
			svg := fs.String("svg", "", "also draw the stages' medians and the spread of the stages together into `FILE` (SVG)")
			criu := fs.String("criu", "", "compare crest restore -d with `PATH` restore -d (CRIU), as processes")
			return func(ctx context.Context, env *env, args []string) error {
				switch {
				case *dir == "" && *workload == "":
					return usagef("nothing to restore: give -D DIR or --workload SPEC")
				case *dir != "" && *workload != "":
					return usagef("-D and --workload: give one")
				case len(args) > 0:
					return usagef("unexpected arguments %q", args)
				case *runs < 1:
					return usagef("--runs %d: need at least one", *runs)
				case *warmup < 0:
					return usagef("--warmup %d: negative", *warmup)
				case *settle < 0:
					return usagef("--settle %v: negative", *settle)
				case *pins != "" && !*verify:
					return usagef("--verify-pins without --verify")
				case *criu != "" && (*verify || *svg != ""):
					return usagef("--criu compares the commands' wall times: no --verify or --svg with it")
				}
				cfg := bench.Config{Dir: *dir, Runs: *runs, Modes: []bench.Mode{bench.Plain},
					Warmup: *warmup, Settle: *settle, Seed: *seed, Log: env.log}
				if *workload != "" {
					w, err := bench.ParseWorkload(*workload)
					if err != nil {
						return usagef("%v", err)
					}
					images, dumped, cleanup, err := w.Prepare(ctx, env.log)
					if err != nil {
						return err
					}
					defer cleanup()
					cfg.Dir, cfg.Workload, cfg.Dump = images, w.String(), &dumped
				}
				if *reset != "" {
					cfg.Reset = resetCommand(ctx, *reset)
				}
				if *criu != "" {
					self, err := os.Executable()
					if err != nil {
						return err
					}
					rep, err := bench.Compare(ctx, bench.CompareConfig{Dir: cfg.Dir, Runs: *runs, Crest: self, CRIU: *criu,
						Reset: cfg.Reset, Settle: *settle})
					if err != nil {
						return err
					}
					return printReport(env, *asJSON, rep)
				}
				if *verify {
					pinDir, cleanup, err := benchPins(env, *pins)
					if err != nil {
						return err
					}
					defer cleanup()
					cfg.Modes = append(cfg.Modes, watchedMode(pinDir))
				}
				// The plot's file is made first: a path that can not be
				// written fails before the restores, not after them.
				var plot *os.File
				if *svg != "" {
					f, err := os.Create(*svg)
					if err != nil {
						return err
					}
					plot = f
					defer f.Close()
				}
				rep, err := bench.Run(ctx, cfg)
				if err != nil {
					if plot != nil {
						os.Remove(*svg)
					}
					return err
				}
				if plot != nil {
					if err := rep.SVG(plot); err != nil {
						return fmt.Errorf("%s: %w", *svg, err)
					}
					if err := plot.Close(); err != nil {
						return err
					}
				}
				return printReport(env, *asJSON, rep)
			}
		},
	})
}

// printReport prints a bench report as Markdown, or as indented JSON.
func printReport(env *env, asJSON bool, rep interface{ Markdown(io.Writer) error }) error {
	if asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return rep.Markdown(env.stdout)
}

// resetCommand runs cmd with /bin/sh before each restore.
func resetCommand(ctx context.Context, cmd string) func() error {
	return func() error {
		out, err := exec.CommandContext(ctx, "/bin/sh", "-c", cmd).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%q: %w: %s", cmd, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}

// watchedMode restores with the monitor watching and verifies each restore.
func watchedMode(pinDir string) bench.Mode {
	begin := func(p *restore.Plan) (restore.Observer, bench.End, error) {
		kc := startKernelCheck(verifyOptions{mode: "on", pinDir: pinDir})
		if err := kc.ready(); err != nil {
			kc.close()
			return nil, nil, err
		}
		end := func(r *restore.Restore, startErr error) (string, error) {
			defer kc.close()
			if startErr != nil {
				return "", nil // the restore's own error says what went wrong
			}
			if err := kc.verify(p); err != nil {
				return "", fmt.Errorf("--verify: no verdict: %w", err)
			}
			if !kc.report.OK {
				return kc.report.Verdict, fmt.Errorf("--verify: %s; first: %s", kc.report.Verdict, kc.report.Findings[0])
			}
			return kc.report.Verdict, nil
		}
		return kc, end, nil
	}
	return bench.Mode{Name: "verify", Begin: begin}
}

// benchPins is where the monitor's programs stay loaded between the
// restores: dir when given (and left there), else a directory of its own
// under /sys/fs/bpf that cleanup removes. Without a BPF file system there
// the monitor loads afresh for every restore.
func benchPins(env *env, dir string) (string, func(), error) {
	if dir != "" {
		return dir, func() {}, nil
	}
	const root = "/sys/fs/bpf"
	if bpf.OnBPFFS(root) != nil {
		fmt.Fprintf(env.stderr, "crest bench: no BPF file system on %s: the monitor loads afresh for every restore "+
			"(outside the stages, but freeing its programs adds noise); mount one or give --verify-pins DIR\n", root)
		return "", func() {}, nil
	}
	pins, err := os.MkdirTemp(root, "crest-bench-")
	if err != nil {
		return "", nil, fmt.Errorf("a pin directory for the monitor: %w", err)
	}
	cleanup := func() {
		if err := bpf.Unpin(pins); err != nil {
			env.log.Warn("monitor pins left", "dir", pins, "err", err)
		}
		if err := os.Remove(pins); err != nil {
			env.log.Warn("monitor pin directory left", "dir", filepath.Clean(pins), "err", err)
		}
	}
	return pins, cleanup, nil
}
