package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strings"
	"testing"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// TestPlanProcAttrs checks what the plan takes of personality, child
// subreaper, oom_score_adj, parent-death signal and scheduling, and what
// it refuses, naming the image and thread.
func TestPlanProcAttrs(t *testing.T) {
	dir := fixture.CopyImages(t, "threads")
	editImage(t, dir, "core-1.img", func(img *images.Image) {
		c := img.Entries[0].Message.(*criu_core.CoreEntry)
		// ADDR_NO_RANDOMIZE as CRIU 4.2 writes it: 0x40000 as 40000
		c.Tc.Personality, c.Tc.ChildSubreaper, c.Tc.OomScoreAdj = proto.Uint32(40000), proto.Bool(true), proto.Int32(-17)
		c.ThreadCore.PdeathSig = proto.Uint32(10)
		c.ThreadCore.SchedPolicy, c.ThreadCore.SchedNice = proto.Uint32(3), proto.Int32(7)
	})
	editImage(t, dir, "core-2.img", func(img *images.Image) {
		c := img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore
		c.SchedPolicy, c.SchedPrio = proto.Uint32(2), proto.Uint32(10)
	})
	task := planDir(t, dir).Tasks[0]
	if task.Personality != 0x40000 || !task.ChildSubreaper || task.OOMScoreAdj != -17 {
		t.Errorf("task: personality %#x, subreaper %v, oom_score_adj %d", task.Personality, task.ChildSubreaper, task.OOMScoreAdj)
	}
	for i, want := range []struct {
		pdeath int
		sched  Sched
	}{{10, Sched{Policy: 3, Nice: 7}}, {0, Sched{Policy: 2, Prio: 10}}, {0, Sched{}}} {
		if th := task.Threads[i]; th.PdeathSig != want.pdeath || th.Sched != want.sched {
			t.Errorf("thread %d: pdeath %d sched %+v, want %d %+v", th.TID, th.PdeathSig, th.Sched, want.pdeath, want.sched)
		}
	}

	for _, tc := range []struct {
		name string
		edit func(c *criu_core.CoreEntry)
		want string
	}{
		{"personality", func(c *criu_core.CoreEntry) { c.Tc.Personality = proto.Uint32(0xffffffff) },
			"task 1: core-1.img: personality field 4294967295: more digits than a personality's hex has"},
		{"oom_score_adj", func(c *criu_core.CoreEntry) { c.Tc.OomScoreAdj = proto.Int32(1001) },
			"task 1: core-1.img: oom_score_adj 1001, not in -1000..1000"},
		{"parent-death signal", func(c *criu_core.CoreEntry) { c.ThreadCore.PdeathSig = proto.Uint32(65) },
			"task 1: core-1.img: thread 1: parent-death signal 65"},
		{"nice", func(c *criu_core.CoreEntry) { c.ThreadCore.SchedNice = proto.Int32(20) },
			"task 1: core-1.img: thread 1: nice 20, not in -20..19"},
		{"real-time priority", func(c *criu_core.CoreEntry) { c.ThreadCore.SchedPolicy = proto.Uint32(1) },
			"task 1: core-1.img: thread 1: real-time policy 1 with priority 0, not 1..99"},
		{"priority of a normal policy", func(c *criu_core.CoreEntry) { c.ThreadCore.SchedPrio = proto.Uint32(5) },
			"task 1: core-1.img: thread 1: scheduling policy 0 with priority 5"},
		{"unknown policy", func(c *criu_core.CoreEntry) { c.ThreadCore.SchedPolicy = proto.Uint32(9) },
			"task 1: core-1.img: thread 1: scheduling policy 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyImages(t, "threads")
			editImage(t, dir, "core-1.img", func(img *images.Image) { tc.edit(img.Entries[0].Message.(*criu_core.CoreEntry)) })
			_, err := openPlan(t, dir)
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a PlanError with %q", err, tc.want)
			}
		})
	}
}

// TestRestoreOOMScoreAdj restores the counter fixture with an
// oom_score_adj in its images. Raising it needs nothing: 400 comes back.
// Lowering it below the engine's needs CAP_SYS_RESOURCE: with it, -500
// comes back; without it (this machine's root), the restore goes on, as
// CRIU's, with the task at the engine's value and a warning naming the
// task, the value and the capability.
func TestRestoreOOMScoreAdj(t *testing.T) {
	needRoot(t)
	own, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		t.Fatal(err)
	}
	haveCap := capEff(t)&(1<<24) != 0 // CAP_SYS_RESOURCE
	for _, v := range []int32{400, -500} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			dir := fixture.CopyImages(t, "counter")
			editImage(t, dir, "core-1.img", func(img *images.Image) {
				img.Entries[0].Message.(*criu_core.CoreEntry).Tc.OomScoreAdj = proto.Int32(v)
			})
			installFixture(t, "counter")
			p := planDir(t, dir)
			var log bytes.Buffer
			r, err := Start(context.Background(), p, Options{Log: slog.New(slog.NewTextHandler(&log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			hosts := abortAtCleanup(t, r, p)
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", hosts[0]))
			if err != nil {
				t.Fatal(err)
			}
			got := strings.TrimSpace(string(b))
			switch {
			case v > 0 || haveCap:
				if got != fmt.Sprint(v) {
					t.Errorf("oom_score_adj %s, want %d", got, v)
				}
			default:
				warn := fmt.Sprintf("task 1: oom_score_adj %d: ", v)
				if got != strings.TrimSpace(string(own)) || !strings.Contains(log.String(), warn) || !strings.Contains(log.String(), "CAP_SYS_RESOURCE") {
					t.Errorf("oom_score_adj %s (the engine's %s), log:\n%s\nwant the engine's value and a warning with %q", got, own, log.String(), warn)
				}
			}
		})
	}
}

// capEff is this process's effective capabilities.
func capEff(t *testing.T) uint64 {
	t.Helper()
	var v uint64
	if _, err := fmt.Sscanf(procStatus(t, os.Getpid())["CapEff"][0], "%x", &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRestoreSched restores CRIU's threads fixture with scheduling put
// into its thread cores. A negative nice on a task whose credentials lack
// CAP_SYS_NICE is set before the credentials (after them it would fail
// with EACCES and the restore with it); SCHED_IDLE at nice 10 is set last,
// after the switch to COMPLETE, where its "sched" step lies.
func TestRestoreSched(t *testing.T) {
	needRoot(t)
	dir := fixture.CopyImages(t, "threads")
	for tid, s := range map[int]struct {
		policy uint32
		nice   int32
	}{1: {0, -5}, 2: {5, 10}} {
		editImage(t, dir, fmt.Sprintf("core-%d.img", tid), func(img *images.Image) {
			c := img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore
			c.SchedPolicy, c.SchedNice = proto.Uint32(s.policy), proto.Int32(s.nice)
			if tid == 1 {
				// no CAP_SYS_NICE once its credentials are back
				c.Creds.CapEff[0] &^= 1 << capSysNice
				c.Creds.CapPrm[0] &^= 1 << capSysNice
			}
		})
	}
	installFixture(t, "threads")
	p := planDir(t, dir)
	th := p.Tasks[0].Threads
	if !th[0].Sched.Early || th[1].Sched.Early {
		t.Errorf("early: thread 1 %v (want true), thread 2 %v (want false)", th[0].Sched.Early, th[1].Sched.Early)
	}
	rec := &recorder{}
	r, err := Start(context.Background(), p, Options{Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	hosts := abortAtCleanup(t, r, p)
	for tid, want := range map[int]string{1: "0 -5", 2: "5 10"} {
		host := hostTID(t, hosts[0], p.Tasks[0], tid)
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", hosts[0], host))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
		// fields 19 (nice) and 41 (policy) of stat, counted from the state (3)
		if got := f[41-3] + " " + f[19-3]; got != want {
			t.Errorf("thread %d: policy and nice %s, want %s", tid, got, want)
		}
	}
	seen := map[int]Stage{}
	for _, s := range rec.Steps {
		if s.Step == "sched" {
			seen[s.TID] = s.Stage
		}
	}
	// early: with the credentials, in RESTORE_CREDS
	if want := map[int]Stage{1: StageRestoreCreds, 2: StageComplete}; !maps.Equal(seen, want) {
		t.Errorf("sched steps by thread %v, want %v", seen, want)
	}
}
