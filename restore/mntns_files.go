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
//
// FIFOs are opened so too, by their path in the namespace (CRIU's
// do_open_fifo opens them from the namespace's root): the engine's own
// end first, read-write, refilled with the FIFO's data (pipes.go), then
// the tasks' files with their flags. Unix sockets whose set has a path
// name (bound to one, or accepted from a listener bound to one) are made
// there all at once, as the engine makes them elsewhere (sockunix.go): a
// socket bound to a path gets its file at that path in the tree's
// namespace, with its mode and owner, and a socket connecting to a path
// reaches the one bound there, as CRIU's bind_unix_sk and connect do
// from the root of the namespace of the socket file's mount (mnt_id).
// When the tree has a net namespace of its own too, the thread joins it
// while it makes them (inRootNet): a unix socket is of the net namespace
// of the thread that makes it, as it is of the restored task's in CRIU.
type mntFiles struct {
	files []mntFile
}

// mntFile is one fd the namespace's thread puts onto its placeholder:
// file f opened with flags; or the engine's end of FIFO fifo; or every
// unix socket of unix, or every end of pty pair pty (each onto its own
// placeholder).
type mntFile struct {
	key   string // its key in prepared.index
	f     *File
	flags int
	fifo  *Pipe
	unix  *unixSockets
	pty   *PTYPair
}

func placeholder() (int, error) {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/dev/null", Err: err}
	}
	return fd, nil
}

// reserve returns the placeholder of file f, opened later with flags.
func (s *mntFiles) reserve(f *File, key string, flags int) (int, error) {
	fd, err := placeholder()
	if err == nil {
		s.files = append(s.files, mntFile{key: key, f: f, flags: flags})
	}
	return fd, err
}

// reserveFifo returns the placeholder of the engine's end of FIFO pp.
func (s *mntFiles) reserveFifo(pp *Pipe, key string) (int, error) {
	fd, err := placeholder()
	if err == nil {
		s.files = append(s.files, mntFile{key: key, fifo: pp})
	}
	return fd, err
}

// reserveUnix returns the placeholder of unix socket f, and keeps one in
// pr for every other socket of its set, made with it.
func (s *mntFiles) reserveUnix(pr *prepared, f *File) (int, error) {
	set := f.Unix.set
	for _, g := range set.order {
		if g == f {
			continue
		}
		fd, err := placeholder()
		if err != nil {
			return -1, err
		}
		pr.add(fileKey(g), fd)
	}
	fd, err := placeholder()
	if err == nil {
		s.files = append(s.files, mntFile{unix: set})
	}
	return fd, err
}

// reservePTY returns the placeholder of f, an end of a pty pair, and
// keeps one in pr for every other end and for the controlling terminal's
// slave, all made with it (openPair, pty.go).
func (s *mntFiles) reservePTY(pr *prepared, f *File) (int, error) {
	pp := f.TTY.Pair
	keys := []string{}
	for _, g := range append([]*File{pp.Master}, pp.Slaves...) {
		if g != f {
			keys = append(keys, fileKey(g))
		}
	}
	if pp.Leader != nil {
		keys = append(keys, cttyKey(pp))
	}
	for _, k := range keys {
		fd, err := placeholder()
		if err != nil {
			return -1, err
		}
		pr.add(k, fd)
	}
	fd, err := placeholder()
	if err == nil {
		s.files = append(s.files, mntFile{pty: pp})
	}
	return fd, err
}

// planMntUnix plans unix socket f of a tree with a mount namespace of its
// own: its set is made in the namespace when a socket of it has a path
// name, and a socket bound to a path must have its file on the mount its
// image names (mnt_id, when the image has one: CRIU's and crest's dumps
// write it for a tree with its own mount namespace).
func (p *Plan) planMntUnix(ns *MntNamespace, t *Task, f *File) error {
	u := f.Unix
	if u == nil || u.set == nil || !u.set.pathNamed() {
		return nil // made by the engine, as in its own namespace
	}
	path := unixNameString(u.Name)
	// with a net namespace of its own too, the set is made in both by
	// the thread of the mounts (makeMntUnix), not with the other sockets
	// of the net namespace (makeNetSockets), which are made before the
	// mounts exist
	u.set.inMnt = true
	if len(u.Name) == 0 || u.Name[0] == 0 || !u.bound() || ns.Files[f.ID] != nil {
		return nil
	}
	fe, err := p.Dir.File(f.ID)
	if err != nil {
		return &PlanError{PID: t.PID, File: "files.img", Err: err}
	}
	id := fe.GetUsk().GetMntId()
	if id < 0 {
		return nil
	}
	m := ns.byID[uint32(id)]
	if m == nil {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d (socket:[%d] bound to %s): mnt_id %d is not a mount of %s", f.ID, u.Ino, path, id, ns.File)}
	}
	ns.Files[f.ID] = m
	return nil
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
		switch {
		case mf.unix != nil:
			err = r.makeMntUnix(ns, made, mf.unix)
		case mf.fifo != nil:
			err = r.openMntFifo(mf)
		case mf.pty != nil:
			err = r.openMntPTY(ns, made, mf.pty)
		default:
			err = r.openMntFile(ns, made, gs, mf)
		}
		if err != nil {
			return err
		}
	}
	if set := pr.netMntUnix(); set != nil {
		// a net namespace of its own too: the sockets are its
		return r.inRootNet(made.procfd, func() error { return r.makeMntUnix(ns, made, set) })
	}
	return nil
}

// netMntUnix returns the unix sockets made in the tree's mount namespace
// when it has a net namespace of its own too: prepareFiles keeps their
// placeholders with the net namespace's sockets, which makeNetSockets
// makes but these.
func (pr *prepared) netMntUnix() *unixSockets {
	if pr.net == nil {
		return nil
	}
	for _, f := range pr.net.files {
		if f.Kind == FileUnixSocket && f.Unix != nil && f.Unix.set != nil && f.Unix.set.inMnt {
			return f.Unix.set
		}
	}
	return nil
}

// inRootNet runs fn with the calling thread, locked in the tree's mount
// namespace, in the root's net namespace (checked to be a new one), and
// moves the thread back to its own after. procfd is the engine's /proc:
// the thread's /proc may be the tree's, where it has no pid.
func (r *Restore) inRootNet(procfd int, fn func() error) error {
	self := "thread-self/ns/net"
	back, err := unix.Openat(procfd, self, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: "/proc/" + self, Err: err}
	}
	defer unix.Close(back)
	ino := func(name string) (uint64, error) {
		var st unix.Stat_t
		if err := unix.Fstatat(procfd, name, &st, 0); err != nil {
			return 0, &os.PathError{Op: "stat", Path: "/proc/" + name, Err: err}
		}
		return st.Ino, nil
	}
	was, err := ino(self)
	if err != nil {
		return err
	}
	if err := unix.Setns(r.rootPidfd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("join the net namespace of the root %d: %w", r.rootPID, os.NewSyscallError("setns", err))
	}
	now, err := ino(self)
	var rootNS uint64
	if err == nil {
		rootNS, err = ino(fmt.Sprintf("%d/ns/net", r.rootPID))
	}
	if err == nil && (now == was || now != rootNS) {
		err = fmt.Errorf("net namespace: joined %d, the root's is %d, the engine's %d: not the tree's own", now, rootNS, was)
	}
	if err == nil {
		err = fn()
	}
	if berr := unix.Setns(back, unix.CLONE_NEWNET); berr != nil {
		// the thread ends with its goroutine anyway (prepareMounts)
		err = errors.Join(err, fmt.Errorf("back to the engine's net namespace: %w", os.NewSyscallError("setns", berr)))
	}
	return err
}

// openMntFile opens file mf.f in the namespace and puts it onto its
// placeholder.
func (r *Restore) openMntFile(ns *MntNamespace, made *mounted, gs *mntGhosts, mf mntFile) error {
	pr, f := r.files, mf.f
	m := ns.Files[f.ID]
	if m == nil {
		return fmt.Errorf("%s: file %d (%s): no mount planned for it", r.plan.holder(f), f.ID, f.Path)
	}
	var fd int
	var err error
	switch {
	case f.Kind == FileFifo:
		fd, err = openFifoFile(f) // pipes.go
	case f.Remap != nil && f.Remap.Ghost != nil:
		fd, err = gs.open(f, mf.flags)
	default:
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
	return putMnt(pr, mf.key, fd, f)
}

// putMnt puts fd onto the placeholder of key, and closes it.
func putMnt(pr *prepared, key string, fd int, f *File) error {
	defer unix.Close(fd)
	k, ok := pr.index[key]
	if !ok {
		return fmt.Errorf("file %d (%s): no placeholder", f.ID, f.Path)
	}
	if err := unix.Dup3(fd, pr.fds[k], unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("file %d (%s): %w", f.ID, f.Path, os.NewSyscallError("dup3", err))
	}
	return nil
}

// openMntFifo opens the engine's end of a FIFO in the namespace and
// refills it; the tasks' files of it, opened after, are checked to be on
// their mounts.
func (r *Restore) openMntFifo(mf mntFile) error {
	pp := mf.fifo
	fd, err := openFifoEnd(pp) // pipes.go
	if err != nil {
		return fmt.Errorf("task %d: FIFO %s: %w", pp.Owner.PID, pp.Path, err)
	}
	return putMnt(r.files, mf.key, fd, &File{ID: pp.ID, Path: pp.Path})
}

// openMntPTY makes pty pair pp in the namespace (its /dev/ptmx makes a
// pty of the devpts there), checks that each end is on the mount its
// image names, and puts each onto its placeholder.
func (r *Restore) openMntPTY(ns *MntNamespace, made *mounted, pp *PTYPair) error {
	pr := r.files
	fds, err := openPair(pp) // pty.go
	if err != nil {
		return fmt.Errorf("task %d: %w", pp.Holder.PID, err)
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for f, fd := range fds {
		if f == nil {
			continue // the controlling terminal's, at the slave's path
		}
		m := ns.Files[f.ID]
		if m == nil {
			return fmt.Errorf("%s: file %d (%s): no mount planned for it", r.plan.holder(f), f.ID, f.Path)
		}
		var stx unix.Statx_t
		if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil {
			return fmt.Errorf("file %d (%s): %w", f.ID, f.Path, os.NewSyscallError("statx", err))
		}
		if want := made.ids[m.ID]; stx.Mask&unix.STATX_MNT_ID == 0 || stx.Mnt_id != want {
			return fmt.Errorf("%s: file %d (%s) of /dev/pts/%d opened on mount %d, not on %s (made as %d)",
				r.plan.holder(f), f.ID, f.Path, pp.Index, stx.Mnt_id, m, want)
		}
	}
	for f, fd := range fds {
		key := cttyKey(pp)
		if f != nil {
			key = fileKey(f)
		}
		k, ok := pr.index[key]
		if !ok {
			return fmt.Errorf("/dev/pts/%d: %s: no placeholder", pp.Index, key)
		}
		if err := unix.Dup3(fd, pr.fds[k], unix.O_CLOEXEC); err != nil {
			return fmt.Errorf("/dev/pts/%d: %s: %w", pp.Index, key, os.NewSyscallError("dup3", err))
		}
	}
	return nil
}

// makeMntUnix makes every unix socket of set in the namespace, as the
// engine makes them elsewhere (sockunix.go), checks that each socket
// bound to a path has its file on the mount its image names, and puts
// each onto its placeholder. On failure the socket files it bound are
// removed.
func (r *Restore) makeMntUnix(ns *MntNamespace, made *mounted, set *unixSockets) (err error) {
	pr := r.files
	tmp := &prepared{index: map[string]int{}, fdBase: pr.fdBase, pipes: map[uint32]*pipeEnds{}}
	b := &unixBuild{pr: tmp, first: set.order[0], firstFD: -1, fds: map[*File]int{}, here: true}
	defer func() {
		tmp.close()
		if b.firstFD >= 0 {
			unix.Close(b.firstFD)
		}
		if err != nil {
			b.unbind()
		}
	}()
	if _, err := b.make(set); err != nil {
		return fmt.Errorf("%s: %w", r.plan.holder(b.first), err)
	}
	for _, f := range set.order {
		m := ns.Files[f.ID]
		if m == nil {
			continue
		}
		name := unixPath(f.Unix.Name)
		if !path.IsAbs(name) {
			name = path.Join(f.Unix.NameDir, name)
		}
		var stx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_MNT_ID, &stx); err != nil {
			return fmt.Errorf("%s: unix socket %d (socket:[%d]): %w", r.plan.holder(f), f.ID, f.Unix.Ino, &os.PathError{Op: "statx", Path: name, Err: err})
		}
		if want := made.ids[m.ID]; stx.Mode&unix.S_IFMT != unix.S_IFSOCK || stx.Mask&unix.STATX_MNT_ID == 0 || stx.Mnt_id != want {
			return fmt.Errorf("%s: unix socket %d (socket:[%d]) bound to %s: the file there (mode %#o) is on mount %d, not the socket's on %s (made as %d)",
				r.plan.holder(f), f.ID, f.Unix.Ino, name, stx.Mode, stx.Mnt_id, m, want)
		}
	}
	for _, f := range set.order {
		k, ok := pr.index[fileKey(f)]
		if !ok {
			return fmt.Errorf("unix socket %d (socket:[%d]): no placeholder", f.ID, f.Unix.Ino)
		}
		if err := unix.Dup3(b.fds[f], pr.fds[k], unix.O_CLOEXEC); err != nil {
			return sockErr(f, os.NewSyscallError("dup3", err))
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
