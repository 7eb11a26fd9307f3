package dump

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	sk_packet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-packet"
	sk_unix "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"

	"github.com/crest-restore/crest/images"
)

// AF_UNIX sockets, dumped as CRIU 4.2 dumps them (criu/sk-unix.c,
// criu/sk-queue.c): a unix_sk_entry inline in files.img with what
// NETLINK_SOCK_DIAG tells of the socket (type, state, peer, name, backlog,
// shutdown), the bound file's permissions and directory (through
// SIOCUNIXFILE), the options (sockOpts), and the packets of its receive
// queue in sk-queues.img, read without taking them out (MSG_PEEK from
// SO_PEEK_OFF 0, the offset put back afterwards).
//
// What a restore could not bring back is refused here, as CRIU does or
// stricter: a peer outside the dumped tree but as Options.ExtUnixSk
// allows (sockunix_ext.go), connections a listener has not accepted yet, a
// connection whose peer is gone without a shutdown, file descriptors or
// credentials in a queue, a bound file removed since the bind (CRIU's
// ghost sockets), sockets of another network namespace.

// sock_diag's unix requests and answers (linux/unix_diag.h).
const (
	udiagShowName   = 0x01
	udiagShowVFS    = 0x02
	udiagShowPeer   = 0x04
	udiagShowIcons  = 0x08
	udiagShowRqlen  = 0x10
	unixDiagName    = 0
	unixDiagVFS     = 1
	unixDiagPeer    = 2
	unixDiagIcons   = 3
	unixDiagRqlen   = 4
	unixDiagShut    = 6
	nlmsgHdrLen     = 16
	unixDiagReqLen  = 24
	unixDiagMsgLen  = 16
	siocUnixFile    = unix.SIOCPROTOPRIVATE // open the bound file O_PATH
	unixEstablished = 1                     // the socket states are TCP's (TCP_ESTABLISHED ...)
	unixClose       = 7
	unixListen      = 10
	shutdownBoth    = 3
	peekMinBuffer   = 64 << 10
	cmsgBufferBytes = 1024
)

// unixDiag is what sock_diag tells of one unix socket.
type unixDiag struct {
	typ, state uint8
	ino        uint32
	name       []byte // as the kernel keeps it: a path with its NUL, or NUL and an abstract name
	vfsIno     uint32 // the inode of the bound file, for a path name
	vfsDev     uint32
	peer       uint32
	icons      []uint32 // connections a listener has not accepted: their clients' inodes
	rqueue     uint32   // listener: connections waiting; others: bytes queued (dgram: the first packet's)
	wqueue     uint32   // listener: its backlog; others: bytes sent and not yet read
	shutdown   uint8
}

// diagUnix asks NETLINK_SOCK_DIAG about the unix socket with inode ino in
// the network namespace of the diag socket that socket makes (crest's or
// the tree's: netns_sock.go).
func diagUnix(socket func(proto int) (int, error), ino uint32) (*unixDiag, error) {
	s, err := socket(unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, os.NewSyscallError("socket(AF_NETLINK, NETLINK_SOCK_DIAG)", err)
	}
	defer unix.Close(s)
	req := make([]byte, nlmsgHdrLen+unixDiagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1) // sequence
	r := req[nlmsgHdrLen:]
	r[0] = unix.AF_UNIX
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	ne.PutUint32(r[8:], ino)
	ne.PutUint32(r[12:], udiagShowName|udiagShowVFS|udiagShowPeer|udiagShowIcons|udiagShowRqlen)
	ne.PutUint32(r[16:], ^uint32(0)) // no cookie to check (INET_DIAG_NOCOOKIE)
	ne.PutUint32(r[20:], ^uint32(0))
	if err := unix.Sendto(s, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, os.NewSyscallError("sendto(sock_diag)", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(s, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, os.NewSyscallError("recvfrom(sock_diag)", err)
		}
		for b := buf[:n]; len(b) >= nlmsgHdrLen; {
			l := int(ne.Uint32(b))
			if l < nlmsgHdrLen || l > len(b) {
				return nil, fmt.Errorf("sock_diag: message of %d bytes in %d", l, len(b))
			}
			data := b[nlmsgHdrLen:l]
			switch ne.Uint16(b[4:]) {
			case unix.NLMSG_ERROR:
				if len(data) < 4 {
					return nil, fmt.Errorf("sock_diag: short error message")
				}
				errno := -int32(ne.Uint32(data))
				return nil, fmt.Errorf("sock_diag of socket:[%d]: %w", ino, unix.Errno(errno))
			case unix.SOCK_DIAG_BY_FAMILY:
				return parseUnixDiag(data)
			}
			b = b[min((l+3)&^3, len(b)):]
		}
	}
}

func parseUnixDiag(b []byte) (*unixDiag, error) {
	if len(b) < unixDiagMsgLen {
		return nil, fmt.Errorf("sock_diag: unix_diag_msg of %d bytes", len(b))
	}
	ne := binary.NativeEndian
	d := &unixDiag{typ: b[1], state: b[2], ino: ne.Uint32(b[4:])}
	for a := b[unixDiagMsgLen:]; len(a) >= 4; {
		l := int(ne.Uint16(a))
		if l < 4 || l > len(a) {
			return nil, fmt.Errorf("sock_diag: socket:[%d]: attribute of %d bytes in %d", d.ino, l, len(a))
		}
		v := a[4:l]
		switch ne.Uint16(a[2:]) {
		case unixDiagName:
			d.name = slices.Clone(v)
		case unixDiagVFS:
			if len(v) >= 8 {
				d.vfsIno, d.vfsDev = ne.Uint32(v), ne.Uint32(v[4:])
			}
		case unixDiagPeer:
			if len(v) >= 4 {
				d.peer = ne.Uint32(v)
			}
		case unixDiagIcons:
			for i := 0; i+4 <= len(v); i += 4 {
				d.icons = append(d.icons, ne.Uint32(v[i:]))
			}
		case unixDiagRqlen:
			if len(v) >= 8 {
				d.rqueue, d.wqueue = ne.Uint32(v), ne.Uint32(v[4:])
			}
		case unixDiagShut:
			if len(v) >= 1 {
				d.shutdown = v[0]
			}
		}
		step := (l + 3) &^ 3
		if step > len(a) { // the last attribute may go unpadded
			break
		}
		a = a[step:]
	}
	return d, nil
}

// abstract reports whether a socket name is abstract (starts with NUL).
func abstract(name []byte) bool { return len(name) > 0 && name[0] == 0 }

// pathName is a path name without the NUL the kernel keeps after it.
func pathName(name []byte) string {
	if i := slices.Index(name, 0); i >= 0 {
		name = name[:i]
	}
	return string(name)
}

// ownNetNSID is the id of crest's own network namespace, the only one
// crest dumps: the namespaces crest itself is in are numbered first, in
// nsKinds order (ids.go).
var ownNetNSID = uint32(slices.Index(nsKinds, "net") + 1)

// unixSocketEntry describes the unix socket c (a copy of an fd of t),
// inode ino, and
// queues its receive queue for sk-queues.img; why says why it can not be
// dumped.
func (ft *fileTable) unixSocketEntry(t *task, id uint32, c int, ino uint64, flags uint32) (*fdinfo.FileEntry, string, error) {
	if why, err := ft.net.check(c, sameNetNS); why != "" || err != nil { // netns_sock.go
		return nil, why, err
	}
	d, err := diagUnix(ft.net.diagSocket, uint32(ino))
	if err != nil {
		return nil, "", err
	}
	switch d.typ {
	case unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET:
	default:
		return nil, fmt.Sprintf("unix sockets of type %d are not supported (only stream, datagram and seqpacket)", d.typ), nil
	}
	connected := d.typ != unix.SOCK_DGRAM
	switch d.state {
	case unixListen:
		if d.typ == unix.SOCK_DGRAM {
			return nil, "a listening datagram socket", nil
		}
		if len(d.icons) > 0 || d.rqueue > 0 {
			return nil, fmt.Sprintf("a listening socket with %d connections not accepted yet (in-flight connections are not supported)", max(len(d.icons), int(d.rqueue))), nil
		}
	case unixEstablished:
		if connected && d.peer == 0 && d.shutdown != shutdownBoth {
			// Either a client whose connection a listener has not
			// accepted yet (its peer is the embryo, which has no
			// inode) or one whose peer went without a shutdown.
			return nil, "a connection not accepted yet, or whose peer is gone (in-flight or dangling connection)", nil
		}
	case unixClose:
	default:
		return nil, fmt.Sprintf("a unix socket in state %d", d.state), nil
	}
	ue := &sk_unix.UnixSkEntry{Id: proto.Uint32(id), Ino: proto.Uint32(d.ino), Type: proto.Uint32(uint32(d.typ)),
		State: proto.Uint32(uint32(d.state)), Flags: proto.Uint32(flags), Uflags: proto.Uint32(0),
		Backlog: proto.Uint32(d.wqueue), Peer: proto.Uint32(d.peer), Fown: zeroFown(), Name: d.name,
		NsId: proto.Uint32(ft.net.nsID())}
	if ue.Name == nil {
		ue.Name = []byte{} // required, even empty
	}
	if d.shutdown != 0 {
		ue.Shutdown = sk_opts.SkShutdown(d.shutdown & shutdownBoth).Enum()
	}
	if len(d.name) > 0 && !abstract(d.name) {
		why, err := boundFile(c, d, ue, t.pid)
		if why != "" || err != nil {
			return nil, why, err
		}
		// The name is as the task saw it, from its root: the restore
		// binds an absolute one from the engine's.
		if root, err := os.Readlink(procPath(t.pid, "root")); err != nil {
			return nil, "", err
		} else if root != "/" && strings.HasPrefix(pathName(d.name), "/") {
			return nil, fmt.Sprintf("bound to %s in a task whose root is %s", pathName(d.name), root), nil
		}
	}
	if d.peer != 0 {
		if why, err := ft.peerInTree(t, d); why != "" || err != nil {
			return nil, why, err
		}
	}
	opts, err := sockOpts(c)
	if why := optRefusal(err); why != "" {
		return nil, why, nil
	}
	if err != nil {
		return nil, "", err
	}
	ue.Opts = opts
	// A stream or seqpacket socket has a queue only once connected
	// (reading one that is not fails).
	if d.typ == unix.SOCK_DGRAM || d.state == unixEstablished {
		q, why, err := peekQueue(c, id, d)
		if why != "" || err != nil {
			return nil, why, err
		}
		ft.queues = append(ft.queues, q...)
	}
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_UNIXSK.Enum(), Id: proto.Uint32(id), Usk: ue}, "", nil
}

// sameNetNS says why socket c can not be dumped when it belongs to
// another network namespace than crest's (whose sock_diag would not find
// it, and which a restore does not make).
func sameNetNS(c int) (string, error) {
	ns, err := unix.IoctlRetInt(c, unix.SIOCGSKNS)
	if err != nil {
		return "", os.NewSyscallError("ioctl(SIOCGSKNS)", err)
	}
	defer unix.Close(ns)
	var sk, own unix.Stat_t
	if err := unix.Fstat(ns, &sk); err != nil {
		return "", os.NewSyscallError("fstat", err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &own); err != nil {
		return "", &os.PathError{Op: "stat", Path: "/proc/thread-self/ns/net", Err: err}
	}
	if sk.Ino != own.Ino {
		return "a socket of another network namespace", nil
	}
	return "", nil
}

// boundFile fills in the permissions of the file a path-named socket is
// bound to and, for a relative name, the directory it is in, as CRIU's
// unix_resolve_name does: SIOCUNIXFILE opens that very file.
//
// In a mount namespace other than crest's (task pid's: the tree's own),
// it also gets the id of the mount the file is on there, as CRIU's
// mnt_id, which the restore binds it on.
func boundFile(c int, d *unixDiag, ue *sk_unix.UnixSkEntry, pid int) (string, error) {
	f, err := unix.IoctlRetInt(c, siocUnixFile)
	if err != nil {
		return "", os.NewSyscallError("ioctl(SIOCUNIXFILE)", err)
	}
	defer unix.Close(f)
	var ns, own unix.Stat_t
	if err := unix.Stat(procPath(pid, "ns", "mnt"), &ns); err != nil {
		return "", err
	}
	if err := unix.Stat("/proc/thread-self/ns/mnt", &own); err != nil {
		return "", err
	}
	if ns.Ino != own.Ino {
		var stx unix.Statx_t
		if err := unix.Statx(f, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil {
			return "", os.NewSyscallError("statx", err)
		}
		ue.MntId = proto.Int32(int32(stx.Mnt_id))
	}
	var st unix.Stat_t
	if err := unix.Fstat(f, &st); err != nil {
		return "", os.NewSyscallError("fstat", err)
	}
	ue.FilePerms = &sk_unix.FilePermsEntry{Mode: proto.Uint32(st.Mode), Uid: proto.Uint32(st.Uid), Gid: proto.Uint32(st.Gid)}
	where, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(f))
	if err != nil {
		return "", err
	}
	name := pathName(d.name)
	if strings.HasSuffix(where, " (deleted)") {
		return fmt.Sprintf("bound to %s, removed since (ghost unix sockets are not supported)", name), nil
	}
	if !strings.HasPrefix(name, "/") {
		dir, ok := strings.CutSuffix(where, "/"+strings.TrimPrefix(name, "./"))
		if !ok || dir == "" {
			return "", fmt.Errorf("socket bound to the relative name %q is at %s", name, where)
		}
		ue.NameDir = proto.String(dir)
	}
	return "", nil
}

// peerInTree says why socket d can not be dumped when its peer, open in
// a task of t's tree, is connected elsewhere and has no name to connect
// to again. A peer outside the tree is left to externalUnixSockets.
func (ft *fileTable) peerInTree(t *task, d *unixDiag) (string, error) {
	if d.peer != d.ino {
		if ft.held == nil {
			held, err := treeSockets(t)
			if err != nil {
				return "", err
			}
			ft.held = held
		}
		if !ft.held[d.peer] {
			return "", nil // an external socket: decided once the tree is dumped (sockunix_ext.go)
		}
	}
	p, err := diagUnix(ft.net.diagSocket, d.peer)
	if err != nil {
		return "", err
	}
	if p.peer != d.ino && len(p.name) == 0 {
		return fmt.Sprintf("connected to socket:[%d], which has no name to connect to again", d.peer), nil
	}
	return "", nil
}

// treeSockets returns the inodes of the sockets open in the tasks of t's
// tree. The tree is frozen: what it holds does not change while it is
// dumped.
func treeSockets(t *task) (map[uint32]bool, error) {
	root := t
	for root.parent != nil {
		root = root.parent
	}
	held := map[uint32]bool{}
	var walk func(*task) error
	walk = func(x *task) error {
		if x.dead == nil {
			dir := procPath(x.pid, "fd")
			ents, err := os.ReadDir(dir)
			if err != nil {
				return fmt.Errorf("%s: %w", x, err)
			}
			for _, e := range ents {
				l, err := os.Readlink(dir + "/" + e.Name())
				if err != nil {
					continue // closed since: not a socket of the frozen tree's
				}
				if s, ok := strings.CutPrefix(l, "socket:["); ok {
					if n, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 32); err == nil {
						held[uint32(n)] = true
					}
				}
			}
		}
		for _, c := range x.children {
			if err := walk(c); err != nil {
				return err
			}
		}
		return nil
	}
	return held, walk(root)
}

// peekQueue reads the receive queue of socket c (id in files.img)
// without taking anything out: one packet per datagram or record, the
// bytes of a stream as they come. The socket's peek offset is set to 0
// for it and put back afterwards, as CRIU's dump_sk_queue does.
func peekQueue(c int, id uint32, d *unixDiag) (q []images.Entry, why string, err error) {
	orig, err := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_PEEK_OFF)
	if err != nil {
		return nil, "", os.NewSyscallError("getsockopt(SO_PEEK_OFF)", err)
	}
	if err := unix.SetsockoptInt(c, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0); err != nil {
		return nil, "", os.NewSyscallError("setsockopt(SO_PEEK_OFF)", err)
	}
	defer func() {
		if e := unix.SetsockoptInt(c, unix.SOL_SOCKET, unix.SO_PEEK_OFF, orig); e != nil && err == nil {
			q, why, err = nil, "", os.NewSyscallError("setsockopt(SO_PEEK_OFF)", e)
		}
	}()
	size := peekMinBuffer
	if sb, err := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && sb > size {
		size = sb
	}
	buf := make([]byte, size)
	oob := make([]byte, cmsgBufferBytes)
	records := d.typ != unix.SOCK_STREAM
	flags := unix.MSG_PEEK | unix.MSG_DONTWAIT
	if records {
		// the length of the whole datagram or record, so that one
		// larger than buf is read again with room for it
		flags |= unix.MSG_TRUNC
	}
	var total uint64
	short := false
	for off := 0; ; {
		n, oobn, rflags, _, err := unix.Recvmsg(c, buf, oob, flags)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			return nil, "", os.NewSyscallError("recvmsg(MSG_PEEK)", err)
		}
		if oobn > 0 || rflags&unix.MSG_CTRUNC != 0 {
			return nil, controlRefusal(oob[:oobn]), nil
		}
		if records && n > len(buf) {
			buf = make([]byte, n)
			if err := unix.SetsockoptInt(c, unix.SOL_SOCKET, unix.SO_PEEK_OFF, off); err != nil {
				return nil, "", os.NewSyscallError("setsockopt(SO_PEEK_OFF)", err)
			}
			continue
		}
		if n == 0 {
			if d.typ == unix.SOCK_DGRAM {
				// A peek from an offset steps over empty datagrams:
				// they could not all be seen.
				return nil, "an empty datagram in its receive queue", nil
			}
			break // the peer shut down, and what it sent is all read
		}
		if short {
			// A stream peek goes on over every packet but the one
			// with an out-of-band byte, which a peek from an offset
			// past it shows inline: the queue would come back
			// without its mark.
			return nil, "out-of-band data in its receive queue (MSG_OOB) is not supported", nil
		}
		short = !records && n < len(buf)
		q = append(q, images.Entry{Message: &sk_packet.SkPacketEntry{IdFor: proto.Uint32(id), Length: proto.Uint32(uint32(n))},
			Payload: slices.Clone(buf[:n])})
		off += n
		total += uint64(n)
	}
	// The kernel counts every byte of a stream or seqpacket queue, and
	// the first datagram of a datagram queue: what a peek skips (an
	// out-of-band byte) would be lost.
	want := uint64(d.rqueue)
	got := total
	if d.typ == unix.SOCK_DGRAM {
		got = 0
		if len(q) > 0 {
			got = uint64(len(q[0].Payload))
		}
	}
	if got != want {
		return nil, fmt.Sprintf("%d bytes of its receive queue could be read, the kernel counts %d (out-of-band data is not supported)", got, want), nil
	}
	return q, "", nil
}

// controlRefusal says why a queue with control messages (file
// descriptors, credentials) is refused; file descriptors the peek gave
// this process are closed.
func controlRefusal(oob []byte) string {
	why := "control messages in its receive queue are not supported"
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return why
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case unix.SCM_RIGHTS:
			if fds, err := unix.ParseUnixRights(&m); err == nil {
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
			why = "file descriptors in flight in its receive queue (SCM_RIGHTS) are not supported"
		case unix.SCM_CREDENTIALS:
			why = "credentials on the packets of its receive queue (SO_PASSCRED) are not supported"
		}
	}
	return why
}
