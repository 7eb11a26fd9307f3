package restore

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore/agent"
)

// Plan is everything a restore needs to know about an image set, resolved
// once in Go so that neither the engine's stages nor the agent ever parse
// images.
type Plan struct {
	Dir *images.Dir
	// Tasks in pstree order; Tasks[0] is the root. Every Task's Index is
	// its position here and its slot in the shared task_entries area.
	Tasks []*Task
	// NewPIDNS: the root had a pid namespace of its own (not the dumping
	// criu's), whose pid 1 it is; the restore creates it (every fixture is
	// made this way). Otherwise the tree is restored into crest's pid
	// namespace.
	NewPIDNS bool
	// Clocks, when set, are the monotonic and boot-time clocks the tree's
	// time namespace showed at the dump: the restore gives the tree a new
	// time namespace whose clocks go on from them (timens.go).
	// OwnTimeNS: the tree had a time namespace of its own; without one,
	// as CRIU does, a tree gets one when the kernel can.
	Clocks    *Clocks
	OwnTimeNS bool
	// UTS and IPC, when set, are the UTS and IPC namespaces the tree had
	// of its own (the root's, not the dumping criu's): the root is born
	// in new ones, which the engine fills in PREPARE_NAMESPACES
	// (nsuts.go, ipcns.go). nil: the tree shares the engine's.
	UTS *UTSNamespace
	IPC *IPCNamespace
	// Net, when set, is the net namespace the tree had of its own: the
	// root is born in a new one, which the engine fills in
	// PREPARE_NAMESPACES, and the tree's sockets are made in it
	// (netns.go, netns_fill.go). nil: the tree shares the engine's.
	Net *NetNamespace
	// netImages are the netns-*.img of the image set, which only the
	// tree's own net namespace may have (checkNetImages).
	netImages []string
	// Mnt, when set, is the mount namespace the tree had of its own:
	// the root is born in a new one, whose mounts the engine makes in
	// PREPARE_NAMESPACES, and the tree's files are opened in it
	// (mntns.go, mntns_mount.go). nil: the tree shares the engine's.
	Mnt *MntNamespace
	// mntImages are the mountpoints-*.img of the image set, which only
	// the tree's own mount namespace may have (checkMntImages).
	mntImages []string
	// User, when set, is the user namespace the tree had of its own: the
	// root is born in a new one, which owns its other new namespaces, and
	// whose maps the engine writes at ROOT_TASK (userns.go). nil: the tree
	// shares the engine's.
	User *UserNamespace
	// userImages are the userns-*.img of the image set, which only the
	// tree's own user namespace may have (planUserNS).
	userImages []string
	// Cgroups, when set, are the tree's cgroups (cgroup.img): where each
	// task and thread goes, the cgroups to make (cgroup.go).
	Cgroups *Cgroups

	seccomp *seccomp.SeccompEntry // seccomp.img, once a thread needed it (seccompFilters)
	// NrThreads counts the threads of the tasks of the images, one for
	// each zombie (CRIU's nr_threads); NrHelpers the helper tasks the
	// plan adds to stand in for dead session or group leaders; NrZombies
	// the zombies. The shared area has a slot per thread, then one per
	// helper (Plan.nrSlots).
	NrThreads int
	NrHelpers int
	NrZombies int
	// Files are the open file descriptions the fd tables refer to, by
	// their files.img id, each with the tasks that hold it.
	Files map[uint32]*File
	// Pipes by pipe_id and memfd inodes by inode_id: the objects behind
	// the open files of kind pipe and memfd, each prepared once
	// (pipes.go, memfd.go).
	Pipes  map[uint32]*Pipe
	Fifos  map[uint32]*Pipe
	Memfds map[uint32]*Memfd
	// Shmems are the shared anonymous objects dumped as VMA_ANON_SHARED,
	// by shmid (memfd.go).
	Shmems map[uint64]*Memfd

	// ShellJob is set for a job dumped with --shell-job, whose session
	// and terminal were its shell's (tty.go); planned only with
	// Options.ShellJob (shellJob).
	ShellJob *ShellJob
	shellJob bool
	// PTYs are the ptys with both ends in the tree, by index (pty.go).
	PTYs map[int]*PTYPair

	pipeData map[uint32]images.PipeData   // pipes-data.img by pipe_id, read on first use
	ttys     map[uint32]*tty.TtyInfoEntry // tty-info.img by id, read on first use
	unix     *unixSockets                 // files.img's unix sockets and sk-queues.img, read on first use
	// sigio are the files with an owner, a signal or O_ASYNC for SIGIO,
	// which the engine sets after RESTORE (fown.go); true: O_ASYNC.
	sigio    map[uint32]bool
	fifoData map[uint32]images.PipeData // fifo-data.img
	inodes   map[uint32]*memfd.MemfdInodeEntry

	// tcpEstablished: Options.TCPEstablished, restore established TCP
	// connections (tcpest.go)
	tcpEstablished bool
	// remaps are remap-fpath.img and the ghost files, read on first use
	// (ghost.go)
	remaps *remapTable
}

// Task is one process of the tree.
type Task struct {
	Index     int
	PID, PPID int // PPID as in the images: the parent once the restore is over
	PGID, SID int
	// Parent is the task that forks this one, and Children those it
	// forks: the image's parent, except for the children a helper forks
	// (they go to the init when it exits, as their PPID says).
	Parent   *Task
	Children []*Task
	// Kind is what the task is: alive, a zombie (ExitCode is its wait
	// status), or a helper the plan added. Zombies and helpers have one
	// Thread (a slot, no core for helpers) and nothing else to restore.
	Kind       TaskKind
	ExitCode   uint32
	Threads    []Thread // Threads[0] is the leader (TID == PID)
	Comm       string
	Session    SessionAction
	Group      GroupAction
	IDs        *criu_core.TaskKobjIdsEntry
	Creds      Creds
	FS         FS
	FDs        []FD
	Mem        Memory
	Sigactions []Sigaction
	Rlimits    []Rlimit
	// Personality is personality(2)'s value, set with the memory;
	// ChildSubreaper PR_SET_CHILD_SUBREAPER; OOMScoreAdj the task's
	// /proc oom_score_adj, set by the engine (procattrs.go).
	Personality    uint32
	ChildSubreaper bool
	OOMScoreAdj    int32
	// EpollAdds are the epoll items the task adds once its fds are in
	// place (anonfiles.go).
	EpollAdds []EpollAdd
	// StopSignal, when not 0, is the signal that had stopped the task
	// at the dump (CRIU's TASK_STOPPED): the engine sends it again once
	// the task is restored, and the task stays stopped until a SIGCONT.
	StopSignal syscall.Signal
	// Itimers are ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF;
	// PosixTimers the task's timer_create timers; SharedSignals the
	// signals pending for the whole task (signals.go).
	Itimers       [3]Itimer
	PosixTimers   []PosixTimer
	SharedSignals []Siginfo
	// CTTY, for a session leader, is its controlling terminal when that
	// was a pty slave of the tree (pty.go).
	CTTY *CTTY
}

// Thread is one thread of a task, with its core image.
type Thread struct {
	TID  int
	Slot int // its slot in the shared area: threads in plan order
	Core *criu_core.CoreEntry
	// Signals pending for this thread only, oldest first.
	Signals []Siginfo
	// Seccomp is the thread's seccomp state, installed last.
	Seccomp Seccomp
	// PdeathSig is the thread's parent-death signal, 0 for none.
	PdeathSig int
	Sched     Sched
}

// taskStopped is CRIU's TASK_STOPPED: a task in a group stop at the dump.
const taskStopped = 3

// stopSignal is the signal that stops a TASK_STOPPED task again: the
// image's stop_signo, or SIGSTOP for images before CRIU wrote it (0), as
// CRIU does. Other signals would not stop the task, or would kill it.
func stopSignal(signo uint32) (syscall.Signal, error) {
	switch sig := syscall.Signal(signo); sig {
	case 0:
		return syscall.SIGSTOP, nil
	case syscall.SIGSTOP, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU:
		return sig, nil
	default:
		return 0, fmt.Errorf("stopped task with stop_signo %d, which is not a stop signal", signo)
	}
}

// TaskKind is CRIU's task state (criu/include/pid.h) of a planned task.
type TaskKind int

const (
	TaskAlive  TaskKind = agent.TaskAlive
	TaskZombie TaskKind = agent.TaskZombie // CRIU's TASK_DEAD
	TaskHelper TaskKind = agent.TaskHelper
)

func (k TaskKind) String() string {
	switch k {
	case TaskAlive:
		return "alive"
	case TaskZombie:
		return "zombie"
	case TaskHelper:
		return "helper"
	}
	return fmt.Sprintf("task kind %d", int(k))
}

// SessionAction says how a task comes to be in its session.
type SessionAction int

const (
	// SessionInherit: the task is in its parent's session from the fork.
	SessionInherit SessionAction = iota
	// SessionLead: the task calls setsid() right after its fork.
	SessionLead
)

// GroupAction says how a task comes to be in its process group.
type GroupAction int

const (
	// GroupInherit: the group it gets from its parent at the fork is its own.
	GroupInherit GroupAction = iota
	// GroupLead: the task leads its group: setpgid(0, 0) after its fork
	// (setsid already did it for session leaders), before forking children.
	GroupLead
	// GroupJoin: the task joins a group led by another task:
	// setpgid(0, PGID) once FORKING is over, when every leader exists.
	GroupJoin
)

func (a SessionAction) String() string {
	return [...]string{"inherit", "lead"}[a]
}

func (a GroupAction) String() string {
	return [...]string{"inherit", "lead", "join"}[a]
}

// Creds are a task's credentials (thread_core.creds of its leader).
type Creds struct {
	UID, GID, EUID, EGID, SUID, SGID, FSUID, FSGID uint32
	CapInh, CapPrm, CapEff, CapBnd, CapAmb         uint64
	Secbits                                        uint32
	Groups                                         []uint32
	NoNewPrivs                                     bool
}

// FS is a task's working directory, root and umask.
type FS struct {
	Cwd, Root         string
	CwdFile, RootFile *File
	Umask             uint32
}

// Sigaction is a task's disposition of one signal (CRIU's sa_entry).
type Sigaction struct {
	Signal                         int
	Handler, Flags, Restorer, Mask uint64
}

// FD is one entry of a task's fd table.
type FD struct {
	FD      int
	CloExec bool
	File    *File
}

// FileKind is what an open file description is; only the kinds the engine
// can open are planned, anything else is a planning error.
type FileKind int

const (
	// FileRegular is a path opened with open(2): regular files,
	// directories, device nodes such as /dev/null.
	FileRegular FileKind = iota + 1
	// FilePipe is one end of a pipe (File.Pipe; the access mode in
	// Flags says which end).
	FilePipe
	// FileMemfd is an open file of a memfd (File.Memfd), which may also
	// back shared memory mappings.
	FileMemfd
	// FileFifo is an open FIFO (File.Pipe, at File.Path).
	FileFifo
	// FileEventfd, FileSignalfd and FileTimerfd are made anew by the
	// engine (File.Eventfd, File.Signalfd, File.Timerfd; anonfiles.go).
	FileEventfd
	FileSignalfd
	FileTimerfd
	// FileEpoll is made empty by the engine; a task adds its items
	// (File.Epoll, Task.EpollAdds).
	FileEpoll
	// FileUnixSocket is an AF_UNIX socket (File.Unix; sockunix.go).
	FileUnixSocket
	// FileInetSocket is an AF_INET or AF_INET6 socket (File.Inet;
	// sockinet.go).
	FileInetSocket
	// FileInotify is made by the engine with its watches (File.Inotify;
	// inotify.go).
	FileInotify
	// FileTTY is an open file of a pty end (File.TTY; tty.go).
	FileTTY
	// FileNetlinkSocket is an AF_NETLINK socket (File.Netlink;
	// socknetlink.go).
	FileNetlinkSocket
	// FilePacketSocket is an AF_PACKET socket (File.Packet;
	// sockpacket.go).
	FilePacketSocket
)

var fileKindNames = map[FileKind]string{FileRegular: "regular", FilePipe: "pipe", FileMemfd: "memfd", FileFifo: "FIFO",
	FileEventfd: "eventfd", FileSignalfd: "signalfd", FileTimerfd: "timerfd", FileEpoll: "eventpoll",
	FileUnixSocket: "unix socket", FileInetSocket: "inet socket", FileInotify: "inotify", FileTTY: "tty",
	FileNetlinkSocket: "netlink socket", FilePacketSocket: "packet socket"}

func (k FileKind) String() string { return fileKindNames[k] }

// File is one open file description of the image set.
type File struct {
	ID    uint32
	Kind  FileKind
	Path  string
	Flags uint32 // open(2) flags
	Pos   uint64
	Size  uint64 // at dump time, 0 when not recorded
	Mode  uint32
	Users []*Task // tasks whose fd tables hold it, in plan order
	Pipe  *Pipe   // FilePipe, FileFifo
	Memfd *Memfd  // FileMemfd
	// Eventfd, Signalfd, Timerfd: the state of the kind of that name
	Eventfd  *Eventfd
	Signalfd *Signalfd
	Timerfd  *Timerfd
	Epoll    *Epoll
	Unix     *UnixSocket    // FileUnixSocket
	Inet     *InetSocket    // FileInetSocket
	Inotify  *Inotify       // FileInotify
	TTY      *TTY           // FileTTY
	Netlink  *NetlinkSocket // FileNetlinkSocket
	Packet   *PacketSocket  // FilePacketSocket
	// Remap: a regular file that had no name at the dump (deleted, or
	// O_TMPFILE), found again through remap-fpath.img (ghost.go).
	Remap *Remap
	// Proc: a regular file in /proc/PID of a task of the tree, opened
	// once that task exists (procfiles.go).
	Proc *ProcFile
}

// Memory is a task's address space as dumped.
type Memory struct {
	VMAs []VMA
	// Runs are the pages to fill, sorted by address, each inside a VMA.
	Runs []images.PageRun
	// MM holds the mm fields (start_code ... saved auxv, exe file) for
	// PR_SET_MM_MAP.
	MM *mm.MmEntry
	// Exe is the mm's exe file (/proc/PID/exe), ExePath its path.
	Exe     *File
	ExePath string
}

// VMA is one mapping of a task.
type VMA struct {
	Start, End uint64
	Prot       uint32
	Flags      uint32 // mmap(2) flags
	Status     uint32 // CRIU's VMA_* bits
	Pgoff      uint64
	Madv       uint64
	Kind       VMAKind
	File       *File       // the mapped file for file-backed kinds
	Shmem      *Memfd      // the shared anonymous object of a VMAAnonShared
	SysV       *SysVAttach // the segment and attachment of a VMASysVShm (sysvshm.go)
	// FDFlags: for a VMAFileShared mapping of a regular file, the access
	// mode of the fd it maps (mm.img's fdflags; files.img has none for
	// mapped files).
	FDFlags uint32
}

// VMAKind is what backs a mapping.
type VMAKind int

const (
	VMAAnonPrivate VMAKind = iota + 1
	VMAFilePrivate
	VMAFileShared
	VMAVDSO
	VMAVVAR
	VMAVsyscall // the kernel's fixed page: never mapped by a restore
	// VMAAnonShared is MAP_SHARED|MAP_ANONYMOUS memory dumped as such
	// (VMA_ANON_SHARED: CRIU before the memfd approach, or when it could
	// not use it), one object per shmid (VMA.Shmem).
	VMAAnonShared
	// VMASysVShm is (part of) an attachment of a SysV shared memory
	// segment of the tree's IPC namespace (VMA.SysV; sysvshm.go).
	VMASysVShm
)

var vmaKindNames = map[VMAKind]string{
	VMAAnonPrivate: "anon-private", VMAFilePrivate: "file-private", VMAFileShared: "file-shared",
	VMAVDSO: "vdso", VMAVVAR: "vvar", VMAVsyscall: "vsyscall", VMAAnonShared: "anon-shared",
	VMASysVShm: "sysv-shm",
}

func (k VMAKind) String() string { return vmaKindNames[k] }

// CRIU's VMA status bits (criu/include/image.h).
const (
	vmaAreaRegular  = 1 << 0
	vmaAreaStack    = 1 << 1
	vmaAreaVsyscall = 1 << 2
	vmaAreaVDSO     = 1 << 3
	vmaAreaHeap     = 1 << 5
	vmaFilePrivate  = 1 << 6
	vmaFileShared   = 1 << 7
	vmaAnonShared   = 1 << 8
	vmaAnonPrivate  = 1 << 9
	vmaAreaSysVIPC  = 1 << 10
	vmaAreaSocket   = 1 << 11
	vmaAreaVVAR     = 1 << 12
	vmaAreaAIORing  = 1 << 13
	vmaAreaMemfd    = 1 << 14
	vmaUnsupported  = 1 << 31
)

// PlanError is a planning failure: what in which image made the image set
// impossible (or not yet possible) to restore.
type PlanError struct {
	PID  int    // the task, 0 when none
	File string // image file, "" when none
	Msg  string
	Err  error
}

func (e *PlanError) Error() string {
	s := "plan"
	if e.PID != 0 {
		s += fmt.Sprintf(": task %d", e.PID)
	}
	if e.File != "" {
		s += ": " + e.File
	}
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *PlanError) Unwrap() error { return e.Err }

// NewPlan plans the restore of the image set d. opts, when given, are
// the options the restore will run with: planning refuses what they do
// not allow (established TCP connections without TCPEstablished).
func NewPlan(d *images.Dir, opts ...Options) (*Plan, error) {
	p := &Plan{Dir: d, Files: map[uint32]*File{}, Pipes: map[uint32]*Pipe{}, Fifos: map[uint32]*Pipe{}, Memfds: map[uint32]*Memfd{}, Shmems: map[uint64]*Memfd{}}
	for _, o := range opts {
		p.tcpEstablished = p.tcpEstablished || o.TCPEstablished
		p.shellJob = p.shellJob || o.ShellJob
	}
	if err := p.buildTree(); err != nil {
		return nil, err
	}
	if err := p.checkNamespaces(); err != nil {
		return nil, err
	}
	for _, t := range p.Tasks {
		if t.Kind == TaskHelper {
			continue
		}
		if err := p.loadTask(t); err != nil {
			return nil, err
		}
	}
	if err := p.planCgroups(); err != nil { // cgroup.go
		return nil, err
	}
	if err := p.planTCPConnections(); err != nil { // tcpest.go
		return nil, err
	}
	if err := p.checkShellJob(); err != nil { // tty.go
		return nil, err
	}
	if err := p.planPTYs(); err != nil { // pty.go
		return nil, err
	}
	if err := p.loadClocks(); err != nil {
		return nil, err
	}
	if err := p.loadNamespaces(); err != nil {
		return nil, err
	}
	if err := p.planProcFiles(); err != nil { // procfiles.go
		return nil, err
	}
	if err := p.planSysVShm(); err != nil { // sysvshm.go
		return nil, err
	}
	if err := p.planEpolls(); err != nil {
		return nil, err
	}
	for _, t := range p.Tasks {
		// A helper exits at the same moment as its zombie children
		// would: the init would get them, and might reap them.
		if t.Kind == TaskZombie && t.Parent.Kind == TaskHelper {
			return nil, &PlanError{PID: t.PID, File: "pstree.img", Msg: fmt.Sprintf("zombie born in session %d by helper %d: not supported", t.SID, t.Parent.PID)}
		}
	}
	return p, nil
}

// nrSlots is the number of slots of the shared area: one per thread
// (zombies have one), then one per helper.
func (p *Plan) nrSlots() int { return p.NrThreads + p.NrHelpers }

// Root returns the root task.
func (p *Plan) Root() *Task { return p.Tasks[0] }

// Task returns the task with pid (as in the images), or nil.
func (p *Plan) Task(pid int) *Task {
	for _, t := range p.Tasks {
		if t.PID == pid {
			return t
		}
	}
	return nil
}

// buildTree links the pstree entries into a tree and decides how each task
// gets its session and process group.
func (p *Plan) buildTree() error {
	byPID := map[int]*Task{}
	for i, e := range p.Dir.Pstree {
		t := &Task{Index: i, PID: int(e.GetPid()), PPID: int(e.GetPpid()), PGID: int(e.GetPgid()), SID: int(e.GetSid()), Kind: TaskAlive}
		if t.PID <= 0 {
			return &PlanError{File: "pstree.img", Msg: fmt.Sprintf("entry %d: pid %d", i, t.PID)}
		}
		if byPID[t.PID] != nil {
			return &PlanError{File: "pstree.img", Msg: fmt.Sprintf("entry %d: pid %d appears twice", i, t.PID)}
		}
		tids := images.Threads(e)
		for _, tid := range tids {
			t.Threads = append(t.Threads, Thread{TID: int(tid), Slot: p.NrThreads})
			p.NrThreads++
		}
		byPID[t.PID] = t
		p.Tasks = append(p.Tasks, t)
	}
	root := p.Tasks[0]
	if root.PPID != 0 {
		return &PlanError{PID: root.PID, File: "pstree.img", Msg: fmt.Sprintf("the first task has parent %d, want 0", root.PPID)}
	}
	for _, t := range p.Tasks[1:] {
		par := byPID[t.PPID]
		if par == nil || t.PPID == 0 {
			return &PlanError{PID: t.PID, File: "pstree.img", Msg: fmt.Sprintf("parent %d is not in the tree", t.PPID)}
		}
		if par.Index > t.Index {
			// CRIU writes parents before children; forking relies on it.
			return &PlanError{PID: t.PID, File: "pstree.img", Msg: fmt.Sprintf("parent %d comes after its child", t.PPID)}
		}
		t.Parent = par
		par.Children = append(par.Children, t)
	}
	// As CRIU decides (get_clone_mask), the root gets a new pid namespace
	// exactly when its pid namespace differs from the dumping criu's
	// (inventory root_ids); otherwise the tree goes into crest's own pid
	// namespace with the pids of the images, which must be free there.
	ids, err := p.Dir.IDs(uint32(root.PID))
	if err != nil {
		return &PlanError{PID: root.PID, Err: err}
	}
	rootIDs := p.Dir.Inventory.GetRootIds()
	if rootIDs == nil || rootIDs.PidNsId == nil || ids.PidNsId == nil {
		return &PlanError{PID: root.PID, File: fmt.Sprintf("ids-%d.img", root.PID),
			Msg: "no pid namespace id in the task's ids or in inventory.img's root_ids"}
	}
	p.NewPIDNS = ids.GetPidNsId() != rootIDs.GetPidNsId()
	if p.NewPIDNS && root.PID != 1 {
		return &PlanError{PID: root.PID, File: fmt.Sprintf("ids-%d.img", root.PID),
			Msg: fmt.Sprintf("the root has its own pid namespace (%d, the dump ran in %d) but is not its pid 1",
				ids.GetPidNsId(), rootIDs.GetPidNsId())}
	}
	p.addHelpers(byPID)
	return p.planSessions(byPID)
}

// addHelpers adds, as CRIU does (criu/pstree.c, prepare_pstree_ids), a
// helper task for each session or process group whose leader was gone at
// the dump, so that the tasks in it can be born into it:
//
//   - a child of the root (an orphan the init inherited) in a session that
//     is neither the root's nor its own is forked by a helper born in that
//     session. When the session's leader is gone, the helper takes its pid
//     and calls setsid (so it also leads the group of that number), forked
//     by the root; when the leader is elsewhere in the tree, the helper
//     takes a free pid and is the leader's child. The helper forks every
//     such child, waits until RESTORE is over and exits: its children go
//     back to the init, their parent in the images, and its parent reaps it;
//   - a task in a process group whose leader is not in the tree (nor a
//     session helper) forks a helper that takes the group's number and
//     calls setpgid(0, 0), and joins its group after FORKING as it would
//     join any other; the helper exits after RESTORE and the task reaps it.
//
// Helpers go at the end of Tasks, with the slots after the threads'.
func (p *Plan) addHelpers(byPID map[int]*Task) {
	root := p.Root()
	add := func(pid, sid, pgid int, parent *Task) *Task {
		h := &Task{Index: len(p.Tasks), PID: pid, PPID: parent.PID, PGID: pgid, SID: sid,
			Parent: parent, Kind: TaskHelper, Threads: []Thread{{TID: pid}}}
		parent.Children = append(parent.Children, h)
		byPID[pid] = h
		p.Tasks = append(p.Tasks, h)
		p.NrHelpers++
		return h
	}
	sessionHelper := map[int]*Task{}
	for _, t := range append([]*Task(nil), root.Children...) {
		if t.SID == root.SID || t.SID == t.PID {
			continue
		}
		h := sessionHelper[t.SID]
		if h == nil {
			switch leader := byPID[t.SID]; {
			case leader == nil:
				h = add(t.SID, t.SID, t.SID, root)
			case leader.SID == leader.PID:
				h = add(p.freePID(), t.SID, leader.PGID, leader)
			default:
				continue // not a session: planSessions names it
			}
			sessionHelper[t.SID] = h
		}
		root.Children = slices.DeleteFunc(root.Children, func(c *Task) bool { return c == t })
		h.Children = append(h.Children, t)
		t.Parent = h
	}
	n := len(p.Tasks)
	for _, t := range p.Tasks[:n] {
		if t.Kind != TaskHelper && t.PGID != t.PID && t.PGID > 0 && byPID[t.PGID] == nil && !p.shellGroup(t.PGID, byPID) {
			add(t.PGID, t.SID, t.PGID, t)
		}
	}
	slot := p.NrThreads
	for _, t := range p.Tasks {
		if t.Kind == TaskHelper {
			t.Threads[0].Slot = slot
			slot++
		}
	}
}

// planSessions decides SessionAction and GroupAction for every task, once
// addHelpers has put a leader in the tree for every session and group it
// can; what is left without one is refused with the leader named.
func (p *Plan) planSessions(byPID map[int]*Task) error {
	// pgidAtFork[t] is the group t is in when it forks its children:
	// its own after GroupLead, its parent's otherwise (a GroupJoin task
	// joins only after FORKING).
	pgidAtFork := map[*Task]int{}
	for _, t := range p.forkOrder() {
		inheritedSID, inheritedPGID := 0, 0
		if t.Parent != nil {
			inheritedSID, inheritedPGID = t.Parent.SID, pgidAtFork[t.Parent]
		}
		switch {
		case t.SID == t.PID:
			t.Session = SessionLead
		case t.Parent != nil && t.SID == inheritedSID:
			t.Session = SessionInherit
		case p.shellSession(t, byPID): // tty.go: the root of a shell job, in crest's session
			t.Session = SessionInherit
		default:
			if byPID[t.SID] == nil {
				return &PlanError{PID: t.PID, File: "pstree.img", Msg: fmt.Sprintf("session %d has no leader in the tree, and the task is not the init's child: not supported", t.SID)}
			}
			return &PlanError{PID: t.PID, File: "pstree.img", Msg: fmt.Sprintf("session %d differs from its parent's (%d): forking into another session is not supported yet", t.SID, inheritedSID)}
		}
		switch {
		case t.PGID == t.PID:
			t.Group = GroupLead
			pgidAtFork[t] = t.PID
		case t.Session == SessionLead:
			return &PlanError{PID: t.PID, File: "pstree.img", Msg: fmt.Sprintf("session leader in group %d, not its own", t.PGID)}
		case t.PGID == inheritedPGID:
			t.Group = GroupInherit
			pgidAtFork[t] = inheritedPGID
		case t.Parent == nil && p.shellGroup(t.PGID, byPID): // tty.go: in crest's group
			t.Group = GroupInherit
			pgidAtFork[t] = t.PGID
		default:
			leader := byPID[t.PGID]
			if leader == nil && p.shellGroup(t.PGID, byPID) {
				return &PlanError{PID: t.PID, File: "pstree.img", Msg: fmt.Sprintf("joins process group %d, the shell job's, which is outside the tree, after its parent left it: not supported", t.PGID)}
			}
			if leader == nil {
				return &PlanError{PID: t.PID, File: "pstree.img", Msg: fmt.Sprintf("process group %d has no leader in the tree", t.PGID)}
			}
			if leader.SID != t.SID {
				return &PlanError{PID: t.PID, File: "pstree.img", Msg: fmt.Sprintf("process group %d is in session %d, the task in %d", t.PGID, leader.SID, t.SID)}
			}
			t.Group = GroupJoin
			pgidAtFork[t] = inheritedPGID
		}
	}
	return nil
}

// freePID returns the lowest pid above 1 that no task, thread, session or
// group of the plan has: the pid of a helper that leads nothing.
func (p *Plan) freePID() int {
	used := map[int]bool{}
	for _, t := range p.Tasks {
		used[t.PID], used[t.SID], used[t.PGID] = true, true, true
		for _, th := range t.Threads {
			used[th.TID] = true
		}
	}
	pid := 2
	for used[pid] {
		pid++
	}
	return pid
}

// forkOrder returns the tasks with every task after the one that forks it
// (helpers come last in Tasks but fork tasks before them).
func (p *Plan) forkOrder() []*Task {
	depth := func(t *Task) int {
		n := 0
		for ; t.Parent != nil && n <= len(p.Tasks); t = t.Parent {
			n++
		}
		return n
	}
	order := slices.Clone(p.Tasks)
	slices.SortStableFunc(order, func(a, b *Task) int { return depth(a) - depth(b) })
	return order
}

// loadTask reads a task's core, ids, fs, fd table and memory.
func (p *Plan) loadTask(t *Task) error {
	d := p.Dir
	for i := range t.Threads {
		core, err := d.Core(uint32(t.Threads[i].TID))
		if err != nil {
			return &PlanError{PID: t.PID, Msg: fmt.Sprintf("thread %d", t.Threads[i].TID), Err: err}
		}
		// register state the agent can not load is refused here, before
		// any file of the tree is looked at (planfile.go lays it out)
		if err := knownXState(core.GetThreadInfo().GetFpregs().GetXsave().GetXstateBv()); err != nil {
			return &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", t.Threads[i].TID), Msg: "xsave", Err: err}
		}
		t.Threads[i].Core = core
	}
	lead := t.Threads[0].Core
	tc := lead.GetTc()
	if tc == nil {
		return &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", t.PID), Msg: "no task core (tc)"}
	}
	t.Comm = tc.GetComm()
	switch st := tc.GetTaskState(); st {
	case agent.TaskAlive:
		t.Kind = TaskAlive
	case taskStopped:
		// restored as alive, and stopped again when finishing
		t.Kind = TaskAlive
		sig, err := stopSignal(tc.GetStopSigno())
		if err != nil {
			return &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", t.PID), Msg: err.Error()}
		}
		t.StopSignal = sig
	case agent.TaskZombie:
		// A zombie is its pid, session, group, comm and exit status:
		// CRIU dumps nothing else of it.
		if len(t.Threads) != 1 {
			return &PlanError{PID: t.PID, File: "pstree.img", Msg: fmt.Sprintf("zombie with %d threads", len(t.Threads))}
		}
		t.Kind = TaskZombie
		t.ExitCode = tc.GetExitCode()
		p.NrZombies++
		return nil
	default:
		return &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", t.PID), Msg: fmt.Sprintf("task state %d: only alive, stopped and dead (zombie) tasks are restored", st)}
	}
	if err := loadProcAttrs(t); err != nil {
		return err
	}
	creds := lead.GetThreadCore().GetCreds()
	if creds == nil {
		return &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", t.PID), Msg: "no credentials in thread_core"}
	}
	t.Creds = Creds{
		UID: creds.GetUid(), GID: creds.GetGid(), EUID: creds.GetEuid(), EGID: creds.GetEgid(),
		SUID: creds.GetSuid(), SGID: creds.GetSgid(), FSUID: creds.GetFsuid(), FSGID: creds.GetFsgid(),
		CapInh: capWords(creds.GetCapInh()), CapPrm: capWords(creds.GetCapPrm()), CapEff: capWords(creds.GetCapEff()),
		CapBnd: capWords(creds.GetCapBnd()), CapAmb: capWords(creds.GetCapAmb()),
		Secbits: creds.GetSecbits(), Groups: creds.GetGroups(), NoNewPrivs: creds.GetNoNewPrivs() != 0,
	}
	schedWhen(t)

	ids, err := d.IDs(uint32(t.PID))
	if err != nil {
		return &PlanError{PID: t.PID, Err: err}
	}
	t.IDs = ids

	fsEnt, err := d.FS(uint32(t.PID))
	if err != nil {
		return &PlanError{PID: t.PID, Err: err}
	}
	cwd, err := p.file(t, fsEnt.GetCwdId(), fmt.Sprintf("fs-%d.img", t.PID))
	if err != nil {
		return err
	}
	root, err := p.file(t, fsEnt.GetRootId(), fmt.Sprintf("fs-%d.img", t.PID))
	if err != nil {
		return err
	}
	t.FS = FS{Cwd: cwd.Path, Root: root.Path, CwdFile: cwd, RootFile: root, Umask: fsEnt.GetUmask()}

	for _, rl := range tc.GetRlimits().GetRlimits() {
		t.Rlimits = append(t.Rlimits, Rlimit{Cur: rl.GetCur(), Max: rl.GetMax()})
	}

	// The sigaction array skips SIGKILL and SIGSTOP.
	sig := 1
	for _, sa := range tc.GetSigactions() {
		if sig == 9 || sig == 19 {
			sig++
		}
		if sig > 64 {
			return &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", t.PID), Msg: "more than 62 sigactions"}
		}
		t.Sigactions = append(t.Sigactions, Sigaction{Signal: sig, Handler: sa.GetSigaction(), Flags: sa.GetFlags(),
			Restorer: sa.GetRestorer(), Mask: sa.GetMask()})
		sig++
	}

	if err := loadSignals(t); err != nil {
		return err
	}
	if err := p.loadSeccomp(t); err != nil {
		return err
	}
	if err := p.loadFDs(t); err != nil {
		return err
	}
	return p.loadMemory(t)
}

// checkNamespaces refuses image sets with namespaces of their own other
// than the pid, time, UTS, IPC and net namespaces: CRIU writes an image
// for each namespace it dumped (those that were the dumping host's have
// none). One read of the directory, not a glob per pattern. The net
// namespace images are noted for checkNetImages.
func (p *Plan) checkNamespaces() error {
	f, err := os.Open(p.Dir.Path)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("images directory %s: %w", p.Dir.Path, err)
	}
	slices.Sort(names) // the first in name order is named, as a glob would
	for _, name := range names {
		if ok, _ := filepath.Match("userns-*.img", name); ok {
			p.userImages = append(p.userImages, name) // planUserNS
		}
		if ok, _ := filepath.Match("netns-*.img", name); ok {
			p.netImages = append(p.netImages, name)
		}
		if ok, _ := filepath.Match("mountpoints-*.img", name); ok {
			p.mntImages = append(p.mntImages, name)
		}
		if name == cgroupImage {
			p.Cgroups = &Cgroups{} // planned with the cores (planCgroups)
		}
	}
	return nil
}

const notRestoredNS = "namespaces other than the root's are not restored yet (the root's own pid, time, UTS, IPC, net, mount and user namespaces are)"

// checkNetImages refuses a net namespace image that is not of the tree's
// own (loadNamespaces has read that one): one of the dumping host's, or
// of a task's other than the root's, which CRIU restores and crest does
// not.
func (p *Plan) checkNetImages() error {
	for _, name := range p.netImages {
		if p.Net != nil && name == netImage("netns", p.Net.ID) {
			continue
		}
		return &PlanError{File: name, Msg: notRestoredNS + ": not the image of the root's net namespace"}
	}
	return nil
}

// capWords joins the two u32 words CRIU stores a capability set in.
func capWords(w []uint32) uint64 {
	var v uint64
	for i, x := range w {
		if i < 2 {
			v |= uint64(x) << (32 * i)
		}
	}
	return v
}

// file returns the planned File for files.img id, planning it on first use.
func (p *Plan) file(t *Task, id uint32, from string) (*File, error) {
	if f := p.Files[id]; f != nil {
		return f, nil
	}
	fe, err := p.Dir.File(id)
	if err != nil {
		return nil, &PlanError{PID: t.PID, File: from, Err: err}
	}
	if err := p.checkOwner(t, id, fe); err != nil {
		return nil, err
	}
	switch fe.GetType() {
	case fdinfo.FdTypes_REG:
		reg := fe.GetReg()
		if reg == nil {
			return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: REG without reg entry", id)}
		}
		f := &File{ID: id, Kind: FileRegular, Path: reg.GetName(), Flags: reg.GetFlags(), Pos: reg.GetPos(), Size: reg.GetSize(), Mode: reg.GetMode()}
		if err := p.planRemap(t, f); err != nil { // ghost.go
			return nil, err
		}
		p.Files[id] = f
		return f, nil
	case fdinfo.FdTypes_PIPE:
		return p.pipeFile(t, id, fe.GetPipe())
	case fdinfo.FdTypes_MEMFD:
		return p.memfdFile(t, id, fe.GetMemfd())
	case fdinfo.FdTypes_FIFO:
		return p.fifoFile(t, id, fe.GetFifo())
	case fdinfo.FdTypes_EVENTFD, fdinfo.FdTypes_SIGNALFD, fdinfo.FdTypes_TIMERFD:
		return p.anonFile(t, id, fe)
	case fdinfo.FdTypes_EVENTPOLL:
		if fe.GetEpfd() == nil {
			return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: EVENTPOLL without its entry", id)}
		}
		return p.epollFile(t, id, fe.GetEpfd())
	case fdinfo.FdTypes_UNIXSK:
		if fe.GetUsk() == nil {
			return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: UNIXSK without its entry", id)}
		}
		return p.unixSocketFile(t, id, fe.GetUsk())
	case fdinfo.FdTypes_INETSK:
		if fe.GetIsk() == nil {
			return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: INETSK without its entry", id)}
		}
		return p.inetSocketFile(t, id, fe.GetIsk())
	case fdinfo.FdTypes_INOTIFY: // inotify.go
		if fe.GetIfy() == nil {
			return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: INOTIFY without its entry", id)}
		}
		return p.inotifyFile(t, id, fe.GetIfy())
	case fdinfo.FdTypes_TTY: // tty.go
		return p.ttyFile(t, id, fe)
	case fdinfo.FdTypes_NETLINKSK: // socknetlink.go
		return p.netlinkSocketFile(t, id, fe)
	case fdinfo.FdTypes_PACKETSK: // sockpacket.go
		return p.packetSocketFile(t, id, fe)
	default:
		return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d (from %s): %s files are not supported yet", id, from, fe.GetType())}
	}
}

// fdCloexec is FD_CLOEXEC as fdinfo_entry.flags stores it.
const fdCloexec = 1

func (p *Plan) loadFDs(t *Task) error {
	name := fmt.Sprintf("fdinfo-%d.img", t.IDs.GetFilesId())
	ents, err := p.Dir.Fdinfo(t.IDs.GetFilesId())
	if err != nil {
		return &PlanError{PID: t.PID, Err: err}
	}
	seen := map[int]bool{}
	for _, e := range ents {
		fd := int(e.GetFd())
		if seen[fd] {
			return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("fd %d appears twice", fd)}
		}
		seen[fd] = true
		f, err := p.file(t, e.GetId(), name)
		if err != nil {
			return err
		}
		if f.Kind != fileKindOf(e.GetType()) {
			return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("fd %d: type %s, but file %d is not", fd, e.GetType(), f.ID)}
		}
		if n := len(f.Users); n == 0 || f.Users[n-1] != t {
			f.Users = append(f.Users, t)
		}
		t.FDs = append(t.FDs, FD{FD: fd, CloExec: e.GetFlags()&fdCloexec != 0, File: f})
	}
	sort.Slice(t.FDs, func(i, j int) bool { return t.FDs[i].FD < t.FDs[j].FD })
	return nil
}

func fileKindOf(ty fdinfo.FdTypes) FileKind {
	switch ty {
	case fdinfo.FdTypes_REG:
		return FileRegular
	case fdinfo.FdTypes_PIPE:
		return FilePipe
	case fdinfo.FdTypes_MEMFD:
		return FileMemfd
	case fdinfo.FdTypes_FIFO:
		return FileFifo
	case fdinfo.FdTypes_EVENTFD:
		return FileEventfd
	case fdinfo.FdTypes_SIGNALFD:
		return FileSignalfd
	case fdinfo.FdTypes_TIMERFD:
		return FileTimerfd
	case fdinfo.FdTypes_EVENTPOLL:
		return FileEpoll
	case fdinfo.FdTypes_UNIXSK:
		return FileUnixSocket
	case fdinfo.FdTypes_INETSK:
		return FileInetSocket
	case fdinfo.FdTypes_INOTIFY:
		return FileInotify
	case fdinfo.FdTypes_TTY:
		return FileTTY
	case fdinfo.FdTypes_NETLINKSK:
		return FileNetlinkSocket
	case fdinfo.FdTypes_PACKETSK:
		return FilePacketSocket
	}
	return 0
}

func (p *Plan) loadMemory(t *Task) error {
	mmName := fmt.Sprintf("mm-%d.img", t.PID)
	m, err := p.Dir.MM(uint32(t.PID))
	if err != nil {
		return &PlanError{PID: t.PID, Err: err}
	}
	t.Mem.MM = m
	exe, err := p.file(t, m.GetExeFileId(), mmName)
	if err != nil {
		return err
	}
	t.Mem.Exe, t.Mem.ExePath = exe, exe.Path
	var prevEnd uint64
	for i, v := range m.GetVmas() {
		vma := VMA{Start: v.GetStart(), End: v.GetEnd(), Prot: v.GetProt(), Flags: v.GetFlags(),
			Status: v.GetStatus(), Pgoff: v.GetPgoff(), Madv: v.GetMadv()}
		where := fmt.Sprintf("vma %d (%#x-%#x, status %#x)", i, vma.Start, vma.End, vma.Status)
		if vma.Start >= vma.End || vma.Start%images.PageSize != 0 || vma.End%images.PageSize != 0 || vma.Start < prevEnd {
			return &PlanError{PID: t.PID, File: mmName, Msg: where + ": not page aligned, empty or overlapping the previous one"}
		}
		prevEnd = vma.End
		st := vma.Status
		switch {
		case st&vmaUnsupported != 0:
			return &PlanError{PID: t.PID, File: mmName, Msg: where + ": marked unsupported by the dump"}
		case st&vmaAreaVsyscall != 0:
			vma.Kind = VMAVsyscall
		case st&vmaAreaSysVIPC != 0:
			sysvShmVMA(v, &vma) // sysvshm.go; planSysVShm resolves it
		case st&(vmaAreaSocket|vmaAreaAIORing) != 0:
			return &PlanError{PID: t.PID, File: mmName, Msg: where + ": socket and AIO mappings are not supported yet"}
		case st&vmaAnonShared != 0:
			vma.Kind = VMAAnonShared
			m, err := p.anonShmem(t, v.GetShmid(), vma.Pgoff+vma.End-vma.Start)
			if err != nil {
				return err
			}
			vma.Shmem = m
		case st&vmaAreaMemfd != 0:
			// CRIU 4.2 dumps MAP_SHARED|MAP_ANONYMOUS memory as a memfd
			// (named "/dev/zero"): shmid is its MEMFD entry in files.img.
			vma.Kind = VMAFilePrivate
			if st&vmaFileShared != 0 {
				vma.Kind = VMAFileShared
			}
			f, err := p.file(t, uint32(v.GetShmid()), mmName)
			if err != nil {
				return err
			}
			if f.Kind != FileMemfd {
				return &PlanError{PID: t.PID, File: mmName, Msg: fmt.Sprintf("%s: memfd mapping of file %d, which is a %v file", where, f.ID, f.Kind)}
			}
			vma.File = f
		case st&vmaAreaRegular == 0:
			return &PlanError{PID: t.PID, File: mmName, Msg: where + ": not a regular area"}
		case st&vmaAreaVDSO != 0:
			vma.Kind = VMAVDSO
		case st&vmaAreaVVAR != 0:
			vma.Kind = VMAVVAR
		case st&vmaFilePrivate != 0, st&vmaFileShared != 0:
			vma.Kind = VMAFilePrivate
			if st&vmaFileShared != 0 {
				vma.Kind = VMAFileShared
			}
			// For file mappings CRIU keeps the files.img id in shmid.
			f, err := p.file(t, uint32(v.GetShmid()), mmName)
			if err != nil {
				return err
			}
			vma.File = f
			if vma.Kind == VMAFileShared && f.Kind == FileRegular {
				acc := v.GetFdflags() & syscall.O_ACCMODE
				if acc != syscall.O_RDONLY && acc != syscall.O_RDWR {
					return &PlanError{PID: t.PID, File: mmName, Msg: fmt.Sprintf("%s: shared mapping of %s with fdflags %#o: neither read-only nor read-write", where, f.Path, v.GetFdflags())}
				}
				vma.FDFlags = acc
			}
		case st&vmaAnonPrivate != 0:
			vma.Kind = VMAAnonPrivate
		default:
			return &PlanError{PID: t.PID, File: mmName, Msg: where + ": unknown kind of mapping"}
		}
		t.Mem.VMAs = append(t.Mem.VMAs, vma)
	}
	runs, err := p.Dir.PageRuns(uint32(t.PID))
	if err != nil {
		return &PlanError{PID: t.PID, Err: err}
	}
	pmName := fmt.Sprintf("pagemap-%d.img", t.PID)
	for _, r := range runs {
		if r.Lazy() {
			return &PlanError{PID: t.PID, File: pmName, Msg: fmt.Sprintf("run at %#x: lazy pages are not supported", r.Vaddr)}
		}
		if !t.Mem.covered(r.Vaddr, r.End()) {
			return &PlanError{PID: t.PID, File: pmName, Msg: fmt.Sprintf("run %#x-%#x is not inside the task's mappings", r.Vaddr, r.End())}
		}
		for _, v := range t.Mem.VMAs {
			// the content of shared mappings is their file's (for a
			// memfd: its pagemap-shmem image), never the task's
			if (v.Kind == VMAFileShared || v.Kind == VMAAnonShared || v.Kind == VMASysVShm) && v.Start < r.End() && r.Vaddr < v.End {
				return &PlanError{PID: t.PID, File: pmName, Msg: fmt.Sprintf("run %#x-%#x is inside the shared mapping %#x-%#x", r.Vaddr, r.End(), v.Start, v.End)}
			}
		}
	}
	t.Mem.Runs = runs
	return nil
}

// covered reports whether [start, end) lies inside mappings that a restore
// fills (contiguous VMAs, none of them vsyscall).
func (m *Memory) covered(start, end uint64) bool {
	i := sort.Search(len(m.VMAs), func(i int) bool { return m.VMAs[i].End > start })
	for ; start < end; i++ {
		if i >= len(m.VMAs) || m.VMAs[i].Start > start || m.VMAs[i].Kind == VMAVsyscall {
			return false
		}
		start = m.VMAs[i].End
	}
	return true
}
