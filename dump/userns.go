package dump

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
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
// maps: userns_uid).

// idMap is one of the maps of the root's user namespace.
type idMap []*userns.UidGidExtent

// nsID is host id as the namespace sees it (CRIU's userns_id): the
// overflow id, as the kernel shows an unmapped one, when it is not mapped.
func (m idMap) nsID(host uint32) uint32 {
	for _, e := range m {
		lo, n := e.GetLowerFirst(), e.GetCount()
		if host >= lo && uint64(host) < uint64(lo)+uint64(n) {
			return e.GetFirst() + (host - lo)
		}
	}
	return overflowID
}

// overflowID is /proc/sys/kernel/overflowuid's default, what an unmapped
// id reads as; CRIU writes (uid_t)-1 (INVALID_ID), which no restore can
// set either.
const overflowID = 65534

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
