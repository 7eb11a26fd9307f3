package dump

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/procfs"
)

// The tree's own mount namespace, as CRIU 4.2 dumps it (criu/mount.c
// dump_mnt_ns, proc_parse.c parse_mountinfo, filesystems.c): a root in a
// mount namespace other than crest's makes it the tree's (every task in
// it, checkUTSIPC), written as mountpoints-ID.img, one entry per line of
// the root's mountinfo, last line first, and a tarball of each tmpfs,
// tmpfs-dev-N.tar.gz.img (tar --create --gzip of its files, run as CRIU
// runs it). The tree's regular files get the id of the mount they are on
// (mntFileMounts), which the restore opens them through.
//
// Propagation is dumped as CRIU dumps it: each mount's peer group
// (shared:N) and master (master:N) as shared_id and master_id, MS_SHARED,
// MS_SLAVE and MS_UNBINDABLE in its flags.
//
// Only what crest restores is dumped (restore/mntns.go); the rest is
// refused by mount point and type: a slave whose master is no peer
// group of the namespace (the host's mounts: CRIU wants it --external,
// or a bind of its --root), file
// system types other than mntFSDumped, a root mount that is not a whole
// file system, a bind mount with no mount of its file system's root in
// the namespace, a tmpfs whose root is mounted nowhere, a devtmpfs of its
// own, a non-empty mqueue, files not at their path there. A file deleted
// while open or mapped (a ghost) gets the id of the mount it is on.

// mntFSDumped are the types whose mounts the restore makes anew.
var mntFSDumped = map[mnt.Fstype]bool{
	mnt.Fstype_PROC: true, mnt.Fstype_SYSFS: true, mnt.Fstype_DEVTMPFS: true, mnt.Fstype_TMPFS: true,
	mnt.Fstype_DEVPTS: true, mnt.Fstype_MQUEUE: true, mnt.Fstype_CGROUP: true, mnt.Fstype_CGROUP2: true,
	mnt.Fstype_DEBUGFS: true, mnt.Fstype_TRACEFS: true,
}

// mountInfo is one line of a mountinfo file, as CRIU parses it.
type mountInfo struct {
	id, parent  uint32
	dev         uint32 // kdev
	root, point string
	fstype      string // with its subtype cut
	entry       *mnt.MntEntry
}

// readMountinfo parses /proc/PID/mountinfo into CRIU's mount entries, in
// the file's order.
func readMountinfo(pid int) ([]*mountInfo, error) {
	path := procPath(pid, "mountinfo")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*mountInfo
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		w := strings.Fields(line)
		sep := slices.Index(w, "-")
		if len(w) < 9 || sep < 6 || len(w) < sep+3 {
			return nil, fmt.Errorf("%s line %d: %q is not a mountinfo line", path, n, line)
		}
		id, err1 := strconv.ParseUint(w[0], 10, 32)
		parent, err2 := strconv.ParseUint(w[1], 10, 32)
		maj, min, ok := strings.Cut(w[2], ":")
		ma, err3 := strconv.ParseUint(maj, 10, 32)
		mi, err4 := strconv.ParseUint(min, 10, 32)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || !ok {
			return nil, fmt.Errorf("%s line %d: %q is not a mountinfo line", path, n, line)
		}
		m := &mountInfo{id: uint32(id), parent: uint32(parent), dev: images.Kdev(uint32(ma), uint32(mi)),
			root: procfs.UnescapeMountPath(w[3]), point: procfs.UnescapeMountPath(w[4])}
		m.fstype, _, _ = strings.Cut(w[sep+1], ".")
		e := &mnt.MntEntry{MntId: proto.Uint32(m.id), ParentMntId: proto.Uint32(m.parent), RootDev: proto.Uint32(m.dev),
			Root: proto.String(m.root), Mountpoint: proto.String(m.point), SharedId: proto.Uint32(0), MasterId: proto.Uint32(0)}
		code := images.MntFSTypes[m.fstype]
		e.Fstype = proto.Uint32(uint32(code))
		var flags uint32
		for _, o := range strings.Split(w[5], ",") {
			for _, f := range images.MntFlagWords {
				if o == f.Word {
					flags |= f.Flag
				}
			}
		}
		// the kernel's default otherwise (parse_mnt_flags)
		if flags&(unix.MS_RELATIME|unix.MS_NOATIME) == 0 {
			flags |= unix.MS_STRICTATIME
		}
		for _, o := range w[6:sep] {
			k, v, _ := strings.Cut(o, ":")
			n, _ := strconv.ParseUint(v, 10, 32)
			switch k {
			case "shared":
				flags |= unix.MS_SHARED
				e.SharedId = proto.Uint32(uint32(n))
			case "master":
				flags |= unix.MS_SLAVE
				e.MasterId = proto.Uint32(uint32(n))
			case "unbindable":
				flags |= unix.MS_UNBINDABLE
			}
		}
		e.Flags = proto.Uint32(flags)
		source, super := "", ""
		if len(w) > sep+3 {
			source, super = procfs.UnescapeMountPath(w[sep+2]), w[sep+3]
		} else {
			super = w[sep+2] // no source
		}
		e.Source = proto.String(source)
		var sb uint32
		var opts []string
		for _, o := range strings.Split(super, ",") {
			switch o {
			case "rw":
			case "ro":
				sb |= unix.MS_RDONLY
			default:
				opts = append(opts, o)
			}
		}
		e.SbFlags = proto.Uint32(sb)
		e.Options = proto.String(strings.Join(opts, ","))
		m.entry = e
		out = append(out, m)
	}
	return out, sc.Err()
}

// writeMnt writes the images of the tree's own mount namespace.
func (d *dumper) writeMnt() error {
	if !d.ownMnt {
		return nil
	}
	root := d.tree.root
	ino, err := nsInode(root.pid, "mnt")
	if err != nil {
		return err
	}
	name := fmt.Sprintf("mountpoints-%d.img", d.ns.id(ino))
	mounts, err := readMountinfo(root.pid)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	unsupported := func(m *mountInfo, why string) error {
		return &UnsupportedError{Task: int(root.nsPid), Resource: "mount", What: fmt.Sprintf("%s (%s, id %d)", m.point, m.fstype, m.id), Why: why}
	}
	byID := map[uint32]*mountInfo{}
	groups := map[uint32]bool{} // the peer groups of the namespace
	for _, m := range mounts {
		byID[m.id] = m
		if id := m.entry.GetSharedId(); id != 0 {
			groups[id] = true
		}
	}
	var nsRoot *mountInfo
	for _, m := range mounts {
		if byID[m.parent] == nil {
			if nsRoot != nil || m.point != "/" {
				return unsupported(m, fmt.Sprintf("a mount whose parent %d is outside the namespace, not at / or not the only one", m.parent))
			}
			nsRoot = m
		}
	}
	if nsRoot == nil {
		return fmt.Errorf("%s: no root mount in %s", name, procPath(root.pid, "mountinfo"))
	}
	if nsRoot.root != "/" {
		return unsupported(nsRoot, "a root mount that is "+nsRoot.root+" of its file system, not its root: its restore needs CRIU's --root")
	}
	hostDevtmpfs, err := devtmpfsDevs()
	if err != nil {
		return err
	}
	tarred := map[uint32]bool{}
	var entries []images.Entry
	for _, m := range mounts {
		e := m.entry
		d.userMountOptions(e) // userns.go
		switch {
		case e.GetMasterId() != 0 && !groups[e.GetMasterId()]:
			// CRIU: "has unreachable sharing. Try --enable-external-masters."
			return unsupported(m, fmt.Sprintf("a slave of peer group %d, which no mount of the tree's mount namespace is in: a master outside the namespace (external sharing) is not supported", e.GetMasterId()))
		case strings.HasSuffix(m.root, " (deleted)"):
			return unsupported(m, "a bind mount of a deleted file or directory is not supported")
		case m.fstype == "tmpfs" && slices.ContainsFunc(strings.Split(e.GetOptions(), ","), func(o string) bool { return o == "sync" || o == "dirsync" || o == "mand" }):
			return unsupported(m, "superblock options sync, dirsync or mand are not supported")
		}
		code := mnt.Fstype(e.GetFstype())
		if m.dev == nsRoot.dev && m.fstype == nsRoot.fstype {
			continue // the root, or a bind of its file system
		}
		if !mntFSDumped[code] {
			return unsupported(m, "file system type "+m.fstype+" is not supported (only the root's, proc, sysfs, devtmpfs, tmpfs, devpts, mqueue, cgroup, cgroup2, debugfs and tracefs)")
		}
		// a bind of a subdirectory needs a mount of its file system
		// (CRIU: "doesn't have a proper root mount")
		if m.root != "/" && !slices.ContainsFunc(mounts, func(o *mountInfo) bool {
			return o.dev == m.dev && o.fstype == m.fstype && (o.root == "/" || strings.HasPrefix(m.root, o.root+"/") || o.root == m.root) && o != m
		}) {
			return unsupported(m, "a bind mount of "+m.root+" with no mount of its file system's root in the namespace")
		}
		switch code {
		case mnt.Fstype_DEVTMPFS:
			if !hostDevtmpfs[m.dev] {
				return unsupported(m, "a devtmpfs of its own is not supported")
			}
		case mnt.Fstype_MQUEUE, mnt.Fstype_PSTORE:
			if err := emptyMount(root.pid, m); err != nil {
				return unsupported(m, err.Error())
			}
		case mnt.Fstype_TMPFS:
			if tarred[m.dev] {
				continue
			}
			fsroot := m
			if m.root != "/" {
				i := slices.IndexFunc(mounts, func(o *mountInfo) bool { return o.dev == m.dev && o.fstype == "tmpfs" && o.root == "/" })
				if i < 0 {
					return unsupported(m, "a tmpfs whose root is mounted nowhere in the namespace: its files can not be dumped")
				}
				fsroot = mounts[i]
			}
			if err := d.tarTmpfs(root.pid, fsroot); errors.Is(err, errMountCovered) {
				return unsupported(fsroot, "a tmpfs under another mount at the same place: its files can not be read (a covered mount is not supported)")
			} else if err != nil {
				return err
			}
			tarred[m.dev] = true
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		entries = append(entries, images.Entry{Message: mounts[i].entry})
	}
	return d.write(name, images.KindMnts, entries...)
}

// devtmpfsDevs are the devices of the devtmpfs mounts crest sees: a
// tree's devtmpfs of another is its own (CRIU's "virtualized").
func devtmpfsDevs() (map[uint32]bool, error) {
	ms, err := readMountinfo(os.Getpid())
	if err != nil {
		return nil, err
	}
	out := map[uint32]bool{}
	for _, m := range ms {
		if m.fstype == "devtmpfs" {
			out[m.dev] = true
		}
	}
	return out, nil
}

// openMount opens the root of mount m of task pid's namespace, through
// its root, and checks it is that mount (nothing covers it).
func openMount(pid int, m *mountInfo) (*os.File, error) {
	path := procPath(pid, "root") + m.point
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "statx", Path: path, Err: err}
	}
	if stx.Mnt_id != uint64(m.id) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is mount %d, not %d: %w", path, stx.Mnt_id, m.id, errMountCovered)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// errMountCovered: a mount is under another at its mount point, where
// crest can not reach it (CRIU clones it on its own).
var errMountCovered = errors.New("another mount covers it")

// emptyMount checks that mount m has no files (CRIU's dump_empty_fs).
func emptyMount(pid int, m *mountInfo) error {
	f, err := openMount(pid, m)
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) > 0 {
		return fmt.Errorf("%s is not empty (%s), which is not supported", m.fstype, names[0])
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// tarTmpfs writes the files of tmpfs m into tmpfs-dev-N.tar.gz.img with
// tar, as CRIU's tmpfs_dump runs it (its directory on fd 0).
func (d *dumper) tarTmpfs(pid int, m *mountInfo) error {
	name := images.TmpfsDevImage(m.dev)
	dir, err := openMount(pid, m)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer dir.Close()
	tar, err := exec.LookPath("tar")
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	out, err := os.OpenFile(d.path(name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	owners, done, err := d.tarOwnerMaps(dir.Name()) // userns.go
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer done()
	var msg bytes.Buffer
	cmd := &exec.Cmd{
		Path: tar,
		Args: append(append([]string{"tar", "--create", "--gzip", "--no-unquote", "--no-wildcards", "--one-file-system", "--check-links",
			"--preserve-permissions", "--sparse", "--numeric-owner"}, owners...), "--directory", "/proc/self/fd/0", "."),
		Env:    []string{"PATH=/usr/bin:/bin", "LC_ALL=C"},
		Stdin:  dir,
		Stdout: out,
		Stderr: &msg,
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: tar --create of %s: %w: %s", name, m.point, err, bytes.TrimSpace(msg.Bytes()))
	}
	return out.Close()
}

// mntFileMounts gives every regular file of the images the id of the
// mount it is on in the tree's mount namespace, as CRIU's mnt_id: the
// mount its path reaches there (through the root's /proc/PID/root), or
// for a file deleted while open or mapped (a ghost, ghost.go) the mount
// its fd or mapping is on, which must be one of the namespace's.
func (d *dumper) mntFileMounts() error {
	if !d.ownMnt {
		return nil
	}
	root := d.tree.root
	var mounts []*mountInfo
	for _, fe := range d.files.entries {
		r := fe.GetReg()
		if r == nil || r.MntId != nil {
			continue
		}
		if id, ok := d.files.ghosts.mounts[r.GetId()]; ok {
			if mounts == nil {
				var err error
				if mounts, err = readMountinfo(root.pid); err != nil {
					return err
				}
			}
			if !slices.ContainsFunc(mounts, func(m *mountInfo) bool { return uint64(m.id) == id }) {
				return &UnsupportedError{Task: int(root.nsPid), Resource: "file", What: r.GetName() + " (deleted)",
					Why: fmt.Sprintf("deleted while open, on mount %d, which is not in the tree's mount namespace", id)}
			}
			r.MntId = proto.Int32(int32(id))
			continue
		}
		path := procPath(root.pid, "root") + r.GetName()
		var stx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &stx); err != nil {
			return &UnsupportedError{Task: int(root.nsPid), Resource: "file", What: r.GetName(),
				Why: fmt.Sprintf("not at its path in the tree's mount namespace (%v)", err)}
		}
		r.MntId = proto.Int32(int32(stx.Mnt_id))
	}
	return nil
}
