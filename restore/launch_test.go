package restore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/restore/agent"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/procscan"
)

// parkedEngineEnv makes TestLauncherGoneWithEngine play the engine: a
// restore of counter whose engine stops while its launcher is parked.
const parkedEngineEnv = "CREST_TEST_PARKED_ENGINE"

// parkedLine starts the line the engine prints once its launcher is
// parked: "crest-parked-launcher PID SHARED-FD".
const parkedLine = "crest-parked-launcher"

// engineExitCode is the status of an engine that exits on its own while
// its launcher is parked.
const engineExitCode = 3

// TestLauncherGoneWithEngine restores counter in a child process, the
// engine, which stops in testBeforeGo with the launcher parked in
// wait_for_go (ready, not let go). While the engine lives, the launcher
// must stay parked: alive for 2 s, more than one of its 1 s futex timeouts
// and pidfd polls. Then the engine dies, by exiting or by SIGKILL, and the
// launcher must follow it within 5 s, exiting through wait_for_go's
// launch_fail(-ESRCH), without having forked the root and without leaving
// any process behind.
//
// The fault case shows that the check fires: the launcher is stopped
// (SIGSTOP, which no mask blocks) before its engine exits, so it outlives
// the engine as one that ignored the engine's death would; the same
// check must report it. Continued, it must then follow its engine.
func TestLauncherGoneWithEngine(t *testing.T) {
	if os.Getenv(parkedEngineEnv) != "" {
		runParkedEngine(t)
		return
	}
	needRoot(t)
	// Installed here, under the fixture lock that this process holds
	// until it ends: the engine, our child, must not take the lock
	// itself (a second flock would wait for us forever).
	installFixture(t, "counter")
	// As the subreaper we get the launcher when its engine dies, and with
	// it anything else of the attempt that outlives the engine: a root
	// that the launcher forked (CLONE_PARENT makes it the child of the
	// launcher's parent, the engine or, once the engine is dead, us) or
	// any descendant of one. So "nothing left" is "no new child of ours",
	// zombies included, which /proc shows without racing any exit; and
	// we reap the launcher ourselves instead of waiting for pid 1, which
	// reaps late here.
	cli.Subreaper(t)

	exits := func(e *parkedEngine) error { return e.stdin.Close() }
	exitedOK := func(ws syscall.WaitStatus) bool { return ws.Exited() && ws.ExitStatus() == engineExitCode }
	tests := []struct {
		name string
		// end makes the engine die, want checks that it died so.
		end  func(e *parkedEngine) error
		want func(ws syscall.WaitStatus) bool
		// frozen: the fault, the launcher is stopped while the engine
		// dies and continued once the check has reported it.
		frozen bool
	}{
		{name: "engine exits", end: exits, want: exitedOK},
		{name: "engine killed", end: func(e *parkedEngine) error { return e.cmd.Process.Signal(syscall.SIGKILL) },
			want: func(ws syscall.WaitStatus) bool { return ws.Signaled() && ws.Signal() == syscall.SIGKILL }},
		{name: "fault: launcher frozen", end: exits, want: exitedOK, frozen: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := childrenOfOurs(t)
			e := startParkedEngine(t)
			engine := e.cmd.Process.Pid

			// Parked: ready, not let go, nothing forked, nothing failed.
			te := readTaskEntries(t, e.shared)
			if te.Launch != agent.LaunchReady || te.RootHostPID != 0 || te.Fail.State != 0 {
				t.Fatalf("before the engine ends: launch %d, root_host_pid %d, fail %+v; want the launcher parked (launch %d) with nothing forked or failed",
					te.Launch, te.RootHostPID, te.Fail, agent.LaunchReady)
			}
			if st, err := procscan.Read(e.launcher); err != nil || st.PPID != engine {
				t.Fatalf("launcher %d: %v (%v), want a child of the engine %d", e.launcher, st, err, engine)
			}
			// With its engine alive the launcher stays.
			if pidfdReadable(t, e.launcherPidfd, 2*time.Second) {
				t.Fatalf("launcher %d exited while its engine %d was alive", e.launcher, engine)
			}

			if tt.frozen {
				e.freezeLauncher(t)
			}
			if err := tt.end(e); err != nil {
				t.Fatal(err)
			}
			ws := e.wait(t)
			if !tt.want(ws) {
				t.Fatalf("engine %d ended with %v (status %#x), not as the test made it end:\n%s", engine, ws, uint32(ws), e.stderr(t))
			}

			// The launcher follows its engine.
			err := e.followsEngine(t)
			if tt.frozen {
				if err == nil {
					t.Fatalf("launcher %d was stopped when its engine %d died, and the check saw it gone", e.launcher, engine)
				}
				t.Logf("the check fired: %v", err)
				if err := pidfdSignal(e.launcherPidfd, syscall.SIGCONT); err != nil {
					t.Fatal(err)
				}
				err = e.followsEngine(t)
			}
			if err != nil {
				t.Fatal(err)
			}
			how, err := exited(e.launcherPidfd)
			if err != nil {
				t.Fatalf("launcher %d: %v: it was not reparented to us, its subreaper", e.launcher, err)
			}
			if how != "exit status 1" {
				t.Errorf("launcher %d: %s, want exit status 1 (launch_fail)", e.launcher, how)
			}
			e.reapLauncher(t)

			// How it left: through wait_for_go's launch_fail(-ESRCH),
			// the only launch failure after the launcher got ready and
			// before its clone3 of the root; root_host_pid, which it
			// stores right after that clone3 (the pid, or the error),
			// is still 0; and the engine never let it go.
			te = readTaskEntries(t, e.shared)
			want := agent.Failure{State: 2, PID: 0, Stage: agent.StageRootTask, Step: agent.StepLaunch, Err: -int32(syscall.ESRCH)}
			if te.Fail != want {
				t.Errorf("failure record %+v, want %+v (the launcher's launch step, ESRCH)", te.Fail, want)
			}
			if te.RootHostPID != 0 {
				t.Errorf("root_host_pid %d: the launcher cloned the root after its engine died", te.RootHostPID)
			}
			if te.Launch != agent.LaunchReady {
				t.Errorf("launch %d, want %d: the launcher was let go", te.Launch, agent.LaunchReady)
			}

			// Nothing of the attempt is left (see cli.Subreaper above).
			for _, k := range childrenOfOurs(t) {
				if !slices.Contains(before, k) {
					st, _ := procscan.Read(k)
					t.Errorf("left behind: %v", st)
				}
			}
		})
	}
}

// parkedEngine is the child engine of TestLauncherGoneWithEngine, stopped
// with its launcher parked.
type parkedEngine struct {
	cmd           *exec.Cmd
	stdin         io.WriteCloser // closing it makes the engine exit
	stderrFile    *os.File
	waited        bool
	launcher      int
	launcherPidfd int
	reaped        bool
	shared        *os.File // the engine's shared area, opened again
}

// startParkedEngine runs the test binary as the engine and waits until it
// reports its launcher parked. At the end of the test it kills whatever of
// it still runs, the engine first (the launcher then exits on its own),
// and reaps it.
func startParkedEngine(t *testing.T) *parkedEngine {
	t.Helper()
	stderr, err := os.Create(filepath.Join(t.TempDir(), "engine.stderr"))
	if err != nil {
		t.Fatal(err)
	}
	e := &parkedEngine{launcherPidfd: -1, stderrFile: stderr}
	// Its own timeout ends an engine that hangs, whatever happens to us.
	e.cmd = exec.Command(os.Args[0], "-test.run=^TestLauncherGoneWithEngine$", "-test.count=1", "-test.timeout=2m")
	e.cmd.Env = append(os.Environ(), parkedEngineEnv+"=1")
	// A file, not a pipe: Wait must not wait for whoever holds it.
	e.cmd.Stderr = stderr
	if e.stdin, err = e.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := e.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.stop(t) })

	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), parkedLine+" ") {
				lines <- sc.Text()
				return
			}
		}
		close(lines)
	}()
	var line string
	select {
	case l, ok := <-lines:
		if !ok {
			e.wait(t)
			t.Fatalf("the engine ended before its launcher was parked: %v\n%s", e.cmd.ProcessState, e.stderr(t))
		}
		line = l
	case <-time.After(30 * time.Second):
		t.Fatalf("the engine did not park its launcher in 30 s:\n%s", e.stderr(t))
	}
	var fd int
	if _, err := fmt.Sscanf(line, parkedLine+" %d %d", &e.launcher, &fd); err != nil {
		t.Fatalf("engine said %q: %v", line, err)
	}
	// The engine is blocked in testBeforeGo: the launcher, its child, is
	// not reaped, so its pid is still its own.
	if e.launcherPidfd, err = unix.PidfdOpen(e.launcher, 0); err != nil {
		t.Fatalf("launcher %d: %v", e.launcher, os.NewSyscallError("pidfd_open", err))
	}
	// The shared area outlives the engine and the launcher this way, for
	// the post-mortem.
	if e.shared, err = os.Open(fmt.Sprintf("/proc/%d/fd/%d", e.cmd.Process.Pid, fd)); err != nil {
		t.Fatal(err)
	}
	return e
}

// wait reaps the engine and returns its status.
func (e *parkedEngine) wait(t *testing.T) syscall.WaitStatus {
	t.Helper()
	if !e.waited {
		e.waited = true
		var ee *exec.ExitError
		if err := e.cmd.Wait(); err != nil && !errors.As(err, &ee) {
			t.Errorf("engine %d: %v", e.cmd.Process.Pid, err)
		}
	}
	return e.cmd.ProcessState.Sys().(syscall.WaitStatus)
}

// followsEngine waits up to 5 s, from its engine's death, for the launcher
// to exit; it reports the launcher as it runs when it does not.
func (e *parkedEngine) followsEngine(t *testing.T) error {
	t.Helper()
	if pidfdReadable(t, e.launcherPidfd, 5*time.Second) {
		return nil
	}
	st, err := procscan.Read(e.launcher)
	return fmt.Errorf("launcher %d still runs 5 s after its engine %d died: %v (%v)", e.launcher, e.cmd.Process.Pid, st, err)
}

// freezeLauncher stops the launcher and waits until it is stopped: then
// it can not see its engine die.
func (e *parkedEngine) freezeLauncher(t *testing.T) {
	t.Helper()
	if err := pidfdSignal(e.launcherPidfd, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for try := 0; ; try++ {
		st, err := procscan.Read(e.launcher)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == 'T' {
			return
		}
		if try == 500 {
			t.Fatalf("launcher %d not stopped 5 s after SIGSTOP: %v", e.launcher, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// reapLauncher reaps the launcher, our child since its engine died.
func (e *parkedEngine) reapLauncher(t *testing.T) {
	t.Helper()
	for !e.reaped {
		_, err := syscall.Wait4(e.launcher, nil, syscall.WALL, nil)
		if err == syscall.EINTR {
			continue
		}
		e.reaped = true
		if err != nil {
			t.Errorf("launcher %d: %v", e.launcher, os.NewSyscallError("wait4", err))
		}
	}
}

// stop ends what is left of the engine and its launcher, whatever the
// test's outcome: only these two, each by its own pid or pidfd.
func (e *parkedEngine) stop(t *testing.T) {
	if !e.waited {
		e.cmd.Process.Kill()
		e.wait(t)
	}
	if e.launcherPidfd >= 0 {
		if !e.reaped {
			// It exits within a second of its engine; if not, that was
			// reported, and it is killed.
			if !pidfdReadable(t, e.launcherPidfd, 5*time.Second) {
				pidfdSignal(e.launcherPidfd, syscall.SIGKILL)
			}
			e.reapLauncher(t)
		}
		syscall.Close(e.launcherPidfd)
	}
	if e.shared != nil {
		e.shared.Close()
	}
	e.stderrFile.Close()
}

func (e *parkedEngine) stderr(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(e.stderrFile.Name())
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// runParkedEngine is the engine's side: restore counter (installed by the
// parent) and, once the launcher is parked, report it and the shared area's
// fd, then wait until stdin ends (the parent closes it, or dies) and exit
// with engineExitCode, never letting the launcher go. It kills nothing.
func runParkedEngine(t *testing.T) {
	p := loadPlan(t, "counter")
	testBeforeGo = func(launcher int) {
		fd, err := sharedAreaFD()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Printf("%s %d %d\n", parkedLine, launcher, fd)
		io.Copy(io.Discard, os.Stdin)
		os.Exit(engineExitCode)
	}
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// Not reached unless launch lost its hook: no tree left behind then.
	r.Abort()
	fmt.Fprintln(os.Stderr, "the restore ran to the end without calling testBeforeGo")
	os.Exit(2)
}

// sharedAreaFD finds this process's fd of the shared area memfd.
func sharedAreaFD() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1, err
	}
	var fds []int
	for _, ent := range ents {
		link, _ := os.Readlink("/proc/self/fd/" + ent.Name())
		if strings.HasPrefix(link, "/memfd:crest-task-entries") {
			var fd int
			fmt.Sscan(ent.Name(), &fd)
			fds = append(fds, fd)
		}
	}
	if len(fds) != 1 {
		return -1, fmt.Errorf("the engine has %d shared area memfds (fds %v), want 1", len(fds), fds)
	}
	return fds[0], nil
}

// readTaskEntries reads task_entries from the start of the shared area.
func readTaskEntries(t *testing.T, f *os.File) agent.TaskEntries {
	t.Helper()
	var te agent.TaskEntries
	if err := binary.Read(io.NewSectionReader(f, 0, int64(binary.Size(te))), binary.LittleEndian, &te); err != nil {
		t.Fatalf("reading task_entries from %s: %v", f.Name(), err)
	}
	return te
}

// pidfdReadable reports whether the process of pidfd exits (its pidfd turns
// readable) within d. It works for any process, not only our children.
func pidfdReadable(t *testing.T, pidfd int, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, int(left.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatal(os.NewSyscallError("poll pidfd", err))
		}
		if n > 0 || left == 0 {
			return n > 0
		}
	}
}

// childrenOfOurs lists our children, zombies included.
func childrenOfOurs(t *testing.T) []int {
	t.Helper()
	kids, err := procscan.Find(procscan.ChildOf(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, k := range kids {
		pids = append(pids, k.PID)
	}
	return pids
}

// TestLauncherKilledAfterGo: the engine does not wait for the launcher to
// exit once it let it go, but learns the root's pid from task_entries. A
// launcher that dies before it forked the root (killed right before the
// go) must still be noticed: the restore fails in ROOT_TASK naming the
// launch and how the launcher ended, and no process is left.
func TestLauncherKilledAfterGo(t *testing.T) {
	needRoot(t)
	installFixture(t, "counter")
	p := loadPlan(t, "counter")
	testBeforeGo = func(launcher int) {
		syscall.Kill(launcher, syscall.SIGKILL)
		// our child: a zombie once the kill took, until it is reaped
		for i := 0; i < 1000; i++ {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", launcher)); err != nil || strings.Contains(string(b), ") Z ") {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	defer func() { testBeforeGo = nil }()
	r, err := Start(context.Background(), p, Options{StageTimeout: 5 * time.Second})
	if err == nil {
		r.Abort()
		t.Fatal("the restore succeeded")
	}
	var se *StageError
	if !errors.As(err, &se) || se.Stage != StageRootTask || se.Step != "launch" ||
		!strings.Contains(err.Error(), "the launcher ended (killed by signal 9") {
		t.Errorf("error %v, want ROOT_TASK, launch, the launcher killed before it forked the root", err)
	}
	if kids, err := procscan.Find(procscan.ChildOf(os.Getpid())); err != nil || len(kids) != 0 {
		t.Errorf("children left: %v (%v)", kids, err)
	}
}

// parkedRootEnv makes TestLauncherGoneAfterRoot play the engine: it
// restores counter up to PREPARE_NAMESPACES (the root forked, the launcher
// lingering until FORKING), prints "crest-parked-root LAUNCHER ROOT" and
// waits.
const parkedRootEnv = "CREST_TEST_PARKED_ROOT"

// TestLauncherGoneAfterRoot: the engine dies once the launcher forked the
// root, while the launcher lingers (it is ended in FORKING). The root, a
// child of the engine (CLONE_PARENT), dies with it (PR_SET_PDEATHSIG), and
// the launcher follows its engine out of linger (exit status 0): nothing of
// the attempt is left.
func TestLauncherGoneAfterRoot(t *testing.T) {
	if os.Getenv(parkedRootEnv) != "" {
		p := loadPlan(t, "counter")
		var launcher int
		testBeforeGo = func(l int) { launcher = l }
		// (Until 0, ROOT_TASK, means COMPLETE)
		r, err := Start(context.Background(), p, Options{Until: StagePrepareNamespaces})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Printf("crest-parked-root %d %d\n", launcher, r.RootPID())
		io.Copy(io.Discard, os.Stdin)
		os.Exit(engineExitCode)
	}
	needRoot(t)
	installFixture(t, "counter") // under our lock: the engine must not take it
	cli.Subreaper(t)             // the launcher and the root come to us
	before := childrenOfOurs(t)

	cmd := exec.Command(os.Args[0], "-test.run=^TestLauncherGoneAfterRoot$", "-test.count=1", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), parkedRootEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// On any way out the engine goes too (a second kill and wait, after
	// the test killed it, do nothing).
	engineGone := false
	killEngine := func() {
		if !engineGone {
			cmd.Process.Kill()
			cmd.Wait()
			engineGone = true
		}
	}
	defer killEngine()
	var launcher, root int
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "crest-parked-root %d %d", &launcher, &root); err == nil {
			break
		}
	}
	if launcher <= 0 || root <= 0 {
		killEngine()
		t.Fatalf("the engine did not park at PREPARE_NAMESPACES: %s", stderr.String())
	}
	procs := []struct {
		name  string
		pid   int
		want  string // how it ends once the engine is killed
		pidfd int
	}{{"root", root, "killed by signal 9 (killed)", -1}, {"launcher", launcher, "exit status 0", -1}}
	for i := range procs {
		p := &procs[i]
		fd, err := unix.PidfdOpen(p.pid, 0)
		if err != nil {
			t.Fatalf("%s %d: %v", p.name, p.pid, os.NewSyscallError("pidfd_open", err))
		}
		defer unix.Close(fd)
		p.pidfd = fd
		if pidfdReadable(t, fd, 0) {
			t.Fatalf("%s %d ended while the engine lived", p.name, p.pid)
		}
	}

	killed := time.Now()
	killEngine()
	for _, p := range procs {
		if !pidfdReadable(t, p.pidfd, 5*time.Second) {
			st, _ := procscan.Read(p.pid)
			t.Fatalf("%s %d still runs 5 s after its engine died: %v", p.name, p.pid, st)
		}
		t.Logf("%s ended %v after the engine's SIGKILL", p.name, time.Since(killed).Round(time.Microsecond))
		if how, err := exited(p.pidfd); err != nil || how != p.want {
			t.Errorf("%s: %q (%v), want %q", p.name, how, err, p.want)
		}
		if _, err := syscall.Wait4(p.pid, nil, syscall.WALL, nil); err != nil {
			t.Errorf("reaping %s %d: %v", p.name, p.pid, err)
		}
	}
	for _, k := range childrenOfOurs(t) {
		if !slices.Contains(before, k) {
			st, _ := procscan.Read(k)
			t.Errorf("left behind: %v", st)
		}
	}
}
