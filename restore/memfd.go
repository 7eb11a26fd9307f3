package restore

import (
	"fmt"
	"os"
	"sort"
	"syscall"
	"unsafe"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"

	"github.com/crest-restore/crest/images"
)

// Memfds and shared memory. CRIU 4.2 dumps memfds, and MAP_SHARED|
// MAP_ANONYMOUS memory too (as a memfd named "/dev/zero"), as one
// memfd.img inode each, with the content in pagemap-shmem-SHMID.img and a
// pages file. The engine makes each inode once (memfd_create, size,
// content, mode, owner, then seals), so that every open file and every
// MAP_SHARED mapping of it in every task is the same object again: writes
// of one task are seen by the others. Open files are reopened from it
// through /proc/self/fd (each with its flags and offset); mappings map
// the memfd itself.

// Memfd is one memfd inode of the image set, or (Anon) one shared
// anonymous object dumped as VMA_ANON_SHARED: the engine maps such an
// object MAP_SHARED|MAP_ANONYMOUS itself, fills it, and hands its file
// (/proc/self/map_files) to the tasks, which shows as "/dev/zero
// (deleted)" as the original did.
type Memfd struct {
	Anon       bool
	InodeID    uint32
	Name       string // as given to memfd_create
	Size       uint64
	Seals      uint32 // F_SEAL_*
	Mode       uint32 // st_mode
	UID, GID   uint32
	ShmID      uint32
	Runs       []images.PageRun // its content; Vaddr is the offset in the memfd
	Owner      *Task            // the first task using it: the engine prepares it for this one
	pagemapImg string
}

// memfdFile plans the MEMFD entry id of files.img.
func (p *Plan) memfdFile(t *Task, id uint32, me *memfd.MemfdFileEntry) (*File, error) {
	if me == nil {
		return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: MEMFD without memfd entry", id)}
	}
	m, err := p.memfd(t, me.GetInodeId())
	if err != nil {
		return nil, err
	}
	// what readlink of its fd shows
	f := &File{ID: id, Kind: FileMemfd, Path: "/memfd:" + m.Name + " (deleted)", Flags: me.GetFlags(), Pos: me.GetPos(), Memfd: m}
	p.Files[id] = f
	return f, nil
}

// memfd plans memfd inode id, with its content.
func (p *Plan) memfd(t *Task, id uint32) (*Memfd, error) {
	if m := p.Memfds[id]; m != nil {
		return m, nil
	}
	if p.inodes == nil {
		ents, err := p.Dir.MemfdInodes()
		if err != nil {
			return nil, &PlanError{PID: t.PID, File: "memfd.img", Err: err}
		}
		p.inodes = map[uint32]*memfd.MemfdInodeEntry{}
		for _, e := range ents {
			p.inodes[uint32(e.GetInodeId())] = e
		}
	}
	ie := p.inodes[id]
	if ie == nil {
		return nil, &PlanError{PID: t.PID, File: "memfd.img", Msg: fmt.Sprintf("no memfd inode %d", id)}
	}
	m := &Memfd{InodeID: id, Name: ie.GetName(), Size: ie.GetSize(), Seals: ie.GetSeals(), Mode: ie.GetMode(),
		UID: ie.GetUid(), GID: ie.GetGid(), ShmID: ie.GetShmid(), Owner: t}
	if ie.GetHugetlbFlag() != 0 {
		return nil, &PlanError{PID: t.PID, File: "memfd.img", Msg: fmt.Sprintf("memfd %q (inode %d): hugetlb memfds are not supported yet", m.Name, id)}
	}
	if err := p.shmemContent(t, m, fmt.Sprintf("memfd %q (inode %d, %d bytes)", m.Name, id, m.Size)); err != nil {
		return nil, err
	}
	p.Memfds[id] = m
	return m, nil
}

// anonShmem plans the shared anonymous object shmid, which a mapping
// needs at least size bytes of.
func (p *Plan) anonShmem(t *Task, shmid uint64, size uint64) (*Memfd, error) {
	if m := p.Shmems[shmid]; m != nil {
		// every mapping of it says how far it reaches
		if size > m.Size {
			m.Size = size
		}
		return m, nil
	}
	if shmid > 1<<32-1 {
		return nil, &PlanError{PID: t.PID, File: fmt.Sprintf("mm-%d.img", t.PID), Msg: fmt.Sprintf("shared memory id %d", shmid)}
	}
	m := &Memfd{Anon: true, Name: "/dev/zero", ShmID: uint32(shmid), Size: size, Owner: t}
	if err := p.shmemContent(t, m, fmt.Sprintf("shared memory %d (%d bytes)", shmid, size)); err != nil {
		return nil, err
	}
	p.Shmems[shmid] = m
	return m, nil
}

// shmemContent plans the content of a memfd or shared anonymous object,
// from pagemap-shmem-SHMID.img.
func (p *Plan) shmemContent(t *Task, m *Memfd, what string) error {
	m.pagemapImg = fmt.Sprintf("pagemap-shmem-%d.img", m.ShmID)
	runs, err := p.Dir.ShmemPageRuns(uint64(m.ShmID))
	if err != nil {
		return &PlanError{PID: t.PID, File: m.pagemapImg, Err: err}
	}
	if runs == nil && m.Size > 0 {
		return &PlanError{PID: t.PID, File: m.pagemapImg, Msg: what + ": the image is missing: the content of this shared memory is not in the images"}
	}
	for _, r := range runs {
		if r.Lazy() {
			return &PlanError{PID: t.PID, File: m.pagemapImg, Msg: fmt.Sprintf("%s: run at %#x: lazy pages are not supported", what, r.Vaddr)}
		}
		// an anonymous object is as large as its mappings reach,
		// which later mappings may extend: checked when it is made
		if !m.Anon && r.End() > pageAlign(m.Size) {
			return &PlanError{PID: t.PID, File: m.pagemapImg, Msg: fmt.Sprintf("%s: run %#x-%#x is past its end", what, r.Vaddr, r.End())}
		}
	}
	m.Runs = runs
	return nil
}

func memfdKey(m *Memfd) string {
	if m.Anon {
		return fmt.Sprintf("shmem:%d", m.ShmID)
	}
	return fmt.Sprintf("memfd:%d", m.InodeID)
}

// memfd_create flags.
const mfdAllowSealing = 0x2

// prepareMemfds makes every memfd of p, in the order of the tasks that
// own them.
func (pr *prepared) prepareMemfds(p *Plan) error {
	ids := make([]uint32, 0, len(p.Memfds))
	for id := range p.Memfds {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	shmids := make([]uint64, 0, len(p.Shmems))
	for id := range p.Shmems {
		shmids = append(shmids, id)
	}
	sort.Slice(shmids, func(i, j int) bool { return shmids[i] < shmids[j] })
	for _, t := range p.Tasks {
		begin := boottime()
		made := 0
		for _, id := range ids {
			if m := p.Memfds[id]; m.Owner == t {
				if err := pr.makeMemfd(m); err != nil {
					return fmt.Errorf("task %d: memfd %q (inode %d): %w", t.PID, m.Name, m.InodeID, err)
				}
				made++
			}
		}
		for _, id := range shmids {
			if m := p.Shmems[id]; m.Owner == t {
				if err := pr.makeAnonShmem(m); err != nil {
					return fmt.Errorf("task %d: shared memory %d: %w", t.PID, id, err)
				}
				made++
			}
		}
		if made > 0 {
			pr.step(t, "prepare memfds", begin)
		}
	}
	return nil
}

func (pr *prepared) makeMemfd(m *Memfd) error {
	fd, err := memfdCreateFD(m.Name, mfdCloexec|mfdAllowSealing)
	if err != nil {
		return err
	}
	pr.add(memfdKey(m), fd)
	if err := syscall.Ftruncate(fd, int64(m.Size)); err != nil {
		return os.NewSyscallError("ftruncate", err)
	}
	if err := pr.fillMemfd(fd, m); err != nil {
		return err
	}
	if m.Mode != 0 {
		if err := syscall.Fchmod(fd, m.Mode&0o7777); err != nil {
			return os.NewSyscallError("fchmod", err)
		}
	}
	if err := syscall.Fchown(fd, int(m.UID), int(m.GID)); err != nil {
		return os.NewSyscallError("fchown", err)
	}
	// seals last: F_SEAL_WRITE would stop the filling, F_SEAL_SEAL the rest
	if m.Seals != 0 {
		if _, err := fcntl(fd, fAddSeals, int(m.Seals)); err != nil {
			return fmt.Errorf("seals %#x: %w", m.Seals, err)
		}
	}
	return nil
}

// makeAnonShmem makes a shared anonymous object as the kernel makes one
// for mmap(MAP_SHARED|MAP_ANONYMOUS), fills it and keeps its file.
func (pr *prepared) makeAnonShmem(m *Memfd) error {
	size := int(pageAlign(m.Size))
	mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_ANON)
	if err != nil {
		return os.NewSyscallError("mmap", err)
	}
	defer syscall.Munmap(mem)
	start := uintptr(unsafe.Pointer(&mem[0]))
	path := fmt.Sprintf("/proc/self/map_files/%x-%x", start, start+uintptr(size))
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	pr.add(memfdKey(m), fd)
	return pr.fillMemfd(fd, m)
}

// fillMemfd copies the memfd's pages from the pages files into it with
// sendfile: the kernel copies from the page cache into the memfd's pages
// at once, without faulting a mapping in page by page (copy_file_range
// would, but refuses to cross filesystems). A memfd's last page is copied
// up to its size, not beyond: a write past the end would make the memfd
// longer than it was (the dump has the whole page, zeros after the end).
// A shared anonymous object is as large as its pages.
func (pr *prepared) fillMemfd(fd int, m *Memfd) error {
	end := m.Size
	if m.Anon {
		end = pageAlign(m.Size)
	}
	for _, r := range m.Runs {
		if r.End() > pageAlign(m.Size) {
			return fmt.Errorf("%s: run %#x-%#x is past the end of its %d bytes", m.pagemapImg, r.Vaddr, r.End(), m.Size)
		}
		if err := pr.openPagesFile(r.Pages); err != nil {
			return err
		}
		if r.Vaddr >= end {
			continue
		}
		src := pr.fds[pr.index["pages:"+r.Pages]]
		// sendfile writes at the memfd's offset: its own, no task's
		if _, err := syscall.Seek(fd, int64(r.Vaddr), 0); err != nil {
			return os.NewSyscallError("lseek", err)
		}
		in := r.Offset
		for left := int64(min(r.End(), end) - r.Vaddr); left > 0; {
			n, err := syscall.Sendfile(fd, src, &in, int(min(left, 1<<30)))
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				return &os.PathError{Op: "sendfile", Path: r.Pages, Err: err}
			}
			if n == 0 {
				return fmt.Errorf("%s: %d bytes short at offset %d (for %s at %#x)", r.Pages, left, in, m.pagemapImg, r.Vaddr)
			}
			left -= int64(n)
		}
	}
	return nil
}

// openMemfdFile opens the open file f of a memfd: its own description,
// with its flags and offset.
func (pr *prepared) openMemfdFile(f *File) (int, error) {
	src := pr.fds[pr.index[memfdKey(f.Memfd)]]
	fd, err := syscall.Open(fmt.Sprintf("/proc/self/fd/%d", src), int(f.Flags)&^reopenMask|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "reopen", Path: f.Path, Err: err}
	}
	if f.Pos != 0 {
		if _, err := syscall.Seek(fd, int64(f.Pos), 0); err != nil {
			syscall.Close(fd)
			return -1, &os.PathError{Op: "lseek", Path: f.Path, Err: err}
		}
	}
	return fd, nil
}
