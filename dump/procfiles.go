package dump

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Files of a /proc/PID directory (a task holding /proc/self/status, its
// child's /proc/PID/stat, a directory fd on /proc/self/fd) are dumped as
// CRIU 4.2 dumps them: a regular file named by its path as the task sees
// it, /proc/PID/... with PID as the proc it was opened on numbers the
// process. CRIU's restore opens it once every task exists, through the
// restored tree's proc; so does crest's (restore/procfiles.go).
//
// That is right only when the proc is one of the tree's own pid
// namespace, whose pids the restore gives back. Refused here, as crest's
// planning refuses them, when a restore could only open the wrong process
// or none: a proc of another pid namespace than the tree's, when the tree
// has a pid namespace of its own (the host's /proc in a tree that did not
// mount its own: its pids change at restore); a process gone since the
// file was opened (CRIU writes a dead-process remap, which crest does not
// restore); a thread that is not its task's leader (threads are made after
// the files are in place).

// procFileRefusal says why the regular file at link (an fd of t, name as
// the task sees it) can not be dumped when it lies in a /proc/PID
// directory. As CRIU (check_path_remap) it takes the component after the
// first for the pid: /proc/PID/....
func procFileRefusal(t *task, link, name string) (string, error) {
	var sf unix.Statfs_t
	if err := unix.Statfs(link, &sf); err != nil {
		return "", &os.PathError{Op: "statfs", Path: link, Err: err}
	}
	if sf.Type != unix.PROC_SUPER_MAGIC {
		return "", nil
	}
	base, rel, _ := strings.Cut(strings.TrimPrefix(strings.TrimSuffix(name, " (deleted)"), "/"), "/")
	first, rest, _ := strings.Cut(rel, "/")
	pid, err := strconv.Atoi(first)
	if err != nil || pid <= 0 {
		return "", nil // not in a pid directory (/proc/meminfo, /proc/sys/...)
	}
	root := t
	for root.parent != nil {
		root = root.parent
	}
	treeNS, err := nsInode(root.pid, "pid")
	if err != nil {
		return "", err
	}
	var own unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/pid", &own); err != nil {
		return "", &os.PathError{Op: "stat", Path: "/proc/thread-self/ns/pid", Err: err}
	}
	ownPidNS := treeNS != own.Ino
	// Which process the directory is, through the task's root: its pids
	// from the proc's pid namespace down (NSpid), and its start time.
	dir := procPath(t.pid, "root") + "/" + base + "/" + first
	nspid, start, err := procIdentity(dir)
	if errors.Is(err, unix.ENOENT) {
		return fmt.Sprintf("a file of process %d, which is gone (CRIU's dead process remaps are not supported)", pid), nil
	}
	if err != nil {
		return "", err
	}
	leader, thread := findTID(root, uint32(nspid[len(nspid)-1]))
	if leader != nil {
		host := procPath(leader.pid)
		if thread != nil {
			for _, th := range leader.threads {
				if int(th.nsTid) == *thread {
					host = procPath(leader.pid, "task", strconv.Itoa(th.tid))
				}
			}
		}
		if _, hostStart, err := procIdentity(strings.TrimSuffix(host, "/")); err != nil {
			return "", err
		} else if hostStart != start {
			leader, thread = nil, nil // another process with the same pid in another namespace
		}
	}
	if leader == nil {
		if ownPidNS {
			return fmt.Sprintf("a file of process %d, which is not in the dumped tree, in a tree with a pid namespace of its own "+
				"(a restore opens files of /proc/PID only in the tree's proc)", pid), nil
		}
		return "", nil // a process outside the tree: opened as it is, as CRIU does
	}
	if len(nspid) > 1 {
		return fmt.Sprintf("a file of task %d (%d in the proc it was opened on) in a proc of another pid namespace than the tree's: "+
			"its pids there change at restore (a proc of the tree's pid namespace is needed, as a container has)", leader.nsPid, pid), nil
	}
	if sub, ok := strings.CutPrefix(rest, "task/"); ok && thread == nil {
		tid, _, _ := strings.Cut(sub, "/")
		if n, err := strconv.Atoi(tid); err == nil && n != int(leader.nsPid) {
			thread = &n
		}
	}
	if thread != nil {
		return fmt.Sprintf("a file of thread %d of task %d: a restore makes threads after the files are in place, so it could not open it",
			*thread, leader.nsPid), nil
	}
	return "", nil
}

// procIdentity reads the NSpid line of dir/status and the start time of
// dir/stat, a /proc/PID (or /proc/PID/task/TID) directory.
func procIdentity(dir string) (nspid []int, start string, err error) {
	b, err := os.ReadFile(dir + "/status")
	if err != nil {
		return nil, "", err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			for _, f := range strings.Fields(v) {
				n, err := strconv.Atoi(f)
				if err != nil {
					return nil, "", fmt.Errorf("%s/status: NSpid %q", dir, v)
				}
				nspid = append(nspid, n)
			}
		}
	}
	if len(nspid) == 0 {
		return nil, "", fmt.Errorf("%s/status: no NSpid", dir)
	}
	b, err = os.ReadFile(dir + "/stat")
	if err != nil {
		return nil, "", err
	}
	i := strings.LastIndexByte(string(b), ')')
	fields := strings.Fields(string(b[i+1:]))
	if i < 0 || len(fields) < 20 {
		return nil, "", fmt.Errorf("%s/stat: %q", dir, b)
	}
	return nspid, fields[19], nil // field 22, starttime
}

// findTID returns the task of the tree under root that has a thread tid
// (in the tree's pid namespace), and tid when that thread is not its
// leader.
func findTID(root *task, tid uint32) (*task, *int) {
	if root.nsPid == tid {
		return root, nil
	}
	for _, th := range root.threads {
		if th.nsTid == tid {
			n := int(tid)
			return root, &n
		}
	}
	for _, c := range root.children {
		if t, th := findTID(c, tid); t != nil {
			return t, th
		}
	}
	return nil, nil
}
