package restore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
)

// Terminals, as CRIU 4.2 restores them (criu/tty.c). The images know
// Unix98 pseudo-terminals: each open file of a pty end is a TTY entry of
// files.img (with a REG entry of its path, regf_id) and each end one
// tty-info.img entry, id index<<1, |1 for the master.
//
// A slave whose master is not in the images is the terminal of the shell
// that started the job (criu dump --shell-job): with --shell-job
// (Options.ShellJob) it is restored as crest's own terminal, the one on
// crest's stdin, with the termios, locked termios, window size and owner
// of the images, and the job is put in its foreground (CRIU's
// pty_open_unpaired_slave with inherit). The tree's session, and the
// root's group when the root did not lead it, were the shell's: the root
// is born in crest's (prepare_pstree_for_shell_job).

// TTY is an open file of a pty end (FileTTY).
type TTY struct {
	Index  int  // the pty's number: /dev/pts/Index
	Master bool // the /dev/ptmx end
	// Info is the end's tty-info.img entry.
	Info *tty.TtyInfoEntry
	// Inherit: a slave whose master is outside the tree, the shell's
	// terminal, restored as crest's own (ShellJob.Terminal).
	Inherit bool
	// Pair: an end of a pty whose master is in the tree (pty.go).
	Pair *PTYPair
}

// ShellJob is a tree dumped with --shell-job: a job started from a shell
// whose session and terminal are the shell's. Plan.ShellJob is nil for
// other trees.
type ShellJob struct {
	// Session: the root's session has its leader outside the tree, the
	// shell. SID is that session in the images, and PGID the root's
	// group when its leader is outside the tree too, else 0. Both are 0
	// for a root that is the init of a pid namespace of its own (a job
	// run as `unshare --fork --pid PROG`): the shell is outside that
	// namespace too, and getsid and getpgrp answer 0 there, as the dump
	// recorded them. The restore puts the root in crest's session and
	// group.
	Session   bool
	SID, PGID int
	// Terminal is the first file of the tree on the shell's terminal
	// (every one is restored on crest's), Holder the task whose fd it is;
	// nil when the job had none.
	Terminal *File
	Holder   *Task
}

// ttyInfoID is the tty-info.img id of a pty end.
func ttyInfoID(index int, master bool) uint32 {
	id := uint32(index) << 1
	if master {
		id |= 1
	}
	return id
}

// ttyInfo returns tty-info.img's entry id, nil if there is none.
func (p *Plan) ttyInfo(id uint32) (*tty.TtyInfoEntry, error) {
	if p.ttys == nil {
		infos, err := p.Dir.TTYInfo()
		if err != nil {
			return nil, err
		}
		p.ttys = map[uint32]*tty.TtyInfoEntry{}
		for _, e := range infos {
			p.ttys[e.GetId()] = e
		}
	}
	return p.ttys[id], nil
}

// ttyFile plans file id, an open file of a terminal.
func (p *Plan) ttyFile(t *Task, id uint32, fe *fdinfo.FileEntry) (*File, error) {
	te := fe.GetTty()
	bad := func(file, format string, args ...any) error {
		return &PlanError{PID: t.PID, File: file, Msg: fmt.Sprintf("file %d: "+format, append([]any{id}, args...)...)}
	}
	if te == nil {
		return nil, bad("files.img", "TTY without its entry")
	}
	infoID := te.GetTtyInfoId()
	info, err := p.ttyInfo(infoID)
	if err != nil {
		return nil, &PlanError{PID: t.PID, Err: err}
	}
	if info == nil {
		return nil, bad("tty-info.img", "no terminal %d in tty-info.img", infoID)
	}
	if info.GetType() != tty.TtyType_PTY || info.GetPty() == nil {
		return nil, bad("tty-info.img", "terminal %d is a %v terminal: only pseudo-terminals (ptys) are restored", infoID, info.GetType())
	}
	index, master := int(info.GetPty().GetIndex()), infoID&1 == 1
	if ttyInfoID(index, master) != infoID {
		return nil, bad("tty-info.img", "terminal %d has pty index %d, which does not match its id", infoID, index)
	}
	end := fmt.Sprintf("/dev/pts/%d", index)
	if master {
		end = fmt.Sprintf("the master of /dev/pts/%d", index)
	}
	// CRIU's verify_info: a master has every parameter, a slave all or
	// none; none is a hung-up terminal, which only a fake master would
	// bring back (unusable anyway).
	have := 0
	for _, ok := range []bool{info.Termios != nil, info.TermiosLocked != nil, info.Winsize != nil} {
		if ok {
			have++
		}
	}
	switch {
	case have == 0 && !master:
		return nil, bad("tty-info.img", "%s was hung up at the dump (no termios): not restored", end)
	case have != 3:
		return nil, bad("tty-info.img", "%s has only some of termios, locked termios and window size", end)
	}
	for _, tm := range []*tty.TermiosEntry{info.Termios, info.TermiosLocked} {
		if len(tm.GetCCc()) < termiosNCC {
			return nil, bad("tty-info.img", "%s: termios with %d c_cc words, want %d", end, len(tm.GetCCc()), termiosNCC)
		}
	}
	f := &File{ID: id, Kind: FileTTY, Flags: te.GetFlags(), TTY: &TTY{Index: index, Master: master, Info: info}}
	// the path and mode are those of the REG entry beside it
	if te.RegfId != nil {
		reg, err := p.Dir.File(te.GetRegfId())
		if err != nil {
			return nil, &PlanError{PID: t.PID, Err: err}
		}
		if reg.GetReg() == nil {
			return nil, bad("files.img", "the path of the terminal, file %d, is not a REG entry", te.GetRegfId())
		}
		f.Path, f.Mode = reg.GetReg().GetName(), reg.GetReg().GetMode()
	} else if master {
		f.Path = "/dev/ptmx"
	} else {
		f.Path = end
	}
	peer, err := p.ttyInfo(ttyInfoID(index, !master))
	if err != nil {
		return nil, &PlanError{PID: t.PID, Err: err}
	}
	switch {
	case !master && peer == nil:
		// the shell's terminal: one at most (CRIU's
		// tty_verify_active_pairs)
		f.TTY.Inherit = true
		if p.ShellJob == nil {
			p.ShellJob = &ShellJob{}
		}
		sj := p.ShellJob
		if sj.Terminal != nil && sj.Terminal.TTY.Index != index {
			return nil, bad("tty-info.img", "%s and /dev/pts/%d (file %d of task %d) are both terminals whose master is outside the tree: a shell job has one",
				end, sj.Terminal.TTY.Index, sj.Terminal.ID, sj.Holder.PID)
		}
		if sj.Terminal == nil {
			sj.Terminal, sj.Holder = f, t
		}
	default:
		if err := p.pairFile(t, f); err != nil { // pty.go
			return nil, err
		}
	}
	p.Files[id] = f
	return f, nil
}

// termiosNCC is CRIU's TERMIOS_NCC: the c_cc words of a termios entry.
const termiosNCC = 19

// termiosOf is e as TCSETS takes it. CRIU copies the c_cc bytes raw into
// and out of the entry's u32 words (termios_copy), four to a word.
func termiosOf(e *tty.TermiosEntry) *unix.Termios {
	t := &unix.Termios{Iflag: e.GetCIflag(), Oflag: e.GetCOflag(), Cflag: e.GetCCflag(), Lflag: e.GetCLflag(),
		Line: uint8(e.GetCLine())}
	var cc []byte
	for _, w := range e.GetCCc() {
		cc = binary.LittleEndian.AppendUint32(cc, w)
	}
	copy(t.Cc[:], cc)
	return t
}

// shellSession reports whether t, the root, is in a session whose leader
// is outside the tree: the shell's, for a job dumped with --shell-job.
// It records the job in p.ShellJob.
func (p *Plan) shellSession(t *Task, byPID map[int]*Task) bool {
	if t.Parent != nil || t.SID == t.PID || byPID[t.SID] != nil {
		return false
	}
	if p.ShellJob == nil {
		p.ShellJob = &ShellJob{}
	}
	p.ShellJob.Session, p.ShellJob.SID = true, t.SID
	if t.PGID != t.PID && byPID[t.PGID] == nil {
		p.ShellJob.PGID = t.PGID
	}
	return true
}

// shellGroup reports whether pgid is a group of the shell job that the
// restore puts in crest's: the root's when the root is in the shell's
// session and its group's leader is outside the tree (the shell's own
// group, or a job's whose leader is gone).
func (p *Plan) shellGroup(pgid int, byPID map[int]*Task) bool {
	root := p.Root()
	return root.SID != root.PID && byPID[root.SID] == nil && pgid == root.PGID && pgid != root.PID && byPID[pgid] == nil
}

// checkShellJob refuses to restore a shell job without --shell-job
// (Options.ShellJob), as CRIU does.
func (p *Plan) checkShellJob() error {
	sj := p.ShellJob
	if sj == nil || p.shellJob {
		return nil
	}
	if sj.Session {
		session := fmt.Sprintf("session %d has its leader outside the tree", sj.SID)
		if sj.SID == 0 {
			session = "session (0) has its leader outside the tree and its pid namespace"
		}
		return &PlanError{PID: p.Root().PID, File: "pstree.img", Msg: fmt.Sprintf(
			"the root's %s (a job of a shell, dumped with --shell-job): restore it with --shell-job", session)}
	}
	return &PlanError{PID: sj.Holder.PID, File: "tty-info.img", Msg: fmt.Sprintf(
		"file %d is on %s, a terminal whose master is outside the tree (the shell's, dumped with --shell-job): restore it with --shell-job",
		sj.Terminal.ID, sj.Terminal.Path)}
}

// openTTY opens the terminal file f for the tasks: for the shell's
// terminal, crest's own, a new description of its stdin's (CRIU hands out
// its stdin).
func openTTY(f *File) (int, error) {
	if !f.TTY.Inherit {
		return -1, fmt.Errorf("%s: not the shell's terminal", f.Path)
	}
	if _, err := unix.IoctlGetTermios(0, unix.TCGETS); err != nil {
		return -1, fmt.Errorf("%s was the shell's terminal at the dump, and a shell job is restored on crest's, its stdin's: "+
			"crest's stdin is not a terminal (ioctl(TCGETS): %w)", f.Path, err)
	}
	fd, err := unix.FcntlInt(0, unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", err)
	}
	return fd, nil
}

// shellTerminal is what a shell job's restore changed on crest's
// terminal, to undo when the restore fails.
type shellTerminal struct {
	termios, locked *unix.Termios
	winsize         *unix.Winsize
	uid, gid        int
	flags           int
	pgrp            int // the foreground group, before the job took it
	foreground      bool
}

// takeTerminal gives crest's terminal the state of the shell's at the
// dump (CRIU's restore_tty_params): owner, locked termios, termios, window
// size, and the file status flags of the job's file.
func (r *Restore) takeTerminal() error {
	sj := r.plan.ShellJob
	if sj == nil || sj.Terminal == nil {
		return nil
	}
	f := sj.Terminal
	info := f.TTY.Info
	errf := func(err error) error {
		return fmt.Errorf("crest's terminal, as %s (file %d, tty-info %d): %w", f.Path, f.ID, info.GetId(), err)
	}
	st := &shellTerminal{pgrp: -1}
	var err error
	if st.termios, err = unix.IoctlGetTermios(0, unix.TCGETS); err != nil {
		return errf(os.NewSyscallError("ioctl(TCGETS)", err))
	}
	if st.locked, err = unix.IoctlGetTermios(0, unix.TIOCGLCKTRMIOS); err != nil {
		return errf(os.NewSyscallError("ioctl(TIOCGLCKTRMIOS)", err))
	}
	if st.winsize, err = unix.IoctlGetWinsize(0, unix.TIOCGWINSZ); err != nil {
		return errf(os.NewSyscallError("ioctl(TIOCGWINSZ)", err))
	}
	var fst unix.Stat_t
	if err := unix.Fstat(0, &fst); err != nil {
		return errf(os.NewSyscallError("fstat", err))
	}
	st.uid, st.gid = int(fst.Uid), int(fst.Gid)
	if st.flags, err = unix.FcntlInt(0, unix.F_GETFL, 0); err != nil {
		return errf(os.NewSyscallError("fcntl(F_GETFL)", err))
	}
	if root := r.plan.Root(); root.SID != root.PID {
		// the job will take the foreground (foregroundJob): crest's
		// terminal must be its controlling terminal, known before
		// anything is forked
		if st.pgrp, err = unix.IoctlGetInt(0, unix.TIOCGPGRP); err != nil {
			return errf(fmt.Errorf("ioctl(TIOCGPGRP): %w: crest's stdin is not its controlling terminal, whose foreground the job takes", err))
		}
	}
	r.terminal = st
	if info.Uid != nil && info.Gid != nil {
		if err := unix.Fchown(0, int(info.GetUid()), int(info.GetGid())); err != nil {
			return errf(os.NewSyscallError("fchown", err))
		}
	}
	if want := termiosOf(info.TermiosLocked); *want != *st.locked {
		// Setting locked termios needs CAP_SYS_ADMIN; without, they
		// must be what the images say already (as CRIU).
		if err := unix.IoctlSetTermios(0, unix.TIOCSLCKTRMIOS, want); err != nil {
			return errf(os.NewSyscallError("ioctl(TIOCSLCKTRMIOS)", err))
		}
	}
	if err := unix.IoctlSetTermios(0, unix.TCSETS, termiosOf(info.Termios)); err != nil {
		return errf(os.NewSyscallError("ioctl(TCSETS)", err))
	}
	ws := info.GetWinsize()
	if err := unix.IoctlSetWinsize(0, unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(ws.GetWsRow()), Col: uint16(ws.GetWsCol()),
		Xpixel: uint16(ws.GetWsXpixel()), Ypixel: uint16(ws.GetWsYpixel())}); err != nil {
		return errf(os.NewSyscallError("ioctl(TIOCSWINSZ)", err))
	}
	// The job's fds share crest's stdin's description, whose status
	// flags (O_NONBLOCK, O_APPEND ...) become the job's, as CRIU's
	// rst_file_params does.
	if _, err := unix.FcntlInt(0, unix.F_SETFL, int(f.Flags)); err != nil {
		return errf(os.NewSyscallError("fcntl(F_SETFL)", err))
	}
	return nil
}

// foregroundJob puts the job in the foreground of crest's terminal, once
// its groups exist, as CRIU's pty_open_unpaired_slave does: the root's
// group if it leads one, else the group it shares with crest. A root that
// leads its session keeps its own terminal (none).
func (r *Restore) foregroundJob() error {
	sj, root := r.plan.ShellJob, r.plan.Root()
	if sj == nil || sj.Terminal == nil || root.SID == root.PID {
		return nil
	}
	pgrp := unix.Getpgrp()
	if root.PGID == root.PID {
		pgrp = r.rootPID
	}
	if err := unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, pgrp); err != nil {
		return fmt.Errorf("crest's terminal: the job's group %d to the foreground: ioctl(TIOCSPGRP): %w", pgrp, err)
	}
	r.terminal.foreground = true
	return nil
}

// giveBackTerminal undoes what takeTerminal and foregroundJob did, when
// the restore failed.
func (r *Restore) giveBackTerminal() {
	st := r.terminal
	if st == nil {
		return
	}
	r.terminal = nil
	var errs []error
	if st.foreground {
		if err := unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, st.pgrp); err != nil {
			errs = append(errs, os.NewSyscallError("ioctl(TIOCSPGRP)", err))
		}
	}
	if _, err := unix.FcntlInt(0, unix.F_SETFL, st.flags); err != nil {
		errs = append(errs, os.NewSyscallError("fcntl(F_SETFL)", err))
	}
	if err := unix.IoctlSetWinsize(0, unix.TIOCSWINSZ, st.winsize); err != nil {
		errs = append(errs, os.NewSyscallError("ioctl(TIOCSWINSZ)", err))
	}
	if err := unix.IoctlSetTermios(0, unix.TCSETS, st.termios); err != nil {
		errs = append(errs, os.NewSyscallError("ioctl(TCSETS)", err))
	}
	if now, err := unix.IoctlGetTermios(0, unix.TIOCGLCKTRMIOS); err == nil && *now != *st.locked {
		if err := unix.IoctlSetTermios(0, unix.TIOCSLCKTRMIOS, st.locked); err != nil {
			errs = append(errs, os.NewSyscallError("ioctl(TIOCSLCKTRMIOS)", err))
		}
	}
	if err := unix.Fchown(0, st.uid, st.gid); err != nil && !errors.Is(err, syscall.EPERM) {
		errs = append(errs, os.NewSyscallError("fchown", err))
	}
	if err := errors.Join(errs...); err != nil {
		r.log.Warn("crest's terminal not given back as it was", "err", err)
	}
}
