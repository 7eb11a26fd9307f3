package restore

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/terminal"
	"github.com/crest-restore/crest/test/workloads"
)

// TestPlanShellJob plans the images of ttyjob dumped as a shell job
// (ttyshell on a pty, crest's dump with ShellJob): refused without
// Options.ShellJob, naming the flag, the task and the image; with it, the
// root is born in crest's session, leads its group, no helper stands in
// for the shell, and fds 0-2 are the shell's terminal, inherited.
func TestPlanShellJob(t *testing.T) {
	needRoot(t)
	cli.Subreaper(t)
	dir := t.TempDir()
	term := terminal.Open(t)
	sh := terminal.StartShell(t, term, dir, workloads.Build(t, "ttyjob"))
	pid := sh.Job(t)
	term.Expect(t, "ready\r\n")
	imgs := dumpShellJob(t, sh, pid, pid)
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(d, Options{ShellJob: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range p.Tasks { // the job's child came to us when the dump killed the job
		cli.ReapGone(t, task.PID)
	}
	sj, root := p.ShellJob, p.Root()
	if sj == nil || sj.SID != sh.Pid || sj.PGID != 0 || sj.Terminal == nil || sj.Holder != root {
		t.Fatalf("ShellJob %+v; want the shell's session %d, no group, the terminal of task %d", sj, sh.Pid, pid)
	}
	if tt := sj.Terminal.TTY; !tt.Inherit || tt.Master || tt.Index != term.Index || sj.Terminal.Path != term.Slave {
		t.Errorf("the terminal: %+v at %s; want the inherited slave %s", tt, sj.Terminal.Path, term.Slave)
	}
	if root.Session != SessionInherit || root.Group != GroupLead || p.NrHelpers != 0 {
		t.Errorf("root: session %v, group %v, %d helpers; want inherit (crest's), lead, none", root.Session, root.Group, p.NrHelpers)
	}
	for _, task := range p.Tasks {
		for _, fd := range task.FDs[:3] {
			if fd.File != sj.Terminal && (fd.File.Kind != FileTTY || !fd.File.TTY.Inherit) {
				t.Errorf("task %d: fd %d is %v %s, want on the shell's terminal", task.PID, fd.FD, fd.File.Kind, fd.File.Path)
			}
		}
	}
}

// TestPlanShellJobPidNS plans the images of shell jobs that are the init
// of a pid namespace of their own (ttyshell -p: `unshare --fork --pid
// PROG` typed at the shell), whose session and group leaders are outside
// that namespace, so that pstree.img has sid and pgid 0: ttyjob on the
// shell's terminal, and counter with no fd on it (`PROG </dev/null
// >/dev/null 2>&1`). Without Options.ShellJob both are refused naming the
// flag, task 1 and pstree.img; with it the root is born in crest's session
// and group in a new pid namespace, with no helper.
func TestPlanShellJobPidNS(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name     string
		terminal bool
	}{
		{"on the terminal", true},
		{"no terminal", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			term := terminal.Open(t)
			var sh *terminal.Shell
			if tc.terminal {
				sh = terminal.StartShellNewPID(t, term, dir, workloads.Build(t, "ttyjob"))
				term.Expect(t, "ready\r\n")
			} else {
				sh = terminal.StartShellNewPID(t, term, dir, "/bin/sh", "-c",
					"exec "+workloads.Build(t, "counter")+" </dev/null >/dev/null 2>&1")
				(&workloads.Process{Dir: dir}).WaitFile(t, "out.log")
			}
			imgs := dumpShellJob(t, sh, sh.Init(t), 1)
			d, err := images.Open(imgs)
			if err != nil {
				t.Fatal(err)
			}
			p, err := NewPlan(d, Options{ShellJob: true})
			if err != nil {
				t.Fatal(err)
			}
			sj, root := p.ShellJob, p.Root()
			if sj == nil || !sj.Session || sj.SID != 0 || sj.PGID != 0 || (sj.Terminal != nil) != tc.terminal {
				t.Fatalf("ShellJob %+v; want the shell's session, outside the pid namespace (0), terminal %v", sj, tc.terminal)
			}
			if !p.NewPIDNS || root.PID != 1 || root.Session != SessionInherit || root.Group != GroupInherit || p.NrHelpers != 0 {
				t.Errorf("root %d: new pid namespace %v, session %v, group %v, %d helpers; want 1, a new one, inherit (crest's) both, none",
					root.PID, p.NewPIDNS, root.Session, root.Group, p.NrHelpers)
			}
		})
	}
}

// dumpShellJob dumps the shell job of sh whose root is pid (host pid)
// with ShellJob, which kills it, and checks that its images, planned
// without ShellJob, are refused naming task root (its image pid),
// pstree.img and the flag; it returns the images. The job is ended
// through a pidfd if the dump does not end it (its pid may be another's
// by the time the test ends).
func dumpShellJob(t *testing.T, sh *terminal.Shell, pid, root int) string {
	t.Helper()
	if pidfd, err := unix.PidfdOpen(pid, 0); err == nil {
		t.Cleanup(func() {
			unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
			unix.Close(pidfd)
		})
	}
	imgs := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: pid, Dir: imgs, ShellJob: true}); err != nil {
		t.Fatal(err)
	}
	if how := sh.Ended(t); how != "signal 9" {
		t.Fatalf("the dumped job: %s, want signal 9", how)
	}
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewPlan(d)
	var pe *PlanError
	if !errors.As(err, &pe) || pe.PID != root || pe.File != "pstree.img" || !strings.Contains(err.Error(), "--shell-job") {
		t.Fatalf("planning a shell job without ShellJob: %v; want a PlanError of task %d, pstree.img, naming --shell-job", err, root)
	}
	return imgs
}

// TestTermiosOf decodes termios entries as CRIU 4.2 wrote them: c_cc
// bytes packed four to a u32 word (these words are from a real dump of
// ttyjob: ^C ^\ ^H ^U, ^D, VTIME 0, VMIN 1 ...), the words after the
// eighth uninitialised.
func TestTermiosOf(t *testing.T) {
	for _, tc := range []struct {
		name  string
		words []uint32
		want  []byte
	}{
		{"criu 4.2", []uint32{352852995, 65540, 1708817, 370609938, 0, 0, 0, 0, 3103299168, 21926, 49, 0, 4148108480, 32696, 3103300880, 21926, 3103299200, 21926, 3103299200},
			[]byte{3, 0x1c, 8, 0x15, 4, 0, 1, 0, 0x11, 0x13, 0x1a, 0, 0x12, 0x0f, 0x17, 0x16, 0, 0, 0}},
		{"zero", make([]uint32, 19), make([]byte, 19)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := termiosOf(&tty.TermiosEntry{CIflag: proto.Uint32(1280), CLflag: proto.Uint32(35379), CLine: proto.Uint32(0), CCc: tc.words})
			if string(got.Cc[:]) != string(tc.want) || got.Iflag != 1280 || got.Lflag != 35379 {
				t.Errorf("termios %+v, want c_cc %v", got, tc.want)
			}
			if got.Cc[unix.VERASE] != tc.want[unix.VERASE] {
				t.Errorf("VERASE %#x", got.Cc[unix.VERASE])
			}
		})
	}
}

// TestPlanTTYRefusals plans tty entries crest does not restore: a
// hung-up slave, a terminal that is not a pty, and a pty index that does
// not match its id, each refused naming tty-info.img.
func TestPlanTTYRefusals(t *testing.T) {
	full := func(e *tty.TtyInfoEntry) *tty.TtyInfoEntry {
		tm := &tty.TermiosEntry{CIflag: proto.Uint32(0), COflag: proto.Uint32(0), CCflag: proto.Uint32(0), CLflag: proto.Uint32(0),
			CLine: proto.Uint32(0), CIspeed: proto.Uint32(0), COspeed: proto.Uint32(0), CCc: make([]uint32, 19)}
		e.Termios, e.TermiosLocked = tm, tm
		e.Winsize = &tty.WinsizeEntry{WsRow: proto.Uint32(1), WsCol: proto.Uint32(1), WsXpixel: proto.Uint32(0), WsYpixel: proto.Uint32(0)}
		return e
	}
	for _, tc := range []struct {
		name string
		info *tty.TtyInfoEntry
		want string
	}{
		{"hung up", &tty.TtyInfoEntry{Id: proto.Uint32(6), Type: tty.TtyType_PTY.Enum(), Pty: &tty.TtyPtyEntry{Index: proto.Uint32(3)}}, "hung up"},
		{"console", full(&tty.TtyInfoEntry{Id: proto.Uint32(6), Type: tty.TtyType_CONSOLE.Enum()}), "only pseudo-terminals"},
		{"index", full(&tty.TtyInfoEntry{Id: proto.Uint32(6), Type: tty.TtyType_PTY.Enum(), Pty: &tty.TtyPtyEntry{Index: proto.Uint32(4)}}), "does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Plan{Files: map[uint32]*File{}, ttys: map[uint32]*tty.TtyInfoEntry{6: tc.info}}
			_, err := p.ttyFile(&Task{PID: 42}, 9, ttyFileEntry(9, 6))
			var pe *PlanError
			if !errors.As(err, &pe) || pe.PID != 42 || pe.File != "tty-info.img" || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), "file 9") {
				t.Errorf("planning: %v; want a PlanError of task 42, file 9, tty-info.img saying %q", err, tc.want)
			}
		})
	}
}

// ttyFileEntry is a files.img TTY entry id of terminal info, without a
// REG entry (CRIU before regf_id).
func ttyFileEntry(id, info uint32) *fdinfo.FileEntry {
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_TTY.Enum(), Id: proto.Uint32(id), Tty: &tty.TtyFileEntry{Id: proto.Uint32(id),
		TtyInfoId: proto.Uint32(info), Flags: proto.Uint32(2), Fown: &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0),
			Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)}}}
}
