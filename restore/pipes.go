package restore

import (
	"fmt"
	"os"
	"sort"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fifo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pipe"

	"github.com/crest-restore/crest/images"
)

// Pipes, as CRIU restores them: one pipe per pipe_id, made by the engine
// before the tasks exist, refilled with what sat in it at the dump
// (pipes-data.img) with its buffer size (F_SETPIPE_SZ), and handed to every
// task that holds an end. The first open file of each end is that end;
// further open files of the same end (a pipe end reopened through /proc)
// are reopened through /proc/self/fd, so that each keeps its own flags.

// FIFOs are named pipes: the engine opens the path read-write first (so
// that no open blocks and the data has a home), refills it from
// fifo-data.img, opens every FIFO file of the images with its flags, and
// closes its own end once the tasks have taken theirs.

// Pipe is one pipe or FIFO of the image set, known by CRIU's pipe_id (its
// inode number at the dump). The open files of both ends refer to it.
type Pipe struct {
	ID      uint32
	Data    []byte // what sat in it at the dump (pipes-data.img, fifo-data.img), oldest first
	BufSize uint32 // its buffer size in bytes, 0 when the images do not say
	Owner   *Task  // the first task holding an end: the engine prepares it for this one
	Path    string // a FIFO's path, "" for a pipe
}

// pipeFile plans the PIPE entry id of files.img.
func (p *Plan) pipeFile(t *Task, id uint32, pe *pipe.PipeEntry) (*File, error) {
	if pe == nil {
		return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: PIPE without pipe entry", id)}
	}
	if err := p.loadPipeData(); err != nil {
		return nil, err
	}
	pp := p.Pipes[pe.GetPipeId()]
	if pp == nil {
		pp = &Pipe{ID: pe.GetPipeId(), Owner: t}
		if d, ok := p.pipeData[pp.ID]; ok {
			pp.Data, pp.BufSize = d.Data, d.Entry.GetSize()
		}
		p.Pipes[pp.ID] = pp
	}
	if acc := pe.GetFlags() & syscall.O_ACCMODE; acc != syscall.O_RDONLY && acc != syscall.O_WRONLY {
		return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: pipe %d open with flags %#x, neither end", id, pp.ID, pe.GetFlags())}
	}
	f := &File{ID: id, Kind: FilePipe, Path: fmt.Sprintf("pipe:[%d]", pp.ID), Flags: pe.GetFlags(), Pipe: pp}
	p.Files[id] = f
	return f, nil
}

// fifoFile plans the FIFO entry id of files.img: its path and flags are
// those of the REG entry regf_id.
func (p *Plan) fifoFile(t *Task, id uint32, fe *fifo.FifoEntry) (*File, error) {
	if fe == nil || fe.RegfId == nil {
		return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: FIFO without fifo entry or its path", id)}
	}
	re, err := p.Dir.File(fe.GetRegfId())
	if err != nil {
		return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: FIFO path", id), Err: err}
	}
	reg := re.GetReg()
	if re.GetType() != fdinfo.FdTypes_REG || reg == nil {
		return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: FIFO path entry %d is not a REG entry", id, fe.GetRegfId())}
	}
	if p.fifoData == nil {
		if p.fifoData, err = loadPipeData(p.Dir.FifoData, "fifo-data.img"); err != nil {
			return nil, err
		}
	}
	pp := p.Fifos[fe.GetPipeId()]
	if pp == nil {
		pp = &Pipe{ID: fe.GetPipeId(), Owner: t, Path: reg.GetName()}
		if d, ok := p.fifoData[pp.ID]; ok {
			pp.Data, pp.BufSize = d.Data, d.Entry.GetSize()
		}
		p.Fifos[pp.ID] = pp
	}
	if pp.Path != reg.GetName() {
		return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: FIFO %d at %s, also at %s", id, pp.ID, reg.GetName(), pp.Path)}
	}
	f := &File{ID: id, Kind: FileFifo, Path: reg.GetName(), Flags: reg.GetFlags(), Mode: reg.GetMode(), Pipe: pp}
	p.Files[id] = f
	return f, nil
}

// loadPipeData reads pipes-data.img once.
func (p *Plan) loadPipeData() error {
	if p.pipeData != nil {
		return nil
	}
	var err error
	p.pipeData, err = loadPipeData(p.Dir.PipesData, "pipes-data.img")
	return err
}

// loadPipeData reads a pipes-data.img or fifo-data.img and checks every
// entry against its payload.
func loadPipeData(read func() ([]images.PipeData, error), name string) (map[uint32]images.PipeData, error) {
	ents, err := read()
	if err != nil {
		return nil, &PlanError{File: name, Err: err}
	}
	out := map[uint32]images.PipeData{}
	for i, e := range ents {
		id := e.Entry.GetPipeId()
		if _, dup := out[id]; dup {
			return nil, &PlanError{File: name, Msg: fmt.Sprintf("entry %d: pipe %d appears twice", i, id)}
		}
		if n := e.Entry.GetBytes(); uint32(len(e.Data)) != n {
			return nil, &PlanError{File: name, Msg: fmt.Sprintf("entry %d: pipe %d: %d bytes of data, the entry says %d", i, id, len(e.Data), n)}
		}
		if size := e.Entry.GetSize(); size != 0 && uint32(len(e.Data)) > size {
			return nil, &PlanError{File: name, Msg: fmt.Sprintf("entry %d: pipe %d: %d bytes of data for a buffer of %d", i, id, len(e.Data), size)}
		}
		out[id] = e
	}
	return out, nil
}

// pipeEnds is one pipe the engine made: the read end and the write end,
// and whether each was given to an open file (then pr.fds owns it).
type pipeEnds struct {
	fds    [2]int
	handed [2]bool
}

// fcntl commands the syscall package lacks.
const (
	fSetpipeSz = 1031 // F_SETPIPE_SZ
	fGetpipeSz = 1032 // F_GETPIPE_SZ
	fAddSeals  = 1033 // F_ADD_SEALS
)

// preparePipes makes every pipe of p with its data, in the order of the
// tasks that own them.
func (pr *prepared) preparePipes(p *Plan) error {
	ids := make([]uint32, 0, len(p.Pipes))
	for id := range p.Pipes {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	fifos := make([]uint32, 0, len(p.Fifos))
	for id := range p.Fifos {
		fifos = append(fifos, id)
	}
	sort.Slice(fifos, func(i, j int) bool { return fifos[i] < fifos[j] })
	for _, t := range p.Tasks {
		begin := boottime()
		made := 0
		for _, id := range ids {
			if pp := p.Pipes[id]; pp.Owner == t {
				if err := pr.makePipe(pp); err != nil {
					return fmt.Errorf("task %d: pipe %d: %w", t.PID, id, err)
				}
				made++
			}
		}
		for _, id := range fifos {
			if pp := p.Fifos[id]; pp.Owner == t {
				if err := pr.openFifo(pp); err != nil {
					return fmt.Errorf("task %d: FIFO %s: %w", t.PID, pp.Path, err)
				}
				made++
			}
		}
		if made > 0 {
			pr.step(t, "prepare pipes", begin)
		}
	}
	return nil
}

// openFifo opens a FIFO read-write for the engine (it is kept until the
// tasks have taken their ends) and refills it; in a tree with a mount
// namespace of its own, later, in that namespace (mntns_files.go).
func (pr *prepared) openFifo(pp *Pipe) error {
	key := fmt.Sprintf("fifo:%d", pp.ID)
	if pr.mnt != nil {
		fd, err := pr.mnt.reserveFifo(pp, key)
		if err != nil {
			return err
		}
		pr.add(key, fd)
		return nil
	}
	fd, err := openFifoEnd(pp)
	if err != nil {
		return err
	}
	pr.add(key, fd)
	return nil
}

// openFifoEnd opens FIFO pp by its path read-write and refills it.
func openFifoEnd(pp *Pipe) (int, error) {
	fd, err := syscall.Open(pp.Path, syscall.O_RDWR|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: pp.Path, Err: err}
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		err = os.NewSyscallError("fstat", err)
	} else if st.Mode&syscall.S_IFMT != syscall.S_IFIFO {
		err = fmt.Errorf("not a FIFO (mode %#o)", st.Mode)
	} else {
		err = fillPipe(fd, pp)
	}
	if err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// openFifoFile opens the FIFO file f with its flags: without blocking
// (the engine's own end is a reader and a writer), then O_NONBLOCK as f
// has it.
func openFifoFile(f *File) (int, error) {
	fd, err := syscall.Open(f.Path, int(f.Flags)&^reopenMask|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: f.Path, Err: err}
	}
	if err := checkFile(fd, f); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	if _, err := fcntl(fd, syscall.F_SETFL, int(f.Flags)&pipeSettable); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// the status flags fcntl can set on a pipe: O_NONBLOCK, O_DIRECT (packet mode)
const pipeSettable = syscall.O_NONBLOCK | syscall.O_DIRECT

func (pr *prepared) makePipe(pp *Pipe) error {
	var fds [2]int
	// non-blocking while the engine fills it: data that does not fit
	// is an error, not a hang
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return os.NewSyscallError("pipe2", err)
	}
	pr.pipes[pp.ID] = &pipeEnds{fds: fds}
	if err := fillPipe(fds[1], pp); err != nil {
		return err
	}
	for _, fd := range fds {
		if _, err := fcntl(fd, syscall.F_SETFL, 0); err != nil {
			return err
		}
	}
	return nil
}

// fillPipe sets the buffer size of a pipe or FIFO and writes its data
// through fd, a non-blocking write end: data that does not fit is an
// error, not a hang.
func fillPipe(fd int, pp *Pipe) error {
	if pp.BufSize != 0 {
		got, err := fcntl(fd, fSetpipeSz, int(pp.BufSize))
		if err != nil {
			return fmt.Errorf("buffer of %d bytes: %w", pp.BufSize, err)
		}
		if got < int(pp.BufSize) {
			return fmt.Errorf("buffer of %d bytes: F_SETPIPE_SZ gave %d", pp.BufSize, got)
		}
	}
	for data := pp.Data; len(data) > 0; {
		n, err := syscall.Write(fd, data)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("refilling %d bytes: %d do not fit: %w", len(pp.Data), len(data), os.NewSyscallError("write", err))
		}
		data = data[n:]
	}
	return nil
}

// openPipeEnd returns the fd of the open file f of a pipe end.
func (pr *prepared) openPipeEnd(f *File) (int, error) {
	e := pr.pipes[f.Pipe.ID]
	end := 0
	if f.Flags&syscall.O_ACCMODE == syscall.O_WRONLY {
		end = 1
	}
	fd, reopened := e.fds[end], e.handed[end]
	if reopened {
		var err error
		fd, err = syscall.Open(fmt.Sprintf("/proc/self/fd/%d", e.fds[end]), int(f.Flags)&syscall.O_ACCMODE|syscall.O_CLOEXEC, 0)
		if err != nil {
			return -1, &os.PathError{Op: "reopen", Path: f.Path, Err: err}
		}
	}
	if fl := int(f.Flags) & pipeSettable; fl != 0 {
		if _, err := fcntl(fd, syscall.F_SETFL, fl); err != nil {
			if reopened {
				syscall.Close(fd)
			}
			return -1, err
		}
	}
	e.handed[end] = true
	return fd, nil
}

// closePipes closes the pipe ends no open file was given.
func (pr *prepared) closePipes() {
	for _, e := range pr.pipes {
		for end := range e.fds {
			if !e.handed[end] && e.fds[end] >= 0 {
				syscall.Close(e.fds[end])
				e.fds[end] = -1
			}
		}
	}
}

func fcntl(fd, cmd, arg int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if errno != 0 {
		return -1, os.NewSyscallError("fcntl", errno)
	}
	return int(r), nil
}
