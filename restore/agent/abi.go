package agent

// The Go mirror of plan.h. Field order, sizes and padding must match the C
// structures exactly: TestLayout compiles plan.h with gcc and compares every
// size and offset (the c tags name the C fields).

// Plan file constants.
const (
	PlanMagic   = 0x4e414c5054534552 // "RESTPLAN"
	PlanVersion = 15

	PlanFD        = 3 // the launcher's fd of the plan memfd
	SharedFD      = 4 // the launcher's fd of the shared area memfd
	EnginePidfdFD = 5 // the launcher's fd of the engine's pidfd

	PlanNewPID = 0x1 // Plan.Flags: the root is pid 1 of a new pid namespace
	// Plan.Flags: the engine ptraces every thread through COMPLETE and
	// notes its arrival there itself
	PlanFinishedByEngine = 0x2
	// Plan.Flags: the tree gets a time namespace (Plan.BootOffsetNs)
	PlanNewTime = 0x4
	// Plan.Flags: the root is born in new UTS and IPC namespaces, which
	// the engine fills in PREPARE_NAMESPACES
	PlanNewUTS = 0x10
	PlanNewIPC = 0x20
	// Plan.Flags: the root is born in a new net namespace, which the
	// engine fills in PREPARE_NAMESPACES
	PlanNewNet = 0x40
	// Plan.Flags: the root is born in a new mount namespace, whose
	// mounts the engine makes in PREPARE_NAMESPACES
	PlanNewNS = 0x80
	// Plan.Flags: the root is born in a new user namespace, which owns
	// the others; the engine writes its maps at ROOT_TASK
	PlanNewUser = 0x100
	// Plan.Flags, with PlanNewTime: the root makes the tree's time
	// namespace in its user namespace, with Plan.TimeOffsets, and
	// enters it; the launcher makes none
	PlanRootTimeNS = 0x200

	// in Task.CgroupFDs: unshare(CLONE_NEWCGROUP) there (the root of a
	// tree with a cgroup namespace of its own)
	CgroupUnshareNS = -1

	XSaveComponents = 10 // Plan.XSaveOff and XSaveLen: x87 up to PKRU
	TimeOffsetsLen  = 96 // Plan.TimeOffsets

	// TaskEntries.Launch: the launcher is ready, the engine lets it go.
	LaunchReady = 1
	LaunchGo    = 2
)

// Stages, CRIU's values.
const (
	StageFail              = -1
	StageRootTask          = 0
	StagePrepareNamespaces = 1
	StageForking           = 2
	StageRestore           = 3
	StageRestoreSigchld    = 4
	StageRestoreCreds      = 5
	StageComplete          = 6
	NrStages               = 7
)

// Steps a task records in its slot.
const (
	StepNone         = 0
	StepLaunch       = 1
	StepCheckPID     = 2
	StepSetsid       = 3
	StepSetpgid      = 4
	StepFork         = 5
	StepBarrier      = 6
	StepJoinPgid     = 7
	StepFiles        = 8
	StepMemory       = 9
	StepThreads      = 10
	StepCreds        = 11
	StepSigreturn    = 12
	StepFS           = 13
	StepSigacts      = 14
	StepSignals      = 15
	StepTimers       = 16
	StepWaitChildren = 17
	StepExit         = 18
	StepSeccomp      = 19
	StepSched        = 20
	StepCgroups      = 21
	StepTimeNS       = 22
	NrSteps          = 23
)

// Plan.Faults bits: faults injected on purpose for the monitor's tests.
const (
	FaultNoSetTID    = 0x1
	FaultNoWait      = 0x2
	FaultEarlySwitch = 0x4
	FaultDropThread  = 0x8
)

// Task.Session and Task.Group values.
const (
	SessionInherit = 0
	SessionLead    = 1

	GroupInherit = 0
	GroupLead    = 1
	GroupJoin    = 2
)

// Task.Kind values: CRIU's task states.
const (
	TaskAlive  = 1
	TaskZombie = 2 // CRIU's TASK_DEAD
	TaskHelper = 4
)

// VMA.Kind values.
const (
	VMAAnonPrivate = 1
	VMAFilePrivate = 2
	VMAFileShared  = 3
	VMAVDSO        = 4
	VMAVVAR        = 5
	VMAVsyscall    = 6
	VMASysVShm     = 7
)

// Plan is struct crest_plan, the head of the plan memfd.
type Plan struct {
	Magic      uint64 `c:"magic"`
	Version    uint32 `c:"version"`
	Size       uint32 `c:"size"`
	AreaStart  uint64 `c:"area_start"`
	AreaSize   uint64 `c:"area_size"`
	PlanAddr   uint64 `c:"plan_addr"`
	SharedAddr uint64 `c:"shared_addr"`
	SharedSize uint64 `c:"shared_size"`
	Flags      uint32 `c:"flags"`
	NrTasks    uint32 `c:"nr_tasks"`
	NrThreads  uint32 `c:"nr_threads"`
	NrHelpers  uint32 `c:"nr_helpers"`
	TasksOff   uint32 `c:"tasks_off"`
	SlotsOff   uint32 `c:"slots_off"`

	RestorerAddr uint64 `c:"restorer_addr"`
	RestorerSize uint64 `c:"restorer_size"`
	StackAddr    uint64 `c:"stack_addr"`
	StackSize    uint64 `c:"stack_size"`
	EnginePidfd  int32  `c:"engine_pidfd"`
	FDBase       int32  `c:"fd_base"`
	NrStacks     uint32 `c:"nr_stacks"`
	Faults       uint32 `c:"faults"`
	SigIgnored   uint64 `c:"sig_ignored"`

	XCR0      uint64                  `c:"xcr0"`
	XSaveSize uint32                  `c:"xsave_size"`
	XSavePad  uint32                  `c:"xsave_pad"`
	XSaveOff  [XSaveComponents]uint32 `c:"xsave_off"`
	XSaveLen  [XSaveComponents]uint32 `c:"xsave_len"`

	BootOffsetNs int64 `c:"boot_offset_ns"`
	// TimeOffsets: with PlanNewTime and PlanNewUser, the text the root
	// writes into the timens_offsets of the time namespace it makes in
	// its user namespace, NUL-terminated.
	TimeOffsets [TimeOffsetsLen]byte `c:"time_offsets"`
}

// Task is struct crest_task.
type Task struct {
	PID          int32     `c:"pid"`
	PPID         int32     `c:"ppid"`
	PGID         int32     `c:"pgid"`
	SID          int32     `c:"sid"`
	Index        int32     `c:"index"`
	Parent       int32     `c:"parent"`
	Session      uint32    `c:"session"`
	Group        uint32    `c:"group"`
	NrChildren   uint32    `c:"nr_children"`
	ChildrenOff  uint32    `c:"children_off"`
	NrThreads    uint32    `c:"nr_threads"`
	ThreadsOff   uint32    `c:"threads_off"`
	NrTakes      uint32    `c:"nr_takes"`
	TakesOff     uint32    `c:"takes_off"`
	NrFDs        uint32    `c:"nr_fds"`
	FDsOff       uint32    `c:"fds_off"`
	NrVMAs       uint32    `c:"nr_vmas"`
	VMAsOff      uint32    `c:"vmas_off"`
	NrRuns       uint32    `c:"nr_runs"`
	RunsOff      uint32    `c:"runs_off"`
	MMOff        uint32    `c:"mm_off"`
	CredsOff     uint32    `c:"creds_off"`
	NrGroups     uint32    `c:"nr_groups"`
	GroupsOff    uint32    `c:"groups_off"`
	Comm         [16]byte  `c:"comm"`
	CwdFD        int32     `c:"cwd_fd"`
	RootFD       int32     `c:"root_fd"`
	Umask        uint32    `c:"umask"`
	SigactsOff   uint32    `c:"sigactions_off"`
	NrShared     uint32    `c:"nr_shared_sigs"`
	SharedOff    uint32    `c:"shared_sigs_off"`
	Itimers      [3]Itimer `c:"itimers"`
	NrTimers     uint32    `c:"nr_posix_timers"`
	TimersOff    uint32    `c:"posix_timers_off"`
	Kind         uint32    `c:"kind"`
	ExitCode     int32     `c:"exit_code"`
	NrHelpers    uint32    `c:"nr_helpers"`
	NrZombies    uint32    `c:"nr_zombies"`
	Personality  uint32    `c:"personality"`
	Subreaper    uint32    `c:"child_subreaper"`
	NrEpollAdds  uint32    `c:"nr_epoll_adds"`
	EpollAddsOff uint32    `c:"epoll_adds_off"`
	// a session leader's controlling terminal, a pty slave (pty.c):
	// the local fd it takes CTTYEngineFD to (0: none), the foreground
	// group
	CTTYFD       int32  `c:"ctty_fd"`
	CTTYEngineFD int32  `c:"ctty_engine_fd"`
	CTTYPgrp     int32  `c:"ctty_pgrp"`
	CTTYPad      uint32 `c:"ctty_pad"`
	// the engine's fds of the cgroup.procs files the task writes itself
	// into before it forks (fork.c): int32s at CgroupFDsOff
	NrCgroupFDs  uint32 `c:"nr_cgroup_fds"`
	CgroupFDsOff uint32 `c:"cgroup_fds_off"`
}

// EpollAdd is struct crest_epoll_add.
type EpollAdd struct {
	EpFD   int32  `c:"epfd"`
	TFD    int32  `c:"tfd"`
	Events uint32 `c:"events"`
	Pad    uint32 `c:"pad"`
	Data   uint64 `c:"data"`
}

// PosixTimer is struct crest_posix_timer.
type PosixTimer struct {
	ID           uint32 `c:"id"`
	ClockID      uint32 `c:"clock_id"`
	Signo        uint32 `c:"signo"`
	Notify       uint32 `c:"notify"`
	SivalPtr     uint64 `c:"sival_ptr"`
	NotifyTID    int32  `c:"notify_tid"`
	Pad          uint32 `c:"pad"`
	IntervalSec  uint64 `c:"interval_sec"`
	IntervalNsec uint64 `c:"interval_nsec"`
	ValueSec     uint64 `c:"value_sec"`
	ValueNsec    uint64 `c:"value_nsec"`
}

// Itimer is struct crest_itimer.
type Itimer struct {
	IntervalSec  uint64 `c:"interval_sec"`
	IntervalUsec uint64 `c:"interval_usec"`
	ValueSec     uint64 `c:"value_sec"`
	ValueUsec    uint64 `c:"value_usec"`
}

// Siginfo is struct crest_siginfo.
type Siginfo struct {
	Info [128]byte `c:"info"`
}

// NrSignals is the number of struct crest_sigaction of a task.
const NrSignals = 64

// Sigaction is struct crest_sigaction.
type Sigaction struct {
	Handler  uint64 `c:"handler"`
	Flags    uint64 `c:"flags"`
	Restorer uint64 `c:"restorer"`
	Mask     uint64 `c:"mask"`
}

// Take is struct crest_take.
type Take struct {
	EngineFD int32 `c:"engine_fd"`
	LocalFD  int32 `c:"local_fd"`
}

// FD is struct crest_fd.
type FD struct {
	FD      int32  `c:"fd"`
	SrcFD   int32  `c:"src_fd"`
	Cloexec uint32 `c:"cloexec"`
	Async   uint32 `c:"async"`
}

// VMA is struct crest_vma.
type VMA struct {
	Start uint64 `c:"start"`
	End   uint64 `c:"end"`
	Pgoff uint64 `c:"pgoff"`
	Madv  uint64 `c:"madv"`
	Prot  uint32 `c:"prot"`
	Flags uint32 `c:"flags"`
	Kind  uint32 `c:"kind"`
	SrcFD int32  `c:"src_fd"`
}

// Run is struct crest_run.
type Run struct {
	Vaddr   uint64 `c:"vaddr"`
	NrPages uint64 `c:"nr_pages"`
	Offset  uint64 `c:"offset"`
	SrcFD   int32  `c:"src_fd"`
	Pad     uint32 `c:"pad"`
}

// Creds is struct crest_creds.
type Creds struct {
	UID        uint32 `c:"uid"`
	EUID       uint32 `c:"euid"`
	SUID       uint32 `c:"suid"`
	FSUID      uint32 `c:"fsuid"`
	GID        uint32 `c:"gid"`
	EGID       uint32 `c:"egid"`
	SGID       uint32 `c:"sgid"`
	FSGID      uint32 `c:"fsgid"`
	Secbits    uint32 `c:"secbits"`
	NoNewPrivs uint32 `c:"no_new_privs"`
	CapInh     uint64 `c:"cap_inh"`
	CapPrm     uint64 `c:"cap_prm"`
	CapEff     uint64 `c:"cap_eff"`
	CapBnd     uint64 `c:"cap_bnd"`
	CapAmb     uint64 `c:"cap_amb"`
	Dumpable   int32  `c:"dumpable"`
	Pad        uint32 `c:"pad"`
}

// MM is struct crest_mm.
type MM struct {
	StartCode  uint64 `c:"start_code"`
	EndCode    uint64 `c:"end_code"`
	StartData  uint64 `c:"start_data"`
	EndData    uint64 `c:"end_data"`
	StartBrk   uint64 `c:"start_brk"`
	Brk        uint64 `c:"brk"`
	StartStack uint64 `c:"start_stack"`
	ArgStart   uint64 `c:"arg_start"`
	ArgEnd     uint64 `c:"arg_end"`
	EnvStart   uint64 `c:"env_start"`
	EnvEnd     uint64 `c:"env_end"`
	AuxvOff    uint32 `c:"auxv_off"`
	NrAuxv     uint32 `c:"nr_auxv"`
	ExeFD      int32  `c:"exe_fd"`
	Pad        uint32 `c:"pad"`
}

// Regs is struct crest_regs (struct user_regs_struct of x86-64).
type Regs struct {
	R15    uint64 `c:"r15"`
	R14    uint64 `c:"r14"`
	R13    uint64 `c:"r13"`
	R12    uint64 `c:"r12"`
	BP     uint64 `c:"bp"`
	BX     uint64 `c:"bx"`
	R11    uint64 `c:"r11"`
	R10    uint64 `c:"r10"`
	R9     uint64 `c:"r9"`
	R8     uint64 `c:"r8"`
	AX     uint64 `c:"ax"`
	CX     uint64 `c:"cx"`
	DX     uint64 `c:"dx"`
	SI     uint64 `c:"si"`
	DI     uint64 `c:"di"`
	OrigAX uint64 `c:"orig_ax"`
	IP     uint64 `c:"ip"`
	CS     uint64 `c:"cs"`
	Flags  uint64 `c:"flags"`
	SP     uint64 `c:"sp"`
	SS     uint64 `c:"ss"`
	FSBase uint64 `c:"fs_base"`
	GSBase uint64 `c:"gs_base"`
	DS     uint64 `c:"ds"`
	ES     uint64 `c:"es"`
	FS     uint64 `c:"fs"`
	GS     uint64 `c:"gs"`
}

// Seccomp modes (Thread.SeccompMode), CRIU's and the kernel's.
const (
	SeccompModeDisabled = 0
	SeccompModeStrict   = 1
	SeccompModeFilter   = 2
)

// SeccompFilter is struct crest_seccomp_filter.
type SeccompFilter struct {
	Flags   uint32 `c:"flags"`
	Len     uint32 `c:"len"`
	ProgOff uint32 `c:"prog_off"`
	Pad     uint32 `c:"pad"`
}

// Thread is struct crest_thread.
type Thread struct {
	TID          int32     `c:"tid"`
	Index        uint32    `c:"index"`
	Slot         uint32    `c:"slot"`
	RseqSize     uint32    `c:"rseq_size"`
	RseqAddr     uint64    `c:"rseq_addr"`
	RseqSig      uint32    `c:"rseq_sig"`
	SasFlags     uint32    `c:"sas_flags"`
	SasSP        uint64    `c:"sas_sp"`
	SasSize      uint64    `c:"sas_size"`
	RobustList   uint64    `c:"robust_list"`
	RobustLen    uint64    `c:"robust_len"`
	ClearTIDAddr uint64    `c:"clear_tid_addr"`
	Sigmask      uint64    `c:"sigmask"`
	NrSigs       uint32    `c:"nr_sigs"`
	SigsOff      uint32    `c:"sigs_off"`
	PdeathSig    int32     `c:"pdeath_sig"`
	SchedPolicy  uint32    `c:"sched_policy"`
	SchedPrio    uint32    `c:"sched_prio"`
	SchedNice    int32     `c:"sched_nice"`
	SeccompMode  uint32    `c:"seccomp_mode"`
	NrFilters    uint32    `c:"nr_filters"`
	FiltersOff   uint32    `c:"filters_off"`
	SchedEarly   uint32    `c:"sched_early"`
	Regs         Regs      `c:"regs"`
	FXSave       [512]byte `c:"fxsave"`
	XState       XState    `c:"xstate"`
}

// XStateKnown are the XSAVE components XState carries: x87, SSE, AVX,
// MPX, AVX-512 and PKRU.
const XStateKnown = 0x2ff

// XState is struct crest_xstate.
type XState struct {
	XStateBV uint64     `c:"xstate_bv"`
	YMMH     [256]byte  `c:"ymmh"`
	BndRegs  [64]byte   `c:"bndregs"`
	BndCSR   [64]byte   `c:"bndcsr"`
	Opmask   [64]byte   `c:"opmask"`
	ZMMHi256 [512]byte  `c:"zmm_hi256"`
	Hi16ZMM  [1024]byte `c:"hi16_zmm"`
	PKRU     uint32     `c:"pkru"`
	Pad      uint32     `c:"pad"`
}

// Failure is struct crest_failure.
type Failure struct {
	State uint32 `c:"state"` // 0 none, 1 being written, 2 written
	PID   int32  `c:"pid"`
	Stage int32  `c:"stage"`
	Step  int32  `c:"step"`
	Err   int32  `c:"err"`
	Pad   uint32 `c:"pad"`
}

// TaskEntries is struct crest_task_entries, at the start of the shared area.
type TaskEntries struct {
	Start        int32   `c:"start"`
	NrInProgress uint32  `c:"nr_in_progress"`
	NrTasks      uint32  `c:"nr_tasks"`
	NrThreads    uint32  `c:"nr_threads"`
	NrHelpers    uint32  `c:"nr_helpers"`
	RootHostPID  int32   `c:"root_host_pid"`
	Fail         Failure `c:"fail"`
	Launch       uint32  `c:"launch"`
	Pad          uint32  `c:"pad"`
}

// Slot is struct crest_slot, one per thread in the shared area.
type Slot struct {
	PID         int32            `c:"pid"`
	SeenPID     int32            `c:"seen_pid"`
	Stage       int32            `c:"stage"`
	Step        int32            `c:"step"`
	Err         int32            `c:"err"`
	Pad         uint32           `c:"pad"`
	ArriveNs    [NrStages]uint64 `c:"arrive_ns"`
	StepBeginNs [NrSteps]uint64  `c:"step_begin_ns"`
	StepEndNs   [NrSteps]uint64  `c:"step_end_ns"`
}

// StepNames are the steps' names as errors and spans show them.
var StepNames = [NrSteps]string{
	StepNone: "none", StepLaunch: "launch", StepCheckPID: "check pid", StepSetsid: "setsid",
	StepSetpgid: "setpgid", StepFork: "fork children", StepBarrier: "barrier", StepJoinPgid: "join group",
	StepFiles: "files", StepMemory: "memory", StepThreads: "threads", StepCreds: "creds", StepSigreturn: "sigreturn",
	StepFS: "fs", StepSigacts: "sigactions", StepSignals: "pending signals", StepTimers: "timers",
	StepWaitChildren: "wait helpers and zombies", StepExit: "exit", StepSeccomp: "seccomp",
	StepSched: "sched", StepCgroups: "cgroups", StepTimeNS: "time namespace",
}
