package dump

import (
	"strconv"

	"golang.org/x/sys/unix"
)

// Observer receives the events of a dump: which stage it is in, which
// tasks it found, and each task's steps. dump does not import trace: cmd
// turns these events into spans, as it does for a restore. Calls come
// from the dumping goroutine, in order; an Observer must not block for
// long.
//
// Times are CLOCK_BOOTTIME nanoseconds, the clock of a restore's events,
// so that both halves of a checkpoint read alike.
type Observer interface {
	// StageStarted: the dump entered a stage; it ends when the next one
	// starts.
	StageStarted(StageEvent)
	// TaskCollected: a task of the frozen tree, once its pids in the
	// root's pid namespace are known (after StageCollect).
	TaskCollected(TaskEvent)
	// StepDone: a task finished a step. The steps of StageFreeze are
	// reported after StageCollect, when the task's pid in its namespace
	// is known.
	StepDone(StepEvent)
}

// Stage is one part of a dump, in order.
type Stage int

const (
	StageFreeze      Stage = iota // seize and interrupt every thread of the tree
	StageCollect                  // pids and namespaces of every task
	StageDumpTasks                // each task's core, ids, memory, pages, files (a zombie's core)
	StageMemfds                   // the pages of memfds the tree maps
	StageWriteImages              // pstree, files, inventory and the rest; the directory moves into place
	StageRelease                  // let the tree go, or kill it
)

func (s Stage) String() string {
	names := [...]string{"freeze", "collect", "dump tasks", "memfds", "write images", "release"}
	if s >= 0 && int(s) < len(names) {
		return names[s]
	}
	return "stage(" + strconv.Itoa(int(s)) + ")"
}

// StageEvent is the start of a stage.
type StageEvent struct {
	Stage Stage
	At    uint64
}

// TaskEvent describes one task of the dumped tree. PID, PPID and Threads
// are in the root's pid namespace (the images' ids); HostPID in crest's.
type TaskEvent struct {
	PID, PPID int
	HostPID   int
	Threads   []int
}

// StepEvent is one step of one task, from Begin to End. PID is the
// task's pid in the root's pid namespace.
type StepEvent struct {
	PID   int
	Stage Stage
	Step  string
	Begin uint64
	End   uint64
}

// observe calls an Observer, or nothing when there is none.
type observe struct{ o Observer }

func (o observe) stage(s Stage) {
	if o.o != nil {
		o.o.StageStarted(StageEvent{Stage: s, At: boottime()})
	}
}

// step reports t's step name of stage s, from begin until now.
func (o observe) step(t *task, s Stage, name string, begin uint64) {
	o.stepAt(t, s, name, begin, boottime())
}

func (o observe) stepAt(t *task, s Stage, name string, begin, end uint64) {
	if o.o != nil {
		o.o.StepDone(StepEvent{PID: int(t.nsPid), Stage: s, Step: name, Begin: begin, End: end})
	}
}

// collected reports the tree's tasks, then the freeze's steps, which
// waited for the tasks' pids.
func (o observe) collected(tr *tree) {
	if o.o == nil {
		return
	}
	for _, t := range tr.tasks {
		e := TaskEvent{PID: int(t.nsPid), HostPID: t.pid}
		if t.parent != nil {
			e.PPID = int(t.parent.nsPid)
		}
		for _, th := range t.threads {
			e.Threads = append(e.Threads, int(th.nsTid))
		}
		o.o.TaskCollected(e)
	}
	for _, t := range tr.tasks {
		if t.dead == nil { // a zombie is not seized
			o.stepAt(t, StageFreeze, "seize", t.seized[0], t.seized[1])
		}
	}
}

// boottime reads CLOCK_BOOTTIME in nanoseconds; it cannot fail.
func boottime() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}
