package restore

import (
	"fmt"
	"strings"
	"syscall"

	"github.com/crest-restore/crest/restore/agent"
)

// Stage is one of CRIU's restore stages; the values are CRIU's and the
// agent's (plan.h).
type Stage int32

const (
	StageFail              Stage = agent.StageFail
	StageRootTask          Stage = agent.StageRootTask
	StagePrepareNamespaces Stage = agent.StagePrepareNamespaces
	StageForking           Stage = agent.StageForking
	StageRestore           Stage = agent.StageRestore
	StageRestoreSigchld    Stage = agent.StageRestoreSigchld
	StageRestoreCreds      Stage = agent.StageRestoreCreds
	StageComplete          Stage = agent.StageComplete
)

var stageNames = map[Stage]string{
	StageFail: "FAIL", StageRootTask: "ROOT_TASK", StagePrepareNamespaces: "PREPARE_NAMESPACES",
	StageForking: "FORKING", StageRestore: "RESTORE", StageRestoreSigchld: "RESTORE_SIGCHLD",
	StageRestoreCreds: "RESTORE_CREDS", StageComplete: "COMPLETE",
}

func (s Stage) String() string {
	if n, ok := stageNames[s]; ok {
		return n
	}
	return fmt.Sprintf("stage(%d)", int32(s))
}

// Participants returns how many tasks and threads must arrive at the
// barrier of stage s before the engine switches to the next one (CRIU's
// stage_participants): FORKING every task and helper (Tasks holds both),
// RESTORE every thread (a zombie counts one) and helper; after RESTORE the
// zombies and helpers are gone, as in CRIU, which subtracts the zombies
// from nr_threads then. Every thread also counts itself out of COMPLETE
// right before its rt_sigreturn, but only when the engine does not step
// it through that with ptrace, as CRIU does (Options.KeepArea; see
// Restore.barrierParticipants).
func (p *Plan) Participants(s Stage) int {
	switch s {
	case StageRootTask, StagePrepareNamespaces:
		return 1
	case StageForking:
		return len(p.Tasks)
	case StageRestore:
		return p.NrThreads + p.NrHelpers
	case StageRestoreSigchld, StageRestoreCreds, StageComplete:
		return p.NrThreads - p.NrZombies
	}
	return 0
}

// participant is one arrival at a stage's barrier: a task's leader, or
// one of its threads.
type participant struct {
	task *Task
	tid  int
	slot int
}

// participants returns who arrives at stage s: the root for the first two
// stages, every task for FORKING, every thread (and zombie and helper) in
// RESTORE, every thread of the alive tasks after it.
func (p *Plan) participants(s Stage) []participant {
	var out []participant
	switch s {
	case StageFail:
	case StageRootTask, StagePrepareNamespaces:
		out = append(out, participant{p.Root(), p.Root().PID, p.Root().Threads[0].Slot})
	case StageForking:
		for _, t := range p.Tasks {
			out = append(out, participant{t, t.PID, t.Threads[0].Slot})
		}
	default:
		for _, t := range p.Tasks {
			if s > StageRestore && t.Kind != TaskAlive {
				continue
			}
			for _, th := range t.Threads {
				out = append(out, participant{t, th.TID, th.Slot})
			}
		}
	}
	return out
}

// StepName returns the name of an agent step (plan.h's CREST_STEP_*).
func StepName(step int) string {
	if step >= 0 && step < len(agent.StepNames) {
		return agent.StepNames[step]
	}
	return fmt.Sprintf("step(%d)", step)
}

// StageError is a failed restore: in which stage, which task (image pid; 0
// for the engine or the launcher) and which step, with the errno.
type StageError struct {
	Stage Stage
	PID   int
	TID   int // the failing thread when it is not the task's leader, else 0
	Step  string
	Errno syscall.Errno // 0 when the failure has no errno
	Err   error         // the cause, when the engine saw it (timeout, exit)
}

func (e *StageError) Error() string {
	s := fmt.Sprintf("restore: stage %s", e.Stage)
	if e.PID != 0 {
		s += fmt.Sprintf(": task %d", e.PID)
	}
	if e.TID != 0 {
		s += fmt.Sprintf(" thread %d", e.TID)
	}
	if e.Step != "" {
		s += ": " + e.Step
	}
	if e.Errno != 0 {
		s += fmt.Sprintf(": %v (errno %d)", e.Errno, int(e.Errno))
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *StageError) Unwrap() error {
	if e.Err != nil {
		return e.Err
	}
	if e.Errno != 0 {
		return e.Errno
	}
	return nil
}

// PIDInUseError: the pid a task must have is taken in the pid namespace it
// is forked into (clone3 with set_tid failed with EEXIST).
type PIDInUseError struct {
	PID int
	// Holders say what holds the pid, as far as /proc shows: a process
	// or thread with it, or processes whose group or session it still
	// names (the dumped tree's zombies, not reaped yet, keep their
	// leader's pid taken).
	Holders []string
}

func (e *PIDInUseError) Error() string {
	s := fmt.Sprintf("pid %d is in use (EEXIST)", e.PID)
	if len(e.Holders) > 0 {
		s += ": " + strings.Join(e.Holders, "; ")
	}
	return s
}

func (e *PIDInUseError) Unwrap() error { return syscall.EEXIST }
