package dump

import (
	"bufio"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	ipc_desc "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-desc"
	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/userns"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
)

// The tree's own user namespace, as CRIU 4.2 dumps it (criu/namespaces.c,
// dump_user_ns): when the root's user namespace is not the dumper's,
// userns-ID.img holds its uid_map and gid_map as the dumper reads them
// (the lower ids in the dumper's namespace), every task must be in it,
// and every other namespace of the tree's own must be owned by it
// (check_user_ns), since the restore makes them from inside it. The ids
// of the cores' credentials are written as the namespace sees them
// (CRIU's parasite reads them in the task; crest reads /proc, which shows
// them as the dumper's namespace does, and takes them back through the
// maps: userns_uid), and so are the owners of the tree's objects (files,
// SysV IPC, tmpfs contents, ping_group_range: userOwners and what follows
// it), which its restore sets from inside the namespace.

// idMap is one of the maps of the root's user namespace.
type idMap []*userns.UidGidExtent

// nsID is host id as the namespace sees it (CRIU's userns_id): the
// overflow id, as the kernel shows an unmapped one, when it is not mapped.
func (m idMap) nsID(host uint32) uint32 {
	if id, ok := m.inside(host); ok {
		return id
	}
	return overflowID
}

// inside is host as the namespace sees it (map_id_up); false when the
// maps do not map it.
func (m idMap) inside(host uint32) (uint32, bool) {
	for _, e := range m {
		lo, n := e.GetLowerFirst(), e.GetCount()
		if host >= lo && uint64(host) < uint64(lo)+uint64(n) {
			return e.GetFirst() + (host - lo), true
		}
	}
	return 0, false
}

// overflowID is /proc/sys/kernel/overflowuid's default, what an unmapped
// id reads as; CRIU writes (uid_t)-1 (INVALID_ID), which no restore can
// set either.
const overflowID = 65534

// invalidID is CRIU's INVALID_ID, (uid_t)-1: what its userns_uid and
// userns_gid give for an owner the maps do not map.
const invalidID = ^uint32(0)

// owner is host, the owner of an object as crest sees it, as the
// namespace sees it, as CRIU's userns_uid writes it: invalidID when it
// is not mapped (a chown to it changes nothing: the restore leaves such
// an object to whoever makes it).
func (m idMap) owner(host uint32) uint32 {
	if id, ok := m.inside(host); ok {
		return id
	}
	return invalidID
}

// userNS is the root's own user namespace, nil when it is the dumper's.
type userNS struct {
	id       uint32
	uid, gid idMap
}

// checkUserNS decides whether the tree has a user namespace of its own
// (the root's, not crest's), refuses tasks in another one, nested or not,
// and namespaces of the tree's own that it does not own, and writes
// userns-ID.img.
func (d *dumper) checkUserNS() error {
	root := d.tree.root
	rootIno, err := nsInode(root.pid, "user")
	if err != nil {
		return fmt.Errorf("%s: %w", root, err)
	}
	own := rootIno != d.ns.own["user"]
	for _, t := range d.tree.tasks {
		if t.dead != nil || t == root {
			continue // a zombie has left its namespaces
		}
		ino, err := nsInode(t.pid, "user")
		if err != nil {
			return fmt.Errorf("%s: %w", t, err)
		}
		if ino == rootIno {
			continue
		}
		why := "a task in a user namespace other than the root's is not supported (nor by CRIU)"
		if parent, err := userNSParent(t.pid); err == nil && parent == rootIno {
			why = "a nested user namespace is not supported (nor by CRIU): only the root's own"
		}
		return &UnsupportedError{Task: t.pid, Resource: "user namespace", Why: why}
	}
	if !own {
		return nil
	}
	// The ids of the root's namespaces, in the order its ids-N.img gives
	// them (setNS), before the image names one of them: as CRIU numbers
	// them.
	for _, kind := range nsKinds {
		ino, err := nsInode(root.pid, kind)
		if err != nil {
			return fmt.Errorf("%s: %w", root, err)
		}
		d.ns.id(ino)
	}
	u := &userNS{id: d.ns.id(rootIno)}
	if u.uid, err = readIDMap(procPath(root.pid, "uid_map")); err != nil {
		return fmt.Errorf("%s: %w", root, err)
	}
	if u.gid, err = readIDMap(procPath(root.pid, "gid_map")); err != nil {
		return fmt.Errorf("%s: %w", root, err)
	}
	if len(u.uid) == 0 || len(u.gid) == 0 {
		return &UnsupportedError{Task: root.pid, Resource: "user namespace", Why: "its uid_map or gid_map was never written"}
	}
	// The namespaces the restore makes with the root's user namespace
	// belong to it: so must the dumped ones (CRIU's check_user_ns). Not
	// the time namespace: crest restores one made before the user
	// namespace (the launcher's), and makes it anew either way.
	for _, kind := range []string{"pid", "net", "ipc", "uts", "mnt"} {
		ino, err := nsInode(root.pid, kind)
		if err != nil {
			return fmt.Errorf("%s: %w", root, err)
		}
		if ino == d.ns.own[kind] {
			continue
		}
		owner, err := nsOwner(root.pid, kind)
		if err != nil {
			return fmt.Errorf("%s: %w", root, err)
		}
		if owner != rootIno {
			return &UnsupportedError{Task: root.pid, Resource: kind + " namespace",
				Why: "of the tree's own but not owned by its user namespace: the restore makes it from inside that one (CRIU refuses it too)"}
		}
	}
	d.userNS = u
	d.files.ghosts.user = u // ghost.go
	e := &userns.UsernsEntry{UidMap: u.uid, GidMap: u.gid}
	return d.write(fmt.Sprintf("userns-%d.img", u.id), images.KindUserNS, images.Entry{Message: e})
}

// readIDMap parses /proc/PID/uid_map or gid_map: "first lower count" per
// line, the lower ids as crest's namespace sees them.
func readIDMap(path string) (idMap, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var m idMap
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			return nil, fmt.Errorf("%s: line %q", path, sc.Text())
		}
		var v [3]uint32
		for i, s := range fields {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%s: line %q: %w", path, sc.Text(), err)
			}
			v[i] = uint32(n)
		}
		m = append(m, &userns.UidGidExtent{First: proto.Uint32(v[0]), LowerFirst: proto.Uint32(v[1]), Count: proto.Uint32(v[2])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// userCreds writes the ids of a thread's core as its user namespace sees
// them; nothing without a user namespace of the tree's own.
func (d *dumper) userCreds(core *criu_core.CoreEntry) {
	u := d.userNS
	if u == nil {
		return
	}
	if c := core.GetThreadCore().GetCreds(); c != nil {
		for _, x := range []struct {
			v *uint32
			m idMap
		}{{c.Uid, u.uid}, {c.Euid, u.uid}, {c.Suid, u.uid}, {c.Fsuid, u.uid},
			{c.Gid, u.gid}, {c.Egid, u.gid}, {c.Sgid, u.gid}, {c.Fsgid, u.gid}} {
			if x.v != nil {
				*x.v = x.m.nsID(*x.v)
			}
		}
		for i, g := range c.Groups {
			c.Groups[i] = u.gid.nsID(g)
		}
	}
	// an unset loginuid, (uid_t)-1, is never mapped and stays so
	if tc := core.GetTc(); tc != nil && tc.Loginuid != nil && tc.GetLoginuid() != ^uint32(0) {
		*tc.Loginuid = u.uid.nsID(tc.GetLoginuid())
	}
}

// ownerUID and ownerGID are the owner of an object (host, as crest sees
// it) as the tree's user namespace sees it (idMap.owner); host itself
// without a user namespace of the tree's own.
func (u *userNS) ownerUID(host uint32) uint32 {
	if u == nil {
		return host
	}
	return u.uid.owner(host)
}

func (u *userNS) ownerGID(host uint32) uint32 {
	if u == nil {
		return host
	}
	return u.gid.owner(host)
}

// The owners of the tree's objects, as the tree's user namespace sees
// them: CRIU reads some in the task (its parasite's F_GETOWNER_UIDS
// answers in the caller's namespace) and takes the others through the
// maps (userns_uid, userns_gid), and its restore sets them from inside
// (crest's through the maps again: restore/userns.go hostIDs). crest
// reads them all from outside, as host ids. Taken where they are
// written: ghost files (ghost.go, ghostTable.user), SysV IPC objects
// (userIPC), net/ipv4/ping_group_range (userPingGroups), uid= and gid=
// mount options (userMountOptions), the files of a tmpfs (tarOwnerMaps);
// the rest, kept until the end of the tasks' dump, by userOwners.

// userOwners takes through the maps the owners of the files the tasks
// hold: the uid and euid of an owner for SIGIO (fown_entry), the owner
// of a bound unix socket's file (sk-unix.c), of a memfd (memfd.c), of a
// pty's end (tty.c). Nothing without a user namespace of the tree's own.
func (d *dumper) userOwners() {
	u := d.userNS
	if u == nil {
		return
	}
	for _, fe := range d.files.entries {
		if p, _ := images.FileFown(fe); p != nil && *p != nil && (*p).GetPid() != 0 {
			o := *p
			o.Uid, o.Euid = proto.Uint32(u.ownerUID(o.GetUid())), proto.Uint32(u.ownerUID(o.GetEuid()))
		}
		if fp := fe.GetUsk().GetFilePerms(); fp != nil {
			fp.Uid, fp.Gid = proto.Uint32(u.ownerUID(fp.GetUid())), proto.Uint32(u.ownerGID(fp.GetGid()))
		}
	}
	for _, in := range d.files.memfdOrder {
		in.entry.Uid, in.entry.Gid = proto.Uint32(u.ownerUID(in.entry.GetUid())), proto.Uint32(u.ownerGID(in.entry.GetGid()))
	}
	for _, e := range d.files.ttys.infos {
		if info, ok := e.Message.(*tty.TtyInfoEntry); ok && info.Uid != nil && info.Gid != nil {
			info.Uid, info.Gid = proto.Uint32(u.ownerUID(info.GetUid())), proto.Uint32(u.ownerGID(info.GetGid()))
		}
	}
}

// userIPC takes the owners and creators of the SysV IPC objects of
// entries (one image of ipcns-{shm,msg,sem}-ID.img) through the maps, as
// CRIU's dump_ipc_desc: IPC_STAT answers in crest's namespace.
func (d *dumper) userIPC(entries []images.Entry) {
	u := d.userNS
	if u == nil {
		return
	}
	for _, e := range entries {
		var desc *ipc_desc.IpcDescEntry
		switch m := e.Message.(type) {
		case *ipc_shm.IpcShmEntry:
			desc = m.GetDesc()
		case *ipc_msg.IpcMsgEntry:
			desc = m.GetDesc()
		case *ipc_sem.IpcSemEntry:
			desc = m.GetDesc()
		}
		if desc == nil {
			continue // a message of a queue
		}
		desc.Uid, desc.Cuid = proto.Uint32(u.ownerUID(desc.GetUid())), proto.Uint32(u.ownerUID(desc.GetCuid()))
		desc.Gid, desc.Cgid = proto.Uint32(u.ownerGID(desc.GetGid())), proto.Uint32(u.ownerGID(desc.GetCgid()))
	}
}

// userPingGroups takes net/ipv4/ping_group_range of conf (read by crest:
// host gids) through the gid map, as CRIU's
// ipv4_sysctls_ping_group_range_map_gid writes it: "%d\t%d\n", an
// unmapped end -1. The default, "1 0" (no group), has no value.
func (d *dumper) userPingGroups(conf *netdev.NetnsEntry) {
	u := d.userNS
	if u == nil || len(conf.GetIpv4Sysctl()) == 0 || conf.Ipv4Sysctl[0].Sarg == nil {
		return
	}
	e := conf.Ipv4Sysctl[0]
	var lo, hi uint32
	if n, _ := fmt.Sscanf(e.GetSarg(), "%d %d", &lo, &hi); n != 2 {
		return // netnsConf checked it
	}
	e.Sarg = proto.String(fmt.Sprintf("%d\t%d\n", int32(u.ownerGID(lo)), int32(u.ownerGID(hi))))
}

// userMountOptions takes the uid= and gid= options of a mount through
// the maps, as CRIU's sb_opt_cb (the kernel shows them as the initial
// user namespace sees them; CRIU writes an unmapped one as -1).
func (d *dumper) userMountOptions(e *mnt.MntEntry) {
	u := d.userNS
	if u == nil || e.GetOptions() == "" {
		return
	}
	opts := strings.Split(e.GetOptions(), ",")
	for i, o := range opts {
		k, v, ok := strings.Cut(o, "=")
		if !ok || (k != "uid" && k != "gid") {
			continue
		}
		id, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			continue
		}
		ns := u.ownerUID(uint32(id))
		if k == "gid" {
			ns = u.ownerGID(uint32(id))
		}
		opts[i] = fmt.Sprintf("%s=%d", k, int32(ns))
	}
	e.Options = proto.String(strings.Join(opts, ","))
}

// tarOwnerMaps returns tar's options that write the owners of the files
// of the tmpfs at dir (one file system: tar --one-file-system) as the
// tree's user namespace sees them: CRIU runs its tar in that namespace
// (tmpfs_dump, cr_system_userns), where stat shows an unmapped owner as
// the overflow id. An --owner-map and a --group-map list every id of
// those files; done removes them. Nothing without a user namespace of
// the tree's own.
func (d *dumper) tarOwnerMaps(dir string) (args []string, done func(), err error) {
	u := d.userNS
	if u == nil {
		return nil, func() {}, nil
	}
	var root unix.Stat_t
	if err := unix.Stat(dir, &root); err != nil {
		return nil, nil, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	uids, gids := map[uint32]bool{}, map[uint32]bool{}
	err = filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: path, Err: err}
		}
		if st.Dev != root.Dev {
			if de.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		uids[st.Uid], gids[st.Gid] = true, true
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	var files []string
	done = func() {
		for _, f := range files {
			os.Remove(f)
		}
	}
	for _, m := range []struct {
		opt string
		ids map[uint32]bool
		to  idMap
	}{{"--owner-map", uids, u.uid}, {"--group-map", gids, u.gid}} {
		var b strings.Builder
		for _, id := range slices.Sorted(maps.Keys(m.ids)) {
			fmt.Fprintf(&b, "+%d +%d\n", id, m.to.nsID(id))
		}
		f, err := os.CreateTemp("", "crest-tar"+m.opt[1:]+"-")
		if err != nil {
			done()
			return nil, nil, err
		}
		files = append(files, f.Name())
		_, err = f.WriteString(b.String())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			done()
			return nil, nil, err
		}
		args = append(args, m.opt+"="+f.Name())
	}
	return args, done, nil
}

// userReadable lets everyone read the images, as CRIU writes them
// (CR_FD_PERM, 0644): CRIU's restore reads most of them in the tree's
// root task, inside its user namespace, where the dumper (host root) is
// not mapped when the namespace's root is not it, and so not the owner.
// Nothing without a user namespace of the tree's own.
func (d *dumper) userReadable() error {
	if d.userNS == nil {
		return nil
	}
	ents, err := os.ReadDir(d.tmp)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			if err := os.Chmod(d.path(e.Name()), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// nsOwner is the inode of the user namespace that owns pid's namespace
// kind (NS_GET_USERNS).
func nsOwner(pid int, kind string) (uint64, error) {
	return nsIoctlIno(procPath(pid, "ns", kind), unix.NS_GET_USERNS)
}

// userNSParent is the inode of the parent of pid's user namespace
// (NS_GET_PARENT).
func userNSParent(pid int) (uint64, error) {
	return nsIoctlIno(procPath(pid, "ns", "user"), unix.NS_GET_PARENT)
}

func nsIoctlIno(path string, req uint) (uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	nfd, err := unix.IoctlRetInt(fd, req)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, os.NewSyscallError("ioctl", err))
	}
	defer unix.Close(nfd)
	var st unix.Stat_t
	if err := unix.Fstat(nfd, &st); err != nil {
		return 0, fmt.Errorf("%s: %w", path, os.NewSyscallError("fstat", err))
	}
	return st.Ino, nil
}
