package restore

import (
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/crest-restore/crest/restore/agent"
)

// sharedArea is the engine's mapping of the memfd that every task maps at
// area.SharedAddr: task_entries, then one slot per task. The engine maps it
// wherever the kernel likes: futexes on a shared file mapping are keyed by
// the file, not the address.
type sharedArea struct {
	file  *os.File
	mem   []byte
	te    *agent.TaskEntries
	slots []agent.Slot
}

// slotsOff is where slot 0 starts: task_entries has the first page.
const slotsOff = pageSize

func sharedSize(nrSlots int) uint64 {
	return pageAlign(slotsOff + uint64(nrSlots)*uint64(unsafe.Sizeof(agent.Slot{})))
}

func newSharedArea(p *Plan) (*sharedArea, error) {
	size := sharedSize(p.nrSlots())
	f, err := memfdCreate("crest-task-entries", mfdCloexec)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, fmt.Errorf("sizing the shared area: %w", err)
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, os.NewSyscallError("mmap shared area", err)
	}
	s := &sharedArea{file: f, mem: mem}
	s.te = (*agent.TaskEntries)(unsafe.Pointer(&mem[0]))
	s.slots = unsafe.Slice((*agent.Slot)(unsafe.Pointer(&mem[slotsOff])), p.nrSlots())
	s.te.NrTasks = uint32(len(p.Tasks) - p.NrHelpers)
	s.te.NrThreads = uint32(p.NrThreads)
	s.te.NrHelpers = uint32(p.NrHelpers)
	for _, t := range p.Tasks {
		for _, th := range t.Threads {
			s.slots[th.Slot].PID = int32(th.TID)
		}
	}
	return s, nil
}

func (s *sharedArea) close() {
	if s.mem != nil {
		syscall.Munmap(s.mem)
		s.mem, s.te, s.slots = nil, nil, nil
	}
	s.file.Close()
}

func (s *sharedArea) start() *uint32        { return (*uint32)(unsafe.Pointer(&s.te.Start)) }
func (s *sharedArea) inProgress() *uint32   { return &s.te.NrInProgress }
func (s *sharedArea) stage() Stage          { return Stage(atomic.LoadInt32(&s.te.Start)) }
func (s *sharedArea) remaining() uint32     { return atomic.LoadUint32(&s.te.NrInProgress) }
func (s *sharedArea) rootHostPID() int      { return int(atomic.LoadInt32(&s.te.RootHostPID)) }
func (s *sharedArea) failState() uint32     { return atomic.LoadUint32(&s.te.Fail.State) }
func (s *sharedArea) slot(i int) agent.Slot { return s.slots[i] }

// setArrival notes an arrival the engine saw itself (COMPLETE, finish.go).
func (s *sharedArea) setArrival(i int, st Stage, ns uint64) { s.slots[i].ArriveNs[st] = ns }

// switchTo opens stage for n participants, as CRIU's
// __restore_switch_stage: the count first, then the stage with the wake
// (one FUTEX_WAKE_OP: the monitor sees the store inside the call).
func (s *sharedArea) switchTo(st Stage, n int) error {
	atomic.StoreUint32(&s.te.NrInProgress, uint32(n))
	return futexSetWakeAll(s.start(), int32(st))
}

func (s *sharedArea) launchWord() *uint32 { return &s.te.Launch }
func (s *sharedArea) launcherReady() bool {
	return atomic.LoadUint32(&s.te.Launch) == agent.LaunchReady
}

// letGo lets the waiting launcher fork the root.
func (s *sharedArea) letGo() {
	atomic.StoreUint32(&s.te.Launch, agent.LaunchGo)
	futexWakeAll(&s.te.Launch)
}

// abort stores FAIL and wakes everyone waiting on either futex.
func (s *sharedArea) abort() {
	if futexSetWakeAll(s.start(), agent.StageFail) != nil {
		atomic.StoreInt32(&s.te.Start, agent.StageFail)
		futexWakeAll(s.start())
	}
	futexWakeAll(s.inProgress())
}

func (s *sharedArea) sizeBytes() uint64 { return uint64(len(s.mem)) }

// addrs returns the engine's addresses of the start and nr_in_progress futexes.
func (s *sharedArea) addrs() (start, inProgress uint64) {
	return uint64(uintptr(unsafe.Pointer(&s.te.Start))), uint64(uintptr(unsafe.Pointer(&s.te.NrInProgress)))
}
