package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/crest-restore/crest/kerndat"
)

// TestFeaturesHere runs the monitor's probes for real: this machine (Linux
// 6.18 with BTF, root) loads and attaches tp_btf programs.
func TestFeaturesHere(t *testing.T) {
	tests := []struct {
		name     string
		contains []string
	}{
		{BTFName, []string{vmlinuxBTF, "task_struct", "btf_trace_sys_enter and the kfunc bpf_rdonly_cast found"}},
		{TpBTFName, []string{"tp_btf/sys_enter", "loaded (BPF_PROG_LOAD), attached (BPF_LINK_CREATE) and detached"}},
		{RingbufName, []string{"ring buffer: tp_btf/sys_enter wrote an event for getppid() on thread", "read back in Go"}},
	}
	features := Features()
	if len(features) != len(tests) {
		t.Fatalf("Features() has %d features, the test knows %d", len(features), len(tests))
	}
	for i, tt := range tests {
		f := features[i]
		t.Log(f)
		if f.Name != tt.name || f.NeededBy != kerndat.Monitor || !f.OK {
			t.Errorf("feature %d: %v; want %s ok, needed by the monitor", i, f, tt.name)
		}
		for _, s := range tt.contains {
			if !strings.Contains(f.Reason, s) {
				t.Errorf("%s: reason %q lacks %q", f.Name, f.Reason, s)
			}
		}
	}
	if again := Features(); !slices.Equal(features, again) {
		t.Errorf("second Features() differs (probes must run once):\n%v\n%v", features, again)
	}
}

// TestProbesFail gives each probe something the kernel must refuse.
func TestProbesFail(t *testing.T) {
	notBTF := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(notBTF, []byte("not BTF at all, but long enough for a header"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		f        kerndat.Feature
		contains []string
	}{
		{"no BTF file", probeBTF("/nonexistent/vmlinux"),
			[]string{"no kernel BTF: stat /nonexistent/vmlinux: no such file or directory (ENOENT)"}},
		{"not BTF", probeBTF(notBTF),
			[]string{notBTF + " (44 bytes) does not load as BTF"}},
		{"no bpf_rdonly_cast", probeBTF(oldKernelBTF(t)),
			[]string{"loads, but the kfunc bpf_rdonly_cast (Linux 6.2), which the monitor's fork program calls"}},
		{"no such tracepoint", probeTpBTF("crest_no_such_tracepoint"),
			[]string{"load tp_btf/crest_no_such_tracepoint", "crest_no_such_tracepoint"}},
		{"ring buffer not a page multiple", probeRingbuf(4097),
			[]string{"create a 4097-byte ring buffer", "invalid argument", "(EINVAL)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Log(tt.f)
			if tt.f.OK {
				t.Error("ok, want missing")
			}
			for _, s := range tt.contains {
				if !strings.Contains(tt.f.Reason, s) {
					t.Errorf("reason %q lacks %q", tt.f.Reason, s)
				}
			}
		})
	}
}

// TestProbesLeaveNothingBehind runs the program probes again (uncached)
// and checks that no fd stays open and none of their programs stays loaded
// (a link that stayed would hold its program).
func TestProbesLeaveNothingBehind(t *testing.T) {
	Features()                                    // first use opens what the runtime and cilium/ebpf keep
	name := fmt.Sprintf("crest_t%d", os.Getpid()) // ours alone; at most 15 bytes
	defer func(old string) { probeProgramName = old }(probeProgramName)
	probeProgramName = name
	before := openFDs(t)
	for _, f := range []kerndat.Feature{probeTpBTF(tpBTFTarget), probeRingbuf(4096), probeTpBTF("crest_no_such_tracepoint")} {
		t.Log(f)
	}
	if after := openFDs(t); !slices.Equal(before, after) {
		t.Errorf("open fds changed:\nbefore %v\nafter  %v", before, after)
	}
	// The kernel frees a detached program's last reference after an RCU
	// grace period, so give it time.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ids := programsNamed(t, name)
		if len(ids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("programs %s still loaded: %v", name, ids)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// programsNamed lists the loaded programs called name.
func programsNamed(t *testing.T, name string) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return ids
		}
		if err != nil {
			t.Fatal(err)
		}
		id = next
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		info, err := prog.Info()
		prog.Close()
		if err == nil && info.Name == name {
			ids = append(ids, id)
		}
	}
}

func openFDs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue
		}
		fds = append(fds, e.Name()+"->"+target)
	}
	return fds
}

// oldKernelBTF writes the BTF of a kernel before 6.2 as the monitor sees
// it: task_struct and btf_trace_sys_enter, but no kfunc bpf_rdonly_cast.
func oldKernelBTF(t *testing.T) string {
	t.Helper()
	var b btf.Builder
	task := &btf.Struct{Name: "task_struct", Size: 8, Members: []btf.Member{{Name: "pid", Type: &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}}}}
	for _, typ := range []btf.Type{task, &btf.Typedef{Name: "btf_trace_sys_enter", Type: &btf.Pointer{Target: &btf.Void{}}}} {
		if _, err := b.Add(typ); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
