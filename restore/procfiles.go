package restore

import (
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"golang.org/x/sys/unix"
)

// Files of the tree's own /proc/PID: a task holding /proc/self/status
// open (which the kernel names /proc/PID/status), its child's
// /proc/PID/stat, a directory fd on /proc/self/fd. The image names such a
// file by its path as the task saw it, through the proc it opened it on.
// CRIU 4.2 writes that path as it is (criu/files-reg.c: a pid directory
// gone at the dump becomes a dead-process remap, refused here as
// planRemap says) and opens it, as every file, in the task's context
// once every task exists (prepare_fds, after FORKING), through the root
// of the restored mount namespace: the restored tree's proc then shows
// the restored task under that pid.
//
// crest opens the tree's files in the engine before the root is born
// (prepareFiles), when no task is there yet: such a file would be missing
// (ENOENT), or be another process's. So a file of a task's /proc/PID keeps
// an fd number with a placeholder (as the files of a mount namespace do,
// mntns_files.go), and the engine opens it once FORKING is over, when every
// task exists and none has taken its files yet (openProcFiles), through the
// proc that shows the tree's pids:
//
//   - with a mount namespace of its own, the tree's proc, made there for
//     its pid namespace (mntns_mount.go): the path under the root task's
//     /proc/PID/root;
//   - without one, crest's /proc, whose pids are the tree's only when the
//     tree is restored into crest's pid namespace (with the pids of its
//     images): the path as it is.
//
// Refused at planning, as crest dump refuses them: a file of crest's proc
// when the tree has a pid namespace of its own and no mount namespace
// (its pid is the dumping host's, which names no task of the restored
// tree), a file of a pid the tree's pid namespace does not hold, or of a
// thread that is not its task's leader (threads are made after the files
// are in place), and a mapping of such a file.

// ProcFile says which task a file in /proc/PID is of.
type ProcFile struct {
	Task *Task
}

// procPID returns the pid of the /proc/PID directory the regular file f
// is in, and the path under it, when f is on a proc: the tree's (a proc
// mount of its mount namespace) or, without one, crest's /proc, where
// CRIU too takes the first component after /proc for a pid.
func (p *Plan) procPID(f *File) (pid int, rest string, ok bool) {
	rel, found := strings.CutPrefix(f.Path, "/proc")
	if p.Mnt != nil {
		m := p.Mnt.Files[f.ID]
		if m == nil || m.Code != mnt.Fstype_PROC {
			return 0, "", false
		}
		under, inside := strings.CutPrefix(f.Path, m.Mountpoint)
		if m.Mountpoint == "/" {
			under, inside = f.Path, true
		}
		if !inside || (under != "" && !strings.HasPrefix(under, "/")) {
			return 0, "", false
		}
		rel, found = path.Join(m.Root, under), true
	}
	if !found || (rel != "" && !strings.HasPrefix(rel, "/")) {
		return 0, "", false
	}
	first, rest, _ := strings.Cut(strings.TrimPrefix(rel, "/"), "/")
	n, err := strconv.Atoi(first)
	if err != nil || n <= 0 || strconv.Itoa(n) != first {
		return 0, "", false
	}
	return n, rest, true
}

// planProcFiles finds the files of the tree's own /proc/PID and the task
// each is of, or refuses them.
func (p *Plan) planProcFiles() error {
	byTID := map[int]*Task{}
	for _, t := range p.Tasks {
		for _, th := range t.Threads {
			byTID[th.TID] = t
		}
	}
	type use struct {
		t    *Task
		what string
	}
	users := map[*File]use{}
	var files []*File
	add := func(t *Task, f *File, what string) {
		if f == nil || f.Kind != FileRegular || f.Remap != nil {
			return
		}
		if _, ok := users[f]; !ok {
			users[f] = use{t, what}
			files = append(files, f)
		}
	}
	for _, t := range p.Tasks {
		for _, fd := range t.FDs {
			add(t, fd.File, fmt.Sprintf("fd %d", fd.FD))
		}
		add(t, t.FS.CwdFile, "cwd")
		add(t, t.FS.RootFile, "root")
	}
	sort.Slice(files, func(i, j int) bool { return files[i].ID < files[j].ID })
	for _, f := range files {
		pid, rest, ok := p.procPID(f)
		if !ok {
			continue
		}
		u := users[f]
		bad := func(why string) error {
			return &PlanError{PID: u.t.PID, File: "files.img", Msg: fmt.Sprintf("%s: file %d (%s): %s", u.what, f.ID, f.Path, why)}
		}
		if p.Mnt == nil && p.NewPIDNS {
			return bad(fmt.Sprintf("in crest's /proc, but the tree has a pid namespace of its own and no mount namespace: "+
				"pid %d is one of the dumping host's, which names no task of the restored tree (a proc of the tree's pid namespace is not supported)", pid))
		}
		t := byTID[pid]
		if t != nil && t.PID != pid {
			return bad(fmt.Sprintf("a file of thread %d of task %d: threads are made after the files are in place, so it can not be opened", pid, t.PID))
		}
		if sub, ok := strings.CutPrefix(rest, "task/"); ok && t != nil {
			tid, _, _ := strings.Cut(sub, "/")
			if n, err := strconv.Atoi(tid); err == nil && n != t.PID {
				return bad(fmt.Sprintf("a file of thread %s of task %d: threads are made after the files are in place, so it can not be opened", tid, t.PID))
			}
		}
		switch {
		case t != nil && t.Kind == TaskHelper:
			return bad(fmt.Sprintf("a file of process %d, which was gone at the dump (a helper stands in for it)", pid))
		case t != nil:
			f.Proc = &ProcFile{Task: t}
		case p.NewPIDNS:
			return bad(fmt.Sprintf("no process %d in the tree's pid namespace", pid))
		}
		// else a process outside the tree, in crest's pid namespace:
		// opened as it is, as CRIU does
	}
	for _, t := range p.Tasks {
		for _, v := range t.Mem.VMAs {
			if v.File != nil && v.File.Proc != nil {
				return &PlanError{PID: t.PID, File: fmt.Sprintf("mm-%d.img", t.PID),
					Msg: fmt.Sprintf("the mapping at %#x of file %d (%s), in /proc of task %d: not supported", v.Start, v.File.ID, v.File.Path, v.File.Proc.Task.PID)}
			}
		}
	}
	return nil
}

// procFile is a file of a task's /proc/PID that the engine opens after
// FORKING onto the placeholder under key.
type procFile struct {
	key   string
	f     *File
	flags int
}

// reserveProc returns the placeholder of f, a file of a task's /proc/PID.
func (pr *prepared) reserveProc(f *File, key string, flags int) (int, error) {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/dev/null", Err: err}
	}
	pr.procs = append(pr.procs, procFile{key: key, f: f, flags: flags})
	return fd, nil
}

// openProcFiles opens the files of the tasks' /proc/PID, now that every
// task exists and none has taken its files (FORKING is over, RESTORE not
// begun), and puts each onto its placeholder: through the tree's proc in
// its mount namespace (the root's /proc/PID/root), or crest's, where the
// tree has the pids of its images.
func (r *Restore) openProcFiles() error {
	pr := r.files
	if pr == nil || len(pr.procs) == 0 {
		return nil
	}
	begin := boottime()
	for _, pf := range pr.procs {
		f := pf.f
		where := f.Path
		if r.plan.Mnt != nil {
			where = fmt.Sprintf("/proc/%d/root%s", r.rootPID, f.Path)
		}
		fd, err := openRegularPath(f, where, pf.flags)
		if err != nil {
			return fmt.Errorf("%s: file %d (%s, in /proc of task %d): %w", r.plan.holder(f), f.ID, f.Path, f.Proc.Task.PID, err)
		}
		var sf unix.Statfs_t
		if err := unix.Fstatfs(fd, &sf); err != nil || sf.Type != unix.PROC_SUPER_MAGIC {
			unix.Close(fd)
			if err == nil {
				err = fmt.Errorf("on a file system of type %#x, not proc", sf.Type)
			}
			return fmt.Errorf("%s: file %d (%s) opened at %s: %w", r.plan.holder(f), f.ID, f.Path, where, err)
		}
		err = unix.Dup3(fd, pr.fds[pr.index[pf.key]], unix.O_CLOEXEC)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("file %d (%s): %w", f.ID, f.Path, os.NewSyscallError("dup3", err))
		}
	}
	r.log.Debug("proc files", "opened", len(pr.procs), "ms", float64(boottime()-begin)/1e6)
	return nil
}
