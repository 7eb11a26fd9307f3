package dump

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	remap_file_path "github.com/checkpoint-restore/go-criu/v8/crit/images/remap-file-path"
	criu_time "github.com/checkpoint-restore/go-criu/v8/crit/images/time"

	"github.com/crest-restore/crest/images"
)

// Ghost files. A regular file deleted while still open or mapped (a POSIX
// semaphore or Python's multiprocessing lock in /dev/shm, tmpfile(), a
// scratch file unlinked at once, an O_TMPFILE file that never had a name)
// is dumped as CRIU 4.2 dumps it (criu/files-reg.c, dump_ghost_remap):
// files.img keeps its REG entry with the path it had (" (deleted)" cut
// off), remap-fpath.img maps that file id to a ghost id, and
// ghost-file-ID.img holds the inode's owner, mode, times, device and
// inode number and its contents, read through the /proc link of the fd
// or mapping. Ghost ids count from 1 in the order the inodes are met; two
// files of one inode (an fd and a mapping, two opens) share one ghost,
// each with its remap entry.

// DefaultGhostLimit is CRIU's --ghost-limit default: a deleted file with
// more than this on disk (its blocks, holes not counted) is refused.
const DefaultGhostLimit = 1 << 20

// ghostChunksFrom is the size from which CRIU writes a ghost's contents as
// chunks between holes (GHOST_CHUNKS_THRESH); below it, as one payload.
const ghostChunksFrom = 3 * 4096

// ghostTable collects the ghosts of a dump.
type ghostTable struct {
	dir     string // the image directory being written
	limit   int64  // 0: DefaultGhostLimit
	last    uint32
	byInode map[devIno]uint32
	remaps  []images.Entry // remap-fpath.img
	// mounts are the mount ids of the remapped files, by file id: the
	// mount each was open or mapped on, which a tree's own mount
	// namespace names in files.img (mntFileMounts, mntns.go)
	mounts map[uint32]uint64
	user   *userNS // the tree's own, nil for none: the owners as it sees them (userns.go)
}

// ghostName returns the name files.img keeps for the regular file about
// to get id (its /proc link at link, which reads name, its stat st): name
// itself for a file that has it, or, for a file deleted while open or
// mapped, its path without " (deleted)", once its ghost is written. what
// names the fd or mapping for a refusal.
func (ft *fileTable) ghostName(t *task, what string, id uint32, link, name string, st *unix.Stat_t) (string, error) {
	path, deleted := strings.CutSuffix(name, " (deleted)")
	if st.Nlink != 0 {
		if !deleted {
			return name, nil
		}
		// a file that is really named so
		var now unix.Stat_t
		if unix.Stat(name, &now) == nil && now.Dev == st.Dev && now.Ino == st.Ino {
			return name, nil
		}
	}
	unsupported := func(why string) error {
		return &UnsupportedError{Task: int(t.nsPid), Resource: what, What: name, Why: why}
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return "", unsupported(fmt.Sprintf("a deleted file of mode %#o: only deleted regular files are dumped", st.Mode))
	case st.Nlink != 0:
		return "", unsupported(fmt.Sprintf("deleted, but still linked elsewhere (%d links): CRIU dumps it only with --link-remap (a link it makes), which crest does not do", st.Nlink))
	case !strings.HasPrefix(path, "/"):
		return "", unsupported("a deleted file without a path")
	}
	gt := &ft.ghosts
	limit := gt.limit
	if limit == 0 {
		limit = DefaultGhostLimit
	}
	if disk := st.Blocks * 512; disk > limit {
		return "", unsupported(fmt.Sprintf("deleted, and its %d bytes on disk are above the ghost limit of %d bytes (criu dump --ghost-limit)", disk, limit))
	}
	key := devIno{st.Dev, st.Ino}
	gid, ok := gt.byInode[key]
	if !ok {
		gt.last++
		gid = gt.last
		if err := gt.write(gid, link, st); err != nil {
			return "", fmt.Errorf("%s: %s (%s): %w", t, what, name, err)
		}
		if gt.byInode == nil {
			gt.byInode = map[devIno]uint32{}
		}
		gt.byInode[key] = gid
	}
	// the mount it is on, through the /proc link (CRIU: fdinfo's mnt_id)
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, link, 0, unix.STATX_MNT_ID, &stx); err != nil {
		return "", fmt.Errorf("%s: %s (%s): %w", t, what, name, &os.PathError{Op: "statx", Path: link, Err: err})
	}
	if gt.mounts == nil {
		gt.mounts = map[uint32]uint64{}
	}
	gt.mounts[id] = stx.Mnt_id
	gt.remaps = append(gt.remaps, images.Entry{Message: &remap_file_path.RemapFilePathEntry{
		OrigId: proto.Uint32(id), RemapId: proto.Uint32(gid), RemapType: remap_file_path.RemapType_GHOST.Enum()}})
	return path, nil
}

// write writes ghost-file-ID.img of the file at link (st its stat, taken
// before reading: the times are those of the dump).
func (gt *ghostTable) write(id uint32, link string, st *unix.Stat_t) error {
	e := &ghost_file.GhostFileEntry{
		Uid: proto.Uint32(gt.user.ownerUID(st.Uid)), Gid: proto.Uint32(gt.user.ownerGID(st.Gid)), Mode: proto.Uint32(st.Mode),
		// CRIU's kernel encoding of the device (MKKDEV)
		Dev: proto.Uint32(unix.Major(st.Dev)<<20 | unix.Minor(st.Dev)), Ino: proto.Uint64(st.Ino),
		Atim: &criu_time.Timeval{TvSec: proto.Uint64(uint64(st.Atim.Sec)), TvUsec: proto.Uint64(uint64(st.Atim.Nsec / 1000))},
		Mtim: &criu_time.Timeval{TvSec: proto.Uint64(uint64(st.Mtim.Sec)), TvUsec: proto.Uint64(uint64(st.Mtim.Nsec / 1000))},
	}
	// A reader of our own (the task's fd may be write-only), which does
	// not touch the file's access time.
	fd, err := unix.Open(link, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Open(link, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: link, Err: err}
	}
	defer unix.Close(fd)
	var ents []images.Entry
	if st.Size < ghostChunksFrom {
		data, err := readAt(fd, link, 0, st.Size, true)
		if err != nil {
			return err
		}
		ents = []images.Entry{{Message: e, Payload: data}}
	} else {
		e.Chunks, e.Size = proto.Bool(true), proto.Uint64(uint64(st.Size))
		ents = []images.Entry{{Message: e}}
		chunks, err := dataChunks(fd, link, st.Size)
		if err != nil {
			return err
		}
		ents = append(ents, chunks...)
	}
	name := fmt.Sprintf("ghost-file-%x.img", id)
	return images.WriteFile(filepath.Join(gt.dir, name), &images.Image{Kind: images.KindGhostFile, Entries: ents})
}

// dataChunks reads the data of a file of size bytes between its holes, as
// CRIU's copy_file_to_chunks: SEEK_DATA and SEEK_HOLE, or the whole file
// as one chunk where the file system knows no holes.
func dataChunks(fd int, link string, size int64) ([]images.Entry, error) {
	var ents []images.Entry
	for hole := int64(0); hole < size; {
		data, err := unix.Seek(fd, hole, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			return ents, nil // no data after hole
		case err != nil && hole == 0:
			data, hole = 0, size
		case err != nil:
			return nil, &os.PathError{Op: "lseek(SEEK_DATA)", Path: link, Err: err}
		default:
			if hole, err = unix.Seek(fd, data, unix.SEEK_HOLE); err != nil {
				return nil, &os.PathError{Op: "lseek(SEEK_HOLE)", Path: link, Err: err}
			}
		}
		b, err := readAt(fd, link, data, hole-data, false)
		if err != nil {
			return nil, err
		}
		ents = append(ents, images.Entry{Message: &ghost_file.GhostChunkEntry{Len: proto.Uint64(uint64(len(b))), Off: proto.Uint64(uint64(data))}, Payload: b})
	}
	return ents, nil
}

// readAt reads n bytes at off; short is allowed to end early at the end of
// the file (the size was read before).
func readAt(fd int, link string, off, n int64, short bool) ([]byte, error) {
	b := make([]byte, n)
	got := 0
	for got < len(b) {
		m, err := unix.Pread(fd, b[got:], off+int64(got))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: link, Err: err}
		}
		if m == 0 {
			if short {
				return b[:got], nil
			}
			return nil, &os.PathError{Op: "read", Path: link, Err: io.ErrUnexpectedEOF}
		}
		got += m
	}
	return b, nil
}

// writeRemaps writes remap-fpath.img, when a file was remapped.
func (gt *ghostTable) writeRemaps(d *dumper) error {
	if len(gt.remaps) == 0 {
		return nil
	}
	return d.write("remap-fpath.img", images.KindRemapFpath, gt.remaps...)
}
