package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/procscan"
)

// runRestore runs `crest restore ARGS...` as main would, in this process:
// the restored root is then this process's child, as it is crest's.
func runRestoreVerb(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"restore"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("restoring a tree needs root (CAP_SYS_ADMIN for clone3 set_tid and new pid namespaces)")
	}
}

// statusField returns the fields of one line of /proc/PID/status.
func statusField(t *testing.T, pid int, key string) []string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("/proc/%d/status: no %s", pid, key)
	return nil
}

// readPidfile waits until crest wrote the pidfile and returns the pid in it.
func readPidfile(t *testing.T, path string, done <-chan struct{}) int {
	t.Helper()
	for {
		if b, err := os.ReadFile(path); err == nil && bytes.HasSuffix(b, []byte("\n")) {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid <= 0 {
				t.Fatalf("pidfile %s: %q", path, b)
			}
			return pid
		}
		select {
		case <-done:
			t.Fatal("crest restore returned before writing the pidfile")
		case <-time.After(time.Millisecond):
		}
	}
}

// killAndReap kills a restored root that is our child and waits until it
// is gone.
func killAndReap(t *testing.T, pid int) {
	t.Helper()
	syscall.Kill(pid, syscall.SIGKILL)
	for {
		if _, err := syscall.Wait4(pid, nil, syscall.WALL, nil); err != syscall.EINTR {
			break
		}
	}
	if left := procscan.WaitGone(10*time.Second, pid); len(left) > 0 {
		t.Errorf("pid %d still exists after SIGKILL", pid)
	}
}

// The root's pid in the pidfile is the host pid of the tree's init: alive,
// pid 1 in its own namespace, and crest's child (the agent clones it with
// CLONE_PARENT), which here is this test process.
func TestRestoreDetachedPidfile(t *testing.T) {
	needRoot(t)
	fixture.Install(t, "counter")
	pidfile := filepath.Join(t.TempDir(), "pid")
	code, stdout, stderr := runRestoreVerb("-D", fixture.Images(t, "counter"), "-d", "--pidfile", pidfile)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if stdout != "" || stderr != "" {
		t.Errorf("crest restore -d printed %q and %q, want nothing", stdout, stderr)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSuffix(string(b), "\n"))
	if err != nil {
		t.Fatalf("pidfile %q: %v", b, err)
	}
	defer killAndReap(t, pid)
	p, err := procscan.Read(pid)
	if err != nil || p.State == 'Z' || p.Exe != "/opt/crest-fixtures/counter/prog" {
		t.Fatalf("pid %d of the pidfile: %+v (%v), want the restored counter running", pid, p, err)
	}
	if p.PPID != os.Getpid() {
		t.Errorf("root %d has parent %d, want crest (%d)", pid, p.PPID, os.Getpid())
	}
	if ns := statusField(t, pid, "NSpid"); len(ns) != 2 || ns[0] != strconv.Itoa(pid) || ns[1] != "1" {
		t.Errorf("root %d: NSpid %v, want [%d 1]", pid, ns, pid)
	}
}

// Without -d crest stays the root's parent and exits with its status, as a
// shell reports it: 128+N when signal N ended it. (Only SIGKILL and
// SIGSTOP reach a pid namespace's init from outside unless it handles the
// signal, and the fixtures handle none: SIGKILL it is.)
func TestRestoreWaitsForRoot(t *testing.T) {
	needRoot(t)
	for _, tt := range []struct {
		sig  syscall.Signal
		code int
	}{
		{syscall.SIGKILL, 137},
	} {
		t.Run(tt.sig.String(), func(t *testing.T) {
			fixture.Install(t, "counter")
			imgs := fixture.Images(t, "counter")
			pidfile := filepath.Join(t.TempDir(), "pid")
			type result struct {
				code           int
				stdout, stderr string
			}
			done := make(chan struct{})
			var res result
			go func() {
				defer close(done)
				res.code, res.stdout, res.stderr = runRestoreVerb("-D", imgs, "--pidfile", pidfile)
			}()
			pid := readPidfile(t, pidfile, done)
			if p, err := procscan.Read(pid); err != nil || p.PPID != os.Getpid() {
				t.Errorf("root %d: %+v (%v), want crest's (%d) child", pid, p, err, os.Getpid())
			}
			// Still waiting: crest returns only when the root ends.
			select {
			case <-done:
				t.Fatalf("crest restore returned with the root running: exit %d: %s", res.code, res.stderr)
			case <-time.After(100 * time.Millisecond):
			}
			if err := syscall.Kill(pid, tt.sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				killAndReap(t, pid)
				t.Fatal("crest restore did not return after the root was killed")
			}
			if res.code != tt.code {
				t.Errorf("exit %d (%s), want %d", res.code, res.stderr, tt.code)
			}
			// crest reaped its child: nothing is left, not even a zombie.
			if procscan.Exists(pid) {
				t.Errorf("root %d still exists after crest returned", pid)
				killAndReap(t, pid)
			}
		})
	}
}

func TestRestoreUsage(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		msg  string
	}{
		{"no image directory", nil, "no image directory: give -D DIR"},
		{"argument", []string{"-D", "/tmp", "extra"}, `unexpected arguments ["extra"]`},
		{"unknown flag", []string{"-D", "/tmp", "--no-such-flag"}, "unknown flag: --no-such-flag"},
		{"-D without its value", []string{"-D"}, "flag needs an argument"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runRestoreVerb(tt.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			if !strings.Contains(stderr, tt.msg) || !strings.Contains(stderr, "usage: crest restore -D DIR") {
				t.Errorf("stderr %q: want %q and the usage line", stderr, tt.msg)
			}
		})
	}
}

// A directory that is not an image set is refused before anything runs,
// with a message naming it.
func TestRestoreNotImages(t *testing.T) {
	empty := t.TempDir()
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	for _, dir := range []string{empty, notDir, missing} {
		code, _, stderr := runRestoreVerb("-D", dir)
		if code != 1 {
			t.Errorf("-D %s: exit %d, want 1", dir, code)
		}
		if !strings.Contains(stderr, dir) || !strings.HasPrefix(stderr, "crest restore: ") {
			t.Errorf("-D %s: message %q does not name the directory", dir, stderr)
		}
	}
	if kids, err := procscan.Find(procscan.ChildOf(os.Getpid())); err != nil || len(kids) > 0 {
		t.Errorf("children left: %v (%v)", kids, errors.Join(err))
	}
}

// TestWritePidfile: the pid and a newline, whatever the file held
// before (it is overwritten in place, then cut).
func TestWritePidfile(t *testing.T) {
	for _, before := range []string{"", "7\n", "1234567890\n"} {
		path := filepath.Join(t.TempDir(), "pid")
		if before != "" {
			if err := os.WriteFile(path, []byte(before), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := writePidfile(path, 4321); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "4321\n" {
			t.Errorf("over %q: pidfile %q, %v; want %q", before, b, err, "4321\n")
		}
	}
	if err := writePidfile(filepath.Join(t.TempDir(), "no", "pid"), 1); err == nil {
		t.Error("a pidfile in a missing directory: no error")
	}
}
