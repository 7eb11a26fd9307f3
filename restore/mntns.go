package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/images"
)

// The tree's own mount namespace, as CRIU 4.2 dumps it (criu/mount.c:
// mountpoints-ID.img, one entry per line of the root's mountinfo, and
// tmpfs-dev-N.tar.gz.img, a tarball of each tmpfs) and restores it
// (mount-v2.c, with --root /): the root is born in a new mount namespace
// (CLONE_NEWNS, plan flag agent.PlanNewNS), a copy of the engine's, which
// the engine, in PREPARE_NAMESPACES, makes into the dumped one
// (mntns_mount.go): every copied mount but the root is taken away, the
// root mount (the engine's /, as CRIU's --root / binds it) gets the
// dumped flags, and each dumped mount is made again at its place, parents
// first: a new mount of its file system with its options (tmpfs filled
// from its tarball, proc of the tree's pid namespace), or a bind mount of
// the root mount or of a mount made before it, all private. The tree's
// regular files are then opened in that namespace (mntns_files.go), as
// CRIU opens them through their mounts.
//
// Refused, by file, entry and mount point: propagation other than
// private (shared, slave, unbindable), external mounts, mounts left to
// plugins, deleted bind sources, file system types other than those
// mntFSNew lists, a root mount that is not a whole file system (it needs
// CRIU's --root), binds with no mount to take them from, tmpfs without
// their tarball, a devtmpfs of its own; files that can not be opened in
// the namespace by their path (fifos, unix sockets bound to paths,
// terminals, files reopened through CRIU's link remaps). Ghost files,
// deleted while open or mapped, are made again on the mount the image
// names for their first file (planMntGhosts, mntns_files.go).

// MntNamespace is the tree's own mount namespace as its image has it.
type MntNamespace struct {
	ID   uint32
	File string // mountpoints-ID.img
	// Root is the namespace's root mount; Mounts the others in the
	// order they are made: every one after its parent and after the
	// mount it is bound from.
	Root   *Mount
	Mounts []*Mount
	byID   map[uint32]*Mount
	// Files are the mounts of the regular files the tasks hold, by
	// file id: opened in the namespace, on these mounts.
	Files map[uint32]*Mount
	// Ghosts are where the ghost files (ghost.go) are made: on the mount
	// of the first file that names each, as CRIU's create_ghost.
	Ghosts map[*Ghost]*MntGhost
}

// MntGhost is a ghost file made in the tree's mount namespace. Its files
// are linked to their paths through Mount: all of them are on its file
// system, under its root (CRIU links them through the mount the binds of
// the file system come from).
type MntGhost struct {
	Mount *Mount
	// Path is the ghost's path under Mount's root; Links the path of
	// each of its files there, by file id.
	Path  string
	Links map[uint32]string
}

// Mount is one entry of mountpoints-ID.img and how it is made.
type Mount struct {
	ID, ParentID uint32
	Parent       *Mount
	Entry        int // its index in the image
	Code         mnt.Fstype
	FSType       string // the name mount(2) takes ("" for the root)
	Dev          uint32 // root_dev (kdev)
	Root         string // the path of its root in its file system
	Mountpoint   string
	Source       string
	Options      string
	Flags        uint32 // MS_* per-mount flags
	SBFlags      uint32 // MS_RDONLY of the superblock
	// BindOf, when set, is the mount it is bound from (the namespace's
	// root mount or one made before it), BindPath the path under
	// BindOf's root; else it is a new mount of its file system.
	BindOf   *Mount
	BindPath string
	// Tarball is the image with a tmpfs's files (tmpfs-dev-N.tar.gz.img).
	Tarball string
}

func (m *Mount) String() string {
	return fmt.Sprintf("mount %d (%s at %s)", m.ID, m.fsLabel(), m.Mountpoint)
}

func (m *Mount) fsLabel() string {
	if m.FSType != "" {
		return m.FSType
	}
	return fmt.Sprintf("file system %s", images.KdevString(m.Dev))
}

// mntFSNew are the file system types whose mounts crest makes anew, as
// CRIU's do_new_mount_v2 does: a mount(2) of the type with the entry's
// source and options (tmpfs then filled from its tarball).
var mntFSNew = map[mnt.Fstype]bool{
	mnt.Fstype_PROC: true, mnt.Fstype_SYSFS: true, mnt.Fstype_DEVTMPFS: true, mnt.Fstype_TMPFS: true,
	mnt.Fstype_DEVPTS: true, mnt.Fstype_MQUEUE: true, mnt.Fstype_CGROUP: true, mnt.Fstype_CGROUP2: true,
	mnt.Fstype_DEBUGFS: true, mnt.Fstype_TRACEFS: true,
}

// loadMnt reads mountpoints-ID.img of the tree's own mount namespace id
// and plans how each mount is made.
func (p *Plan) loadMnt(id uint32) (*MntNamespace, error) {
	name := fmt.Sprintf("mountpoints-%d.img", id)
	img, err := images.ReadKindFile(p.Dir.FilePath(name), images.KindMnts)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &PlanError{File: name, Msg: fmt.Sprintf("the tree's own mount namespace %d has no image", id)}
	}
	if err != nil {
		return nil, &PlanError{File: name, Err: err}
	}
	ns := &MntNamespace{ID: id, File: name, byID: map[uint32]*Mount{}, Files: map[uint32]*Mount{}}
	bad := func(m *Mount, format string, args ...any) error {
		return &PlanError{File: name, Msg: fmt.Sprintf("entry %d: %s: ", m.Entry, m) + fmt.Sprintf(format, args...)}
	}
	var all []*Mount
	for i, ent := range img.Entries {
		e := ent.Message.(*mnt.MntEntry)
		m := &Mount{ID: e.GetMntId(), ParentID: e.GetParentMntId(), Entry: i, Code: mnt.Fstype(e.GetFstype()),
			Dev: e.GetRootDev(), Root: e.GetRoot(), Mountpoint: e.GetMountpoint(), Source: e.GetSource(),
			Options: e.GetOptions(), Flags: e.GetFlags(), SBFlags: e.GetSbFlags()}
		m.FSType = images.MntFSName(uint32(m.Code))
		if ns.byID[m.ID] != nil {
			return nil, bad(m, "mount id %d twice", m.ID)
		}
		switch {
		case e.GetExtMount() || e.ExtKey != nil:
			return nil, bad(m, "an external mount (ext_key %q): external mounts are not restored", e.GetExtKey())
		case e.GetWithPlugin():
			return nil, bad(m, "a mount left to a CRIU plugin: not restored")
		case e.GetDeleted():
			return nil, bad(m, "a bind mount of %s, deleted at the dump: not restored", m.Root)
		case e.GetSharedId() != 0 || e.GetMasterId() != 0 || e.GetInternalSharing() ||
			m.Flags&(unix.MS_SHARED|unix.MS_SLAVE|unix.MS_UNBINDABLE) != 0:
			return nil, bad(m, "propagation shared:%d master:%d (flags %#x): only private mounts are restored",
				e.GetSharedId(), e.GetMasterId(), m.Flags&(unix.MS_SHARED|unix.MS_SLAVE|unix.MS_UNBINDABLE))
		case m.Flags&^images.MntKnownFlags != 0:
			return nil, bad(m, "mount flags %#x: not restored", m.Flags&^images.MntKnownFlags)
		case m.SBFlags&^unix.MS_RDONLY != 0:
			return nil, bad(m, "superblock flags %#x: only ro is restored", m.SBFlags&^unix.MS_RDONLY)
		case !path.IsAbs(m.Mountpoint) || path.Clean(m.Mountpoint) != m.Mountpoint:
			return nil, bad(m, "mount point %q is not a clean absolute path", m.Mountpoint)
		case !path.IsAbs(m.Root) || path.Clean(m.Root) != m.Root:
			return nil, bad(m, "root %q is not a clean absolute path", m.Root)
		case strings.ContainsRune(m.Options, 0) || strings.ContainsRune(m.Source, 0):
			return nil, bad(m, "a NUL byte in its source or options")
		}
		ns.byID[m.ID] = m
		all = append(all, m)
	}
	// The namespace's root: the mount whose parent is not in it
	// (CRIU's is_ns_root), at /.
	for _, m := range all {
		if m.Parent = ns.byID[m.ParentID]; m.Parent != nil {
			continue
		}
		if ns.Root != nil {
			return nil, bad(m, "a second mount whose parent %d is not in the namespace (the first: %s)", m.ParentID, ns.Root)
		}
		if m.Mountpoint != "/" {
			return nil, bad(m, "its parent %d is not in the namespace, yet it is not at /", m.ParentID)
		}
		ns.Root = m
	}
	if ns.Root == nil {
		return nil, &PlanError{File: name, Msg: "no root mount (every mount's parent is in the namespace)"}
	}
	// CRIU binds --root at the root; crest binds the engine's /, which is
	// a whole file system: so must the dumped root be.
	if r := ns.Root; r.Root != "/" {
		return nil, bad(r, "the namespace's root is %s of its file system, not its root: restoring it needs CRIU's --root DIR, which crest does not have", r.Root)
	}
	// The order they are made in: mountinfo's (the reverse of the
	// image's), every mount after its parent and its bind source.
	pending := make([]*Mount, 0, len(all))
	for i := len(all) - 1; i >= 0; i-- {
		if all[i] != ns.Root {
			pending = append(pending, all[i])
		}
	}
	made := map[*Mount]bool{ns.Root: true}
	for len(pending) > 0 {
		var next []*Mount
		for _, m := range pending {
			if !made[m.Parent] {
				next = append(next, m)
				continue
			}
			ok, err := p.planMount(ns, m)
			if err != nil {
				return nil, bad(m, "%v", err)
			}
			if !ok {
				next = append(next, m)
				continue
			}
			made[m] = true
			ns.Mounts = append(ns.Mounts, m)
		}
		if len(next) == len(pending) {
			m := next[0]
			if !made[m.Parent] {
				return nil, bad(m, "its parent %d is never made (a loop of parents)", m.ParentID)
			}
			// CRIU: "doesn't have a proper root mount"
			return nil, bad(m, "a bind mount of %s with no mount of its file system to take it from: not restored", m.Root)
		}
		pending = next
	}
	for _, m := range ns.Mounts {
		// on its parent's mount point itself: mounted over it (a proc
		// of its own over the one a user namespace must see to mount it)
		over := m.Mountpoint == m.Parent.Mountpoint && m.Parent != ns.Root
		if !over && !strings.HasPrefix(m.Mountpoint, strings.TrimSuffix(m.Parent.Mountpoint, "/")+"/") {
			return nil, bad(m, "not under its parent's mount point %s", m.Parent.Mountpoint)
		}
	}
	if err := p.planMntFiles(ns); err != nil {
		return nil, err
	}
	if err := p.planMntGhosts(ns); err != nil {
		return nil, err
	}
	return ns, nil
}

// planMount decides how m is made, once its parent is: false when it
// waits for the mount it is bound from.
func (p *Plan) planMount(ns *MntNamespace, m *Mount) (bool, error) {
	// A mount of the root's file system is a bind of it (CRIU's
	// mnt_is_root_bind), whatever its type says.
	if m.Dev == ns.Root.Dev && m.Code == ns.Root.Code {
		rel, ok := underPath(m.Root, ns.Root.Root)
		if !ok {
			return false, fmt.Errorf("a bind of %s, outside the root mount's %s", m.Root, ns.Root.Root)
		}
		m.BindOf, m.BindPath = ns.Root, rel
		return true, nil
	}
	if m.Code == mnt.Fstype_UNSUPPORTED || !mntFSNew[m.Code] {
		name := m.FSType
		if name == "" {
			name = "unsupported"
		}
		return false, fmt.Errorf("file system type %s (code %d) on %s: not restored", name, m.Code, images.KdevString(m.Dev))
	}
	// A later mount of a superblock made before is bound from it
	// (propagate_mount_v2), when its root is under that one's.
	for _, o := range ns.Mounts {
		if o.Dev != m.Dev || o.Code != m.Code || (m.Code == mnt.Fstype_CGROUP && o.Options != m.Options) {
			continue
		}
		if rel, ok := underPath(m.Root, o.Root); ok {
			m.BindOf, m.BindPath = o, rel
			return true, nil
		}
	}
	if m.Root != "/" {
		return false, nil // not yet: a mount to bind it from may come later
	}
	switch m.Code {
	case mnt.Fstype_TMPFS:
		t, err := p.tmpfsTarball(m)
		if err != nil {
			return false, err
		}
		m.Tarball = t
	case mnt.Fstype_DEVTMPFS:
		// a devtmpfs of its own (CRIU's "virtualized") is dumped as a
		// tmpfs; the host's one has nothing to restore
		if _, err := os.Stat(p.Dir.FilePath(images.TmpfsDevImage(m.Dev))); err == nil {
			return false, fmt.Errorf("a devtmpfs of its own (%s): not restored", images.TmpfsDevImage(m.Dev))
		}
	}
	return true, nil
}

// tmpfsTarball names the tarball of tmpfs m, as CRIU's tmpfs_restore
// looks it up: by superblock, else by mount id; it must be there.
func (p *Plan) tmpfsTarball(m *Mount) (string, error) {
	for _, name := range []string{images.TmpfsDevImage(m.Dev), images.TmpfsMntImage(m.ID)} {
		st, err := os.Stat(p.Dir.FilePath(name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if st.Size() == 0 {
			return "", fmt.Errorf("%s is empty", name)
		}
		return name, nil
	}
	return "", fmt.Errorf("no tarball of its files (%s)", images.TmpfsDevImage(m.Dev))
}

// underPath says whether p is root or under it, and gives p relative to
// root ("." for root itself).
func underPath(p, root string) (string, bool) {
	if p == root {
		return ".", true
	}
	if root == "/" {
		return strings.TrimPrefix(p, "/"), true
	}
	if strings.HasPrefix(p, root+"/") {
		return p[len(root)+1:], true
	}
	return "", false
}

// planMntFiles finds the mount of every regular file the tasks hold (its
// mnt_id in files.img), where it is opened, and refuses the files that
// can not be opened in the namespace by their path.
func (p *Plan) planMntFiles(ns *MntNamespace) error {
	for _, t := range p.Tasks {
		var files []*File
		for _, fd := range t.FDs {
			files = append(files, fd.File)
		}
		for _, v := range t.Mem.VMAs {
			if v.File != nil {
				files = append(files, v.File)
			}
		}
		files = append(files, t.Mem.Exe, t.FS.CwdFile, t.FS.RootFile)
		for _, f := range files {
			if f == nil {
				continue
			}
			if err := p.planMntFile(ns, t, f); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *Plan) planMntFile(ns *MntNamespace, t *Task, f *File) error {
	refuse := func(what string) error {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d (%s): %s in a tree with a mount namespace of its own: not restored yet", f.ID, f.Path, what)}
	}
	switch f.Kind {
	case FileRegular:
		if f.Remap != nil && f.Remap.Ghost == nil {
			return refuse("a file deleted but linked elsewhere, reopened through the link CRIU's dump --link-remap made (a linked remap)")
		}
	case FileFifo:
		return refuse("a fifo")
	case FileTTY:
		return refuse("a terminal")
	case FileUnixSocket:
		if f.Unix != nil && len(f.Unix.Name) > 0 && f.Unix.Name[0] != 0 {
			return refuse("a unix socket bound to a path")
		}
		return nil
	default:
		return nil
	}
	if ns.Files[f.ID] != nil {
		return nil
	}
	fe, err := p.Dir.File(f.ID)
	if err != nil {
		return &PlanError{PID: t.PID, File: "files.img", Err: err}
	}
	reg := fe.GetReg()
	if reg == nil || reg.MntId == nil {
		return refuse("no mnt_id")
	}
	m := ns.byID[uint32(reg.GetMntId())]
	if m == nil {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d (%s): mnt_id %d is not a mount of %s", f.ID, f.Path, reg.GetMntId(), ns.File)}
	}
	ns.Files[f.ID] = m
	return nil
}

// planMntGhosts places each ghost file of the tree on the mount of its
// first file (ghost.go planned its path there, PATH.cr.ID.ghost), and
// finds where every file of it is linked on that mount: the same file
// system, under that mount's root. A ghost is made on a read-only mount
// by making the mount writable for the time (CRIU's
// try_remount_writable), never on a read-only file system.
func (p *Plan) planMntGhosts(ns *MntNamespace) error {
	if p.remaps == nil {
		return nil
	}
	for _, g := range p.remaps.order {
		// the file whose path the ghost's was made from (remapsOf)
		first := g.Files[0]
		for _, f := range g.Files {
			if p.remaps.byFile[f.ID].index < p.remaps.byFile[first.ID].index {
				first = f
			}
		}
		m := ns.Files[first.ID]
		if m == nil {
			return &PlanError{PID: g.Owner.PID, File: ghostImage(g.ID), Msg: fmt.Sprintf("file %d (%s): no mount planned for it", first.ID, first.Path)}
		}
		refuse := func(f *File, format string, args ...any) error {
			msg := fmt.Sprintf("the ghost of the deleted file %d (%s), made on %s (%s entry %d): ", first.ID, first.Path, m, ns.File, m.Entry)
			if f != first {
				msg += fmt.Sprintf("its file %d (%s): ", f.ID, f.Path)
			}
			return &PlanError{PID: g.Owner.PID, File: ghostImage(g.ID), Msg: msg + fmt.Sprintf(format, args...) + ": not restored"}
		}
		if m.SBFlags&unix.MS_RDONLY != 0 {
			return refuse(first, "a read-only file system, where its ghost can not be made")
		}
		mg := &MntGhost{Mount: m, Links: map[uint32]string{}}
		rel, ok := underPath(g.Path, m.Mountpoint)
		if !ok || rel == "." {
			return refuse(first, "its path is not under the mount point")
		}
		mg.Path = rel
		for _, f := range g.Files {
			fm := ns.Files[f.ID]
			if fm == nil {
				return refuse(f, "no mount planned for it")
			}
			if fm.Dev != m.Dev || fm.Code != m.Code {
				return refuse(f, "on %s, another file system", fm)
			}
			// its path on the file system, then under m's root
			frel, ok := underPath(f.Path, fm.Mountpoint)
			if !ok || frel == "." {
				return refuse(f, "its path is not under its mount point %s", fm.Mountpoint)
			}
			link, ok := underPath(path.Join(fm.Root, frel), m.Root)
			if !ok || link == "." {
				return refuse(f, "on %s, outside %s of %s, where its ghost is", fm, m.Root, m)
			}
			mg.Links[f.ID] = link
		}
		if ns.Ghosts == nil {
			ns.Ghosts = map[*Ghost]*MntGhost{}
		}
		ns.Ghosts[g] = mg
	}
	return nil
}

// checkMntImages refuses a mount namespace image that is not of the
// tree's own (loadMnt has read that one): one of another task's, which
// crest does not restore.
func (p *Plan) checkMntImages() error {
	for _, name := range p.mntImages {
		if p.Mnt != nil && name == p.Mnt.File {
			continue
		}
		return &PlanError{File: name, Msg: notRestoredNS + ": not the image of the root's mount namespace"}
	}
	return nil
}
