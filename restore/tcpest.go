package restore

import (
	"fmt"
	"os"
	"sort"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"

	"github.com/crest-restore/crest/images"
)

// Established TCP connections, restored as CRIU 4.2 does with
// --tcp-established (criu/sk-tcp.c restore_one_tcp, soccr/soccr.c
// libsoccr_restore). The engine makes each end anew, in the tasks' files
// step as any socket, in repair mode (TCP_REPAIR): it binds it to its
// address, sets the first sequence number of each queue, connects it to
// its peer (no SYN in repair mode: the socket is ESTABLISHED at once),
// sets the options agreed at the handshake (TCP_REPAIR_OPTIONS: MSS,
// window scales, SACK, timestamps) and the timestamp clock, fills the
// receive queue and the part of the send queue that was sent and not yet
// acknowledged (both in repair mode, so nothing goes out), then the part
// never sent (out of repair mode for the moment of the write: it is new
// data to the kernel), and the window (TCP_REPAIR_WINDOW). Then come its
// status flags and options as for other inet sockets. The two ends of a
// loopback connection are two sockets, each restored on its own.
//
// Repair mode stays on until every task is restored and has taken its
// fds: the engine switches it off on its own copies once RESTORE_SIGCHLD
// is over, where CRIU's restorer does (after its network unlock), and
// puts back SO_REUSEADDR, which TCP_REPAIR overrides. Until then the
// kernel sends nothing on a socket but for its timers (a retransmit or a
// window probe, a second at the earliest), and all sockets are made at
// once in the ROOT_TASK stage, so both ends of a connection exist before
// either speaks; a failed restore closes them still in repair mode, which
// sends nothing and frees the ports at once. crest sets no network lock
// (see dump/tcpest.go); the lock of criu dump's images is removed just
// before repair mode ends, as criu restore does (netlock.go).

// TCPConn is an established connection: tcp-stream-INO.img, checked.
type TCPConn struct {
	// InqSeq is rcv_nxt, the sequence number after the received bytes
	// (Inq); OutqSeq write_seq, the one after the bytes of the send
	// queue (Outq), of which the last Unsent were never sent.
	InqSeq, OutqSeq uint32
	Inq, Outq       []byte
	Unsent          uint32
	MSS             uint32 // mss_clamp
	// Options are the tcpi_options bits agreed at the handshake; the
	// window scales count when Options has tcpiOptWscale, Timestamp
	// (the timestamp clock) when it has tcpiOptTimestamps.
	Options              uint32
	SndWscale, RcvWscale uint32
	Timestamp            uint32
	Window               *TCPWindow // nil when the image has none (Linux before 4.8)
	// State is the inet_sk_entry's: ESTABLISHED or a half-closed one
	// (tcphalf.go), whose FINs the sequence numbers count.
	State uint32
}

// TCPWindow is struct tcp_repair_window.
type TCPWindow struct {
	SndWl1, SndWnd, MaxWindow, RcvWnd, RcvWup uint32
}

// tcpi_options bits, TCP option kinds of TCP_REPAIR_OPTIONS and
// TCP_REPAIR_QUEUE values.
const (
	tcpiOptTimestamps = 1
	tcpiOptSack       = 2
	tcpiOptWscale     = 4

	tcpoptMaxseg    = 2
	tcpoptWindow    = 3
	tcpoptSackPerm  = 4
	tcpoptTimestamp = 8
	tcpMaxWscale    = 14
	maxUserMSS      = 32767 // MAX_TCP_WINDOW, the most TCP_MAXSEG takes

	tcpNoQueue   = 0
	tcpRecvQueue = 1
	tcpSendQueue = 2
)

// isConnection tells a TCP socket with a peer, which CRIU restores as a
// connection (tcp_connection) whatever its state says.
func (s *InetSocket) isConnection() bool {
	return s.Proto == unix.IPPROTO_TCP && s.Dst.Port() != 0
}

// planTCPConnections refuses the connections of the fd tables without
// Options.TCPEstablished, as CRIU does, and otherwise reads the
// tcp-stream image of each.
func (p *Plan) planTCPConnections() error {
	for _, t := range p.Tasks {
		for _, fd := range t.FDs {
			f := fd.File
			if f.Kind != FileInetSocket || !f.Inet.isConnection() || f.Inet.Conn != nil {
				continue
			}
			fdinfo := fmt.Sprintf("fdinfo-%d.img", t.IDs.GetFilesId())
			if why := connectionStateRefusal(f.Inet.State); why != "" { // tcphalf.go
				return &PlanError{PID: t.PID, File: fdinfo, Msg: fmt.Sprintf("fd %d: file %d of files.img: %s: %s", fd.FD, f.ID, f.Inet, why)}
			}
			if why := shutdownRefusal(f.Inet.State, f.Inet.Shutdown); why != "" {
				return &PlanError{PID: t.PID, File: fdinfo, Msg: fmt.Sprintf("fd %d: file %d of files.img: %s: %s", fd.FD, f.ID, f.Inet, why)}
			}
			if !p.tcpEstablished {
				return &PlanError{PID: t.PID, File: fdinfo, Msg: fmt.Sprintf("fd %d: file %d of files.img: %s: a TCP connection needs --tcp-established (restore.Options.TCPEstablished), as CRIU's",
					fd.FD, f.ID, f.Inet)}
			}
			c, err := p.tcpConn(f.Inet)
			if err != nil {
				return &PlanError{PID: t.PID, File: fdinfo, Msg: fmt.Sprintf("fd %d: file %d of files.img: %s", fd.FD, f.ID, f.Inet), Err: err}
			}
			f.Inet.Conn = c
		}
	}
	return p.checkHalfClosed() // tcphalf.go
}

// tcpConn reads and checks the tcp-stream image of s.
func (p *Plan) tcpConn(s *InetSocket) (*TCPConn, error) {
	st, err := p.Dir.TCPStream(s.Ino)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, &images.MissingError{File: fmt.Sprintf("tcp-stream-%x.img", s.Ino), What: "the connection"}
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("tcp-stream-%x.img: "+format, append([]any{s.Ino}, args...)...)
	}
	e := st.Entry
	if e.UnsqLen == nil {
		// as CRIU: images older than 2.x do not split the send queue
		return nil, bad("no unsq_len: which part of the send queue was sent is unknown")
	}
	c := &TCPConn{InqSeq: e.GetInqSeq(), OutqSeq: e.GetOutqSeq(), Inq: st.Inq, Outq: st.Outq, Unsent: e.GetUnsqLen(),
		MSS: e.GetMssClamp(), Options: e.GetOptMask(), Timestamp: e.GetTimestamp(), State: s.State}
	if uint32(len(st.Inq)) != e.GetInqLen() || uint32(len(st.Outq)) != e.GetOutqLen() {
		return nil, bad("queues of %d and %d bytes, the entry says inq_len %d, outq_len %d", len(st.Inq), len(st.Outq), e.GetInqLen(), e.GetOutqLen())
	}
	if c.Unsent > uint32(len(c.Outq)) {
		return nil, bad("unsq_len %d is more than the send queue's %d bytes", c.Unsent, len(c.Outq))
	}
	if c.MSS == 0 || c.MSS > 0xffff {
		return nil, bad("mss_clamp %d", c.MSS)
	}
	if c.Options&tcpiOptWscale != 0 {
		if e.RcvWscale == nil {
			return nil, bad("window scaling without rcv_wscale")
		}
		c.SndWscale, c.RcvWscale = e.GetSndWscale(), e.GetRcvWscale()
		if c.SndWscale > tcpMaxWscale || c.RcvWscale > tcpMaxWscale {
			return nil, bad("window scales %d and %d, the most is %d", c.SndWscale, c.RcvWscale, tcpMaxWscale)
		}
	}
	if c.Options&tcpiOptTimestamps != 0 && e.Timestamp == nil {
		return nil, bad("timestamps without timestamp")
	}
	if e.SndWnd != nil {
		if e.SndWl1 == nil || e.MaxWindow == nil || e.RcvWnd == nil || e.RcvWup == nil {
			return nil, bad("snd_wnd without the other window fields")
		}
		c.Window = &TCPWindow{SndWl1: e.GetSndWl1(), SndWnd: e.GetSndWnd(), MaxWindow: e.GetMaxWindow(), RcvWnd: e.GetRcvWnd(), RcvWup: e.GetRcvWup()}
	}
	return c, nil
}

// openTCPConnection makes the connection f anew, in repair mode (see
// above), with its status flags and options.
func openTCPConnection(f *File) (int, error) {
	s := f.Inet
	var fd int
	err := s.owner.makeSocket(func() (err error) { // userns_sock.go
		fd, err = unix.Socket(s.Family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return os.NewSyscallError("socket", err)
	})
	if err != nil {
		return -1, fmt.Errorf("inet socket %s: %w", s, err)
	}
	if err := setupTCPConnection(fd, f); err != nil {
		unix.Close(fd) // in repair mode: nothing reaches the peer
		return -1, fmt.Errorf("inet socket %s: %w", s, err)
	}
	return fd, nil
}

func setupTCPConnection(fd int, f *File) error {
	s, c := f.Inet, f.Inet.Conn
	setInt := func(level, opt int, name string, v int) error { return setSockInt(fd, level, opt, name, v) }
	// As for listeners; repair mode forces address reuse anyway, until
	// it is switched off.
	if err := beforeBind(fd, s); err != nil {
		return err
	}
	if err := setInt(unix.SOL_TCP, unix.TCP_REPAIR, "TCP_REPAIR", unix.TCP_REPAIR_ON); err != nil {
		return err
	}
	if f.Flags&syscall.O_NONBLOCK != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, unix.O_NONBLOCK); err != nil {
			return os.NewSyscallError("fcntl(F_SETFL, O_NONBLOCK)", err)
		}
	}
	if err := bindInet(fd, s); err != nil {
		return err
	}
	// The kernel moves a queue's sequence number on by what is written
	// into it: each starts where its first byte was (before any FIN,
	// tcphalf.go).
	if err := setQueueSeq(fd, tcpRecvQueue, c.rcvStart()); err != nil {
		return err
	}
	if err := setQueueSeq(fd, tcpSendQueue, c.sndStart()); err != nil {
		return err
	}
	// The MSS the kernel uses (mss_cache) is worked out at connect from
	// the clamp then, which TCP_REPAIR_OPTIONS sets only after it: CRIU's
	// restored connections send 536-byte segments whatever they had. A
	// TCP_MAXSEG of the clamp before the connect keeps the MSS (up to
	// the 32767 TCP_MAXSEG takes; the clamp itself is the image's).
	if err := setInt(unix.SOL_TCP, unix.TCP_MAXSEG, "TCP_MAXSEG", int(min(c.MSS, maxUserMSS))); err != nil {
		return err
	}
	if err := unix.Connect(fd, sockaddr(s.Family, s.Dst, 0)); err != nil {
		return fmt.Errorf("connect %s in repair mode: %w", s.Dst, err)
	}
	if err := unix.SetsockoptTCPRepairOpt(fd, unix.SOL_TCP, unix.TCP_REPAIR_OPTIONS, c.repairOptions()); err != nil {
		return os.NewSyscallError(fmt.Sprintf("setsockopt(TCP_REPAIR_OPTIONS, %+v)", c.repairOptions()), err)
	}
	if c.Options&tcpiOptTimestamps != 0 {
		if err := setInt(unix.SOL_TCP, unix.TCP_TIMESTAMP, "TCP_TIMESTAMP", int(int32(c.Timestamp))); err != nil {
			return err
		}
	}
	if err := restoreTCPQueues(fd, c); err != nil {
		return err
	}
	if err := queueOwnFIN(fd, c); err != nil { // tcphalf.go
		return err
	}
	if w := c.firstWindow(); w != nil {
		if err := setsockoptBytes(fd, unix.SOL_TCP, unix.TCP_REPAIR_WINDOW, unsafe.Slice((*byte)(unsafe.Pointer(w)), unsafe.Sizeof(*w))); err != nil {
			return os.NewSyscallError(fmt.Sprintf("setsockopt(TCP_REPAIR_WINDOW, %+v)", *w), err)
		}
	}
	if err := applyIPOpts(fd, s); err != nil {
		return err
	}
	// SO_REUSEADDR waits for the end of repair mode (tcpRepairOff), as
	// in CRIU: until then every socket of the port may still be bound.
	opts := proto.Clone(s.Opts).(*sk_opts.SkOptsEntry)
	opts.Reuseaddr = nil
	if err := applySockOpts(fd, opts); err != nil {
		return err
	}
	if err := applyTCPOpts(fd, s); err != nil {
		return err
	}
	if s.Shutdown == syscall.SHUT_RD || s.Shutdown == syscall.SHUT_RDWR {
		// SHUT_WR is the FIN's (tcphalf.go)
		if err := unix.Shutdown(fd, syscall.SHUT_RD); err != nil {
			return os.NewSyscallError("shutdown(SHUT_RD)", err)
		}
	}
	return nil
}

// repairOptions are the options agreed at the handshake, for
// TCP_REPAIR_OPTIONS.
func (c *TCPConn) repairOptions() []unix.TCPRepairOpt {
	var o []unix.TCPRepairOpt
	if c.Options&tcpiOptSack != 0 {
		o = append(o, unix.TCPRepairOpt{Code: tcpoptSackPerm})
	}
	if c.Options&tcpiOptWscale != 0 {
		o = append(o, unix.TCPRepairOpt{Code: tcpoptWindow, Val: c.SndWscale | c.RcvWscale<<16})
	}
	if c.Options&tcpiOptTimestamps != 0 {
		o = append(o, unix.TCPRepairOpt{Code: tcpoptTimestamp})
	}
	return append(o, unix.TCPRepairOpt{Code: tcpoptMaxseg, Val: c.MSS})
}

// setQueueSeq sets the first sequence number of queue q.
func setQueueSeq(fd, q int, seq uint32) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q); err != nil {
		return os.NewSyscallError(fmt.Sprintf("setsockopt(TCP_REPAIR_QUEUE, %d)", q), err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_QUEUE_SEQ, int(int32(seq))); err != nil {
		return os.NewSyscallError(fmt.Sprintf("setsockopt(TCP_QUEUE_SEQ, %d) of queue %d", seq, q), err)
	}
	return nil
}

// restoreTCPQueues writes the queues back, as CRIU: the receive queue
// and the sent part of the send queue in repair mode, which only queues
// them; the unsent part out of repair mode, as new data. Repair mode is
// left without the window probe TCP_REPAIR_OFF sends (CRIU's network
// lock drops that probe; crest has none, and the peer may not exist
// yet): with the window still zero the kernel does not send the data
// either.
func restoreTCPQueues(fd int, c *TCPConn) error {
	if len(c.Inq) > 0 {
		if err := writeTCPQueue(fd, tcpRecvQueue, c.Inq); err != nil {
			return fmt.Errorf("receive queue: %w", err)
		}
	}
	sent := c.Outq[:uint32(len(c.Outq))-c.Unsent]
	if len(sent) > 0 {
		if err := writeTCPQueue(fd, tcpSendQueue, sent); err != nil {
			return fmt.Errorf("send queue (sent part): %w", err)
		}
	}
	if c.Unsent == 0 {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF_NO_WP); err != nil {
		return os.NewSyscallError("setsockopt(TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)", err)
	}
	if err := sendAll(fd, c.Outq[len(sent):]); err != nil {
		return fmt.Errorf("send queue (unsent part): %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON); err != nil {
		return os.NewSyscallError("setsockopt(TCP_REPAIR, 1)", err)
	}
	return nil
}

func writeTCPQueue(fd, q int, b []byte) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q); err != nil {
		return os.NewSyscallError(fmt.Sprintf("setsockopt(TCP_REPAIR_QUEUE, %d)", q), err)
	}
	return sendAll(fd, b)
}

// sendAll writes b. In repair mode the kernel makes one linear buffer
// of what it is given, which a large write may not get (ENOMEM): as
// CRIU, the writes are halved until they pass.
func sendAll(fd int, b []byte) error {
	chunk := len(b)
	for off := 0; off < len(b); {
		n, err := unix.SendmsgN(fd, b[off:off+min(chunk, len(b)-off)], nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err == syscall.EINTR {
			continue
		}
		if (err != nil || n == 0) && chunk > 1024 {
			chunk /= 2
			continue
		}
		if err != nil {
			return os.NewSyscallError(fmt.Sprintf("send(%d bytes at %d of %d)", min(chunk, len(b)-off), off, len(b)), err)
		}
		if n == 0 {
			return fmt.Errorf("send: nothing written at %d of %d bytes", off, len(b))
		}
		off += n
	}
	return nil
}

// setsockoptBytes sets option opt to b (x/sys/unix has no setsockopt
// for tcp_repair_window).
func setsockoptBytes(fd, level, opt int, b []byte) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// tcpRepairOff ends repair mode on every connection, once the tree is
// restored and before it runs (after RESTORE_SIGCHLD, as CRIU's
// restorer), through the engine's copies of the sockets: each sends a
// window probe, its peer answers with its window, and the queued data
// flows. SO_REUSEADDR, which repair mode overrode, gets the image's
// value.
func (r *Restore) tcpRepairOff() error {
	if r.files == nil {
		return nil
	}
	var conns []*File
	for _, f := range r.plan.Files {
		if f.Kind == FileInetSocket && f.Inet.Conn != nil {
			conns = append(conns, f)
		}
	}
	sort.Slice(conns, func(i, j int) bool { return conns[i].ID < conns[j].ID })
	for _, f := range conns {
		k, ok := r.files.index[fileKey(f)]
		if !ok {
			return fmt.Errorf("file %d (%s): the engine has no copy of it", f.ID, f.Inet)
		}
		fd := r.files.fds[k]
		if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF); err != nil {
			return fmt.Errorf("file %d (%s): %w", f.ID, f.Inet, os.NewSyscallError("setsockopt(TCP_REPAIR, 0)", err))
		}
		reuse := boolInt(f.Inet.Opts.GetReuseaddr())
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, reuse); err != nil {
			return fmt.Errorf("file %d (%s): %w", f.ID, f.Inet, os.NewSyscallError(fmt.Sprintf("setsockopt(SO_REUSEADDR, %d)", reuse), err))
		}
	}
	return nil
}
