package restore

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/images"
)

// Unix sockets, as CRIU restores them (criu/sk-unix.c, sk-queue.c), but
// made by the engine, all at once, the first time a task's fd needs one
// (openUnixSocket), since they depend on each other: a listener must be
// listening before a client connects to it, a datagram socket must be
// bound before another connects to its name, the queue of one is written
// through its peer.
//
//   - The two ends of a connection that are both in the image set (peer
//     inodes pointing at each other) are a socketpair(2), as in CRIU.
//     An accepted connection carries its listener's name: when that
//     listener is in the image set, the engine connects the other end to
//     it and accepts, so that the accepted end has the name again
//     (getsockname, and getpeername on the other end) and the client keeps
//     the name it may have bound. When the listener is gone, the pair is a
//     socketpair and neither end is bound: both names are lost, as with
//     CRIU, which never binds a connected stream socket.
//   - A listener is bound and listens with its backlog.
//   - A datagram socket connected to another that is not connected back
//     is bound (if it was) and connects to the other's name once every
//     name is bound; sockets connecting to one that connects elsewhere
//     connect first, as they must have at the dump.
//   - A stream or seqpacket connection whose peer is gone (shut down
//     both ways) is one end of a socketpair whose other end the engine
//     closes once it has written the queue. A datagram socket whose peer
//     was closed looks like one others connected to (ESTABLISHED, peer
//     0): it is made unconnected, as CRIU does.
//   - The receive queue (sk-queues.img, packets whose id_for is the
//     socket's file id, oldest first) is written by the peer, or, for a
//     datagram socket without one, by an engine end of a socketpair that
//     the socket is disconnected from first (CRIU's AF_UNSPEC connect), so
//     that datagram and record boundaries stay; the sender's buffer is
//     made large enough first (SO_SNDBUFFORCE), and every socket is
//     non-blocking while the engine fills it, so data that does not fit
//     is an error, not a hang.
//   - Then each gets its options (applySockOpts, sockopts.go), its
//     shutdown and its file status flags.
//
// A path name that the dumped process left on disk (a stale socket file)
// is unlinked before the bind, as CRIU's unlink_sk does; any other kind of
// file at that path makes the bind fail. A relative name is bound in the
// directory the image names, from a thread whose working directory is its
// own (unshare CLONE_FS), so that the socket gets the relative name. In a
// tree with a mount namespace of its own, sockets with a path name (and
// every socket made with them) are made so on the thread that made the
// namespace's mounts, in it (mntns_files.go): their names are paths there.
//
// Refused at planning: a peer not in the image set (but for CRIU's
// external sockets, sockunix_ext.go),
// connections a listener had not accepted yet, file descriptors in a
// queue (SCM_RIGHTS), an owner for SIGIO outside the tree, a name whose file was removed
// since the bind (ghost sockets), CRIU's special sockets (uflags), and
// types and states CRIU does not dump.

// UnixSocket is an AF_UNIX socket of files.img (unix_sk_entry).
type UnixSocket struct {
	Ino     uint32
	Type    int // unix.SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
	State   int // unixEstablished, unixClose or unixListen
	Backlog int
	// Name is as the kernel keeps it: empty for none, a NUL byte and the
	// name for an abstract one, a path (and its NUL) otherwise; NameDir
	// is the directory of a relative path. Perms are the bound file's.
	Name    []byte
	NameDir string
	Perms   *FilePerms
	// Shutdown is sk_shutdown: 0 none, 1 read, 2 write, 3 both.
	Shutdown int
	Opts     *sk_opts.SkOptsEntry
	// Queue is what sat in its receive queue, oldest first: a datagram
	// or a record each, or a stretch of a stream.
	Queue [][]byte
	// Peer is the socket it is connected to, nil when none (or gone).
	Peer *File
	// External is the peer outside the image set it is connected to
	// instead (sockunix_ext.go).
	External *UnixExternal
	// Make is how the engine makes it: with Partner the other end of a
	// pair or accepted connection, Listener the listener it comes from.
	Make     UnixMake
	Partner  *File
	Listener *File

	set *unixSockets
}

// FilePerms are the mode and owner of a bound socket's file.
type FilePerms struct{ Mode, UID, GID uint32 }

// UnixMake is how the engine makes a unix socket.
type UnixMake int

const (
	// UnixAlone: socket(2), then bound, listening or connected to
	// Peer's name as the image says.
	UnixAlone UnixMake = iota
	// UnixPair: a socketpair(2) with Partner.
	UnixPair
	// UnixConnects: socket(2), connected to Listener; the connection
	// accepted there is Partner.
	UnixConnects
	// UnixAccepted: accept(2) on Listener of the connection Partner
	// made.
	UnixAccepted
	// UnixWidowed: a stream or seqpacket connection whose peer is gone
	// (shut down both ways): one end of a socketpair(2) whose other end
	// writes the queue and is closed.
	UnixWidowed
	// UnixFilled: a datagram socket with a queue but no peer to write
	// it: one end of a socketpair(2), disconnected from the other end,
	// which writes the queue and is closed; then as UnixAlone.
	UnixFilled
)

var unixMakeNames = []string{"alone", "pair", "connects", "accepted", "widowed", "filled"}

func (m UnixMake) String() string { return unixMakeNames[m] }

// The socket states are TCP's.
const (
	unixEstablished = 1
	unixClose       = 7
	unixListen      = 10
)

// unixSockets is what the unix sockets of one plan share: every unix
// socket entry of files.img by inode, the file ids some fd table holds,
// the queues of sk-queues.img by id_for (read once), and the planned
// sockets in plan order.
type unixSockets struct {
	byIno  map[uint32]*sk_unix.UnixSkEntry
	held   map[uint32]bool
	queues map[uint32][][]byte
	scm    map[uint32]bool // ids with file descriptors in their queue
	order  []*File
	// connectors are the held sockets connected to each inode;
	// listeners the held listening sockets by listenerKey.
	connectors map[uint32][]uint32
	listeners  map[string]*sk_unix.UnixSkEntry
	owner      *sockOwner // who the engine makes them as (userns_sock.go)
	// inMnt: made in the tree's own mount namespace, where their path
	// names are (mntns_files.go)
	inMnt bool
}

// pathNamed reports whether a socket of s has a path name: its own, or
// its listener's.
func (s *unixSockets) pathNamed() bool {
	for _, f := range s.order {
		if n := f.Unix.Name; len(n) > 0 && n[0] != 0 {
			return true
		}
	}
	return false
}

func listenerKey(typ int, name []byte, dir string) string {
	return fmt.Sprintf("%d\x00%s\x00%s", typ, dir, name)
}

// unixSocketsOf returns the unix sockets of p's images, read with the
// first one planned.
func (p *Plan) unixSocketsOf() (*unixSockets, error) {
	if p.unix == nil {
		set, err := loadUnixSockets(p.Dir)
		if err != nil {
			return nil, err
		}
		p.unix = set
	}
	return p.unix, nil
}

func loadUnixSockets(d *images.Dir) (*unixSockets, error) {
	s := &unixSockets{byIno: map[uint32]*sk_unix.UnixSkEntry{}, held: map[uint32]bool{}, queues: map[uint32][][]byte{},
		scm: map[uint32]bool{}}
	files, err := d.Files()
	if err != nil {
		return nil, &PlanError{File: "files.img", Err: err}
	}
	for _, fe := range files {
		if e := fe.GetUsk(); fe.GetType() == fdinfo.FdTypes_UNIXSK && e != nil {
			if o := s.byIno[e.GetIno()]; o != nil {
				return nil, &PlanError{File: "files.img", Msg: fmt.Sprintf("files %d and %d are both socket:[%d]", o.GetId(), e.GetId(), e.GetIno())}
			}
			s.byIno[e.GetIno()] = e
		}
	}
	// The fd tables of every task: a peer no task holds is not in the
	// image set. Zombies have none (nor ids).
	for _, pe := range d.Pstree {
		ids, err := d.IDs(pe.GetPid())
		if err != nil {
			continue
		}
		fds, err := d.Fdinfo(ids.GetFilesId())
		if err != nil {
			return nil, &PlanError{PID: int(pe.GetPid()), Err: err}
		}
		for _, fd := range fds {
			s.held[fd.GetId()] = true
		}
	}
	s.connectors, s.listeners = map[uint32][]uint32{}, map[string]*sk_unix.UnixSkEntry{}
	for _, e := range s.byIno {
		if !s.held[e.GetId()] {
			continue
		}
		if e.GetPeer() != 0 {
			s.connectors[e.GetPeer()] = append(s.connectors[e.GetPeer()], e.GetIno())
		}
		if e.GetState() == unixListen {
			s.listeners[listenerKey(int(e.GetType()), e.GetName(), e.GetNameDir())] = e
		}
	}
	pkts, err := d.SkQueues()
	if err != nil {
		return nil, &PlanError{File: "sk-queues.img", Err: err}
	}
	for i, pk := range pkts {
		id := pk.Entry.GetIdFor()
		if n := pk.Entry.GetLength(); int(n) != len(pk.Data) {
			return nil, &PlanError{File: "sk-queues.img", Msg: fmt.Sprintf("entry %d: %d bytes of data, the entry says %d", i, len(pk.Data), n)}
		}
		if len(pk.Entry.GetScm()) > 0 {
			s.scm[id] = true
		}
		s.queues[id] = append(s.queues[id], pk.Data)
	}
	return s, nil
}

// unixSocketFile plans the unix socket id of files.img, and the sockets
// it depends on (its peer, the listener it came from).
func (p *Plan) unixSocketFile(t *Task, id uint32, e *sk_unix.UnixSkEntry) (*File, error) {
	bad := func(format string, args ...any) error {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d (socket:[%d]): ", id, e.GetIno()) + fmt.Sprintf(format, args...)}
	}
	set, err := p.unixSocketsOf()
	if err != nil {
		return nil, err
	}
	u := &UnixSocket{Ino: e.GetIno(), Type: int(e.GetType()), State: int(e.GetState()), Backlog: int(e.GetBacklog()),
		Name: e.GetName(), NameDir: e.GetNameDir(), Shutdown: int(e.GetShutdown()), Opts: e.GetOpts(), Queue: set.queues[id], set: set}
	if why := unixRefusal(e, t); why != "" {
		return nil, bad("%s", why)
	}
	if set.scm[id] {
		return nil, bad("file descriptors in flight in its queue (SCM_RIGHTS) are not supported")
	}
	if !set.held[id] {
		return nil, bad("no task holds it in its fd table")
	}
	if fp := e.GetFilePerms(); fp != nil {
		u.Perms = &FilePerms{Mode: fp.GetMode(), UID: fp.GetUid(), GID: fp.GetGid()}
	}
	f := &File{ID: id, Kind: FileUnixSocket, Path: fmt.Sprintf("socket:[%d]", u.Ino), Flags: e.GetFlags(), Unix: u}
	// before the peer: planning the peer comes back to this socket
	p.Files[id] = f
	set.order = append(set.order, f)
	plan := func(e *sk_unix.UnixSkEntry) (*File, error) { return p.file(t, e.GetId(), "files.img") }

	stream := u.Type != unix.SOCK_DGRAM
	if len(u.Queue) > 0 && (u.State == unixListen || stream && u.State == unixClose) {
		return nil, bad("%d packets queued on a %s socket", len(u.Queue), unixStateName(u.State))
	}
	if e.GetPeer() == 0 {
		switch {
		case u.State == unixListen:
		case u.State == unixEstablished && stream && u.Shutdown != int(sk_opts.SkShutdown_BOTH):
			// CRIU would have dumped an in-flight connection with its
			// listener as its peer; anything else has lost its peer.
			return nil, bad("connected to no peer and not shut down (a dangling connection)")
		case u.State == unixEstablished && stream:
			u.Make = UnixWidowed
		case len(u.Queue) > 0:
			// A datagram socket is ESTABLISHED without a peer when
			// others connected to it, or when its peer was closed:
			// the images do not tell one from the other, and as
			// CRIU, crest makes it unconnected (a send without an
			// address fails with ENOTCONN, not ECONNREFUSED once).
			u.Make = UnixFilled
		}
		return f, nil
	}
	if u.State != unixEstablished {
		return nil, bad("connected to socket:[%d] in state %s", e.GetPeer(), unixStateName(u.State))
	}
	if e.GetPeer() == u.Ino {
		// a datagram socket connected to its own name
		if stream || len(u.Name) == 0 {
			return nil, bad("connected to itself")
		}
		u.Peer = f
		if len(u.Queue) > 0 {
			u.Make = UnixFilled
		}
		return f, nil
	}
	pe := set.byIno[e.GetPeer()]
	if pe == nil {
		return nil, bad("its peer socket:[%d] is not in the image set (external unix sockets are not supported)", e.GetPeer())
	}
	if pe.GetUflags()&uskExtern != 0 {
		return p.externalUnixPeer(f, pe, bad) // sockunix_ext.go
	}
	if !set.held[pe.GetId()] {
		return nil, bad("its peer socket:[%d] (file %d) is not open in any task of the image set (external unix sockets are not supported)", e.GetPeer(), pe.GetId())
	}
	if int(pe.GetType()) != u.Type {
		return nil, bad("a socket of type %d connected to socket:[%d] of type %d", u.Type, pe.GetIno(), pe.GetType())
	}
	mutual := pe.GetPeer() == u.Ino
	if stream && !mutual {
		if pe.GetState() == unixListen {
			return nil, bad("a connection to the listener socket:[%d] not accepted yet (in-flight connections are not supported)", pe.GetIno())
		}
		return nil, bad("connected to socket:[%d], which is connected to socket:[%d]", pe.GetIno(), pe.GetPeer())
	}
	if !stream && (!mutual || set.connectedTo(u.Ino, pe.GetIno()) || set.connectedTo(pe.GetIno(), u.Ino)) {
		// Connected by name, as it must have been at the dump when
		// others connected to either end too (a socket connected to
		// another can not be connected to).
		if len(pe.GetName()) == 0 {
			return nil, bad("connected to socket:[%d], which has no name to connect to again", pe.GetIno())
		}
		if len(u.Queue) > 0 {
			u.Make = UnixFilled
		}
		if u.Peer, err = plan(pe); err != nil {
			return nil, err
		}
		return f, nil
	}
	if u.Peer, err = plan(pe); err != nil {
		return nil, err
	}
	u.Partner, u.Make = u.Peer, UnixPair
	if !stream {
		return f, nil
	}
	// An accepted connection: one end has the name of a listener of the
	// image set, the other does not.
	if l := set.listener(u.Type, u.Name, u.NameDir); l != nil && !bytes.Equal(pe.GetName(), u.Name) {
		u.Make = UnixAccepted
		if u.Listener, err = plan(l); err != nil {
			return nil, err
		}
	} else if l := set.listener(u.Type, pe.GetName(), pe.GetNameDir()); l != nil && !bytes.Equal(pe.GetName(), u.Name) {
		u.Make = UnixConnects
		if u.Listener, err = plan(l); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// unixRefusal says why socket e (of task t) can not be restored, from the
// entry alone.
func unixRefusal(e *sk_unix.UnixSkEntry, t *Task) string {
	switch e.GetType() {
	case unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET:
	default:
		return fmt.Sprintf("unix sockets of type %d are not supported", e.GetType())
	}
	switch e.GetState() {
	case unixEstablished, unixClose:
	case unixListen:
		if e.GetType() == unix.SOCK_DGRAM {
			return "a listening datagram socket"
		}
		if len(e.GetName()) == 0 {
			return "a listener without a name"
		}
	default:
		return fmt.Sprintf("unix sockets in state %d are not supported", e.GetState())
	}
	if uf := e.GetUflags(); uf != 0 {
		// CRIU's USK_EXTERN, USK_SERVICE, USK_CALLBACK, USK_INHERIT
		return fmt.Sprintf("special unix socket (uflags %#x: external, criu service, plugin or inherited) is not supported", uf)
	}
	if e.GetOpts() == nil {
		return "no socket options (sk_opts_entry)"
	}
	if e.GetShutdown() > sk_opts.SkShutdown_BOTH {
		return fmt.Sprintf("shutdown %d", e.GetShutdown())
	}
	name := e.GetName()
	if len(name) > len(unix.RawSockaddrUnix{}.Path) {
		return fmt.Sprintf("a name of %d bytes", len(name))
	}
	if len(name) == 0 || name[0] == 0 {
		if e.GetDeleted() {
			return "deleted, without a path name"
		}
		return ""
	}
	path := unixPath(name)
	if e.GetDeleted() {
		return fmt.Sprintf("bound to %s, removed since (ghost unix sockets are not supported)", path)
	}
	if filepath.IsAbs(path) {
		if t.FS.Root != "" && t.FS.Root != "/" {
			return fmt.Sprintf("bound to %s in a task whose root is %s", path, t.FS.Root)
		}
	} else if !filepath.IsAbs(e.GetNameDir()) {
		return fmt.Sprintf("bound to the relative name %s without its directory", path)
	}
	return ""
}

func unixStateName(s int) string {
	switch s {
	case unixEstablished:
		return "ESTABLISHED"
	case unixClose:
		return "CLOSE"
	case unixListen:
		return "LISTEN"
	}
	return fmt.Sprint(s)
}

// unixPath is a path name without the NUL the kernel keeps after it.
func unixPath(name []byte) string {
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return string(name)
}

// connectedTo reports whether a socket other than from is connected to
// the socket with inode ino.
func (s *unixSockets) connectedTo(ino, from uint32) bool {
	for _, c := range s.connectors[ino] {
		if c != from && c != ino {
			return true
		}
	}
	return false
}

// listener returns the listening socket of the image set bound to name,
// or nil.
func (s *unixSockets) listener(typ int, name []byte, dir string) *sk_unix.UnixSkEntry {
	if len(name) == 0 {
		return nil
	}
	return s.listeners[listenerKey(typ, name, dir)]
}

// bound reports whether the engine binds u to its name: a connected
// stream or seqpacket socket is never bound (it is either the accepted end,
// whose name is its listener's, or as CRIU does), but for a client that
// connects to a listener.
func (u *UnixSocket) bound() bool {
	if len(u.Name) == 0 {
		return false
	}
	return u.Type == unix.SOCK_DGRAM || u.State != unixEstablished || u.Make == UnixConnects
}

// openUnixSocket returns the socket f, making every unix socket of the
// plan the first time: the others go into pr under their file keys, so
// that openFile finds them opened.
func (pr *prepared) openUnixSocket(f *File) (int, error) {
	if f.Unix == nil || f.Unix.set == nil {
		return -1, fmt.Errorf("%s: not planned as a unix socket", f.Path)
	}
	if pr.mnt != nil && f.Unix.set.inMnt {
		return pr.mnt.reserveUnix(pr, f) // mntns_files.go
	}
	b := &unixBuild{pr: pr, first: f, fds: map[*File]int{}}
	fd, err := b.make(f.Unix.set)
	if err != nil {
		if fd >= 0 {
			syscall.Close(fd)
		}
		return -1, err
	}
	return fd, nil
}

// unixBuild is one making of the sockets of a plan.
type unixBuild struct {
	pr      *prepared
	first   *File
	firstFD int
	fds     map[*File]int
	// here: the calling thread's file system context is its own (the
	// thread in the tree's mount namespace): a relative name is bound
	// from it, not from a thread of the engine's
	here bool
	// bound are the paths of the socket files it bound
	bound []string
}

// unbind removes the socket files b bound.
func (b *unixBuild) unbind() {
	for _, p := range b.bound {
		unix.Unlink(p)
	}
	b.bound = nil
}

// own keeps fd as the socket f: the first in firstFD (openFile keeps
// it), every other in pr, which closes it on rollback.
func (b *unixBuild) own(f *File, fd int) {
	b.fds[f] = fd
	if f == b.first {
		b.firstFD = fd
		return
	}
	b.pr.add(fileKey(f), fd)
}

func sockErr(f *File, err error) error {
	return fmt.Errorf("unix socket %d (socket:[%d]): %w", f.ID, f.Unix.Ino, err)
}

// make makes every socket of s (see the top of this file) and returns the
// first's fd, or -1 and the error (the fd, when made, to close).
func (b *unixBuild) make(s *unixSockets) (int, error) {
	b.firstFD = -1
	for _, f := range s.order {
		if _, ok := b.fds[f]; ok {
			continue
		}
		if err := b.create(f); err != nil {
			return b.firstFD, sockErr(f, err)
		}
	}
	for _, f := range s.order {
		u := f.Unix
		if u.Make == UnixAccepted {
			continue // made by accept, named by it
		}
		if u.bound() {
			if err := bindUnix(b.fds[f], u, b.here); err != nil {
				return b.firstFD, sockErr(f, err)
			}
			if p := unixPath(u.Name); u.Name[0] != 0 {
				if !filepath.IsAbs(p) {
					p = filepath.Join(u.NameDir, p)
				}
				b.bound = append(b.bound, p)
			}
		}
		if u.State == unixListen {
			if err := unix.Listen(b.fds[f], u.Backlog); err != nil {
				return b.firstFD, sockErr(f, os.NewSyscallError(fmt.Sprintf("listen(%d)", u.Backlog), err))
			}
		}
	}
	connected := map[*File]bool{}
	for _, f := range s.order {
		if err := b.connect(s, f, connected); err != nil {
			return b.firstFD, err
		}
	}
	for _, f := range s.order {
		u := f.Unix
		switch u.Make {
		case UnixPair, UnixConnects, UnixAccepted:
			if err := sendQueue(b.fds[u.Partner], u); err != nil {
				return b.firstFD, sockErr(f, err)
			}
		}
	}
	for _, f := range s.order {
		if err := finishUnix(b.fds[f], f); err != nil {
			return b.firstFD, sockErr(f, err)
		}
	}
	return b.firstFD, nil
}

const sockFlags = unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC

// create makes socket f (and its pair's other end), but for an accepted
// one (connect makes it).
func (b *unixBuild) create(f *File) error {
	u := f.Unix
	var fd int
	var fds [2]int
	socket := func() (err error) {
		fd, err = unix.Socket(unix.AF_UNIX, u.Type|sockFlags, 0)
		return os.NewSyscallError("socket", err)
	}
	socketpair := func() (err error) {
		fds, err = unix.Socketpair(unix.AF_UNIX, u.Type|sockFlags, 0)
		return os.NewSyscallError("socketpair", err)
	}
	switch u.Make {
	case UnixAlone, UnixConnects:
		if err := u.set.owner.makeSocket(socket); err != nil {
			return err
		}
		b.own(f, fd)
	case UnixPair:
		if err := u.set.owner.makeSocket(socketpair); err != nil {
			return err
		}
		b.own(f, fds[0])
		b.own(u.Partner, fds[1])
	case UnixWidowed, UnixFilled:
		if err := u.set.owner.makeSocket(socketpair); err != nil {
			return err
		}
		b.own(f, fds[0])
		defer unix.Close(fds[1])
		if u.Make == UnixFilled {
			// Its peer goes (so that the other end may write to it
			// without being its peer, and others may connect to it);
			// the queue is empty, so nothing is dropped.
			if err := disconnect(fds[0]); err != nil {
				return err
			}
		}
		return sendQueue(fds[1], u)
	}
	return nil
}

// connect connects f to its peer's name, after every socket connected to
// f itself (which could not connect once f is connected elsewhere), or
// makes an accepted connection.
func (b *unixBuild) connect(s *unixSockets, f *File, done map[*File]bool) error {
	if done[f] {
		return nil
	}
	done[f] = true
	u := f.Unix
	switch u.Make {
	case UnixConnects:
		l := u.Listener
		if err := connectUnix(b.fds[f], l.Unix, b.here); err != nil {
			return sockErr(f, fmt.Errorf("to its listener %d (socket:[%d]): %w", l.ID, l.Unix.Ino, err))
		}
		var fd int
		err := s.owner.makeSocket(func() (err error) { // the accepted end's inode is made by accept
			fd, _, err = unix.Accept4(b.fds[l], sockFlags)
			return os.NewSyscallError("accept4", err)
		})
		if err != nil {
			return sockErr(u.Partner, fmt.Errorf("accept on %d (socket:[%d]): %w", l.ID, l.Unix.Ino, err))
		}
		b.own(u.Partner, fd)
	case UnixAlone, UnixFilled:
		if u.Peer == nil && u.External == nil {
			return nil
		}
		for _, g := range s.order {
			if g.Unix.Peer == f && g != f && (g.Unix.Make == UnixAlone || g.Unix.Make == UnixFilled) {
				if err := b.connect(s, g, done); err != nil {
					return err
				}
			}
		}
		if u.External != nil {
			return b.connectExternal(f) // sockunix_ext.go
		}
		if err := connectUnix(b.fds[f], u.Peer.Unix, b.here); err != nil {
			return sockErr(f, fmt.Errorf("to %d (socket:[%d]): %w", u.Peer.ID, u.Peer.Unix.Ino, err))
		}
	}
	return nil
}

// sendQueue writes the queue of u through fd, its peer or an engine end
// connected to it: one send per datagram or record.
func sendQueue(fd int, u *UnixSocket) error {
	if len(u.Queue) == 0 {
		return nil
	}
	// The sender's buffer holds what it sent until it is read.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, math.MaxInt32/2); err != nil {
		return os.NewSyscallError("setsockopt(SO_SNDBUFFORCE)", err)
	}
	for i, pkt := range u.Queue {
		for data := pkt; ; {
			n, err := unix.SendmsgN(fd, data, nil, nil, unix.MSG_NOSIGNAL)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("queue: packet %d of %d (%d bytes): %w", i+1, len(u.Queue), len(pkt), os.NewSyscallError("sendmsg", err))
			}
			data = data[n:]
			if len(data) == 0 {
				break
			}
			if u.Type != unix.SOCK_STREAM {
				return fmt.Errorf("queue: packet %d of %d: %d of %d bytes sent", i+1, len(u.Queue), len(pkt)-len(data), len(pkt))
			}
		}
	}
	return nil
}

// finishUnix gives socket f its options, shutdown and status flags.
func finishUnix(fd int, f *File) error {
	u := f.Unix
	if err := applySockOpts(fd, u.Opts); err != nil {
		return err
	}
	if u.Shutdown != 0 {
		how := u.Shutdown - 1 // SHUT_RD, SHUT_WR, SHUT_RDWR
		if err := unix.Shutdown(fd, how); err != nil {
			return os.NewSyscallError(fmt.Sprintf("shutdown(%d)", how), err)
		}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, int(f.Flags)&(unix.O_NONBLOCK|unix.O_ASYNC)); err != nil {
		return os.NewSyscallError("fcntl(F_SETFL)", err)
	}
	return nil
}

// bindUnix binds fd to u's name: a stale socket file at a path is
// unlinked first, and the new file gets the image's mode and owner. here:
// a relative name is bound from the calling thread (unixBuild.here).
func bindUnix(fd int, u *UnixSocket, here bool) error {
	if u.Name[0] == 0 {
		return sockaddrCall(unix.SYS_BIND, fd, u.Name, "bind")
	}
	path := unixPath(u.Name)
	return inDirOf(here)(u.NameDir, func() error {
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
			if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
				return &os.PathError{Op: "unlink stale socket", Path: path, Err: err}
			}
		}
		if err := sockaddrCall(unix.SYS_BIND, fd, u.Name, "bind"); err != nil {
			return err
		}
		if p := u.Perms; p != nil {
			if err := unix.Lchown(path, int(p.UID), int(p.GID)); err != nil {
				return &os.PathError{Op: "chown", Path: path, Err: err}
			}
			if err := unix.Chmod(path, p.Mode&07777); err != nil {
				return &os.PathError{Op: "chmod", Path: path, Err: err}
			}
		}
		return nil
	})
}

// connectUnix connects fd to the name of the socket to (here as for
// bindUnix).
func connectUnix(fd int, to *UnixSocket, here bool) error {
	if len(to.Name) == 0 {
		return errors.New("no name to connect to")
	}
	dir := to.NameDir
	if to.Name[0] == 0 {
		dir = ""
	}
	return inDirOf(here)(dir, func() error { return sockaddrCall(unix.SYS_CONNECT, fd, to.Name, "connect") })
}

// unixNameString shows a name: an abstract one as "@name".
func unixNameString(name []byte) string {
	if len(name) > 0 && name[0] == 0 {
		return "@" + string(name[1:])
	}
	return unixPath(name)
}

// inDir runs fn with dir as the working directory, for this call only: on
// a thread of its own whose fs is unshared from the engine's (the thread
// ends with it, onOwnThread). An empty dir runs fn as it is.
func inDir(dir string, fn func() error) error {
	if dir == "" {
		return fn()
	}
	return onOwnThread(-1, 3, func() error {
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			return os.NewSyscallError("unshare(CLONE_FS)", err)
		}
		if err := unix.Chdir(dir); err != nil {
			return &os.PathError{Op: "chdir", Path: dir, Err: err}
		}
		return fn()
	})
}

// inDirOf is inDir, or inDirHere when here.
func inDirOf(here bool) func(string, func() error) error {
	if here {
		return inDirHere
	}
	return inDir
}

// inDirHere runs fn with dir as the calling thread's working directory,
// and goes back to the one it had: the thread's file system context must
// be its own (unshare CLONE_FS).
func inDirHere(dir string, fn func() error) error {
	if dir == "" {
		return fn()
	}
	back, err := unix.Open(".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: ".", Err: err}
	}
	defer unix.Close(back)
	if err := unix.Chdir(dir); err != nil {
		return &os.PathError{Op: "chdir", Path: dir, Err: err}
	}
	err = fn()
	if berr := unix.Fchdir(back); berr != nil && err == nil {
		err = os.NewSyscallError("fchdir", berr)
	}
	return err
}
