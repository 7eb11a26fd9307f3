package dump

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"

	"github.com/crest-restore/crest/images"
)

// Pty pairs with both ends in the tree, as CRIU 4.2 dumps them
// (criu/tty.c): a /dev/ptmx master is a TTY entry like a slave, with a
// REG entry of /dev/ptmx, and its end is tty-info id index<<1|1, index
// from TIOCGPTN; its session and foreground group are the slave's, which
// TIOCGSID and TIOCGPGRP on the master tell whoever asks. The data
// queued in each end, not yet read by the tree, is tty-data.img, one
// entry per end (CRIU's tty_dump_queued_data, always done): crest reads
// it without blocking and writes it back through the other end, so that
// it is queued again where it was for a tree that runs on (a tree the
// dump kills loses nothing by it; CRIU writes it back only when the tree
// stays or the dump failed, which a failed image write after it would
// miss). The entry of a master in packet mode is what its reads gave,
// packet headers and status bytes with the data, as CRIU writes it;
// restore drops them (restore/pty.go, packetData).

// ptyIndex returns the pty number of the end c (named name): TIOCGPTN of
// a master, the number after the last slash of a slave's path. why says
// why it has none.
func ptyIndex(c int, master bool, name string) (index int, why string) {
	if master {
		n, err := unix.IoctlGetUint32(c, unix.TIOCGPTN)
		if err != nil {
			return 0, fmt.Sprintf("the pty master's index: ioctl(TIOCGPTN): %v", err)
		}
		return int(n), ""
	}
	index, err := strconv.Atoi(name[strings.LastIndexByte(name, '/')+1:])
	if err != nil {
		return 0, fmt.Sprintf("pts path %q does not end in its number", name)
	}
	return index, ""
}

// ptyInfoID is the tty-info.img id of a pty end.
func ptyInfoID(index int, master bool) uint32 {
	id := uint32(index) << 1
	if master {
		id |= 1
	}
	return id
}

// masterSession returns the session and foreground group of the slave
// of the master c, in t's pid namespace: TIOCGSID and TIOCGPGRP answer
// them on a master whatever the caller's terminal (0 when the slave
// leads no session).
func masterSession(t *task, c int) (sid, pgrp uint32, err error) {
	s, err := unix.IoctlGetInt(c, unix.TIOCGSID)
	if errors.Is(err, syscall.ENOTTY) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, os.NewSyscallError("ioctl(TIOCGSID)", err)
	}
	g, err := unix.IoctlGetInt(c, unix.TIOCGPGRP)
	if err != nil && !errors.Is(err, syscall.ENOTTY) {
		return 0, 0, os.NewSyscallError("ioctl(TIOCGPGRP)", err)
	}
	return inTaskNS(t, s, "NSsid"), inTaskNS(t, g, "NSpgid"), nil
}

// checkPTYMasters refuses a master whose slave is the controlling
// terminal of a session whose leader is not in the tree: no task could
// make it that session's terminal again (CRIU's restore fails on it).
func (d *dumper) checkPTYMasters() error {
	ttys := &d.files.ttys
	for _, id := range ttys.order {
		e := ttys.ends[id]
		if id&1 == 1 && e.sid != 0 && !d.leads(e.sid) {
			return &UnsupportedError{Task: int(e.task.nsPid), Resource: fmt.Sprintf("fd %d", e.fd), What: e.name,
				Why: fmt.Sprintf("the master of /dev/pts/%d, whose slave is the terminal of session %d, which has its leader outside the dumped tree", e.index, e.sid)}
		}
	}
	return nil
}

// maxQueued bounds the data read from one end: a pty holds far less (the
// line discipline's 4 KiB and the flip buffers).
const maxQueued = 1 << 20

// queuedRead is how much one read of queued data asks for: CRIU's buffer,
// so that a packet-mode master's reads, and their headers, are CRIU's.
const queuedRead = 16384

// ptyQueuedData reads the data queued in both ends of every pair of the
// tree, as tty-data.img entries, and writes it back through the other
// end: a terminal is no transport with guaranteed delivery (CRIU), so a
// failed write back is logged, not fatal.
func (d *dumper) ptyQueuedData() ([]images.Entry, error) {
	ttys := &d.files.ttys
	var out []images.Entry
	type queued struct {
		to   *ttyDumpEnd // the other end, to write it back through
		data []byte
	}
	var back []queued
	defer func() {
		for _, q := range back {
			if err := writeAll(q.to.lfd, q.data); err != nil {
				d.log.Warn("pty queued data not written back", "pts", q.to.index, "task", q.to.task.nsPid, "fd", q.to.fd, "err", err)
			}
		}
	}()
	for _, id := range ttys.order {
		e, peer := ttys.ends[id], ttys.ends[id^1]
		if peer == nil || e.lfd < 0 || peer.lfd < 0 {
			continue
		}
		read, data, err := readQueued(e)
		if err != nil {
			return nil, &UnsupportedError{Task: int(e.task.nsPid), Resource: fmt.Sprintf("fd %d", e.fd), What: e.name,
				Why: fmt.Sprintf("the data queued in pty %d: %v", e.index, err)}
		}
		if len(data) > 0 {
			back = append(back, queued{peer, data})
		}
		if len(read) > 0 {
			out = append(out, images.Entry{Message: &tty.TtyDataEntry{TtyId: proto.Uint32(id), Data: read}})
		}
	}
	return out, nil
}

// readQueued reads what end e holds without waiting: its file is made
// non-blocking for the time (the tree's description: put back after).
// read is all the reads gave, for the image; data the data alone, to
// write back: a master in packet mode starts every read with a header
// (TIOCPKT_DATA, 0) or gives a status byte alone, which CRIU 4.2 keeps
// in the image and which are no data (the status of a live tree is
// lost: no write makes it again).
func readQueued(e *ttyDumpEnd) (read, data []byte, err error) {
	flags, err := unix.FcntlInt(uintptr(e.lfd), unix.F_GETFL, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("fcntl(F_GETFL)", err)
	}
	if flags&unix.O_NONBLOCK == 0 {
		if _, err := unix.FcntlInt(uintptr(e.lfd), unix.F_SETFL, flags|unix.O_NONBLOCK); err != nil {
			return nil, nil, os.NewSyscallError("fcntl(F_SETFL)", err)
		}
		defer unix.FcntlInt(uintptr(e.lfd), unix.F_SETFL, flags)
	}
	packet := false
	if e.master {
		v, err := unix.IoctlGetInt(e.lfd, unix.TIOCGPKT)
		packet = err == nil && v != 0
	}
	buf := make([]byte, queuedRead)
	for len(read) < maxQueued {
		n, err := unix.Read(e.lfd, buf)
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EIO) || n == 0 {
			break // EIO: a master whose slaves are all closed
		}
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return nil, nil, os.NewSyscallError("read", err)
		}
		read = append(read, buf[:n]...)
		if packet {
			data = append(data, buf[1:n]...)
		} else {
			data = append(data, buf[:n]...)
		}
	}
	return read, data, nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return os.NewSyscallError("write", err)
		}
		b = b[n:]
	}
	return nil
}

// closePTYs closes the copies of the pty ends the dump kept.
func (ft *fileTable) closePTYs() {
	for _, e := range ft.ttys.ends {
		if e.lfd >= 0 {
			unix.Close(e.lfd)
			e.lfd = -1
		}
	}
}
