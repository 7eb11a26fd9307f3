package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
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
// the root mount or of a mount made before it, all private. Their
// propagation is set once all are made (planPeerGroups, setPropagation),
// as mount-v2.c's restore_mount_sharing_options: the peer groups
// (shared:N) and the slaves of each (master:N) of the namespace, masters
// before their slaves, then the unbindable mounts. The tree's regular
// files are then opened in that namespace (mntns_files.go), as CRIU opens
// them through their mounts.
//
// Refused, by file, entry and mount point: a slave whose master is not a
// peer group of the namespace (the host's: CRIU takes it from an
// --external mount or the --root bind), sharing CRIU marks internal to an
// external mount, external mounts, mounts left to
// plugins, deleted bind sources, file system types other than those
// mntFSNew lists, a root mount that is not a whole file system (it needs
// CRIU's --root), binds with no mount to take them from, tmpfs without
// their tarball, a devtmpfs of its own; files that can not be opened in
// the namespace by their path (terminals that are not a pty pair of the
// tree, unix sockets bound to paths in a tree with a net namespace of its
// own too, files reopened through CRIU's link remaps). Ghost files,
// deleted while open or mapped, are made again on the mount the image
// names for their first file (planMntGhosts); FIFOs are opened, unix
// sockets bound and connected, and pty pairs made by their paths there,
// each on its mount (mntns_files.go).

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
	// Groups are the namespace's peer groups and slave sets, every one
	// after its master's.
	Groups []*PeerGroup
}

// PeerGroup is what CRIU's mount-v2.c calls a sharing group: the mounts
// of one shared_id (a peer group, shared:N) or, with shared_id 0, the
// slaves of one master that are in no peer group (master:M alone); all
// have the same master_id.
type PeerGroup struct {
	SharedID, MasterID uint32
	// Master is the peer group whose shared_id is MasterID.
	Master *PeerGroup
	// Mounts[0] has the widest root (every other's root is under it):
	// the others join the group from it, and the group's slaves their
	// master (MOVE_MOUNT_SET_GROUP copies from a mount whose root
	// holds the target's).
	Mounts []*Mount
}

func (g *PeerGroup) String() string {
	if g.SharedID == 0 {
		return fmt.Sprintf("the slaves of peer group %d", g.MasterID)
	}
	if g.MasterID != 0 {
		return fmt.Sprintf("peer group %d (a slave of %d)", g.SharedID, g.MasterID)
	}
	return fmt.Sprintf("peer group %d", g.SharedID)
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
	// SharedID is its peer group (shared:N, 0 for none), MasterID the
	// peer group it is a slave of (master:N, 0 for none).
	SharedID, MasterID uint32
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
			Options: e.GetOptions(), Flags: e.GetFlags(), SBFlags: e.GetSbFlags(),
			SharedID: e.GetSharedId(), MasterID: e.GetMasterId()}
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
		case e.GetInternalSharing():
			return nil, bad(m, "sharing internal to an external mount (internal_sharing): not restored")
		case m.Flags&unix.MS_UNBINDABLE != 0 && (m.SharedID != 0 || m.MasterID != 0):
			return nil, bad(m, "unbindable and shared:%d master:%d at once, which no mount is", m.SharedID, m.MasterID)
		case m.Flags&^(images.MntKnownFlags|images.MntPropagation) != 0:
			return nil, bad(m, "mount flags %#x: not restored", m.Flags&^(images.MntKnownFlags|images.MntPropagation))
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
	if err := planPeerGroups(ns, all); err != nil {
		return nil, err
	}
	if err := p.planMntFiles(ns); err != nil {
		return nil, err
	}
	if err := p.planMntGhosts(ns); err != nil {
		return nil, err
	}
	return ns, nil
}

// planPeerGroups gathers the mounts of all (the image's order) into
// their peer groups, as mount-v2.c's resolve_shared_mounts_v2: one per
// shared_id (or, for slaves in no peer group, per master_id), each with
// its master found among them, ordered masters first. A master outside
// the namespace is refused: CRIU restores it only from a mount of the
// host it is told of (--external, or the --root bind when the slave is
// a bind of the root's file system), which crest does not do.
func planPeerGroups(ns *MntNamespace, all []*Mount) error {
	bad := func(m *Mount, format string, args ...any) error {
		return &PlanError{File: ns.File, Msg: fmt.Sprintf("entry %d: %s: ", m.Entry, m) + fmt.Sprintf(format, args...)}
	}
	type key struct{ shared, master uint32 }
	groups := map[key]*PeerGroup{}
	peers := map[uint32]*PeerGroup{} // by shared_id
	var order []*PeerGroup
	for _, m := range all {
		if m.SharedID == 0 && m.MasterID == 0 {
			continue
		}
		k := key{m.SharedID, m.MasterID}
		g := groups[k]
		if g == nil {
			if o := peers[m.SharedID]; m.SharedID != 0 && o != nil {
				return bad(m, "in peer group %d with master %d, where %s has master %d: peers have one master", m.SharedID, m.MasterID, o.Mounts[0], o.MasterID)
			}
			g = &PeerGroup{SharedID: m.SharedID, MasterID: m.MasterID}
			groups[k] = g
			if m.SharedID != 0 {
				peers[m.SharedID] = g
			}
			order = append(order, g)
		}
		g.Mounts = append(g.Mounts, m)
	}
	for _, g := range order {
		// the widest root first, as CRIU's get_first_mount
		slices.SortStableFunc(g.Mounts, func(a, b *Mount) int { return len(a.Root) - len(b.Root) })
	}
	for _, g := range order {
		first := g.Mounts[0]
		for _, m := range g.Mounts[1:] {
			if m.Dev != first.Dev || m.Code != first.Code {
				return bad(m, "in %s with %s, another file system", g, first)
			}
			if _, ok := underPath(m.Root, first.Root); !ok {
				// CRIU: "Can't copy sharing from"
				return bad(m, "in %s, its root %s is not under %s of %s, where the group is taken from: not restored", g, m.Root, first.Root, first)
			}
		}
		if g.MasterID == 0 {
			continue
		}
		if g.Master = peers[g.MasterID]; g.Master == nil {
			// CRIU: "has unreachable sharing. Try --enable-external-masters."
			return bad(first, "a slave of peer group %d, which no mount of the namespace is in: its master is outside the tree's mount namespace (external sharing, which CRIU restores only from a mount given by --external or its --root): not restored", g.MasterID)
		}
		if g.Master == g {
			return bad(first, "a slave of its own peer group %d", g.MasterID)
		}
		from := g.Master.Mounts[0]
		if from.Dev != first.Dev || from.Code != first.Code {
			return bad(first, "a slave of %s, whose %s is another file system", g.Master, from)
		}
		if _, ok := underPath(first.Root, from.Root); !ok {
			return bad(first, "a slave of %s, its root %s not under %s of %s, where its master is taken from: not restored", g.Master, first.Root, from.Root, from)
		}
	}
	// masters before their slaves
	placed := map[*PeerGroup]bool{}
	for len(ns.Groups) < len(order) {
		n := len(ns.Groups)
		for _, g := range order {
			if !placed[g] && (g.Master == nil || placed[g.Master]) {
				placed[g] = true
				ns.Groups = append(ns.Groups, g)
			}
		}
		if len(ns.Groups) == n {
			for _, g := range order {
				if !placed[g] {
					return bad(g.Mounts[0], "%s is a slave of its own slaves (a loop of masters)", g)
				}
			}
		}
	}
	return nil
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
	regID := f.ID // the REG entry with its path and mnt_id
	switch f.Kind {
	case FileRegular:
		if f.Remap != nil && f.Remap.Ghost == nil {
			return refuse("a file deleted but linked elsewhere, reopened through the link CRIU's dump --link-remap made (a linked remap)")
		}
	case FileFifo:
		// opened by its path in the namespace, as CRIU's do_open_fifo
		// (mntns_files.go); its path is its REG entry's (regf_id)
		fe, err := p.Dir.File(f.ID)
		if err != nil {
			return &PlanError{PID: t.PID, File: "files.img", Err: err}
		}
		regID = fe.GetFifo().GetRegfId()
	case FileTTY:
		// a pty pair is made by its paths in the namespace, as CRIU's
		// pty_open_ptmx (/dev/ptmx there makes a pty of the devpts
		// instance at /dev/pts there; mntns_files.go); a terminal of
		// crest's (--shell-job) is not the tree's
		if f.TTY == nil || f.TTY.Pair == nil {
			return refuse("a terminal that is not a pty with both ends in the tree")
		}
		fe, err := p.Dir.File(f.ID)
		if err != nil {
			return &PlanError{PID: t.PID, File: "files.img", Err: err}
		}
		if fe.GetTty().RegfId != nil {
			regID = fe.GetTty().GetRegfId()
		}
	case FileUnixSocket:
		// bound or connected by path in the namespace (planMntUnix,
		// mntns_files.go)
		return p.planMntUnix(ns, t, f)
	default:
		return nil
	}
	if ns.Files[f.ID] != nil {
		return nil
	}
	fe, err := p.Dir.File(regID)
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
