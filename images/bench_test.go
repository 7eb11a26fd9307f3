package images_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// BenchmarkOpen opens each fixture and reads every per-task image of every
// task, as the restore planner does.
func BenchmarkOpen(b *testing.B) {
	for _, name := range fixture.Names(b) {
		dir := fixture.Images(b, name)
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				benchLoadAll(b, dir)
			}
		})
	}
}

func benchLoadAll(b *testing.B, dir string) {
	d, err := images.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.Files(); err != nil {
		b.Fatal(err)
	}
	for _, task := range d.Pstree {
		pid := task.GetPid()
		threads := task.GetThreads()
		if len(threads) == 0 {
			threads = []uint32{pid}
		}
		for _, tid := range threads {
			if _, err := d.Core(tid); err != nil {
				b.Fatal(err)
			}
		}
		ids, err := d.IDs(pid)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := d.Fdinfo(ids.GetFilesId()); err != nil {
			b.Fatal(err)
		}
		if _, err := d.MM(pid); err != nil {
			b.Fatal(err)
		}
		if _, err := d.FS(pid); err != nil {
			b.Fatal(err)
		}
		if _, err := d.PageRuns(pid); err != nil {
			b.Fatal(err)
		}
	}
}

const (
	benchPages     = 64 << 10 // 256 MiB
	benchSmallRun  = 4        // pages of each small run
	benchSmallStep = 5        // a page of gap between small runs
)

// benchPageSets makes two image sets over the same 256 MiB pages file:
// "big" has one run of all of it, "small" has 16 KiB runs with gaps.
func benchPageSets(b *testing.B) (big, small string) {
	root := b.TempDir()
	big, small = filepath.Join(root, "big"), filepath.Join(root, "small")
	pgWriteSet(b, big, 'b', []pgEntry{{vaddr: 0x10000000, nr: benchPages, flags: images.PEPresent}}, benchPages)
	var ents []pgEntry
	for i := 0; i < benchPages/benchSmallRun; i++ {
		ents = append(ents, pgEntry{vaddr: 0x10000000 + uint64(i)*benchSmallStep*images.PageSize, nr: benchSmallRun, flags: images.PEPresent})
	}
	pgWriteSet(b, small, 's', ents, -1)
	if err := os.Link(filepath.Join(big, "pages-1.img"), filepath.Join(small, "pages-1.img")); err != nil {
		b.Fatal(err)
	}
	return big, small
}

func benchRuns(b *testing.B, dir string) []images.PageRun {
	d, err := images.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	runs, err := d.PageRuns(1)
	if err != nil {
		b.Fatal(err)
	}
	return runs
}

// BenchmarkPages measures the pages reader against a plain sequential read
// of the same (page-cached) file.
func BenchmarkPages(b *testing.B) {
	big, small := benchPageSets(b)
	file := filepath.Join(big, "pages-1.img")
	const total = benchPages * images.PageSize

	plain := func(chunk int) func(b *testing.B) {
		return func(b *testing.B) {
			f, err := os.Open(file)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, chunk)
			b.SetBytes(total)
			for b.Loop() {
				if _, err := f.Seek(0, io.SeekStart); err != nil {
					b.Fatal(err)
				}
				for {
					n, err := f.Read(buf)
					if err == io.EOF {
						break
					}
					if err != nil || n == 0 {
						b.Fatal(err)
					}
				}
			}
		}
	}
	b.Run("plain-read-1MiB", plain(1<<20))
	b.Run("plain-read-16KiB", plain(benchSmallRun*images.PageSize))

	b.Run("one-run-1MiB", func(b *testing.B) {
		runs := benchRuns(b, big)
		p, err := images.OpenPages(runs)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		buf := make([]byte, 1<<20)
		b.SetBytes(total)
		for b.Loop() {
			for off := uint64(0); off < total; off += uint64(len(buf)) {
				if _, err := p.ReadAt(buf, runs[0].Vaddr+off); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("one-run-whole", func(b *testing.B) {
		runs := benchRuns(b, big)
		p, err := images.OpenPages(runs)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		buf := make([]byte, total)
		for i := range buf { // fault it in: measure the reads, not page faults
			buf[i] = 1
		}
		b.SetBytes(total)
		for b.Loop() {
			if _, err := p.ReadAt(buf, runs[0].Vaddr); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("small-runs-16KiB", func(b *testing.B) {
		runs := benchRuns(b, small)
		if len(runs) != benchPages/benchSmallRun {
			b.Fatalf("%d runs", len(runs))
		}
		p, err := images.OpenPages(runs)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		buf := make([]byte, benchSmallRun*images.PageSize)
		b.SetBytes(total)
		for b.Loop() {
			for _, r := range runs {
				if _, err := p.ReadAt(buf, r.Vaddr); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("resolve-small-runs", func(b *testing.B) {
		// PageRuns of a pagemap of 16384 entries: decoding and checking.
		d, err := images.Open(small)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := d.PageRuns(1); err != nil {
				b.Fatal(err)
			}
		}
	})
}
