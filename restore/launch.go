package restore

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/crest-restore/crest/restore/agent"
)

// launch runs the agent from a memfd with the plan on fd 3, the shared
// area on fd 4 and the engine's pidfd on fd 5. The launcher gets ready and
// waits (task_entries.launch); once it is, launch switches to ROOT_TASK
// and lets it fork the root, as CRIU forks the root right after that
// switch: the exec of the launcher is crest's start-up, outside the
// stages. It returns without waiting for the root: runStages learns its
// pid when it arrives at ROOT_TASK (learnRoot).
func (r *Restore) launch(planBytes []byte) error {
	fail := func(err error) error { return &StageError{Stage: StageRootTask, Step: "launch", Err: err} }
	// The engine's copies of the launcher's files are closed after the
	// stages (closeLaunched), not between them; at once on failure.
	launched := false
	keep := func(f *os.File) { r.launched = append(r.launched, f) }
	defer func() {
		if !launched {
			r.closeLaunched()
		}
	}()
	bin, err := memfdFile("crest-agent", agent.Binary)
	if err != nil {
		return fail(err)
	}
	keep(bin)
	planFile, err := memfdFile("crest-plan", planBytes)
	if err != nil {
		return fail(err)
	}
	keep(planFile)
	// The tasks take the engine's files through this pidfd.
	selfPidfd, err := r.filesPidfd() // userns.go
	if err != nil {
		return fail(err)
	}
	pidfdFile := os.NewFile(uintptr(selfPidfd), "pidfd:crest")
	keep(pidfdFile)

	// The launcher's stderr is a file, not a pipe: os/exec would wait for
	// a pipe to close, and the tasks inherit fds 0-2 until their files
	// are restored.
	stderr, err := memfdCreate("crest-agent-stderr", mfdCloexec)
	if err != nil {
		return fail(err)
	}
	keep(stderr)
	// Through /proc/self/fd the exec opens the memfd itself, as fexecve
	// does; the launcher's file table gets only fds 0-2 and these three.
	cmd := &exec.Cmd{
		Path:       fmt.Sprintf("/proc/self/fd/%d", bin.Fd()),
		Args:       []string{"crest-agent"},
		Env:        []string{},
		Stderr:     stderr,
		ExtraFiles: []*os.File{planFile, r.shared.file, pidfdFile},
	}
	if agent.PlanFD != 3 || agent.SharedFD != 4 || agent.EnginePidfdFD != 5 {
		panic("restore: the launcher's fds moved")
	}
	launchErr := func(err error) error {
		if r.shared.stage() == StageFail {
			return r.failure()
		}
		return fail(fmt.Errorf("%w %s", err, r.launcherSaid()))
	}
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	r.launcher, r.launcherStderr = cmd, stderr
	r.launcherPidfd, err = pidfdOpen(cmd.Process.Pid)
	if err != nil {
		r.reapLauncher()
		return fail(err)
	}
	if err := r.launcherReady(); err != nil {
		r.reapLauncher()
		return launchErr(err)
	}
	// The launcher unshared the tree's time namespace: its offsets go
	// in before the root enters it.
	if r.timeOffsets != nil {
		if err := setTimeOffsets(cmd.Process.Pid, *r.timeOffsets); err != nil {
			r.reapLauncher()
			return &StageError{Stage: StageRootTask, Step: "time namespace", Err: err}
		}
	}
	if testBeforeGo != nil {
		testBeforeGo(cmd.Process.Pid)
	}
	// ROOT_TASK is open before the root exists: it is its first stage.
	if err := r.switchTo(StageRootTask); err != nil {
		r.reapLauncher()
		return &StageError{Stage: StageRootTask, Err: err}
	}
	// The engine does not wait for the launcher to exit: it learns the
	// root's pid when the root arrives (learnRoot), and reaps the
	// launcher later (reapLauncher).
	r.shared.letGo()
	launched = true
	return nil
}

// learnRoot takes the root's host pid, which the kernel stored in
// task_entries for the launcher (CLONE_PARENT_SETTID) before the root
// ran, and opens a pidfd of it; nothing when the root is known already
// or was not forked.
func (r *Restore) learnRoot() error {
	if r.rootPidfd >= 0 {
		return nil
	}
	pid := r.shared.rootHostPID()
	if pid <= 0 {
		return nil
	}
	r.rootPID = pid
	r.hostPIDs[r.plan.Root().PID] = pid
	fd, err := pidfdOpen(pid)
	if err != nil {
		return fmt.Errorf("root %d: %w", pid, err)
	}
	r.rootPidfd = fd
	r.log.Debug("launched", "root", pid)
	return nil
}

// launcherAlive, until the root is known: nil while the launcher runs or
// once it forked the root; how it ended when it ended without.
func (r *Restore) launcherAlive(st Stage) error {
	how, err := exited(r.launcherPidfd)
	if err == nil && (how == "" || r.shared.rootHostPID() > 0) {
		return nil
	}
	if r.shared.stage() == StageFail {
		return r.failure()
	}
	if err == nil {
		err = fmt.Errorf("the launcher ended (%s) before it forked the root: %s", how, r.launcherSaid())
	}
	return &StageError{Stage: st, Step: "launch", Err: err}
}

// launcherSaid is what the launcher wrote to its stderr (the first 4 KiB).
func (r *Restore) launcherSaid() string {
	msg, _ := io.ReadAll(io.NewSectionReader(r.launcherStderr, 0, 4096))
	return strings.TrimSpace(string(msg))
}

// reapLauncher ends and reaps the launcher: once it forked the root it
// lingers for this (agent main.c), and before that it must not go on.
func (r *Restore) reapLauncher() {
	if r.launcher == nil {
		return
	}
	r.launcher.Process.Kill()
	r.launcher.Wait()
	r.launcher = nil
	if r.launcherPidfd >= 0 {
		syscall.Close(r.launcherPidfd)
		r.launcherPidfd = -1
	}
}

// closeLaunched closes the engine's copies of the files it gave the
// launcher.
func (r *Restore) closeLaunched() {
	for _, f := range r.launched {
		f.Close()
	}
	r.launched = nil
}

// testBeforeGo, nil but in tests, runs while the launcher is parked ready, before it is let go.
var testBeforeGo func(launcherPid int)

// launcherReady waits until the launcher is ready to fork the root, or
// has exited, or the stage timeout passed.
func (r *Restore) launcherReady() error {
	deadline := time.Now().Add(r.opts.StageTimeout)
	for !r.shared.launcherReady() {
		if how, err := exited(r.launcherPidfd); err != nil || how != "" {
			if err == nil {
				err = fmt.Errorf("the launcher ended before it was ready: %s", how)
			}
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the launcher was not ready after %v", r.opts.StageTimeout)
		}
		if err := futexWaitTimeout(r.shared.launchWord(), 0, int64(10*time.Millisecond)); err != nil {
			return err
		}
	}
	return nil
}

func memfdFile(name string, data []byte) (*os.File, error) {
	f, err := memfdCreate(name, mfdCloexec)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing memfd %s: %w", name, err)
	}
	return f, nil
}
