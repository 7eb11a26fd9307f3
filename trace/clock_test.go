package trace

import (
	"testing"
	"time"
)

func TestClockWall(t *testing.T) {
	c := Clock{Offset: 1_700_000_000_000_000_000 - 5_000_000_000_000}
	if got, want := c.Wall(5_000_000_000_123), time.Unix(0, 1_700_000_000_000_000_123); !got.Equal(want) {
		t.Errorf("Wall = %v, want %v", got, want)
	}
}

// A boot-time reading converted with a sampled clock lands between two
// wall-clock readings taken around it, within the sample's uncertainty.
func TestSampleClock(t *testing.T) {
	c := SampleClock(16)
	if c.Uncertainty < 0 {
		t.Fatalf("no sample: %+v", c)
	}
	for range 100 {
		before := time.Now()
		b := Boottime()
		after := time.Now()
		w := c.Wall(b)
		slack := time.Duration(c.Uncertainty) + time.Microsecond
		if w.Before(before.Add(-slack)) || w.After(after.Add(slack)) {
			t.Fatalf("boot %d -> %v, not within [%v, %v] ± %v", b, w, before, after, slack)
		}
	}
}

func TestClockTighter(t *testing.T) {
	unset := Clock{Uncertainty: -1}
	a, b := Clock{Offset: 1, Uncertainty: 50}, Clock{Offset: 2, Uncertainty: 10}
	for _, c := range []struct{ x, y, want Clock }{
		{unset, a, a}, {a, unset, a}, {a, b, b}, {b, a, b},
	} {
		if got := c.x.Tighter(c.y); got != c.want {
			t.Errorf("%+v.Tighter(%+v) = %+v, want %+v", c.x, c.y, got, c.want)
		}
	}
}

// The Recorder's record, events from two goroutines, builds like a
// hand-made one, with the clock sampled at both ends.
func TestRecorder(t *testing.T) {
	r := NewRecorder(OpRestore, "/images")
	done := make(chan struct{})
	go func() {
		for i := range 100 {
			r.Kernel(KernelEvent{Kind: "futex_wake", PID: 1, TID: 1, At: Boottime() + uint64(i)})
		}
		close(done)
	}()
	for _, s := range []string{"ROOT_TASK", "PREPARE_NAMESPACES"} {
		r.StageSwitched(StageEvent{Stage: s, Participants: 1, At: Boottime()})
		b := Boottime()
		r.StepDone(StepEvent{PID: 1, TID: 1, Stage: s, Step: "launch", Begin: b, End: Boottime()})
		r.TaskArrived(ArrivalEvent{Stage: s, PID: 1, TID: 1, At: Boottime()})
	}
	<-done
	rec := r.Finish(nil)
	if len(rec.Kernel) != 100 || len(rec.Stages) != 2 || len(rec.Arrivals) != 2 || len(rec.Steps) != 2 {
		t.Fatalf("record %d kernel %d stages %d arrivals %d steps", len(rec.Kernel), len(rec.Stages), len(rec.Arrivals), len(rec.Steps))
	}
	if rec.Begin == 0 || rec.End < rec.Begin || rec.Clock.Uncertainty < 0 {
		t.Errorf("begin %d end %d clock %+v", rec.Begin, rec.End, rec.Clock)
	}
	tr := Build(rec)
	if tr.Root.Start != rec.Begin || tr.Root.End != rec.End {
		t.Errorf("root [%d,%d], record [%d,%d]", tr.Root.Start, tr.Root.End, rec.Begin, rec.End)
	}
	if len(tr.Stages()) != 2 {
		t.Errorf("%d stages", len(tr.Stages()))
	}
}
