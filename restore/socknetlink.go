package restore

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"

	"github.com/crest-restore/crest/images"
)

// Netlink sockets, as CRIU 4.2 restores them (criu/sk-netlink.c
// open_netlink_sk): a new SOCK_RAW socket of the protocol (the image has
// no type: a SOCK_DGRAM one comes back SOCK_RAW, which netlink treats
// alike), bound to the dumped port id with the groups 1-32 when it had a
// port, connected when it was, then its status flags and options. A
// socket unconnected (state 0) or never connected (7) comes back a new
// one (7), and one that left every group it had joined (groups [0]) one
// that never joined any (NETLINK_LIST_MEMBERSHIPS lists no word), as from
// CRIU. In a tree with a net namespace of its own, the sockets are made in
// it in PREPARE_NAMESPACES, with the tree's other sockets (netns_fill.go).
//
// A port the kernel picked (autobind: the binder's pid, or a random
// negative number when that was taken) is bound explicitly, since the
// image does not say who chose it. When the port is taken now, as CRIU
// does, the socket is bound to port 0, which lets the kernel pick another:
// few programs care which port they have. Unlike CRIU, crest does so only
// for a port in use (EADDRINUSE); any other failure of bind fails the
// restore. The engine logs it when it makes the socket in the tree's net
// namespace; prepareFiles, which makes the others, has no logger.
//
// Beyond CRIU 4.2, which refuses them: groups above 32 (more than one
// word of groups), joined with NETLINK_ADD_MEMBERSHIP; CRIU's dump never
// writes them. And a socket connected to the kernel (port 0, group 0)
// comes back so: CRIU 4.2 connects it to 1 << (dst_group - 1), which for
// group 0 is group 32 (1 << 31 on x86), and the socket's sends would go
// to that group's listeners too.
//
// Queued messages: CRIU 4.2's images have none (nl_opts is commented out
// of sk-netlink.proto): its dump refuses a socket with data to read, and
// so does crest's. Refused at planning: a protocol netlink does not have,
// a state other than unconnected or connected, groups without a port,
// status flags other than O_NONBLOCK and O_ASYNC, a socket of another net
// namespace than its task's, and an owner for SIGIO while images.FileFown
// does not know where netlink entries keep it.

// sk_state of a netlink socket as netlink_sk_entry.state keeps it.
const (
	// netlinkUnconnected: after connect(AF_UNSPEC); CRIU also writes it
	// for a socket the socket diag does not list (never bound).
	netlinkUnconnected = 0
	netlinkConnected   = 1
	// netlinkNew is TCP_CLOSE, the state sock_init_data gives a new
	// socket, which the diag reports until it connects.
	netlinkNew = 7
)

// netlinkProtocols are the protocols of linux/netlink.h, by number.
var netlinkProtocols = map[int]string{0: "NETLINK_ROUTE", 1: "NETLINK_UNUSED", 2: "NETLINK_USERSOCK",
	3: "NETLINK_FIREWALL", 4: "NETLINK_SOCK_DIAG", 5: "NETLINK_NFLOG", 6: "NETLINK_XFRM", 7: "NETLINK_SELINUX",
	8: "NETLINK_ISCSI", 9: "NETLINK_AUDIT", 10: "NETLINK_FIB_LOOKUP", 11: "NETLINK_CONNECTOR",
	12: "NETLINK_NETFILTER", 13: "NETLINK_IP6_FW", 14: "NETLINK_DNRTMSG", 15: "NETLINK_KOBJECT_UEVENT",
	16: "NETLINK_GENERIC", 18: "NETLINK_SCSITRANSPORT", 19: "NETLINK_ECRYPTFS", 20: "NETLINK_RDMA",
	21: "NETLINK_CRYPTO", 22: "NETLINK_SMC"}

// netlinkMaxProtocol is MAX_LINKS - 1: socket(2) refuses the others.
const netlinkMaxProtocol = 31

func netlinkProtocolName(p int) string {
	if n, ok := netlinkProtocols[p]; ok {
		return n
	}
	return fmt.Sprintf("netlink protocol %d", p)
}

// NetlinkSocket is an AF_NETLINK socket of files.img.
type NetlinkSocket struct {
	Ino      uint32 // its inode number at the dump
	Protocol int
	// Port is the port id it was bound to, 0 for none.
	Port uint32
	// Groups are the multicast groups it listens to, a bitmap in words
	// of 32: bit i of word w is group 32*w+i+1.
	Groups []uint32
	// Connected: its default destination is DstPort, DstGroup (a group
	// number, 0 for none).
	Connected         bool
	DstPort, DstGroup uint32
	Opts              *sk_opts.SkOptsEntry
	owner             *sockOwner // who the engine makes it as (userns_sock.go)
}

// groupList is the numbers of the groups s listens to.
func (s *NetlinkSocket) groupList() []uint32 {
	var out []uint32
	for w, word := range s.Groups {
		for word != 0 {
			i := bits.TrailingZeros32(word)
			out = append(out, uint32(32*w+i+1))
			word &^= 1 << i
		}
	}
	return out
}

// String names the socket as errors show it:
// "NETLINK_ROUTE port 1 groups 1,5,9".
func (s *NetlinkSocket) String() string {
	str := netlinkProtocolName(s.Protocol)
	if s.Port != 0 {
		str += fmt.Sprintf(" port %d", s.Port)
	} else {
		str += " unbound"
	}
	if g := s.groupList(); len(g) > 0 {
		var names []string
		for _, n := range g {
			names = append(names, fmt.Sprint(n))
		}
		str += " groups " + strings.Join(names, ",")
	}
	if s.Connected {
		str += fmt.Sprintf(" connected to port %d group %d", s.DstPort, s.DstGroup)
	}
	return str
}

// netlinkSocketFile plans the NETLINKSK entry id of files.img, which task
// t holds.
func (p *Plan) netlinkSocketFile(t *Task, id uint32, fe *fdinfo.FileEntry) (*File, error) {
	e := fe.GetNlsk()
	bad := func(format string, args ...any) error {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: netlink socket: "+format, append([]any{id}, args...)...)}
	}
	if e == nil {
		return nil, bad("NETLINKSK without its entry")
	}
	s := &NetlinkSocket{Ino: e.GetIno(), Protocol: int(e.GetProtocol()), Port: e.GetPortid(), Groups: e.GetGroups(),
		DstPort: e.GetDstPortid(), DstGroup: e.GetDstGroup(), Opts: e.GetOpts()}
	if e.GetProtocol() > netlinkMaxProtocol {
		return nil, bad("protocol %d: netlink has protocols 0 to %d", e.GetProtocol(), netlinkMaxProtocol)
	}
	switch e.GetState() {
	case netlinkNew, netlinkUnconnected:
	case netlinkConnected:
		s.Connected = true
		if s.DstGroup > 32 {
			return nil, bad("%s: connected to group %d, above 32", s, s.DstGroup)
		}
	default:
		return nil, bad("%s: state %d (0 and 7 are unconnected, 1 connected)", s, e.GetState())
	}
	if s.Port == 0 && len(s.groupList()) > 0 {
		// CRIU's restore would drop them; its dump refuses such a
		// socket (only a bind gives groups 1-32 back)
		return nil, bad("%s: groups without a port", s)
	}
	if s.Opts == nil {
		return nil, bad("%s: no socket options (sk_opts_entry)", s)
	}
	if extra := e.GetFlags() &^ (syscall.O_ACCMODE | syscall.O_NONBLOCK | syscall.O_ASYNC); extra != 0 {
		return nil, bad("%s: status flags %#o: only O_NONBLOCK and O_ASYNC are restored on sockets", s, extra)
	}
	if e.NsId != nil && t.IDs != nil && t.IDs.NetNsId != nil && e.GetNsId() != t.IDs.GetNetNsId() {
		return nil, bad("%s: in net namespace %d, its task in %d: sockets of other net namespaces are not restored", s, e.GetNsId(), t.IDs.GetNetNsId())
	}
	if o, _ := images.FileFown(fe); o == nil {
		if w := e.GetFown(); w.GetPid() != 0 || w.GetSignum() != 0 || e.GetFlags()&syscall.O_ASYNC != 0 {
			return nil, bad("%s: an owner for SIGIO (F_SETOWN, F_SETSIG, O_ASYNC) is not restored on netlink sockets yet", s)
		}
	}
	f := &File{ID: id, Kind: FileNetlinkSocket, Path: fmt.Sprintf("socket:[%d]", s.Ino), Flags: e.GetFlags(), Netlink: s}
	p.Files[id] = f
	return f, nil
}

// openNetlinkSocket makes the socket f is, in the calling thread's net
// namespace. moved is set when its port was taken and the kernel gave it
// another (CRIU's rule).
func openNetlinkSocket(f *File) (fd int, moved bool, err error) {
	s := f.Netlink
	err = s.owner.makeSocket(func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, s.Protocol)
		return os.NewSyscallError("socket", err)
	})
	if err != nil {
		return -1, false, fmt.Errorf("netlink socket %s: %w", s, err)
	}
	if moved, err = setupNetlinkSocket(fd, f); err != nil {
		unix.Close(fd)
		return -1, false, fmt.Errorf("netlink socket %s: %w", s, err)
	}
	return fd, moved, nil
}

func setupNetlinkSocket(fd int, f *File) (moved bool, err error) {
	s := f.Netlink
	if s.Port != 0 {
		var first uint32
		if len(s.Groups) > 0 {
			first = s.Groups[0]
		}
		err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: s.Port, Groups: first})
		if errors.Is(err, syscall.EADDRINUSE) {
			moved = true
			err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: first})
		}
		if err != nil {
			return false, os.NewSyscallError(fmt.Sprintf("bind(port %d, groups %#x)", s.Port, first), err)
		}
	}
	for _, g := range s.groupList() {
		if g <= 32 {
			continue // bound above
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(g)); err != nil {
			return false, os.NewSyscallError(fmt.Sprintf("setsockopt(NETLINK_ADD_MEMBERSHIP, %d)", g), err)
		}
	}
	if s.Connected {
		var mask uint32
		if s.DstGroup != 0 {
			mask = 1 << (s.DstGroup - 1)
		}
		if err := unix.Connect(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: s.DstPort, Groups: mask}); err != nil {
			return false, os.NewSyscallError(fmt.Sprintf("connect(port %d, group %d)", s.DstPort, s.DstGroup), err)
		}
	}
	if f.Flags&syscall.O_NONBLOCK != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, unix.O_NONBLOCK); err != nil {
			return false, os.NewSyscallError("fcntl(F_SETFL, O_NONBLOCK)", err)
		}
	}
	return moved, applySockOpts(fd, s.Opts)
}
