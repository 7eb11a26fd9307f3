package dump_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/procfs"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/procscan"
	"github.com/crest-restore/crest/test/terminal"
	"github.com/crest-restore/crest/test/workloads"
)

// TestShellJob runs ttyjob as a job of a shell on a pty, as a user does at
// a terminal, dumps it with `crest dump --shell-job`, and restores it with
// `crest restore --shell-job -d` run by another shell on another pty: the
// job must come back in that shell's session, in the foreground of the new
// terminal, with its fds 0-2 there and the terminal set up as it left its
// old one (no echo, VERASE, window size), which ttyjob checks every tick.
// The test types a line and reads the echo, sends ^C and ^Z from the new
// terminal, and watches the logs go on.
func TestShellJob(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	job := workloads.Build(t, "ttyjob")
	dir := t.TempDir()
	term1 := terminal.Open(t)
	sh1 := terminal.StartShell(t, term1, dir, job)
	pid := sh1.Job(t)
	t.Cleanup(func() { endJob(t, pid) })
	term1.Expect(t, "ready\r\n")
	p := workloads.Adopt(pid, dir)
	waitLines(t, p, "out-ttyjob.log", 3)
	waitLines(t, p, "out-child.log", 3)
	term1.Type(t, "before the dump\n")
	term1.Expect(t, "echo: before the dump\r\n")

	// without --shell-job: refused, naming the flag, and the job runs on
	imgs := filepath.Join(t.TempDir(), "images")
	res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(pid), "-D", imgs)
	if res.Code != 1 || !strings.Contains(res.Stderr, "--shell-job") || !strings.Contains(res.Stderr, fmt.Sprintf("task %d", pid)) {
		t.Fatalf("crest dump of a shell job without --shell-job: exit %d, %q; want 1 and a message naming the task and --shell-job", res.Code, res.Stderr)
	}
	if _, err := os.Stat(imgs); err == nil {
		t.Fatalf("the refused dump left %s", imgs)
	}
	n := len(waitLines(t, p, "out-ttyjob.log", 1))
	waitLines(t, p, "out-ttyjob.log", n+5)

	if res := cli.Run(t, bin, "dump", "--shell-job", "-t", strconv.Itoa(pid), "-D", imgs); res.Code != 0 {
		t.Fatalf("crest dump --shell-job: exit %d: %s", res.Code, res.Stderr)
	}
	if how := sh1.Ended(t); how != "signal 9" {
		t.Fatalf("the dumped job ended with %s, want signal 9 (killed by the dump)", how)
	}
	if left := procscan.WaitGone(10*time.Second, pid); len(left) > 0 {
		t.Fatalf("dumped job %d still there", pid)
	}
	// the job's child came to us, the subreaper, when the dump killed the job
	if d, err := images.Open(imgs); err != nil {
		t.Fatal(err)
	} else {
		for _, e := range d.Pstree {
			cli.ReapGone(t, int(e.GetPid()))
		}
	}
	t.Run("images", func(t *testing.T) { shellJobImages(t, imgs, pid, sh1.Pid, term1) })
	rules := map[string]check.Next{"out-ttyjob.log": check.Counter, "out-child.log": check.Counter}
	before := map[string][]byte{}
	for l := range rules {
		b, err := os.ReadFile(filepath.Join(dir, l))
		if err != nil {
			t.Fatal(err)
		}
		before[l] = b
	}

	// without --shell-job: refused at planning, naming the flag, the
	// task and the image
	res = cli.Run(t, bin, "restore", "-D", imgs, "-d")
	if res.Code != 1 || !strings.Contains(res.Stderr, "--shell-job") || !strings.Contains(res.Stderr, fmt.Sprintf("task %d", pid)) ||
		!strings.Contains(res.Stderr, "pstree.img") {
		t.Fatalf("crest restore of a shell job without --shell-job: exit %d, %q; want 1 and a message naming the task, pstree.img and --shell-job", res.Code, res.Stderr)
	}
	// with it, but no terminal on crest's stdin: refused, nothing left
	res = cli.Run(t, bin, "restore", "--shell-job", "-D", imgs, "-d")
	if res.Code != 1 || !strings.Contains(res.Stderr, "stdin is not a terminal") {
		t.Fatalf("crest restore --shell-job without a terminal: exit %d, %q; want 1 and a message saying stdin is not a terminal", res.Code, res.Stderr)
	}
	nothingLeft(t, dir)

	term2 := terminal.Open(t)
	term2.SetWinsize(t, 24, 80)
	pidfile := filepath.Join(t.TempDir(), "pid")
	sh2 := terminal.StartShell(t, term2, dir, bin, "restore", "--shell-job", "-d", "-D", imgs, "--pidfile", pidfile)
	if how := sh2.Ended(t); how != "exit 0" {
		t.Fatalf("crest restore --shell-job -d: %s; the terminal showed %q", how, term2.Output())
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	root, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || root != pid {
		t.Fatalf("restored root %q (%v), want %d", b, err, pid)
	}
	child := restoredChild(t, p, root)
	if term2.Output() != "" {
		t.Errorf("crest restore printed %q on the terminal, want nothing", term2.Output())
	}
	for _, h := range []int{root, child} {
		st, err := procfs.ReadStat(fmt.Sprintf("/proc/%d/stat", h))
		if err != nil {
			t.Fatal(err)
		}
		// pgrp, session, tty_nr, tpgid: the job leads its group, in
		// the new shell's session, the new terminal's foreground
		if pgrp, sid, tpgid := int(st.Field(5)), int(st.Field(6)), int(st.SignedField(8)); pgrp != root || sid != sh2.Pid || tpgid != root {
			t.Errorf("task %d: group %d, session %d, terminal's foreground %d; want %d, %d (the new shell's), %d", h, pgrp, sid, tpgid, root, sh2.Pid, root)
		}
		onTerminal(t, h, int(st.Field(7)), term2)
	}
	jobTermios(t, term2)

	t.Run("runs on", func(t *testing.T) { check.Logs(t, dir, before, rules, time.Second) })
	echoes(t, p, term2)
	// ^C from the terminal: SIGINT to the foreground group
	term2.Type(t, "\x03")
	term2.Expect(t, "sigint 1\r\n")
	noCorrupt(t, p, []string{"out-ttyjob.log", "out-child.log"})
	endTree(t, root, child)

	// ^Z stops a job only while its group is not orphaned: restored
	// detached, its parent is the test, in another session, and the
	// kernel drops the terminal's stop signals. Restored with crest
	// staying its parent (in the shell's session), ^Z stops it, and a
	// SIGCONT lets it go on.
	t.Run("^Z", func(t *testing.T) {
		term3 := terminal.Open(t)
		pidfile := filepath.Join(t.TempDir(), "pid")
		sh3 := terminal.StartShell(t, term3, dir, bin, "restore", "--shell-job", "-D", imgs, "--pidfile", pidfile)
		root := waitPidfile(t, pidfile)
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", root, root))
		child, _ := strconv.Atoi(strings.TrimSpace(string(kids)))
		t.Cleanup(func() { endTree(t, root, child) })
		n := len(waitLines(t, p, "out-ttyjob.log", 1))
		waitLines(t, p, "out-ttyjob.log", n+3)
		term3.Type(t, "\x1a")
		for _, h := range []int{root, child} {
			waitState(t, h, 'T')
		}
		if err := syscall.Kill(-root, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		n = len(waitLines(t, p, "out-ttyjob.log", 1))
		waitLines(t, p, "out-ttyjob.log", n+5)
		noCorrupt(t, p, []string{"out-ttyjob.log", "out-child.log"})
		endTree(t, root, child)
		if how := sh3.Ended(t); how != "exit 137" {
			t.Errorf("crest restore --shell-job: %s, want exit 137 (its root killed by SIGKILL)", how)
		}
	})
}

// TestShellJobPidNS is TestShellJob for a job that is the init of a pid
// namespace of its own, as `unshare --fork --pid ttyjob` typed at a shell
// runs it (ttyshell -p): the job's session and group leaders are outside
// its namespace, so its tasks and its terminal's tty-info have session
// and group 0 in the images. CRIU 4.2 refuses to dump such a task ("A
// session leader of ... is outside of its pid namespace", cr-dump.c), and
// its restore_sid fails on these images ("Requested sid ... doesn't match
// inherited 0"); crest dumps and restores it: the job must come back as
// pid 1 of a new pid namespace, in the restoring shell's session and
// crest's group, in the foreground of the new terminal, with its fds 0-2
// there and the terminal set up as it left its old one, echo lines and
// take ^C.
func TestShellJobPidNS(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	job := workloads.Build(t, "ttyjob")
	dir := t.TempDir()
	term1 := terminal.Open(t)
	sh1 := terminal.StartShellNewPID(t, term1, dir, job)
	t.Cleanup(func() { endJob(t, sh1.Job(t)) })
	pid := sh1.Init(t)
	term1.Expect(t, "ready\r\n")
	p := workloads.Adopt(pid, dir)
	waitLines(t, p, "out-ttyjob.log", 3)
	waitLines(t, p, "out-child.log", 3)
	term1.Type(t, "before the dump\n")
	term1.Expect(t, "echo: before the dump\r\n")

	imgs := filepath.Join(t.TempDir(), "images")
	res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(pid), "-D", imgs)
	if res.Code != 1 || !strings.Contains(res.Stderr, "--shell-job") || !strings.Contains(res.Stderr, "task 1") {
		t.Fatalf("crest dump of a shell job without --shell-job: exit %d, %q; want 1 and a message naming task 1 and --shell-job", res.Code, res.Stderr)
	}
	if res := cli.Run(t, bin, "dump", "--shell-job", "-t", strconv.Itoa(pid), "-D", imgs); res.Code != 0 {
		t.Fatalf("crest dump --shell-job: exit %d: %s", res.Code, res.Stderr)
	}
	if how := sh1.Ended(t); how != "signal 9" {
		t.Fatalf("the dumped job ended with %s, want signal 9 (its init killed by the dump)", how)
	}
	t.Run("images", func(t *testing.T) {
		d, err := images.Open(imgs)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Pstree) != 2 {
			t.Fatalf("pstree.img: %d tasks, want 2", len(d.Pstree))
		}
		for i, e := range d.Pstree {
			if int(e.GetPid()) != i+1 || e.GetSid() != 0 || e.GetPgid() != 0 {
				t.Errorf("pstree.img: task %d in session %d, group %d; want task %d, 0, 0 (leaders outside its pid namespace)", e.GetPid(), e.GetSid(), e.GetPgid(), i+1)
			}
		}
		infos, err := d.TTYInfo()
		if err != nil {
			t.Fatal(err)
		}
		if len(infos) != 1 || infos[0].GetId() != uint32(term1.Index)<<1 || infos[0].GetSid() != 0 || infos[0].GetPgrp() != 0 {
			t.Errorf("tty-info.img: %v; want the slave %d with session 0 and group 0", infos, term1.Index)
		}
	})
	rules := map[string]check.Next{"out-ttyjob.log": check.Counter, "out-child.log": check.Counter}
	before := map[string][]byte{}
	for l := range rules {
		b, err := os.ReadFile(filepath.Join(dir, l))
		if err != nil {
			t.Fatal(err)
		}
		before[l] = b
	}
	res = cli.Run(t, bin, "restore", "-D", imgs, "-d")
	if res.Code != 1 || !strings.Contains(res.Stderr, "--shell-job") || !strings.Contains(res.Stderr, "task 1") ||
		!strings.Contains(res.Stderr, "pstree.img") {
		t.Fatalf("crest restore of a shell job without --shell-job: exit %d, %q; want 1 and a message naming task 1, pstree.img and --shell-job", res.Code, res.Stderr)
	}
	nothingLeft(t, dir)

	term2 := terminal.Open(t)
	term2.SetWinsize(t, 24, 80)
	pidfile := filepath.Join(t.TempDir(), "pid")
	sh2 := terminal.StartShell(t, term2, dir, bin, "restore", "--shell-job", "-d", "-D", imgs, "--pidfile", pidfile)
	if how := sh2.Ended(t); how != "exit 0" {
		t.Fatalf("crest restore --shell-job -d: %s; the terminal showed %q", how, term2.Output())
	}
	crest := sh2.Job(t)
	root := waitPidfile(t, pidfile)
	child := restoredChild(t, p, root)
	if term2.Output() != "" {
		t.Errorf("crest restore printed %q on the terminal, want nothing", term2.Output())
	}
	for i, h := range []int{root, child} {
		st, err := procfs.ReadStat(fmt.Sprintf("/proc/%d/stat", h))
		if err != nil {
			t.Fatal(err)
		}
		// as seen from here: crest's group (it was the restoring
		// shell's job), the shell's session, that group in front
		if pgrp, sid, tpgid := int(st.Field(5)), int(st.Field(6)), int(st.SignedField(8)); pgrp != crest || sid != sh2.Pid || tpgid != crest {
			t.Errorf("task %d: group %d, session %d, terminal's foreground %d; want %d (crest's), %d (the new shell's), %d", h, pgrp, sid, tpgid, crest, sh2.Pid, crest)
		}
		onTerminal(t, h, int(st.Field(7)), term2)
		// as seen in its pid namespace: pid 1 and 2, both leaders
		// outside, as at the dump
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h))
		if err != nil {
			t.Fatal(err)
		}
		for key, want := range map[string]int{"NSpid": i + 1, "NSpgid": 0, "NSsid": 0} {
			if got := lastField(t, string(status), key); got != uint32(want) {
				t.Errorf("task %d: %s %d in its pid namespace, want %d", h, key, got, want)
			}
		}
	}
	jobTermios(t, term2)
	t.Run("runs on", func(t *testing.T) { check.Logs(t, dir, before, rules, time.Second) })
	echoes(t, p, term2)
	// ^C: SIGINT to the foreground group; ttyjob's root, the init,
	// catches it (an init ignores the signals it does not handle)
	term2.Type(t, "\x03")
	term2.Expect(t, "sigint 1\r\n")
	noCorrupt(t, p, []string{"out-ttyjob.log", "out-child.log"})
}

// restoredChild returns the one child of ttyjob's restored root, which
// the test ends when it is over.
func restoredChild(t *testing.T, p *workloads.Process, root int) int {
	t.Helper()
	kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", root, root))
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(string(kids)))
	if err != nil {
		noCorrupt(t, p, []string{"out-ttyjob.log", "out-child.log"})
		t.Fatalf("restored root %d has children %q, want one", root, kids)
	}
	t.Cleanup(func() { endTree(t, root, child) })
	return child
}

// onTerminal checks that task h (its stat's tty_nr ctty) has term as its
// controlling terminal and its fds 0-2 on it.
func onTerminal(t *testing.T, h, ctty int, term *terminal.PTY) {
	t.Helper()
	if ctty != int(unix.Mkdev(136, uint32(term.Index))) {
		t.Errorf("task %d: controlling terminal %#x, want %s", h, ctty, term.Slave)
	}
	for fd := 0; fd < 3; fd++ {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", h, fd)); err != nil || l != term.Slave {
			t.Errorf("task %d: fd %d is %q (%v), want %s", h, fd, l, err, term.Slave)
		}
	}
}

// jobTermios checks that term has the termios and window size ttyjob set
// on the terminal it was dumped from.
func jobTermios(t *testing.T, term *terminal.PTY) {
	t.Helper()
	tm, ws := term.Termios(t)
	if tm.Lflag&unix.ECHO != 0 || tm.Cc[unix.VERASE] != 8 || ws.Row != 33 || ws.Col != 111 {
		t.Errorf("the new terminal: lflag %#o, VERASE %#x, window %dx%d; want -ECHO, ^H and 33x111 as the job left its own",
			tm.Lflag, tm.Cc[unix.VERASE], ws.Row, ws.Col)
	}
}

// echoes types a line on term and wants the restored ttyjob to echo it
// and to have logged it after the line it read before the dump.
func echoes(t *testing.T, p *workloads.Process, term *terminal.PTY) {
	t.Helper()
	term.Type(t, "after the restore\n")
	term.Expect(t, "echo: after the restore\r\n")
	if got, want := p.Lines(t, "out-lines.log"), []string{"line before the dump", "line after the restore"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("out-lines.log: %q, want %q", got, want)
	}
}

// waitPidfile waits until crest wrote the restored root's pid to path.
func waitPidfile(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil && pid > 0 {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid in %s after 20s", path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// endTree kills the restored tasks pids and waits until they are gone,
// reaping those that came to the test.
func endTree(t *testing.T, pids ...int) {
	t.Helper()
	for _, h := range pids {
		if h > 0 {
			syscall.Kill(h, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		reapOrphans()
		left := procscan.WaitGone(10*time.Millisecond, pids...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("restored tasks %v still there 10s after SIGKILL", left)
			return
		}
	}
}

// shellJobImages checks the images of a shell job as CRIU 4.2 writes them
// for ttyjob run by ttyshell: the shell's session, the job's group, the
// terminal as a TTY file (with a REG entry of its path) and its tty-info.
func shellJobImages(t *testing.T, imgs string, pid, shell int, term *terminal.PTY) {
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range d.Pstree {
		if int(e.GetSid()) != shell || int(e.GetPgid()) != pid {
			t.Errorf("pstree.img: task %d in session %d, group %d; want %d (the shell's), %d", e.GetPid(), e.GetSid(), e.GetPgid(), shell, pid)
		}
	}
	infos, err := d.TTYInfo()
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 {
		t.Fatalf("tty-info.img: %d entries, want 1", len(infos))
	}
	ti := infos[0]
	cc := ti.GetTermios().GetCCc()
	if ti.GetId() != uint32(term.Index)<<1 || ti.GetType() != tty.TtyType_PTY || ti.GetPty().GetIndex() != uint32(term.Index) ||
		int(ti.GetSid()) != shell || int(ti.GetPgrp()) != pid || ti.GetRdev() != uint32(unix.Mkdev(136, uint32(term.Index))) ||
		ti.GetTermios().GetCLflag()&unix.ECHO != 0 || len(cc) != 19 || cc[0]>>16&0xff != 8 ||
		ti.GetWinsize().GetWsRow() != 33 || ti.GetWinsize().GetWsCol() != 111 || ti.GetLocked() || ti.GetPacketMode() {
		t.Errorf("tty-info.img: %v; want pty %d, session %d, group %d, -ECHO, VERASE ^H in the first c_cc word, 33x111", ti, term.Index, shell, pid)
	}
	ids, err := d.IDs(uint32(pid))
	if err != nil {
		t.Fatal(err)
	}
	ents, err := d.Fdinfo(ids.GetFilesId())
	if err != nil {
		t.Fatal(err)
	}
	var ttyID uint32
	for _, e := range ents {
		if e.GetFd() <= 2 {
			if e.GetType() != fdinfo.FdTypes_TTY || (ttyID != 0 && e.GetId() != ttyID) {
				t.Errorf("fd %d: %v, want the one TTY file", e.GetFd(), e)
			}
			ttyID = e.GetId()
		}
	}
	fe, err := d.File(ttyID)
	if err != nil {
		t.Fatal(err)
	}
	te := fe.GetTty()
	reg, err := d.File(te.GetRegfId())
	if err != nil {
		t.Fatal(err)
	}
	if te.GetTtyInfoId() != ti.GetId() || te.GetRegfId() != ttyID+1 || reg.GetReg().GetName() != term.Slave ||
		te.GetFlags()&unix.O_ACCMODE != unix.O_RDWR {
		t.Errorf("files.img: %v and %v; want a TTY file of tty-info %d, O_RDWR, with its REG entry %s next", fe, reg, ti.GetId(), term.Slave)
	}
}

// nothingLeft fails the test for every process of a restore still
// there: running from dir, or crest's agent of this process's restores
// (other tests' restores may run at the same time).
func nothingLeft(t *testing.T, dir string) {
	t.Helper()
	left, err := procscan.FindAgentsOf(os.Getpid(), procscan.Under(dir))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range left {
		if p.State != 'Z' {
			t.Errorf("left behind: %v", p)
		}
	}
}

// reapOrphans reaps the zombies that came to the test, the subreaper.
func reapOrphans() {
	for {
		if pid, _ := syscall.Wait4(-1, nil, syscall.WNOHANG|syscall.WALL, nil); pid <= 0 {
			return
		}
	}
}

// endJob kills what is left of the job of group pgid (a failed test's)
// and reaps those of its tasks that came to the test, the subreaper.
func endJob(t *testing.T, pgid int) {
	syscall.Kill(-pgid, syscall.SIGKILL)
	procscan.WaitGone(time.Second, pgid)
	reapOrphans()
}

// waitState waits until task pid is in state (a /proc/PID/stat letter).
func waitState(t *testing.T, pid int, state byte) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, err := procscan.Read(pid)
		if err == nil && p.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %d: state %c (%v) after 10s, want %c", pid, p.State, err, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestShellJobRollback restores a shell job whose pids are still taken
// (it was dumped with --leave-running): the restore fails once it gave
// crest's terminal the job's termios and window size, and must give the
// terminal back as it was and leave no process behind.
func TestShellJobRollback(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	dir := t.TempDir()
	term1 := terminal.Open(t)
	sh1 := terminal.StartShell(t, term1, dir, workloads.Build(t, "ttyjob"))
	pid := sh1.Job(t)
	t.Cleanup(func() { endJob(t, pid) })
	term1.Expect(t, "ready\r\n")
	imgs := filepath.Join(t.TempDir(), "images")
	if res := cli.Run(t, bin, "dump", "--shell-job", "--leave-running", "-t", strconv.Itoa(pid), "-D", imgs); res.Code != 0 {
		t.Fatalf("crest dump --shell-job --leave-running: exit %d: %s", res.Code, res.Stderr)
	}
	term2 := terminal.Open(t)
	term2.SetWinsize(t, 10, 20)
	was, _ := term2.Termios(t)
	sh2 := terminal.StartShell(t, term2, dir, bin, "restore", "--shell-job", "-d", "-D", imgs)
	if how := sh2.Ended(t); how != "exit 1" {
		t.Fatalf("crest restore --shell-job of a tree whose pids are taken: %s, want exit 1", how)
	}
	if !strings.Contains(term2.Output(), "in use") {
		t.Errorf("crest restore said %q, want the pid in use", term2.Output())
	}
	now, ws := term2.Termios(t)
	if *now != *was || ws.Row != 10 || ws.Col != 20 {
		t.Errorf("after the failed restore the terminal has termios %+v and window %dx%d; want %+v and 10x20 as before", now, ws.Row, ws.Col, was)
	}
	nothingLeft(t, t.TempDir())
	if !workloads.Alive(pid) {
		t.Errorf("the dumped job %d died", pid)
	}
	noCorrupt(t, workloads.Adopt(pid, dir), []string{"out-ttyjob.log", "out-child.log"})
}

// TestDumpRefusesTerminals: terminals other than the shell's fail the
// dump, with or without --shell-job, naming the task, the fd and the
// terminal; the tree runs on.
func TestDumpRefusesTerminals(t *testing.T) {
	for _, tc := range []struct {
		name, setup string
		want        []string
	}{
		// a slave whose master was closed: hung up, its /dev/pts node
		// gone, nothing to restore it onto (the slave is fd 5)
		{"hung-up slave", `int m = posix_openpt(O_RDWR | O_NOCTTY);
	grantpt(m);
	unlockpt(m);
	open(ptsname(m), O_RDWR | O_NOCTTY);
	close(m);`, []string{"fd 5", "(deleted)", "the terminal is hung up"}},
	} {
		for _, shellJob := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s shell-job=%v", tc.name, shellJob), func(t *testing.T) {
				p := workloads.StartTicking(t, "tty", strings.ReplaceAll(tc.name, " ", ""), workloads.TickSource{
					Includes: "#include <fcntl.h>\n#include <stdlib.h>\n", Setup: tc.setup})
				waitLines(t, p, "out-tty.log", 3)
				parent := t.TempDir()
				_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images"), ShellJob: shellJob})
				refusedCleanly(t, err, p, parent, "out-tty.log", append([]string{"task 1"}, tc.want...)...)
			})
		}
	}
}
