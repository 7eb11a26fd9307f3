package dump

import "fmt"

// Half-closed TCP connections, dumped with --tcp-established as CRIU 4.2
// dumps them (soccr/soccr.c refresh_sk): FIN_WAIT1, FIN_WAIT2, CLOSING
// and LAST_ACK have sent a FIN, or queued it to be sent; CLOSE_WAIT,
// LAST_ACK and CLOSING have received one. A FIN takes a sequence number
// of its own but carries no byte: TCP_QUEUE_SEQ counts it (outq_seq is
// write_seq after the FIN, inq_seq rcv_nxt after it), and so do SIOCOUTQ
// while the FIN is not acknowledged and SIOCOUTQNSD while it is not sent.
// As CRIU, the image's queue lengths leave it out and its sequence
// numbers keep it; inet_sk_entry says the state, and its shutdown bits
// are the kernel's (RCV_SHUTDOWN once the peer's FIN came, SEND_SHUTDOWN
// once this end shut down for writing). The restore (restore/tcphalf.go)
// takes the FINs off the sequence numbers and makes the kernel reach the
// state again.
//
// Not dumped, as CRIU: SYN_RECV (a connection not accepted yet has no
// fd; TCP Fast Open's has, and CRIU does not know that state). Not
// dumped, unlike CRIU: SYN_SENT, a connect(2) still in progress, whose
// peer is a listener; CRIU restores it by sending a new SYN, which
// without a network lock may meet a listener that is not back yet.
// TIME_WAIT never has an fd: once both FINs are acknowledged the socket
// an fd holds is in CLOSE, unconnected (unconnectedInet), and the
// TIME_WAIT socket left behind is the kernel's alone, as in CRIU.

// More TCP states (include/net/tcp_states.h).
const (
	tcpSynSent   = 2
	tcpSynRecv   = 3
	tcpFinWait1  = 4
	tcpFinWait2  = 5
	tcpCloseWait = 8
	tcpLastAck   = 9
	tcpClosing   = 11
)

// tcpStateRefusal says why a TCP connection in state st is not dumped,
// or "".
func tcpStateRefusal(st uint8) string {
	switch st {
	case tcpEstablished, tcpFinWait1, tcpFinWait2, tcpCloseWait, tcpLastAck, tcpClosing:
		return ""
	case tcpSynSent:
		return "a connect(2) still in progress (SYN_SENT) is not dumped: its restore would send a new SYN, which without a network lock may meet a listener that is not back yet"
	}
	return fmt.Sprintf("connections in %s are not dumped (CRIU does not dump them either)", tcpState(st))
}

// finSent tells the states whose send queue ends with a FIN, sent or not.
func finSent(st uint8) bool {
	switch st {
	case tcpFinWait1, tcpFinWait2, tcpClosing, tcpLastAck:
		return true
	}
	return false
}

// uncountFIN takes the FIN of the send queue off its lengths, as CRIU's
// refresh_sk: SIOCOUTQ counts it until it is acknowledged, SIOCOUTQNSD
// until it is sent.
func (s *tcpSnapshot) uncountFIN() {
	if !finSent(s.state) {
		return
	}
	if s.outqLen > 0 {
		s.outqLen--
	}
	if s.unsq > 0 {
		s.unsq--
	}
}
