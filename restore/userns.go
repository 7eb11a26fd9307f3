package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/userns"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
)

// The tree's own user namespace, as CRIU 4.2 dumps it (criu/namespaces.c:
// userns-ID.img, the root's uid_map and gid_map, each extent "first
// lower_first count" as the dumper read them) and restores it
// (cr-restore.c): the root is cloned with CLONE_NEWUSER together with its
// other new namespaces, which the new user namespace then owns (plan flag
// agent.PlanNewUser); while it waits at ROOT_TASK the engine writes its
// maps from outside (CRIU's prepare_userns), reads them back and compares
// them with the image, and only then lets it on. Every task is in the
// root's user namespace: CRIU dumps no other. The credentials of the
// cores are ids inside the namespace, which the tasks set themselves
// there (creds.c, the whole step: they do not have the launcher's).
//
// What the engine does from outside the namespace with ids of the images
// (SysV IPC owners, the owners of ghost files and memfds, the range of
// ping_group_range, uid= and gid= options of mounts, the owners of the
// files of a tmpfs's tarball) takes them through the maps first
// (hostIDs, shiftOwners), as the kernel would inside. The sockets it
// makes it makes as the namespace's root, as CRIU's tasks do
// (userns_sock.go).
//
// A mount namespace born with the user namespace holds copies of the
// engine's mounts locked to its root: the engine puts a copy of its root
// mount alone in their place (cloneEngineRoot, pivotToClone), and makes
// each proc with a copy of its /proc in sight (procSight), as the kernel
// wants it there.
//
// The tasks take the engine's files with pidfd_getfd, which a process in
// a user namespace may do only to a process of its own user namespace
// (the ptrace access check, cap_ptrace_access_check): the pidfd the tasks
// hold is the file holder's, a process that shares the engine's fd table
// (CLONE_FILES) and joins the tree's user namespace right after its maps
// are written (fileHolder).

// UserNamespace is the tree's own user namespace (userns-ID.img).
type UserNamespace struct {
	ID   uint32
	File string
	// UIDMap and GIDMap are the extents of uid_map and gid_map, in the
	// image's order.
	UIDMap, GIDMap []IDExtent
}

// IDExtent is one line of a uid_map or gid_map: Count ids from First in
// the namespace are LowerFirst on in its parent's (the engine's).
type IDExtent struct {
	First, LowerFirst, Count uint32
}

// maxIDExtents is the kernel's limit on the lines of a map
// (UID_GID_MAP_MAX_EXTENTS).
const maxIDExtents = 340

// stepUserNS is the engine's step of the root at ROOT_TASK.
const stepUserNS = "user namespace"

// planUserNS decides, as CRIU does (get_clone_mask), whether the tree had
// a user namespace of its own: the root's differs from the dumping
// criu's (inventory root_ids). Every task must be in the root's. Then it
// reads and checks the image, checks that every id of the tasks'
// credentials is mapped, and takes the ids the engine uses from outside
// through the maps. It refuses a user namespace image that is not the
// root's own.
func (p *Plan) planUserNS() error {
	root := p.Root()
	rootIDs := p.Dir.Inventory.GetRootIds()
	if root.IDs != nil {
		for _, t := range p.Tasks[1:] {
			if t.IDs == nil {
				continue // a zombie or a helper
			}
			if t.IDs.GetUserNsId() != root.IDs.GetUserNsId() {
				return &PlanError{PID: t.PID, File: fmt.Sprintf("ids-%d.img", t.PID),
					Msg: fmt.Sprintf("user namespace %d, not the root's %d: tasks in user namespaces of their own (nested or not) are not restored (nor dumped by CRIU)",
						t.IDs.GetUserNsId(), root.IDs.GetUserNsId())}
			}
		}
	}
	if root.IDs != nil && rootIDs != nil && root.IDs.UserNsId != nil && rootIDs.UserNsId != nil &&
		root.IDs.GetUserNsId() != rootIDs.GetUserNsId() {
		id := root.IDs.GetUserNsId()
		if !p.Dir.Inventory.GetNsPerId() {
			id = uint32(root.PID) // images before ns_per_id are named for the root's pid
		}
		u, err := p.loadUser(id)
		if err != nil {
			return err
		}
		p.User = u
		if !p.NewPIDNS && len(p.Tasks) > 1 {
			return &PlanError{PID: root.PID, File: u.File,
				Msg: fmt.Sprintf("%d tasks in a user namespace of their own but in the dumper's pid namespace: the root could not fork its children with their pids (clone3 set_tid needs CAP_CHECKPOINT_RESTORE in the pid namespace's user namespace), as CRIU could not", len(p.Tasks))}
		}
		if err := p.checkMapped(u); err != nil {
			return err
		}
		if err := p.hostIDs(u); err != nil {
			return err
		}
		if err := p.planSockOwner(u); err != nil { // userns_sock.go
			return err
		}
	}
	for _, name := range p.userImages {
		if p.User == nil || name != p.User.File {
			return &PlanError{File: name, Msg: "a user namespace that is not the root's own: only the root's is restored, with every task in it"}
		}
	}
	return nil
}

// loadUser reads userns-ID.img and checks its maps as the kernel would
// take them (map_write): one entry, 1 to 340 extents per map, none empty
// or running past the last id, none overlapping another inside or
// outside.
func (p *Plan) loadUser(id uint32) (*UserNamespace, error) {
	name := fmt.Sprintf("userns-%d.img", id)
	img, err := images.ReadKindFile(p.Dir.FilePath(name), images.KindUserNS)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &PlanError{File: name, Msg: fmt.Sprintf("the tree's own user namespace %d has no image", id)}
	}
	if err != nil {
		return nil, &PlanError{File: name, Err: err}
	}
	if len(img.Entries) != 1 {
		return nil, &PlanError{File: name, Msg: fmt.Sprintf("%d entries, want one", len(img.Entries))}
	}
	e := img.Entries[0].Message.(*userns.UsernsEntry)
	u := &UserNamespace{ID: id, File: name}
	for _, m := range []struct {
		what string
		in   []*userns.UidGidExtent
		out  *[]IDExtent
	}{{"uid_map", e.GetUidMap(), &u.UIDMap}, {"gid_map", e.GetGidMap(), &u.GIDMap}} {
		exts, err := checkExtents(m.in)
		if err != nil {
			return nil, &PlanError{File: name, Msg: fmt.Sprintf("entry 0: %s: %v", m.what, err)}
		}
		*m.out = exts
	}
	return u, nil
}

func checkExtents(in []*userns.UidGidExtent) ([]IDExtent, error) {
	if len(in) == 0 {
		return nil, errors.New("no extent: nothing would be mapped")
	}
	if len(in) > maxIDExtents {
		return nil, fmt.Errorf("%d extents, the kernel takes at most %d", len(in), maxIDExtents)
	}
	out := make([]IDExtent, len(in))
	for i, x := range in {
		e := IDExtent{First: x.GetFirst(), LowerFirst: x.GetLowerFirst(), Count: x.GetCount()}
		if e.Count == 0 {
			return nil, fmt.Errorf("extent %d (%s): count 0", i, e)
		}
		// the last id, 4294967295, is (uid_t)-1: never mapped
		if uint64(e.First)+uint64(e.Count) > 1<<32-1 || uint64(e.LowerFirst)+uint64(e.Count) > 1<<32-1 {
			return nil, fmt.Errorf("extent %d (%s): runs past the last id", i, e)
		}
		for j, o := range out[:i] {
			if overlap(e.First, e.Count, o.First, o.Count) || overlap(e.LowerFirst, e.Count, o.LowerFirst, o.Count) {
				return nil, fmt.Errorf("extent %d (%s) overlaps extent %d (%s)", i, e, j, o)
			}
		}
		out[i] = e
	}
	return out, nil
}

func overlap(a, an, b, bn uint32) bool {
	return uint64(a) < uint64(b)+uint64(bn) && uint64(b) < uint64(a)+uint64(an)
}

func (e IDExtent) String() string { return fmt.Sprintf("%d %d %d", e.First, e.LowerFirst, e.Count) }

// hostID is id inside the namespace as its parent (the engine) sees it,
// as the kernel maps it (map_id_down); false when it is not mapped.
func hostID(m []IDExtent, id uint32) (uint32, bool) {
	for _, e := range m {
		if id >= e.First && uint64(id) < uint64(e.First)+uint64(e.Count) {
			return e.LowerFirst + (id - e.First), true
		}
	}
	return 0, false
}

// invalidID is CRIU's INVALID_ID, (uid_t)-1: an owner its dump found
// not mapped (userns_uid), which it restores by changing nothing (a chown
// to -1), leaving the object to whoever made it.
const invalidID = ^uint32(0)

// hostOwner is id, the owner of an object inside the namespace, as the
// engine sets it from outside: through the map; invalidID stays, which a
// chown takes for "leave it", as CRIU's (the engine makes the object: with
// the namespace's root not the engine's, its ids are not mapped either,
// as at the dump). False when the map does not map id.
func hostOwner(m []IDExtent, id uint32) (uint32, bool) {
	if id == invalidID {
		return id, true
	}
	return hostID(m, id)
}

// mapText is a map as written to /proc/PID/uid_map and read back (the
// kernel prints each field right-aligned in 10 columns).
func mapText(m []IDExtent) string {
	var b strings.Builder
	for _, e := range m {
		fmt.Fprintf(&b, "%10d %10d %10d\n", e.First, e.LowerFirst, e.Count)
	}
	return b.String()
}

// checkMapped refuses a task whose credentials hold an id the maps do not
// map: its creds step would fail (EINVAL) deep in RESTORE_CREDS.
func (p *Plan) checkMapped(u *UserNamespace) error {
	for _, t := range p.Tasks {
		if t.Kind != TaskAlive {
			continue
		}
		c := &t.Creds
		file := fmt.Sprintf("core-%d.img", t.PID)
		for _, x := range []struct {
			what string
			id   uint32
			m    []IDExtent
			mf   string
		}{{"uid", c.UID, u.UIDMap, "uid_map"}, {"euid", c.EUID, u.UIDMap, "uid_map"}, {"suid", c.SUID, u.UIDMap, "uid_map"},
			{"fsuid", c.FSUID, u.UIDMap, "uid_map"}, {"gid", c.GID, u.GIDMap, "gid_map"}, {"egid", c.EGID, u.GIDMap, "gid_map"},
			{"sgid", c.SGID, u.GIDMap, "gid_map"}, {"fsgid", c.FSGID, u.GIDMap, "gid_map"}} {
			if _, ok := hostID(x.m, x.id); !ok {
				return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("%s %d is not in the %s of %s", x.what, x.id, x.mf, u.File)}
			}
		}
		for _, g := range c.Groups {
			if _, ok := hostID(u.GIDMap, g); !ok {
				return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("group %d is not in the gid_map of %s", g, u.File)}
			}
		}
	}
	return nil
}

// hostIDs takes the ids of the images that the engine uses from outside
// the namespace through the maps: the owners of the SysV IPC objects it
// makes (ipcns.go), of the ghost files and memfds it makes (ghost.go,
// memfd.go), of the files of the unix sockets it binds (sockunix.go), of
// the ptys it opens (pty.go, tty.go), the range of
// net/ipv4/ping_group_range it writes (netns_fill.go), and the uid= and
// gid= options of the mounts it makes (mntns_mount.go). After it these
// hold the engine's ids. The owners for SIGIO are taken through the maps
// when they are set (fown.go, ownerUIDs), and checked here. An owner
// CRIU found not mapped (invalidID) is left to the engine, which makes
// the object (hostOwner; an IPC_SET takes no -1: the engine's ids).
func (p *Plan) hostIDs(u *UserNamespace) error {
	ids := func(file, what string, uid, gid *uint32) error {
		h, ok := hostOwner(u.UIDMap, *uid)
		if !ok {
			return &PlanError{File: file, Msg: fmt.Sprintf("%s: owner uid %d is not in the uid_map of %s", what, *uid, u.File)}
		}
		g, ok := hostOwner(u.GIDMap, *gid)
		if !ok {
			return &PlanError{File: file, Msg: fmt.Sprintf("%s: owner gid %d is not in the gid_map of %s", what, *gid, u.File)}
		}
		*uid, *gid = h, g
		return nil
	}
	if ns := p.IPC; ns != nil {
		var objs []*SysVObject
		for i := range ns.Shm {
			objs = append(objs, &ns.Shm[i].SysVObject)
		}
		for i := range ns.Sem {
			objs = append(objs, &ns.Sem[i].SysVObject)
		}
		for i := range ns.Msg {
			objs = append(objs, &ns.Msg[i].SysVObject)
		}
		for _, o := range objs {
			if err := ids(o.File, fmt.Sprintf("entry %d (id %d)", o.Entry, o.ID), &o.UID, &o.GID); err != nil {
				return err
			}
			if o.UID == invalidID {
				o.UID = uint32(os.Geteuid())
			}
			if o.GID == invalidID {
				o.GID = uint32(os.Getegid())
			}
		}
	}
	for _, m := range p.Memfds {
		if m.Anon {
			continue
		}
		if err := ids("memfd.img", fmt.Sprintf("inode %d (%s)", m.InodeID, m.Name), &m.UID, &m.GID); err != nil {
			return err
		}
	}
	if p.remaps != nil {
		for _, g := range p.remaps.order {
			if err := ids(ghostImage(g.ID), "ghost file", &g.UID, &g.GID); err != nil {
				return err
			}
		}
	}
	if err := p.hostFileOwners(u, ids); err != nil {
		return err
	}
	if p.Net != nil {
		for i, s := range p.Net.Sysctls {
			if s.Path != "net/ipv4/ping_group_range" {
				continue
			}
			// the groups that may open ICMP echo sockets, a range of
			// gids inside (CRIU's dump takes them through the maps,
			// an unmapped one -1, which no gid_map maps)
			var lo, hi int64
			if n, _ := fmt.Sscanf(s.Value, "%d %d", &lo, &hi); n != 2 {
				return &PlanError{File: s.From, Msg: fmt.Sprintf("%s: %q is not a range of gids", s.Path, s.Value)}
			}
			hlo, ok1 := hostID(u.GIDMap, uint32(lo))
			hhi, ok2 := hostID(u.GIDMap, uint32(hi))
			if !ok1 || !ok2 || lo < 0 || hi < 0 || lo > 1<<32-1 || hi > 1<<32-1 {
				return &PlanError{File: s.From, Msg: fmt.Sprintf("%s: %d %d is not in the gid_map of %s", s.Path, lo, hi, u.File)}
			}
			p.Net.Sysctls[i].Value = fmt.Sprintf("%d\t%d\n", hlo, hhi)
		}
	}
	if p.Mnt != nil {
		for _, m := range p.Mnt.Mounts {
			opts, err := hostMountOptions(u, m.Options)
			if err != nil {
				return &PlanError{File: p.Mnt.File, Msg: fmt.Sprintf("entry %d: %s: %v", m.Entry, m, err)}
			}
			m.Options = opts
		}
	}
	return nil
}

// hostFileOwners takes through the maps (ids) the owners of the files
// of the unix sockets the engine binds and of the ptys it opens (their
// tty-info entries, copied: the image set's stay as read), and checks
// that every owner for SIGIO maps (ownerUIDs).
func (p *Plan) hostFileOwners(u *UserNamespace, ids func(file, what string, uid, gid *uint32) error) error {
	fileIDs := slices.Sorted(maps.Keys(p.Files))
	for _, id := range fileIDs {
		if f := p.Files[id]; f.Unix != nil && f.Unix.Perms != nil {
			fp := f.Unix.Perms
			if err := ids("files.img", fmt.Sprintf("file %d (unix socket %d)", id, f.Unix.Ino), &fp.UID, &fp.GID); err != nil {
				return err
			}
		}
	}
	host := map[*tty.TtyInfoEntry]*tty.TtyInfoEntry{}
	var err error
	hostInfo := func(e *tty.TtyInfoEntry) *tty.TtyInfoEntry {
		if e == nil || e.Uid == nil || e.Gid == nil || err != nil {
			return e
		}
		if h := host[e]; h != nil {
			return h
		}
		h := proto.Clone(e).(*tty.TtyInfoEntry)
		err = ids("tty-info.img", fmt.Sprintf("entry %d", e.GetId()), h.Uid, h.Gid)
		host[e] = h
		return h
	}
	for _, id := range slices.Sorted(maps.Keys(p.ttys)) {
		p.ttys[id] = hostInfo(p.ttys[id])
	}
	for _, id := range fileIDs {
		if f := p.Files[id]; f.TTY != nil {
			f.TTY.Info = hostInfo(f.TTY.Info)
		}
	}
	for _, i := range slices.Sorted(maps.Keys(p.PTYs)) {
		pp := p.PTYs[i]
		pp.MasterInfo, pp.SlaveInfo = hostInfo(pp.MasterInfo), hostInfo(pp.SlaveInfo)
	}
	if err != nil {
		return err
	}
	for _, id := range slices.Sorted(maps.Keys(p.sigio)) {
		fe, err := p.Dir.File(id)
		if err != nil {
			return &PlanError{File: "files.img", Err: err}
		}
		if o, _ := ownerOf(fe); o.GetPid() != 0 {
			if _, _, err := p.ownerUIDs(o); err != nil {
				return &PlanError{File: "files.img", Msg: fmt.Sprintf("file %d: %v", id, err)}
			}
		}
	}
	return nil
}

// ownerUIDs are the uid and euid of the owner for SIGIO o as the engine
// sets them (fown.go setOwners): the image's, which are ids inside the
// tree's user namespace when it has one (CRIU's dump reads them in the
// task, and its restore sets them there), through the uid_map; as they
// are without an owner, which has none.
func (p *Plan) ownerUIDs(o *fown.FownEntry) (uid, euid uint32, err error) {
	uid, euid = o.GetUid(), o.GetEuid()
	u := p.User
	if u == nil || o.GetPid() == 0 { // no owner: they are not set
		return uid, euid, nil
	}
	h, ok1 := hostOwner(u.UIDMap, uid)
	he, ok2 := hostOwner(u.UIDMap, euid)
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("the owner for SIGIO was set by uid %d euid %d, not both in the uid_map of %s", uid, euid, u.File)
	}
	// CRIU's setresuid(-1) keeps its own: so the engine's
	if h == invalidID {
		h = uint32(os.Getuid())
	}
	if he == invalidID {
		he = uint32(os.Geteuid())
	}
	return h, he, nil
}

// hostMountOptions takes the uid= and gid= options of a mount (tmpfs,
// devpts ...) through the maps; CRIU writes one it found not mapped as
// -1, which is left out: the file system's owner is then the engine,
// which mounts it, as a chown to -1 leaves a file to its maker
// (hostOwner).
func hostMountOptions(u *UserNamespace, options string) (string, error) {
	if options == "" {
		return "", nil
	}
	var out []string
	for _, o := range strings.Split(options, ",") {
		k, v, ok := strings.Cut(o, "=")
		if !ok || (k != "uid" && k != "gid") {
			out = append(out, o)
			continue
		}
		if v == "-1" {
			continue
		}
		id, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return "", fmt.Errorf("option %q: %w", o, err)
		}
		m, what := u.UIDMap, "uid_map"
		if k == "gid" {
			m, what = u.GIDMap, "gid_map"
		}
		h, ok := hostID(m, uint32(id))
		if !ok {
			return "", fmt.Errorf("option %q: %d is not in the %s", o, id, what)
		}
		out = append(out, fmt.Sprintf("%s=%d", k, h))
	}
	return strings.Join(out, ","), nil
}

// cloneEngineRoot is a detached copy of the engine's root mount alone
// (open_tree OPEN_TREE_CLONE, not recursive). The tree's mount namespace
// is born a copy of the engine's owned by the tree's user namespace, in
// which the kernel locked every copied mount to its parent (MNT_LOCKED:
// nothing under one may be revealed), so they can not be detached one by
// one (detachCopies); this copy, made in the engine's namespace, has
// nothing on it and nothing locked.
func cloneEngineRoot() (int, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, "/", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("a copy of the engine's root mount: %w", os.NewSyscallError("open_tree", err))
	}
	return fd, nil
}

// pivotToClone makes clone (cloneEngineRoot) the root mount of the
// calling thread's mount namespace, the tree's: mounted over the old one,
// pivot_root into it with the old one put on top, which is then detached
// with everything on it. The root task's root and working directory move
// with it.
func pivotToClone(clone int) error {
	if err := unix.MoveMount(clone, "", unix.AT_FDCWD, "/", unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("the copy of the engine's root mount over the tree's: %w", os.NewSyscallError("move_mount", err))
	}
	if err := unix.Fchdir(clone); err != nil {
		return os.NewSyscallError("fchdir", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("into the copy of the engine's root mount: %w", os.NewSyscallError("pivot_root", err))
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the locked copies of the engine's mounts: %w", os.NewSyscallError("umount2", err))
	}
	if err := unix.Chdir("/"); err != nil {
		return os.NewSyscallError("chdir", err)
	}
	return nil
}

// shiftOwners takes the owners of every file under dir (a tmpfs just
// filled from its tarball, by a tar outside the tree's user namespace)
// through the maps: CRIU's tar ran inside the namespace and wrote the ids
// as it sees them. A chown clears the set-user-ID and set-group-ID bits,
// which are put back. Nothing without a user namespace.
func shiftOwners(dir string, u *UserNamespace) error {
	if u == nil {
		return nil
	}
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: path, Err: err}
		}
		uid, ok := hostID(u.UIDMap, st.Uid)
		if !ok {
			return fmt.Errorf("%s: owner uid %d is not in the uid_map of %s", path, st.Uid, u.File)
		}
		gid, ok := hostID(u.GIDMap, st.Gid)
		if !ok {
			return fmt.Errorf("%s: owner gid %d is not in the gid_map of %s", path, st.Gid, u.File)
		}
		if uid == st.Uid && gid == st.Gid {
			return nil
		}
		if err := unix.Lchown(path, int(uid), int(gid)); err != nil {
			return &os.PathError{Op: "lchown", Path: path, Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK && st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			if err := unix.Chmod(path, st.Mode&07777); err != nil {
				return &os.PathError{Op: "chmod", Path: path, Err: err}
			}
		}
		return nil
	})
}

// procSight makes procs in a mount namespace owned by the tree's user
// namespace: the kernel mounts a proc there only when one is in sight
// already, whole and uncovered, in that namespace (mount_too_revealing),
// whoever asks; CRIU makes the tree's mounts while the locked copies of
// its own are still there, crest after they are gone (pivotToClone). So
// each proc is made (fsmount) with a copy of the engine's /proc alone
// (open_tree, taken in the engine's namespace) mounted at its mount point
// for the moment, then that copy is detached and the new proc moved
// there.
type procSight struct {
	clones []int // one per proc to make, each used once
}

// newProcSight takes a copy of the engine's /proc for each proc of ns.
func newProcSight(ns *MntNamespace) (*procSight, error) {
	s := &procSight{}
	for _, m := range ns.Mounts {
		if m.Code != mnt.Fstype_PROC {
			continue
		}
		fd, err := unix.OpenTree(unix.AT_FDCWD, "/proc", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("a copy of the engine's /proc: %w", os.NewSyscallError("open_tree", err))
		}
		s.clones = append(s.clones, fd)
	}
	return s, nil
}

// fsmount mounts the created file system of fsfd (detached), with a
// copy of the engine's /proc in sight at mount point at while it does;
// a nil procSight only mounts.
func (s *procSight) fsmount(fsfd, attrs int, at string) (int, error) {
	if s == nil {
		fd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
		if err != nil {
			return -1, os.NewSyscallError("fsmount", err)
		}
		return fd, nil
	}
	if len(s.clones) == 0 { // newProcSight took one for each proc
		return (*procSight)(nil).fsmount(fsfd, attrs, at)
	}
	clone := s.clones[0]
	s.clones = s.clones[1:]
	defer unix.Close(clone)
	if err := unix.MoveMount(clone, "", unix.AT_FDCWD, at, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return -1, fmt.Errorf("a copy of the engine's /proc in sight at %s: %w", at, os.NewSyscallError("move_mount", err))
	}
	fd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
	if uerr := unix.Unmount(at, unix.MNT_DETACH); uerr != nil && err == nil {
		unix.Close(fd)
		return -1, fmt.Errorf("detach the copy of the engine's /proc at %s: %w", at, os.NewSyscallError("umount2", uerr))
	}
	if err != nil {
		return -1, os.NewSyscallError("fsmount", err)
	}
	return fd, nil
}

func (s *procSight) close() {
	if s == nil {
		return
	}
	for _, fd := range s.clones {
		unix.Close(fd)
	}
	s.clones = nil
}

// testMapWrite, nil but in tests, changes a map before the engine writes
// it into the root (pid): a wrong extent, which the read-back must catch.
var testMapWrite func(pid int, file, text string) string

// prepareUserNS writes the maps of the root's new user namespace while
// the root waits at ROOT_TASK, checks them, and moves the file holder
// into the namespace: a step of the root, done by the engine.
func (r *Restore) prepareUserNS() error {
	u := r.plan.User
	if u == nil {
		return nil
	}
	root := r.plan.Root()
	begin := boottime()
	err := r.writeUserMaps(u)
	if err == nil {
		err = r.holder.join(r.rootPID)
	}
	e := StepEvent{PID: root.PID, TID: root.PID, Step: stepUserNS, Stage: StageRootTask, Begin: begin, Engine: true}
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			e.Errno = int(errno)
		}
		r.obs.StepDone(e)
		return &StageError{Stage: StageRootTask, PID: root.PID, Step: stepUserNS, Err: err}
	}
	e.End, e.Succeeded = boottime(), true
	r.obs.StepDone(e)
	return nil
}

// writeUserMaps writes uid_map and gid_map of the root, each in one write
// as the kernel wants it (CRIU's write_id_map), and reads them back.
func (r *Restore) writeUserMaps(u *UserNamespace) error {
	for _, m := range []struct {
		file string
		ext  []IDExtent
	}{{"uid_map", u.UIDMap}, {"gid_map", u.GIDMap}} {
		var b strings.Builder
		for _, e := range m.ext {
			fmt.Fprintf(&b, "%d %d %d\n", e.First, e.LowerFirst, e.Count)
		}
		text := b.String()
		if testMapWrite != nil {
			text = testMapWrite(r.rootPID, m.file, text)
		}
		path := fmt.Sprintf("/proc/%d/%s", r.rootPID, m.file)
		if err := os.WriteFile(path, []byte(text), 0); err != nil {
			return fmt.Errorf("%s of %s: %w", m.file, u.File, err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%s of %s: %w", m.file, u.File, err)
		}
		if want := mapText(m.ext); string(got) != want {
			return fmt.Errorf("%s of %s: the root's reads\n%s\nwant\n%s", m.file, u.File, got, want)
		}
	}
	return nil
}

// filesPidfd is the pidfd the tasks take the engine's files through: the
// engine's own, or with a user namespace the file holder's, started here.
func (r *Restore) filesPidfd() (int, error) {
	if r.plan.User == nil {
		return pidfdOpen(os.Getpid())
	}
	h, err := startFileHolder()
	if err != nil {
		return -1, fmt.Errorf("file holder: %w", err)
	}
	r.holder = h
	fd, err := unix.FcntlInt(uintptr(h.pidfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("file holder: %w", os.NewSyscallError("fcntl", err))
	}
	return fd, nil
}

// fileHolder is a process forked from the engine with CLONE_FILES: it
// has the engine's fd table itself, every file the engine opens or moves
// (placeholders filled in PREPARE_NAMESPACES) the moment it does. It
// waits until it is told the fd of the tree's user namespace, joins it
// (setns: it is single-threaded and has its own fs struct), reports, and
// then sleeps until it is killed or the engine is gone (its pidfd
// readable), when it exits. The tasks, in that namespace with every
// capability there, may take files from it.
type fileHolder struct {
	pid, pidfd int
	ctl, ack   [2]int // pipes: the engine writes the fd to join, the holder the errno of its setns
	engine     int    // the engine's pidfd, which the holder polls
	joined     bool
}

// startFileHolder forks the holder. Its memory is a copy of the engine's,
// in which it runs only the system calls of holderMain.
func startFileHolder() (*fileHolder, error) {
	h := &fileHolder{pid: -1, pidfd: -1, ctl: [2]int{-1, -1}, ack: [2]int{-1, -1}, engine: -1}
	fail := func(err error) (*fileHolder, error) {
		h.close()
		return nil, err
	}
	if err := unix.Pipe2(h.ctl[:], unix.O_CLOEXEC); err != nil {
		return fail(os.NewSyscallError("pipe2", err))
	}
	if err := unix.Pipe2(h.ack[:], unix.O_CLOEXEC); err != nil {
		return fail(os.NewSyscallError("pipe2", err))
	}
	fd, err := pidfdOpen(os.Getpid())
	if err != nil {
		return fail(err)
	}
	h.engine = fd
	runtime.LockOSThread()
	pid, errno := forkFileHolder(h.ctl[0], h.ack[1], h.engine)
	runtime.UnlockOSThread()
	if errno != 0 {
		return fail(os.NewSyscallError("clone", errno))
	}
	h.pid = int(pid)
	if h.pidfd, err = pidfdOpen(h.pid); err != nil {
		syscall.Kill(h.pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		syscall.Wait4(h.pid, &ws, syscall.WALL, nil)
		h.pid = -1
		return fail(err)
	}
	return h, nil
}

// join moves the holder into the user namespace of pid (the root) and
// waits until it reports.
func (h *fileHolder) join(pid int) error {
	ns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: fmt.Sprintf("/proc/%d/ns/user", pid), Err: err}
	}
	// the holder shares this fd table: it finds ns at this number
	defer unix.Close(ns)
	var b [4]byte
	*(*int32)(unsafe.Pointer(&b[0])) = int32(ns)
	if _, err := unix.Write(h.ctl[1], b[:]); err != nil {
		return fmt.Errorf("file holder %d: %w", h.pid, os.NewSyscallError("write", err))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		fds := []unix.PollFd{{Fd: int32(h.ack[0]), Events: unix.POLLIN}, {Fd: int32(h.pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("file holder %d: %w", h.pid, os.NewSyscallError("poll", err))
		}
		if n > 0 && fds[0].Revents&unix.POLLIN != 0 {
			break
		}
		if n > 0 {
			how, _ := exited(h.pidfd)
			return fmt.Errorf("file holder %d ended (%s) before it joined the user namespace", h.pid, how)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("file holder %d did not join the user namespace within 10s", h.pid)
		}
	}
	if _, err := unix.Read(h.ack[0], b[:]); err != nil {
		return fmt.Errorf("file holder %d: %w", h.pid, os.NewSyscallError("read", err))
	}
	if errno := syscall.Errno(*(*int32)(unsafe.Pointer(&b[0]))); errno != 0 {
		return fmt.Errorf("file holder %d: joining the user namespace of the root %d: %w", h.pid, pid, os.NewSyscallError("setns", errno))
	}
	h.joined = true
	return nil
}

// close kills and reaps the holder and closes its pipes.
func (h *fileHolder) close() {
	if h == nil {
		return
	}
	if h.pid > 0 {
		if h.pidfd >= 0 {
			pidfdSignal(h.pidfd, syscall.SIGKILL)
		} else {
			syscall.Kill(h.pid, syscall.SIGKILL)
		}
		var ws syscall.WaitStatus
		for {
			if _, err := syscall.Wait4(h.pid, &ws, syscall.WALL, nil); err != syscall.EINTR {
				break
			}
		}
		h.pid = -1
	}
	for _, fd := range []*int{&h.pidfd, &h.engine, &h.ctl[0], &h.ctl[1], &h.ack[0], &h.ack[1]} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// The holder's side: system calls only. In the child of the clone the Go
// runtime is a frozen copy with a single thread, so nothing here may
// allocate, grow the stack, take a lock or be preempted (every signal is
// blocked across the clone, as runtime_BeforeFork does for os/exec).

const (
	sigSetmask = 2 // SIG_SETMASK
	pollIn     = 0x1
)

type holderPollFd struct {
	fd      int32
	events  int16
	revents int16
}

//go:norace
//go:nocheckptr
//go:nosplit
func forkFileHolder(ctl, ack, engine int) (uintptr, syscall.Errno) {
	all, old := ^uint64(0), uint64(0)
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask, uintptr(unsafe.Pointer(&all)), uintptr(unsafe.Pointer(&old)), 8, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, syscall.CLONE_FILES|uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if errno == 0 && pid == 0 {
		holderMain(ctl, ack, engine)
	}
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask, uintptr(unsafe.Pointer(&old)), 0, 8, 0, 0)
	return pid, errno
}

//go:norace
//go:nocheckptr
//go:nosplit
func holderMain(ctl, ack, engine int) {
	fds := [2]holderPollFd{{fd: int32(ctl), events: pollIn}, {fd: int32(engine), events: pollIn}}
	for {
		n, _, _ := syscall.RawSyscall(syscall.SYS_POLL, uintptr(unsafe.Pointer(&fds[0])), 2, ^uintptr(0))
		if int(n) > 0 {
			break
		}
	}
	if fds[1].revents != 0 {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
	var nsfd, res int32
	n, _, errno := syscall.RawSyscall(syscall.SYS_READ, uintptr(ctl), uintptr(unsafe.Pointer(&nsfd)), 4)
	switch {
	case errno != 0:
		res = int32(errno)
	case n != 4:
		res = int32(syscall.EIO)
	default:
		_, _, errno = syscall.RawSyscall(unix.SYS_SETNS, uintptr(nsfd), syscall.CLONE_NEWUSER, 0)
		res = int32(errno)
	}
	syscall.RawSyscall(syscall.SYS_WRITE, uintptr(ack), uintptr(unsafe.Pointer(&res)), 4)
	if res != 0 {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 1, 0, 0)
	}
	fds[0] = holderPollFd{fd: int32(engine), events: pollIn}
	for {
		n, _, _ := syscall.RawSyscall(syscall.SYS_POLL, uintptr(unsafe.Pointer(&fds[0])), 1, ^uintptr(0))
		if int(n) > 0 {
			syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
		}
	}
}
