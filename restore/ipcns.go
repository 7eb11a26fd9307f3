package restore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	ipc_var "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-var"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/sysvipc"
)

// IPCNamespace is what the tree's own IPC namespace held at the dump, as
// CRIU's prepare_ipc_ns restores it: the sysctls of ipcns-var-ID.img and
// the SysV objects of ipcns-shm-ID.img, ipcns-msg-ID.img and
// ipcns-sem-ID.img (a missing one of these three holds nothing, as CRIU
// reads it), each object with its id, key, mode and owner.
type IPCNamespace struct {
	ID  uint32
	Var *ipc_var.IpcVarEntry
	Shm []SysVShm
	Msg []SysVMsgQueue
	Sem []SysVSem
}

// SysVObject is what every SysV IPC object has: where it is in the
// images, its id (which the restore gives it again), its key, mode and
// owner. The creator (cuid, cgid) is the restoring process, as in CRIU.
type SysVObject struct {
	File  string
	Entry int
	ID    int
	Key   int32
	UID   uint32
	GID   uint32
	Mode  uint32
}

func (o *SysVObject) String() string {
	return fmt.Sprintf("%s entry %d (id %d, key %#x)", o.File, o.Entry, o.ID, uint32(o.Key))
}

// SysVShm is a shared memory segment. Its content is in
// pagemap-shmem-ID.img (Runs, CRIU 4.2's way: in_pagemaps) or, in older
// images, right after its entry (Data).
type SysVShm struct {
	SysVObject
	Size    uint64
	Hugetlb uint32 // shmget flags of a hugetlb segment
	Runs    []images.PageRun
	Data    []byte
}

// SysVSem is a semaphore set with its values.
type SysVSem struct {
	SysVObject
	Values []uint16
}

// SysVMsgQueue is a message queue with its messages, oldest first.
type SysVMsgQueue struct {
	SysVObject
	Messages []SysVMsg
}

// SysVMsg is one queued message.
type SysVMsg struct {
	Type int64
	Text []byte
}

// CRIU's limit on a restored message (its MSGMAX): larger ones are refused.
const criuMsgMax = 8192

// loadIPC reads the images of the tree's IPC namespace id.
func (p *Plan) loadIPC(id uint32) (*IPCNamespace, error) {
	ns := &IPCNamespace{ID: id}
	name := fmt.Sprintf("ipcns-var-%d.img", id)
	img, err := images.ReadKindFile(p.Dir.FilePath(name), images.KindIPCVar)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &PlanError{File: name, Msg: fmt.Sprintf("the tree's own IPC namespace %d has no sysctls image", id)}
	}
	if err != nil {
		return nil, &PlanError{File: name, Err: err}
	}
	if len(img.Entries) != 1 {
		return nil, &PlanError{File: name, Msg: fmt.Sprintf("%d entries, want one", len(img.Entries))}
	}
	ns.Var = img.Entries[0].Message.(*ipc_var.IpcVarEntry)
	if n := len(ns.Var.GetSemCtls()); n != 4 {
		return nil, &PlanError{File: name, Msg: fmt.Sprintf("entry 0: %d sem_ctls, want 4", n)}
	}
	for _, load := range []func(*IPCNamespace) error{p.loadShm, p.loadMsg, p.loadSem} {
		if err := load(ns); err != nil {
			var pe *PlanError
			if !errors.As(err, &pe) {
				err = &PlanError{Err: err} // a FormatError names the file
			}
			return nil, err
		}
	}
	return ns, nil
}

func sysvObject(file string, entry int, d interface {
	GetId() uint32
	GetKey() uint32
	GetUid() uint32
	GetGid() uint32
	GetMode() uint32
}, seen map[int]bool) (SysVObject, error) {
	o := SysVObject{File: file, Entry: entry, ID: int(d.GetId()), Key: int32(d.GetKey()), UID: d.GetUid(), GID: d.GetGid(), Mode: d.GetMode()}
	if int32(d.GetId()) < 0 {
		return o, &PlanError{File: file, Msg: fmt.Sprintf("entry %d: id %d", entry, int32(d.GetId()))}
	}
	if seen[o.ID] {
		return o, &PlanError{File: file, Msg: fmt.Sprintf("entry %d: id %d appears twice", entry, o.ID)}
	}
	seen[o.ID] = true
	return o, nil
}

func (p *Plan) loadShm(ns *IPCNamespace) error {
	name := fmt.Sprintf("ipcns-shm-%d.img", ns.ID)
	segs, err := p.Dir.IPCShm(ns.ID)
	if err != nil {
		return err
	}
	seen := map[int]bool{}
	for i, seg := range segs {
		e := seg.Entry
		o, err := sysvObject(name, i, e.GetDesc(), seen)
		if err != nil {
			return err
		}
		s := SysVShm{SysVObject: o, Size: e.GetSize(), Hugetlb: e.GetHugetlbFlag(), Data: seg.Data}
		if s.Size == 0 {
			return &PlanError{File: name, Msg: fmt.Sprintf("entry %d: shm %d of size 0", i, s.ID)}
		}
		if e.GetInPagemaps() {
			pm := fmt.Sprintf("pagemap-shmem-%d.img", s.ID)
			runs, err := p.Dir.ShmemPageRuns(uint64(s.ID))
			if err != nil {
				return &PlanError{File: pm, Msg: "shm " + o.String(), Err: err}
			}
			for _, r := range runs {
				if r.Lazy() {
					return &PlanError{File: pm, Msg: fmt.Sprintf("shm %s: run at %#x: lazy pages are not supported", o.String(), r.Vaddr)}
				}
				if r.End() > pageAlign(s.Size) {
					return &PlanError{File: pm, Msg: fmt.Sprintf("shm %s: run %#x-%#x is past the segment's %d bytes", o.String(), r.Vaddr, r.End(), s.Size)}
				}
			}
			s.Runs = runs
		}
		ns.Shm = append(ns.Shm, s)
	}
	return nil
}

func (p *Plan) loadMsg(ns *IPCNamespace) error {
	name := fmt.Sprintf("ipcns-msg-%d.img", ns.ID)
	queues, err := p.Dir.IPCMsg(ns.ID)
	if err != nil {
		return err
	}
	seen := map[int]bool{}
	for i, mq := range queues {
		o, err := sysvObject(name, i, mq.Entry.GetDesc(), seen)
		if err != nil {
			return err
		}
		q := SysVMsgQueue{SysVObject: o}
		for k, m := range mq.Messages {
			if len(m.Text) > criuMsgMax {
				return &PlanError{File: name, Msg: fmt.Sprintf("entry %d: message %d of queue %d has %d bytes, more than %d", i, k, q.ID, len(m.Text), criuMsgMax)}
			}
			q.Messages = append(q.Messages, SysVMsg{Type: m.Type, Text: m.Text})
		}
		ns.Msg = append(ns.Msg, q)
	}
	return nil
}

func (p *Plan) loadSem(ns *IPCNamespace) error {
	name := fmt.Sprintf("ipcns-sem-%d.img", ns.ID)
	sets, err := p.Dir.IPCSem(ns.ID)
	if err != nil {
		return err
	}
	seen := map[int]bool{}
	for i, set := range sets {
		o, err := sysvObject(name, i, set.Entry.GetDesc(), seen)
		if err != nil {
			return err
		}
		ns.Sem = append(ns.Sem, SysVSem{SysVObject: o, Values: set.Values})
	}
	return nil
}

// ipcSysctl is one sysctl of an IPC namespace, as CRIU's ipc_sysctl_req
// lists them, with its value in ipcns-var.
type ipcSysctl struct {
	path  string
	value string
}

// ipcSysctls returns the sysctls to write, in CRIU's order: the nine it
// always restores, then the mqueue ones (the last two only when the
// images have them) when this kernel has /proc/sys/fs/mqueue. The next
// ids are left out: restoreIPC writes them after the objects.
func ipcSysctls(v *ipc_var.IpcVarEntry) []ipcSysctl {
	u := func(x uint32) string { return strconv.FormatUint(uint64(x), 10) }
	u64 := func(x uint64) string { return strconv.FormatUint(x, 10) }
	sem := v.GetSemCtls()
	out := []ipcSysctl{
		{"kernel/sem", fmt.Sprintf("%d %d %d %d", sem[0], sem[1], sem[2], sem[3])},
		{"kernel/msgmax", u(v.GetMsgCtlmax())},
		{"kernel/msgmnb", u(v.GetMsgCtlmnb())},
		{"kernel/auto_msgmni", u(v.GetAutoMsgmni())},
		{"kernel/msgmni", u(v.GetMsgCtlmni())},
		{"kernel/shmmax", u64(v.GetShmCtlmax())},
		{"kernel/shmall", u64(v.GetShmCtlall())},
		{"kernel/shmmni", u(v.GetShmCtlmni())},
		{"kernel/shm_rmid_forced", u(v.GetShmRmidForced())},
	}
	if _, err := os.Stat("/proc/sys/fs/mqueue"); err == nil {
		out = append(out, ipcSysctl{"fs/mqueue/queues_max", u(v.GetMqQueuesMax())},
			ipcSysctl{"fs/mqueue/msg_max", u(v.GetMqMsgMax())},
			ipcSysctl{"fs/mqueue/msgsize_max", u(v.GetMqMsgsizeMax())})
		if v.MqMsgDefault != nil {
			out = append(out, ipcSysctl{"fs/mqueue/msg_default", u(v.GetMqMsgDefault())},
				ipcSysctl{"fs/mqueue/msgsize_default", u(v.GetMqMsgsizeDefault())})
		}
	}
	return out
}

// writeSysctl writes one sysctl of the calling thread's namespaces. As
// CRIU (CTL_FLAGS_IPC_EACCES_SKIP), EACCES is no error: the value is not
// this process's to set.
func writeSysctl(name, value string) error {
	path := "/proc/sys/" + name
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(value)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if errors.Is(err, syscall.EACCES) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sysctl %s = %q: %w", name, value, err)
	}
	return nil
}

// restoreIPC fills the IPC namespace the calling thread is in: the
// sysctls, then the segments, queues and semaphore sets, each created
// with its id (through kernel/*_next_id, as CRIU does) and given its
// owner and content; last the next ids the namespace had, if any (CRIU
// writes them first, where creating an object of the kind undoes them).
func restoreIPC(ns *IPCNamespace) error {
	varFile := fmt.Sprintf("ipcns-var-%d.img", ns.ID)
	if err := writeIPCSysctls(ns.Var); err != nil { // ipcinfo.go
		return fmt.Errorf("%s: %w", varFile, err)
	}
	for i := range ns.Shm {
		if err := restoreShm(&ns.Shm[i]); err != nil {
			return fmt.Errorf("shm %s: %w", ns.Shm[i].String(), err)
		}
	}
	for i := range ns.Msg {
		if err := restoreMsg(&ns.Msg[i]); err != nil {
			return fmt.Errorf("message queue %s: %w", ns.Msg[i].String(), err)
		}
	}
	for i := range ns.Sem {
		if err := restoreSem(&ns.Sem[i]); err != nil {
			return fmt.Errorf("semaphore set %s: %w", ns.Sem[i].String(), err)
		}
	}
	for _, n := range []struct {
		name string
		v    *uint32
	}{{"kernel/msg_next_id", ns.Var.MsgNextId}, {"kernel/sem_next_id", ns.Var.SemNextId}, {"kernel/shm_next_id", ns.Var.ShmNextId}} {
		if n.v == nil {
			continue
		}
		if err := writeSysctl(n.name, strconv.FormatInt(int64(int32(*n.v)), 10)); err != nil {
			return fmt.Errorf("%s: %w", varFile, err)
		}
	}
	return nil
}

// createWithID makes the next object of a kind get id: kernel/NAME is
// read back by the kernel at the next create (and reset to -1 then).
func createWithID(name string, o *SysVObject, create func() (int, error)) error {
	if err := writeSysctl("kernel/"+name, strconv.Itoa(o.ID)); err != nil {
		return err
	}
	id, err := create()
	if err != nil {
		return err
	}
	if id != o.ID {
		return fmt.Errorf("created with id %d, not %d", id, o.ID)
	}
	return nil
}

const (
	semGetAll = 13
	semSetAll = 17
)

func restoreShm(s *SysVShm) error {
	err := createWithID("shm_next_id", &s.SysVObject, func() (int, error) {
		id, err := unix.SysvShmGet(int(s.Key), int(s.Size), int(s.Hugetlb)|int(s.Mode)|unix.IPC_CREAT|unix.IPC_EXCL)
		return id, os.NewSyscallError("shmget", err)
	})
	if err != nil {
		return err
	}
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(s.ID, unix.IPC_STAT, &ds); err != nil {
		return os.NewSyscallError("shmctl(IPC_STAT)", err)
	}
	ds.Perm.Uid, ds.Perm.Gid = s.UID, s.GID
	if _, err := unix.SysvShmCtl(s.ID, unix.IPC_SET, &ds); err != nil {
		return os.NewSyscallError("shmctl(IPC_SET)", err)
	}
	mem, err := unix.SysvShmAttach(s.ID, 0, 0)
	if err != nil {
		return os.NewSyscallError("shmat", err)
	}
	// The attachment covers whole pages; the images hold the last one
	// whole too, past the segment's size.
	mem = unsafe.Slice(&mem[0], pageAlign(s.Size))
	err = fillShm(s, mem)
	if derr := unix.SysvShmDetach(mem); err == nil && derr != nil {
		err = os.NewSyscallError("shmdt", derr)
	}
	return err
}

func fillShm(s *SysVShm, mem []byte) error {
	if s.Runs == nil {
		copy(mem, s.Data)
		return nil
	}
	pages, err := images.OpenPages(s.Runs)
	if err != nil {
		return err
	}
	defer pages.Close()
	for _, r := range s.Runs {
		if _, err := pages.ReadAt(mem[r.Vaddr:r.End()], r.Vaddr); err != nil {
			return fmt.Errorf("pagemap-shmem-%d.img: run at %#x: %w", s.ID, r.Vaddr, err)
		}
	}
	return nil
}

func restoreSem(s *SysVSem) error {
	err := createWithID("sem_next_id", &s.SysVObject, func() (int, error) {
		return sysvipc.Call("semget", unix.SYS_SEMGET, uintptr(s.Key), uintptr(len(s.Values)), uintptr(s.Mode|unix.IPC_CREAT|unix.IPC_EXCL), 0)
	})
	if err != nil {
		return err
	}
	var ds sysvipc.SemidDS
	if _, err := sysvipc.Call("semctl(IPC_STAT)", unix.SYS_SEMCTL, uintptr(s.ID), 0, unix.IPC_STAT, uintptr(unsafe.Pointer(&ds))); err != nil {
		return err
	}
	ds.Perm.Uid, ds.Perm.Gid = s.UID, s.GID
	if _, err := sysvipc.Call("semctl(IPC_SET)", unix.SYS_SEMCTL, uintptr(s.ID), 0, unix.IPC_SET, uintptr(unsafe.Pointer(&ds))); err != nil {
		return err
	}
	if len(s.Values) == 0 {
		return nil
	}
	_, err = sysvipc.Call("semctl(SETALL)", unix.SYS_SEMCTL, uintptr(s.ID), 0, semSetAll, uintptr(unsafe.Pointer(&s.Values[0])))
	return err
}

func restoreMsg(q *SysVMsgQueue) error {
	err := createWithID("msg_next_id", &q.SysVObject, func() (int, error) {
		return sysvipc.Call("msgget", unix.SYS_MSGGET, uintptr(q.Key), uintptr(q.Mode|unix.IPC_CREAT|unix.IPC_EXCL), 0, 0)
	})
	if err != nil {
		return err
	}
	var ds sysvipc.MsqidDS
	if _, err := sysvipc.Call("msgctl(IPC_STAT)", unix.SYS_MSGCTL, uintptr(q.ID), unix.IPC_STAT, uintptr(unsafe.Pointer(&ds)), 0); err != nil {
		return err
	}
	ds.Perm.Uid, ds.Perm.Gid = q.UID, q.GID
	if _, err := sysvipc.Call("msgctl(IPC_SET)", unix.SYS_MSGCTL, uintptr(q.ID), unix.IPC_SET, uintptr(unsafe.Pointer(&ds)), 0); err != nil {
		return err
	}
	var buf bytes.Buffer
	for i, m := range q.Messages {
		// struct msgbuf: the type, then the text
		buf.Reset()
		binary.Write(&buf, binary.LittleEndian, m.Type)
		buf.Write(m.Text)
		b := buf.Bytes()
		if _, err := sysvipc.Call("msgsnd", unix.SYS_MSGSND, uintptr(q.ID), uintptr(unsafe.Pointer(&b[0])), uintptr(len(m.Text)), unix.IPC_NOWAIT); err != nil {
			return fmt.Errorf("message %d (type %d, %d bytes): %w", i, m.Type, len(m.Text), err)
		}
	}
	return nil
}

// ipcSummary is a one-line account of ns for the logs.
func (ns *IPCNamespace) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d segments, %d queues, %d semaphore sets", len(ns.Shm), len(ns.Msg), len(ns.Sem))
	return b.String()
}
