package restore

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Half-closed TCP connections, restored with --tcp-established as CRIU
// 4.2 restores them (soccr/soccr.c libsoccr_restore): FIN_WAIT1,
// FIN_WAIT2, CLOSE_WAIT, LAST_ACK and CLOSING. The image counts each FIN
// in the sequence numbers (outq_seq after this end's FIN, inq_seq after
// the peer's) and not in the queue lengths (dump/tcphalf.go). The socket
// is made as an ESTABLISHED one (tcpest.go) with its queues starting one
// sequence number earlier, as if no FIN had been sent or received, and
// the kernel is then brought to the state by the FINs themselves:
//
//   - this end's FIN (FIN_WAIT1, FIN_WAIT2, CLOSING): shutdown(SHUT_WR) in
//     repair mode, right after the queues and before the window, so that
//     the kernel, seeing no window yet, keeps it queued behind the
//     unsent data; for FIN_WAIT2 with TCP_REPAIR_QUEUE at the send queue,
//     which counts it as sent.
//   - the peer's FIN (CLOSE_WAIT, LAST_ACK, CLOSING): a FIN segment from
//     the peer's address at rcv_nxt, injected through a raw socket; the
//     socket takes it as any FIN (ESTABLISHED -> CLOSE_WAIT, FIN_WAIT1 ->
//     CLOSING), then LAST_ACK shuts down for writing (CLOSE_WAIT ->
//     LAST_ACK).
//   - the peer's acknowledgement of this end's FIN (FIN_WAIT2): an ACK
//     segment up to write_seq, injected likewise (FIN_WAIT1 -> FIN_WAIT2).
//
// No socket option sets a TCP state or acknowledges a FIN: a segment
// from the peer is the only way into these states, which is why CRIU
// sends them with libnet and crest with a raw socket of its own (Go,
// AF_INET or AF_INET6, SOCK_RAW, IPPROTO_TCP, the checksum computed
// here). A socket in repair mode still takes in what arrives, and answers
// a FIN with an ACK, which must find its peer: so the segments go out
// only once every connection of the tree is made (tcpFinish, after all
// the files of ROOT_TASK), only on loopback addresses (nothing leaves the
// host), and only for connections whose peer is in the images too
// (planning refuses the others). Each injection is followed by a check
// that the socket reached the state. The segments carry a zero window,
// so that the socket sends no data meanwhile; the image's window is set
// last (CRIU sets it before, one sequence number wider so that the FIN
// fits: crest does that too, then sets the exact one). Repair mode ends
// with the ESTABLISHED connections' (tcpRepairOff).
//
// Refused, as CRIU refuses or never dumps them: SYN_RECV (no fd holds
// one), TIME_WAIT (no fd holds one either: the socket an fd holds is in
// CLOSE, unconnected, by then), CLOSE with a peer. Refused, unlike CRIU:
// SYN_SENT, a connect(2) in progress, which CRIU restores by sending a
// new SYN; without a network lock it may meet a listener not restored
// yet, and crest's dump does not make such images.

// More TCP states (include/net/tcp_states.h).
const (
	tcpSynSent   = 2
	tcpSynRecv   = 3
	tcpFinWait1  = 4
	tcpFinWait2  = 5
	tcpTimeWait  = 6
	tcpCloseWait = 8
	tcpLastAck   = 9
	tcpClosing   = 11
)

// TCP header flags.
const (
	tcpFlagFIN = 0x01
	tcpFlagACK = 0x10
)

// finSent tells the states whose send queue ends with this end's FIN,
// sent or not; finAcked the one where the peer acknowledged it;
// finReceived those that got the peer's FIN.
func finSent(st uint32) bool {
	return st == tcpFinWait1 || st == tcpFinWait2 || st == tcpClosing || st == tcpLastAck
}
func finAcked(st uint32) bool    { return st == tcpFinWait2 }
func finReceived(st uint32) bool { return st == tcpCloseWait || st == tcpLastAck || st == tcpClosing }

// connectionStateRefusal says why a TCP connection in state st is not
// restored, or "".
func connectionStateRefusal(st uint32) string {
	switch st {
	case tcpEstablished, tcpFinWait1, tcpFinWait2, tcpCloseWait, tcpLastAck, tcpClosing:
		return ""
	case tcpSynSent:
		return "a connect(2) in progress (SYN_SENT) is not restored: CRIU sends a new SYN, which without a network lock may meet a listener not restored yet"
	}
	return fmt.Sprintf("TCP connections in %s are not restored (nor dumped, by CRIU or crest)", tcpStateName(st))
}

// shutdownRefusal says why shutdown bits sh do not go with state st, or
// "": only an end that sent its FIN has shut down for writing.
func shutdownRefusal(st uint32, sh int) string {
	if (sh == syscall.SHUT_WR || sh == syscall.SHUT_RDWR) && !finSent(st) {
		return fmt.Sprintf("shut down for writing (shutdown %d) in %s, which has sent no FIN", sh, tcpStateName(st))
	}
	return ""
}

// rcvStart and sndStart are the sequence numbers of the first byte of
// the receive and the send queue, the FINs taken off.
func (c *TCPConn) rcvStart() uint32 {
	seq := c.InqSeq - uint32(len(c.Inq))
	if finReceived(c.State) {
		seq--
	}
	return seq
}

func (c *TCPConn) sndStart() uint32 {
	seq := c.OutqSeq - uint32(len(c.Outq))
	if finSent(c.State) {
		seq--
	}
	return seq
}

// firstWindow is the window set with the queues: the image's, or, when
// the peer's FIN is still to come, one where it fits (rcv_wup before it,
// one more byte of receive window) and no send window, so that nothing
// is sent until the image's window is set.
func (c *TCPConn) firstWindow() *TCPWindow {
	if c.Window == nil || !finReceived(c.State) {
		return c.Window
	}
	w := *c.Window
	w.RcvWup--
	w.RcvWnd++
	w.SndWnd = 0
	return &w
}

// queueOwnFIN puts this end's FIN into the send queue of fd, in repair
// mode, behind its data: counted as sent for FIN_WAIT2 (the injected ACK
// acknowledges it), unsent otherwise, as CRIU's
// restore_fin_in_snd_queue. LAST_ACK's comes later (tcpFinish), after
// the peer's.
func queueOwnFIN(fd int, c *TCPConn) error {
	if !finSent(c.State) || c.State == tcpLastAck {
		return nil
	}
	if finAcked(c.State) {
		if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, tcpSendQueue); err != nil {
			return os.NewSyscallError("setsockopt(TCP_REPAIR_QUEUE, send queue)", err)
		}
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		return os.NewSyscallError("shutdown(SHUT_WR) of the FIN", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, tcpNoQueue); err != nil {
		return os.NewSyscallError("setsockopt(TCP_REPAIR_QUEUE, no queue)", err)
	}
	return nil
}

// checkHalfClosed refuses the half-closed connections whose state needs
// a segment from the peer (see above) but whose addresses are not
// loopback ones or whose peer the images do not have.
func (p *Plan) checkHalfClosed() error {
	ends := map[[2]netip.AddrPort]bool{}
	for _, f := range p.Files {
		if f.Kind == FileInetSocket && f.Inet.Conn != nil {
			ends[[2]netip.AddrPort{unmap(f.Inet.Src), unmap(f.Inet.Dst)}] = true
		}
	}
	for _, t := range p.Tasks {
		for _, fd := range t.FDs {
			s := fd.File.Inet
			if fd.File.Kind != FileInetSocket || s.Conn == nil || !needsPeerSegment(s.State) {
				continue
			}
			refuse := func(why string) error {
				return &PlanError{PID: t.PID, File: fmt.Sprintf("fdinfo-%d.img", t.IDs.GetFilesId()),
					Msg: fmt.Sprintf("fd %d: file %d of files.img: %s: %s", fd.FD, fd.File.ID, s, why)}
			}
			if !unmap(s.Src).Addr().IsLoopback() || !unmap(s.Dst).Addr().IsLoopback() {
				return refuse("a half-closed connection is restored with a segment from its peer, which crest sends on loopback addresses only")
			}
			if !ends[[2]netip.AddrPort{unmap(s.Dst), unmap(s.Src)}] {
				return refuse("its peer is not in the images: the segment that restores its state makes it answer a peer that does not exist, which resets it")
			}
		}
	}
	return nil
}

func needsPeerSegment(st uint32) bool { return finReceived(st) || finAcked(st) }

// unmap is a with an IPv4-mapped IPv6 address made IPv4.
func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// tcpFinish brings the half-closed connections to their states, once
// every socket of the restore exists (see above), and sets their
// windows. The engine's copies of the sockets are used; they stay in
// repair mode.
func (p *Plan) tcpFinish(pr *prepared) error {
	var conns []*File
	for _, f := range p.Files {
		if f.Kind == FileInetSocket && f.Inet.Conn != nil && f.Inet.State != tcpEstablished {
			conns = append(conns, f)
		}
	}
	sort.Slice(conns, func(i, j int) bool { return conns[i].ID < conns[j].ID })
	for _, f := range conns {
		k, ok := pr.index[fileKey(f)]
		if !ok {
			return fmt.Errorf("file %d (%s): the engine has no copy of it", f.ID, f.Inet)
		}
		if err := halfClose(pr.fds[k], f.Inet); err != nil {
			return fmt.Errorf("%s: file %d of files.img: %s: %w", p.holder(f), f.ID, f.Inet, err)
		}
	}
	return nil
}

// holder names the first task and fd that hold f, for errors.
func (p *Plan) holder(f *File) string {
	for _, t := range p.Tasks {
		for _, fd := range t.FDs {
			if fd.File == f {
				return fmt.Sprintf("task %d fd %d", t.PID, fd.FD)
			}
		}
	}
	return "no task"
}

func halfClose(fd int, s *InetSocket) error {
	c := s.Conn
	switch {
	case finReceived(c.State):
		// at rcv_nxt, acknowledging what the socket has had
		// acknowledged (snd_una), which is never this end's FIN
		if err := injectSegment(s.Dst, s.Src, c.InqSeq-1, c.sndStart(), tcpFlagFIN|tcpFlagACK); err != nil {
			return fmt.Errorf("the peer's FIN: %w", err)
		}
		want := uint32(tcpCloseWait)
		if c.State == tcpClosing {
			want = tcpClosing
		}
		if err := waitTCPState(fd, want, "the peer's FIN at "+fmt.Sprint(c.InqSeq-1)); err != nil {
			return err
		}
		if c.State == tcpLastAck {
			if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
				return os.NewSyscallError("shutdown(SHUT_WR) after the peer's FIN", err)
			}
			if err := waitTCPState(fd, tcpLastAck, "shutdown(SHUT_WR)"); err != nil {
				return err
			}
		}
	case finAcked(c.State):
		if err := injectSegment(s.Dst, s.Src, c.InqSeq, c.OutqSeq, tcpFlagACK); err != nil {
			return fmt.Errorf("the peer's acknowledgement of the FIN: %w", err)
		}
		if err := waitTCPState(fd, c.State, "the peer's ACK of the FIN up to "+fmt.Sprint(c.OutqSeq)); err != nil {
			return err
		}
	default:
		if err := waitTCPState(fd, c.State, "shutdown(SHUT_WR)"); err != nil {
			return err
		}
	}
	if w := c.Window; w != nil {
		if err := setsockoptBytes(fd, unix.SOL_TCP, unix.TCP_REPAIR_WINDOW, unsafe.Slice((*byte)(unsafe.Pointer(w)), unsafe.Sizeof(*w))); err != nil {
			return os.NewSyscallError(fmt.Sprintf("setsockopt(TCP_REPAIR_WINDOW, %+v)", *w), err)
		}
	}
	return nil
}

// waitTCPState waits until the socket fd is in state want, which what
// (the step just done) makes it reach: on loopback the segment is taken
// in before the send returns, or soon after by the softirq.
func waitTCPState(fd int, want uint32, what string) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			return os.NewSyscallError("getsockopt(TCP_INFO)", err)
		}
		if uint32(info.State) == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s the socket is in %s, want %s", what, tcpStateName(uint32(info.State)), tcpStateName(want))
		}
		time.Sleep(time.Millisecond)
	}
}

// injectSegment sends a TCP segment with no data from src to dst, both
// loopback addresses, through a raw socket: seq, ack, flags, a zero
// window and no options (as CRIU's send_fin; the socket does not ask for
// timestamps on every segment).
func injectSegment(src, dst netip.AddrPort, seq, ack uint32, flags byte) error {
	src, dst = unmap(src), unmap(dst)
	if !src.Addr().IsLoopback() || !dst.Addr().IsLoopback() || src.Addr().Is4() != dst.Addr().Is4() {
		return fmt.Errorf("a segment from %s to %s: only loopback addresses of one family", src, dst)
	}
	seg := make([]byte, 20)
	binary.BigEndian.PutUint16(seg[0:], src.Port())
	binary.BigEndian.PutUint16(seg[2:], dst.Port())
	binary.BigEndian.PutUint32(seg[4:], seq)
	binary.BigEndian.PutUint32(seg[8:], ack)
	seg[12] = 5 << 4 // header length in words, no options
	seg[13] = flags
	binary.BigEndian.PutUint16(seg[16:], tcpChecksum(src.Addr(), dst.Addr(), seg))
	family := unix.AF_INET6
	if src.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return os.NewSyscallError("socket(SOCK_RAW, IPPROTO_TCP)", err)
	}
	defer unix.Close(fd)
	// as CRIU's send_fin: SOCCR_MARK lets the segment through the
	// network lock criu dump left, still in place until netlock.go
	// removes it after RESTORE_SIGCHLD
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, 0xC114); err != nil {
		return os.NewSyscallError("setsockopt(SO_MARK, 0xC114)", err)
	}
	// the bound address is the source of the IP header the kernel
	// writes
	if err := unix.Bind(fd, sockaddr(family, netip.AddrPortFrom(src.Addr(), 0), 0)); err != nil {
		return fmt.Errorf("raw socket: bind %s: %w", src.Addr(), err)
	}
	if err := unix.Sendto(fd, seg, 0, sockaddr(family, netip.AddrPortFrom(dst.Addr(), 0), 0)); err != nil {
		return fmt.Errorf("raw socket: %w", os.NewSyscallError(fmt.Sprintf("sendto(%s, flags %#x seq %d ack %d)", dst, flags, seq, ack), err))
	}
	return nil
}

// tcpChecksum is the checksum of TCP segment seg (its checksum field
// zero) from src to dst, over the IPv4 or IPv6 pseudo-header.
func tcpChecksum(src, dst netip.Addr, seg []byte) uint16 {
	var pseudo []byte
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		pseudo = append(append(pseudo, s[:]...), d[:]...)
		pseudo = append(pseudo, 0, unix.IPPROTO_TCP, byte(len(seg)>>8), byte(len(seg)))
	} else {
		s, d := src.As16(), dst.As16()
		pseudo = append(append(pseudo, s[:]...), d[:]...)
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(seg)))
		pseudo = append(pseudo, 0, 0, 0, unix.IPPROTO_TCP)
	}
	var sum uint32
	for _, b := range [][]byte{pseudo, seg} {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
