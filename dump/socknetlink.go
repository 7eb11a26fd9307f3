package dump

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	sk_netlink "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-netlink"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/nlattr"
)

// Netlink sockets, dumped as CRIU 4.2 dumps them (criu/sk-netlink.c
// dump_one_netlink_fd): the socket diag (NETLINK_SOCK_DIAG, family
// AF_NETLINK) tells the protocol, the port id, the multicast groups, the
// state and the default destination of every socket that is bound or
// listens to groups; a socket it does not list was never bound, and only
// its protocol is read (SO_PROTOCOL). The options every socket has come
// from a copy of the fd (sockOpts).
//
// As CRIU 4.2, refused: a socket with something to read (CRIU's images
// have no place for queued messages), groups above 32 (CRIU's restore
// binds only groups 1-32), groups without a port. Beyond CRIU, which
// dumps such sockets and loses what they have, refused too: the netlink
// options the images have no field for (NETLINK_PKTINFO,
// NETLINK_BROADCAST_ERROR, NETLINK_NO_ENOBUFS, NETLINK_LISTEN_ALL_NSID,
// NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK), a socket of
// another net namespace, and O_ASYNC while images.FileFown does not know
// where netlink entries keep their owner. A dump reply the kernel is
// still writing (NDIAG_FLAG_CB_RUNNING) always has its next part queued
// (or an error pending): the poll refuses it. The socket's type (SOCK_RAW
// or SOCK_DGRAM, the same to netlink) is not kept: both come back
// SOCK_RAW.

// netlink_diag's request and attribute (linux/netlink_diag.h).
const (
	netlinkDiagGroups = 1   // NETLINK_DIAG_GROUPS
	ndiagShowGroups   = 0x2 // NDIAG_SHOW_GROUPS
	ndiagProtoAll     = 255 // NDIAG_PROTO_ALL
)

// netlinkSock is what the socket diag tells of a netlink socket.
type netlinkSock struct {
	protocol, state   uint8
	portid, dstPortid uint32
	dstGroup          uint32
	groups            []byte // NETLINK_DIAG_GROUPS, nil when absent
}

// netlinkOptions are the netlink options that netlink_sk_entry has no
// field for, read with getsockopt(SOL_NETLINK).
var netlinkOptions = []struct {
	opt  int
	name string
}{
	{unix.NETLINK_PKTINFO, "NETLINK_PKTINFO"},
	{unix.NETLINK_BROADCAST_ERROR, "NETLINK_BROADCAST_ERROR"},
	{unix.NETLINK_NO_ENOBUFS, "NETLINK_NO_ENOBUFS"},
	{unix.NETLINK_LISTEN_ALL_NSID, "NETLINK_LISTEN_ALL_NSID"},
	{unix.NETLINK_CAP_ACK, "NETLINK_CAP_ACK"},
	{unix.NETLINK_EXT_ACK, "NETLINK_EXT_ACK"},
	{unix.NETLINK_GET_STRICT_CHK, "NETLINK_GET_STRICT_CHK"},
}

// netlinkSocketEntry describes the netlink socket c (a copy of an fd of
// t), inode ino, open with status flags flags; why says why it can not be
// dumped.
func (ft *fileTable) netlinkSocketEntry(t *task, id uint32, c int, ino uint64, flags uint32) (*fdinfo.FileEntry, string, error) {
	if why, err := ft.net.check(c, otherNetns); why != "" || err != nil { // netns_sock.go
		return nil, why, err
	}
	// CRIU's fd_has_data: anything poll reports (messages, and the
	// error of a message the socket had no room for, which comes with
	// them)
	pfd := []unix.PollFd{{Fd: int32(c), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfd, 0); err != nil {
		return nil, "", os.NewSyscallError("poll", err)
	}
	if ev := pfd[0].Revents; ev != 0 {
		return nil, fmt.Sprintf("a netlink socket with messages to read (poll revents %#x): CRIU 4.2 does not keep them", ev), nil
	}
	for _, o := range netlinkOptions {
		v, err := unix.GetsockoptInt(c, unix.SOL_NETLINK, o.opt)
		if err != nil {
			return nil, "", os.NewSyscallError("getsockopt("+o.name+")", err)
		}
		if v != 0 {
			return nil, o.name + " is not kept by CRIU's images", nil
		}
	}
	sk, err := netlinkDiag(ft.net.diagSocket, uint32(ino))
	if err != nil {
		return nil, "", err
	}
	e := &sk_netlink.NetlinkSkEntry{Id: proto.Uint32(id), Ino: proto.Uint32(uint32(ino)), Flags: proto.Uint32(flags), Fown: zeroFown()}
	if sk != nil {
		groups, why := netlinkGroups(sk)
		if why != "" {
			return nil, why, nil
		}
		e.Protocol, e.State = proto.Uint32(uint32(sk.protocol)), proto.Uint32(uint32(sk.state))
		e.Portid, e.Groups = proto.Uint32(sk.portid), groups
		e.DstPortid, e.DstGroup = proto.Uint32(sk.dstPortid), proto.Uint32(sk.dstGroup)
		e.NsId = proto.Uint32(ft.net.nsID())
	} else {
		// never bound: CRIU writes its protocol, zeros, and its net
		// namespace only when the tree has one of its own
		protocol, err := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err != nil {
			return nil, "", os.NewSyscallError("getsockopt(SO_PROTOCOL)", err)
		}
		sa, err := unix.Getsockname(c)
		if err != nil {
			return nil, "", os.NewSyscallError("getsockname", err)
		}
		if nl, ok := sa.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 || nl.Groups != 0 {
			return nil, "", fmt.Errorf("netlink socket bound (%+v) that the socket diag does not know", sa)
		}
		e.Protocol, e.State, e.Portid = proto.Uint32(uint32(protocol)), proto.Uint32(0), proto.Uint32(0)
		e.DstPortid, e.DstGroup = proto.Uint32(0), proto.Uint32(0)
		if ft.net.ino != 0 {
			e.NsId = proto.Uint32(ft.net.nsID())
		}
	}
	fe := &fdinfo.FileEntry{Type: fdinfo.FdTypes_NETLINKSK.Enum(), Id: proto.Uint32(id), Nlsk: e}
	if p, _ := images.FileFown(fe); p == nil && flags&syscall.O_ASYNC != 0 {
		return nil, "O_ASYNC on a netlink socket: its owner for SIGIO is not dumped yet", nil
	}
	if e.Opts, err = sockOpts(c); err != nil {
		if why := optRefusal(err); why != "" {
			return nil, why, nil
		}
		return nil, "", err
	}
	return fe, "", nil
}

// netlinkGroups is the groups of sk as CRIU 4.2 writes them: the
// kernel's bitmap (unsigned longs) in u32 words, the zero words at its
// end left out but the first (CRIU writes groups [0] for a socket that
// listened to groups and left them all). CRIU leaves out one zero word
// only, and so refuses a bitmap of more than 64 bits with groups in the
// first word alone: crest writes it too, as one word, which CRIU
// restores. why says why the groups can not be dumped.
func netlinkGroups(sk *netlinkSock) ([]uint32, string) {
	if sk.groups == nil {
		return nil, ""
	}
	var words []uint32
	for b := sk.groups; len(b) >= 4; b = b[4:] {
		words = append(words, binary.NativeEndian.Uint32(b))
	}
	for len(words) > 1 && words[len(words)-1] == 0 {
		words = words[:len(words)-1]
	}
	if sk.portid == 0 {
		return nil, "a netlink socket that listens to groups without a port (CRIU 4.2 refuses it)"
	}
	if len(words) > 1 {
		var above []string
		for w, word := range words[1:] {
			for i := 0; i < 32; i++ {
				if word&(1<<i) != 0 {
					above = append(above, fmt.Sprint(32*(w+1)+i+1))
				}
			}
		}
		return nil, fmt.Sprintf("a netlink socket that listens to groups above 32 (%s): CRIU 4.2 restores groups 1-32 only", strings.Join(above, ","))
	}
	return words, ""
}

// netlinkDiag finds the netlink socket of inode ino in the socket diag of
// the sockets' net namespace (socket makes the diag socket); nil when it
// is not there: a socket never bound. A socket that listens to groups is
// listed twice (from the table of ports and from the list of listeners);
// both say the same.
func netlinkDiag(socket func(proto int) (int, error), ino uint32) (*netlinkSock, error) {
	nl, err := socket(unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, err
	}
	defer unix.Close(nl)
	// nlmsghdr, then netlink_diag_req: family, protocol, pad, ino, show,
	// cookie[2]
	req := make([]byte, unix.SizeofNlMsghdr+20)
	req[16], req[17] = unix.AF_NETLINK, ndiagProtoAll
	binary.NativeEndian.PutUint32(req[24:], ndiagShowGroups)
	var found *netlinkSock
	err = sockDiag(nl, req, "family AF_NETLINK", func(msg []byte) {
		if sk, ok := parseNetlinkDiag(msg, ino); ok && found == nil {
			found = sk
		}
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}

// parseNetlinkDiag reads a netlink_diag_msg and its attributes when it is
// the socket of inode ino.
func parseNetlinkDiag(b []byte, ino uint32) (*netlinkSock, bool) {
	// family, type, protocol, state, portid, dst_portid, dst_group, ino,
	// cookie[2]
	const msgLen = 28
	if len(b) < msgLen || binary.NativeEndian.Uint32(b[16:]) != ino {
		return nil, false
	}
	sk := &netlinkSock{protocol: b[2], state: b[3], portid: binary.NativeEndian.Uint32(b[4:]),
		dstPortid: binary.NativeEndian.Uint32(b[8:]), dstGroup: binary.NativeEndian.Uint32(b[12:])}
	if v, ok := nlattr.Parse(b[msgLen:])[netlinkDiagGroups]; ok {
		sk.groups = append([]byte{}, v...)
	}
	return sk, true
}
