package trace

import (
	"os"
	"sync"

	"go.opentelemetry.io/otel/attribute"
)

// Op is what was traced.
type Op string

const (
	OpRestore Op = "restore"
	OpDump    Op = "dump"
)

// StageEvent is a stage switch: the engine opened Stage for Participants
// arrivals at boot time At. Number is the stage's value (CRIU's for a
// restore) and orders stages that switch at the same instant.
type StageEvent struct {
	Stage        string
	Number       int
	Participants int
	At           uint64
}

// ArrivalEvent is one participant's arrival at a stage's barrier: a task
// (TID == PID) or one of its threads. PID and TID are the image's;
// HostPID is the task's pid in the engine's namespace, 0 when not known.
type ArrivalEvent struct {
	Stage   string
	PID     int
	TID     int
	HostPID int
	At      uint64
}

// StepEvent is one step of one task in one stage, from Begin to End. A
// failed step has Errno set and End 0 when it never finished.
type StepEvent struct {
	PID   int
	TID   int
	Stage string
	Step  string
	Begin uint64
	End   uint64
	Errno int
	// Engine: the engine did the step for task PID (filling its
	// namespaces, unlocking its connections), not the task itself.
	Engine bool
}

// KernelEvent is something the kernel saw a task do: a clone3 (with the
// pid it got), a setns, a futex wait or wake. PID and TID are the image's
// when the caller knows them, else 0 and HostPID/HostTID say who it was.
// An event with End after At (a futex wait from entry to return) becomes
// a short span, others a span event.
type KernelEvent struct {
	Kind    string
	PID     int
	TID     int
	HostPID int
	HostTID int
	At      uint64
	End     uint64
	Attrs   []attribute.KeyValue
}

// Phase is engine work outside the stages (loading images, planning,
// verifying), shown as a child of the root span.
type Phase struct {
	Name       string
	Begin, End uint64
}

// Task describes one task of the tree for its spans' attributes. PID,
// PPID, PGID and SID are the image's; HostPID is 0 when not known.
type Task struct {
	PID, PPID, PGID, SID int
	HostPID              int
	Comm                 string
	Threads              []int // thread ids, the leader's first
}

// Counts sizes the traced tree.
type Counts struct {
	Tasks, Threads int
	Pages          int64
	Bytes          int64
}

// Verdict is the kernel-side verification's result.
type Verdict struct {
	Checked bool   // false: the restore was not verified
	OK      bool   // every check passed
	Detail  string // the first failed check, or a summary
}

// Record is everything known about one restore or dump; Build turns it
// into a Trace.
type Record struct {
	Op        Op
	ImagesDir string
	// EnginePID is the pid of the process that ran the operation (crest):
	// its kernel events are the engine's, not a task's.
	EnginePID int
	Tasks     []Task
	Counts    Counts
	Verdict   Verdict
	Err       error // the restore's error, nil when it succeeded

	// Begin and End bound the traced operation; zero derives them from
	// the events.
	Begin, End uint64
	Clock      Clock

	Stages   []StageEvent
	Arrivals []ArrivalEvent
	Steps    []StepEvent
	Kernel   []KernelEvent
	Phases   []Phase
}

// Recorder collects a Record as the events arrive. Its methods are safe
// to call from several goroutines (the engine's and the monitor's).
type Recorder struct {
	mu  sync.Mutex
	rec Record
}

// NewRecorder starts recording op on the images in dir; it samples the
// clock offset now, and Finish samples it again.
func NewRecorder(op Op, dir string) *Recorder {
	return &Recorder{rec: Record{Op: op, ImagesDir: dir, EnginePID: os.Getpid(), Begin: Boottime(), Clock: SampleClock(8)}}
}

func (r *Recorder) StageSwitched(e StageEvent) {
	r.mu.Lock()
	r.rec.Stages = append(r.rec.Stages, e)
	r.mu.Unlock()
}

func (r *Recorder) TaskArrived(e ArrivalEvent) {
	r.mu.Lock()
	r.rec.Arrivals = append(r.rec.Arrivals, e)
	r.mu.Unlock()
}

func (r *Recorder) StepDone(e StepEvent) {
	r.mu.Lock()
	r.rec.Steps = append(r.rec.Steps, e)
	r.mu.Unlock()
}

func (r *Recorder) Kernel(e KernelEvent) {
	r.mu.Lock()
	r.rec.Kernel = append(r.rec.Kernel, e)
	r.mu.Unlock()
}

// Phase records engine work outside the stages.
func (r *Recorder) Phase(name string, begin, end uint64) {
	r.mu.Lock()
	r.rec.Phases = append(r.rec.Phases, Phase{Name: name, Begin: begin, End: end})
	r.mu.Unlock()
}

// Finish ends the recording of an operation that ended with err (nil
// for success) and returns the Record; fill in Tasks, Counts and Verdict
// on it before Build. Events after Finish are not in the returned Record.
func (r *Recorder) Finish(err error) *Record {
	end := Boottime()
	c := SampleClock(8)
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.rec
	rec.End = end
	rec.Err = err
	rec.Clock = rec.Clock.Tighter(c)
	r.rec = Record{Op: rec.Op, ImagesDir: rec.ImagesDir, EnginePID: rec.EnginePID}
	return &rec
}
