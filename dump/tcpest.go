package dump

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"

	"github.com/crest-restore/crest/images"
)

// Established TCP connections, dumped as CRIU 4.2 does with
// --tcp-established (criu/sk-tcp.c, soccr/soccr.c): through a copy of the
// socket, which is put into repair mode (TCP_REPAIR) while the tree is
// frozen, the dump reads the sequence number of each queue
// (TCP_QUEUE_SEQ), their lengths (SIOCINQ, SIOCOUTQ, and SIOCOUTQNSD for
// the part of the send queue never sent), their bytes (MSG_PEEK in repair
// mode), the MSS, window scales and options agreed at the handshake
// (TCP_MAXSEG, TCP_INFO), the timestamp clock (TCP_TIMESTAMP) and the
// window (TCP_REPAIR_WINDOW), into tcp-stream-INO.img; files.img's inetsk
// entry gets the state TCP_INFO reports.
//
// The socket stays in repair mode: when the dump kills the tree, the
// connection closes silently, no FIN or RST goes to the peer and no
// TIME_WAIT keeps the ports, so a restore can take it over. With
// --leave-running or --leave-stopped, or when the dump fails, repair mode
// is switched off again (a window probe, as CRIU's libsoccr_resume) and
// SO_REUSEADDR, which TCP_REPAIR overrides, is put back; the connection
// goes on.
//
// Network lock. CRIU also drops the connection's packets with iptables or
// nftables rules from the dump to the restore, because while the tasks
// are frozen or gone the kernel still answers the peer: after the kill
// the peer's next segment would meet a closed port and be reset. crest
// sets no such rules and so dumps, when it kills the tree, only
// connections whose peer is in the tree too (both ends on this host,
// loopback or not): then nothing outside the tree can send, and within
// it, while both ends are frozen, only the kernel's own timers
// (retransmits, window probes, delayed ACKs) move a connection. A repair
// mode socket still takes part in those, so each connection is read
// until two readings of its sequence numbers and queue lengths agree.
// Its peer, dumped in the same tree, is read likewise: the two images
// need not agree with each other (what one end counts as sent and not
// acknowledged the other may have received: on restore TCP sorts that
// out as after any lost segment), only each with itself. The inventory
// says network_lock_method SKIP, so that criu restore does not look for
// crest's rules either.

// TCP_REPAIR_QUEUE values (include/uapi/linux/tcp.h) and tcpi_options
// bits.
const (
	tcpNoQueue   = 0
	tcpRecvQueue = 1
	tcpSendQueue = 2

	tcpiOptTimestamps = 1
	tcpiOptWscale     = 4
)

// networkLockSkip is CRIU's NETWORK_LOCK_SKIP, inventory's
// network_lock_method of an image set whose connections no rules hold.
const networkLockSkip = 2

// tcpConns are the connections of a dump with --tcp-established.
type tcpConns struct {
	conns []*tcpConn
}

// tcpConn is a connection in repair mode.
type tcpConn struct {
	fd        int // the dump's own copy, open until release
	ino       uint32
	task      *task
	self      netip.AddrPort
	peer      netip.AddrPort
	reuseaddr bool // SO_REUSEADDR before repair mode
	entry     *tcp_stream.TcpStreamEntry
	queues    []byte // receive queue, then send queue
}

func (c *tcpConn) String() string { return fmt.Sprintf("TCP %s -> %s", c.self, c.peer) }

// fdName names the fds of c's task that hold the socket ("fd 3"), for
// errors; the tree is still there when they are made.
func (c *tcpConn) fdName() string {
	link := fmt.Sprintf("socket:[%d]", c.ino)
	ents, _ := os.ReadDir(procPath(c.task.pid, "fd"))
	for _, e := range ents {
		if l, err := os.Readlink(procPath(c.task.pid, "fd", e.Name())); err == nil && l == link {
			return "fd " + e.Name()
		}
	}
	return link
}

// connectionRefusal says why the TCP connection sk, of state st, is not
// dumped, or "".
func (tc *tcpConns) connectionRefusal(sk *inetSock, family int) string {
	conn := fmt.Sprintf("a TCP connection %s -> %s (%s)", addrPort(family, sk.src, sk.srcPort), addrPort(family, sk.dst, sk.dstPort), tcpState(sk.state))
	if tc == nil {
		return conn + " needs --tcp-established (CRIU's TCP_REPAIR dump of connections)"
	}
	if why := tcpStateRefusal(sk.state); why != "" { // tcphalf.go
		return conn + ": " + why
	}
	return ""
}

// addrPort is the address of inetSock bytes a, for messages.
func addrPort(family int, a [16]byte, port uint16) netip.AddrPort {
	if family == unix.AF_INET {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[:4])), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(a), port)
}

// dump puts the connection behind socket c (a copy of a tree's fd, inode
// ino) into repair mode and reads it. It returns the state to record,
// as TCP_INFO tells it in repair mode.
func (tc *tcpConns) dump(t *task, c int, ino uint32, family int, sk *inetSock) (uint8, error) {
	fd, err := unix.FcntlInt(uintptr(c), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return 0, os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", err)
	}
	conn := &tcpConn{fd: fd, ino: ino, task: t, self: addrPort(family, sk.src, sk.srcPort), peer: addrPort(family, sk.dst, sk.dstPort)}
	reuse, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR)
	if err != nil {
		unix.Close(fd)
		return 0, fmt.Errorf("%s: %w", conn, os.NewSyscallError("getsockopt(SO_REUSEADDR)", err))
	}
	conn.reuseaddr = reuse != 0
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON); err != nil {
		unix.Close(fd)
		return 0, fmt.Errorf("%s: %w", conn, os.NewSyscallError("setsockopt(TCP_REPAIR, 1)", err))
	}
	// from here on release switches it off again, or closes it in
	// repair mode with the tree
	tc.conns = append(tc.conns, conn)
	state, err := conn.read()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", conn, err)
	}
	return state, nil
}

// tcpSnapshot is what one reading of a connection found.
type tcpSnapshot struct {
	state, options, wscale uint8
	inqLen, outqLen, unsq  uint32
	inqSeq, outqSeq        uint32
}

// read reads the connection until two readings agree.
func (c *tcpConn) read() (uint8, error) {
	const tries = 5
	for i := 0; i < tries; i++ {
		before, err := c.snapshot()
		if err != nil {
			return 0, err
		}
		if why := tcpStateRefusal(before.state); why != "" {
			return 0, fmt.Errorf("state %s in repair mode: %s", tcpState(before.state), why)
		}
		e := &tcp_stream.TcpStreamEntry{InqLen: proto.Uint32(before.inqLen), InqSeq: proto.Uint32(before.inqSeq),
			OutqLen: proto.Uint32(before.outqLen), OutqSeq: proto.Uint32(before.outqSeq),
			OptMask: proto.Uint32(uint32(before.options)), SndWscale: proto.Uint32(0), UnsqLen: proto.Uint32(before.unsq)}
		mss, err := unix.GetsockoptInt(c.fd, unix.SOL_TCP, unix.TCP_MAXSEG)
		if err != nil {
			return 0, os.NewSyscallError("getsockopt(TCP_MAXSEG)", err)
		}
		e.MssClamp = proto.Uint32(uint32(mss))
		if before.options&tcpiOptWscale != 0 {
			e.SndWscale = proto.Uint32(uint32(before.wscale & 0xf))
			e.RcvWscale = proto.Uint32(uint32(before.wscale >> 4))
		}
		if before.options&tcpiOptTimestamps != 0 {
			ts, err := unix.GetsockoptInt(c.fd, unix.SOL_TCP, unix.TCP_TIMESTAMP)
			if err != nil {
				return 0, os.NewSyscallError("getsockopt(TCP_TIMESTAMP)", err)
			}
			e.Timestamp = proto.Uint32(uint32(ts))
		}
		var w tcpRepairWindow
		switch err := getsockoptBytes(c.fd, unix.SOL_TCP, unix.TCP_REPAIR_WINDOW, unsafe.Slice((*byte)(unsafe.Pointer(&w)), unsafe.Sizeof(w))); {
		case errors.Is(err, syscall.ENOPROTOOPT):
			// before Linux 4.8, as CRIU: no window in the image
		case err != nil:
			return 0, os.NewSyscallError("getsockopt(TCP_REPAIR_WINDOW)", err)
		default:
			e.SndWl1, e.SndWnd, e.MaxWindow = proto.Uint32(w.SndWl1), proto.Uint32(w.SndWnd), proto.Uint32(w.MaxWindow)
			e.RcvWnd, e.RcvWup = proto.Uint32(w.RcvWnd), proto.Uint32(w.RcvWup)
		}
		inq, err := peekTCPQueue(c.fd, tcpRecvQueue, before.inqLen)
		if err != nil {
			return 0, fmt.Errorf("receive queue: %w", err)
		}
		outq, err := peekTCPQueue(c.fd, tcpSendQueue, before.outqLen)
		if err != nil {
			return 0, fmt.Errorf("send queue: %w", err)
		}
		after, err := c.snapshot()
		if err != nil {
			return 0, err
		}
		if after != before {
			continue // a timer of the kernel moved it meanwhile
		}
		c.entry, c.queues = e, append(inq, outq...)
		return before.state, nil
	}
	return 0, fmt.Errorf("its sequence numbers changed in each of %d readings", tries)
}

// snapshot reads state, options, queue lengths and sequence numbers.
func (c *tcpConn) snapshot() (tcpSnapshot, error) {
	var s tcpSnapshot
	// tcp_info starts with state, ca_state, retransmits, probes,
	// backoff, options, then snd_wscale:4 and rcv_wscale:4 in one byte
	info := make([]byte, 8)
	if err := getsockoptBytes(c.fd, unix.SOL_TCP, unix.TCP_INFO, info); err != nil {
		return s, os.NewSyscallError("getsockopt(TCP_INFO)", err)
	}
	s.state, s.options, s.wscale = info[0], info[5], info[6]
	ioctl := func(req uint, name string) (uint32, error) {
		v, err := unix.IoctlGetInt(c.fd, req)
		if err != nil {
			return 0, os.NewSyscallError("ioctl("+name+")", err)
		}
		return uint32(v), nil
	}
	var err error
	if s.outqLen, err = ioctl(unix.SIOCOUTQ, "SIOCOUTQ"); err != nil {
		return s, err
	}
	if s.unsq, err = ioctl(unix.SIOCOUTQNSD, "SIOCOUTQNSD"); err != nil {
		return s, err
	}
	if s.inqLen, err = ioctl(unix.SIOCINQ, "SIOCINQ"); err != nil {
		return s, err
	}
	if s.inqSeq, err = queueSeq(c.fd, tcpRecvQueue); err != nil {
		return s, fmt.Errorf("receive queue: %w", err)
	}
	if s.outqSeq, err = queueSeq(c.fd, tcpSendQueue); err != nil {
		return s, fmt.Errorf("send queue: %w", err)
	}
	s.uncountFIN() // tcphalf.go
	return s, nil
}

// queueSeq reads TCP_QUEUE_SEQ of queue q: rcv_nxt for the receive
// queue, write_seq for the send queue.
func queueSeq(fd, q int) (uint32, error) {
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q); err != nil {
		return 0, os.NewSyscallError(fmt.Sprintf("setsockopt(TCP_REPAIR_QUEUE, %d)", q), err)
	}
	seq, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_QUEUE_SEQ)
	if err != nil {
		return 0, os.NewSyscallError("getsockopt(TCP_QUEUE_SEQ)", err)
	}
	return uint32(seq), nil
}

// peekTCPQueue reads the n bytes of queue q. As CRIU, it asks for one more
// to be sure there are no more than n.
func peekTCPQueue(fd, q int, n uint32) ([]byte, error) {
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q); err != nil {
		return nil, os.NewSyscallError(fmt.Sprintf("setsockopt(TCP_REPAIR_QUEUE, %d)", q), err)
	}
	if n == 0 {
		return nil, nil
	}
	buf := make([]byte, n+1)
	got, _, err := unix.Recvfrom(fd, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if err != nil {
		return nil, os.NewSyscallError("recv(MSG_PEEK)", err)
	}
	if got != int(n) {
		return nil, fmt.Errorf("recv(MSG_PEEK): %d bytes, the queue length says %d", got, n)
	}
	return buf[:n], nil
}

// tcpRepairWindow is struct tcp_repair_window.
type tcpRepairWindow struct {
	SndWl1, SndWnd, MaxWindow, RcvWnd, RcvWup uint32
}

// getsockoptBytes reads option opt into b (x/sys/unix has no getsockopt
// for tcp_repair_window or a raw tcp_info).
func getsockoptBytes(fd, level, opt int, b []byte) error {
	l := uint32(len(b))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// checkPeers refuses, when the dump kills the tree, connections whose
// peer it did not dump (see Network lock above).
func (tc *tcpConns) checkPeers() error {
	ends := map[[2]netip.AddrPort]bool{}
	for _, c := range tc.conns {
		ends[[2]netip.AddrPort{c.self, c.peer}] = true
	}
	for _, c := range tc.conns {
		if !ends[[2]netip.AddrPort{c.peer, c.self}] {
			return &UnsupportedError{Task: int(c.task.nsPid), Resource: c.fdName(), What: fmt.Sprintf("socket:[%d]", c.ino),
				Why: fmt.Sprintf("%s: its peer is not in the dumped tree; crest sets no network lock (CRIU's iptables or nftables rules) to keep the peer from being reset once the tree is killed (--leave-running dumps it)", c)}
		}
	}
	return nil
}

// write writes tcp-stream-INO.img of every connection into the images.
func (tc *tcpConns) write(d *dumper) error {
	for _, c := range tc.conns {
		if err := d.write(fmt.Sprintf("tcp-stream-%x.img", c.ino), images.KindTCPStream,
			images.Entry{Message: c.entry, Payload: c.queues}); err != nil {
			return err
		}
	}
	return nil
}

// release lets go of the connections: alive, repair mode switched off and
// SO_REUSEADDR put back, when the tree runs on (or the dump failed);
// otherwise the dump's copies are closed in repair mode, and the tree's
// close silently once it is killed.
func (tc *tcpConns) release(alive bool) error {
	if tc == nil {
		return nil
	}
	var errs []error
	for _, c := range tc.conns {
		if alive {
			if err := unix.SetsockoptInt(c.fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %s: %w", c.task, c.fdName(), c, os.NewSyscallError("setsockopt(TCP_REPAIR, 0)", err)))
			} else if err := unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, boolInt(c.reuseaddr)); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %s: %w", c.task, c.fdName(), c, os.NewSyscallError("setsockopt(SO_REUSEADDR)", err)))
			}
		}
		unix.Close(c.fd)
	}
	tc.conns = nil
	return errors.Join(errs...)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// networkLockMethod is inventory's network_lock_method: CRIU's default
// (iptables, 0) as for any dump, SKIP once connections were dumped
// without a lock.
func (tc *tcpConns) networkLockMethod() uint32 {
	if tc == nil || len(tc.conns) == 0 {
		return 0
	}
	return networkLockSkip
}

// finish checks the peers when the tree is to be killed and writes the
// connections' images.
func (tc *tcpConns) finish(d *dumper) error {
	if tc == nil {
		return nil
	}
	if !d.opts.LeaveRunning && !d.opts.LeaveStopped {
		if err := tc.checkPeers(); err != nil {
			return err
		}
	}
	return tc.write(d)
}
