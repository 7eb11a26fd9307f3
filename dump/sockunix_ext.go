package dump

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	sk_opts "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	sk_unix "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
	"github.com/crest-restore/crest/images"
)

// External unix sockets, as criu dump --ext-unix-sk writes them
// (criu/sk-unix.c: dump_one_unix_fd defers a socket whose peer was not
// dumped, fix_external_unix_sockets writes the peers no task of the tree
// holds once every task is dumped): a program that logs through
// syslog(3) holds a datagram socket connected to /dev/log, whose listener
// is outside the tree.
//
// Such a peer is written as a unix_sk_entry of its own that no fd table
// holds: type SOCK_DGRAM and state LISTEN whatever it is, uflags
// USK_EXTERN, no peer, its name as the kernel keeps it, a zero fown and
// sk_opts (the required fields only), no net namespace; its id comes
// after every other file of the tree's, as CRIU hands them out, and it
// comes before the sockets connected to it in files.img, which CRIU's
// restore needs. The socket keeps the peer's inode as its peer: a
// restore connects it to the peer's name again (restore/sockunix_ext.go).
//
// Without Options.ExtUnixSk every such socket is refused, as CRIU refuses
// it ("External socket is used"). With it, as CRIU, stream and seqpacket
// connections are refused (one end of a connection can not be made
// again), and peers without a name (nothing to connect to). Refused here
// though CRIU dumps them: a peer connected back to the socket (a restored
// socket may not connect to one connected to another: EPERM, as CRIU's
// restore fails), a peer bound to a relative name (its directory is the
// peer's, outside the tree, which nothing tells).
//
// The decision is taken once the whole tree is dumped, as CRIU takes it:
// only then is it known that no task holds the peer.

// uskExtern is CRIU's USK_EXTERN (criu/sk-unix.c), in unix_sk_entry.uflags.
const uskExtern = 1

// externalUnixSockets writes the peers of the tree's unix sockets that no
// task of the tree holds, or refuses the first socket connected to one
// (UnsupportedError) when they may not be dumped.
func (d *dumper) externalUnixSockets() error {
	ft := d.files
	inTree := map[uint32]bool{}
	for _, fe := range ft.entries {
		if u := fe.GetUsk(); u != nil {
			inTree[u.GetIno()] = true
		}
	}
	made := map[uint32]bool{}
	var peers []*fdinfo.FileEntry
	for _, fe := range ft.entries {
		u := fe.GetUsk()
		if u == nil || u.GetPeer() == 0 || inTree[u.GetPeer()] {
			continue
		}
		name, why, err := d.externalPeer(u)
		if err == nil && why == "" && made[u.GetPeer()] {
			continue
		}
		if err != nil || why != "" {
			task, fd := ft.holder(d, fe.GetId())
			if err != nil {
				return fmt.Errorf("task %d: fd %d: socket:[%d]: %w", task, fd, u.GetIno(), err)
			}
			return &UnsupportedError{Task: task, Resource: fmt.Sprintf("fd %d", fd), What: fmt.Sprintf("socket:[%d]", u.GetIno()), Why: why}
		}
		made[u.GetPeer()] = true
		id := ft.next()
		peers = append(peers, &fdinfo.FileEntry{Type: fdinfo.FdTypes_UNIXSK.Enum(), Id: proto.Uint32(id), Usk: &sk_unix.UnixSkEntry{
			Id: proto.Uint32(id), Ino: proto.Uint32(u.GetPeer()), Type: proto.Uint32(unix.SOCK_DGRAM), State: proto.Uint32(unixListen),
			Flags: proto.Uint32(0), Uflags: proto.Uint32(uskExtern), Backlog: proto.Uint32(0), Peer: proto.Uint32(0), Fown: zeroFown(),
			Opts: &sk_opts.SkOptsEntry{SoSndbuf: proto.Uint32(0), SoRcvbuf: proto.Uint32(0), SoSndTmoSec: proto.Uint64(0),
				SoSndTmoUsec: proto.Uint64(0), SoRcvTmoSec: proto.Uint64(0), SoRcvTmoUsec: proto.Uint64(0)},
			Name: name}})
	}
	// The external peers go last; orderUnixSockets (sockunix_order.go)
	// then puts the sockets connected to each right after it, as
	// fix_external_unix_sockets writes them.
	ft.entries = append(ft.entries, peers...)
	return nil
}

// externalPeer returns the name of the peer of u, a socket of the tree
// connected to one outside it, or why u may not be dumped.
func (d *dumper) externalPeer(u *sk_unix.UnixSkEntry) (name []byte, why string, err error) {
	ft := d.files
	p, err := diagUnix(ft.net.diagSocket, u.GetPeer())
	if errors.Is(err, unix.ENOENT) && ft.net.ino != 0 {
		// The tree has a net namespace of its own, and the peer is
		// not in it: a socket bound to a path is found from any
		// namespace (a listener of crest's, say /dev/log).
		p, err = diagUnix(ownDiagSocket, u.GetPeer())
	}
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Sprintf("its peer socket:[%d] is not open in the dumped tree, nor in a net namespace crest sees", u.GetPeer()), nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("its peer socket:[%d]: %w", u.GetPeer(), err)
	}
	peer := fmt.Sprintf("its peer socket:[%d]", p.ino)
	if len(p.name) > 0 {
		peer += " (" + unixName(p.name) + ")"
	}
	outside := peer + " is not open in the dumped tree"
	if !d.opts.ExtUnixSk {
		hint := "; crest dump --ext-unix-sk dumps it, to be connected to that name again at restore, as criu dump --ext-unix-sk does"
		if u.GetType() != unix.SOCK_DGRAM || len(p.name) == 0 {
			hint = "; not even with --ext-unix-sk, which takes only datagram sockets whose peer has a name, as CRIU"
		}
		return nil, outside + " (external unix sockets are not supported)" + hint, nil
	}
	switch {
	case u.GetType() != unix.SOCK_DGRAM:
		return nil, fmt.Sprintf("%s: one end of a %s connection can not be restored, even with --ext-unix-sk (as CRIU: only datagram sockets)",
			outside, images.SockTypeName(u.GetType())), nil
	case len(p.name) == 0:
		return nil, outside + " and has no name to connect to again (as CRIU, --ext-unix-sk takes only peers with a name)", nil
	case !abstract(p.name) && !strings.HasPrefix(pathName(p.name), "/"):
		return nil, outside + " and is bound to a relative name, whose directory crest can not know", nil
	case p.peer == u.GetIno():
		return nil, outside + " and is connected back to it: a restored socket could not connect to it (EPERM while it is connected to the one dumped)", nil
	}
	return p.name, "", nil
}

// holder returns the task (its pid in the tree's namespace) and the fd
// of the first fd that holds file id.
func (ft *fileTable) holder(d *dumper, id uint32) (int, int) {
	for _, o := range ft.open {
		if o.id != id {
			continue
		}
		for _, t := range d.tree.tasks {
			if t.pid == o.pid {
				return int(t.nsPid), o.fd
			}
		}
		return o.pid, o.fd
	}
	return 0, -1
}

// unixName shows a socket name: an abstract one as "@name".
func unixName(name []byte) string {
	if abstract(name) {
		return "@" + string(name[1:])
	}
	return pathName(name)
}
