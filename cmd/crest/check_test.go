package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/crest-restore/crest/bpf"
	"github.com/crest-restore/crest/kerndat"
)

// decodedCheck mirrors checkReport for decoding.
type decodedCheck struct {
	kerndat.Report
	RestoreOK bool `json:"restore_ok"`
	DumpOK    bool `json:"dump_ok"`
	VerifyOK  bool `json:"verify_ok"`
}

// TestCheckJSON runs crest check --json for real. This machine (root, Linux
// 6.18 with BTF) has everything restore, dump and the monitor need.
func TestCheckJSON(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"check", "--json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errb.String())
	}
	if errb.Len() != 0 {
		t.Errorf("stderr: %s", errb.String())
	}
	var r decodedCheck
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v:\n%s", err, out.String())
	}
	if !r.RestoreOK || !r.DumpOK || !r.VerifyOK {
		t.Errorf("restore_ok %v, dump_ok %v, verify_ok %v; want all true here", r.RestoreOK, r.DumpOK, r.VerifyOK)
	}
	if release, _ := kerndat.Kernel(); r.Kernel != release {
		t.Errorf("kernel %q, want %q", r.Kernel, release)
	}
	if r.Took <= 0 {
		t.Errorf("took_ns %d", r.Took)
	}
	byName := map[string]kerndat.Feature{}
	for _, f := range r.Features {
		byName[f.Name] = f
		if f.Reason == "" {
			t.Errorf("%s: no reason", f.Name)
		}
	}
	for _, want := range []struct {
		name string
		need kerndat.Need
	}{
		{kerndat.Clone3SetTIDName, kerndat.Restore},
		{kerndat.PidfdOpenName, kerndat.Restore | kerndat.Dump},
		{kerndat.PidfdGetfdName, kerndat.Restore | kerndat.Dump},
		{kerndat.CheckpointCapName, kerndat.Restore | kerndat.Dump},
		{kerndat.TimeNamespaceName, kerndat.Restore},
		{kerndat.UserfaultfdName, 0},
		{kerndat.XSaveName, 0},
		{bpf.BTFName, kerndat.Monitor},
		{bpf.TpBTFName, kerndat.Monitor},
		{bpf.RingbufName, kerndat.Monitor},
	} {
		f, ok := byName[want.name]
		switch {
		case !ok:
			t.Errorf("%s: not in the report", want.name)
		case !f.OK || f.NeededBy != want.need:
			t.Errorf("%s: ok %v, needed by %s; want ok, needed by %s (%s)", want.name, f.OK, f.NeededBy, want.need, f.Reason)
		}
	}
	for _, name := range []string{kerndat.SysResourceCapName, kerndat.TracefsName} {
		if _, ok := byName[name]; !ok {
			t.Errorf("%s: not in the report", name)
		}
	}
}

func TestCheckTable(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"check"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if !strings.HasPrefix(lines[0], "FEATURE") || !strings.Contains(lines[0], "NEEDED BY") {
		t.Errorf("header %q", lines[0])
	}
	for _, name := range []string{kerndat.Clone3SetTIDName, kerndat.TimeNamespaceName, bpf.RingbufName} {
		found := false
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) > 1 && f[0] == name {
				found = f[1] == "ok"
			}
		}
		if !found {
			t.Errorf("no ok row for %s in\n%s", name, out.String())
		}
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "kernel ") || !strings.Contains(last, "features probed in") {
		t.Errorf("last line %q", last)
	}
}

// TestCheckUnprivileged runs crest check --json as nobody (uid 65534, no
// capabilities): the kernel refuses what a restore needs, so the exit
// status must be 1 and the report must say why.
func TestCheckUnprivileged(t *testing.T) {
	if os.Getenv("CREST_CHECK_AS_CHILD") == "1" {
		os.Exit(run([]string{"check", "--json"}, os.Stdout, os.Stderr))
	}
	cmd, _ := asNobody(t, "TestCheckUnprivileged", "CREST_CHECK_AS_CHILD=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("as nobody: %v, want exit status 1; stderr:\n%s", err, errb.String())
	}
	if !strings.Contains(errb.String(), "crest restore can not work here: missing clone3_set_tid") {
		t.Errorf("stderr does not say why:\n%s", errb.String())
	}
	var r decodedCheck
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v:\n%s", err, out.String())
	}
	if r.RestoreOK {
		t.Error("restore_ok as nobody")
	}
	for _, want := range []struct{ name, reason string }{
		{kerndat.Clone3SetTIDName, "operation not permitted (EPERM)"},
		{kerndat.CheckpointCapName, "effective set 0x0 has neither"},
		{kerndat.TimeNamespaceName, "unshare(CLONE_NEWTIME)"},
	} {
		f, ok := r.Feature(want.name)
		if !ok || f.OK || !strings.Contains(f.Reason, want.reason) {
			t.Errorf("%s as nobody: %v, want missing with %q", want.name, f, want.reason)
		}
	}
}

func TestCheckUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"check", "extra"}, &out, &errb); code != 2 {
		t.Errorf("exit %d, want 2; stderr %s", code, errb.String())
	}
}

// TestCheckVerdict: what a report means for the exit status and warnings.
func TestCheckVerdict(t *testing.T) {
	feature := func(name string, ok bool, need kerndat.Need) kerndat.Feature {
		return kerndat.Feature{Name: name, OK: ok, NeededBy: need}
	}
	tests := []struct {
		name     string
		features []kerndat.Feature
		exit     int // 0: no error
		warnings []string
	}{
		{"all there", []kerndat.Feature{
			feature("a", true, kerndat.Restore), feature("b", true, kerndat.Monitor),
		}, 0, nil},
		{"information missing", []kerndat.Feature{
			feature("a", true, kerndat.Restore), feature("tracefs", false, 0),
		}, 0, nil},
		{"monitor missing", []kerndat.Feature{
			feature("a", true, kerndat.Restore), feature("bpf_tp_btf", false, kerndat.Monitor),
		}, 0, []string{"--verify will not work (no eBPF monitor): missing bpf_tp_btf"}},
		{"restore missing", []kerndat.Feature{
			feature("clone3_set_tid", false, kerndat.Restore), feature("b", true, kerndat.Monitor),
		}, 1, nil},
		{"restore and dump missing", []kerndat.Feature{
			feature("pidfd_getfd", false, kerndat.Restore|kerndat.Dump), feature("btf_vmlinux", false, kerndat.Monitor),
		}, 1, []string{"crest dump will not work: missing pidfd_getfd", "--verify will not work (no eBPF monitor): missing btf_vmlinux"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			warnings, err := checkVerdict(&kerndat.Report{Features: tt.features})
			code := 0
			var ee *exitError
			if errors.As(err, &ee) {
				code = ee.code
			} else if err != nil {
				t.Fatalf("error %v is not an exitError", err)
			}
			if code != tt.exit {
				t.Errorf("exit %d, want %d (%v)", code, tt.exit, err)
			}
			if strings.Join(warnings, "\n") != strings.Join(tt.warnings, "\n") {
				t.Errorf("warnings %q, want %q", warnings, tt.warnings)
			}
		})
	}
}

// asNobody copies the test binary into a directory nobody may enter (the
// original sits where only root may) and returns a command that runs the
// test named test of it there as nobody, with env added, and the
// directory, removed when t ends.
func asNobody(t *testing.T, test string, env ...string) (*exec.Cmd, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "crest-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "crest.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+test+"$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return cmd, dir
}
