// Package terminal gives tests pseudo-terminals and a shell with job
// control on them (the ttyshell workload), for jobs dumped and restored
// with --shell-job: a test types on a pty's master and reads what the job
// prints, as a user at a terminal would.
package terminal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/test/workloads"
)

// PTY is a pseudo-terminal the test holds the master of.
type PTY struct {
	Master *os.File
	Slave  string // its slave's path, /dev/pts/Index
	Index  int
	// slave is kept open so that the master never reads EIO while no
	// one else has the slave open (before the shell opens it, after the
	// job is killed).
	slave *os.File

	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

// Open makes a new pty (/dev/ptmx, unlocked) and reads everything its
// master gets until the test ends.
func Open(t testing.TB) *PTY {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Fatal(os.NewSyscallError("ioctl(TIOCSPTLCK)", err))
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Fatal(os.NewSyscallError("ioctl(TIOCGPTN)", err))
	}
	p := &PTY{Master: m, Index: int(n), Slave: fmt.Sprintf("/dev/pts/%d", n), done: make(chan struct{})}
	if p.slave, err = os.OpenFile(p.Slave, os.O_RDWR|syscall.O_NOCTTY, 0); err != nil {
		m.Close()
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		b := make([]byte, 4096)
		for {
			n, err := m.Read(b)
			p.mu.Lock()
			p.out.Write(b[:n])
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		m.Close()
		p.slave.Close()
		<-p.done
	})
	return p
}

// Type writes s to the master: what a user types.
func (p *PTY) Type(t testing.TB, s string) {
	t.Helper()
	if _, err := p.Master.WriteString(s); err != nil {
		t.Fatalf("%s: typing %q: %v", p.Slave, s, err)
	}
}

// Output is everything the terminal showed so far.
func (p *PTY) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Expect waits until the terminal showed s.
func (p *PTY) Expect(t testing.TB, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.Output(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not show %q in 10s; it showed %q", p.Slave, s, p.Output())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Termios returns the slave's termios and window size, as its processes
// see them.
func (p *PTY) Termios(t testing.TB) (*unix.Termios, *unix.Winsize) {
	t.Helper()
	tm, err := unix.IoctlGetTermios(int(p.slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(os.NewSyscallError("ioctl(TCGETS)", err))
	}
	ws, err := unix.IoctlGetWinsize(int(p.slave.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		t.Fatal(os.NewSyscallError("ioctl(TIOCGWINSZ)", err))
	}
	return tm, ws
}

// SetWinsize gives the terminal a window size, as a terminal emulator
// does.
func (p *PTY) SetWinsize(t testing.TB, rows, cols uint16) {
	t.Helper()
	if err := unix.IoctlSetWinsize(int(p.Master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatal(os.NewSyscallError("ioctl(TIOCSWINSZ)", err))
	}
}

// Shell is ttyshell on a pty: a session leader whose controlling
// terminal the pty is, running one job in the terminal's foreground.
type Shell struct {
	Pid    int
	status string
}

// StartShell starts ttyshell on p running prog with args as its job in
// dir, and kills it when the test ends. The shell is the test's child;
// its job the shell's. prog may be a /proc/self/fd/N path of the test
// process (cli.Binary's): the shell gets the file as its fd 3.
func StartShell(t testing.TB, p *PTY, dir, prog string, args ...string) *Shell {
	t.Helper()
	return startShell(t, nil, p, dir, prog, args...)
}

// StartShellNewPID is StartShell with the job in a pid namespace of its
// own, as `unshare --fork --pid prog` typed at the shell runs it: Job is
// the group leader, outside the namespace, and Init prog, pid 1 in it,
// whose session and group leaders are outside its namespace.
func StartShellNewPID(t testing.TB, p *PTY, dir, prog string, args ...string) *Shell {
	t.Helper()
	return startShell(t, []string{"-p"}, p, dir, prog, args...)
}

func startShell(t testing.TB, opts []string, p *PTY, dir, prog string, args ...string) *Shell {
	t.Helper()
	sh := workloads.Build(t, "ttyshell")
	status := filepath.Join(t.TempDir(), "status")
	var extra []*os.File
	if strings.HasPrefix(prog, "/proc/self/fd/") {
		f, err := os.Open(prog)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		extra, prog = []*os.File{f}, "/proc/self/fd/3"
	}
	cmd := exec.Command(sh, append(append(opts, dir, p.Slave, status, prog), args...)...)
	cmd.ExtraFiles = extra
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &Shell{Pid: cmd.Process.Pid, status: status}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return s
}

// lines waits until the shell's status file has n lines.
func (s *Shell) lines(t testing.TB, n int) []string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(s.status)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if l := strings.Split(strings.TrimRight(string(b), "\n"), "\n"); len(b) > 0 && len(l) >= n && strings.HasSuffix(string(b), "\n") {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("shell %d: %d lines of status in 30s, want %d: %q", s.Pid, strings.Count(string(b), "\n"), n, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Job returns the host pid of the shell's job.
func (s *Shell) Job(t testing.TB) int {
	t.Helper()
	pid, err := strconv.Atoi(strings.TrimPrefix(s.lines(t, 1)[0], "job "))
	if err != nil {
		t.Fatalf("shell %d: status %q", s.Pid, s.lines(t, 1)[0])
	}
	return pid
}

// Init returns the host pid of the job's pid 1, for a shell started with
// StartShellNewPID: the job's one child.
func (s *Shell) Init(t testing.TB) int {
	t.Helper()
	job := s.Job(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", job, job))
		if err != nil {
			t.Fatalf("shell %d: job %d: %v", s.Pid, job, err)
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("shell %d: job %d has children %q after 10s, want its pid namespace's init", s.Pid, job, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Ended waits until the shell's job ended and returns how: "exit N" or
// "signal N".
func (s *Shell) Ended(t testing.TB) string {
	t.Helper()
	return s.lines(t, 2)[1]
}
