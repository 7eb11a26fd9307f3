package restore

import (
	"encoding/binary"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	packet_sock "github.com/checkpoint-restore/go-criu/v8/crit/images/packet-sock"
	sk_opts "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
)

// Packet sockets (AF_PACKET), as CRIU 4.2 restores them (criu/sk-packet.c
// open_packet_sk): a new socket of the image's type and protocol, bound
// to the dumped interface index (0: every interface; the protocol stays
// the socket's), then PACKET_VERSION, PACKET_RESERVE, PACKET_TIMESTAMP
// and PACKET_COPY_THRESH, the flags PACKET_AUXDATA, PACKET_ORIGDEV,
// PACKET_VNET_HDR and PACKET_LOSS that are on, the memberships
// (PACKET_ADD_MEMBERSHIP: multicast and unicast addresses, promiscuous
// and all-multicast modes), the fanout group, its status flags and the
// options every socket has. The interface index is the dump's: a tree
// with a net namespace of its own has its interfaces back with their
// indexes (there the sockets are made in PREPARE_NAMESPACES, with the
// tree's other sockets: netns_fill.go); in crest's namespace the index
// must still name the interface it did, which nothing checks (CRIU does
// not either). Packets queued on the socket at the dump are lost, as
// from CRIU, whose images have no place for them.
//
// Refused at planning: SOCK_PACKET sockets (CRIU restores them apart),
// mapped rings (PACKET_RX_RING, PACKET_TX_RING: crest's memory restore
// does not map packet socket mappings, and a ring without its mapping is
// of no use to its program), fanout groups that steer with a BPF program
// (PACKET_FANOUT_CBPF, PACKET_FANOUT_EBPF: the images do not have it, and
// the group would send every packet to one socket), membership types and
// address lengths the kernel does not have, status flags other than
// O_NONBLOCK and O_ASYNC, and a socket of another net namespace than
// its task's. An owner for SIGIO is planned as every file's (fown.go).

// sockPacket is SOCK_PACKET, the obsolete type of packet socket.
const sockPacket = 10

// packetMreqMax is the kernel's struct packet_mreq_max: ifindex, type,
// address length, and an address of up to MAX_ADDR_LEN (32) bytes.
const (
	packetMreqMax = 8 + packetMaxAddr
	packetMaxAddr = 32
)

var packetMembershipNames = map[uint32]string{unix.PACKET_MR_MULTICAST: "multicast", unix.PACKET_MR_PROMISC: "promisc",
	unix.PACKET_MR_ALLMULTI: "allmulti", unix.PACKET_MR_UNICAST: "unicast"}

var packetFanoutNames = map[uint32]string{unix.PACKET_FANOUT_HASH: "hash", unix.PACKET_FANOUT_LB: "lb", unix.PACKET_FANOUT_CPU: "cpu",
	unix.PACKET_FANOUT_ROLLOVER: "rollover", unix.PACKET_FANOUT_RND: "rnd", unix.PACKET_FANOUT_QM: "qm",
	unix.PACKET_FANOUT_CBPF: "cbpf", unix.PACKET_FANOUT_EBPF: "ebpf"}

// PacketSocket is an AF_PACKET socket of files.img.
type PacketSocket struct {
	Type int // SOCK_RAW or SOCK_DGRAM
	// Protocol is the ethertype it receives, in host order (0: none,
	// ETH_P_ALL 3: every one).
	Protocol uint16
	Ifindex  int // the interface it is bound to, 0 for none
	// Version is PACKET_VERSION (TPACKET_V1 0, V2 1, V3 2); Reserve,
	// Timestamp and CopyThresh PACKET_RESERVE, PACKET_TIMESTAMP and
	// PACKET_COPY_THRESH.
	Version, Reserve, Timestamp, CopyThresh uint32
	AuxData, OrigDev, VnetHdr, Loss         bool
	Memberships                             []*packet_sock.PacketMclist
	// Fanout is the PACKET_FANOUT value (the group's id, its type << 16
	// and flags << 24) when HasFanout.
	Fanout    uint32
	HasFanout bool
	Opts      *sk_opts.SkOptsEntry
	owner     *sockOwner // who the engine makes it as (userns_sock.go)
}

// String names the socket as errors show it:
// "SOCK_RAW protocol 0x88b5 on ifindex 1 fanout 17 (hash)".
func (s *PacketSocket) String() string {
	str := fmt.Sprintf("socket type %d", s.Type)
	switch s.Type {
	case unix.SOCK_RAW:
		str = "SOCK_RAW"
	case unix.SOCK_DGRAM:
		str = "SOCK_DGRAM"
	case sockPacket:
		str = "SOCK_PACKET"
	}
	str += fmt.Sprintf(" protocol %#x", s.Protocol)
	if s.Ifindex != 0 {
		str += fmt.Sprintf(" on ifindex %d", s.Ifindex)
	} else {
		str += " on every interface"
	}
	if s.HasFanout {
		typ := s.Fanout >> 16 & 0xff
		name := packetFanoutNames[typ]
		if name == "" {
			name = fmt.Sprintf("type %d", typ)
		}
		str += fmt.Sprintf(" fanout %d (%s)", s.Fanout&0xffff, name)
	}
	return str
}

// packetSocketFile plans the PACKETSK entry id of files.img, which task t
// holds.
func (p *Plan) packetSocketFile(t *Task, id uint32, fe *fdinfo.FileEntry) (*File, error) {
	e := fe.GetPsk()
	bad := func(format string, args ...any) error {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: packet socket: "+format, append([]any{id}, args...)...)}
	}
	if e == nil {
		return nil, bad("PACKETSK without its entry")
	}
	var proto [2]byte
	binary.NativeEndian.PutUint16(proto[:], uint16(e.GetProtocol()))
	s := &PacketSocket{Type: int(e.GetType()), Protocol: binary.BigEndian.Uint16(proto[:]), Ifindex: int(e.GetIfindex()),
		Version: e.GetVersion(), Reserve: e.GetReserve(), Timestamp: e.GetTimestamp(), CopyThresh: e.GetCopyThresh(),
		AuxData: e.GetAuxData(), OrigDev: e.GetOrigDev(), VnetHdr: e.GetVnetHdr(), Loss: e.GetLoss(),
		Memberships: e.GetMclist(), Fanout: e.GetFanout(), HasFanout: e.Fanout != nil, Opts: e.GetOpts()}
	switch {
	case s.Type == sockPacket:
		return nil, bad("%s: SOCK_PACKET sockets are not restored", s)
	case s.Type != unix.SOCK_RAW && s.Type != unix.SOCK_DGRAM:
		return nil, bad("%s: type %d (packet sockets are SOCK_RAW or SOCK_DGRAM)", s, s.Type)
	case e.GetProtocol() > 0xffff:
		return nil, bad("%s: protocol %#x does not fit an ethertype", s, e.GetProtocol())
	case int32(e.GetIfindex()) < 0:
		return nil, bad("%s: interface index %d", s, int32(e.GetIfindex()))
	case e.GetRxRing() != nil || e.GetTxRing() != nil:
		return nil, bad("%s: a mapped ring (PACKET_RX_RING, PACKET_TX_RING) is not restored", s)
	case s.Opts == nil:
		return nil, bad("%s: no socket options (sk_opts_entry)", s)
	}
	if s.HasFanout {
		switch typ := s.Fanout >> 16 & 0xff; typ {
		case unix.PACKET_FANOUT_CBPF, unix.PACKET_FANOUT_EBPF:
			return nil, bad("%s: a fanout group steered by a BPF program, which the images do not have", s)
		default:
			if packetFanoutNames[typ] == "" {
				return nil, bad("%s: fanout type %d unknown", s, typ)
			}
		}
	}
	for i, m := range s.Memberships {
		name := packetMembershipNames[m.GetType()]
		switch {
		case name == "":
			return nil, bad("%s: membership %d: type %d unknown", s, i, m.GetType())
		case len(m.GetAddr()) > packetMaxAddr:
			return nil, bad("%s: membership %d (%s on ifindex %d): a %d-byte address, above %d", s, i, name, m.GetIndex(), len(m.GetAddr()), packetMaxAddr)
		}
	}
	if extra := e.GetFlags() &^ (syscall.O_ACCMODE | syscall.O_NONBLOCK | syscall.O_ASYNC); extra != 0 {
		return nil, bad("%s: status flags %#o: only O_NONBLOCK and O_ASYNC are restored on sockets", s, extra)
	}
	if e.NsId != nil && t.IDs != nil && t.IDs.NetNsId != nil && e.GetNsId() != t.IDs.GetNetNsId() {
		return nil, bad("%s: in net namespace %d, its task in %d: sockets of other net namespaces are not restored", s, e.GetNsId(), t.IDs.GetNetNsId())
	}
	f := &File{ID: id, Kind: FilePacketSocket, Path: "socket:[packet]", Flags: e.GetFlags(), Packet: s}
	p.Files[id] = f
	return f, nil
}

// openPacketSocket makes the socket f is, in the calling thread's net
// namespace.
func openPacketSocket(f *File) (int, error) {
	s := f.Packet
	var fd int
	err := s.owner.makeSocket(func() (err error) {
		// the protocol in network order, as socket(2) wants it
		fd, err = unix.Socket(unix.AF_PACKET, s.Type|unix.SOCK_CLOEXEC, int(htons(s.Protocol)))
		return os.NewSyscallError("socket", err)
	})
	if err != nil {
		return -1, fmt.Errorf("packet socket %s: %w", s, err)
	}
	if err := setupPacketSocket(fd, f); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("packet socket %s: %w", s, err)
	}
	return fd, nil
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func setupPacketSocket(fd int, f *File) error {
	s := f.Packet
	// protocol 0 keeps the socket's; CRIU binds an unbound socket too
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: s.Ifindex}); err != nil {
		return os.NewSyscallError(fmt.Sprintf("bind(ifindex %d)", s.Ifindex), err)
	}
	set := func(opt int, name string, v uint32) error {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, opt, int(v)); err != nil {
			return os.NewSyscallError(fmt.Sprintf("setsockopt(%s, %d)", name, v), err)
		}
		return nil
	}
	opts := []struct {
		on   bool
		opt  int
		name string
		v    uint32
	}{
		{true, unix.PACKET_VERSION, "PACKET_VERSION", s.Version},
		{true, unix.PACKET_RESERVE, "PACKET_RESERVE", s.Reserve},
		{true, unix.PACKET_TIMESTAMP, "PACKET_TIMESTAMP", s.Timestamp},
		{true, unix.PACKET_COPY_THRESH, "PACKET_COPY_THRESH", s.CopyThresh},
		{s.AuxData, unix.PACKET_AUXDATA, "PACKET_AUXDATA", 1},
		{s.OrigDev, unix.PACKET_ORIGDEV, "PACKET_ORIGDEV", 1},
		{s.VnetHdr, unix.PACKET_VNET_HDR, "PACKET_VNET_HDR", 1},
		{s.Loss, unix.PACKET_LOSS, "PACKET_LOSS", 1},
	}
	for _, o := range opts {
		if o.on {
			if err := set(o.opt, o.name, o.v); err != nil {
				return err
			}
		}
	}
	for _, m := range s.Memberships {
		if err := addPacketMembership(fd, m); err != nil {
			return err
		}
	}
	if s.HasFanout {
		if err := set(unix.PACKET_FANOUT, "PACKET_FANOUT", s.Fanout); err != nil {
			return err
		}
	}
	if f.Flags&syscall.O_NONBLOCK != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, unix.O_NONBLOCK); err != nil {
			return os.NewSyscallError("fcntl(F_SETFL, O_NONBLOCK)", err)
		}
	}
	return applySockOpts(fd, s.Opts)
}

// addPacketMembership joins m (PACKET_ADD_MEMBERSHIP with a struct
// packet_mreq_max: x/sys's PacketMreq has room for 8 address bytes only).
func addPacketMembership(fd int, m *packet_sock.PacketMclist) error {
	var req [packetMreqMax]byte
	binary.NativeEndian.PutUint32(req[0:], m.GetIndex())
	binary.NativeEndian.PutUint16(req[4:], uint16(m.GetType()))
	binary.NativeEndian.PutUint16(req[6:], uint16(len(m.GetAddr())))
	copy(req[8:], m.GetAddr())
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP,
		uintptr(unsafe.Pointer(&req[0])), uintptr(len(req)), 0)
	if e != 0 {
		return os.NewSyscallError(fmt.Sprintf("setsockopt(PACKET_ADD_MEMBERSHIP, %s on ifindex %d address %x)",
			packetMembershipNames[m.GetType()], m.GetIndex(), m.GetAddr()), e)
	}
	return nil
}
