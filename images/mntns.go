package images

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"golang.org/x/sys/unix"
)

// What CRIU 4.2 writes of a mount namespace besides mountpoints-ID.img
// (criu/mount.c dump_one_mountpoint, criu/filesystems.c): the names of its
// file system types, the mount flags it keeps, its device numbers and the
// tarballs of tmpfs contents.

// MntFSTypes are the file system types CRIU 4.2 knows (filesystems.c
// fstypes[]), by the name /proc/PID/mountinfo gives them, with the code
// mnt_entry.fstype holds. Every other type is FSTYPE__UNSUPPORTED (btrfs
// is named but unsupported too): CRIU dumps such a mount only as the
// namespace's root, a bind of it, or an external mount.
var MntFSTypes = map[string]mnt.Fstype{
	"proc":        mnt.Fstype_PROC,
	"sysfs":       mnt.Fstype_SYSFS,
	"devtmpfs":    mnt.Fstype_DEVTMPFS,
	"binfmt_misc": mnt.Fstype_BINFMT_MISC,
	"tmpfs":       mnt.Fstype_TMPFS,
	"devpts":      mnt.Fstype_DEVPTS,
	"simfs":       mnt.Fstype_SIMFS,
	"pstore":      mnt.Fstype_PSTORE,
	"mqueue":      mnt.Fstype_MQUEUE,
	"securityfs":  mnt.Fstype_SECURITYFS,
	"fusectl":     mnt.Fstype_FUSECTL,
	"debugfs":     mnt.Fstype_DEBUGFS,
	"tracefs":     mnt.Fstype_TRACEFS,
	"cgroup":      mnt.Fstype_CGROUP,
	"cgroup2":     mnt.Fstype_CGROUP2,
	"aufs":        mnt.Fstype_AUFS,
	"fuse":        mnt.Fstype_FUSE,
	"overlay":     mnt.Fstype_OVERLAYFS,
	"autofs":      mnt.Fstype_AUTOFS,
}

// MntFSName is the file system type name of code, as mount(2) takes it
// ("" for FSTYPE__UNSUPPORTED and FSTYPE__AUTO, whose name is the entry's
// fsname).
func MntFSName(code uint32) string {
	for name, c := range MntFSTypes {
		if uint32(c) == code {
			return name
		}
	}
	return ""
}

// MntFlagWords are the per-mount options of mountinfo's sixth field that
// CRIU keeps in mnt_entry.flags (proc_parse.c parse_mnt_flags); "rw" and
// "ro" are the MS_RDONLY bit.
var MntFlagWords = []struct {
	Word string
	Flag uint32
}{
	{"ro", unix.MS_RDONLY},
	{"nosuid", unix.MS_NOSUID},
	{"nodev", unix.MS_NODEV},
	{"noexec", unix.MS_NOEXEC},
	{"noatime", unix.MS_NOATIME},
	{"nodiratime", unix.MS_NODIRATIME},
	{"relatime", unix.MS_RELATIME},
}

// MntKnownFlags are the per-mount flags of a mount entry (MntFlagWords);
// CRIU adds MS_STRICTATIME when mountinfo has neither relatime nor
// noatime.
const MntKnownFlags = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOATIME |
	unix.MS_NODIRATIME | unix.MS_RELATIME | unix.MS_STRICTATIME

// MntPropagation are the propagation flags of a mount entry (shared:N,
// master:N, unbindable in mountinfo).
const MntPropagation = unix.MS_SHARED | unix.MS_SLAVE | unix.MS_PRIVATE | unix.MS_UNBINDABLE

// Kdev is a device number as CRIU's images hold it (criu/include/kerndat.h
// kdev_t: major in the high 12 bits, minor in the low 20), mnt_entry's
// root_dev and the tmpfs tarballs' names.
func Kdev(major, minor uint32) uint32 { return major<<20 | minor&0xfffff }

// KdevString is "MAJOR:MINOR" of kdev, as mountinfo writes it.
func KdevString(kdev uint32) string { return fmt.Sprintf("%d:%d", kdev>>20, kdev&0xfffff) }

// TmpfsDevImage is the tarball of the tmpfs whose superblock is kdev
// (tmpfs-dev-N.tar.gz.img): a gzipped tar of its files, written by tar
// --create --gzip (CRIU 4.2's tmpfs_dump); one per superblock.
func TmpfsDevImage(kdev uint32) string { return fmt.Sprintf("tmpfs-dev-%d.tar.gz.img", kdev) }

// TmpfsMntImage is the name CRIU before 2.x gave the tarball, by mount
// id (tmpfs-N.tar.gz.img), which CRIU 4.2's restore still reads.
func TmpfsMntImage(mntID uint32) string { return fmt.Sprintf("tmpfs-%d.tar.gz.img", mntID) }
