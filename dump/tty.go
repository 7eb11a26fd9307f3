package dump

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/procfs"
)

// Terminals, as CRIU 4.2 dumps them (criu/tty.c). Of terminals crest
// dumps the one CRIU's --shell-job is for: the terminal of the shell that
// started the job, a Unix98 pty slave (/dev/pts/N) whose master is outside
// the tree, dumped only with --shell-job (Options.ShellJob) and restored
// on the restorer's terminal. Each open file of it is a TTY entry of
// files.img, with a REG entry of its path beside it (regf_id, given the
// next id, written first); the slave is one tty-info.img entry, id
// index<<1, written when a task's fd first shows it, with what that task
// sees of it (its session and foreground group when it is the task's
// controlling terminal). Pty pairs with both ends in the tree, a master
// (/dev/ptmx) and its slaves, are dumped too, with their queued data
// (pty.go).

// maxPTYIndex is CRIU's MAX_PTY_INDEX: larger pts numbers do not fit its
// tty id space, and CRIU refuses them.
const maxPTYIndex = 1000

// termiosNCC is CRIU's TERMIOS_NCC: the c_cc words of a termios entry.
const termiosNCC = 19

// ttyTable collects tty-info.img and tty-data.img.
type ttyTable struct {
	infos []images.Entry         // tty-info.img
	ends  map[uint32]*ttyDumpEnd // by tty_info_id
	order []uint32               // tty_info_ids as first seen
}

// ttyDumpEnd is one end of a pty, as first seen.
type ttyDumpEnd struct {
	index int
	task  *task // whose fd showed it first
	fd    int
	name  string
	sid   uint32
	// master: the /dev/ptmx end; lfd a copy of its fd, for its queued
	// data (pty.go), -1 when none
	master bool
	lfd    int
}

// ptyEnd tells whether the character device rdev is a pty end, and which.
func ptyEnd(rdev uint64) (master, ok bool) {
	switch maj := unix.Major(rdev); {
	case maj == 5 && unix.Minor(rdev) == 2: // /dev/ptmx
		return true, true
	case maj >= 128 && maj <= 135: // UNIX98_PTY_MASTER_MAJOR ...
		return true, true
	case maj >= 136 && maj <= 143: // UNIX98_PTY_SLAVE_MAJOR ...
		return false, true
	}
	return false, false
}

// ttyEntry describes t's fd (a copy c, at link, named name) of a terminal
// as the TTY entry id, and writes its REG entry and, the first time, the
// tty-info entry of its end. why says why it can not be dumped.
func (ft *fileTable) ttyEntry(t *task, id uint32, fd, c int, link, name string, st *unix.Stat_t, flags uint32, pos uint64) (*fdinfo.FileEntry, string, error) {
	master, ok := ptyEnd(st.Rdev)
	if !ok {
		return nil, fmt.Sprintf("terminal %d:%d: only pseudo-terminal ends (/dev/ptmx, /dev/pts/N) are supported, "+
			"not consoles, virtual terminals, serial lines or /dev/tty", unix.Major(st.Rdev), unix.Minor(st.Rdev)), nil
	}
	// as CRIU: TIOCGPTN of a master, the number after the last slash of
	// a slave's path (pty.go)
	index, why := ptyIndex(c, master, name)
	if why != "" {
		return nil, why, nil
	}
	if index > maxPTYIndex {
		return nil, fmt.Sprintf("pty index %d is above %d, which CRIU's images can not hold", index, maxPTYIndex), nil
	}
	infoID := ptyInfoID(index, master)
	regID := ft.next()
	reg, err := regEntry(regID, link, name, flags, pos)
	if err != nil {
		return nil, "", err
	}
	ft.entries = append(ft.entries, reg)
	if ft.ttys.ends == nil {
		ft.ttys.ends = map[uint32]*ttyDumpEnd{}
	}
	if ft.ttys.ends[infoID] == nil {
		info, why, err := ttyInfo(t, c, st, infoID, index)
		if err != nil || why != "" {
			return nil, why, err
		}
		lfd, err := unix.FcntlInt(uintptr(c), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, "", os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", err)
		}
		ft.ttys.ends[infoID] = &ttyDumpEnd{index: index, task: t, fd: fd, name: name, sid: info.GetSid(), master: master, lfd: lfd}
		ft.ttys.order = append(ft.ttys.order, infoID)
		ft.ttys.infos = append(ft.ttys.infos, images.Entry{Message: info})
	}
	fe := &fdinfo.FileEntry{Type: fdinfo.FdTypes_TTY.Enum(), Id: proto.Uint32(id), Tty: &tty.TtyFileEntry{
		Id: proto.Uint32(id), TtyInfoId: proto.Uint32(infoID), Flags: proto.Uint32(flags), Fown: zeroFown(),
		RegfId: proto.Uint32(regID)}}
	return fe, "", nil
}

// ttyInfo reads the state of the pty slave c (a copy of t's fd) as
// CRIU's dump_tty_info records it.
func ttyInfo(t *task, c int, st *unix.Stat_t, infoID uint32, index int) (*tty.TtyInfoEntry, string, error) {
	getInt := func(req uint, name string) (uint32, error) {
		v, err := unix.IoctlGetInt(c, req)
		if errors.Is(err, syscall.ENOTTY) {
			return 0, nil // as CRIU's parasite: not set
		}
		if err != nil {
			return 0, os.NewSyscallError("ioctl("+name+")", err)
		}
		return uint32(v), nil
	}
	excl, err := getInt(unix.TIOCGEXCL, "TIOCGEXCL")
	if errors.Is(err, syscall.EIO) {
		return nil, "the terminal is hung up (its other end was closed)", nil
	}
	if err != nil {
		return nil, "", err
	}
	pkt, err1 := getInt(unix.TIOCGPKT, "TIOCGPKT")
	lock, err2 := getInt(unix.TIOCGPTLCK, "TIOCGPTLCK")
	if err := errors.Join(err1, err2); err != nil {
		return nil, "", err
	}
	sid, pgrp, err := ttySession(t, st.Rdev)
	if infoID&1 == 1 {
		sid, pgrp, err = masterSession(t, c) // pty.go
	}
	if err != nil {
		return nil, "", err
	}
	tm, err := unix.IoctlGetTermios(c, unix.TCGETS)
	if errors.Is(err, syscall.EIO) {
		return nil, "the terminal is hung up (its other end was closed)", nil
	}
	if err != nil {
		return nil, "", os.NewSyscallError("ioctl(TCGETS)", err)
	}
	locked, err := unix.IoctlGetTermios(c, unix.TIOCGLCKTRMIOS)
	if err != nil {
		return nil, "", os.NewSyscallError("ioctl(TIOCGLCKTRMIOS)", err)
	}
	ws, err := unix.IoctlGetWinsize(c, unix.TIOCGWINSZ)
	if err != nil {
		return nil, "", os.NewSyscallError("ioctl(TIOCGWINSZ)", err)
	}
	return &tty.TtyInfoEntry{
		Id: proto.Uint32(infoID), Type: tty.TtyType_PTY.Enum(),
		Locked: proto.Bool(lock != 0), Exclusive: proto.Bool(excl != 0), PacketMode: proto.Bool(pkt != 0),
		Sid: proto.Uint32(sid), Pgrp: proto.Uint32(pgrp),
		Rdev:          proto.Uint32(uint32(st.Rdev)),
		Termios:       termiosEntry(tm),
		TermiosLocked: termiosEntry(locked),
		Winsize: &tty.WinsizeEntry{WsRow: proto.Uint32(uint32(ws.Row)), WsCol: proto.Uint32(uint32(ws.Col)),
			WsXpixel: proto.Uint32(uint32(ws.Xpixel)), WsYpixel: proto.Uint32(uint32(ws.Ypixel))},
		Pty: &tty.TtyPtyEntry{Index: proto.Uint32(uint32(index))},
		Dev: proto.Uint32(uint32(st.Dev)),
		Uid: proto.Uint32(st.Uid), Gid: proto.Uint32(st.Gid),
	}, "", nil
}

// termiosEntry is t as CRIU writes it: its c_cc bytes (glibc's 32, of
// which the kernel fills 19) copied raw into the first eight u32 words of
// the 19 (CRIU's termios_copy memcpys the char array into the word
// array; restores copy it back the same way), the other words 0 (CRIU
// leaves them uninitialised), and no speeds (TCGETS has none).
func termiosEntry(t *unix.Termios) *tty.TermiosEntry {
	var cc [32]byte
	copy(cc[:], t.Cc[:])
	words := make([]uint32, termiosNCC)
	for i := 0; i < 8; i++ {
		words[i] = binary.LittleEndian.Uint32(cc[4*i:])
	}
	return &tty.TermiosEntry{CIflag: proto.Uint32(t.Iflag), COflag: proto.Uint32(t.Oflag), CCflag: proto.Uint32(t.Cflag),
		CLflag: proto.Uint32(t.Lflag), CLine: proto.Uint32(uint32(t.Line)), CIspeed: proto.Uint32(0), COspeed: proto.Uint32(0),
		CCc: words}
}

// ttySession returns the session and foreground group of a pty slave,
// in t's pid namespace, as TIOCGSID and TIOCGPGRP tell t: those of t's
// controlling terminal when it is this one, else 0. crest can not ask
// for t (the ioctls answer only the terminal's own session), /proc can.
func ttySession(t *task, rdev uint64) (sid, pgrp uint32, err error) {
	f, err := procfs.ReadStat(procPath(t.pid, "stat"))
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", t, err)
	}
	// tty_nr: the controlling terminal, new_encode_dev'd; tpgid its
	// foreground group, in crest's pid namespace
	ctty, tpgid := f.Field(7), int(f.SignedField(8))
	maj, min := (ctty>>8)&0xfff, (ctty&0xff)|((ctty>>12)&0xfff00) // new_decode_dev
	if ctty == 0 || maj != uint64(unix.Major(rdev)) || min != uint64(unix.Minor(rdev)) {
		return 0, 0, nil
	}
	st, err := readStatus(procPath(t.pid, "status"))
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", t, err)
	}
	s, err := st.last("NSsid")
	if err != nil {
		return 0, 0, fmt.Errorf("%s: status: %w", t, err)
	}
	return uint32(s), inTaskNS(t, tpgid, "NSpgid"), nil
}

// inTaskNS translates pid, a session or group id in crest's pid namespace
// (key NSsid or NSpgid says which), into t's: the same number when t is
// in crest's namespace, else that of a task of the tree in it, else 0 (a
// group outside the tree's namespace, which t can not see).
func inTaskNS(t *task, pid int, key string) uint32 {
	if pid <= 0 {
		return 0
	}
	st, err := readStatus(procPath(t.pid, "status"))
	if err != nil || len(strings.Fields(st[key])) <= 1 {
		return uint32(pid)
	}
	root := t
	for root.parent != nil {
		root = root.parent
	}
	var found uint32
	var walk func(*task)
	walk = func(x *task) {
		if found != 0 {
			return
		}
		if hs, err := readStatus(procPath(x.pid, "status")); err == nil {
			vals := strings.Fields(hs[key])
			if len(vals) > 1 && vals[0] == strconv.Itoa(pid) {
				n, _ := strconv.Atoi(vals[len(vals)-1])
				found = uint32(n)
				return
			}
		}
		for _, ch := range x.children {
			walk(ch)
		}
	}
	walk(root)
	return found
}

// checkTTYs refuses, as CRIU's tty_verify_active_pairs and
// dump_verify_tty_sids do, terminals tied to what is outside the tree
// unless the dump is of a shell job: a slave whose master is not in the
// tree (the shell's terminal; one at most), or a terminal whose session
// leader is not in the tree.
func (d *dumper) checkTTYs() error {
	ttys := &d.files.ttys
	unpaired := ""
	for _, id := range ttys.order {
		e := ttys.ends[id]
		what := fmt.Sprintf("fd %d", e.fd)
		if id&1 == 0 && ttys.ends[id|1] == nil {
			if !d.opts.ShellJob {
				return &UnsupportedError{Task: int(e.task.nsPid), Resource: what, What: e.name,
					Why: "the terminal's master is outside the dumped tree: a job on its shell's terminal is dumped with --shell-job"}
			}
			if unpaired != "" && unpaired != e.name {
				return &UnsupportedError{Task: int(e.task.nsPid), Resource: what, What: e.name,
					Why: fmt.Sprintf("a second terminal outside the dumped tree (besides %s): --shell-job takes one", unpaired)}
			}
			unpaired = e.name
		}
		if id&1 == 1 {
			continue // checkPTYMasters
		}
		if e.sid != 0 && !d.opts.ShellJob && !d.leads(e.sid) {
			return &UnsupportedError{Task: int(e.task.nsPid), Resource: what, What: e.name,
				Why: fmt.Sprintf("the terminal's session %d has its leader outside the dumped tree: a job on its shell's terminal is dumped with --shell-job", e.sid)}
		}
	}
	return d.checkPTYMasters() // pty.go
}

// leads reports whether a task of the tree leads session sid.
func (d *dumper) leads(sid uint32) bool {
	return sid != 0 && d.inTree(sid)
}

// writeTTYs writes tty-info.img (and tty-data.img), when the tree has
// terminals.
func (d *dumper) writeTTYs() error {
	defer d.files.closePTYs()
	if len(d.files.ttys.infos) == 0 {
		return nil
	}
	if err := d.write("tty-info.img", images.KindTTYInfo, d.files.ttys.infos...); err != nil {
		return err
	}
	data, err := d.ptyQueuedData() // pty.go
	if err != nil || len(data) == 0 {
		return err
	}
	return d.write("tty-data.img", images.KindTTYData, data...)
}

// checkLeaders refuses a task whose session or process group leader is
// outside the tree, but for a shell job (Options.ShellJob), whose root's
// session is the shell's and whose root's group may be too: tasks in
// those are restored in the restorer's (CRIU's
// prepare_pstree_for_shell_job). crest makes no helper for other leaders
// outside the tree.
//
// A job that is the init of a pid namespace of its own (`unshare --fork
// --pid PROG` typed at a shell) has its leaders outside that namespace
// too: its tasks' session and group are 0 there, and are written so.
// CRIU 4.2 refuses to dump such a task (dump_one_task: "A session leader
// of ... is outside of its pid namespace"), and its restore_sid fails on
// these images; crest restores them (restore/tty.go, ShellJob.Session).
func (d *dumper) checkLeaders(t *task, pgid, sid uint32) error {
	if d.inTree(pgid) && d.inTree(sid) {
		return nil
	}
	unsupported := func(why string) error {
		return &UnsupportedError{Task: int(t.nsPid), Resource: "session",
			What: fmt.Sprintf("pgid %d, sid %d", pgid, sid), Why: why}
	}
	if !d.opts.ShellJob {
		return unsupported("its session or process group leader is not in the dumped tree: " +
			"a job started from a shell is dumped with --shell-job")
	}
	st, err := readStatus(procPath(d.tree.root.pid, "status"))
	if err != nil {
		return fmt.Errorf("%s: %w", d.tree.root, err)
	}
	rootPgid, err1 := st.last("NSpgid")
	rootSid, err2 := st.last("NSsid")
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("%s: status: %w", d.tree.root, err)
	}
	if !d.inTree(sid) && sid != uint32(rootSid) {
		return unsupported(fmt.Sprintf("its session leader is outside the dumped tree, and its session is not the shell's (%d)", rootSid))
	}
	if !d.inTree(pgid) && pgid != uint32(rootPgid) && pgid != uint32(rootSid) {
		return unsupported(fmt.Sprintf("its process group leader is outside the dumped tree, and its group is not the job's (%d) or the shell's (%d)", rootPgid, rootSid))
	}
	return nil
}
