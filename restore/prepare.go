package restore

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Prepared holds what the engine opened for the tasks (CRIU's
// root_prepare_shared): every file of the fd tables and mappings, every
// pipe with its data and every memfd with its content (pipes.go, memfd.go),
// and every pages file, once each, so that tasks sharing an open file
// description share it again. Tasks take them with pidfd_getfd from the
// engine; the C side never decides what a file is.
//
// The fds are raw, not *os.File: os.File.Fd puts a non-blocking file back
// into blocking mode, which would change the flags of a description that
// the tasks share (a pipe opened O_NONBLOCK).
type prepared struct {
	fds   []int
	index map[string]int // key -> position in fds
	// fdBase is the first fd of the tasks' local fds: file k is at
	// fdBase+1+k in every task that takes it, and the engine's pidfd at
	// fdBase. It is above every fd of every task's table.
	fdBase int

	pipes map[uint32]*pipeEnds // pipes.go
	// net: the tree has a net namespace of its own, where its sockets
	// are made later, in PREPARE_NAMESPACES (netns_fill.go)
	net *netSockets
	// mnt: the tree has a mount namespace of its own, where its regular
	// files are opened later, in PREPARE_NAMESPACES (mntns_files.go)
	mnt *mntFiles
	// procs: files of the tasks' /proc/PID, opened after FORKING
	// (procfiles.go)
	procs []procFile
	// steps are what the engine did for each task, published into its
	// timeline with ROOT_TASK.
	steps []StepEvent
	// ghosts are the ghost files made, by path, removed once every file
	// is open; ghostPaths where each was made (ghost.go)
	ghosts     []string
	ghostPaths map[*Ghost]string
}

func (pr *prepared) localFD(k int) int32 { return int32(pr.fdBase + 1 + k) }

// add keeps fd under key and returns its position.
func (pr *prepared) add(key string, fd int) int {
	pr.fds = append(pr.fds, fd)
	pr.index[key] = len(pr.fds) - 1
	return len(pr.fds) - 1
}

func (pr *prepared) close() {
	for _, fd := range pr.fds {
		syscall.Close(fd)
	}
	pr.fds = nil
	pr.closePipes()
}

// step records that the engine did step for task t from begin on.
func (pr *prepared) step(t *Task, name string, begin uint64) {
	pr.steps = append(pr.steps, StepEvent{PID: t.PID, TID: t.PID, Step: name, Stage: StageRootTask,
		Begin: begin, End: boottime(), Succeeded: true})
}

// O_* bits that must not be replayed when reopening a file.
const reopenMask = syscall.O_CREAT | syscall.O_EXCL | syscall.O_TRUNC | syscall.O_NOCTTY

// prepareFiles opens the files of p, creates its pipes and memfds.
// Regular files are checked as CRIU checks them: the size and mode recorded
// at the dump, except for files open O_WRONLY|O_APPEND (logs keep growing).
func prepareFiles(p *Plan) (res *prepared, err error) {
	pr := &prepared{index: map[string]int{}, fdBase: 16, pipes: map[uint32]*pipeEnds{}}
	if p.Net != nil {
		pr.net = &netSockets{}
	}
	if p.Mnt != nil {
		pr.mnt = &mntFiles{}
	}
	for _, t := range p.Tasks {
		for _, fd := range t.FDs {
			if fd.FD+1 > pr.fdBase {
				pr.fdBase = fd.FD + 1
			}
		}
	}
	ok := false
	defer func() {
		if !ok {
			pr.close()
		}
	}()
	// The shared objects first, in the order of their owners, so that
	// each task's steps in the timeline are one block.
	if err := pr.prepareMemfds(p); err != nil {
		return nil, err
	}
	if err := pr.preparePipes(p); err != nil {
		return nil, err
	}
	// deleted files made again, opened below, then removed (ghost.go):
	// one that stays is a failure
	defer func() {
		if rerr := pr.removeGhosts(); rerr != nil && err == nil {
			res, err, ok = nil, rerr, false
		}
	}()
	if err := pr.makeGhosts(p); err != nil {
		return nil, err
	}
	for _, t := range p.Tasks {
		begin := boottime()
		opened := 0
		for _, fd := range t.FDs {
			n, err := pr.openFile(t, fd.File)
			if err != nil {
				return nil, err
			}
			opened += n
		}
		for _, v := range t.Mem.VMAs {
			if v.File != nil {
				n, err := pr.openMapped(t, &v)
				if err != nil {
					return nil, err
				}
				opened += n
			}
		}
		for _, f := range []*File{t.Mem.Exe, t.FS.CwdFile, t.FS.RootFile} {
			if f != nil {
				n, err := pr.openFile(t, f)
				if err != nil {
					return nil, err
				}
				opened += n
			}
		}
		if err := pr.openPages(t); err != nil {
			return nil, err
		}
		if opened > 0 {
			pr.step(t, "open files", begin)
		}
	}
	// pipe ends no task holds: closed now, so that readers see EOF
	pr.closePipes()
	ok = true
	return pr, nil
}

func fileKey(f *File) string { return fmt.Sprintf("file:%d", f.ID) }

// mapKey is the key of the fd mapping v maps: the memfd itself for a
// memfd (its open file descriptions may be read-only); for a regular file
// one opened for mappings, as CRIU's open_filemap opens it: with the
// mapping's fdflags when it is shared (a writable shared mapping needs a
// read-write fd), else read-only; files.img's flags are not the
// mapping's. Other kinds map their own description.
func mapKey(v *VMA) string {
	f := v.File
	switch f.Kind {
	case FileMemfd:
		return memfdKey(f.Memfd)
	case FileRegular:
		return fmt.Sprintf("map:%d:%#o", f.ID, v.mapAccess())
	}
	return fileKey(f)
}

// mapAccess is the access mode of the fd behind file mapping v.
func (v *VMA) mapAccess() int {
	if v.Kind == VMAFileShared {
		return int(v.FDFlags)
	}
	return syscall.O_RDONLY
}

// openMapped prepares the fd behind mapping v.
func (pr *prepared) openMapped(t *Task, v *VMA) (int, error) {
	f := v.File
	switch f.Kind {
	case FileMemfd:
		return 0, nil // prepareMemfds made it
	case FileRegular:
		key := mapKey(v)
		if _, ok := pr.index[key]; ok {
			return 0, nil
		}
		var fd int
		var err error
		if pr.mnt != nil {
			fd, err = pr.mnt.reserve(f, key, v.mapAccess()) // mntns_files.go
		} else {
			fd, err = pr.openPath(f, v.mapAccess())
		}
		if err != nil {
			var fc *FileChangedError
			if errors.As(err, &fc) {
				return 0, fmt.Errorf("task %d: %w", t.PID, err)
			}
			return 0, fmt.Errorf("task %d: file %d (mapped at %#x): %w", t.PID, f.ID, v.Start, err)
		}
		pr.add(key, fd)
		return 1, nil
	}
	return pr.openFile(t, f)
}

// openFile opens the description f, once; it returns how many files it
// opened (0 or 1).
func (pr *prepared) openFile(t *Task, f *File) (int, error) {
	key := fileKey(f)
	if _, ok := pr.index[key]; ok {
		return 0, nil
	}
	var fd int
	var err error
	switch f.Kind {
	case FileRegular:
		if f.Proc != nil {
			fd, err = pr.reserveProc(f, key, int(f.Flags)) // procfiles.go
		} else if pr.mnt != nil {
			fd, err = pr.mnt.reserve(f, key, int(f.Flags)) // mntns_files.go
		} else {
			fd, err = pr.openPath(f, int(f.Flags))
		}
	case FilePipe:
		fd, err = pr.openPipeEnd(f)
	case FileMemfd:
		fd, err = pr.openMemfdFile(f)
	case FileFifo:
		if pr.mnt != nil {
			fd, err = pr.mnt.reserve(f, key, int(f.Flags)) // mntns_files.go
		} else {
			fd, err = openFifoFile(f)
		}
	case FileEventfd, FileSignalfd, FileTimerfd, FileEpoll:
		fd, err = openAnon(f)
	case FileUnixSocket, FileInetSocket:
		switch {
		case pr.net != nil:
			fd, err = pr.net.reserve(f) // netns_fill.go
		case f.Kind == FileUnixSocket:
			fd, err = pr.openUnixSocket(f)
		default:
			fd, err = openInetSocket(f)
		}
	case FileNetlinkSocket: // socknetlink.go
		if pr.net != nil {
			fd, err = pr.net.reserve(f) // netns_fill.go
		} else {
			// a port taken now is changed silently: no logger here
			fd, _, err = openNetlinkSocket(f)
		}
	case FilePacketSocket: // sockpacket.go
		if pr.net != nil {
			fd, err = pr.net.reserve(f) // netns_fill.go
		} else {
			fd, err = openPacketSocket(f)
		}
	case FileInotify: // inotify.go
		fd, err = openInotify(t, f)
	case FileTTY: // tty.go, pty.go
		if f.TTY.Pair != nil {
			fd, err = pr.openPTY(t, f)
		} else {
			fd, err = openTTY(f)
		}
	default:
		err = fmt.Errorf("kind %v can not be opened yet", f.Kind)
	}
	if err != nil {
		var fc *FileChangedError
		if errors.As(err, &fc) {
			return 0, fmt.Errorf("task %d: %w", t.PID, err)
		}
		return 0, fmt.Errorf("task %d: file %d: %w", t.PID, f.ID, err)
	}
	pr.add(key, fd)
	return 1, nil
}

// openRegularAs opens a path as the image says with flags, checks it
// and puts it at its offset.
func openRegularAs(f *File, flags int) (int, error) {
	return openRegularPath(f, f.Path, flags)
}

// openRegularPath is openRegularAs through another name of the file (a
// remap's link, ghost.go). An O_TMPFILE file is opened without
// O_TMPFILE, as CRIU does: its ghost is the file.
func openRegularPath(f *File, path string, flags int) (int, error) {
	if flags&unix.O_TMPFILE == unix.O_TMPFILE {
		flags &^= unix.O_TMPFILE
	}
	flags = flags&^reopenMask | syscall.O_CLOEXEC
	fd, err := syscall.Open(path, flags, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if err := checkFile(fd, f); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	if f.Pos != 0 {
		if _, err := syscall.Seek(fd, int64(f.Pos), 0); err != nil {
			syscall.Close(fd)
			return -1, &os.PathError{Op: "lseek", Path: f.Path, Err: err}
		}
	}
	return fd, nil
}

// FileChangedError says that a file the images name is not what it was at
// the dump: CRIU refuses to restore then, and so does crest.
type FileChangedError struct {
	Path      string
	What      string // "size" or "mode"
	Was, Now  uint64
	ModeValue bool // print Was and Now in octal
}

func (e *FileChangedError) Error() string {
	if e.ModeValue {
		return fmt.Sprintf("%s: %s %#o, the image has %#o", e.Path, e.What, e.Now, e.Was)
	}
	return fmt.Sprintf("%s: %d bytes, the image has %d", e.Path, e.Now, e.Was)
}

// checkFile compares an opened file with its image entry, as CRIU does
// (the mode always, the size of regular files except those open
// O_WRONLY|O_APPEND).
func checkFile(fd int, f *File) error {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: f.Path, Err: err}
	}
	if f.Mode != 0 && st.Mode != f.Mode {
		return &FileChangedError{Path: f.Path, What: "mode", Was: uint64(f.Mode), Now: uint64(st.Mode), ModeValue: true}
	}
	appendOnly := f.Flags&syscall.O_ACCMODE == syscall.O_WRONLY && f.Flags&syscall.O_APPEND != 0
	if st.Mode&syscall.S_IFMT == syscall.S_IFREG && !appendOnly && f.Size != 0 && uint64(st.Size) != f.Size {
		return &FileChangedError{Path: f.Path, What: "size", Was: f.Size, Now: uint64(st.Size)}
	}
	return nil
}

// openPages opens the pages files of t's runs.
func (pr *prepared) openPages(t *Task) error {
	for _, r := range t.Mem.Runs {
		if err := pr.openPagesFile(r.Pages); err != nil {
			return fmt.Errorf("task %d: %w", t.PID, err)
		}
	}
	return nil
}

func (pr *prepared) openPagesFile(path string) error {
	key := "pages:" + path
	if _, ok := pr.index[key]; ok {
		return nil
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	pr.add(key, fd)
	return nil
}
