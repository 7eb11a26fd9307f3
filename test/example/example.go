// Package example writes a small, self-contained CRIU-format image set with
// the images package: a three-task tree with a threaded worker, memory with
// present pages, and an fd table. It is the built-in example of `make demo`
// until crest dumps live workloads, and a test that crest's writer produces
// image sets its reader accepts.
package example

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	fsimg "github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"

	"github.com/crest-restore/crest/images"
)

const page = 4096

// Task describes one task of the example tree.
type Task struct {
	Pid, Ppid, Pgid, Sid uint32
	Threads              []uint32
	Comm                 string
	HeapPages            int // present pages of its heap
}

// Tree is the example's process tree: an init, a worker with two threads in
// its own process group, and a child of the worker.
var Tree = []Task{
	{Pid: 1, Ppid: 0, Pgid: 1, Sid: 1, Threads: []uint32{1}, Comm: "init", HeapPages: 2},
	{Pid: 2, Ppid: 1, Pgid: 2, Sid: 1, Threads: []uint32{2, 4}, Comm: "worker", HeapPages: 3},
	{Pid: 3, Ppid: 2, Pgid: 2, Sid: 1, Threads: []uint32{3}, Comm: "child", HeapPages: 1},
}

// Layout of every task's memory.
const (
	TextStart  = 0x400000
	TextPages  = 4
	HeapStart  = 0x1000000
	HeapPages  = 8 // VMA size; HeapPages of Task are present
	StackStart = 0x7ffff0000000
	StackPages = 4
)

// File ids of files.img.
const (
	fileProg    = 1
	fileDevNull = 2
	fileLog     = 3
	fileCwd     = 4
	fileRoot    = 5
)

// Write creates the image set in dir (which must not exist or be empty).
func Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	w := &writer{dir: dir}
	w.write("inventory.img", images.KindInventory, &inventory.InventoryEntry{
		ImgVersion:  proto.Uint32(images.ImgVersion),
		FdinfoPerId: proto.Bool(true),
		RootIds:     ids(1, 1), // the dumping process's ids: the tree has its own pid namespace
		NsPerId:     proto.Bool(true),
	})
	var tree []proto.Message
	for _, t := range Tree {
		tree = append(tree, &pstree.PstreeEntry{Pid: proto.Uint32(t.Pid), Ppid: proto.Uint32(t.Ppid),
			Pgid: proto.Uint32(t.Pgid), Sid: proto.Uint32(t.Sid), Threads: t.Threads})
	}
	w.write("pstree.img", images.KindPstree, tree...)
	w.write("files.img", images.KindFiles,
		regFile(fileProg, "/opt/crest-example/prog", 0, 0o100755),
		regFile(fileDevNull, "/dev/null", 0o2, 0o20666),
		regFile(fileLog, "/opt/crest-example/out.log", 0o2001, 0o100644),
		regFile(fileCwd, "/opt/crest-example", 0, 0o40755),
		regFile(fileRoot, "/", 0, 0o40755))
	// One fd table for all tasks, as after fork without changes.
	w.write("fdinfo-2.img", images.KindFdinfo,
		fd(fileDevNull, 0), fd(fileDevNull, 1), fd(fileDevNull, 2), fd(fileLog, 3))
	for i, t := range Tree {
		pagesID := uint32(i + 1)
		w.write(fmt.Sprintf("ids-%d.img", t.Pid), images.KindIDs, ids(2, 9))
		w.write(fmt.Sprintf("fs-%d.img", t.Pid), images.KindFS,
			&fsimg.FsEntry{CwdId: proto.Uint32(fileCwd), RootId: proto.Uint32(fileRoot), Umask: proto.Uint32(0o22)})
		w.write(fmt.Sprintf("mm-%d.img", t.Pid), images.KindMM, memory())
		for _, tid := range t.Threads {
			w.write(fmt.Sprintf("core-%d.img", tid), images.KindCore, core(t, tid))
		}
		w.write(fmt.Sprintf("pagemap-%d.img", t.Pid), images.KindPagemap,
			&pagemap.PagemapHead{PagesId: proto.Uint32(pagesID)},
			pmEntry(TextStart, 1),
			pmEntry(HeapStart, uint64(t.HeapPages)),
			pmEntry(StackStart+(StackPages-1)*page, 1))
		// Page contents: each page says who it belongs to.
		var pages bytes.Buffer
		for n := 0; n < 1+t.HeapPages+1; n++ {
			p := make([]byte, page)
			copy(p, fmt.Sprintf("crest example: task %d page %d\n", t.Pid, n))
			pages.Write(p)
		}
		if w.err == nil {
			w.err = os.WriteFile(filepath.Join(dir, fmt.Sprintf("pages-%d.img", pagesID)), pages.Bytes(), 0o600)
		}
	}
	return w.err
}

type writer struct {
	dir string
	err error
}

func (w *writer) write(name string, k *images.Kind, msgs ...proto.Message) {
	if w.err != nil {
		return
	}
	img := &images.Image{Kind: k}
	for _, m := range msgs {
		img.Entries = append(img.Entries, images.Entry{Message: m})
	}
	w.err = images.WriteFile(filepath.Join(w.dir, name), img)
}

func ids(files, pidns uint32) *criu_core.TaskKobjIdsEntry {
	return &criu_core.TaskKobjIdsEntry{VmId: proto.Uint32(files), FilesId: proto.Uint32(files),
		FsId: proto.Uint32(files), SighandId: proto.Uint32(files), PidNsId: proto.Uint32(pidns)}
}

func regFile(id uint32, name string, flags uint32, mode uint32) *fdinfo.FileEntry {
	zero := proto.Uint32(0)
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(id), Reg: &regfile.RegFileEntry{
		Id: proto.Uint32(id), Flags: proto.Uint32(flags), Pos: proto.Uint64(0), Name: proto.String(name),
		Mode: proto.Uint32(mode), Fown: &fown.FownEntry{Uid: zero, Euid: zero, Signum: zero, PidType: zero, Pid: zero}}}
}

func fd(id, n uint32) *fdinfo.FdinfoEntry {
	return &fdinfo.FdinfoEntry{Id: proto.Uint32(id), Flags: proto.Uint32(0), Type: fdinfo.FdTypes_REG.Enum(), Fd: proto.Uint32(n)}
}

func pmEntry(vaddr, n uint64) *pagemap.PagemapEntry {
	const pePresent = 1 << 2
	return &pagemap.PagemapEntry{Vaddr: proto.Uint64(vaddr), CompatNrPages: proto.Uint32(0),
		Flags: proto.Uint32(pePresent), NrPages: proto.Uint64(n)}
}

func memory() *mm.MmEntry {
	const (
		protR, protW, protX = 1, 2, 4
		mapPrivate          = 0x02
		mapAnon             = 0x20
		mapGrowsdown        = 0x100
		vmaRegular          = 1 << 0
		vmaStack            = 1 << 1
		vmaHeap             = 1 << 5
		vmaFilePrivate      = 1 << 6
		vmaAnonPrivate      = 1 << 9
	)
	v := func(start, pages uint64, prot, flags, status uint32, fd int64) *vma.VmaEntry {
		return &vma.VmaEntry{Start: proto.Uint64(start), End: proto.Uint64(start + pages*page),
			Pgoff: proto.Uint64(0), Shmid: proto.Uint64(0), Prot: proto.Uint32(prot), Flags: proto.Uint32(flags),
			Status: proto.Uint32(status), Fd: proto.Int64(fd)}
	}
	text := v(TextStart, TextPages, protR|protX, mapPrivate, vmaRegular|vmaFilePrivate, -1)
	text.Shmid = proto.Uint64(fileProg) // file-backed VMAs name their file by shmid
	return &mm.MmEntry{
		MmStartCode: proto.Uint64(TextStart), MmEndCode: proto.Uint64(TextStart + TextPages*page),
		MmStartData: proto.Uint64(0), MmEndData: proto.Uint64(0),
		MmStartStack: proto.Uint64(StackStart + StackPages*page - 64),
		MmStartBrk:   proto.Uint64(HeapStart), MmBrk: proto.Uint64(HeapStart + HeapPages*page),
		MmArgStart: proto.Uint64(0), MmArgEnd: proto.Uint64(0), MmEnvStart: proto.Uint64(0), MmEnvEnd: proto.Uint64(0),
		ExeFileId: proto.Uint32(fileProg),
		Vmas: []*vma.VmaEntry{
			text,
			v(HeapStart, HeapPages, protR|protW, mapPrivate|mapAnon, vmaRegular|vmaAnonPrivate|vmaHeap, -1),
			v(StackStart, StackPages, protR|protW, mapPrivate|mapAnon|mapGrowsdown, vmaRegular|vmaAnonPrivate|vmaStack, -1),
		},
	}
}

func core(t Task, tid uint32) *criu_core.CoreEntry {
	c := &criu_core.CoreEntry{
		Mtype: criu_core.CoreEntry_X86_64.Enum(),
		ThreadCore: &criu_core.ThreadCoreEntry{FutexRla: proto.Uint64(0), FutexRlaLen: proto.Uint32(0),
			Comm: proto.String(t.Comm)},
	}
	if tid == t.Pid {
		const taskAlive = 1
		c.Tc = &criu_core.TaskCoreEntry{TaskState: proto.Uint32(taskAlive), ExitCode: proto.Uint32(0),
			Personality: proto.Uint32(0), Flags: proto.Uint32(0), BlkSigset: proto.Uint64(0), Comm: proto.String(t.Comm)}
	}
	return c
}
