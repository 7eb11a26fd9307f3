package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/crest-restore/crest/bpf"
	"github.com/crest-restore/crest/kerndat"
)

func init() {
	register(&verb{
		name:  "check",
		usage: "[--json]",
		short: "report which kernel features crest can use",
		long: `Probes, for real and once, every kernel feature crest's restore, dump
and eBPF monitor use (clone3 with set_tid, pidfds, capabilities, time
namespaces, userfaultfd, BTF, tp_btf programs, BPF ring buffers, tracefs,
the CPU's xsave state) and prints, for each, whether it works, which part
of crest needs it and why: the system call and errno that refused it, or
what the probe found. Probes clean up after themselves and change nothing.

Features needed by nothing ("info") are there for information.

Exit status: 0 when a restore can work (a missing monitor or dump feature
only prints a warning), 1 when a feature a restore needs is missing.`,
		setup: func(fs *pflag.FlagSet) runFunc {
			asJSON := fs.Bool("json", false, "print a machine-readable report")
			unpin := fs.String("unpin", "", "remove the monitor programs that crest restore --verify-pins kept under `DIR`, and nothing else")
			return func(ctx context.Context, env *env, args []string) error {
				if len(args) != 0 {
					return usagef("unexpected argument %q", args[0])
				}
				if *unpin != "" {
					if err := bpf.Unpin(*unpin); err != nil {
						return err
					}
					fmt.Fprintf(env.stdout, "removed crest's monitor pins under %s\n", *unpin)
					return nil
				}
				return runCheck(env, *asJSON)
			}
		},
	})
}

// checkReport is crest check --json's output: the kerndat report and what
// it means for each part of crest.
type checkReport struct {
	*kerndat.Report
	RestoreOK bool `json:"restore_ok"`
	DumpOK    bool `json:"dump_ok"`
	VerifyOK  bool `json:"verify_ok"`
}

func runCheck(env *env, asJSON bool) error {
	r := kerndat.Check(kerndat.Features, bpf.Features)
	for _, f := range r.Features {
		env.log.Debug("probed", "feature", f.Name, "ok", f.OK, "took", f.Took, "reason", f.Reason)
	}
	env.log.Info("check done", "features", len(r.Features), "took", r.Took)
	if asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		err := enc.Encode(checkReport{
			Report:    r,
			RestoreOK: len(r.Missing(kerndat.Restore)) == 0,
			DumpOK:    len(r.Missing(kerndat.Dump)) == 0,
			VerifyOK:  len(r.Missing(kerndat.Monitor)) == 0,
		})
		if err != nil {
			return err
		}
	} else {
		if err := printCheckTable(env, r); err != nil {
			return err
		}
	}
	warnings, err := checkVerdict(r)
	for _, w := range warnings {
		fmt.Fprintf(env.stderr, "crest check: warning: %s\n", w)
	}
	return err
}

func printCheckTable(env *env, r *kerndat.Report) error {
	tw := tabwriter.NewWriter(env.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "FEATURE\tSTATUS\tNEEDED BY\tREASON")
	for _, f := range r.Features {
		status := "ok"
		if !f.OK {
			status = "missing"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Name, status, f.NeededBy, f.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(env.stdout, "\nkernel %s (%s), xfeatures %#x; %d features probed in %s\n",
		r.Kernel, r.Machine, r.XFeatures, len(r.Features), r.Took.Round(100*time.Microsecond))
	return err
}

// checkVerdict says what r means: an error (exit status 1) when a restore
// can not work, warnings for the parts of crest that will not.
func checkVerdict(r *kerndat.Report) (warnings []string, err error) {
	if m := r.Missing(kerndat.Dump); len(m) > 0 {
		warnings = append(warnings, "crest dump will not work: missing "+featureNames(m))
	}
	if m := r.Missing(kerndat.Monitor); len(m) > 0 {
		warnings = append(warnings, "--verify will not work (no eBPF monitor): missing "+featureNames(m))
	}
	if m := r.Missing(kerndat.Restore); len(m) > 0 {
		return warnings, &exitError{code: 1, err: fmt.Errorf("crest restore can not work here: missing %s", featureNames(m))}
	}
	return warnings, nil
}

func featureNames(fs []kerndat.Feature) string {
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.Name
	}
	return strings.Join(names, ", ")
}
