// Package cli runs the crest binary in end-to-end tests the way a user
// does, and cleans up after the trees it leaves: it builds ./cmd/crest once
// per test process, runs it with only fds 0-2, restores detached, makes the
// test process the reaper of the restored roots, and finds what an attempt
// left alive.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/test/procscan"
)

// bin is the crest binary of this test process, built once and kept in a
// memfd: nothing of it stays on disk, and no ETXTBSY from a file still open
// for writing.
var bin struct {
	once sync.Once
	file *os.File
	err  error
}

// Binary builds ./cmd/crest and returns a path to execute it by. It also
// marks every fd of the test process above 2 close-on-exec, those it
// inherited included, so that crest and the trees it restores start with
// fds 0-2 only, as the fixtures did.
func Binary(t testing.TB) string {
	t.Helper()
	bin.once.Do(func() { bin.file, bin.err = build() })
	if bin.err != nil {
		t.Fatal(bin.err)
	}
	// The child opens the memfd through its own copy of the fd table
	// (close-on-exec closes it only once the exec has opened it).
	return fmt.Sprintf("/proc/self/fd/%d", bin.file.Fd())
}

func build() (*os.File, error) {
	tmp, err := os.MkdirTemp("", "crest-bin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "crest")
	gotool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gotool); err != nil {
		gotool = "go"
	}
	// static, as make build makes it
	cmd := exec.Command(gotool, "build", "-o", out, "github.com/crest-restore/crest/cmd/crest")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/crest: %v\n%s", err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate("crest", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("memfd_create", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:crest")
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, err
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > 2 && n != fd {
			unix.CloseOnExec(n)
		}
	}
	return f, nil // open for the rest of the test process
}

// Result is how a crest process ended.
type Result struct {
	Code           int
	Stdout, Stderr string
	Wall           time.Duration // from the start of crest until it exited
}

// Run runs the crest binary bin with args. Its output goes to files, not
// pipes: the restored tasks hold crest's fds 0-2 until their own files are
// in place, and a pipe would keep the wait going.
func Run(t testing.TB, bin string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stdout, stderr := tempFile(t), tempFile(t)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Args[0] = "crest"
	cmd.Stdout, cmd.Stderr = stdout, stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	var ee *exec.ExitError
	if cmd.ProcessState == nil || (err != nil && !errors.As(err, &ee)) {
		t.Fatalf("crest %s: %v", strings.Join(args, " "), err)
	}
	return Result{Code: cmd.ProcessState.ExitCode(), Stdout: readAll(t, stdout), Stderr: readAll(t, stderr), Wall: wall}
}

func tempFile(t testing.TB) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "out-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readAll(t testing.TB, f *os.File) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// RestoreDetached runs crest restore -D imgs -d with a pidfile and args,
// which must print nothing, and returns the restored root's host pid,
// alive.
func RestoreDetached(t testing.TB, bin, imgs string, args ...string) int {
	t.Helper()
	pidfile := filepath.Join(t.TempDir(), "pid")
	res := Run(t, bin, append([]string{"restore", "-D", imgs, "-d", "--pidfile", pidfile}, args...)...)
	if res.Code != 0 {
		t.Fatalf("crest restore -D %s -d %v: exit %d: %s", imgs, args, res.Code, res.Stderr)
	}
	if res.Stdout != "" || res.Stderr != "" {
		t.Errorf("crest restore -d printed %q and %q, want nothing", res.Stdout, res.Stderr)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	root, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || root <= 0 {
		t.Fatalf("pidfile %q: %v", b, err)
	}
	if st, err := procscan.Read(root); err != nil || st.State == 'Z' {
		t.Fatalf("restored root %d: %+v, %v", root, st, err)
	}
	return root
}

// Subreaper makes the test process the reaper of its orphans until the test
// ends: the root of a tree restored by `crest restore -d` is crest's child,
// and when crest exits it comes to us instead of to pid 1, which here reaps
// late, so the test can reap it and know it is gone. At the end, whatever
// is still our child is a leftover: the test fails, and it is killed and
// reaped.
func Subreaper(t testing.TB) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(os.NewSyscallError("prctl(PR_SET_CHILD_SUBREAPER)", err))
	}
	t.Cleanup(func() {
		unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
		kids, _ := procscan.Find(procscan.ChildOf(os.Getpid()))
		for _, k := range kids {
			t.Errorf("left behind: %v", k)
			syscall.Kill(k.PID, syscall.SIGKILL)
			syscall.Wait4(k.PID, nil, syscall.WALL, nil)
		}
	})
}

// ReapGone waits until every one of pids is gone, reaping those that
// come to this process (the subreaper) as zombies: the tasks of a killed
// tree whose parent died first. It fails the test for any still there
// after 10 s.
func ReapGone(t testing.TB, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []int
		for _, pid := range pids {
			if got, _ := syscall.Wait4(pid, nil, syscall.WNOHANG|syscall.WALL, nil); got == pid {
				continue
			}
			if procscan.Exists(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pids %v still there", left)
		}
		time.Sleep(time.Millisecond)
	}
}

// NothingLeft fails the test for every process of an attempt still there:
// running from dir, running crest's agent (from a memfd) for this
// process's restores (procscan.FindAgentsOf: not another test binary's
// restore in flight), or a child of ours. Zombies on their way to their
// reaper get a second.
func NothingLeft(t testing.TB, dir string) {
	t.Helper()
	match := procscan.Any(procscan.Under(dir), procscan.ChildOf(os.Getpid()))
	var left []procscan.Process
	for try := 0; try < 100; try++ {
		var err error
		if left, err = procscan.FindAgentsOf(os.Getpid(), match); err != nil {
			t.Fatal(err)
		}
		left = slices.DeleteFunc(left, func(p procscan.Process) bool { return p.PID == os.Getpid() })
		if len(left) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, p := range left {
		t.Errorf("left alive: %v", p)
		syscall.Kill(p.PID, syscall.SIGKILL)
	}
}
