package restore

import (
	"fmt"
	"os"
	"syscall"
)

// Prepared holds what the engine opened for the tasks (CRIU's
// root_prepare_shared): every file of the fd tables and mappings and every
// pages file, once each, so that tasks sharing an open file description
// share it again. Tasks take them with pidfd_getfd from the engine; the C
// side never decides what a file is.
type prepared struct {
	files []*os.File
	index map[string]int // key -> position in files
	// fdBase is the first fd of the tasks' local fds: file k is at
	// fdBase+1+k in every task that takes it, and the engine's pidfd at
	// fdBase. It is above every fd of every task's table.
	fdBase int
}

func (pr *prepared) localFD(k int) int32 { return int32(pr.fdBase + 1 + k) }

func (pr *prepared) close() {
	for _, f := range pr.files {
		f.Close()
	}
	pr.files = nil
}

// O_* bits that must not be replayed when reopening a file.
const reopenMask = syscall.O_CREAT | syscall.O_EXCL | syscall.O_TRUNC | syscall.O_NOCTTY

// prepareFiles opens the files of p. Regular files are checked as CRIU
// checks them: the size and mode recorded at the dump, except for files
// open O_WRONLY|O_APPEND (logs keep growing).
func prepareFiles(p *Plan) (*prepared, error) {
	pr := &prepared{index: map[string]int{}, fdBase: 16}
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
	for _, t := range p.Tasks {
		for _, fd := range t.FDs {
			if _, err := pr.openFile(t, fd.File); err != nil {
				return nil, err
			}
		}
		for _, v := range t.Mem.VMAs {
			if v.File != nil {
				if _, err := pr.openFile(t, v.File); err != nil {
					return nil, err
				}
			}
		}
		for _, f := range []*File{t.Mem.Exe, t.FS.CwdFile, t.FS.RootFile} {
			if f != nil {
				if _, err := pr.openFile(t, f); err != nil {
					return nil, err
				}
			}
		}
		if _, err := pr.openPages(t); err != nil {
			return nil, err
		}
	}
	ok = true
	return pr, nil
}

func fileKey(f *File) string { return fmt.Sprintf("file:%d", f.ID) }

func (pr *prepared) openFile(t *Task, f *File) (int, error) {
	key := fileKey(f)
	if k, ok := pr.index[key]; ok {
		return k, nil
	}
	if f.Kind != FileRegular {
		return 0, &PlanError{PID: t.PID, Msg: fmt.Sprintf("file %d: kind %d can not be opened yet", f.ID, f.Kind)}
	}
	flags := int(f.Flags)&^reopenMask | syscall.O_CLOEXEC
	fh, err := os.OpenFile(f.Path, flags, 0)
	if err != nil {
		return 0, fmt.Errorf("task %d: file %d: %w", t.PID, f.ID, err)
	}
	if err := checkFile(fh, f); err != nil {
		fh.Close()
		return 0, fmt.Errorf("task %d: file %d: %w", t.PID, f.ID, err)
	}
	if f.Pos != 0 {
		if _, err := fh.Seek(int64(f.Pos), 0); err != nil {
			fh.Close()
			return 0, fmt.Errorf("task %d: file %d: %w", t.PID, f.ID, err)
		}
	}
	pr.files = append(pr.files, fh)
	pr.index[key] = len(pr.files) - 1
	return len(pr.files) - 1, nil
}

func checkFile(fh *os.File, f *File) error {
	st, err := fh.Stat()
	if err != nil {
		return err
	}
	sys := st.Sys().(*syscall.Stat_t)
	if f.Mode != 0 && sys.Mode != f.Mode {
		return fmt.Errorf("%s: mode %#o, the image has %#o", f.Path, sys.Mode, f.Mode)
	}
	appendOnly := f.Flags&syscall.O_ACCMODE == syscall.O_WRONLY && f.Flags&syscall.O_APPEND != 0
	if st.Mode().IsRegular() && !appendOnly && f.Size != 0 && uint64(st.Size()) != f.Size {
		return fmt.Errorf("%s: %d bytes, the image has %d", f.Path, st.Size(), f.Size)
	}
	return nil
}

// openPages opens the pages files of t's runs.
func (pr *prepared) openPages(t *Task) ([]int, error) {
	var ks []int
	for _, r := range t.Mem.Runs {
		key := "pages:" + r.Pages
		k, ok := pr.index[key]
		if !ok {
			fh, err := os.Open(r.Pages)
			if err != nil {
				return nil, fmt.Errorf("task %d: %w", t.PID, err)
			}
			pr.files = append(pr.files, fh)
			k = len(pr.files) - 1
			pr.index[key] = k
		}
		ks = append(ks, k)
	}
	return ks, nil
}
