package restore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fsnotify"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/internal/procfs"
)

// Inotify files: made anew by the engine (inotify_init1) with their
// watches added again, then taken by the tasks like any other file, as
// CRIU's open_inotify_fd does (criu/fsnotify.c). Each watch is added on
// the file the image names: FhEntry.path when the dump found it (CRIU 4.2
// and crest dump always try), else its file handle opened through a
// mount of its device. The file is opened O_PATH first and must be the
// watched inode of the image (inode number and device): a path that now
// leads to another file fails the restore (*InotifyWatchError). Then the
// watch is added through that fd's /proc link, so what was checked is
// what is watched.
//
// A program knows its watches by their wd, so every watch gets the wd it
// had: watches are added in wd order, and before each the kernel is told
// the wd to give next (INOTIFY_IOC_SETNEXTWD, CONFIG_CHECKPOINT_RESTORE).
// On a kernel without it, as CRIU does then, a watch given a lower wd is
// removed and added again until the kernel's cyclic allocation reaches
// the wanted wd; each removal queues an IN_IGNORED event, which the engine
// reads away once all watches are in (with whatever event came meanwhile).
//
// The mask is the image's, its event bits and IN_ONESHOT and
// IN_EXCL_UNLINK (CRIU 4.2 keeps the event bits only). The ignored mask
// is not used, as CRIU does not: inotify has none (the kernel prints 0).
// Events queued at the dump are not in the images and are not restored.

// Inotify is an inotify file's watches, in wd order.
type Inotify struct {
	Watches []InotifyWatch
}

// InotifyWatch is one watch of an inotify file.
type InotifyWatch struct {
	WD   int
	Mask uint32 // inotify_add_watch(2) mask
	// Ino and Dev are the watched inode, Dev in stat(2)'s encoding.
	Ino, Dev uint64
	// Path is the watched file, "" when the image has only its handle.
	Path string
	// HandleType and Handle are the file handle (open_by_handle_at(2)).
	HandleType int32
	Handle     []byte
}

// inotifyMask are the bits of a watch's mask that are given back: the
// events and how the watch behaves (IN_ONLYDIR, IN_DONT_FOLLOW and
// IN_MASK_ADD act only when a watch is added; the kernel does not keep
// them).
const inotifyMask = unix.IN_ALL_EVENTS | unix.IN_ONESHOT | unix.IN_EXCL_UNLINK

// maxHandleBytes is MAX_HANDLE_SZ, the longest file handle.
const maxHandleBytes = 128

// inotifyFile plans an inotify of files.img.
func (p *Plan) inotifyFile(t *Task, id uint32, e *fsnotify.InotifyFileEntry) (*File, error) {
	bad := func(format string, args ...any) error {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: "+format, append([]any{id}, args...)...)}
	}
	in := &Inotify{}
	seen := map[int]bool{}
	// One watch per inode: inotify_add_watch on a watched inode gives
	// that watch's wd, which addWatch would take for a wrong one.
	inodes := map[[2]uint64]int{}
	for _, w := range e.GetWd() {
		wd := int(w.GetWd())
		if wd < 1 || wd > 1<<31-1 {
			return nil, bad("inotify watch wd %d", w.GetWd())
		}
		if seen[wd] {
			return nil, bad("inotify watch wd %d appears twice", wd)
		}
		seen[wd] = true
		h := w.GetFHandle() // required: the image reader refuses an entry without
		sdev := w.GetSDev()
		iw := InotifyWatch{WD: wd, Mask: w.GetMask() & inotifyMask, Ino: w.GetIIno(),
			Dev: unix.Mkdev(sdev>>20, sdev&(1<<20-1)), Path: h.GetPath(), HandleType: int32(h.GetType())}
		if n := h.GetBytes(); n > 0 {
			if n > maxHandleBytes || int(n) > 8*len(h.GetHandle()) {
				return nil, bad("inotify watch wd %d: file handle of %d bytes, %d words given", wd, n, len(h.GetHandle()))
			}
			// CRIU packs the handle's bytes into u64 words.
			for _, x := range h.GetHandle() {
				iw.Handle = binary.NativeEndian.AppendUint64(iw.Handle, x)
			}
			iw.Handle = iw.Handle[:n]
		}
		if other, ok := inodes[[2]uint64{iw.Dev, iw.Ino}]; ok {
			return nil, bad("inotify watches wd %d and %d are on the same inode %d", other, wd, iw.Ino)
		}
		inodes[[2]uint64{iw.Dev, iw.Ino}] = wd
		if iw.Path == "" && iw.Handle == nil {
			return nil, bad("inotify watch wd %d has neither a path nor a file handle", wd)
		}
		if iw.Mask&unix.IN_ALL_EVENTS == 0 {
			return nil, bad("inotify watch wd %d: mask %#x has no event", wd, w.GetMask())
		}
		in.Watches = append(in.Watches, iw)
	}
	slices.SortFunc(in.Watches, func(a, b InotifyWatch) int { return a.WD - b.WD })
	f := &File{ID: id, Kind: FileInotify, Flags: e.GetFlags(), Inotify: in}
	p.Files[id] = f
	return f, nil
}

// InotifyWatchError is a watch of an inotify file the engine could not
// add again: its file is not found, is another file than at the dump, or
// the kernel refused the watch or its wd.
type InotifyWatchError struct {
	FD   int    // the fd of the inotify in the task
	WD   int    // the watch
	Path string // the watched file, as the image names it or as found
	Err  error
}

func (e *InotifyWatchError) Error() string {
	return fmt.Sprintf("fd %d: inotify watch wd %d: %s: %v", e.FD, e.WD, e.Path, e.Err)
}

func (e *InotifyWatchError) Unwrap() error { return e.Err }

// errWatchedFileChanged is the Err of an InotifyWatchError whose path
// leads to another file than the one watched at the dump.
var errWatchedFileChanged = errors.New("another file than the one watched at the dump")

// inotifyIocSetNextWD is INOTIFY_IOC_SETNEXTWD, _IOW('I', 0, __s32).
const inotifyIocSetNextWD = 0x40044900

// openInotify makes the inotify f, for task t, with its watches. Its
// status flags come from the image (O_NONBLOCK); every engine fd is
// close-on-exec.
func openInotify(t *Task, f *File) (int, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | int(f.Flags)&unix.IN_NONBLOCK)
	if err != nil {
		return -1, os.NewSyscallError("inotify_init1", err)
	}
	taskFD := -1
	for _, d := range t.FDs {
		if d.File == f {
			taskFD = d.FD
			break
		}
	}
	if err := addWatches(fd, taskFD, f.Inotify.Watches, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// addWatches adds ws, in wd order, to inotify fd, each with its wd;
// setNext says to try INOTIFY_IOC_SETNEXTWD first. taskFD names the
// inotify in errors.
func addWatches(fd, taskFD int, ws []InotifyWatch, setNext bool) error {
	var mounts []procfs.Mount
	dummies := false
	for _, w := range ws {
		if w.Path == "" && mounts == nil {
			var err error
			if mounts, err = procfs.ReadMountinfo("/proc/self/mountinfo"); err != nil {
				return err
			}
		}
		target, path, err := openWatched(w, mounts)
		if err != nil {
			return &InotifyWatchError{FD: taskFD, WD: w.WD, Path: path, Err: err}
		}
		if setNext {
			err := unix.IoctlSetInt(fd, inotifyIocSetNextWD, w.WD)
			if errors.Is(err, unix.ENOTTY) {
				setNext = false // no CONFIG_CHECKPOINT_RESTORE
			} else if err != nil {
				unix.Close(target)
				return &InotifyWatchError{FD: taskFD, WD: w.WD, Path: path, Err: os.NewSyscallError("ioctl(INOTIFY_IOC_SETNEXTWD)", err)}
			}
		}
		n, err := addWatch(fd, target, w)
		unix.Close(target)
		if err != nil {
			return &InotifyWatchError{FD: taskFD, WD: w.WD, Path: path, Err: err}
		}
		dummies = dummies || n > 0
	}
	if dummies {
		return drainInotify(fd)
	}
	return nil
}

// addWatch adds watch w on the file open at target (O_PATH) to inotify
// fd until the kernel gives it its wd, and returns how many watches it
// added and removed on the way.
func addWatch(fd, target int, w InotifyWatch) (dummies int, err error) {
	via := "/proc/self/fd/" + strconv.Itoa(target)
	for {
		wd, err := unix.InotifyAddWatch(fd, via, w.Mask)
		if err != nil {
			return dummies, os.NewSyscallError("inotify_add_watch", err)
		}
		if wd == w.WD {
			return dummies, nil
		}
		if wd > w.WD {
			unix.InotifyRmWatch(fd, uint32(wd))
			return dummies, fmt.Errorf("inotify_add_watch gave wd %d, beyond it", wd)
		}
		if _, err := unix.InotifyRmWatch(fd, uint32(wd)); err != nil {
			return dummies, os.NewSyscallError("inotify_rm_watch", err)
		}
		dummies++
	}
}

// drainInotify reads away the events queued on inotify fd.
func drainInotify(fd int) error {
	buf := make([]byte, 4096)
	for {
		n, err := unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD
		if err != nil {
			return os.NewSyscallError("ioctl(FIONREAD)", err)
		}
		if n == 0 {
			return nil
		}
		if _, err := unix.Read(fd, buf); err != nil {
			return fmt.Errorf("inotify: reading away the events of removed watches: %w", os.NewSyscallError("read", err))
		}
	}
}

// openWatched opens the file watched by w (O_PATH) and checks that it is
// the inode of the image. path is how errors name it.
func openWatched(w InotifyWatch, mounts []procfs.Mount) (fd int, path string, err error) {
	path = w.Path
	if path != "" {
		// The dump's path is canonical, the watched file itself
		// (a symbolic link, for a watch with IN_DONT_FOLLOW).
		fd, err = unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, path, &os.PathError{Op: "open", Path: path, Err: err}
		}
	} else {
		path = fmt.Sprintf("file handle of inode %d on device %d:%d", w.Ino, unix.Major(w.Dev), unix.Minor(w.Dev))
		if fd, err = openHandle(w, mounts); err != nil {
			return -1, path, err
		}
		if l, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err == nil {
			path = l
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, path, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Ino != w.Ino || st.Dev != w.Dev {
		unix.Close(fd)
		return -1, path, fmt.Errorf("inode %d of device %d:%d, the image has inode %d of device %d:%d: %w",
			st.Ino, unix.Major(st.Dev), unix.Minor(st.Dev), w.Ino, unix.Major(w.Dev), unix.Minor(w.Dev), errWatchedFileChanged)
	}
	return fd, path, nil
}

// openHandle opens the file handle of w (O_PATH) through the first mount
// of its device that resolves it, as CRIU's open_handle does.
func openHandle(w InotifyWatch, mounts []procfs.Mount) (int, error) {
	handle := unix.NewFileHandle(w.HandleType, w.Handle)
	err := errors.New("no mount of the device")
	for _, m := range mounts {
		if unix.Mkdev(m.Major, m.Minor) != w.Dev {
			continue
		}
		// O_RDONLY: open_by_handle_at(2) takes no O_PATH fd for the mount.
		mnt, e := unix.Open(m.Point, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if e != nil {
			err = &os.PathError{Op: "open", Path: m.Point, Err: e}
			continue
		}
		fd, e := unix.OpenByHandleAt(mnt, handle, unix.O_PATH|unix.O_CLOEXEC)
		unix.Close(mnt)
		if e == nil {
			return fd, nil
		}
		err = fmt.Errorf("open_by_handle_at through %s: %w", m.Point, e)
	}
	return -1, err
}
