package dump

import (
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fifo"
	"google.golang.org/protobuf/proto"
)

// Named pipes (FIFOs), as CRIU 4.2 dumps them (criu/fifo.c): a FIFO
// entry {id, pipe_id: the inode, regf_id} and, written before it, a REG
// entry regf_id with the FIFO's path, flags and mode, which the restore
// opens; what sat in the FIFO is in fifo-data.img, read without taking it
// out, as a pipe's (pipeData). A FIFO removed since it was opened has no
// path to open again: refused.

// fifoEntry describes fd of t, FIFO ino at name (link is its /proc
// link), as file id.
func (ft *fileTable) fifoEntry(t *task, id uint32, fd int, link, name string, ino uint64, flags uint32, pos uint64) (*fdinfo.FileEntry, string, error) {
	if strings.HasSuffix(name, " (deleted)") {
		return nil, "a FIFO removed since it was opened (no path to open it again)", nil
	}
	regID := ft.next()
	re, err := regEntry(regID, link, name, flags, pos)
	if err != nil {
		return nil, "", err
	}
	if err := ft.pipeData(t, fd, link, ino, true); err != nil {
		return nil, "", err
	}
	ft.entries = append(ft.entries, re)
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_FIFO.Enum(), Id: proto.Uint32(id),
		Fifo: &fifo.FifoEntry{Id: proto.Uint32(id), PipeId: proto.Uint32(uint32(ino)), RegfId: proto.Uint32(regID)}}, "", nil
}
