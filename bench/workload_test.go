package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/procscan"
)

func TestParseWorkload(t *testing.T) {
	tests := []struct {
		spec string
		want Workload
		err  string
	}{
		{"tasks=4,threads=2,mem=16M,fds=8", Workload{Tasks: 4, Threads: 2, MemKiB: 16 << 10, FDs: 8}, ""},
		{"tasks=3", Workload{Tasks: 3, Threads: 1, MemKiB: 1024}, ""},
		{"mem=512", Workload{Tasks: 1, Threads: 1, MemKiB: 512}, ""},
		{"mem=2G, fds=0", Workload{Tasks: 1, Threads: 1, MemKiB: 2 << 20}, ""},
		{"mem=0K", Workload{Tasks: 1, Threads: 1}, ""},
		{"tasks=0", Workload{}, "tasks"},
		{"threads=101", Workload{}, "threads"},
		{"mem=65G", Workload{}, "mem"},
		{"mem=-1M", Workload{}, "mem"},
		{"fds=x", Workload{}, "fds"},
		{"cpus=2", Workload{}, "not tasks, threads, mem or fds"},
		{"tasks", Workload{}, "not KEY=VALUE"},
	}
	for _, tt := range tests {
		w, err := ParseWorkload(tt.spec)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), tt.spec) {
				t.Errorf("%q: %v, want an error naming the spec and %q", tt.spec, err, tt.err)
			}
			continue
		}
		if err != nil || w != tt.want {
			t.Errorf("%q: %+v %v, want %+v", tt.spec, w, err, tt.want)
		}
		if back, err := ParseWorkload(w.String()); err != nil || back != w {
			t.Errorf("%q: String %q reads back as %+v %v", tt.spec, w, back, err)
		}
	}
}

// TestWorkload: the workload is made, dumped and restored as the spec
// says, and nothing of it is left afterwards.
func TestWorkload(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: new pid namespaces, dump and restore")
	}
	w := Workload{Tasks: 3, Threads: 2, MemKiB: 256, FDs: 3}
	dir, cleanup, err := w.Prepare(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	top := filepath.Dir(dir)
	defer func() {
		cleanup()
		if _, err := os.Stat(top); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", top, err)
		}
		if left, err := procscan.Find(procscan.Under(top)); err != nil || len(left) > 0 {
			t.Errorf("processes left: %v %v", left, err)
		}
	}()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Pstree) != 3 {
		t.Fatalf("%d tasks dumped, want 3", len(d.Pstree))
	}
	for _, p := range d.Pstree {
		if len(p.GetThreads()) != 2 {
			t.Errorf("task %d has threads %v, want 2", p.GetPid(), p.GetThreads())
		}
		ids, err := d.IDs(p.GetPid())
		if err != nil {
			t.Fatal(err)
		}
		fds, err := d.Fdinfo(ids.GetFilesId())
		if err != nil {
			t.Fatal(err)
		}
		if len(fds) != 3+3 { // 0-2 and the data file three times
			t.Errorf("task %d has %d fds, want 6", p.GetPid(), len(fds))
		}
	}
	rep, err := Run(context.Background(), Config{Dir: dir, Workload: w.String(), Runs: 2, Modes: []Mode{Plain}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Tasks != 3 || rep.Threads != 6 || len(rep.Samples) != 2 || rep.Workload != w.String() {
		t.Errorf("report: %d tasks, %d threads, %d samples, workload %q", rep.Tasks, rep.Threads, len(rep.Samples), rep.Workload)
	}
}
