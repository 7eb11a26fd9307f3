package dump

import (
	"fmt"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
)

// The order of the unix sockets in files.img. CRIU 4.2's restore reads
// files.img in order and looks for a socket's peer only among the unix
// sockets read before it (criu/sk-unix.c: collect_one_unixsk calls
// try_resolve_unix_peer, which finds the peer by inode among those
// collected so far); a peer read later resolves the socket only when it
// is connected back to it (a pair). Any other socket whose peer comes
// after it is left unresolved, and the restore fails: "FATAL: Peer %u
// unresolved for %u" (fixup_unix_peer). CRIU's dump defers such a socket
// until its peer is written (dump_one_unix_fd's peer_list), and writes the
// external peers of --ext-unix-sk before the sockets connected to them
// (fix_external_unix_sockets).
//
// crest's ids come in CRIU's order (the fd tables, task by task), and the
// entries stay in it but for that rule: a socket whose peer is not
// connected back to it (a datagram socket connected by name, to a path or
// an abstract name; a client of an external peer) waits until its peer is
// written, and those waiting on it follow it, in the order they came. A
// chain (a socket connected to one that is itself connected to a third)
// unwinds from its end. crest's own restore does not care about the order
// (restore/sockunix.go plans each socket after its peer). Ids do not
// change: they are handed out before, in CRIU's order.

// unixPeerFirst returns the inode of the socket u must come after in
// files.img, or 0 when it may come anywhere: its peer, unless the peer is
// u itself or is connected back to it.
func unixPeerFirst(peers map[uint32]uint32, ino uint32) uint32 {
	p := peers[ino]
	if p == 0 || p == ino {
		return 0
	}
	if back, ok := peers[p]; ok && back == ino {
		return 0
	}
	return p
}

// orderUnixSockets puts every unix socket of files.img after the socket
// it needs before it (unixPeerFirst), keeping every other entry where it
// is.
func (d *dumper) orderUnixSockets() error {
	ft := d.files
	peers := map[uint32]uint32{} // socket inode -> its peer's inode
	for _, fe := range ft.entries {
		if u := fe.GetUsk(); u != nil {
			peers[u.GetIno()] = u.GetPeer()
		}
	}
	out := make([]*fdinfo.FileEntry, 0, len(ft.entries))
	written := map[uint32]bool{}
	waiting := map[uint32][]*fdinfo.FileEntry{} // by the inode each waits for
	var write func(fe *fdinfo.FileEntry)
	write = func(fe *fdinfo.FileEntry) {
		out = append(out, fe)
		u := fe.GetUsk()
		if u == nil {
			return
		}
		written[u.GetIno()] = true
		next := waiting[u.GetIno()]
		delete(waiting, u.GetIno())
		for _, w := range next {
			write(w)
		}
	}
	for _, fe := range ft.entries {
		if u := fe.GetUsk(); u != nil {
			p := unixPeerFirst(peers, u.GetIno())
			if _, known := peers[p]; p != 0 && known && !written[p] {
				waiting[p] = append(waiting[p], fe)
				continue
			}
		}
		write(fe)
	}
	if len(waiting) > 0 {
		// Only a ring of three sockets or more, each connected to the
		// next, would leave sockets waiting, and the kernel does not
		// let a tree make one: a datagram socket connects only to one
		// that is not connected, or connected back to it (EPERM).
		var left []string
		for _, fe := range ft.entries {
			if u := fe.GetUsk(); u != nil && !written[u.GetIno()] {
				left = append(left, fmt.Sprintf("socket:[%d] (peer socket:[%d])", u.GetIno(), u.GetPeer()))
			}
		}
		return fmt.Errorf("files.img: no order puts every unix socket after its peer: %s", strings.Join(left, ", "))
	}
	ft.entries = out
	return nil
}
