package dump

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"

	"github.com/crest-restore/crest/images"
)

// Memfds, and MAP_SHARED|MAP_ANONYMOUS memory, which CRIU 4.2 dumps the
// memfd way: a MEMFD file entry per open file, a memfd.img inode entry per
// memfd (shmid = its inode number), and its contents in
// pagemap-shmem-SHMID.img, addressed by offset in the memfd.

// memfdInode is one memfd of the tree.
type memfdInode struct {
	entry *memfd.MemfdInodeEntry
	path  string // a /proc path that opens it while the tree is frozen
}

// memfdName turns a /proc link or maps name into the memfd's own name:
// "/memfd:crest-memfd (deleted)" -> "crest-memfd". Shared anonymous
// memory shows as "/dev/zero (deleted)" and keeps the name "/dev/zero",
// as in CRIU's images.
func memfdName(link string) string {
	n := strings.TrimSuffix(link, " (deleted)")
	return strings.TrimPrefix(n, "/memfd:")
}

// isMemfd reports whether a link or maps name is a memfd or shared
// anonymous memory.
func isMemfd(name string) bool {
	return strings.HasPrefix(name, "/memfd:") || name == "/dev/zero (deleted)"
}

// memfdInodeID returns the inode_id of the memfd behind path (stat st).
func (ft *fileTable) memfdInodeID(path, name string, st *unix.Stat_t) (uint32, error) {
	if in, ok := ft.memfds[st.Ino]; ok {
		return uint32(in.entry.GetInodeId()), nil
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	unix.Close(fd)
	if err != nil {
		return 0, os.NewSyscallError("fcntl(F_GET_SEALS)", err)
	}
	id := uint32(len(ft.memfdOrder) + 1)
	in := &memfdInode{path: path, entry: &memfd.MemfdInodeEntry{
		Name: proto.String(memfdName(name)), Uid: proto.Uint32(st.Uid), Gid: proto.Uint32(st.Gid),
		Size: proto.Uint64(uint64(st.Size)), Shmid: proto.Uint32(uint32(st.Ino)), Seals: proto.Uint32(uint32(seals)),
		InodeId: proto.Uint64(uint64(id)), Mode: proto.Uint32(st.Mode),
	}}
	ft.memfds[st.Ino] = in
	ft.memfdOrder = append(ft.memfdOrder, in)
	return id, nil
}

// memfdEntry makes the MEMFD file entry of an open memfd.
func (ft *fileTable) memfdEntry(id uint32, path, name string, flags uint32, pos uint64) (*fdinfo.FileEntry, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	ino, err := ft.memfdInodeID(path, name, &st)
	if err != nil {
		return nil, err
	}
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_MEMFD.Enum(), Id: proto.Uint32(id), Memfd: &memfd.MemfdFileEntry{
		Id: proto.Uint32(id), Flags: proto.Uint32(flags), Pos: proto.Uint64(pos), Fown: zeroFown(), InodeId: proto.Uint32(ino)}}, nil
}

// mappedMemfd returns the file id of the memfd behind a shared mapping
// (path: its map_files link), one per memfd across the tree.
func (ft *fileTable) mappedMemfd(t *task, path, name string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("%s: %w", t, &os.PathError{Op: "stat", Path: path, Err: err})
	}
	key := devIno{st.Dev, st.Ino}
	if id, ok := ft.mapped[key]; ok {
		return id, nil
	}
	id := ft.next()
	e, err := ft.memfdEntry(id, path, name, unix.O_RDONLY, 0)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", t, err)
	}
	ft.entries = append(ft.entries, e)
	ft.mapped[key] = id
	return id, nil
}

// dumpMemfds writes memfd.img and each memfd's pages: the data ranges
// (SEEK_DATA/SEEK_HOLE) of the memfd, which holds no other pages.
func (d *dumper) dumpMemfds() error {
	if len(d.files.memfdOrder) == 0 {
		return nil
	}
	var inodes []images.Entry
	for _, in := range d.files.memfdOrder {
		inodes = append(inodes, images.Entry{Message: in.entry})
		d.pages++
		if err := d.dumpMemfdPages(in, d.pages); err != nil {
			return fmt.Errorf("memfd %q (inode %d): %w", in.entry.GetName(), in.entry.GetShmid(), err)
		}
	}
	return d.write("memfd.img", images.KindMemfdInode, inodes...)
}

func (d *dumper) dumpMemfdPages(in *memfdInode, pagesID uint32) error {
	f, err := os.Open(in.path)
	if err != nil {
		return err
	}
	defer f.Close()
	return d.dumpShmemPages(f, int64(in.entry.GetSize()), pagesID, uint64(in.entry.GetShmid()))
}

// dumpShmemPages writes the content of f, a shared memory file of size
// bytes (a memfd, a SysV segment), into pages-PAGESID.img and
// pagemap-shmem-SHMID.img, as CRIU does: whole pages, but none for the
// holes of the file (SEEK_DATA, SEEK_HOLE), so that no hole gets a page.
func (d *dumper) dumpShmemPages(f *os.File, size int64, pagesID uint32, shmid uint64) error {
	pf, err := os.OpenFile(d.path(fmt.Sprintf("pages-%d.img", pagesID)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer pf.Close()
	w := bufio.NewWriterSize(pf, 1<<20)
	entries := []images.Entry{{Message: &pagemap.PagemapHead{PagesId: proto.Uint32(pagesID)}}}
	span := (size + images.PageSize - 1) &^ (images.PageSize - 1)
	fd := int(f.Fd())
	for off := int64(0); off < span; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			break
		}
		if err != nil {
			return os.NewSyscallError("lseek(SEEK_DATA)", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return os.NewSyscallError("lseek(SEEK_HOLE)", err)
		}
		start := data &^ (images.PageSize - 1)
		end := min((hole+images.PageSize-1)&^(images.PageSize-1), span)
		if end > start {
			buf := make([]byte, end-start)
			// past the size the last page reads short: zeros
			if _, err := f.ReadAt(buf, start); err != nil && err != io.EOF {
				return err
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
			n := uint64(end-start) / images.PageSize
			entries = append(entries, images.Entry{Message: &pagemap.PagemapEntry{Vaddr: proto.Uint64(uint64(start)),
				CompatNrPages: proto.Uint32(0), NrPages: proto.Uint64(n), Flags: proto.Uint32(images.PEPresent)}})
			d.stats.shWritten += n
		}
		off = max(hole, end)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := pf.Close(); err != nil {
		return err
	}
	return d.write(fmt.Sprintf("pagemap-shmem-%d.img", shmid), images.KindPagemap, entries...)
}
