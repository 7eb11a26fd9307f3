package dump

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pipe"
	pipe_data "github.com/checkpoint-restore/go-criu/v8/crit/images/pipe-data"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"

	"github.com/crest-restore/crest/images"
)

// fileTable gives ids to the open files of the tree and collects
// files.img. Ids come from one counter in the order CRIU 4.2 hands them
// out: per task the executable and mapped files, then the fds, then cwd and
// root.
type fileTable struct {
	last    uint32
	entries []*fdinfo.FileEntry
	mapped  map[devIno]uint32
	open    []openFile
	pipes   map[uint64]bool
	data    []images.Entry  // pipes-data.img
	fifos   []images.Entry  // fifo-data.img (fifo.go)
	fifoIno map[uint64]bool // the FIFOs whose data is read, by inode
	queues  []images.Entry  // sk-queues.img
	// held are the inodes of the sockets open in the frozen tree, read
	// when a unix socket's peer is first looked for (sockunix.go).
	held map[uint32]bool
	// tcp holds the established TCP connections dumped (tcpest.go);
	// nil without --tcp-established, which refuses them.
	tcp *tcpConns

	memfds     map[uint64]*memfdInode // by inode number
	memfdOrder []*memfdInode

	ttys ttyTable // tty-info.img (tty.go)
	// ghosts are the files deleted while open or mapped, dumped with
	// their contents (ghost.go)
	ghosts ghostTable

	// net is the net namespace of the tree's sockets: crest's own, or
	// the tree's (netns_sock.go)
	net sockNet
}

type devIno struct{ dev, ino uint64 }

type openFile struct {
	pid, fd int
	key     fileKey
	id      uint32
}

// fileKey narrows down which open files may be the same (kcmp decides):
// the inode, and for anonymous-inode files, which all share one inode,
// their kind (the /proc link) too.
type fileKey struct {
	devIno
	anon string
}

func newFileTable() *fileTable {
	return &fileTable{mapped: map[devIno]uint32{}, pipes: map[uint64]bool{}, memfds: map[uint64]*memfdInode{}}
}

func (ft *fileTable) next() uint32 { ft.last++; return ft.last }

func zeroFown() *fown.FownEntry {
	return &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0),
		PidType: proto.Uint32(0), Pid: proto.Uint32(0)}
}

// regEntry describes the file at path (a /proc link to it) as a REG file
// entry named name.
func regEntry(id uint32, path, name string, flags uint32, pos uint64) (*fdinfo.FileEntry, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	r := &regfile.RegFileEntry{Id: proto.Uint32(id), Flags: proto.Uint32(flags), Pos: proto.Uint64(pos),
		Fown: zeroFown(), Name: proto.String(name), Mode: proto.Uint32(st.Mode)}
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		// CRIU records the size to check it at restore, except for files
		// open write-only for appending (logs), which may grow.
		if !(flags&unix.O_ACCMODE == unix.O_WRONLY && flags&unix.O_APPEND != 0) {
			r.Size = proto.Uint64(uint64(st.Size))
		}
		r.BuildId = buildID(path)
	}
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(id), Reg: r}, nil
}

// buildID returns the GNU build-id note of an ELF file as CRIU stores it
// (little-endian 32-bit words), or nil.
func buildID(path string) []uint32 {
	f, err := elf.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			continue
		}
		for len(b) >= 12 {
			nsz, dsz, typ := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])
			name := (int(nsz) + 3) &^ 3
			desc := (int(dsz) + 3) &^ 3
			if 12+name+desc > len(b) {
				break
			}
			if typ == 3 && nsz == 4 && string(b[12:15]) == "GNU" && dsz%4 == 0 { // NT_GNU_BUILD_ID
				d := b[12+name : 12+name+int(dsz)]
				out := make([]uint32, len(d)/4)
				for i := range out {
					out[i] = binary.LittleEndian.Uint32(d[4*i:])
				}
				return out
			}
			b = b[12+name+desc:]
		}
	}
	return nil
}

// mappedFile returns the id of the file behind a mapping or the
// executable (path is its /proc link), one id per file across the tree.
func (ft *fileTable) mappedFile(t *task, path, name string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("%s: %w", t, &os.PathError{Op: "stat", Path: path, Err: err})
	}
	key := devIno{st.Dev, st.Ino}
	if id, ok := ft.mapped[key]; ok {
		return id, nil
	}
	if name == "" {
		l, err := os.Readlink(path)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", t, err)
		}
		name = l
	}
	id := ft.next()
	name, err := ft.ghostName(t, "mapped file", id, path, name, &st) // ghost.go
	if err != nil {
		return 0, err
	}
	e, err := regEntry(id, path, name, unix.O_RDONLY, 0)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", t, err)
	}
	ft.entries = append(ft.entries, e)
	ft.mapped[key] = id
	return id, nil
}

// fsEntry gives the task's cwd and root their file entries.
func (ft *fileTable) fsEntry(t *task) (*fs.FsEntry, error) {
	st, err := readStatus(procPath(t.pid, "status"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	umask, err := strconv.ParseUint(st["Umask"], 8, 32)
	if err != nil {
		return nil, fmt.Errorf("%s: status: Umask: %w", t, err)
	}
	var ids [2]uint32
	for i, which := range []string{"cwd", "root"} {
		p := procPath(t.pid, which)
		name, err := os.Readlink(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t, err)
		}
		if strings.HasSuffix(name, " (deleted)") {
			return nil, &UnsupportedError{Task: int(t.nsPid), Resource: which, What: name, Why: "deleted directories are not supported"}
		}
		ids[i] = ft.next()
		e, err := regEntry(ids[i], p, name, 0, 0)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t, err)
		}
		ft.entries = append(ft.entries, e)
	}
	return &fs.FsEntry{CwdId: proto.Uint32(ids[0]), RootId: proto.Uint32(ids[1]), Umask: proto.Uint32(uint32(umask))}, nil
}

// ttyMajor reports the char device majors of ttys and ptys.
func ttyMajor(major uint32) bool {
	return major == 4 || major == 5 || (major >= 136 && major <= 143)
}

// fdTable describes t's open fds (fdinfo entries, sorted by fd).
func (ft *fileTable) fdTable(t *task) ([]images.Entry, error) {
	dir := procPath(t.pid, "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	var fds []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			fds = append(fds, n)
		}
	}
	sort.Ints(fds)
	var out []images.Entry
	for _, fd := range fds {
		e, err := ft.fd(t, fd)
		if err != nil {
			return nil, err
		}
		out = append(out, images.Entry{Message: e})
	}
	return out, nil
}

func (ft *fileTable) fd(t *task, fd int) (*fdinfo.FdinfoEntry, error) {
	link := procPath(t.pid, "fd", strconv.Itoa(fd))
	name, err := os.Readlink(link)
	if err != nil {
		return nil, fmt.Errorf("%s: fd %d: %w", t, fd, err)
	}
	unsupported := func(why string) error {
		return &UnsupportedError{Task: int(t.nsPid), Resource: fmt.Sprintf("fd %d", fd), What: name, Why: why}
	}
	switch {
	case strings.HasPrefix(name, "anon_inode:"):
		if _, ok := anonTypes[name]; !ok {
			return nil, unsupported(anonRefusal(name))
		}
	case strings.HasPrefix(name, "/dev/pts/") && strings.HasSuffix(name, " (deleted)"):
		// the master closed: the kernel took the slave's node away
		return nil, unsupported("the terminal is hung up (its other end was closed)")
	}
	var st unix.Stat_t
	if err := unix.Stat(link, &st); err != nil {
		return nil, fmt.Errorf("%s: fd %d: %w", t, fd, &os.PathError{Op: "stat", Path: link, Err: err})
	}
	fi, err := readFdinfo(t.pid, fd)
	if err != nil {
		return nil, fmt.Errorf("%s: fd %d: %w", t, fd, err)
	}
	if _, locked := fi.rest["lock"]; locked {
		return nil, unsupported("file locks are not supported")
	}
	// the copy of fd that sockets and owners are read through, if needed
	fc := newFDCopy(t.pid, fd)
	defer fc.close()
	typ := fdinfo.FdTypes_REG
	anonType, anon := anonTypes[name]
	switch mode := st.Mode & unix.S_IFMT; {
	case anon:
		// An anonymous inode's mode has no file type (0600).
		typ = anonType
	case mode == unix.S_IFREG:
		if isMemfd(name) {
			typ = fdinfo.FdTypes_MEMFD
		}
	case mode == unix.S_IFDIR:
	case mode == unix.S_IFCHR:
		if ttyMajor(unix.Major(st.Rdev)) {
			typ = fdinfo.FdTypes_TTY // tty.go
		}
	case mode == unix.S_IFSOCK:
		var why string
		c, err := fc.get()
		if err == nil {
			typ, why, err = socketType(c) // sockets.go
		}
		if err != nil {
			return nil, fmt.Errorf("%s: fd %d: %w", t, fd, err)
		}
		if why != "" {
			return nil, unsupported(why)
		}
	case mode == unix.S_IFIFO:
		typ = fdinfo.FdTypes_PIPE
		if !strings.HasPrefix(name, "pipe:") {
			typ = fdinfo.FdTypes_FIFO // fifo.go
		}
	default:
		return nil, unsupported(fmt.Sprintf("files of mode %#o are not supported", mode))
	}
	var fdflags uint32
	if fi.flags&unix.O_CLOEXEC != 0 {
		fdflags = unix.FD_CLOEXEC
	}
	flags := fi.flags &^ unix.O_CLOEXEC
	key := fileKey{devIno: devIno{st.Dev, st.Ino}}
	if anon {
		key.anon = name
	}
	for _, o := range ft.open {
		if o.key != key {
			continue
		}
		same, err := kcmpEqual(t.pid, o.pid, kcmpFile, fd, o.fd)
		if err != nil {
			return nil, fmt.Errorf("%s: fd %d: %w", t, fd, err)
		}
		if same {
			return &fdinfo.FdinfoEntry{Id: proto.Uint32(o.id), Flags: proto.Uint32(fdflags), Type: typ.Enum(), Fd: proto.Uint32(uint32(fd))}, nil
		}
	}
	id := ft.next()
	var fe *fdinfo.FileEntry
	if typ == fdinfo.FdTypes_PIPE {
		fe = &fdinfo.FileEntry{Type: typ.Enum(), Id: proto.Uint32(id), Pipe: &pipe.PipeEntry{Id: proto.Uint32(id),
			PipeId: proto.Uint32(uint32(st.Ino)), Flags: proto.Uint32(flags), Fown: zeroFown()}}
		if err := ft.pipeData(t, fd, link, st.Ino, false); err != nil {
			return nil, err
		}
	} else if typ == fdinfo.FdTypes_FIFO {
		var why string
		if fe, why, err = ft.fifoEntry(t, id, fd, link, name, st.Ino, flags, fi.pos); err != nil {
			return nil, fmt.Errorf("%s: fd %d: %s: %w", t, fd, name, err)
		}
		if why != "" {
			return nil, unsupported(why)
		}
	} else if anon {
		var why string
		if fe, why, err = anonEntry(id, typ, flags, t.pid, fd, fi); err != nil {
			return nil, fmt.Errorf("%s: fd %d: %s: %w", t, fd, procPath(t.pid, "fdinfo", strconv.Itoa(fd)), err)
		}
		if why != "" {
			return nil, unsupported(why)
		}
	} else if typ == fdinfo.FdTypes_UNIXSK || typ == fdinfo.FdTypes_INETSK || typ == fdinfo.FdTypes_NETLINKSK ||
		typ == fdinfo.FdTypes_PACKETSK {
		var why string
		c, err := fc.get()
		switch {
		case err != nil:
		case typ == fdinfo.FdTypes_UNIXSK:
			fe, why, err = ft.unixSocketEntry(t, id, c, st.Ino, flags)
		case typ == fdinfo.FdTypes_INETSK:
			fe, why, err = ft.inetSocketEntry(t, id, c, st.Ino, flags)
		case typ == fdinfo.FdTypes_PACKETSK:
			fe, why, err = ft.packetSocketEntry(t, id, c, st.Ino, flags) // sockpacket.go
		default:
			fe, why, err = ft.netlinkSocketEntry(t, id, c, st.Ino, flags) // socknetlink.go
		}
		if err != nil {
			return nil, fmt.Errorf("%s: fd %d: %s: %w", t, fd, name, err)
		}
		if why != "" {
			return nil, unsupported(why)
		}
	} else if typ == fdinfo.FdTypes_TTY {
		var why string
		c, err := fc.get()
		if err == nil {
			fe, why, err = ft.ttyEntry(t, id, fd, c, link, name, &st, flags, fi.pos)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: fd %d: %s: %w", t, fd, name, err)
		}
		if why != "" {
			return nil, unsupported(why)
		}
	} else if typ == fdinfo.FdTypes_MEMFD {
		if fe, err = ft.memfdEntry(id, link, name, flags, fi.pos); err != nil {
			return nil, fmt.Errorf("%s: fd %d: %w", t, fd, err)
		}
	} else {
		if why, err := procFileRefusal(t, link, name); err != nil { // procfiles.go
			return nil, fmt.Errorf("%s: fd %d: %w", t, fd, err)
		} else if why != "" {
			return nil, unsupported(why)
		}
		// a file deleted while open is dumped with its contents (ghost.go)
		if name, err = ft.ghostName(t, fmt.Sprintf("fd %d", fd), id, link, name, &st); err != nil {
			return nil, err
		}
		if fe, err = regEntry(id, link, name, flags, fi.pos); err != nil {
			return nil, fmt.Errorf("%s: fd %d: %w", t, fd, err)
		}
	}
	owner, why, err := fileOwner(t, fc, flags)
	if err != nil {
		return nil, fmt.Errorf("%s: fd %d: %s: %w", t, fd, name, err)
	}
	if why != "" {
		return nil, unsupported(why)
	}
	if !setOwner(fe, owner) && (owner.GetPid() != 0 || owner.GetSignum() != 0) {
		return nil, unsupported(fmt.Sprintf("an owner for SIGIO (F_SETOWN, F_SETSIG) on a %s file, which its image has no place for", typ))
	}
	ft.entries = append(ft.entries, fe)
	ft.open = append(ft.open, openFile{pid: t.pid, fd: fd, key: key, id: id})
	return &fdinfo.FdinfoEntry{Id: proto.Uint32(id), Flags: proto.Uint32(fdflags), Type: typ.Enum(), Fd: proto.Uint32(uint32(fd))}, nil
}

// pipeData copies what pipe ino (a FIFO when fifo) holds without taking
// it out: tee(2) from a reader of our own onto a scratch pipe, then read
// the scratch pipe.
func (ft *fileTable) pipeData(t *task, fd int, link string, ino uint64, fifo bool) error {
	seen := ft.pipes
	if fifo {
		if ft.fifoIno == nil {
			ft.fifoIno = map[uint64]bool{}
		}
		seen = ft.fifoIno
	}
	if seen[ino] {
		return nil
	}
	seen[ino] = true
	errf := func(err error) error { return fmt.Errorf("%s: fd %d: pipe:[%d] data: %w", t, fd, ino, err) }
	// Opening the /proc link gives a new reader of the same pipe,
	// whichever end fd is.
	r, err := unix.Open(link, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return errf(&os.PathError{Op: "open", Path: link, Err: err})
	}
	defer unix.Close(r)
	size, err := unix.FcntlInt(uintptr(r), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return errf(os.NewSyscallError("fcntl(F_GETPIPE_SZ)", err))
	}
	var sp [2]int
	if err := unix.Pipe2(sp[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return errf(os.NewSyscallError("pipe2", err))
	}
	defer unix.Close(sp[0])
	defer unix.Close(sp[1])
	if _, err := unix.FcntlInt(uintptr(sp[1]), unix.F_SETPIPE_SZ, size); err != nil {
		return errf(os.NewSyscallError("fcntl(F_SETPIPE_SZ)", err))
	}
	n, err := unix.Tee(r, sp[1], size, unix.SPLICE_F_NONBLOCK)
	if errors.Is(err, syscall.EAGAIN) {
		n, err = 0, nil
	}
	if err != nil {
		return errf(os.NewSyscallError("tee", err))
	}
	if n == 0 {
		return nil
	}
	data := make([]byte, n)
	for got := 0; got < int(n); {
		m, err := unix.Read(sp[0], data[got:])
		if err != nil {
			return errf(os.NewSyscallError("read", err))
		}
		got += m
	}
	e := images.Entry{Message: &pipe_data.PipeDataEntry{PipeId: proto.Uint32(uint32(ino)),
		Bytes: proto.Uint32(uint32(n)), Size: proto.Uint32(uint32(size))}, Payload: data}
	if fifo {
		ft.fifos = append(ft.fifos, e)
	} else {
		ft.data = append(ft.data, e)
	}
	return nil
}
