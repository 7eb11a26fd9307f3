package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/crest-restore/crest/test/workloads"
)

func runDump(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"dump"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestDumpUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no tree: give -t PID"},
		{[]string{"-t", "1"}, "no image directory: give -D DIR"},
		{[]string{"-t", "1", "-D", "x", "extra"}, "unexpected arguments"},
		{[]string{"-t", "1", "-D", "x", "--leave-running", "-s"}, "--leave-running and --leave-stopped: give one"},
		{[]string{"-t", "1", "-D", "x", "--ghost-limit", "lots"}, `--ghost-limit "lots": want a size`},
		{[]string{"-t", "1", "-D", "x", "--ghost-limit", "0"}, `--ghost-limit "0": want a size`},
		{[]string{"-t", "1", "-D", "x", "--ghost-limit", "2T"}, `--ghost-limit "2T": want a size`},
		{[]string{"--bogus"}, "unknown flag"},
	} {
		code, _, errOut := runDump(t, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("crest dump %q: exit %d, %q; want exit 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
	var out bytes.Buffer
	if code := run([]string{"help", "dump"}, &out, &out); code != 0 || !strings.Contains(out.String(), "--leave-running") ||
		!strings.Contains(out.String(), "-s, --leave-stopped") {
		t.Errorf("crest help dump: exit %d\n%s", code, out.String())
	}
}

// TestDumpGhostLimit: --ghost-limit reaches the dump. The ghost workload
// holds a deleted scratch.bin with 8 KiB on disk (two 4 KiB runs of
// records between holes): refused under 4K, dumped under 8K, with the
// tree let go untouched and running on after the refusal.
func TestDumpGhostLimit(t *testing.T) {
	p := workloads.Start(t, "ghost")
	p.WaitFile(t, "out-parent.log")
	for _, tc := range []struct {
		limit string
		code  int
		want  string
	}{
		{"4K", 1, "above the ghost limit of 4096 bytes"},
		{"8K", 0, ""},
	} {
		dir := filepath.Join(t.TempDir(), "images")
		code, _, errOut := runDump(t, "-t", strconv.Itoa(p.Pid), "-D", dir, "--leave-running", "--ghost-limit", tc.limit)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("--ghost-limit %s: exit %d, %q; want exit %d and %q", tc.limit, code, errOut, tc.code, tc.want)
		}
		if !workloads.Alive(p.Pid) {
			t.Fatalf("--ghost-limit %s: the workload is gone", tc.limit)
		}
	}
}

func TestDumpNoSuchProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "images")
	code, _, errOut := runDump(t, "-t", "1073741824", "-D", dir)
	if code != 1 || !strings.Contains(errOut, "no process 1073741824") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

// TestDumpThenShow dumps a running counter with --leave-running and the
// log inside the images directory, as CRIU users do, and reads the
// result back with crest show -D.
func TestDumpThenShow(t *testing.T) {
	p := workloads.Start(t, "counter")
	p.WaitFile(t, "out.log")
	dir := filepath.Join(t.TempDir(), "images")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "dump.log")
	code, _, errOut := runDump(t, "-t", strconv.Itoa(p.Pid), "-D", dir, "--leave-running", "-o", log, "-v")
	if code != 0 {
		t.Fatalf("crest dump: exit %d: %s", code, errOut)
	}
	b, err := os.ReadFile(log)
	if err != nil || !strings.Contains(string(b), "dump complete") {
		t.Errorf("dump.log: %v\n%s", err, b)
	}
	code, out, errOut := runShow(t, "-D", dir)
	if code != 0 || !strings.Contains(out, "1 tasks, 1 threads") {
		t.Fatalf("crest show -D: exit %d: %s\n%s", code, errOut, out)
	}
	time.Sleep(50 * time.Millisecond)
	if !workloads.Alive(p.Pid) {
		t.Fatal("counter died after --leave-running")
	}
}
