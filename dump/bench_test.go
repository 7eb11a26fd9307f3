package dump_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/test/workloads"
)

// BenchmarkDump1GiB dumps a task holding 1 GiB of non-zero anonymous
// memory (--leave-running, so one task serves every iteration); compare its
// MB/s with BenchmarkCopy1GiB, the floor: writing 1 GiB from memory into a
// file in the same directory.
//
//	go test ./dump -run '^$' -bench 1GiB -benchtime 3x
func BenchmarkDump1GiB(b *testing.B) {
	p := workloads.Start(b, "big")
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _ := os.ReadFile(filepath.Join(p.Dir, "out.log"))
		if bytes.HasPrefix(out, []byte("ready\n")) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("big did not fill its memory within 60s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	parent := b.TempDir()
	b.SetBytes(1 << 30)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dir := filepath.Join(parent, "images")
		res, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir, LeaveRunning: true})
		if err != nil {
			b.Fatal(err)
		}
		if res.Bytes < 1<<30 {
			b.Fatalf("dumped %d bytes, want at least 1 GiB", res.Bytes)
		}
		b.ReportMetric(float64(res.Frozen.Milliseconds()), "frozen-ms")
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

func BenchmarkCopy1GiB(b *testing.B) {
	buf := make([]byte, 1<<30)
	for i := range buf {
		buf[i] = byte(i) | 1
	}
	parent := b.TempDir()
	b.SetBytes(1 << 30)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		path := filepath.Join(parent, "pages.img")
		if err := os.WriteFile(path, buf, 0o600); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.Remove(path)
		b.StartTimer()
	}
}
