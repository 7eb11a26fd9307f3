package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Header is what every event has. Times are CLOCK_BOOTTIME nanoseconds
// (bpf_ktime_get_boot_ns); pids are global, as the kernel's init pid
// namespace numbers them (ForkEvent gives the other levels).
type Header struct {
	Kind string `json:"kind"` // clone, clone3, setns, futex, fork, exit
	Time uint64 `json:"time"` // for a syscall, its entry
	PID  int    `json:"pid"`  // tgid
	TID  int    `json:"tid"`
}

// Head returns the event's header.
func (h *Header) Head() *Header { return h }

// Return is how a traced syscall returned.
type Return struct {
	Returned bool   `json:"returned"`       // false: no sys_exit seen (yet)
	Exit     uint64 `json:"exit,omitempty"` // boot time of the return
	Ret      int64  `json:"ret"`            // the raw result: -errno on failure
}

// Event is one of *CloneEvent, *Clone3Event, *SetnsEvent, *FutexEvent,
// *ForkEvent, *ExitEvent.
type Event interface {
	Head() *Header
	clone() Event
}

// CloneEvent is a clone(2) by a tracked task.
type CloneEvent struct {
	Header
	Return
	Flags uint64 `json:"flags"`
}

// Clone3Event is a clone3(2) by a tracked task, with its clone_args.
type Clone3Event struct {
	Header
	Return
	ArgsRead   bool    `json:"args_read"` // clone_args could be read
	Flags      uint64  `json:"flags"`
	ExitSignal uint64  `json:"exit_signal"`
	SetTIDSize uint64  `json:"set_tid_size"`
	SetTID     []int32 `json:"set_tid"` // nil when not given or not readable
}

// SetnsEvent is a setns(2): the fd's file, resolved in the kernel at the
// call, names the namespace being joined when it is an nsfs file; After,
// read as the call returned, says what the thread is in then, also when
// the fd was a pidfd (which names a task, and several namespaces at once).
type SetnsEvent struct {
	Header
	Return
	FD       int    `json:"fd"`
	NSType   int    `json:"nstype"`
	Resolved bool   `json:"resolved"` // fd was an open file
	Inode    uint64 `json:"inode"`    // the namespace's inode (ns.inum), for an nsfs file
	FSMagic  uint64 `json:"fs_magic"` // 0x6e736673 for nsfs
	// After are the calling thread's namespaces as the call returned
	// (zero until Returned).
	After Namespaces `json:"after"`
}

// Namespaces are a task's namespaces as their inode numbers (ns.inum,
// what the /proc/PID/ns/* links name); 0 where none was read.
type Namespaces struct {
	UTS    uint64 `json:"uts"`
	IPC    uint64 `json:"ipc"`
	Mnt    uint64 `json:"mnt"`
	PID    uint64 `json:"pid_for_children"` // the pid namespace its children are born in
	Net    uint64 `json:"net"`
	Time   uint64 `json:"time"` // the one its clocks read
	Cgroup uint64 `json:"cgroup"`
	User   uint64 `json:"user"` // its credentials' (what setns and /proc see)
}

// NSTypes are the CLONE_NEW* flags of the namespace types Namespaces
// holds, in the order of its fields.
var NSTypes = []int{unix.CLONE_NEWUTS, unix.CLONE_NEWIPC, unix.CLONE_NEWNS, unix.CLONE_NEWPID,
	unix.CLONE_NEWNET, unix.CLONE_NEWTIME, unix.CLONE_NEWCGROUP, unix.CLONE_NEWUSER}

// nsFiles are the /proc/PID/ns/ links of NSTypes.
var nsFiles = map[int]string{unix.CLONE_NEWUTS: "uts", unix.CLONE_NEWIPC: "ipc", unix.CLONE_NEWNS: "mnt",
	unix.CLONE_NEWPID: "pid_for_children", unix.CLONE_NEWNET: "net", unix.CLONE_NEWTIME: "time", unix.CLONE_NEWCGROUP: "cgroup", unix.CLONE_NEWUSER: "user"}

func (n *Namespaces) field(nstype int) *uint64 {
	switch nstype {
	case unix.CLONE_NEWUTS:
		return &n.UTS
	case unix.CLONE_NEWIPC:
		return &n.IPC
	case unix.CLONE_NEWNS:
		return &n.Mnt
	case unix.CLONE_NEWPID:
		return &n.PID
	case unix.CLONE_NEWNET:
		return &n.Net
	case unix.CLONE_NEWTIME:
		return &n.Time
	case unix.CLONE_NEWCGROUP:
		return &n.Cgroup
	case unix.CLONE_NEWUSER:
		return &n.User
	}
	return nil
}

// Get returns the inode of the namespace of type nstype (one CLONE_NEW*
// flag), 0 if not known.
func (n Namespaces) Get(nstype int) uint64 {
	if f := n.field(nstype); f != nil {
		return *f
	}
	return 0
}

// Set sets the inode of the namespace of type nstype (one of NSTypes).
func (n *Namespaces) Set(nstype int, ino uint64) {
	if f := n.field(nstype); f != nil {
		*f = ino
	}
}

// ReadNamespaces reads the namespaces of dir, a /proc/PID or
// /proc/thread-self (whose caller must stay on its OS thread), from its
// ns/ links; one the kernel does not have (time without CONFIG_TIME_NS)
// stays 0.
func ReadNamespaces(dir string) (Namespaces, error) {
	var n Namespaces
	for _, t := range NSTypes {
		path := dir + "/ns/" + nsFiles[t]
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return n, &fs.PathError{Op: "stat", Path: path, Err: err}
		}
		n.Set(t, st.Ino)
	}
	if n == (Namespaces{}) {
		return n, &fs.PathError{Op: "stat", Path: dir + "/ns", Err: os.ErrNotExist}
	}
	return n, nil
}

func (n Namespaces) String() string {
	s := ""
	for _, t := range NSTypes {
		if ino := n.Get(t); ino != 0 {
			if s != "" {
				s += " "
			}
			s += fmt.Sprintf("%s:%d", nsFiles[t], ino)
		}
	}
	return s
}

// FutexEvent is a futex(2) on a watched address. Word is the futex word
// as the call entered, WordAtExit as a wait returned (both read from the
// caller's memory by the program; a wake's word is not read at its exit).
type FutexEvent struct {
	Header
	Return
	Addr         uint64 `json:"addr"`
	Op           uint32 `json:"op"`
	Val          uint32 `json:"val"`
	Val2         uint64 `json:"val2"` // the fourth argument: timeout pointer or val2
	Addr2        uint64 `json:"addr2,omitempty"`
	Val3         uint32 `json:"val3,omitempty"`
	WordOK       bool   `json:"word_ok"`
	Word         uint32 `json:"word"`
	WordAtExitOK bool   `json:"word_at_exit_ok"`
	WordAtExit   uint32 `json:"word_at_exit"`
}

// Futex operations (the low bits of Op).
const (
	FutexWait   = 0
	FutexWake   = 1
	FutexWakeOp = 5

	futexCmdMask     = 0x7f
	futexPrivateFlag = 128
)

// Cmd is the futex command without the private and clock flags.
func (e *FutexEvent) Cmd() uint32 { return e.Op & futexCmdMask }

// ForkEvent is sched_process_fork of a tracked parent: the header is the
// parent's; pids and tids are listed by pid-namespace level, 0 the
// kernel's (global) one, the last the task's own.
type ForkEvent struct {
	Header
	ChildPID   int   `json:"child_pid"`
	ChildTID   int   `json:"child_tid"`
	ParentTIDs []int `json:"parent_tids"`
	ParentPIDs []int `json:"parent_pids"`
	ChildTIDs  []int `json:"child_tids"`
	ChildPIDs  []int `json:"child_pids"`
	// RealParentPIDs is the child's parent (tgid) by level: the forker's
	// process, or with CLONE_PARENT the forker's parent.
	RealParentPIDs []int `json:"real_parent_pids"`
	// Truncated: the child is deeper than the levels recorded, so the
	// lists end before its own level.
	Truncated bool `json:"truncated,omitempty"`
	// ChildNS are the namespaces the child is born in.
	ChildNS Namespaces `json:"child_ns"`
}

// Thread reports whether the fork made a thread (the child joined the
// parent's process).
func (e *ForkEvent) Thread() bool { return e.ChildPID == e.PID }

// ChildLevel is the child's pid-namespace level (len(ChildTIDs)-1 unless
// Truncated).
func (e *ForkEvent) ChildLevel() int { return len(e.ChildTIDs) - 1 }

// ExitEvent is sched_process_exit of a tracked task.
type ExitEvent struct {
	Header
	ExitCode  int  `json:"exit_code"`
	GroupDead bool `json:"group_dead"` // the last thread of its process
}

func (e *CloneEvent) clone() Event { c := *e; return &c }
func (e *Clone3Event) clone() Event {
	c := *e
	c.SetTID = append([]int32(nil), e.SetTID...)
	return &c
}
func (e *SetnsEvent) clone() Event { c := *e; return &c }
func (e *FutexEvent) clone() Event { c := *e; return &c }
func (e *ForkEvent) clone() Event  { c := *e; return &c }
func (e *ExitEvent) clone() Event  { c := *e; return &c }

func (e *CloneEvent) ret() *Return  { return &e.Return }
func (e *Clone3Event) ret() *Return { return &e.Return }
func (e *SetnsEvent) ret() *Return  { return &e.Return }
func (e *FutexEvent) ret() *Return  { return &e.Return }

// syscallEvent is an event made of a sys_enter and its sys_exit.
type syscallEvent interface {
	Event
	ret() *Return
}

// Record kinds (events.h enum crest_kind).
const (
	kindFutex     = 1
	kindClone     = 2
	kindClone3    = 3
	kindSetns     = 4
	kindSysExit   = 5
	kindFork      = 6
	kindExit      = 7
	kindSetnsExit = 8
)

const (
	flagWordOK   = 0x1
	flagArgsOK   = 0x1
	flagSetTIDOK = 0x2
	flagInodeOK  = 0x1
	maxSetTID    = 32 // CREST_MAX_SET_TID
	maxLevels    = 8  // CREST_MAX_LEVELS
)

// A RecordError is a ring-buffer record that does not decode: the
// kernel and this package disagree on a layout.
type RecordError struct {
	Kind uint32
	Size int
	Msg  string
}

func (e *RecordError) Error() string {
	return fmt.Sprintf("bpf: ring buffer record (kind %d, %d bytes): %s", e.Kind, e.Size, e.Msg)
}

// sysExit is a decoded sys_exit record, before it is joined to its entry.
type sysExit struct {
	hdr   Header
	nr    int32
	ret   int64
	word  uint32
	wordk bool
	ns    Namespaces // a setns's: the caller's namespaces after it
}

func namespaces(r monitorCrestNs) Namespaces {
	return Namespaces{UTS: uint64(r.Uts), IPC: uint64(r.Ipc), Mnt: uint64(r.Mnt), PID: uint64(r.PidForChildren),
		Net: uint64(r.Net), Time: uint64(r.Time), Cgroup: uint64(r.Cgroup), User: uint64(r.User)}
}

// decodeRecord turns one ring-buffer record into an event, or, for a
// sys_exit, into a *sysExit for the caller to join.
func decodeRecord(raw []byte) (any, error) {
	var h monitorCrestHdr
	if _, err := binary.Decode(raw, binary.NativeEndian, &h); err != nil {
		return nil, &RecordError{Size: len(raw), Msg: "shorter than a header"}
	}
	hdr := Header{Time: h.Ts, PID: int(h.Pid), TID: int(h.Tid)}
	bad := func(err error) error {
		return &RecordError{Kind: h.Kind, Size: len(raw), Msg: err.Error()}
	}
	switch h.Kind {
	case kindFutex:
		var r monitorCrestEvFutex
		if _, err := binary.Decode(raw, binary.NativeEndian, &r); err != nil {
			return nil, bad(err)
		}
		hdr.Kind = "futex"
		return &FutexEvent{Header: hdr, Addr: r.Uaddr, Op: r.Op, Val: r.Val, Val2: r.Utime, Addr2: r.Uaddr2,
			Val3: r.Val3, Word: r.Word, WordOK: r.Flags&flagWordOK != 0}, nil
	case kindClone:
		var r monitorCrestEvClone
		if _, err := binary.Decode(raw, binary.NativeEndian, &r); err != nil {
			return nil, bad(err)
		}
		hdr.Kind = "clone"
		return &CloneEvent{Header: hdr, Flags: r.Flags}, nil
	case kindClone3:
		var r monitorCrestEvClone3
		if _, err := binary.Decode(raw, binary.NativeEndian, &r); err != nil {
			return nil, bad(err)
		}
		hdr.Kind = "clone3"
		e := &Clone3Event{Header: hdr, ArgsRead: r.Read&flagArgsOK != 0, Flags: r.Flags,
			ExitSignal: r.ExitSignal, SetTIDSize: r.SetTidSize}
		if r.Read&flagSetTIDOK != 0 {
			n := int(min(r.SetTidSize, maxSetTID))
			e.SetTID = append([]int32(nil), r.SetTid[:n]...)
		}
		return e, nil
	case kindSetns:
		var r monitorCrestEvSetns
		if _, err := binary.Decode(raw, binary.NativeEndian, &r); err != nil {
			return nil, bad(err)
		}
		hdr.Kind = "setns"
		return &SetnsEvent{Header: hdr, FD: int(r.Fd), NSType: int(r.Nstype), Resolved: r.Flags&flagInodeOK != 0,
			Inode: r.Ino, FSMagic: r.Magic}, nil
	case kindSysExit:
		var r monitorCrestEvSysExit
		if _, err := binary.Decode(raw, binary.NativeEndian, &r); err != nil {
			return nil, bad(err)
		}
		return &sysExit{hdr: hdr, nr: h.Nr, ret: r.Ret, word: r.Word, wordk: r.Flags&flagWordOK != 0}, nil
	case kindSetnsExit:
		var r monitorCrestEvSetnsExit
		if _, err := binary.Decode(raw, binary.NativeEndian, &r); err != nil {
			return nil, bad(err)
		}
		return &sysExit{hdr: hdr, nr: h.Nr, ret: r.Ret, ns: namespaces(r.Ns)}, nil
	case kindFork:
		var r monitorCrestEvFork
		if _, err := binary.Decode(raw, binary.NativeEndian, &r); err != nil {
			return nil, bad(err)
		}
		hdr.Kind = "fork"
		e := &ForkEvent{Header: hdr, ChildPID: int(r.ChildPid), ChildTID: int(r.ChildTid)}
		e.ParentTIDs, _ = levels(r.ParentTids[:], r.ParentLevel)
		e.ParentPIDs, _ = levels(r.ParentPids[:], r.ParentLevel)
		e.ChildTIDs, e.Truncated = levels(r.ChildTids[:], r.ChildLevel)
		e.ChildPIDs, _ = levels(r.ChildPids[:], r.ChildLevel)
		e.RealParentPIDs, _ = levels(r.RealParentPids[:], r.RealParentLevel)
		e.ChildNS = namespaces(r.ChildNs)
		return e, nil
	case kindExit:
		var r monitorCrestEvExit
		if _, err := binary.Decode(raw, binary.NativeEndian, &r); err != nil {
			return nil, bad(err)
		}
		hdr.Kind = "exit"
		return &ExitEvent{Header: hdr, ExitCode: int(r.ExitCode), GroupDead: r.GroupDead != 0}, nil
	}
	return nil, &RecordError{Kind: h.Kind, Size: len(raw), Msg: "unknown kind"}
}

// levels returns the numbers of levels 0..level, cut at what was recorded.
func levels(nrs []int32, level uint32) ([]int, bool) {
	n := int(min(level, uint32(len(nrs)-1))) + 1
	out := make([]int, n)
	for i := range out {
		out[i] = int(nrs[i])
	}
	return out, int(level) >= len(nrs)
}

// syscall numbers of the traced calls (x86_64)
const (
	nrClone  = 56
	nrFutex  = 202
	nrSetns  = 308
	nrClone3 = 435
)

func syscallNr(e Event) int32 {
	switch e.(type) {
	case *CloneEvent:
		return nrClone
	case *Clone3Event:
		return nrClone3
	case *SetnsEvent:
		return nrSetns
	case *FutexEvent:
		return nrFutex
	}
	return -1
}

// joiner pairs sys_enter events with their sys_exit: a thread is in one
// syscall at a time, so the open entry of the same thread and number is
// the one.
type joiner struct {
	open map[int]syscallEvent // by tid
}

// add takes a decoded record; it returns the event to append to the log,
// or nil for a sys_exit (which completes an event already logged).
func (j *joiner) add(rec any) Event {
	if j.open == nil {
		j.open = map[int]syscallEvent{}
	}
	switch r := rec.(type) {
	case *sysExit:
		e, ok := j.open[r.hdr.TID]
		if !ok || syscallNr(e) != r.nr {
			return nil // its entry was before tracking, or dropped
		}
		delete(j.open, r.hdr.TID)
		ret := e.ret()
		ret.Returned, ret.Exit, ret.Ret = true, r.hdr.Time, r.ret
		switch e := e.(type) {
		case *FutexEvent:
			e.WordAtExit, e.WordAtExitOK = r.word, r.wordk
		case *SetnsEvent:
			e.After = r.ns
		}
		return nil
	case syscallEvent:
		// An entry still open means its exit never came (dropped, or the
		// thread died in the call); it stays with Returned false.
		j.open[r.Head().TID] = r
		return r
	case *ExitEvent:
		delete(j.open, r.TID)
		return r
	case Event:
		return r
	}
	return nil
}
