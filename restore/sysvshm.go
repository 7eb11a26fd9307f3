package restore

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/restore/agent"
)

// A task's mappings of SysV shared memory segments (VMA_AREA_SYSVIPC),
// restored as CRIU 4.2 does (open_shmem_sysv, fixup_sysv_shmems,
// restore_mapping): the engine creates the segments with their contents
// in PREPARE_NAMESPACES (ipcns.go), and each task attaches its own in its
// memory step, with shmat at the dumped address. One shmat attaches the
// whole segment; mprotect can cut an attachment into several mappings,
// which the images keep as consecutive VMAs of one shmid, the first at
// pgoff 0 and each next one going on where the previous ended. So the
// first VMA of such a chain attaches, and every VMA of it gets its own
// protection afterwards. An attachment with a hole (a part unmapped, or
// mremapped elsewhere) can not be made with shmat, and is refused as CRIU
// refuses it.
//
// Read-only or not: CRIU takes it from fdflags, the open mode of the
// attachment's file at the dump (O_RDONLY after SHM_RDONLY), and attaches
// every attachment of a segment read-write when any is. crest decides per
// attachment, so that a read-only one stays one (its mappings can not be
// made writable again): read-write when any of its VMAs has fdflags
// O_RDWR, or none at all (older images, as CRIU guesses), or PROT_WRITE.
// SHM_EXEC when any has PROT_EXEC (CRIU drops PROT_EXEC of SysV mappings).
//
// Segments live in an IPC namespace: CRIU dumps them only with the tree's
// own (check_sysvipc_map_dump), so a mapping of one in a tree without its
// own IPC namespace is refused, as is one of a segment the namespace's
// images do not have.
//
// What the kernel keeps about attaches comes back as it follows from
// this: shm_nattch counts the mappings, which are the dumped ones again;
// shm_lpid and shm_atime are the last attaching task's pid and the
// restore's time, shm_cpid the engine's and shm_dtime that of the
// engine's detach after filling the segment, as after CRIU's restore (the
// images keep none of them).

// SysVAttach is where a VMA of a SysV segment stands in its attachment.
type SysVAttach struct {
	ShmID   uint64 // the segment's id (vma_entry.shmid)
	FDFlags uint32 // vma_entry.fdflags, when HasFDFlags
	// HasFDFlags: the images say the attachment's open mode
	HasFDFlags bool
	// Shm is the segment, in the tree's IPC namespace
	Shm *SysVShm
	// First: this VMA attaches (pgoff 0); the others of its attachment
	// only get their protection.
	First bool
	// ShmFlags are the shmat(2) flags of the attachment (SHM_RDONLY,
	// SHM_EXEC), on its first VMA.
	ShmFlags uint32
}

// SysV shmat(2) flags (linux/shm.h).
const (
	shmRdonly = 0o10000
	shmExec   = 0o100000
)

// sysvShmVMA notes a VMA of a SysV segment; planSysVShm resolves it once
// the IPC namespace is loaded.
func sysvShmVMA(v *vma.VmaEntry, out *VMA) {
	out.Kind = VMASysVShm
	out.SysV = &SysVAttach{ShmID: v.GetShmid(), FDFlags: v.GetFdflags(), HasFDFlags: v.Fdflags != nil}
}

// planSysVShm resolves every task's SysV mappings into attachments.
func (p *Plan) planSysVShm() error {
	for _, t := range p.Tasks {
		if err := p.planTaskSysVShm(t); err != nil {
			return err
		}
	}
	return nil
}

func (p *Plan) planTaskSysVShm(t *Task) error {
	mmName := fmt.Sprintf("mm-%d.img", t.PID)
	var first *VMA // of the attachment being followed
	var end uint64 // where its last VMA ended
	for i := range t.Mem.VMAs {
		v := &t.Mem.VMAs[i]
		if v.Kind != VMASysVShm {
			continue
		}
		a := v.SysV
		refuse := func(why string) error {
			return &PlanError{PID: t.PID, File: mmName, Msg: fmt.Sprintf("vma %d (%#x-%#x, SysV shm %d at offset %#x): %s",
				i, v.Start, v.End, a.ShmID, v.Pgoff, why)}
		}
		if p.IPC == nil {
			return refuse("the segment is in an IPC namespace that is not the tree's own, and so not in the images: " +
				"SysV shared memory is restored only with the tree's IPC namespace (as CRIU dumps it)")
		}
		if v.Flags&unix.MAP_SHARED == 0 {
			return refuse("not MAP_SHARED")
		}
		for k := range p.IPC.Shm {
			if uint64(p.IPC.Shm[k].ID) == a.ShmID {
				a.Shm = &p.IPC.Shm[k]
			}
		}
		if a.Shm == nil {
			return refuse(fmt.Sprintf("ipcns-shm-%d.img has no segment %d", p.IPC.ID, a.ShmID))
		}
		size := pageAlign(a.Shm.Size)
		if v.Pgoff == 0 {
			if first != nil && end != first.Start+pageAlign(first.SysV.Shm.Size) {
				return p.sysvHole(t, first, end)
			}
			first, end = v, v.Start
			a.First = true
		}
		switch {
		case first == nil || first.SysV.ShmID != a.ShmID || v.Start != end:
			return refuse("a part of an attachment without the part before it (unmapped, or mremapped away): " +
				"shmat can only attach the whole segment (CRIU refuses it too)")
		case v.Pgoff != v.Start-first.Start:
			return refuse(fmt.Sprintf("offset %#x where the attachment at %#x puts %#x (misordered parts)", v.Pgoff, first.Start, v.Start-first.Start))
		case v.End-first.Start > size:
			return refuse(fmt.Sprintf("past the end of the segment's %d bytes", a.Shm.Size))
		}
		end = v.End
		if !a.HasFDFlags || a.FDFlags&unix.O_ACCMODE == unix.O_RDWR || v.Prot&unix.PROT_WRITE != 0 {
			first.SysV.ShmFlags &^= shmRdonly
		} else if v == first {
			first.SysV.ShmFlags |= shmRdonly
		}
		if v.Prot&unix.PROT_EXEC != 0 {
			first.SysV.ShmFlags |= shmExec
		}
	}
	if first != nil && end != first.Start+pageAlign(first.SysV.Shm.Size) {
		return p.sysvHole(t, first, end)
	}
	return nil
}

// sysvHole refuses an attachment that stops short of its segment's end.
func (p *Plan) sysvHole(t *Task, first *VMA, end uint64) error {
	a := first.SysV
	return &PlanError{PID: t.PID, File: fmt.Sprintf("mm-%d.img", t.PID), Msg: fmt.Sprintf(
		"SysV shm %d attached at %#x: mapped up to %#x, the segment's %d bytes reach %#x: an attachment with its tail unmapped "+
			"can not be made with shmat (CRIU refuses it too)", a.ShmID, first.Start, end, a.Shm.Size, first.Start+pageAlign(a.Shm.Size))}
}

// agentSysVShm is how the agent's plan carries v (a VMASysVShm): src_fd
// the segment's id on the VMA that attaches, -1 on the others of its
// attachment, and flags the shmat(2) flags.
func agentSysVShm(v *VMA, av *agent.VMA) {
	av.Kind = agent.VMASysVShm
	av.SrcFD, av.Flags = -1, 0
	if v.SysV.First {
		av.SrcFD, av.Flags = int32(v.SysV.ShmID), v.SysV.ShmFlags
	}
}
