package dump

import (
	"fmt"
	"os"
	"unsafe"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
)

// F_GETOWN_EX owner types (include/uapi/asm-generic/fcntl.h), as
// fown_entry.pid_type keeps them, and F_GETOWNER_UIDS, which exists with
// CONFIG_CHECKPOINT_RESTORE only and is in no Go package.
const (
	fOwnerTID     = 0
	fOwnerPID     = 1
	fOwnerPGRP    = 2
	fGetOwnerUIDs = 17
)

// fOwnerEx is struct f_owner_ex.
type fOwnerEx struct {
	Type int32
	PID  int32
}

// fileOwner reads who gets SIGIO from the open file fc (a copy of an fd
// of t), as CRIU 4.2 keeps it in
// fown_entry (criu/pie/parasite.c fill_fds_fown, criu/files.c): the
// signal of F_SETSIG always, and when there is an owner, its type and pid
// (F_GETOWN_EX) and the uid and euid of whoever set it (F_GETOWNER_UIDS),
// which decide at signal time whether the owner may get it. The kernel
// gives the owner's pid in the dumper's pid namespace: it is turned into
// the tree's, and an owner outside the tree is refused (why). O_PATH
// files have no owner.
func fileOwner(t *task, fc *fdCopy, flags uint32) (o *fown.FownEntry, why string, err error) {
	o = zeroFown()
	if flags&unix.O_PATH != 0 {
		return o, "", nil
	}
	c, err := fc.get()
	if err != nil {
		return nil, "", err
	}
	sig, err := unix.FcntlInt(uintptr(c), unix.F_GETSIG, 0)
	if err != nil {
		return nil, "", os.NewSyscallError("fcntl(F_GETSIG)", err)
	}
	o.Signum = proto.Uint32(uint32(sig))
	var ex fOwnerEx
	if _, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(c), unix.F_GETOWN_EX, uintptr(unsafe.Pointer(&ex))); e != 0 {
		return nil, "", os.NewSyscallError("fcntl(F_GETOWN_EX)", e)
	}
	if ex.PID == 0 {
		return o, "", nil
	}
	var uids [2]uint32
	if _, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(c), fGetOwnerUIDs, uintptr(unsafe.Pointer(&uids))); e != 0 {
		return nil, "", os.NewSyscallError("fcntl(F_GETOWNER_UIDS)", e)
	}
	pid, why := treeOwner(t, int(ex.Type), int(ex.PID))
	if why != "" {
		return nil, why, nil
	}
	o.Uid, o.Euid = proto.Uint32(uids[0]), proto.Uint32(uids[1])
	o.PidType, o.Pid = proto.Uint32(uint32(ex.Type)), proto.Uint32(pid)
	return o, "", nil
}

// treeOwner turns the host pid of an owner of type typ into the pid the
// tree knows it by: a thread's tid for F_OWNER_TID, a process's pid (or a
// thread's tid, which F_SETOWN takes too) for F_OWNER_PID, a process group
// of the tree for F_OWNER_PGRP, which is the pid of its leader. why says
// why there is none.
func treeOwner(t *task, typ, host int) (uint32, string) {
	root := t
	for root.parent != nil {
		root = root.parent
	}
	var found uint32
	var walk func(n *task)
	walk = func(n *task) {
		if typ == fOwnerPGRP {
			if n.pid == host {
				found = n.nsPid
			}
		} else {
			for _, th := range n.threads {
				if th.tid == host {
					found = th.nsTid
				}
			}
		}
		for _, c := range n.children {
			walk(c)
		}
	}
	walk(root)
	name := map[int]string{fOwnerTID: "thread", fOwnerPID: "process", fOwnerPGRP: "process group"}[typ]
	switch {
	case name == "":
		return 0, fmt.Sprintf("an owner for SIGIO of unknown type %d (F_GETOWN_EX)", typ)
	case found == 0:
		return 0, fmt.Sprintf("an owner for SIGIO (F_SETOWN) outside the tree: %s %d", name, host)
	}
	return found, ""
}

// setOwner puts o into the entry of fe's kind, where every kind keeps its
// fown_entry; false for a kind without one.
func setOwner(fe *fdinfo.FileEntry, o *fown.FownEntry) bool {
	p, _ := images.FileFown(fe)
	if p == nil {
		return false
	}
	*p = o
	return true
}
