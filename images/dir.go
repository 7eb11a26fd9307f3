package images

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/cgroup"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	fsimg "github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	pipe_data "github.com/checkpoint-restore/go-criu/v8/crit/images/pipe-data"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	remap_file_path "github.com/checkpoint-restore/go-criu/v8/crit/images/remap-file-path"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	sk_packet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-packet"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
	tcp_stream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timens"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
)

// The image format versions crest reads: CRIU refuses anything else.
const (
	ImgVersion = 2
)

// Dir is a typed view of a CRIU image directory. Open reads the inventory
// and the process tree; every other image is read when first asked for.
// Images that CRIU treats as optional read as empty when absent; required
// ones (inventory, pstree, core of each thread) give a *MissingError.
//
// A Dir is safe for concurrent use.
type Dir struct {
	Path      string
	Inventory *inventory.InventoryEntry
	Pstree    []*pstree.PstreeEntry

	mu        sync.Mutex
	files     []*fdinfo.FileEntry
	filesByID map[uint32]*fdinfo.FileEntry
	parent    *Dir
	parentErr error
	parentSet bool
	// deleted: the files remap-fpath.img gives a ghost or a link, read on
	// first use (Deleted)
	deleted map[uint32]bool
}

// Open opens the image directory at path and reads its inventory and
// process tree.
func Open(path string) (*Dir, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("images directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("images directory %s: not a directory", path)
	}
	d := &Dir{Path: path}
	inv, err := loadOne[*inventory.InventoryEntry](d, KindInventory, "inventory.img", "the image set")
	if err != nil {
		return nil, err
	}
	if inv.GetImgVersion() != ImgVersion {
		return nil, &FormatError{File: d.file("inventory.img"), Offset: 8, Entry: 0,
			Msg: fmt.Sprintf("image version %d, crest reads version %d", inv.GetImgVersion(), ImgVersion)}
	}
	if !inv.GetFdinfoPerId() {
		return nil, &FormatError{File: d.file("inventory.img"), Offset: 8, Entry: 0,
			Msg: "fdinfo_per_id is not set: images from before CRIU 1.3 are not supported"}
	}
	d.Inventory = inv
	tree, err := loadAll[*pstree.PstreeEntry](d, KindPstree, "pstree.img", true, "the process tree")
	if err != nil {
		return nil, err
	}
	if len(tree) == 0 {
		return nil, &FormatError{File: d.file("pstree.img"), Offset: 8, Entry: 0, Msg: "no tasks in the process tree"}
	}
	d.Pstree = tree
	return d, nil
}

func (d *Dir) file(name string) string { return filepath.Join(d.Path, name) }

// FilePath returns the path of an image file of the directory.
func (d *Dir) FilePath(name string) string { return d.file(name) }

// readEntries reads every entry of an image file of kind k. A missing file
// is a *MissingError when required and no entries otherwise.
func (d *Dir) readEntries(k *Kind, name string, required bool, what string) ([]Entry, error) {
	img, err := ReadKindFile(d.file(name), k)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if required {
				return nil, &MissingError{File: d.file(name), What: what}
			}
			return nil, nil
		}
		return nil, err
	}
	return img.Entries, nil
}

func loadAll[T proto.Message](d *Dir, k *Kind, name string, required bool, what string) ([]T, error) {
	ents, err := d.readEntries(k, name, required, what)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(ents))
	for _, e := range ents {
		out = append(out, e.Message.(T))
	}
	return out, nil
}

// loadOne reads an image that must hold exactly one entry.
func loadOne[T proto.Message](d *Dir, k *Kind, name string, what string) (T, error) {
	var zero T
	ents, err := loadAll[T](d, k, name, true, what)
	if err != nil {
		return zero, err
	}
	if len(ents) != 1 {
		return zero, &FormatError{File: d.file(name), Offset: 0, Entry: len(ents),
			Msg: fmt.Sprintf("want exactly one %s entry, found %d", k.Name, len(ents))}
	}
	return ents[0], nil
}

// loadOptionalOne reads an image that holds at most one entry; a missing
// file gives the zero value (nil).
func loadOptionalOne[T proto.Message](d *Dir, k *Kind, name string) (T, error) {
	var zero T
	ents, err := loadAll[T](d, k, name, false, "")
	if err != nil || len(ents) == 0 {
		return zero, err
	}
	if len(ents) != 1 {
		return zero, &FormatError{File: d.file(name), Offset: 0, Entry: 1,
			Msg: fmt.Sprintf("want one %s entry, found %d", k.Name, len(ents))}
	}
	return ents[0], nil
}

// Task returns the pstree entry of the task with pid (as in the images).
func (d *Dir) Task(pid uint32) *pstree.PstreeEntry {
	for _, t := range d.Pstree {
		if t.GetPid() == pid {
			return t
		}
	}
	return nil
}

// Core returns the core image of thread tid (core-TID.img), which is
// required for every thread of the tree.
func (d *Dir) Core(tid uint32) (*criu_core.CoreEntry, error) {
	return loadOne[*criu_core.CoreEntry](d, KindCore, fmt.Sprintf("core-%d.img", tid), fmt.Sprintf("thread %d", tid))
}

// IDs returns the kernel object ids of task pid (ids-PID.img). Images older
// than CRIU 1.6 kept them in the core image instead; that is used when
// ids-PID.img is absent.
func (d *Dir) IDs(pid uint32) (*criu_core.TaskKobjIdsEntry, error) {
	ids, err := loadOptionalOne[*criu_core.TaskKobjIdsEntry](d, KindIDs, fmt.Sprintf("ids-%d.img", pid))
	if err != nil || ids != nil {
		return ids, err
	}
	core, err := d.Core(pid)
	if err != nil {
		return nil, err
	}
	if core.GetIds() == nil {
		return nil, &MissingError{File: d.file(fmt.Sprintf("ids-%d.img", pid)), What: fmt.Sprintf("task %d", pid)}
	}
	return core.GetIds(), nil
}

// MM returns the memory layout of task pid (mm-PID.img), required for every
// live task; zombies and helpers have none.
func (d *Dir) MM(pid uint32) (*mm.MmEntry, error) {
	return loadOne[*mm.MmEntry](d, KindMM, fmt.Sprintf("mm-%d.img", pid), fmt.Sprintf("task %d", pid))
}

// FS returns the cwd, root and umask of task pid (fs-PID.img).
func (d *Dir) FS(pid uint32) (*fsimg.FsEntry, error) {
	return loadOne[*fsimg.FsEntry](d, KindFS, fmt.Sprintf("fs-%d.img", pid), fmt.Sprintf("task %d", pid))
}

// Fdinfo returns the fd table with id filesID (fdinfo-ID.img, the files_id
// of a task's ids). A missing table is empty, as in CRIU.
func (d *Dir) Fdinfo(filesID uint32) ([]*fdinfo.FdinfoEntry, error) {
	return loadAll[*fdinfo.FdinfoEntry](d, KindFdinfo, fmt.Sprintf("fdinfo-%d.img", filesID), false, "")
}

// Files returns every open file description of the image set (files.img).
func (d *Dir) Files() ([]*fdinfo.FileEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.files != nil {
		return d.files, nil
	}
	files, err := loadAll[*fdinfo.FileEntry](d, KindFiles, "files.img", false, "")
	if err != nil {
		return nil, err
	}
	byID := make(map[uint32]*fdinfo.FileEntry, len(files))
	for _, f := range files {
		byID[f.GetId()] = f
	}
	d.files, d.filesByID = files, byID
	return files, nil
}

// File returns the file entry with id, as fdinfo, fs, mm and vma entries
// refer to it.
func (d *Dir) File(id uint32) (*fdinfo.FileEntry, error) {
	if _, err := d.Files(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	f := d.filesByID[id]
	d.mu.Unlock()
	if f == nil {
		return nil, &FormatError{File: d.file("files.img"), Offset: -1, Entry: -1,
			Msg: fmt.Sprintf("no file with id %d", id)}
	}
	return f, nil
}

// Pagemap is a decoded pagemap image: which pages of pages-<PagesID>.img
// back which virtual addresses.
type Pagemap struct {
	File    string // path of the pagemap image
	PagesID uint32
	Entries []*pagemap.PagemapEntry
}

// Pagemap returns the pagemap of task pid (pagemap-PID.img), or nil when the
// task has none (zombies, helpers).
func (d *Dir) Pagemap(pid uint32) (*Pagemap, error) {
	return d.readPagemap(fmt.Sprintf("pagemap-%d.img", pid))
}

// ShmemPagemap returns the pagemap of a shared memory object
// (pagemap-shmem-ID.img, ID being the object's shmid), or nil.
func (d *Dir) ShmemPagemap(shmid uint64) (*Pagemap, error) {
	return d.readPagemap(fmt.Sprintf("pagemap-shmem-%d.img", shmid))
}

func (d *Dir) readPagemap(name string) (*Pagemap, error) {
	ents, err := d.readEntries(KindPagemap, name, false, "")
	if err != nil || ents == nil {
		return nil, err
	}
	pm := &Pagemap{File: d.file(name), PagesID: ents[0].Message.(*pagemap.PagemapHead).GetPagesId()}
	for _, e := range ents[1:] {
		pm.Entries = append(pm.Entries, e.Message.(*pagemap.PagemapEntry))
	}
	return pm, nil
}

// Seccomp returns the seccomp filters of the image set, or nil.
func (d *Dir) Seccomp() (*seccomp.SeccompEntry, error) {
	return loadOptionalOne[*seccomp.SeccompEntry](d, KindSeccomp, "seccomp.img")
}

// Cgroup returns the entry of cgroup.img (the tree's cgroup sets and the
// cgroups the dump walked), or nil when the image set has none: CRIU
// writes it only when a task was in other cgroups than the dumping criu.
func (d *Dir) Cgroup() (*cgroup.CgroupEntry, error) {
	return loadOptionalOne[*cgroup.CgroupEntry](d, KindCgroup, "cgroup.img")
}

// Timens returns the clocks of timens-0.img (the dump's, for a tree in the
// dumping criu's time namespace), or nil.
func (d *Dir) Timens() (*timens.TimensEntry, error) {
	return d.TimensOf(0)
}

// TimensOf returns the clocks of timens-ID.img, or nil: CRIU writes
// timens-0.img for a tree in its own time namespace, and the image of the
// tree's namespace id for a tree with one of its own.
func (d *Dir) TimensOf(id uint32) (*timens.TimensEntry, error) {
	return loadOptionalOne[*timens.TimensEntry](d, KindTimeNS, fmt.Sprintf("timens-%d.img", id))
}

// MemfdInodes returns the memfd inodes of the image set (memfd.img).
func (d *Dir) MemfdInodes() ([]*memfd.MemfdInodeEntry, error) {
	return loadAll[*memfd.MemfdInodeEntry](d, KindMemfdInode, "memfd.img", false, "")
}

// PipeData is the content one pipe or FIFO held at dump time.
type PipeData struct {
	Entry *pipe_data.PipeDataEntry
	Data  []byte
}

// PipesData returns the pipe contents of pipes-data.img.
func (d *Dir) PipesData() ([]PipeData, error) { return d.pipeData(KindPipesData, "pipes-data.img") }

// FifoData returns the FIFO contents of fifo-data.img.
func (d *Dir) FifoData() ([]PipeData, error) { return d.pipeData(KindFifoData, "fifo-data.img") }

func (d *Dir) pipeData(k *Kind, name string) ([]PipeData, error) {
	ents, err := d.readEntries(k, name, false, "")
	if err != nil {
		return nil, err
	}
	out := make([]PipeData, len(ents))
	for i, e := range ents {
		out[i] = PipeData{Entry: e.Message.(*pipe_data.PipeDataEntry), Data: e.Payload}
	}
	return out, nil
}

// QueuedPacket is one packet that sat in a socket's receive queue.
type QueuedPacket struct {
	Entry *sk_packet.SkPacketEntry
	Data  []byte
}

// SkQueues returns the queued socket packets of sk-queues.img.
func (d *Dir) SkQueues() ([]QueuedPacket, error) {
	ents, err := d.readEntries(KindSkQueues, "sk-queues.img", false, "")
	if err != nil {
		return nil, err
	}
	out := make([]QueuedPacket, len(ents))
	for i, e := range ents {
		out[i] = QueuedPacket{Entry: e.Message.(*sk_packet.SkPacketEntry), Data: e.Payload}
	}
	return out, nil
}

// TCPStream is the state and queues of one TCP connection.
type TCPStream struct {
	Entry *tcp_stream.TcpStreamEntry
	Inq   []byte // receive queue
	Outq  []byte // send queue (sent and unsent)
}

// TCPStream returns tcp-stream-INO.img for the socket with inode ino (CRIU
// names the file in hex), or nil.
func (d *Dir) TCPStream(ino uint32) (*TCPStream, error) {
	name := fmt.Sprintf("tcp-stream-%x.img", ino)
	ents, err := d.readEntries(KindTCPStream, name, false, "")
	if err != nil || ents == nil {
		return nil, err
	}
	if len(ents) != 1 {
		return nil, &FormatError{File: d.file(name), Offset: 0, Entry: 1, Msg: fmt.Sprintf("want one entry, found %d", len(ents))}
	}
	t := ents[0].Message.(*tcp_stream.TcpStreamEntry)
	return &TCPStream{Entry: t, Inq: ents[0].Payload[:t.GetInqLen()], Outq: ents[0].Payload[t.GetInqLen():]}, nil
}

// Ghost is a file that was deleted but still open at dump time, with its
// content.
type Ghost struct {
	Entry *ghost_file.GhostFileEntry
	// Chunks lists the stored pieces: one piece at offset 0 in the older
	// layout, the non-hole pieces in the chunked one.
	Chunks []GhostChunk
}

// GhostChunk is one stored piece of a ghost file.
type GhostChunk struct {
	Off  uint64
	Data []byte
}

// GhostFile returns ghost-file-ID.img (CRIU names the file in hex), or nil.
func (d *Dir) GhostFile(id uint32) (*Ghost, error) {
	name := fmt.Sprintf("ghost-file-%x.img", id)
	ents, err := d.readEntries(KindGhostFile, name, false, "")
	if err != nil || ents == nil {
		return nil, err
	}
	g := &Ghost{Entry: ents[0].Message.(*ghost_file.GhostFileEntry)}
	if !g.Entry.GetChunks() {
		g.Chunks = []GhostChunk{{Off: 0, Data: ents[0].Payload}}
		return g, nil
	}
	for _, e := range ents[1:] {
		c := e.Message.(*ghost_file.GhostChunkEntry)
		g.Chunks = append(g.Chunks, GhostChunk{Off: c.GetOff(), Data: e.Payload})
	}
	return g, nil
}

// RemapFpath returns remap-fpath.img: how the files of files.img that had
// no name at the dump are found again (ghost files, CRIU's links, dead
// processes' /proc directories), in the order CRIU wrote them.
func (d *Dir) RemapFpath() ([]*remap_file_path.RemapFilePathEntry, error) {
	return loadAll[*remap_file_path.RemapFilePathEntry](d, KindRemapFpath, "remap-fpath.img", false, "")
}

// Deleted reports whether the file with files.img id had no name at the
// dump, so that /proc showed its path with " (deleted)": remap-fpath.img
// gives it a ghost file or a link CRIU made. A remap-fpath.img that can
// not be read counts as none (RemapFpath tells why).
func (d *Dir) Deleted(id uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.deleted == nil {
		d.deleted = map[uint32]bool{}
		ents, _ := d.RemapFpath()
		for _, e := range ents {
			if e.GetRemapType() != remap_file_path.RemapType_PROCFS {
				d.deleted[e.GetOrigId()] = true
			}
		}
	}
	return d.deleted[id]
}

// TTYInfo returns the terminals of the image set (tty-info.img).
func (d *Dir) TTYInfo() ([]*tty.TtyInfoEntry, error) {
	return loadAll[*tty.TtyInfoEntry](d, KindTTYInfo, "tty-info.img", false, "")
}

// TTYData returns the unread terminal input of the image set (tty-data.img).
func (d *Dir) TTYData() ([]*tty.TtyDataEntry, error) {
	return loadAll[*tty.TtyDataEntry](d, KindTTYData, "tty-data.img", false, "")
}

// Stats returns stats-NAME ("dump" or "restore"), or nil.
func (d *Dir) Stats(name string) (*stats.StatsEntry, error) {
	return loadOptionalOne[*stats.StatsEntry](d, KindStats, "stats-"+name)
}

// Parent returns the image set of the previous (pre-)dump that PE_PARENT
// pagemap entries refer to (the "parent" link of the directory), or nil when
// there is none.
func (d *Dir) Parent() (*Dir, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.parentSet {
		return d.parent, d.parentErr
	}
	d.parentSet = true
	p := d.file("parent")
	if _, err := os.Stat(p); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			d.parentErr = err
		}
		return nil, d.parentErr
	}
	d.parent, d.parentErr = openParent(p)
	return d.parent, d.parentErr
}

// openParent opens a pre-dump directory. Pre-dumps hold no pstree of their
// own in every CRIU version, so only the inventory is required.
func openParent(path string) (*Dir, error) {
	d := &Dir{Path: path}
	inv, err := loadOptionalOne[*inventory.InventoryEntry](d, KindInventory, "inventory.img")
	if err != nil {
		return nil, err
	}
	d.Inventory = inv
	d.Pstree, err = loadAll[*pstree.PstreeEntry](d, KindPstree, "pstree.img", false, "")
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Threads returns the tids of the task of pstree entry e, its leader
// first. The leader's tid is the pid, whatever the entry's first thread
// says: CRIU 4.2 reads it so (read_pstree_image) and writes for a zombie a
// first thread it never set (seen: 0 and 4279947712). An empty list is a
// zombie's too.
func Threads(e *pstree.PstreeEntry) []uint32 {
	tids := e.GetThreads()
	return append([]uint32{e.GetPid()}, tids[min(1, len(tids)):]...)
}
