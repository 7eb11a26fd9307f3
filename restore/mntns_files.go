package restore

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// mntFiles are the tree's regular files when it has a mount namespace of
// its own. CRIU opens a file through the mount its image names (mnt_id),
// in the restored namespace; crest opens the tree's files in the engine,
// before the root is born (prepareFiles), but these must be opened in the
// tree's namespace, which exists only from the root's birth on and has
// its mounts only once PREPARE_NAMESPACES made them: as for the sockets
// of a net namespace (netSockets), prepareFiles keeps an fd number for
// each (a placeholder, /dev/null), which the plan hands the tasks, and the
// thread that made the mounts opens each file by its path there, checks
// it is on the mount its image names, and puts it onto its number, before
// any task takes one.
type mntFiles struct {
	files []mntFile
}

type mntFile struct {
	key   string // its key in prepared.index
	f     *File
	flags int
}

// reserve returns the placeholder of file f, opened later with flags.
func (s *mntFiles) reserve(f *File, key string, flags int) (int, error) {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/dev/null", Err: err}
	}
	s.files = append(s.files, mntFile{key: key, f: f, flags: flags})
	return fd, nil
}

// openMntFiles opens the reserved files in the calling thread's mount
// namespace (the tree's, made by makeMounts) and puts each onto its
// placeholder.
func (r *Restore) openMntFiles(ns *MntNamespace, made *mounted) error {
	pr := r.files
	if pr == nil || pr.mnt == nil {
		return nil
	}
	for _, mf := range pr.mnt.files {
		f := mf.f
		m := ns.Files[f.ID]
		if m == nil {
			return fmt.Errorf("%s: file %d (%s): no mount planned for it", r.plan.holder(f), f.ID, f.Path)
		}
		fd, err := openRegularAs(f, mf.flags)
		if err != nil {
			return fmt.Errorf("%s: file %d on %s: %w", r.plan.holder(f), f.ID, m, err)
		}
		var stx unix.Statx_t
		if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil {
			unix.Close(fd)
			return fmt.Errorf("file %d (%s): %w", f.ID, f.Path, os.NewSyscallError("statx", err))
		}
		if want := made.ids[m.ID]; stx.Mask&unix.STATX_MNT_ID == 0 || stx.Mnt_id != want {
			unix.Close(fd)
			return fmt.Errorf("%s: file %d (%s) opened on mount %d, not on %s (made as %d): something covers its path",
				r.plan.holder(f), f.ID, f.Path, stx.Mnt_id, m, want)
		}
		err = unix.Dup3(fd, pr.fds[pr.index[mf.key]], unix.O_CLOEXEC)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("file %d (%s): %w", f.ID, f.Path, os.NewSyscallError("dup3", err))
		}
	}
	return nil
}
