// Package procscan finds processes through /proc, for tests that must show
// what a restore left behind: nothing of a failed attempt alive, a killed
// tree really gone before its pids are used again.
package procscan

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/crest-restore/crest/internal/procfs"
)

// Process is one entry of /proc as seen at the scan. Exe and Cwd are ""
// when the kernel does not tell (kernel threads, zombies, a process that
// ended during the scan).
type Process struct {
	PID   int
	PPID  int
	State byte // R, S, D, Z ... from /proc/PID/stat
	Comm  string
	Exe   string
	Cwd   string
}

func (p Process) String() string {
	return fmt.Sprintf("pid %d (%s, state %c, ppid %d, exe %q, cwd %q)", p.PID, p.Comm, p.State, p.PPID, p.Exe, p.Cwd)
}

// All returns every process of /proc. Processes that end during the scan
// are left out.
func All() ([]Process, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := Read(pid)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, errGone) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

var errGone = errors.New("process ended during the scan")

// Read reads one process.
func Read(pid int) (Process, error) {
	p := Process{PID: pid}
	st, err := procfs.ReadStat(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, syscall.ESRCH) {
		// it ended between the open and the read
		return p, fmt.Errorf("/proc/%d/stat: %w (%w)", pid, errGone, err)
	}
	if err != nil {
		return p, err
	}
	p.Comm, p.State, p.PPID = st.Comm, st.State, int(st.Field(4))
	// Zombies and kernel threads have neither; a process that just
	// ended loses them too.
	p.Exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	p.Cwd, _ = os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return p, nil
}

// Find returns the processes for which match is true.
func Find(match func(Process) bool) ([]Process, error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	return Select(all, match), nil
}

// Select returns the processes of ps for which match is true.
func Select(ps []Process, match func(Process) bool) []Process {
	var out []Process
	for _, p := range ps {
		if match(p) {
			out = append(out, p)
		}
	}
	return out
}

// FindAgentsOf returns the processes that run crest's agent (from a
// memfd) for the restores of process self, and those that match also
// (FindOwn).
func FindAgentsOf(self int, also func(Process) bool) ([]Process, error) {
	return FindOwn(self, MemfdExe("crest"), also)
}

// FindOwn returns the processes that mine matches and that are process
// self's, and those that match also. A process is self's when its line
// of parents, past the processes mine matches above it, reaches self
// (a task of a restore in flight, a tree adopted by self as subreaper),
// or stops at pid 1: an orphan whose engine is gone, a leftover of
// somebody's. Those of another process (another test binary's restore
// of a fixture, its agents) are left alone: their line reaches their
// own engine or test instead.
func FindOwn(self int, mine, also func(Process) bool) ([]Process, error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	byPID := make(map[int]Process, len(all))
	for _, p := range all {
		byPID[p.PID] = p
	}
	agent := mine
	ours := func(p Process) bool {
		if !agent(p) {
			return false
		}
		orphan := true // until a parent that mine does not match is met
		for hops := 0; hops < len(all); hops++ {
			switch {
			case p.PPID == self:
				return true
			case p.PPID <= 1:
				return orphan
			}
			parent, ok := byPID[p.PPID]
			if !ok { // it ended during the scan
				return orphan
			}
			if !agent(parent) {
				orphan = false
			}
			p = parent
		}
		return false
	}
	return Select(all, Any(ours, also)), nil
}

// Under matches processes whose executable or working directory is dir or
// below it.
func Under(dir string) func(Process) bool {
	dir = strings.TrimRight(dir, "/")
	in := func(path string) bool {
		path = strings.TrimSuffix(path, " (deleted)")
		return path == dir || strings.HasPrefix(path, dir+"/")
	}
	return func(p Process) bool { return in(p.Exe) || in(p.Cwd) }
}

// ChildOf matches the children of pid, zombies included.
func ChildOf(pid int) func(Process) bool {
	return func(p Process) bool { return p.PPID == pid }
}

// MemfdExe matches processes running a program from a memfd whose name
// starts with prefix (crest runs its agent as "memfd:crest-agent").
func MemfdExe(prefix string) func(Process) bool {
	return func(p Process) bool { return strings.HasPrefix(p.Exe, "/memfd:"+prefix) }
}

// Any matches what any of ms matches.
func Any(ms ...func(Process) bool) func(Process) bool {
	return func(p Process) bool {
		for _, m := range ms {
			if m(p) {
				return true
			}
		}
		return false
	}
}

// Exists reports whether /proc/PID exists: the process runs or is a zombie
// not reaped yet.
func Exists(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return !errors.Is(err, os.ErrNotExist)
}

// WaitGone waits until none of pids exists any more, polling /proc; it
// returns the pids still there after timeout.
func WaitGone(timeout time.Duration, pids ...int) []int {
	deadline := time.Now().Add(timeout)
	for {
		var left []int
		for _, pid := range pids {
			if Exists(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(time.Millisecond)
	}
}
