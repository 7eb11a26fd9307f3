package dump

import "github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"

// unixSocketEntry describes the unix socket at fd of t, inode ino. (Stub:
// to be written.)
func (ft *fileTable) unixSocketEntry(t *task, id uint32, fd int, ino uint64, flags uint32) (*fdinfo.FileEntry, string, error) {
	return nil, "unix sockets are not supported yet", nil
}
