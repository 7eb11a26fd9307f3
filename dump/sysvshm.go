package dump

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
)

// A task's mapping of a SysV shared memory segment (shmat), as CRIU 4.2
// writes it (criu/proc_parse.c): the kernel shows it as the file
// "/SYSV<key>" of its internal shm mount, the inode being the segment's
// id. The entry is VMA_AREA_REGULAR|VMA_ANON_SHARED|VMA_AREA_SYSVIPC with
// MAP_SHARED|MAP_ANONYMOUS, shmid the segment's id, pgoff the offset in
// the segment, and fdflags the open mode of the attachment's file
// (O_RDONLY for SHM_RDONLY), read from the mode of its map_files link:
// the restore attaches read-write or read-only from it. The contents are
// the segment's, dumped once with the IPC namespace (ipcns-shm and
// pagemap-shmem), never into the task's pages. As CRIU
// (check_sysvipc_map_dump), only a tree with an IPC namespace of its own
// may have one: the segment is dumped and restored with that namespace.

// isSysVShm reports whether m maps a SysV shared memory segment.
func isSysVShm(m *mapping) bool {
	return strings.HasPrefix(m.name, "/SYSV") && m.perms[3] == 's'
}

// sysvShmVMA fills e, the entry of t's mapping m of a SysV segment, and
// returns its status bits.
func (d *dumper) sysvShmVMA(t *task, m *mapping, e *vma.VmaEntry) (images.VMAStatus, error) {
	unsupported := func(why string) error {
		return &UnsupportedError{Task: int(t.nsPid), Resource: fmt.Sprintf("mapping %x-%x", m.start, m.end), What: m.name, Why: why}
	}
	if !d.ownIPC {
		return 0, unsupported("SysV shared memory attached in an IPC namespace that is not the tree's own: " +
			"its segments are dumped only with the tree's IPC namespace (as CRIU does)")
	}
	key := strings.TrimSuffix(strings.TrimPrefix(m.name, "/SYSV"), " (deleted)")
	if _, err := strconv.ParseUint(key, 16, 32); err != nil || len(key) != 8 {
		return 0, unsupported("not a SysV segment's name")
	}
	fdflags, err := mapFDFlags(t, m)
	if err != nil {
		return 0, err
	}
	e.Shmid = proto.Uint64(m.ino)
	e.Pgoff = proto.Uint64(m.pgoff)
	e.Fdflags = proto.Uint32(fdflags)
	return images.VMAAnonShared | images.VMAAreaSysVIPC, nil
}
