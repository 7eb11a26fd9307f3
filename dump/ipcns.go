package dump

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	ipc_desc "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-desc"
	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	ipc_var "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-var"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/sysvipc"
)

// writeIPC writes the images of the IPC namespace the calling thread is
// in, as CRIU's dump_ipc_ns does: its sysctls (ipcns-var-ID.img), its
// shared memory segments with their contents in pagemap-shmem-SHMID.img
// (ipcns-shm-ID.img), its message queues with their messages
// (ipcns-msg-ID.img) and its semaphore sets with their values
// (ipcns-sem-ID.img). Nothing is changed: messages are copied
// (MSG_COPY), segments attached read-only for as long as it takes to read
// them (which sets their attach time and last pid, as CRIU's dump does).
func (d *dumper) writeIPC() error {
	ino, err := nsInode(d.tree.root.pid, "ipc")
	if err != nil {
		return err
	}
	id := d.ns.id(ino)
	v, err := readIPCVar()
	if err != nil {
		return fmt.Errorf("ipcns-var-%d.img: %w", id, err)
	}
	if err := d.write(fmt.Sprintf("ipcns-var-%d.img", id), images.KindIPCVar, images.Entry{Message: v}); err != nil {
		return err
	}
	for _, part := range []struct {
		name string
		kind *images.Kind
		dump func(*[]images.Entry) error
	}{
		{"shm", images.KindIPCNSShm, d.dumpShm},
		{"msg", images.KindIPCNSMsg, dumpMsg},
		{"sem", images.KindIPCNSSem, dumpSem},
	} {
		name := fmt.Sprintf("ipcns-%s-%d.img", part.name, id)
		var entries []images.Entry
		if err := part.dump(&entries); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		d.userIPC(entries) // userns.go
		if err := d.write(name, part.kind, entries...); err != nil {
			return err
		}
	}
	return nil
}

// readIPCVar reads the sysctls CRIU saves (ipc_sysctl_req). The next ids
// are left out when -1, the value a namespace starts with and that can
// not be written; the mqueue ones stay 0 on a kernel without them.
func readIPCVar() (*ipc_var.IpcVarEntry, error) {
	v := &ipc_var.IpcVarEntry{}
	sem, err := readSysctl("kernel/sem")
	if err != nil {
		return nil, err
	}
	if len(sem) != 4 {
		return nil, fmt.Errorf("sysctl kernel/sem: %d values, want 4", len(sem))
	}
	for _, x := range sem {
		v.SemCtls = append(v.SemCtls, uint32(x))
	}
	u32 := func(name string, optional bool) (*uint32, error) {
		x, err := readSysctl(name)
		if optional && errors.Is(err, os.ErrNotExist) {
			return proto.Uint32(0), nil
		}
		if err != nil {
			return nil, err
		}
		return proto.Uint32(uint32(x[0])), nil
	}
	u64 := func(name string) (*uint64, error) {
		x, err := readSysctl(name)
		if err != nil {
			return nil, err
		}
		return proto.Uint64(uint64(x[0])), nil
	}
	var errs []error
	for _, f := range []struct {
		name     string
		field    **uint32
		optional bool
	}{
		{"kernel/msgmax", &v.MsgCtlmax, false}, {"kernel/msgmnb", &v.MsgCtlmnb, false},
		{"kernel/auto_msgmni", &v.AutoMsgmni, false}, {"kernel/msgmni", &v.MsgCtlmni, false},
		{"kernel/shmmni", &v.ShmCtlmni, false}, {"kernel/shm_rmid_forced", &v.ShmRmidForced, false},
		{"fs/mqueue/queues_max", &v.MqQueuesMax, true}, {"fs/mqueue/msg_max", &v.MqMsgMax, true},
		{"fs/mqueue/msgsize_max", &v.MqMsgsizeMax, true}, {"fs/mqueue/msg_default", &v.MqMsgDefault, true},
		{"fs/mqueue/msgsize_default", &v.MqMsgsizeDefault, true},
	} {
		var err error
		*f.field, err = u32(f.name, f.optional)
		errs = append(errs, err)
	}
	v.ShmCtlmax, err = u64("kernel/shmmax")
	errs = append(errs, err)
	v.ShmCtlall, err = u64("kernel/shmall")
	errs = append(errs, err)
	for _, f := range []struct {
		name  string
		field **uint32
	}{{"kernel/msg_next_id", &v.MsgNextId}, {"kernel/sem_next_id", &v.SemNextId}, {"kernel/shm_next_id", &v.ShmNextId}} {
		x, err := readSysctl(f.name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if x[0] != -1 {
			*f.field = proto.Uint32(uint32(x[0]))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return v, nil
}

// readSysctl reads the numbers of a sysctl of the calling thread's
// namespaces.
func readSysctl(name string) ([]int64, error) {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return nil, fmt.Errorf("sysctl %s: %w", name, err)
	}
	var out []int64
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			// shmmax and shmall are unsigned longs
			u, uerr := strconv.ParseUint(f, 10, 64)
			if uerr != nil {
				return nil, fmt.Errorf("sysctl %s: %q: %w", name, f, err)
			}
			n = int64(u)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("sysctl %s: empty", name)
	}
	return out, nil
}

// SysV IPC control commands (linux/ipc.h, shm.h, msg.h, sem.h).
const (
	shmStat   = 13
	shmInfo   = 14
	msgStat   = 11
	msgInfo   = 12
	semStat   = 18
	semInfo   = 19
	semGetAll = 13
	msgCopy   = 0o40000
	shmDest   = 0o1000

	hugetlbfsMagic = 0x958458f6
)

func ipcDesc(id int, p *unix.SysvIpcPerm) *ipc_desc.IpcDescEntry {
	return &ipc_desc.IpcDescEntry{Key: proto.Uint32(uint32(p.Key)), Uid: proto.Uint32(p.Uid), Gid: proto.Uint32(p.Gid),
		Cuid: proto.Uint32(p.Cuid), Cgid: proto.Uint32(p.Cgid), Mode: proto.Uint32(p.Mode), Id: proto.Uint32(uint32(id))}
}

// eachIndex calls fn with the id of every object of a kind, in the
// kernel's index order as CRIU walks them: stat(i) for every index up to
// the highest in use, skipping free ones (EINVAL). It checks the count
// against the number in use.
func eachIndex(kind string, maxIndex, inUse int, stat func(i int) (int, error), fn func(id int) error) error {
	n := 0
	for i := 0; i <= maxIndex; i++ {
		id, err := stat(i)
		if errors.Is(err, syscall.EINVAL) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s index %d: %w", kind, i, err)
		}
		if err := fn(id); err != nil {
			return err
		}
		n++
	}
	if n != inUse {
		return fmt.Errorf("%d %s objects found, the namespace has %d in use", n, kind, inUse)
	}
	return nil
}

func (d *dumper) dumpShm(out *[]images.Entry) error {
	var info [64]int32 // struct shm_info: used_ids first
	maxIndex, err := sysvipc.Call("shmctl(SHM_INFO)", unix.SYS_SHMCTL, 0, shmInfo, uintptr(unsafe.Pointer(&info)), 0, 0)
	if err != nil {
		return err
	}
	var ds unix.SysvShmDesc
	return eachIndex("shm", maxIndex, int(info[0]), func(i int) (int, error) {
		return sysvipc.Call("shmctl(SHM_STAT)", unix.SYS_SHMCTL, uintptr(i), shmStat, uintptr(unsafe.Pointer(&ds)), 0, 0)
	}, func(id int) error {
		if ds.Perm.Mode&shmDest != 0 {
			return &UnsupportedError{Task: d.tree.root.pid, Resource: "SysV shared memory", What: fmt.Sprintf("segment %d", id),
				Why: "a segment removed while still attached is not supported"}
		}
		e := &ipc_shm.IpcShmEntry{Desc: ipcDesc(id, &ds.Perm), Size: proto.Uint64(ds.Segsz), InPagemaps: proto.Bool(true)}
		*out = append(*out, images.Entry{Message: e})
		d.pages++
		if err := d.dumpShmPages(id, ds.Segsz, d.pages); err != nil {
			return fmt.Errorf("shm %d (key %#x): %w", id, uint32(ds.Perm.Key), err)
		}
		return nil
	})
}

// dumpShmPages writes the content of segment id into pages-PAGESID.img
// and pagemap-shmem-ID.img, as CRIU's dump_one_sysv_shmem does: the
// segment attached read-only, every page but the holes of its file
// (SEEK_DATA on its map_files link), read through that file, so that
// no hole gets a page.
func (d *dumper) dumpShmPages(id int, size uint64, pagesID uint32) error {
	mem, err := unix.SysvShmAttach(id, 0, unix.SHM_RDONLY)
	if err != nil {
		return os.NewSyscallError("shmat", err)
	}
	start := uintptr(unsafe.Pointer(&mem[0]))
	span := (size + images.PageSize - 1) &^ (images.PageSize - 1)
	link := fmt.Sprintf("/proc/self/map_files/%x-%x", start, uint64(start)+span)
	f, err := os.Open(link)
	if derr := unix.SysvShmDetach(mem); err == nil && derr != nil {
		err = os.NewSyscallError("shmdt", derr)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		return err
	}
	defer f.Close()
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return os.NewSyscallError("fstatfs", err)
	}
	if sfs.Type == hugetlbfsMagic {
		return &UnsupportedError{Task: d.tree.root.pid, Resource: "SysV shared memory", What: fmt.Sprintf("segment %d", id),
			Why: "hugetlb segments are not supported"}
	}
	return d.dumpShmemPages(f, int64(size), pagesID, uint64(id))
}

func dumpMsg(out *[]images.Entry) error {
	var info [16]int32 // struct msginfo: msgpool (queues in use) first
	maxIndex, err := sysvipc.Call("msgctl(MSG_INFO)", unix.SYS_MSGCTL, 0, msgInfo, uintptr(unsafe.Pointer(&info)), 0, 0)
	if err != nil {
		return err
	}
	msgmax, err := readSysctl("kernel/msgmax")
	if err != nil {
		return err
	}
	buf := make([]byte, 8+msgmax[0])
	var ds sysvipc.MsqidDS
	return eachIndex("msg", maxIndex, int(info[0]), func(i int) (int, error) {
		return sysvipc.Call("msgctl(MSG_STAT)", unix.SYS_MSGCTL, uintptr(i), msgStat, uintptr(unsafe.Pointer(&ds)), 0, 0)
	}, func(id int) error {
		e := &ipc_msg.IpcMsgEntry{Desc: ipcDesc(id, &ds.Perm), Qbytes: proto.Uint32(uint32(ds.Qbytes)), Qnum: proto.Uint32(uint32(ds.Qnum))}
		msgs := make([]images.IPCMessage, ds.Qnum)
		for i := range msgs {
			// MSG_COPY: msgtyp is the index of the message to copy
			n, err := sysvipc.Call("msgrcv(MSG_COPY)", unix.SYS_MSGRCV, uintptr(id), uintptr(unsafe.Pointer(&buf[0])),
				uintptr(len(buf)-8), uintptr(i), unix.IPC_NOWAIT|msgCopy)
			if err != nil {
				return fmt.Errorf("queue %d (key %#x): message %d: %w", id, uint32(ds.Perm.Key), i, err)
			}
			msgs[i] = images.IPCMessage{Type: int64(binary.LittleEndian.Uint64(buf)), Text: bytes.Clone(buf[8 : 8+n])}
		}
		payload, err := images.EncodeIPCMessages(msgs)
		if err != nil {
			return fmt.Errorf("queue %d (key %#x): %w", id, uint32(ds.Perm.Key), err)
		}
		*out = append(*out, images.Entry{Message: e, Payload: payload})
		return nil
	})
}

func dumpSem(out *[]images.Entry) error {
	var info [16]int32 // struct seminfo: semusz (sets in use) is the 8th
	maxIndex, err := sysvipc.Call("semctl(SEM_INFO)", unix.SYS_SEMCTL, 0, 0, semInfo, uintptr(unsafe.Pointer(&info)), 0)
	if err != nil {
		return err
	}
	var ds sysvipc.SemidDS
	return eachIndex("sem", maxIndex, int(info[7]), func(i int) (int, error) {
		return sysvipc.Call("semctl(SEM_STAT)", unix.SYS_SEMCTL, uintptr(i), 0, semStat, uintptr(unsafe.Pointer(&ds)), 0)
	}, func(id int) error {
		e := &ipc_sem.IpcSemEntry{Desc: ipcDesc(id, &ds.Perm), Nsems: proto.Uint32(uint32(ds.Nsems))}
		values := make([]uint16, max(ds.Nsems, 1))
		if _, err := sysvipc.Call("semctl(GETALL)", unix.SYS_SEMCTL, uintptr(id), 0, semGetAll, uintptr(unsafe.Pointer(&values[0])), 0); err != nil {
			return fmt.Errorf("semaphore set %d (key %#x): %w", id, uint32(ds.Perm.Key), err)
		}
		*out = append(*out, images.Entry{Message: e, Payload: images.EncodeIPCSemValues(values[:ds.Nsems])})
		return nil
	})
}
