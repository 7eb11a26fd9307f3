package restore

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// learnTree finds the host pids of all tasks once FORKING is over, from
// the root down through /proc/PID/task/PID/children, matching each
// process's innermost pid (the last NSpid) with the plan.
func (r *Restore) learnTree() error {
	found, err := walkTree(r.rootPID)
	if err != nil {
		return err
	}
	for host, vpid := range found {
		r.hostPIDs[vpid] = host
	}
	for _, t := range r.plan.Tasks {
		if r.hostPIDs[t.PID] == 0 {
			return fmt.Errorf("task %d is not in the restored tree", t.PID)
		}
	}
	return nil
}

// walkTree returns the processes of the tree under root (root included):
// host pid -> innermost pid.
func walkTree(root int) (map[int]int, error) {
	found := map[int]int{}
	queue := []int{root}
	var buf [4096]byte
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		vpid, err := innermostPID(pid, buf[:])
		if err != nil {
			return found, err
		}
		found[pid] = vpid
		path := fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)
		b, err := readProc(path, buf[:])
		if err != nil {
			return found, err
		}
		for _, f := range strings.Fields(string(b)) {
			c, err := strconv.Atoi(f)
			if err != nil {
				return found, fmt.Errorf("%s: %q", path, f)
			}
			queue = append(queue, c)
		}
	}
	return found, nil
}

// innermostPID reads the last NSpid of /proc/PID/status.
func innermostPID(pid int, buf []byte) (int, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	b, err := readProc(path, buf)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			fs := strings.Fields(rest)
			if len(fs) == 0 {
				break
			}
			return strconv.Atoi(fs[len(fs)-1])
		}
	}
	return 0, fmt.Errorf("%s: no NSpid", path)
}

// readProc reads a /proc file with plain open, read and close, into buf
// while it fits: os.ReadFile would also make the file non-blocking and
// try to register it with the poller, five more system calls, and this
// runs between the stages.
func readProc(path string, buf []byte) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	n := 0
	for {
		if n == len(buf) {
			buf = append(buf, make([]byte, len(buf)+4096)...)
		}
		m, err := syscall.Read(fd, buf[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			return buf[:n], nil
		}
		n += m
	}
}
