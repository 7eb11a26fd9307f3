package restore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/procfs"
)

// Making the tree's mounts (mntns.go) in PREPARE_NAMESPACES, after the
// UTS, IPC and net namespaces (CRIU's prepare_namespace order), before
// any task forks:
//
//   - an engine thread of its own leaves the engine's file system context
//     (unshare CLONE_FS: setns into a mount namespace needs it) and joins
//     the root's mount namespace through its pidfd, checked to be a new
//     one (joinTreeNamespaces): nothing here reaches the engine's mounts;
//   - every mount there is made private (the copy may share peer groups
//     with the engine's) and every one but the root mount is detached;
//   - the root mount, the engine's /, gets the dumped flags (CRIU's
//     do_mount_root_v2 with --root /), and each dumped mount is made at
//     its place, as mount-v2.c makes it (do_new_mount_v2, do_bind_mount_v2):
//     its file system mounted anew with its source and options, a tmpfs
//     filled by tar from its tarball, a proc of the tree's pid namespace
//     (fsconfig pidns: the engine is not in it); or bound from the mount
//     it shares a superblock with (open_tree, move_mount); then made
//     private and given its flags;
//   - once all are made, their propagation (setPropagation): each peer
//     group, masters first, as mount-v2.c's restore_one_sharing_group
//     (its widest mount made a slave of its master, taken with
//     MOVE_MOUNT_SET_GROUP, and shared; the others join it the same
//     way), then the unbindable mounts: nothing is mounted after, so
//     nothing propagates while the namespace is made;
//   - the result is read back from the thread's mountinfo and compared
//     with the image, mount by mount;
//   - then the tree's ghost files are made on their mounts and its
//     regular files opened there (mntns_files.go).
//
// The thread can not go back to the engine's file system context, so it
// ends with its goroutine. It must not be the thread that forked the
// launcher: the root, the launcher's sibling (CLONE_PARENT), has that
// thread for parent, and would get its parent-death signal.

// stepMntNamespace and stepMntFiles are the steps in the root's timeline.
const (
	stepMntNamespace = "mount namespace"
	stepMntFiles     = "mount namespace files"
)

// prepareMounts makes the tree's mounts and opens its files there.
func (r *Restore) prepareMounts() error {
	ns := r.plan.Mnt
	if ns == nil {
		return nil
	}
	step := r.namespaceStep
	return onOwnThread(r.rootPidfd, 3, func() error {
		begin := boottime()
		mounted, err := r.makeMounts(ns)
		if err := step(stepMntNamespace, begin, err); err != nil {
			return err
		}
		defer mounted.close()
		begin = boottime()
		return step(stepMntFiles, begin, r.openMntFiles(ns, mounted))
	})
}

// mounted is what makeMounts leaves open for the files: the /proc of
// the engine, the new mount id of every mount of the image and an
// O_PATH fd of its root.
type mounted struct {
	procfd int
	ids    map[uint32]uint64 // image mnt_id -> the made mount's id
	at     map[*Mount]int
}

func (m *mounted) close() {
	if m == nil {
		return
	}
	if m.procfd >= 0 {
		unix.Close(m.procfd)
	}
	for _, fd := range m.at {
		unix.Close(fd)
	}
	m.at = nil
}

// makeMounts joins the root's mount namespace on the calling thread
// (locked, ending with its goroutine) and makes ns there.
func (r *Restore) makeMounts(ns *MntNamespace) (res *mounted, err error) {
	// What the thread needs from the engine's mounts, opened before it
	// leaves them: /proc (the tree may have none where it is going), the
	// root's pid namespace for its procs, tar and the tarballs.
	procfd, err := unix.Open("/proc", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: "/proc", Err: err}
	}
	res = &mounted{procfd: procfd, ids: map[uint32]uint64{}, at: map[*Mount]int{}}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
		if err != nil {
			res.close()
			res = nil
		}
	}()
	keep := func(fd int) int { fds = append(fds, fd); return fd }
	pidns, err := unix.Openat(procfd, fmt.Sprintf("%d/ns/pid", r.rootPID), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, &os.PathError{Op: "open", Path: fmt.Sprintf("/proc/%d/ns/pid", r.rootPID), Err: err}
	}
	keep(pidns)
	tarballs := map[*Mount]*os.File{}
	defer func() {
		for _, f := range tarballs {
			f.Close()
		}
	}()
	var tar string
	for _, m := range ns.Mounts {
		if m.Tarball == "" {
			continue
		}
		if tar == "" {
			if tar, err = exec.LookPath("tar"); err != nil {
				return res, fmt.Errorf("%s: %w", m, err)
			}
		}
		f, err := os.Open(r.plan.Dir.FilePath(m.Tarball))
		if err != nil {
			return res, err
		}
		tarballs[m] = f
	}

	// In a user namespace of its own the copies of the engine's mounts
	// are locked to the root mount: the tree gets a copy of the engine's
	// root mount alone instead (userns.go).
	clone := -1
	if r.plan.User != nil {
		if clone, err = cloneEngineRoot(); err != nil {
			return res, err
		}
		keep(clone)
		if r.sight, err = newProcSight(ns); err != nil {
			return res, err
		}
		defer r.sight.close()
	}
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return res, fmt.Errorf("leave the engine's file system context: %w", os.NewSyscallError("unshare", err))
	}
	if err := joinTreeNamespaces(r.rootPidfd, r.rootPID, unix.CLONE_NEWNS); err != nil {
		return res, err
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return res, fmt.Errorf("make the copied mounts private: %w", os.NewSyscallError("mount", err))
	}
	if clone >= 0 {
		err = pivotToClone(clone)
	} else {
		err = detachCopies(procfd)
	}
	if err != nil {
		return res, err
	}
	// The root mount: the engine's / with the dumped flags.
	rm := ns.Root
	if fl := rm.Flags &^ images.MntPropagation; fl != 0 {
		if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|uintptr(fl), ""); err != nil {
			return res, fmt.Errorf("%s: %s entry %d: flags %#x: %w", rm, ns.File, rm.Entry, fl, os.NewSyscallError("mount", err))
		}
	}
	rootfd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, &os.PathError{Op: "open", Path: "/", Err: err}
	}
	at := res.at
	at[rm] = rootfd
	for _, m := range ns.Mounts {
		if err := r.makeMount(m, at, pidns, tar, tarballs[m]); err != nil {
			return res, fmt.Errorf("%s entry %d: %s: %w", ns.File, m.Entry, m, err)
		}
		fd, err := unix.Open(m.Mountpoint, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return res, fmt.Errorf("%s: %w", m, &os.PathError{Op: "open", Path: m.Mountpoint, Err: err})
		}
		at[m] = fd
	}
	if err := setPropagation(ns, at); err != nil {
		return res, err
	}
	if err := checkMounts(ns, procfd, res.ids); err != nil {
		return res, err
	}
	return res, nil
}

// setPropagation gives the made mounts (at holds an O_PATH fd of the
// root of each) their peer groups, masters and unbindable flags, all
// through their fds (a mount point may be covered by a later mount).
// A mount joins a group or gets a master from a member with
// MOVE_MOUNT_SET_GROUP, which takes a private mount and copies both;
// MS_SLAVE then turns the copied peer group into its master.
func setPropagation(ns *MntNamespace, at map[*Mount]int) error {
	fail := func(m *Mount, what string, err error) error {
		return fmt.Errorf("%s entry %d: %s: %s: %w", ns.File, m.Entry, m, what, err)
	}
	propagate := func(m *Mount, how uint64) error {
		return unix.MountSetattr(at[m], "", unix.AT_EMPTY_PATH, &unix.MountAttr{Propagation: how})
	}
	join := func(from, to *Mount) error {
		return unix.MoveMount(at[from], "", at[to], "", unix.MOVE_MOUNT_SET_GROUP|unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
	}
	for _, g := range ns.Groups {
		first := g.Mounts[0]
		if g.Master != nil {
			from := g.Master.Mounts[0]
			if err := join(from, first); err != nil {
				return fail(first, fmt.Sprintf("a slave of %s: take its group from %s", g.Master, from), os.NewSyscallError("move_mount MOVE_MOUNT_SET_GROUP", err))
			}
			if err := propagate(first, unix.MS_SLAVE); err != nil {
				return fail(first, fmt.Sprintf("a slave of %s", g.Master), os.NewSyscallError("mount_setattr MS_SLAVE", err))
			}
		}
		if g.SharedID != 0 {
			if err := propagate(first, unix.MS_SHARED); err != nil {
				return fail(first, g.String(), os.NewSyscallError("mount_setattr MS_SHARED", err))
			}
		}
		for _, m := range g.Mounts[1:] {
			if err := join(first, m); err != nil {
				return fail(m, fmt.Sprintf("in %s: join it from %s", g, first), os.NewSyscallError("move_mount MOVE_MOUNT_SET_GROUP", err))
			}
		}
	}
	for _, m := range append([]*Mount{ns.Root}, ns.Mounts...) {
		if m.Flags&unix.MS_UNBINDABLE != 0 {
			if err := propagate(m, unix.MS_UNBINDABLE); err != nil {
				return fail(m, "unbindable", os.NewSyscallError("mount_setattr MS_UNBINDABLE", err))
			}
		}
	}
	return nil
}

// detachCopies detaches every mount of the calling thread's namespace
// but its root, deepest first: the namespace is born a copy of the
// engine's, and the dumped one has only the mounts of its image.
func detachCopies(procfd int) error {
	for pass := 0; pass < 16; pass++ {
		lines, err := readMountinfo(procfd)
		if err != nil {
			return err
		}
		var mps []string
		for _, l := range lines {
			if l.mountpoint != "/" {
				mps = append(mps, l.mountpoint)
			}
		}
		if len(mps) == 0 {
			return nil
		}
		slices.SortStableFunc(mps, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
		for _, mp := range mps {
			// one above may have taken it with it
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("detach the copy of the engine's mount at %s: %w", mp, os.NewSyscallError("umount2", err))
			}
		}
	}
	return errors.New("the copies of the engine's mounts are still there after 16 rounds of detaching them")
}

// makeMount makes m at its mount point, its parent made; at holds an
// O_PATH fd of the root of every mount made before.
func (r *Restore) makeMount(m *Mount, at map[*Mount]int, pidns int, tar string, tarball *os.File) error {
	if m.BindOf != nil {
		return bindMount(m, at[m.BindOf])
	}
	sflags, mflags := uintptr(m.SBFlags), uintptr(m.Flags&^images.MntPropagation)
	// one mount(2) when the flags allow it, as do_new_mount_v2
	if mflags&^uintptr(images.MntKnownFlags) == 0 && (sflags^mflags)&unix.MS_RDONLY == 0 {
		sflags |= mflags
		mflags = 0
	}
	// a read-only tmpfs is filled first
	remountRO := m.Code == mnt.Fstype_TMPFS && sflags&unix.MS_RDONLY != 0
	if remountRO {
		sflags &^= unix.MS_RDONLY
	}
	if m.Code == mnt.Fstype_PROC {
		if err := mountProc(m, sflags, pidns, r.sight); err != nil {
			return err
		}
	} else if err := unix.Mount(m.Source, m.Mountpoint, m.FSType, sflags, m.Options); err != nil {
		return fmt.Errorf("mount %s %s -t %s -o %q (flags %#x): %w", m.Source, m.Mountpoint, m.FSType, m.Options, sflags, os.NewSyscallError("mount", err))
	}
	if err := unix.Mount("", m.Mountpoint, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make it private: %w", os.NewSyscallError("mount", err))
	}
	if tarball != nil {
		if err := untar(tar, m, tarball); err != nil {
			return err
		}
		if err := shiftOwners(m.Mountpoint, r.plan.User); err != nil { // userns.go
			return err
		}
	}
	if remountRO {
		if err := unix.Mount("", m.Mountpoint, "", unix.MS_REMOUNT|sflags|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remount it read-only: %w", os.NewSyscallError("mount", err))
		}
	}
	if mflags != 0 {
		if err := unix.Mount("", m.Mountpoint, "", unix.MS_REMOUNT|unix.MS_BIND|mflags, ""); err != nil {
			return fmt.Errorf("flags %#x: %w", mflags, os.NewSyscallError("mount", err))
		}
	}
	return nil
}

// mountProc mounts a proc of the root's pid namespace (pidns), where
// CRIU's root task mounts it from: the engine is not in that namespace,
// so it is named (fsconfig pidns, Linux 6.18).
func mountProc(m *Mount, sflags uintptr, pidns int, sight *procSight) error {
	fsfd, err := unix.Fsopen("proc", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("fsopen", err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigSetFd(fsfd, "pidns", pidns); err != nil {
		return fmt.Errorf("proc of the root's pid namespace: %w (a kernel before 6.18 has no pidns option)", os.NewSyscallError("fsconfig pidns", err))
	}
	if m.Source != "" {
		if err := unix.FsconfigSetString(fsfd, "source", m.Source); err != nil {
			return fmt.Errorf("source %q: %w", m.Source, os.NewSyscallError("fsconfig", err))
		}
	}
	for _, o := range strings.Split(m.Options, ",") {
		if o == "" {
			continue
		}
		k, v, ok := strings.Cut(o, "=")
		if ok {
			err = unix.FsconfigSetString(fsfd, k, v)
		} else {
			err = unix.FsconfigSetFlag(fsfd, k)
		}
		if err != nil {
			return fmt.Errorf("option %q: %w", o, os.NewSyscallError("fsconfig", err))
		}
	}
	if sflags&unix.MS_RDONLY != 0 {
		if err := unix.FsconfigSetFlag(fsfd, "ro"); err != nil {
			return fmt.Errorf("option ro: %w", os.NewSyscallError("fsconfig", err))
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return os.NewSyscallError("fsconfig create", err)
	}
	attrs := 0
	for _, a := range []struct {
		flag uintptr
		attr int
	}{{unix.MS_RDONLY, unix.MOUNT_ATTR_RDONLY}, {unix.MS_NOSUID, unix.MOUNT_ATTR_NOSUID}, {unix.MS_NODEV, unix.MOUNT_ATTR_NODEV},
		{unix.MS_NOEXEC, unix.MOUNT_ATTR_NOEXEC}, {unix.MS_NOATIME, unix.MOUNT_ATTR_NOATIME},
		{unix.MS_STRICTATIME, unix.MOUNT_ATTR_STRICTATIME}, {unix.MS_NODIRATIME, unix.MOUNT_ATTR_NODIRATIME}} {
		if sflags&a.flag != 0 {
			attrs |= a.attr
		}
	}
	mfd, err := sight.fsmount(fsfd, attrs, m.Mountpoint) // userns.go
	if err != nil {
		return err
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, m.Mountpoint, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", m.Mountpoint, os.NewSyscallError("move_mount", err))
	}
	return nil
}

// bindMount binds m from the mount whose root is at fd, at m.BindPath
// under it, as CRIU's __do_bind_mount_v2 (open_tree, move_mount; not
// recursive), then makes it private with its flags.
func bindMount(m *Mount, fd int) error {
	src := fd
	if m.BindPath != "." {
		// the path the kernel gave the mount's root: no symlink in it,
		// nothing above the source's root
		s, err := unix.Openat2(fd, m.BindPath, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC | unix.O_NOFOLLOW,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV})
		if err != nil {
			return fmt.Errorf("the source %s under %s: %w", m.BindPath, m.BindOf, os.NewSyscallError("openat2", err))
		}
		defer unix.Close(s)
		src = s
	}
	tree, err := unix.OpenTree(src, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("bind %s of %s: %w", m.BindPath, m.BindOf, os.NewSyscallError("open_tree", err))
	}
	defer unix.Close(tree)
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, m.Mountpoint, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", m.Mountpoint, os.NewSyscallError("move_mount", err))
	}
	if err := unix.Mount("", m.Mountpoint, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make it private: %w", os.NewSyscallError("mount", err))
	}
	if fl := m.Flags &^ images.MntPropagation; fl != m.BindOf.Flags&^images.MntPropagation {
		if err := unix.Mount("", m.Mountpoint, "", unix.MS_REMOUNT|unix.MS_BIND|uintptr(fl), ""); err != nil {
			return fmt.Errorf("flags %#x: %w", fl, os.NewSyscallError("mount", err))
		}
	}
	return nil
}

// untar fills tmpfs m from its tarball as CRIU's tmpfs_restore does: tar
// --extract --gzip, forked from this thread, so in the tree's mounts.
func untar(tar string, m *Mount, tarball *os.File) error {
	var out bytes.Buffer
	cmd := &exec.Cmd{
		Path:   tar,
		Args:   []string{"tar", "--extract", "--gzip", "--no-unquote", "--no-wildcards", "--directory", m.Mountpoint},
		Env:    []string{"PATH=/usr/bin:/bin", "LC_ALL=C"},
		Stdin:  tarball,
		Stdout: &out,
		Stderr: &out,
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: tar --extract into %s: %w: %s", m.Tarball, m.Mountpoint, err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// lineGroups reads the optional fields of a mountinfo line.
func lineGroups(optional []string) (shared, master uint64, unbindable bool) {
	for _, o := range optional {
		k, v, _ := strings.Cut(o, ":")
		n, _ := strconv.ParseUint(v, 10, 64)
		switch k {
		case "shared":
			shared = n
		case "master":
			master = n
		case "unbindable":
			unbindable = true
		}
	}
	return shared, master, unbindable
}

// dumpedGroups says m's propagation as its image has it, in mountinfo's
// words.
func dumpedGroups(m *Mount) string {
	var w []string
	if m.SharedID != 0 {
		w = append(w, fmt.Sprintf("shared:%d", m.SharedID))
	}
	if m.MasterID != 0 {
		w = append(w, fmt.Sprintf("master:%d", m.MasterID))
	}
	if m.Flags&unix.MS_UNBINDABLE != 0 {
		w = append(w, "unbindable")
	}
	if len(w) == 0 {
		return "private"
	}
	return strings.Join(w, " ")
}

// mountLine is one line of mountinfo.
type mountLine struct {
	id, parent uint64
	root       string
	mountpoint string
	opts       string // per mount
	optional   []string
	fstype     string
	source     string
	super      string
}

// readMountinfo reads the calling thread's mountinfo through procfd.
func readMountinfo(procfd int) ([]mountLine, error) {
	fd, err := unix.Openat(procfd, "thread-self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: "/proc/thread-self/mountinfo", Err: err}
	}
	f := os.NewFile(uintptr(fd), "/proc/thread-self/mountinfo")
	defer f.Close()
	return parseMountinfo(f.Name(), f)
}

// parseMountinfo parses mountinfo lines (proc(5)), their paths unescaped.
func parseMountinfo(name string, f interface{ Read([]byte) (int, error) }) ([]mountLine, error) {
	var out []mountLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		w := strings.Fields(sc.Text())
		sep := slices.Index(w, "-")
		if len(w) < 10 || sep < 6 || len(w) < sep+3 {
			return nil, fmt.Errorf("%s line %d: %q is not a mountinfo line", name, n, sc.Text())
		}
		var l mountLine
		var err1, err2 error
		l.id, err1 = strconv.ParseUint(w[0], 10, 64)
		l.parent, err2 = strconv.ParseUint(w[1], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s line %d: ids %q %q", name, n, w[0], w[1])
		}
		l.root, l.mountpoint, l.opts = procfs.UnescapeMountPath(w[3]), procfs.UnescapeMountPath(w[4]), w[5]
		l.optional = w[6:sep]
		l.fstype, l.source = w[sep+1], procfs.UnescapeMountPath(w[sep+2])
		if len(w) > sep+3 {
			l.super = w[sep+3]
		}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// checkMounts reads the namespace back and compares it with ns: the root
// mount and each of ns.Mounts, under its parent at its mount point, of
// its type, root, flags and propagation (its peer group the one of the
// mounts that shared its group at the dump, its master the peer group of
// its master's mounts: the group numbers are the kernel's own), and
// nothing else; ids gets the id of each.
func checkMounts(ns *MntNamespace, procfd int, ids map[uint32]uint64) error {
	lines, err := readMountinfo(procfd)
	if err != nil {
		return err
	}
	taken := map[int]bool{}
	find := func(m *Mount) (int, error) {
		for i, l := range lines {
			if taken[i] || l.mountpoint != m.Mountpoint {
				continue
			}
			if m.Parent != nil && l.parent != ids[m.Parent.ID] {
				continue
			}
			return i, nil
		}
		return -1, fmt.Errorf("%s: %s entry %d: not in the restored namespace's mountinfo", m, ns.File, m.Entry)
	}
	made := map[uint32]uint64{}   // a dumped peer group -> the restored one
	dumped := map[uint64]uint32{} // and back
	masters := map[*Mount]uint64{}
	for _, m := range append([]*Mount{ns.Root}, ns.Mounts...) {
		i, err := find(m)
		if err != nil {
			return err
		}
		taken[i] = true
		l := lines[i]
		ids[m.ID] = l.id
		var fl uint32
		for _, w := range strings.Split(l.opts, ",") {
			for _, f := range images.MntFlagWords {
				if w == f.Word {
					fl |= f.Flag
				}
			}
		}
		want := m.Flags &^ (images.MntPropagation | unix.MS_STRICTATIME)
		switch {
		case m.FSType != "" && l.fstype != m.FSType && !strings.HasPrefix(l.fstype, m.FSType+"."):
			return fmt.Errorf("%s: %s entry %d: restored as %s", m, ns.File, m.Entry, l.fstype)
		case l.root != m.Root:
			return fmt.Errorf("%s: %s entry %d: restored with root %s, not %s", m, ns.File, m.Entry, l.root, m.Root)
		case fl != want:
			return fmt.Errorf("%s: %s entry %d: restored with flags %#x (%s), not %#x", m, ns.File, m.Entry, fl, l.opts, want)
		}
		shared, master, unbindable := lineGroups(l.optional)
		bad := func(why string) error {
			got := strings.Join(l.optional, " ")
			if got == "" {
				got = "private"
			}
			return fmt.Errorf("%s: %s entry %d: restored %s, not %s: %s", m, ns.File, m.Entry, got, dumpedGroups(m), why)
		}
		switch {
		case (shared != 0) != (m.SharedID != 0) || (master != 0) != (m.MasterID != 0) || unbindable != (m.Flags&unix.MS_UNBINDABLE != 0):
			return bad("another propagation")
		case m.SharedID != 0 && made[m.SharedID] != 0 && made[m.SharedID] != shared:
			return bad(fmt.Sprintf("not a peer of the mounts of its group (restored in %d)", made[m.SharedID]))
		case m.SharedID != 0 && dumped[shared] != 0 && dumped[shared] != m.SharedID:
			return bad(fmt.Sprintf("a peer of the mounts of group %d", dumped[shared]))
		}
		if m.SharedID != 0 {
			made[m.SharedID], dumped[shared] = shared, m.SharedID
		}
		if m.MasterID != 0 {
			masters[m] = master
		}
	}
	for m, master := range masters {
		if want := made[m.MasterID]; master != want {
			return fmt.Errorf("%s: %s entry %d: restored a slave of %d, not of %d, the restored peer group %d", m, ns.File, m.Entry, master, want, m.MasterID)
		}
	}
	for i, l := range lines {
		if !taken[i] {
			return fmt.Errorf("a mount the image does not have: %d %s at %s (root %s)", l.id, l.fstype, l.mountpoint, l.root)
		}
	}
	return nil
}
