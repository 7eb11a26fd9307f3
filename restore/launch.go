package restore

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/crest-restore/crest/restore/agent"
)

// launch runs the agent from a memfd with the plan on fd 3, the shared
// area on fd 4 and the engine's pidfd on fd 5, and learns the root's pid
// from it.
func (r *Restore) launch(planBytes []byte) error {
	fail := func(err error) error { return &StageError{Stage: StageRootTask, Step: "launch", Err: err} }
	bin, err := memfdFile("crest-agent", agent.Binary)
	if err != nil {
		return fail(err)
	}
	defer bin.Close()
	planFile, err := memfdFile("crest-plan", planBytes)
	if err != nil {
		return fail(err)
	}
	defer planFile.Close()
	// The tasks take the engine's files through this pidfd.
	selfPidfd, err := pidfdOpen(os.Getpid())
	if err != nil {
		return fail(err)
	}
	pidfdFile := os.NewFile(uintptr(selfPidfd), "pidfd:crest")
	defer pidfdFile.Close()

	// The launcher's stderr is a file, not a pipe: os/exec would wait for
	// a pipe to close, and the tasks inherit fds 0-2 until their files
	// are restored.
	stderr, err := memfdCreate("crest-agent-stderr", mfdCloexec)
	if err != nil {
		return fail(err)
	}
	defer stderr.Close()
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
	if err := cmd.Run(); err != nil {
		if r.shared.stage() == StageFail {
			return r.failure()
		}
		msg, _ := io.ReadAll(io.NewSectionReader(stderr, 0, 4096))
		return fail(fmt.Errorf("%w %s", err, strings.TrimSpace(string(msg))))
	}
	r.rootPID = r.shared.rootHostPID()
	if r.rootPID <= 0 {
		return fail(fmt.Errorf("the launcher exited without a root pid"))
	}
	r.hostPIDs[r.plan.Root().PID] = r.rootPID
	r.rootPidfd, err = pidfdOpen(r.rootPID)
	if err != nil {
		return fail(fmt.Errorf("root %d: %w", r.rootPID, err))
	}
	r.log.Debug("launched", "root", r.rootPID)
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
