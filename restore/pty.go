package restore

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"

	"github.com/crest-restore/crest/restore/agent"
)

// Pty pairs with both ends in the tree, as CRIU 4.2 restores them
// (criu/tty.c, pty_open_ptmx): the engine opens /dev/ptmx until the
// kernel hands out the pty number of the images (it gives the lowest
// free one, so a taken number fails the restore), unlocks it, gives it
// the termios, locked termios, window size and owner of the images and
// its packet mode, opens every slave description, writes back the data
// that was queued in each end (tty-data.img), sets the exclusive flags
// and locks it again if it was locked. A session leader of the tree
// whose controlling terminal the slave was takes it back in the task
// itself (TIOCSCTTY, then TIOCSPGRP of the foreground group; the agent's
// pty.c), from a slave description the engine opened for it read-only,
// as CRIU's fake slave.

// PTYPair is a pty whose master is open in the tree.
type PTYPair struct {
	Index int
	// Master is the /dev/ptmx description (there is one: every open of
	// /dev/ptmx makes a new pty), Holder a task that holds it; Slaves
	// the descriptions of /dev/pts/Index the tree holds.
	Master *File
	Holder *Task
	Slaves []*File
	// MasterInfo and SlaveInfo are the ends' tty-info.img entries;
	// SlaveInfo is nil when no task holds the slave.
	MasterInfo, SlaveInfo *tty.TtyInfoEntry
	// ToMaster is the data that was queued in the master (written by the
	// slave's side, not yet read; without the packet headers of its
	// entry, packetData), ToSlave that queued in the slave.
	ToMaster, ToSlave []byte
	// Leader is the session leader whose controlling terminal the slave
	// is, nil for none.
	Leader *Task
}

// CTTY is a session leader's controlling terminal: a pty slave of the
// tree, with its foreground group (0: leave the leader's own).
type CTTY struct {
	Pair *PTYPair
	Pgrp int
}

func (pp *PTYPair) slavePath() string { return fmt.Sprintf("/dev/pts/%d", pp.Index) }

// pairFile plans f, an end of a pty whose master's tty-info is in the
// images.
func (p *Plan) pairFile(t *Task, f *File) error {
	if p.PTYs == nil {
		p.PTYs = map[int]*PTYPair{}
	}
	pp := p.PTYs[f.TTY.Index]
	if pp == nil {
		pp = &PTYPair{Index: f.TTY.Index}
		p.PTYs[f.TTY.Index] = pp
	}
	f.TTY.Pair = pp
	if !f.TTY.Master {
		pp.Slaves, pp.SlaveInfo = append(pp.Slaves, f), f.TTY.Info
		return nil
	}
	if pp.Master != nil {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf(
			"file %d: a second description (besides file %d of task %d) of the master of /dev/pts/%d: one open of /dev/ptmx makes one pty",
			f.ID, pp.Master.ID, pp.Holder.PID, pp.Index)}
	}
	pp.Master, pp.Holder, pp.MasterInfo = f, t, f.TTY.Info
	return nil
}

// planPTYs checks the pairs, takes their queued data from tty-data.img
// and gives each slave that was a controlling terminal to its session's
// leader.
func (p *Plan) planPTYs() error {
	if len(p.PTYs) == 0 {
		return nil
	}
	idx := make([]int, 0, len(p.PTYs))
	for i := range p.PTYs {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		pp := p.PTYs[i]
		if pp.Master == nil {
			s := pp.Slaves[0]
			return &PlanError{File: "tty-info.img", Msg: fmt.Sprintf(
				"/dev/pts/%d (file %d) has its master in tty-info.img (entry %d), but no task of the tree holds it",
				i, s.ID, ttyInfoID(i, true))}
		}
	}
	data, err := p.Dir.TTYData()
	if err != nil && !isMissing(err) {
		return &PlanError{File: "tty-data.img", Err: err}
	}
	for n, e := range data {
		id := e.GetTtyId()
		pp := p.PTYs[int(id>>1)]
		if pp == nil {
			return &PlanError{File: "tty-data.img", Msg: fmt.Sprintf("entry %d: queued data of terminal %d, which is no pty pair of the tree", n, id)}
		}
		if id&1 == 1 && pp.MasterInfo.GetPacketMode() {
			pp.ToMaster = append(pp.ToMaster, packetData(e.GetData())...)
		} else if id&1 == 1 {
			pp.ToMaster = append(pp.ToMaster, e.GetData()...)
		} else {
			pp.ToSlave = append(pp.ToSlave, e.GetData()...)
		}
	}
	byPID := map[int]*Task{}
	for _, t := range p.Tasks {
		byPID[t.PID] = t
	}
	for _, i := range idx {
		pp := p.PTYs[i]
		info := pp.MasterInfo
		sid, pgrp := int(info.GetSid()), int(info.GetPgrp())
		if sid == 0 {
			continue
		}
		bad := func(format string, args ...any) error {
			return &PlanError{PID: pp.Holder.PID, File: "tty-info.img", Msg: fmt.Sprintf("file %d, the master of /dev/pts/%d (entry %d): ",
				pp.Master.ID, i, info.GetId()) + fmt.Sprintf(format, args...)}
		}
		l := byPID[sid]
		if l == nil || l.SID != l.PID || l.Kind != TaskAlive {
			return bad("its slave is the controlling terminal of session %d, whose leader is not a live task of the tree", sid)
		}
		if l.CTTY != nil {
			return bad("task %d, the leader of session %d, has /dev/pts/%d as its controlling terminal already", sid, sid, l.CTTY.Pair.Index)
		}
		if pgrp != 0 {
			g := byPID[pgrp]
			if g == nil || g.PGID != pgrp || g.SID != sid {
				return bad("the foreground group %d is not a group of session %d in the tree", pgrp, sid)
			}
		}
		l.CTTY, pp.Leader = &CTTY{Pair: pp, Pgrp: pgrp}, l
	}
	return nil
}

// packetData is the data in b, the queued data of a master in packet
// mode as CRIU 4.2 (and crest) dump it: what the master's reads gave,
// each a status byte alone (TIOCPKT_FLUSHREAD ..., never 0) or a header
// (TIOCPKT_DATA, 0) and data; with the tree frozen the status comes
// first, then the data in one read (the line discipline's buffer, 4 KiB,
// fits in CRIU's 16 KiB read). Written back as it is, the header would
// reach the tree as a NUL of data (CRIU's restore does that); the status
// is dropped, as no write can make it again.
func packetData(b []byte) []byte {
	for len(b) > 0 && b[0] != 0 {
		b = b[1:]
	}
	if len(b) > 0 {
		b = b[1:]
	}
	return b
}

func isMissing(err error) bool { return errors.Is(err, os.ErrNotExist) }

func cttyKey(pp *PTYPair) string { return fmt.Sprintf("ctty:%d", pp.Index) }

// cttyPlan puts t's controlling terminal into its agent task.
func cttyPlan(t *Task, pr *prepared, at *agent.Task) {
	if t.CTTY == nil {
		return
	}
	k, ok := pr.index[cttyKey(t.CTTY.Pair)]
	if !ok {
		return
	}
	at.CTTYFD, at.CTTYEngineFD, at.CTTYPgrp = pr.localFD(k), int32(pr.fds[k]), int32(t.CTTY.Pgrp)
}

// fdOf names the fds of task t that hold f, for messages.
func fdOf(t *Task, f *File) string {
	for _, fd := range t.FDs {
		if fd.File == f {
			return fmt.Sprintf("fd %d", fd.FD)
		}
	}
	return "no fd"
}

// openPTY opens f, an end of a pair: the first end of the pair asked for
// opens the whole pair (the slaves can be opened only once the master
// is, and only while it is unlocked), and keeps the other ends for their
// turn.
func (pr *prepared) openPTY(t *Task, f *File) (int, error) {
	pp := f.TTY.Pair
	if pr.mnt != nil {
		// in the tree's mount namespace, later (mntns_files.go)
		return pr.mnt.reservePTY(pr, f)
	}
	fds, err := openPair(pp)
	if err != nil {
		return -1, fmt.Errorf("%s (%s): %w", f.Path, fdOf(t, f), err)
	}
	for g, fd := range fds {
		switch g {
		case f:
		case nil:
			pr.add(cttyKey(pp), fd)
		default:
			pr.add(fileKey(g), fd)
		}
	}
	return fds[f], nil
}

// openPair makes pty pp again; the key nil is the controlling
// terminal's slave.
func openPair(pp *PTYPair) (fds map[*File]int, err error) {
	fds = map[*File]int{}
	defer func() {
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}()
	m, err := openPTMXIndex(pp.Master.Path, int(pp.Master.Flags), pp.Index)
	if err != nil {
		return nil, fmt.Errorf("master of /dev/pts/%d (file %d of task %d): %w", pp.Index, pp.Master.ID, pp.Holder.PID, err)
	}
	fds[pp.Master] = m
	errm := func(step string, err error) error {
		return fmt.Errorf("master of /dev/pts/%d (file %d of task %d): %s: %w", pp.Index, pp.Master.ID, pp.Holder.PID, step, err)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		return nil, errm("unlock", os.NewSyscallError("ioctl(TIOCSPTLCK)", err))
	}
	if err := restoreTTYParams(m, pp.MasterInfo); err != nil {
		return nil, errm("tty-info entry "+fmt.Sprint(pp.MasterInfo.GetId()), err)
	}
	if pp.MasterInfo.GetPacketMode() {
		if err := unix.IoctlSetPointerInt(m, unix.TIOCPKT, 1); err != nil {
			return nil, errm("packet mode", os.NewSyscallError("ioctl(TIOCPKT)", err))
		}
	}
	for _, s := range pp.Slaves {
		fd, err := openSlave(s.Path, int(s.Flags))
		if err != nil {
			return nil, fmt.Errorf("file %d: %w", s.ID, err)
		}
		fds[s] = fd
		if err := restoreTTYParams(fd, pp.SlaveInfo); err != nil {
			return nil, fmt.Errorf("%s (file %d, tty-info entry %d): %w", s.Path, s.ID, pp.SlaveInfo.GetId(), err)
		}
	}
	if pp.Leader != nil {
		fd, err := openSlave(pp.slavePath(), syscall.O_RDONLY)
		if err != nil {
			return nil, fmt.Errorf("the controlling terminal of task %d: %w", pp.Leader.PID, err)
		}
		fds[nil] = fd
	}
	if len(pp.ToMaster) > 0 {
		// what the slave's side wrote goes through the slave again
		fd, err := openSlave(pp.slavePath(), syscall.O_WRONLY)
		if err == nil {
			err = writeFull(fd, pp.ToMaster)
			unix.Close(fd)
		}
		if err != nil {
			return nil, fmt.Errorf("tty-data.img: the data queued in the master of /dev/pts/%d: %w", pp.Index, err)
		}
	}
	if len(pp.ToSlave) > 0 {
		if err := writeFull(m, pp.ToSlave); err != nil {
			return nil, fmt.Errorf("tty-data.img: the data queued in /dev/pts/%d: %w", pp.Index, err)
		}
	}
	// CRIU dumps the exclusive flags and does not restore them; crest
	// does (root opens an exclusive terminal anyway).
	if pp.MasterInfo.GetExclusive() {
		if err := unix.IoctlSetInt(m, unix.TIOCEXCL, 0); err != nil {
			return nil, errm("exclusive", os.NewSyscallError("ioctl(TIOCEXCL)", err))
		}
	}
	if pp.SlaveInfo.GetExclusive() && len(pp.Slaves) > 0 {
		if err := unix.IoctlSetInt(fds[pp.Slaves[0]], unix.TIOCEXCL, 0); err != nil {
			return nil, fmt.Errorf("/dev/pts/%d: exclusive: %w", pp.Index, os.NewSyscallError("ioctl(TIOCEXCL)", err))
		}
	}
	if pp.MasterInfo.GetLocked() {
		if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 1); err != nil {
			return nil, errm("lock", os.NewSyscallError("ioctl(TIOCSPTLCK)", err))
		}
	}
	return fds, nil
}

// ptmxTries is how many ptys CRIU's __pty_open_ptmx_index opens at most
// on its way to an index.
const ptmxTries = 32

// openPTMXIndex opens path, /dev/ptmx, until the pty it makes has number
// index, as CRIU does: the kernel gives the lowest free number, so the
// ptys opened on the way (numbers below index that were free) are closed
// again; a number above index, or index too far, means it is taken.
func openPTMXIndex(path string, flags, index int) (int, error) {
	flags = flags&^reopenMask | syscall.O_NOCTTY | syscall.O_CLOEXEC
	var opened []int
	defer func() {
		for _, fd := range opened {
			unix.Close(fd)
		}
	}()
	for range ptmxTries {
		fd, err := unix.Open(path, flags, 0)
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: path, Err: err}
		}
		n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("%s: %w", path, os.NewSyscallError("ioctl(TIOCGPTN)", err))
		}
		if int(n) == index {
			return fd, nil
		}
		opened = append(opened, fd)
		if int(n) > index || index-int(n) >= ptmxTries {
			return -1, fmt.Errorf("pty index %d is taken: %s gave /dev/pts/%d", index, path, n)
		}
	}
	return -1, fmt.Errorf("pty index %d is taken: %d ptys opened on the way", index, ptmxTries)
}

// openSlave opens a slave of a pty the engine made, never as the engine's
// controlling terminal.
func openSlave(path string, flags int) (int, error) {
	fd, err := unix.Open(path, flags&^reopenMask|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// restoreTTYParams gives the terminal fd the owner, locked termios,
// termios and window size of info, as CRIU's restore_tty_params.
func restoreTTYParams(fd int, info *tty.TtyInfoEntry) error {
	if info.Uid != nil && info.Gid != nil {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return os.NewSyscallError("fstat", err)
		}
		if st.Uid != info.GetUid() || st.Gid != info.GetGid() {
			if err := unix.Fchown(fd, int(info.GetUid()), int(info.GetGid())); err != nil {
				return os.NewSyscallError("fchown", err)
			}
		}
	}
	if info.TermiosLocked != nil {
		want := termiosOf(info.TermiosLocked)
		if now, err := unix.IoctlGetTermios(fd, unix.TIOCGLCKTRMIOS); err != nil || *now != *want {
			if err := unix.IoctlSetTermios(fd, unix.TIOCSLCKTRMIOS, want); err != nil {
				return os.NewSyscallError("ioctl(TIOCSLCKTRMIOS)", err)
			}
		}
	}
	if info.Termios != nil {
		if err := unix.IoctlSetTermios(fd, unix.TCSETS, termiosOf(info.Termios)); err != nil {
			return os.NewSyscallError("ioctl(TCSETS)", err)
		}
	}
	if ws := info.GetWinsize(); ws != nil {
		if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(ws.GetWsRow()), Col: uint16(ws.GetWsCol()),
			Xpixel: uint16(ws.GetWsXpixel()), Ypixel: uint16(ws.GetWsYpixel())}); err != nil {
			return os.NewSyscallError("ioctl(TIOCSWINSZ)", err)
		}
	}
	return nil
}

func writeFull(fd int, b []byte) error {
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
