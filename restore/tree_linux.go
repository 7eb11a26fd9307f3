package restore

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		vpid, err := innermostPID(pid)
		if err != nil {
			return found, err
		}
		found[pid] = vpid
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err != nil {
			return found, err
		}
		for _, f := range strings.Fields(string(b)) {
			c, err := strconv.Atoi(f)
			if err != nil {
				return found, fmt.Errorf("/proc/%d/task/%d/children: %q", pid, pid, f)
			}
			queue = append(queue, c)
		}
	}
	return found, nil
}

// innermostPID reads the last NSpid of /proc/PID/status.
func innermostPID(pid int) (int, error) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
			fs := strings.Fields(rest)
			if len(fs) == 0 {
				break
			}
			return strconv.Atoi(fs[len(fs)-1])
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no NSpid", pid)
}
