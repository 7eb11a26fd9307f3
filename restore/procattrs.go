package restore

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/crest-restore/crest/images"
)

// Sched is a thread's scheduling: its policy (SCHED_OTHER 0, FIFO 1, RR
// 2, BATCH 3, IDLE 5), real-time priority and nice value, all per thread.
// Early: set before the credentials, which take away the CAP_SYS_NICE it
// needs; else after COMPLETE, so that a thread at SCHED_IDLE or a high nice
// does not wait for idle CPUs through the last stages (CRIU sets it before
// the credentials always).
type Sched struct {
	Policy, Prio uint32
	Nice         int32
	Early        bool
}

const capSysNice = 23

// schedWhen decides, once t's credentials are known, which of its
// threads' scheduling is set early: a negative nice or a real-time policy
// needs CAP_SYS_NICE, which the engine has and the task may not.
func schedWhen(t *Task) {
	for i := range t.Threads {
		s := &t.Threads[i].Sched
		privileged := s.Nice < 0 || s.Policy == 1 || s.Policy == 2
		s.Early = privileged && t.Creds.CapEff&(1<<capSysNice) == 0
	}
}

// loadProcAttrs reads what a task and its threads have besides memory,
// files and signals: personality, child subreaper, oom_score_adj, and
// each thread's parent-death signal and scheduling. What the restore can
// not set is refused, naming the thread.
func loadProcAttrs(t *Task) error {
	tc := t.Threads[0].Core.GetTc()
	file := fmt.Sprintf("core-%d.img", t.PID)
	pers, ok := images.DecodePersonality(tc.GetPersonality())
	if !ok {
		return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("personality field %d: more digits than a personality's hex has (CRIU 4.2 writes the decimal number its hex digits spell)", tc.GetPersonality())}
	}
	t.Personality = pers
	t.ChildSubreaper = tc.GetChildSubreaper()
	t.OOMScoreAdj = tc.GetOomScoreAdj()
	if t.OOMScoreAdj < -1000 || t.OOMScoreAdj > 1000 {
		return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("oom_score_adj %d, not in -1000..1000", t.OOMScoreAdj)}
	}
	for i := range t.Threads {
		th := &t.Threads[i]
		c := th.Core.GetThreadCore()
		file := fmt.Sprintf("core-%d.img", th.TID)
		if sig := c.GetPdeathSig(); sig > 64 {
			return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("thread %d: parent-death signal %d", th.TID, sig)}
		}
		th.PdeathSig = int(c.GetPdeathSig())
		s := Sched{Policy: c.GetSchedPolicy(), Prio: c.GetSchedPrio(), Nice: c.GetSchedNice()}
		switch s.Policy {
		case 0, 3, 5: // SCHED_OTHER, SCHED_BATCH, SCHED_IDLE
			if s.Prio != 0 {
				return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("thread %d: scheduling policy %d with priority %d", th.TID, s.Policy, s.Prio)}
			}
		case 1, 2: // SCHED_FIFO, SCHED_RR
			if s.Prio < 1 || s.Prio > 99 {
				return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("thread %d: real-time policy %d with priority %d, not 1..99", th.TID, s.Policy, s.Prio)}
			}
		case 6:
			return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("thread %d: scheduling policy SCHED_DEADLINE is not restored yet", th.TID)}
		default:
			return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("thread %d: scheduling policy %d", th.TID, s.Policy)}
		}
		if s.Nice < -20 || s.Nice > 19 {
			return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("thread %d: nice %d, not in -20..19", th.TID, s.Nice)}
		}
		th.Sched = s
	}
	return nil
}

// setOOMScoreAdj gives every alive task its oom_score_adj, through its
// /proc file, while the tasks restore their memory (RESTORE). A value
// below what the task has needs CAP_SYS_RESOURCE: as CRIU does, a value
// that can not be set is not an error; it is returned, to be logged.
func (r *Restore) setOOMScoreAdj() (skipped []string, err error) {
	for _, t := range r.plan.Tasks {
		if t.Kind != TaskAlive || t.OOMScoreAdj == 0 {
			continue
		}
		path := fmt.Sprintf("/proc/%d/oom_score_adj", r.hostPIDs[t.PID])
		werr := os.WriteFile(path, []byte(strconv.Itoa(int(t.OOMScoreAdj))), 0)
		switch {
		case werr == nil:
		case errors.Is(werr, syscall.EACCES), errors.Is(werr, syscall.EPERM):
			skipped = append(skipped, fmt.Sprintf("task %d: oom_score_adj %d: %v (lowering it needs CAP_SYS_RESOURCE)", t.PID, t.OOMScoreAdj, werr))
		default:
			return skipped, fmt.Errorf("task %d: oom_score_adj %d: %w", t.PID, t.OOMScoreAdj, werr)
		}
	}
	return skipped, nil
}
