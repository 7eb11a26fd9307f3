package trace

import (
	"fmt"
	"io"
	"path/filepath"
	"testing"
)

// bigRecord is a restore of n tasks with two threads each: every stage,
// every arrival, five steps per task and three kernel events per task.
func bigRecord(n int) *Record {
	rec := &Record{Op: OpRestore, ImagesDir: "/images/big", Clock: SampleClock(4)}
	t := base
	next := func(d uint64) uint64 { t += d; return t }
	for i := 1; i <= n; i++ {
		rec.Tasks = append(rec.Tasks, Task{PID: i, PPID: max(i/2, 0), PGID: 1, SID: 1, HostPID: 1000 + i, Threads: []int{i, n + i}})
	}
	for num, st := range []string{"ROOT_TASK", "PREPARE_NAMESPACES", "FORKING", "RESTORE", "RESTORE_SIGCHLD", "RESTORE_CREDS", "COMPLETE"} {
		rec.Stages = append(rec.Stages, StageEvent{Stage: st, Number: num, Participants: 2 * n, At: next(1000)})
		for i := 1; i <= n; i++ {
			for _, step := range []string{"files", "memory", "threads", "creds", "sigactions"} {
				b := next(100)
				rec.Steps = append(rec.Steps, StepEvent{PID: i, TID: i, Stage: st, Step: step, Begin: b, End: next(100)})
			}
			rec.Kernel = append(rec.Kernel, Futex(1000+i, 1000+i, next(10), 0, 1, 0x1000, 1, 0))
			rec.Arrivals = append(rec.Arrivals, ArrivalEvent{Stage: st, PID: i, TID: i, HostPID: 1000 + i, At: next(10)},
				ArrivalEvent{Stage: st, PID: i, TID: n + i, HostPID: 1000 + i, At: next(10)})
		}
	}
	return rec
}

// What tracing to a file adds to a restore once the events are recorded:
// the model, the SDK spans and the OTLP JSON file.
func BenchmarkTraceToFile(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) {
			rec := bigRecord(n)
			path := filepath.Join(b.TempDir(), "trace.json")
			for b.Loop() {
				tr := Build(rec)
				if err := tr.WriteJSON(path); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkWaterfall(b *testing.B) {
	tr := Build(bigRecord(100))
	for b.Loop() {
		if err := tr.WriteWaterfall(io.Discard, 100); err != nil {
			b.Fatal(err)
		}
	}
}
