package dump

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fh"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fsnotify"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/internal/procfs"
)

// Inotify files. CRIU 4.2 writes an inotify file as its files.img entry
// (type INOTIFY, FileEntry.ify) with its watches inline, one
// inotify_wd_entry per "inotify wd:" line of /proc/PID/fdinfo/FD
// (criu/fsnotify.c dump_one_inotify; the separate inotify.img and
// inotify-wd.img are the layout of older CRIUs). A watch is kept as the
// kernel shows it: wd, mask, ignored_mask, the watched inode and its
// device (sdev, the kernel's own dev_t encoding, as CRIU keeps it), and
// the inode's file handle, whose bytes CRIU packs into sixteen u64 words
// (FhEntry.handle, native byte order, zero-padded).
//
// FhEntry.path is the watched file's path, which CRIU 4.2 always tries to
// find (check_open_handle): a handle does not outlive a tmpfs, and a
// restore elsewhere finds the file only by its path. It is found as CRIU
// finds it: the handle opened with open_by_handle_at(2) through a mount
// of the inode's device, then that fd's /proc link, which must lead to
// the same inode. A watch whose handle can not be resolved so (a deleted
// file, a file of another mount namespace, a filesystem whose handles do
// not open, such as /proc) is refused; CRIU would search the whole
// filesystem for the inode then (irmap), crest does not.
//
// Events queued on the inotify file at the dump are not kept: the images
// have no place for them (CRIU drops them too, with a warning). A program
// that reads after the restore finds only the events since.

// inotifyEntry reads inotify fd of process pid from its fdinfo. why is
// set, and the entry nil, for a watch whose file can not be found.
func inotifyEntry(id, flags uint32, pid, fd int) (e *fsnotify.InotifyFileEntry, why string, err error) {
	// readFdinfo keeps one line per key: the watches are read here.
	b, err := os.ReadFile(procPath(pid, "fdinfo", strconv.Itoa(fd)))
	if err != nil {
		return nil, "", err
	}
	e = &fsnotify.InotifyFileEntry{Id: proto.Uint32(id), Flags: proto.Uint32(flags), Fown: zeroFown()}
	var mounts []procfs.Mount
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "inotify ") {
			continue
		}
		w, err := parseInotifyWd(line)
		if err != nil {
			return nil, "", err
		}
		// CRIU 4.2 leaves the id of an inline watch 0 and reads it
		// from older images only, where it names the inotify file:
		// that is what it is set to here.
		w.Id = proto.Uint32(id)
		if mounts == nil {
			if mounts, err = procfs.ReadMountinfo("/proc/self/mountinfo"); err != nil {
				return nil, "", err
			}
		}
		path, why, err := watchPath(mounts, w)
		if err != nil {
			return nil, "", err
		}
		if why != "" {
			return nil, fmt.Sprintf("inotify watch wd %d on inode %d of device %d:%d: %s",
				w.GetWd(), w.GetIIno(), kernelMajor(w.GetSDev()), kernelMinor(w.GetSDev()), why), nil
		}
		w.FHandle.Path = proto.String(path)
		e.Wd = append(e.Wd, w)
	}
	return e, "", nil
}

// fhWords is how many u64 words CRIU writes of a file handle
// (FH_ENTRY_SIZES__min_entries): the 128 bytes the kernel prints at most.
const fhWords = 16

// parseInotifyWd reads an "inotify wd:" line of an inotify's fdinfo,
// which the kernel prints as "inotify wd:%x ino:%lx sdev:%x mask:%x
// ignored_mask:%x" and, when the filesystem encodes handles,
// "fhandle-bytes:%x fhandle-type:%x f_handle:%02x..." (all hexadecimal).
// A watch without a handle has an empty FhEntry (bytes 0).
func parseInotifyWd(line string) (*fsnotify.InotifyWdEntry, error) {
	vals := map[string]string{}
	for _, f := range strings.Fields(strings.TrimPrefix(line, "inotify ")) {
		k, v, _ := strings.Cut(f, ":")
		vals[k] = v
	}
	num := func(key string, bits int) (uint64, error) {
		v, ok := vals[key]
		if !ok {
			return 0, fmt.Errorf("%q: no %s", line, key)
		}
		n, err := strconv.ParseUint(v, 16, bits)
		if err != nil {
			return 0, fmt.Errorf("%q: %s: %w", line, key, err)
		}
		return n, nil
	}
	wd, err1 := num("wd", 32)
	ino, err2 := num("ino", 64)
	sdev, err3 := num("sdev", 32)
	mask, err4 := num("mask", 32)
	ignored, err5 := num("ignored_mask", 32)
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return nil, err
	}
	w := &fsnotify.InotifyWdEntry{Wd: proto.Uint32(uint32(wd)), IIno: proto.Uint64(ino), SDev: proto.Uint32(uint32(sdev)),
		Mask: proto.Uint32(uint32(mask)), IgnoredMask: proto.Uint32(uint32(ignored)),
		FHandle: &fh.FhEntry{Bytes: proto.Uint32(0), Type: proto.Uint32(0), Handle: make([]uint64, fhWords)}}
	if _, ok := vals["fhandle-bytes"]; !ok {
		return w, nil
	}
	nbytes, err1 := num("fhandle-bytes", 32)
	typ, err2 := num("fhandle-type", 32)
	raw, err3 := hex.DecodeString(vals["f_handle"])
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("%q: file handle: %w", line, err)
	}
	if nbytes != uint64(len(raw)) || len(raw) > 8*fhWords {
		return nil, fmt.Errorf("%q: file handle of %d bytes, %d given", line, nbytes, len(raw))
	}
	var words [8 * fhWords]byte
	copy(words[:], raw)
	for i := range w.FHandle.Handle {
		w.FHandle.Handle[i] = binary.NativeEndian.Uint64(words[8*i:])
	}
	w.FHandle.Bytes, w.FHandle.Type = proto.Uint32(uint32(nbytes)), proto.Uint32(uint32(typ))
	return w, nil
}

// handleBytes gives back the bytes of a file handle packed as CRIU packs
// them.
func handleBytes(f *fh.FhEntry) []byte {
	var b []byte
	for _, w := range f.GetHandle() {
		b = binary.NativeEndian.AppendUint64(b, w)
	}
	return b[:min(int(f.GetBytes()), len(b))]
}

// kernelMajor and kernelMinor split a dev_t of the kernel's own encoding
// (major << 20 | minor), the one fdinfo prints, not stat(2)'s.
func kernelMajor(dev uint32) uint32 { return dev >> 20 }
func kernelMinor(dev uint32) uint32 { return dev & (1<<20 - 1) }

// watchPath finds the path of the file watched by w: its handle opened
// through each mount of its device in turn, until one gives a path that
// leads to the watched inode. why is set when none does: what went wrong
// through the first mount that opened the handle, else through the
// first mount.
func watchPath(mounts []procfs.Mount, w *fsnotify.InotifyWdEntry) (path, why string, err error) {
	h := w.GetFHandle()
	if h.GetBytes() == 0 {
		return "", "its filesystem gives no file handle", nil
	}
	handle := unix.NewFileHandle(int32(h.GetType()), handleBytes(h))
	major, minor := kernelMajor(w.GetSDev()), kernelMinor(w.GetSDev())
	var first, opened string
	for _, m := range mounts {
		if m.Major != major || m.Minor != minor {
			continue
		}
		p, reason, resolved, err := openWatched(m.Point, handle, w.GetIIno(), unix.Mkdev(major, minor))
		switch {
		case err != nil:
			return "", "", err
		case reason == "" && resolved:
			return p, "", nil
		case resolved && opened == "":
			opened = reason
		case first == "":
			first = reason
		}
	}
	switch {
	case opened != "":
		return "", opened, nil
	case first != "":
		return "", first, nil
	}
	return "", "no mount of the device in crest's mount namespace", nil
}

// openWatched opens handle through the mount at point and returns the
// path it has there, if that path leads to inode ino of device dev.
// resolved says whether the handle opened there; why says otherwise what
// went wrong. A mount of a file (not a directory) is skipped: no reason,
// not resolved.
func openWatched(point string, handle unix.FileHandle, ino, dev uint64) (path, why string, resolved bool, err error) {
	// O_RDONLY: open_by_handle_at(2) takes no O_PATH fd for the mount.
	mnt, err := unix.Open(point, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOTDIR) {
		return "", "", false, nil
	}
	if err != nil {
		return "", fmt.Sprintf("mount point %s: open: %v", point, err), false, nil
	}
	defer unix.Close(mnt)
	fd, err := unix.OpenByHandleAt(mnt, handle, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		// ESTALE: the inode is gone (deleted) or not under this mount.
		return "", fmt.Sprintf("open_by_handle_at through %s: %v", point, err), false, nil
	}
	defer unix.Close(fd)
	link := "/proc/self/fd/" + strconv.Itoa(fd)
	path, err = os.Readlink(link)
	if err != nil {
		return "", "", false, err
	}
	if strings.HasSuffix(path, " (deleted)") {
		return "", "the file was deleted (" + path + ")", true, nil
	}
	// The handle's fd is the inode itself; its path must lead there
	// too (not, say, to a file mounted over it).
	var st unix.Stat_t
	if err := unix.Fstatat(unix.AT_FDCWD, path, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return "", fmt.Sprintf("%s: stat: %v", path, err), true, nil
	}
	if st.Ino != ino || st.Dev != dev {
		return "", fmt.Sprintf("%s is another file (inode %d of device %d:%d)", path, st.Ino, unix.Major(st.Dev), unix.Minor(st.Dev)), true, nil
	}
	return path, "", true, nil
}
