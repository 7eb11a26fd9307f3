package restore

// Observer receives the events of a restore as they happen. restore does
// not import trace or bpf: cmd wires the kernel monitor and the span
// recorder to these events. Calls come from the engine's goroutine, in
// order; an Observer must not block for long.
//
// Times are CLOCK_BOOTTIME nanoseconds, the clock of the agent's readings
// and of bpf_ktime_get_boot_ns.
type Observer interface {
	// StageSwitched: the engine opened stage for Participants arrivals.
	StageSwitched(StageEvent)
	// TaskArrived: a task finished its part of a stage and reached the
	// barrier (read from its slot once the stage is complete).
	TaskArrived(ArrivalEvent)
	// StepDone: a task finished a step, or failed in it (Err != 0).
	StepDone(StepEvent)
}

// StageEvent is a stage switch.
type StageEvent struct {
	Stage        Stage
	Participants int
	At           uint64
}

// ArrivalEvent is one task's arrival at a stage's barrier.
type ArrivalEvent struct {
	Stage   Stage
	PID     int // image pid of the task
	TID     int // image tid of the thread (PID for the leader)
	HostPID int // pid in the engine's namespace, 0 when not known yet
	At      uint64
}

// StepEvent is one step of one task.
type StepEvent struct {
	PID       int
	TID       int
	Step      string
	Stage     Stage
	Begin     uint64
	End       uint64 // 0 when the step failed
	Errno     int    // errno of a failed step, else 0
	Succeeded bool
	// Engine: the engine did the step for task PID (filling its
	// namespaces, unlocking its connections) while the task waited.
	Engine bool
}

// PrepareObserver is an Observer that also wants to know, before the agent
// starts, where the barrier's futexes are: the kernel-side monitor filters
// futex calls by these addresses. Start calls Prepared when the Observer
// implements it.
type PrepareObserver interface {
	Observer
	Prepared(PreparedEvent)
}

// PreparedEvent says where task_entries is and how many arrive at each stage.
type PreparedEvent struct {
	// In every task, task_entries is mapped at the same address: the
	// futexes start (the stage) and nr_in_progress are at these.
	StartAddr, InProgressAddr uint64
	// The engine's own mapping of the same page, for its futex calls.
	EngineStartAddr, EngineInProgressAddr uint64
	// Participants by stage, ROOT_TASK to COMPLETE, and which threads
	// (image tids) they are.
	Participants map[Stage]int
	TIDs         map[Stage][]int
}
