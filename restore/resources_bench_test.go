package restore

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// BenchmarkRestoreResources restores the pipe and shmem fixtures with big
// shared resources, each iteration a whole restore (Start) followed by a
// kill (Abort, not timed), and reports the median wall time of Start and
// of the engine's preparing of the pipe or memfd:
//
//	NAME         the pipe, shmem, files and signals fixtures as dumped
//	pipe-1MiB    the pipe fixture whose pipe holds a full 1 MiB buffer
//	shmem-64MiB  the shmem fixture whose shared memory is 64 MiB: the
//	             memfd grows to 64 MiB, the fixture's 1 MiB at its end,
//	             the tasks' mappings grow downwards to cover it all
func BenchmarkRestoreResources(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("restoring a tree needs root")
	}
	for _, name := range []string{"pipe", "shmem", "files", "signals"} {
		b.Run(name, func(b *testing.B) {
			fixture.Install(b, name)
			benchRestore(b, loadPlan(b, name))
		})
	}
	b.Run("pipe-1MiB", func(b *testing.B) {
		fixture.Install(b, "pipe")
		p := loadPlan(b, "pipe")
		pp := p.Pipes[97264]
		data := make([]byte, 1<<20)
		for i := range data {
			data[i] = "0123456789abcde\n"[i%16]
		}
		pp.Data, pp.BufSize = data, 1<<20
		benchRestore(b, p)
	})
	b.Run("shmem-64MiB", func(b *testing.B) {
		fixture.Install(b, "shmem")
		p := loadPlan(b, "shmem")
		growShmem(b, p, 64<<20)
		benchRestore(b, p)
	})
}

// growShmem makes the shmem fixture's shared memory size bytes: a pages
// file of size bytes whose end is the fixture's 1 MiB, and every mapping
// of it started size-1MiB lower, so the program finds its data where it was.
func growShmem(b *testing.B, p *Plan, size uint64) {
	b.Helper()
	m := p.Memfds[1]
	orig, err := os.ReadFile(m.Runs[0].Pages)
	if err != nil {
		b.Fatal(err)
	}
	extra := size - m.Size
	path := filepath.Join(b.TempDir(), "pages-shmem.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	fill := make([]byte, 1<<20)
	for i := range fill {
		fill[i] = byte(i)
	}
	for off := uint64(0); off < extra; off += uint64(len(fill)) {
		if _, err := f.Write(fill); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := f.Write(orig[m.Runs[0].Offset : m.Runs[0].Offset+int64(m.Size)]); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	m.Size = size
	m.Runs = []images.PageRun{{Vaddr: 0, NrPages: size / images.PageSize, Flags: images.PEPresent, Pages: path}}
	for _, t := range p.Tasks {
		for i := range t.Mem.VMAs {
			if v := &t.Mem.VMAs[i]; v.File != nil && v.File.Memfd == m {
				v.Start -= extra
			}
		}
	}
}

// benchRestore restores p b.N times and reports the median, p90 and
// minimum wall time of Start.
func benchRestore(b *testing.B, p *Plan) {
	b.Helper()
	var times, prep []time.Duration
	for b.Loop() {
		t0 := time.Now()
		r, err := Start(context.Background(), p, Options{})
		d := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		times = append(times, d)
		var pd time.Duration
		for _, s := range r.Timeline().Steps {
			if strings.HasPrefix(s.Step, "prepare ") {
				pd += time.Duration(s.End - s.Begin)
			}
		}
		prep = append(prep, pd)
		b.StopTimer()
		if err := r.Abort(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	n := len(times)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(times[n/2]), "ms/median")
	b.ReportMetric(ms(times[(n*9+9)/10-1]), "ms/p90")
	b.ReportMetric(ms(times[0]), "ms/min")
	// the engine's share: making the pipes and memfds
	sort.Slice(prep, func(i, j int) bool { return prep[i] < prep[j] })
	b.ReportMetric(ms(prep[n/2]), "ms/prepare-median")
}
