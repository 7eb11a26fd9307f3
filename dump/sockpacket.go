package dump

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	packet_sock "github.com/checkpoint-restore/go-criu/v8/crit/images/packet-sock"
	"github.com/crest-restore/crest/internal/nlattr"
)

// Packet sockets (AF_PACKET), dumped as CRIU 4.2 dumps them
// (criu/sk-packet.c dump_one_packet_fd): the socket diag (family
// AF_PACKET, PACKET_SHOW_INFO, MCLIST, RING_CFG and FANOUT) tells the
// type, the protocol, the interface index, PACKET_VERSION,
// PACKET_RESERVE, PACKET_TIMESTAMP, PACKET_COPY_THRESH, the flags
// PACKET_AUXDATA, PACKET_ORIGDEV, PACKET_VNET_HDR and PACKET_LOSS, the
// memberships, the rings and the fanout group. The options every socket
// has come from a copy of the fd (sockOpts). Packets queued on the
// socket are not kept, as by CRIU: its images have no place for them.
//
// Refused, as by CRIU 4.2: membership types it does not know. Beyond
// CRIU, which dumps a membership joined more than once (the kernel
// counts them) only as a refusal, crest writes it that many times, which
// CRIU's restore joins as often; and the fanout group's flags
// (PACKET_FANOUT_FLAG_ROLLOVER, DEFRAG, IGNORE_OUTGOING), which the diag
// does not tell and CRIU loses, are read with getsockopt(PACKET_FANOUT). Refused beyond CRIU, which dumps them and
// loses what they have: SOCK_PACKET sockets (scope), mapped rings
// (PACKET_RX_RING, PACKET_TX_RING: crest's restore does not map packet
// socket mappings), fanout groups steered by a BPF program (the program
// is not dumped), the options the images have no field for
// (PACKET_QDISC_BYPASS, PACKET_TX_HAS_OFF, PACKET_IGNORE_OUTGOING, a
// PACKET_VNET_HDR_SZ other than PACKET_VNET_HDR's), a socket bound to an
// interface that is gone, and a socket of another net namespace. Its
// owner for SIGIO and O_ASYNC are written as every file's.

// packet_diag's request flags and attributes (linux/packet_diag.h).
const (
	packetShowInfo    = 0x1 // PACKET_SHOW_INFO
	packetShowMclist  = 0x2 // PACKET_SHOW_MCLIST
	packetShowRingCfg = 0x4 // PACKET_SHOW_RING_CFG
	packetShowFanout  = 0x8 // PACKET_SHOW_FANOUT

	packetDiagInfo   = 0 // PACKET_DIAG_INFO (the enum has no NONE)
	packetDiagMclist = 1 // PACKET_DIAG_MCLIST
	packetDiagRxRing = 2 // PACKET_DIAG_RX_RING
	packetDiagTxRing = 3 // PACKET_DIAG_TX_RING
	packetDiagFanout = 4 // PACKET_DIAG_FANOUT

	// packet_diag_info.pdi_flags
	pdiAuxdata = 0x2
	pdiOrigdev = 0x4
	pdiVnethdr = 0x8
	pdiLoss    = 0x10

	// sizeof(struct packet_diag_mclist): index, count, type, alen,
	// addr[MAX_ADDR_LEN]
	packetDiagMclistLen = 44
	// sizeof(struct virtio_net_hdr), the header PACKET_VNET_HDR asks for
	virtioNetHdrLen = 10
)

// packetSock is what the socket diag tells of a packet socket.
type packetSock struct {
	typ       uint8
	num       uint16 // the protocol, host order
	info      [6]uint32
	mclist    []byte // PACKET_DIAG_MCLIST, packet_diag_mclist entries
	rx, tx    bool
	fanout    uint32
	hasFanout bool
}

// packetOptions are the packet options that packet_sock_entry has no
// field for, read with getsockopt(SOL_PACKET): each is 0 unless set.
var packetOptions = []struct {
	opt  int
	name string
}{
	{unix.PACKET_QDISC_BYPASS, "PACKET_QDISC_BYPASS"},
	{unix.PACKET_TX_HAS_OFF, "PACKET_TX_HAS_OFF"},
	{unix.PACKET_IGNORE_OUTGOING, "PACKET_IGNORE_OUTGOING"},
}

// packetSocketEntry describes the packet socket c (a copy of an fd of t),
// inode ino, open with status flags flags; why says why it can not be
// dumped.
func (ft *fileTable) packetSocketEntry(t *task, id uint32, c int, ino uint64, flags uint32) (*fdinfo.FileEntry, string, error) {
	if why, err := ft.net.check(c, otherNetns); why != "" || err != nil { // netns_sock.go
		return nil, why, err
	}
	// a SOCK_PACKET socket has none of the options below
	typ, err := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, "", os.NewSyscallError("getsockopt(SO_TYPE)", err)
	}
	if typ != unix.SOCK_RAW && typ != unix.SOCK_DGRAM {
		return nil, fmt.Sprintf("a packet socket of type %d (SOCK_PACKET is not supported)", typ), nil
	}
	for _, o := range packetOptions {
		v, err := unix.GetsockoptInt(c, unix.SOL_PACKET, o.opt)
		if err != nil {
			return nil, "", os.NewSyscallError("getsockopt("+o.name+")", err)
		}
		if v != 0 {
			return nil, o.name + " on a packet socket is not kept by CRIU's images", nil
		}
	}
	sk, err := packetDiag(ft.net.diagSocket, uint32(ino))
	if err != nil {
		return nil, "", err
	}
	if sk == nil {
		return nil, "", fmt.Errorf("packet socket %d not in the socket diag", ino)
	}
	if int(sk.typ) != typ {
		return nil, "", fmt.Errorf("packet socket of type %d, the socket diag's %d", typ, sk.typ)
	}
	if int32(sk.info[0]) < 0 {
		// the kernel's mark of a socket whose interface went away
		return nil, fmt.Sprintf("a packet socket bound to an interface that is gone (ifindex %d)", int32(sk.info[0])), nil
	}
	if sk.rx || sk.tx {
		return nil, "a packet socket with a mapped ring (PACKET_RX_RING, PACKET_TX_RING) is not supported", nil
	}
	if sk.hasFanout {
		if typ := sk.fanout >> 16 & 0xff; typ == unix.PACKET_FANOUT_CBPF || typ == unix.PACKET_FANOUT_EBPF {
			return nil, "a packet socket in a fanout group steered by a BPF program, which is not dumped", nil
		}
	}
	pdiFlags := sk.info[5]
	if pdiFlags&pdiVnethdr != 0 {
		sz, err := unix.GetsockoptInt(c, unix.SOL_PACKET, unix.PACKET_VNET_HDR_SZ)
		if err != nil {
			return nil, "", os.NewSyscallError("getsockopt(PACKET_VNET_HDR_SZ)", err)
		}
		if sz != virtioNetHdrLen {
			return nil, fmt.Sprintf("PACKET_VNET_HDR_SZ %d on a packet socket is not kept by CRIU's images (PACKET_VNET_HDR is %d)", sz, virtioNetHdrLen), nil
		}
	}
	mclist, why := packetMemberships(sk.mclist)
	if why != "" {
		return nil, why, nil
	}
	var proto16 [2]byte
	binary.BigEndian.PutUint16(proto16[:], sk.num)
	e := &packet_sock.PacketSockEntry{Id: proto.Uint32(id), Type: proto.Uint32(uint32(sk.typ)),
		// network order, as socket(2) takes it
		Protocol: proto.Uint32(uint32(binary.NativeEndian.Uint16(proto16[:]))),
		Flags:    proto.Uint32(flags), Ifindex: proto.Uint32(sk.info[0]), Fown: zeroFown(),
		Version: proto.Uint32(sk.info[1]), Reserve: proto.Uint32(sk.info[2]), CopyThresh: proto.Uint32(sk.info[3]),
		Timestamp: proto.Uint32(sk.info[4]), AuxData: proto.Bool(pdiFlags&pdiAuxdata != 0),
		OrigDev: proto.Bool(pdiFlags&pdiOrigdev != 0), VnetHdr: proto.Bool(pdiFlags&pdiVnethdr != 0),
		Loss: proto.Bool(pdiFlags&pdiLoss != 0), Mclist: mclist, NsId: proto.Uint32(ft.net.nsID())}
	if sk.hasFanout {
		// the diag leaves the group's flags out (rollover, defrag,
		// ignore outgoing), which getsockopt has
		v, err := unix.GetsockoptInt(c, unix.SOL_PACKET, unix.PACKET_FANOUT)
		if err != nil {
			return nil, "", os.NewSyscallError("getsockopt(PACKET_FANOUT)", err)
		}
		if uint32(v)&0xffffff != sk.fanout&0xffffff {
			return nil, "", fmt.Errorf("packet socket fanout %#x, the socket diag's %#x", v, sk.fanout)
		}
		e.Fanout = proto.Uint32(uint32(v))
	}
	fe := &fdinfo.FileEntry{Type: fdinfo.FdTypes_PACKETSK.Enum(), Id: proto.Uint32(id), Psk: e}
	if e.Opts, err = sockOpts(c); err != nil {
		if why := optRefusal(err); why != "" {
			return nil, why, nil
		}
		return nil, "", err
	}
	return fe, "", nil
}

// packetMemberships is the memberships of the diag's mclist attribute as
// packet_mclist entries: one per join (the kernel counts a membership
// joined twice once, with a count of 2). why says why they can not be
// dumped.
func packetMemberships(b []byte) ([]*packet_sock.PacketMclist, string) {
	var out []*packet_sock.PacketMclist
	for ; len(b) >= packetDiagMclistLen; b = b[packetDiagMclistLen:] {
		index, count := binary.NativeEndian.Uint32(b), binary.NativeEndian.Uint32(b[4:])
		typ, alen := binary.NativeEndian.Uint16(b[8:]), binary.NativeEndian.Uint16(b[10:])
		m := &packet_sock.PacketMclist{Index: proto.Uint32(index), Type: proto.Uint32(uint32(typ)), Addr: []byte{}}
		switch typ {
		case unix.PACKET_MR_MULTICAST, unix.PACKET_MR_UNICAST:
			if int(alen) > len(b)-12 {
				return nil, fmt.Sprintf("a packet socket membership with a %d-byte address", alen)
			}
			m.Addr = append([]byte{}, b[12:12+alen]...)
		case unix.PACKET_MR_PROMISC, unix.PACKET_MR_ALLMULTI:
		default:
			return nil, fmt.Sprintf("a packet socket membership of type %d (CRIU 4.2 knows multicast, unicast, promisc and allmulti)", typ)
		}
		for range count {
			out = append(out, m)
		}
	}
	return out, ""
}

// packetDiag finds the packet socket of inode ino in the socket diag of
// the sockets' net namespace (socket makes the diag socket); nil when it
// is not there.
func packetDiag(socket func(proto int) (int, error), ino uint32) (*packetSock, error) {
	nl, err := socket(unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, err
	}
	defer unix.Close(nl)
	// nlmsghdr, then packet_diag_req: family, protocol, pad, ino, show,
	// cookie[2]
	req := make([]byte, unix.SizeofNlMsghdr+20)
	req[16] = unix.AF_PACKET
	binary.NativeEndian.PutUint32(req[20:], ino)
	binary.NativeEndian.PutUint32(req[24:], packetShowInfo|packetShowMclist|packetShowRingCfg|packetShowFanout)
	var found *packetSock
	err = sockDiag(nl, req, "family AF_PACKET", func(msg []byte) {
		if sk, ok := parsePacketDiag(msg, ino); ok && found == nil {
			found = sk
		}
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}

// parsePacketDiag reads a packet_diag_msg and its attributes when it is
// the socket of inode ino.
func parsePacketDiag(b []byte, ino uint32) (*packetSock, bool) {
	// family, type, num, ino, cookie[2]
	const msgLen = 16
	if len(b) < msgLen || binary.NativeEndian.Uint32(b[4:]) != ino {
		return nil, false
	}
	sk := &packetSock{typ: b[1], num: binary.NativeEndian.Uint16(b[2:])}
	attrs := nlattr.Parse(b[msgLen:])
	info := attrs[packetDiagInfo]
	for i := range sk.info {
		if len(info) >= 4*(i+1) {
			sk.info[i] = binary.NativeEndian.Uint32(info[4*i:])
		}
	}
	if v, ok := attrs[packetDiagMclist]; ok {
		sk.mclist = append([]byte{}, v...)
	}
	_, sk.rx = attrs[packetDiagRxRing]
	_, sk.tx = attrs[packetDiagTxRing]
	if v := attrs[packetDiagFanout]; len(v) >= 4 {
		sk.fanout, sk.hasFanout = binary.NativeEndian.Uint32(v), true
	}
	return sk, true
}
