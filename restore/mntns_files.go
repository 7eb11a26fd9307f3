package restore

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"

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
// placeholder. The ghost files are made first, on their mounts, and
// removed once every file is open, whether that worked or not.
func (r *Restore) openMntFiles(ns *MntNamespace, made *mounted) (err error) {
	pr := r.files
	if pr == nil || pr.mnt == nil {
		return nil
	}
	gs := &mntGhosts{ns: ns, made: made, paths: map[*Ghost]string{}}
	defer func() {
		if rerr := gs.remove(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	if err := gs.make(r.plan); err != nil {
		return err
	}
	for _, mf := range pr.mnt.files {
		f := mf.f
		m := ns.Files[f.ID]
		if m == nil {
			return fmt.Errorf("%s: file %d (%s): no mount planned for it", r.plan.holder(f), f.ID, f.Path)
		}
		var fd int
		if f.Remap != nil && f.Remap.Ghost != nil {
			fd, err = gs.open(f, mf.flags)
		} else {
			fd, err = openRegularAs(f, mf.flags)
		}
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

// mntGhosts are the ghost files (ghost.go) of a tree with a mount
// namespace of its own, made on their mounts (planMntGhosts) as CRIU's
// create_ghost makes them: through the mount's root, which a file of
// another bind of the same file system is linked from too; a read-only
// mount is made writable for the time.
type mntGhosts struct {
	ns       *MntNamespace
	made     *mounted
	paths    map[*Ghost]string // where each was made, under its mount's root
	order    []*Ghost
	writable []*Mount // made writable, read-only again at the end
}

// resolveOnMount keeps a path under a mount's root on that mount.
const resolveOnMount = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS

func (gs *mntGhosts) make(p *Plan) error {
	if p.remaps == nil {
		return nil
	}
	for _, g := range p.remaps.order {
		mg := gs.ns.Ghosts[g]
		if mg == nil {
			return fmt.Errorf("task %d: %s (%s): no mount planned for it", g.Owner.PID, ghostImage(g.ID), g.Path)
		}
		m := mg.Mount
		fail := func(err error) error {
			return fmt.Errorf("task %d: %s (%s) on %s (%s entry %d): %w", g.Owner.PID, ghostImage(g.ID), g.Path, m, gs.ns.File, m.Entry, err)
		}
		if err := gs.makeWritable(m); err != nil {
			return fail(err)
		}
		path, err := makeGhostAt(gs.made.at[m], mg.Path, g, resolveOnMount) // ghost.go
		if path != "" {
			gs.paths[g] = path
			gs.order = append(gs.order, g)
		}
		if err != nil {
			return fail(err)
		}
	}
	return nil
}

// makeWritable makes read-only mount m writable until remove, as CRIU's
// try_remount_writable (the plan refused a read-only file system).
func (gs *mntGhosts) makeWritable(m *Mount) error {
	if m.Flags&unix.MS_RDONLY == 0 || slices.Contains(gs.writable, m) {
		return nil
	}
	err := unix.MountSetattr(gs.made.at[m], "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY})
	if err != nil {
		return fmt.Errorf("make it writable for its ghost files: %w", os.NewSyscallError("mount_setattr", err))
	}
	gs.writable = append(gs.writable, m)
	return nil
}

// open opens file f of a ghost with flags as CRIU's open_path: the ghost
// linked at f's path (PATH.cr_link when that is taken), parents missing
// made for the time, opened in the namespace by that path and unlinked
// again, so that it is "PATH (deleted)" as at the dump.
func (gs *mntGhosts) open(f *File, flags int) (int, error) {
	g := f.Remap.Ghost
	mg := gs.ns.Ghosts[g]
	src, ok := gs.paths[g]
	if mg == nil || !ok {
		return -1, fmt.Errorf("%s was not made", ghostImage(g.ID))
	}
	m, dirfd := mg.Mount, gs.made.at[mg.Mount]
	link, at := mg.Links[f.ID], f.Path
	made, err := makeParentsAt(dirfd, path.Dir(link))
	defer removeParentsAt(dirfd, made)
	if err != nil {
		return -1, fmt.Errorf("the link to %s under %s: %w", src, m, err)
	}
	err = unix.Linkat(dirfd, src, dirfd, link, 0)
	if errors.Is(err, unix.EEXIST) {
		link, at = link+".cr_link", at+".cr_link"
		err = unix.Linkat(dirfd, src, dirfd, link, 0)
	}
	if err != nil {
		return -1, fmt.Errorf("under %s: %w", m, &os.LinkError{Op: "link", Old: src, New: link, Err: err})
	}
	fd, err := openRegularPath(f, at, flags) // prepare.go
	if uerr := unix.Unlinkat(dirfd, link, 0); uerr != nil && err == nil {
		unix.Close(fd)
		return -1, fmt.Errorf("under %s: %w", m, &os.PathError{Op: "unlink", Path: link, Err: uerr})
	}
	return fd, err
}

// remove removes the ghosts made and makes the mounts made writable
// read-only again.
func (gs *mntGhosts) remove() error {
	var errs []error
	for _, g := range gs.order {
		m := gs.ns.Ghosts[g].Mount
		if err := unix.Unlinkat(gs.made.at[m], gs.paths[g], 0); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("%s on %s: %w", ghostImage(g.ID), m, &os.PathError{Op: "unlink", Path: gs.paths[g], Err: err}))
		}
	}
	gs.order = nil
	for _, m := range gs.writable {
		if err := unix.MountSetattr(gs.made.at[m], "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			errs = append(errs, fmt.Errorf("%s: read-only again: %w", m, os.NewSyscallError("mount_setattr", err)))
		}
	}
	gs.writable = nil
	return errors.Join(errs...)
}

// makeParentsAt makes the missing directories of dir under dirfd,
// outermost first, and returns those it made.
func makeParentsAt(dirfd int, dir string) ([]string, error) {
	var missing []string
	for d := dir; d != "." && d != "/"; d = path.Dir(d) {
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, d, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil || !errors.Is(err, unix.ENOENT) {
			break
		}
		missing = append(missing, d)
	}
	var made []string
	for i := len(missing) - 1; i >= 0; i-- {
		if err := unix.Mkdirat(dirfd, missing[i], 0o755); err != nil {
			return made, &os.PathError{Op: "mkdir", Path: missing[i], Err: err}
		}
		made = append(made, missing[i])
	}
	return made, nil
}

// removeParentsAt removes what makeParentsAt made, innermost first.
func removeParentsAt(dirfd int, made []string) {
	for i := len(made) - 1; i >= 0; i-- {
		unix.Unlinkat(dirfd, made[i], unix.AT_REMOVEDIR)
	}
}
