package dump

import "github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"

// inetSocketEntry describes the inet socket at fd of t, inode ino. (Stub:
// to be written.)
func (ft *fileTable) inetSocketEntry(t *task, id uint32, fd int, ino uint64, flags uint32) (*fdinfo.FileEntry, string, error) {
	return nil, "inet sockets are not supported yet", nil
}
