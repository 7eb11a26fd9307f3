package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore"
	"github.com/crest-restore/crest/test/procscan"

	_ "github.com/crest-restore/crest/internal/mainthread" // no test wedges the main thread in a tree's namespaces
)

func TestParseWorkload(t *testing.T) {
	tests := []struct {
		spec string
		want Workload
		err  string
	}{
		{"tasks=4,threads=2,mem=16M,fds=8", Workload{Tasks: 4, Threads: 2, MemKiB: 16 << 10, FDs: 8}, ""},
		{"pipes=3,tasks=2", Workload{Tasks: 2, Threads: 1, MemKiB: 1024, Pipes: 3}, ""},
		{"pipes=501", Workload{}, "pipes"},
		{"tasks=3", Workload{Tasks: 3, Threads: 1, MemKiB: 1024}, ""},
		{"mem=512", Workload{Tasks: 1, Threads: 1, MemKiB: 512}, ""},
		{"mem=2G, fds=0", Workload{Tasks: 1, Threads: 1, MemKiB: 2 << 20}, ""},
		{"mem=0K", Workload{Tasks: 1, Threads: 1}, ""},
		{"shm=4M,tasks=2", Workload{Tasks: 2, Threads: 1, MemKiB: 1024, ShmKiB: 4 << 10}, ""},
		{"shm=0", Workload{Tasks: 1, Threads: 1, MemKiB: 1024}, ""},
		{"shm=65G", Workload{}, "shm"},
		{"tasks=0", Workload{}, "tasks"},
		{"threads=101", Workload{}, "threads"},
		{"mem=65G", Workload{}, "mem"},
		{"mem=-1M", Workload{}, "mem"},
		{"fds=x", Workload{}, "fds"},
		{"cpus=2", Workload{}, "not tasks, threads, mem, fds, pipes or shm"},
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
		if want := map[string]string{
			"tasks=4,threads=2,mem=16M,fds=8": "tasks=4,threads=2,mem=16M,fds=8,pipes=0",
			"shm=4M,tasks=2":                  "tasks=2,threads=1,mem=1M,fds=0,pipes=0,shm=4M",
		}[tt.spec]; want != "" && w.String() != want {
			t.Errorf("%q: String %q, want %q", tt.spec, w, want)
		}
		if back, err := ParseWorkload(w.String()); err != nil || back != w {
			t.Errorf("%q: String %q reads back as %+v %v", tt.spec, w, back, err)
		}
	}
}

// TestWorkload: the workload is made, dumped and restored as the spec
// says (in the restored tree every task holds both ends of the same pipes
// and maps the same shared memory, with the data init wrote), and nothing
// of it is left afterwards.
func TestWorkload(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: new pid namespaces, dump and restore")
	}
	w := Workload{Tasks: 3, Threads: 2, MemKiB: 256, FDs: 3, Pipes: 2, ShmKiB: 1024}
	dir, dumped, cleanup, err := w.Prepare(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// 3 tasks of 256 KiB each, and 1 MiB shared, written once
	if dumped.Pages*images.PageSize != dumped.Bytes || dumped.Bytes < 3*256<<10 || dumped.Shared != 256 || dumped.Frozen <= 0 || dumped.Wall < dumped.Frozen {
		t.Errorf("dump: %+v, want at least 3 x 256 KiB of the tasks' own and 256 shared pages", dumped)
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
		if len(fds) != 3+3+4 { // 0-2, the data file three times, two pipes
			t.Errorf("task %d has %d fds, want 10", p.GetPid(), len(fds))
		}
	}
	data, err := d.PipesData()
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 2 || string(data[0].Data) != "x" || string(data[1].Data) != "x" {
		t.Errorf("pipes-data.img: %d entries %v, want two pipes holding \"x\"", len(data), data)
	}
	// One restore by hand: the pipes are one set, shared by the tasks.
	p, err := restore.NewPlan(d)
	if err != nil {
		t.Fatal(err)
	}
	r, err := restore.Start(context.Background(), p, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Abort() // on a failed check; Abort again does nothing
	var first []string
	for i, task := range p.Tasks {
		var pipes []string
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", r.HostPID(task.PID)))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", r.HostPID(task.PID), e.Name())); strings.HasPrefix(l, "pipe:") {
				pipes = append(pipes, l)
			}
		}
		slices.Sort(pipes)
		if len(pipes) != 4 || i > 0 && !slices.Equal(pipes, first) {
			t.Errorf("task %d holds pipes %v, want the four ends task 1 holds (%v)", task.PID, pipes, first)
		}
		if i == 0 {
			first = pipes
		}
	}
	checkSharedMemory(t, r, p, w)
	if err := r.Abort(); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), Config{Dir: dir, Workload: w.String(), Runs: 2, Modes: []Mode{Plain}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Tasks != 3 || rep.Threads != 6 || len(rep.Samples) != 2 || rep.Workload != w.String() {
		t.Errorf("report: %d tasks, %d threads, %d samples, workload %q", rep.Tasks, rep.Threads, len(rep.Samples), rep.Workload)
	}
}

// TestWorkloadFails: a workload Prepare can not make is an error naming
// it, and nothing of it is left: not one it refuses, nor one whose context
// ends while it starts.
func TestWorkloadFails(t *testing.T) {
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), "crest-bench-*"))
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tt := range []struct {
		w    Workload
		ctx  context.Context
		want string
	}{
		{Workload{Tasks: 0, Threads: 1}, context.Background(), "at least one task"},
		{Workload{Tasks: 2, Threads: 1, MemKiB: 64}, cancelled, "context canceled"},
	} {
		_, _, cleanup, err := tt.w.Prepare(tt.ctx, nil)
		if err == nil || cleanup != nil || !strings.Contains(err.Error(), "workload "+tt.w.String()+": ") || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v (cleanup %v), want an error naming the workload and %q", tt.w, err, cleanup != nil, tt.want)
		}
	}
	after, _ := filepath.Glob(filepath.Join(os.TempDir(), "crest-bench-*"))
	if len(after) != len(before) {
		t.Errorf("left: %v (before: %v)", after, before)
	}
	workloads := func(p procscan.Process) bool { return strings.Contains(p.Exe, "/crest-bench-") }
	if left, err := procscan.Find(workloads); err != nil || len(left) > 0 {
		t.Errorf("processes left: %v %v", left, err)
	}
}

// checkSharedMemory: every task of the restored workload maps the same
// shared memory at the same address (one object: the same inode), which holds what init wrote
// there past the tasks' tick words; a word written through one task's
// /proc/PID/mem reads back through every other's.
func checkSharedMemory(t *testing.T, r *restore.Restore, p *restore.Plan, w Workload) {
	t.Helper()
	size := uint64(w.ShmKiB) * 1024
	type region struct {
		start uint64
		inode string
	}
	var regions []region
	for _, task := range p.Tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", r.HostPID(task.PID)))
		if err != nil {
			t.Fatal(err)
		}
		var found []region
		var shared []string
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			var lo, hi uint64
			if len(f) > 1 && strings.HasSuffix(f[1], "s") {
				shared = append(shared, strings.TrimSpace(line))
			}
			// dumped as CRIU 4.2 does, as a memfd named /dev/zero, it
			// comes back as one (the shmem fixture too)
			if len(f) < 6 || f[1] != "rw-s" || f[5] != "/memfd:/dev/zero" {
				continue
			}
			if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err == nil && hi-lo == size {
				found = append(found, region{lo, f[4]})
			}
		}
		if len(found) != 1 || len(regions) > 0 && found[0] != regions[0] {
			t.Fatalf("task %d maps shared memory %+v (shared mappings %q), want one region of %d bytes as task 1 does (%+v)", task.PID, found, shared, size, regions)
		}
		regions = append(regions, found[0])
	}
	mem := func(task *restore.Task) *os.File {
		f, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", r.HostPID(task.PID)), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	// init's data: xorshift64 from workload.c's seed, the first word of
	// each task its tick counter
	data := make([]byte, size)
	if _, err := mem(p.Tasks[0]).ReadAt(data, int64(regions[0].start)); err != nil {
		t.Fatal(err)
	}
	x := uint64(0x2545f4914f6cdd1d)
	for i := 0; i < len(data)/8; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		if got := binary.LittleEndian.Uint64(data[8*i:]); i >= w.Tasks && got != x {
			t.Fatalf("shared memory word %d: %#x, want %#x", i, got, x)
		}
	}
	last := int64(regions[0].start + size - 8)
	if _, err := mem(p.Tasks[0]).WriteAt([]byte("crest-sh"), last); err != nil {
		t.Fatal(err)
	}
	for _, task := range p.Tasks[1:] {
		got := make([]byte, 8)
		if _, err := mem(task).ReadAt(got, last); err != nil || string(got) != "crest-sh" {
			t.Errorf("task %d reads %q (%v) where task 1 wrote \"crest-sh\": not shared", task.PID, got, err)
		}
	}
}
