package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// stopTask makes task pid of the image directory dir a stopped one
// (TASK_STOPPED) with stop_signo sig, as CRIU 4.2 writes a task that was
// in a group stop at the dump.
func stopTask(t *testing.T, dir string, pid int, sig uint32) {
	t.Helper()
	editImage(t, dir, fmt.Sprintf("core-%d.img", pid), func(img *images.Image) {
		tc := img.Entries[0].Message.(*criu_core.CoreEntry).Tc
		tc.TaskState = proto.Uint32(taskStopped)
		tc.StopSigno = proto.Uint32(sig)
	})
}

// TestPlanStopped checks the stop signal the plan takes from a stopped
// task's core, and that what can not stop a task is refused.
func TestPlanStopped(t *testing.T) {
	for _, tc := range []struct {
		signo uint32
		want  syscall.Signal
		err   string
	}{
		{0, syscall.SIGSTOP, ""}, // images from before CRIU wrote stop_signo
		{19, syscall.SIGSTOP, ""},
		{20, syscall.SIGTSTP, ""},
		{21, syscall.SIGTTIN, ""},
		{22, syscall.SIGTTOU, ""},
		{9, 0, "task 1: core-1.img: stopped task with stop_signo 9, which is not a stop signal"},
		{18, 0, "task 1: core-1.img: stopped task with stop_signo 18, which is not a stop signal"},
	} {
		t.Run(fmt.Sprint(tc.signo), func(t *testing.T) {
			dir := fixture.CopyImages(t, "counter")
			stopTask(t, dir, 1, tc.signo)
			p, err := openPlan(t, dir)
			if tc.err != "" {
				var pe *PlanError
				if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want a PlanError with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if task := p.Tasks[0]; task.Kind != TaskAlive || task.StopSignal != tc.want {
				t.Errorf("task 1: %v stopped by %v, want alive stopped by %v", task.Kind, task.StopSignal, tc.want)
			}
		})
	}
	dir := fixture.CopyImages(t, "counter")
	editImage(t, dir, "core-1.img", func(img *images.Image) {
		img.Entries[0].Message.(*criu_core.CoreEntry).Tc.TaskState = proto.Uint32(5)
	})
	_, err := openPlan(t, dir)
	if want := "core-1.img: task state 5: only alive, stopped and dead (zombie) tasks are restored"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("task state 5: error %v, want %q", err, want)
	}
}

// TestRestoreStopped restores CRIU 4.2's tree fixture with tasks made
// stopped in its images: each comes back in a group stop, every thread,
// and runs on after a SIGCONT; with Options.LeaveStopped, every task. The tree's process groups decide which
// signals can stop whom: group 1 (init, tasks 2 and 4) is orphaned, group
// 3 (task 3, whose parent is the init) is not, and the init of a pid
// namespace stops only for SIGSTOP. A task that does not stop fails the
// restore, naming it and the signal, and the tree is rolled back.
func TestRestoreStopped(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name    string
		stopped map[int]uint32 // pid -> stop_signo
		leave   bool           // Options.LeaveStopped
		fails   string         // "": restores
	}{
		{"SIGSTOP", map[int]uint32{2: 19}, false, ""},
		{"SIGTSTP, not orphaned", map[int]uint32{3: 20}, false, ""},
		{"init and a child", map[int]uint32{1: 19, 4: 19}, false, ""},
		{"SIGTSTP, orphaned", map[int]uint32{2: 20}, false, "restore: stage COMPLETE: task 2: stop: not stopped by SIGTSTP 1s after the restore"},
		{"SIGTTIN to the init", map[int]uint32{1: 21}, false, "restore: stage COMPLETE: task 1: stop: not stopped by SIGTTIN 1s after the restore"},
		// --leave-stopped: SIGSTOP to every task, even one that
		// SIGTSTP would not have stopped
		{"leave stopped", map[int]uint32{1: 19, 2: 19, 3: 19, 4: 19}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyImages(t, "tree")
			if !tc.leave {
				for pid, sig := range tc.stopped {
					stopTask(t, dir, pid, sig)
				}
			} else {
				stopTask(t, dir, 2, 20)
			}
			logs := installFixture(t, "tree")
			p := planDir(t, dir)
			rec := &recorder{}
			r, err := Start(context.Background(), p, Options{Observer: rec, StageTimeout: time.Second, LeaveStopped: tc.leave})
			if tc.fails != "" {
				if err == nil {
					r.Abort()
					t.Fatal("the restore succeeded")
				}
				var se *StageError
				if !errors.As(err, &se) || se.Stage != StageComplete || se.Step != "stop" || !strings.Contains(err.Error(), tc.fails) {
					t.Fatalf("error %v, want a StageError with %q", err, tc.fails)
				}
				var hosts []int
				for _, a := range rec.Arrivals {
					if a.HostPID != 0 {
						hosts = append(hosts, a.HostPID)
					}
				}
				if len(hosts) == 0 {
					t.Fatal("no host pid was published")
				}
				checkGone(t, hosts)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			hosts := abortAtCleanup(t, r, p)
			// A stopped task arrives at COMPLETE when stopped, after
			// its "stop" step, from the signal on.
			for pid := range tc.stopped {
				var stops []StepEvent
				for _, e := range rec.Steps {
					if e.PID == pid && e.Step == "stop" {
						stops = append(stops, e)
					}
				}
				if len(stops) != 1 || stops[0].Stage != StageComplete || stops[0].Begin == 0 || stops[0].End < stops[0].Begin {
					t.Errorf("task %d: stop steps %+v, want one in COMPLETE", pid, stops)
					continue
				}
				for _, a := range rec.Arrivals {
					if a.PID == pid && a.Stage == StageComplete && a.At != stops[0].End {
						t.Errorf("task %d thread %d arrived at COMPLETE at %d, not when stopped (%d)", pid, a.TID, a.At, stops[0].End)
					}
				}
			}
			for _, e := range rec.Steps {
				if e.Step == "stop" && tc.stopped[e.PID] == 0 {
					t.Errorf("a stop step for task %d, which ran at the dump", e.PID)
				}
			}
			if tc.leave {
				// every task stopped: nothing tells time passing
				for i := range p.Tasks {
					if err := syscall.Kill(hosts[i], syscall.SIGCONT); err != nil {
						t.Fatal(err)
					}
				}
				for i := range p.Tasks {
					waitLinesOf(t, logOf(t, hosts[i], logs), 3)
				}
				return
			}
			clock := "" // the log of a task that runs: time passing
			for i, task := range p.Tasks {
				stopped := tc.stopped[task.PID] != 0
				for tid, st := range taskStates(t, hosts[i]) {
					if stopped != (st == 'T') {
						t.Errorf("task %d (host tid %d): state %c, stopped %v at the dump", task.PID, tid, st, stopped)
					}
				}
				if !stopped && clock == "" {
					clock = logOf(t, hosts[i], logs)
				}
			}
			// The fixture's tasks count on in out-<role>.log: a
			// stopped one does not, until its SIGCONT.
			was := map[int]int{}
			for i, task := range p.Tasks {
				if tc.stopped[task.PID] != 0 {
					was[i] = lineCount(t, logOf(t, hosts[i], logs))
				}
			}
			waitLinesOf(t, clock, 5)
			for i, n := range was {
				log := logOf(t, hosts[i], logs)
				if got := lineCount(t, log); got != n {
					t.Errorf("task %d wrote %d lines to %s while stopped", p.Tasks[i].PID, got-n, log)
				}
				if err := syscall.Kill(hosts[i], syscall.SIGCONT); err != nil {
					t.Fatal(err)
				}
				waitLinesOf(t, log, 3)
			}
		})
	}
}

// taskStates is the state letter of every thread of host pid, by host tid.
func taskStates(t *testing.T, pid int) map[int]byte {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]byte{}
	for _, e := range ents {
		st, err := procState(fmt.Sprintf("/proc/%d/task/%s/stat", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[atoi(t, e.Name())] = st
	}
	return out
}

// logOf is the out-*.log under dir that host pid holds open.
func logOf(t *testing.T, pid int, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err == nil && strings.HasPrefix(target, dir+"/out-") {
			return target
		}
	}
	t.Fatalf("pid %d holds no log of %s open", pid, dir)
	return ""
}

func lineCount(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// waitLinesOf waits until the file at path has n more lines than now.
func waitLinesOf(t *testing.T, path string, n int) {
	t.Helper()
	start := lineCount(t, path)
	deadline := time.Now().Add(10 * time.Second)
	for lineCount(t, path) < start+n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %d new lines after 10s", path, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
