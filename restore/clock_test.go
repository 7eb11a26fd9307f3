package restore

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/restore/agent"
)

// stepClockEnv names the fixture and the boottime offset in seconds
// ("threads:1000000") when TestStepClock runs itself again inside a time
// namespace.
const stepClockEnv = "CREST_STEP_CLOCK"

// engineSlack is how far the engine's own stamps (stage switches, its
// prepare steps, arrivals at COMPLETE) may be from CLOCK_BOOTTIME: it
// derives them from Go's monotonic clock, calibrated per restore
// (sys_linux.go, boottime_test.go).
const engineSlack = 2000

// TestStepClock checks the agent's clock readings (now_ns in stage.c: the
// vDSO's clock_gettime, the syscall until the launcher found it and while
// the restorer maps a new vDSO): every step and arrival lies between two
// CLOCK_BOOTTIME readings of the test, taken before Start and after it,
// steps begin after their stage was switched and lie between two arrivals
// of their thread, and each thread arrives stage after stage. A reading of 0, of a
// wrong symbol of the vDSO or of another clock falls outside. CLOCK_MONOTONIC
// equals CLOCK_BOOTTIME on a machine that never slept: the last case runs the
// restore again in a time namespace whose boottime is 10^6 s ahead of its
// monotonic clock, where a monotonic reading would be 10^6 s too early.
func TestStepClock(t *testing.T) {
	needRoot(t)
	if env := os.Getenv(stepClockEnv); env != "" {
		// The inner run: the outer test installed the fixture and holds
		// the fixture lock for us (taking it here would wait forever).
		name, off, _ := strings.Cut(env, ":")
		secs, err := strconv.ParseInt(off, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q", stepClockEnv, env)
		}
		// (outside, the two differ by the time the machine slept)
		if d := clockNow(t, unix.CLOCK_BOOTTIME) - clockNow(t, unix.CLOCK_MONOTONIC); d < uint64(secs-1)*1e9 {
			t.Fatalf("boottime is %d ns ahead of monotonic, want about %d s: not in the time namespace", d, secs)
		}
		checkStepClock(t, name)
		return
	}
	tests := []struct {
		name, fixture string
		bootOffset    int // seconds; > 0: in a new time namespace
	}{
		{"counter", "counter", 0},
		// threads take their clock on their own restorer stacks
		{"threads", "threads", 0},
		{"threads in a time namespace", "threads", 1000000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installFixture(t, tt.fixture)
			if tt.bootOffset == 0 {
				checkStepClock(t, tt.fixture)
				return
			}
			if _, err := exec.LookPath("unshare"); err != nil {
				t.Fatal("unshare(1) of util-linux is not installed: it makes the time namespace")
			}
			cmd := exec.Command("unshare", "--time", "--boottime", strconv.Itoa(tt.bootOffset), "--",
				os.Args[0], "-test.run=^TestStepClock$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s:%d", stepClockEnv, tt.fixture, tt.bootOffset))
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "--- PASS: TestStepClock") {
				t.Errorf("the restore in a time namespace: %v\n%s", err, out)
			}
		})
	}
}

// checkStepClock restores fixture name to COMPLETE and checks the
// timeline's stamps against the test's own CLOCK_BOOTTIME readings.
func checkStepClock(t *testing.T, name string) {
	t.Helper()
	p := loadPlan(t, name)
	before := clockNow(t, unix.CLOCK_BOOTTIME)
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	after := clockNow(t, unix.CLOCK_BOOTTIME)
	abortAtCleanup(t, r, p)

	tl := r.Timeline()
	inWindow := func(what string, ns uint64, slack uint64) {
		t.Helper()
		if ns+slack < before || ns > after+slack {
			t.Errorf("%s at %d, outside the restore: %d..%d (%+d ns from its start)", what, ns, before, after, int64(ns-before))
		}
	}
	switched := map[Stage]uint64{}
	for _, s := range tl.Stages {
		inWindow(fmt.Sprintf("switch to %v", s.Stage), s.Switched, engineSlack)
		switched[s.Stage] = s.Switched
	}

	// Each thread's arrivals, stage after stage, each after the switch
	// to its stage. The engine stamps COMPLETE when it steps a thread
	// through its rt_sigreturn (finish.go).
	arrivals := map[int][]ArrivalEvent{}
	for _, a := range tl.Arrivals {
		what := fmt.Sprintf("thread %d's arrival at %v", a.TID, a.Stage)
		slack := uint64(0)
		if a.Stage == StageComplete {
			slack = engineSlack
		}
		inWindow(what, a.At, slack)
		if a.At+engineSlack < switched[a.Stage] {
			t.Errorf("%s at %d, before the switch at %d", what, a.At, switched[a.Stage])
		}
		if prev := arrivals[a.TID]; len(prev) > 0 {
			if p := prev[len(prev)-1]; a.Stage <= p.Stage || a.At < p.At {
				t.Errorf("%s at %d, after its arrival at %v at %d", what, a.At, p.Stage, p.At)
			}
		}
		arrivals[a.TID] = append(arrivals[a.TID], a)
	}

	// The agent's steps: each in the stage it was reported in (after the
	// switch to it, before its thread's arrival there: the engine takes
	// FORKING's steps before it switches to RESTORE, and reports them
	// later), and between two arrivals of its thread, as no step waits
	// at a barrier. The engine's prepare steps come before the launch.
	steps := map[string]int{}
	for _, s := range tl.Steps {
		what := fmt.Sprintf("thread %d's step %q (reported in %v)", s.TID, s.Step, s.Stage)
		if !s.Succeeded || s.End < s.Begin {
			t.Errorf("%s: %+v", what, s)
		}
		if !slices.Contains(agent.StepNames[1:], s.Step) {
			inWindow(what, s.Begin, engineSlack)
			inWindow(what, s.End, engineSlack)
			continue
		}
		steps[s.Step]++
		inWindow(what+" began", s.Begin, 0)
		inWindow(what+" ended", s.End, 0)
		if s.Begin+engineSlack < switched[s.Stage] {
			t.Errorf("%s began at %d, before the switch at %d", what, s.Begin, switched[s.Stage])
		}
		closed := false
		for _, a := range arrivals[s.TID] {
			if a.Stage == s.Stage && s.End > a.At {
				t.Errorf("%s ended at %d, after its thread's arrival at %v at %d", what, s.End, a.Stage, a.At)
			}
			if a.At > s.Begin && a.At < s.End {
				t.Errorf("%s from %d to %d, across its thread's arrival at %v at %d", what, s.Begin, s.End, a.Stage, a.At)
			}
			closed = closed || a.At >= s.End
		}
		if !closed {
			t.Errorf("%s ended at %d, after its thread's last arrival", what, s.End)
		}
	}
	// A step with no end reading is not reported: these are the steps
	// every task and thread has, on the launcher's vDSO (check pid), across
	// the new one (memory) and on the new one (sigreturn).
	if steps["check pid"] != len(p.Tasks) || steps["memory"] != len(p.Tasks) || steps["sigreturn"] != p.NrThreads {
		t.Errorf("steps %v, want check pid and memory %d times, sigreturn %d times", steps, len(p.Tasks), p.NrThreads)
	}
}

func clockNow(t *testing.T, clock int32) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(clock, &ts); err != nil {
		t.Fatalf("clock_gettime(%d): %v", clock, err)
	}
	return uint64(ts.Nano())
}
