package procscan

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A child started from a program whose name has spaces and parentheses
// (comm is the stat field that can hold them) is found by its directory
// and its parent, and is gone once killed and reaped.
func TestFindChild(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1) on this machine")
	}
	dir := t.TempDir()
	prog := filepath.Join(dir, "a) (b")
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prog, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prog, "60")
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer cmd.Process.Kill()

	var p Process
	for try := 0; try < 1000; try++ { // until the exec is done
		if p, err = Read(pid); err != nil {
			t.Fatal(err)
		}
		if p.Exe == prog {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if p.PID != pid || p.PPID != os.Getpid() || p.Comm != "a) (b" || p.Exe != prog || p.Cwd != "/" || p.State == 'Z' {
		t.Errorf("Read(%d) = %+v", pid, p)
	}
	for name, match := range map[string]func(Process) bool{
		"Under(dir)":             Under(dir),
		"Under(dir/)":            Under(dir + "/"),
		"ChildOf(self)":          ChildOf(os.Getpid()),
		"Any(no, Under)":         Any(ChildOf(-1), Under(dir)),
		"Any(MemfdExe, ChildOf)": Any(MemfdExe("no-such-"), ChildOf(os.Getpid())),
	} {
		found, err := Find(match)
		if err != nil {
			t.Fatal(err)
		}
		if len(found) != 1 || found[0].PID != pid {
			t.Errorf("%s found %v, want only pid %d", name, found, pid)
		}
	}
	if found, _ := Find(Under(dir + "x")); len(found) != 0 {
		t.Errorf("Under(%sx) found %v: a sibling directory is not under dir", dir, found)
	}

	cmd.Process.Kill()
	// Killed but not reaped: a zombie still exists.
	for try := 0; try < 1000; try++ {
		if p, _ = Read(pid); p.State == 'Z' {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if p.State != 'Z' || !Exists(pid) {
		t.Errorf("killed child %d: %+v, want a zombie", pid, p)
	}
	cmd.Wait()
	if left := WaitGone(10*time.Second, pid); len(left) != 0 {
		t.Errorf("pid %d still exists after it was reaped", pid)
	}
	if _, err := Read(pid); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Read of a reaped pid: %v, want ErrNotExist", err)
	}
}

// FindAgentsOf takes the agents of this process's restores (its child,
// and an orphan whose engine is gone) and leaves alone one whose line
// reaches another process that is not an agent: another engine's.
func TestFindAgentsOf(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1) on this machine")
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.MemfdCreate("crest-agent-probe", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(os.NewSyscallError("memfd_create", err))
	}
	mem := os.NewFile(uintptr(fd), "memfd:crest-agent-probe")
	defer mem.Close()
	if _, err := mem.Write(b); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// Each shape writes the agent's pid to a file; the shells exit at
	// once (the orphans' parents are then pid 1 or a shell of their own).
	shapes := map[string]struct {
		script string
		ours   bool
	}{
		"child":        {`echo $$ > "$1"; exec /proc/self/fd/3 60`, true},
		"orphan":       {`(sh -c 'echo $$ > "$1"; exec /proc/self/fd/3 60' - "$1" &)`, true},
		"other engine": {`(sh -c '/proc/self/fd/3 60 & echo $! > "$1"; wait' - "$1" &)`, false},
	}
	pids := map[string]int{}
	var kids []*exec.Cmd
	defer func() {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		for _, c := range kids {
			c.Wait()
		}
	}()
	for name, s := range shapes {
		file := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		cmd := exec.Command("sh", "-c", s.script, "-", file)
		cmd.ExtraFiles = []*os.File{mem}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		kids = append(kids, cmd)
		for try := 0; ; try++ {
			b, _ := os.ReadFile(file)
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				if p, _ := Read(pid); strings.HasPrefix(p.Exe, "/memfd:crest-agent-probe") {
					pids[name] = pid
					break
				}
			}
			if try == 2000 {
				t.Fatalf("%s: no agent started", name)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// The orphans' shells must have exited: wait for the reparenting.
	for try := 0; ; try++ {
		p, _ := Read(pids["orphan"])
		if p.PPID == 1 {
			break
		}
		if try == 2000 {
			t.Fatalf("orphan agent %v was not reparented to pid 1", p)
		}
		time.Sleep(time.Millisecond)
	}
	found, err := FindAgentsOf(os.Getpid(), func(Process) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]bool{}
	for _, p := range found {
		got[p.PID] = true
	}
	for name, s := range shapes {
		if got[pids[name]] != s.ours {
			t.Errorf("%s agent %d: found %v, want %v (found %v)", name, pids[name], got[pids[name]], s.ours, found)
		}
	}
}
