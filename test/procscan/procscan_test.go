package procscan

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
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
