package restore

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/images"
)

// Owners for SIGIO (fcntl F_SETOWN, F_SETOWN_EX, F_SETSIG and O_ASYNC),
// as CRIU 4.2 keeps them in every file entry's fown_entry and restores
// them (criu/files.c restore_fown). The engine opens the files before the
// tasks exist, so it gives them their owners later, once RESTORE is over:
// every task and thread exists then and has taken its files, and the
// engine still holds its copy of each. The kernel keeps the owner as a
// struct pid, so naming it by its host pid gives the restored task its
// own pid back.

// F_SETOWN_EX owner types (include/uapi/asm-generic/fcntl.h), as
// fown_entry.pid_type keeps them.
const (
	fOwnerTID  = 0
	fOwnerPID  = 1
	fOwnerPGRP = 2
)

// maxSignal is the highest signal number (_NSIG): F_SETSIG takes 0 to it.
const maxSignal = 64

// fOwnerEx is struct f_owner_ex.
type fOwnerEx struct {
	Type int32
	PID  int32
}

// ownerOf returns the fown_entry and the open flags of whichever kind
// entry fe holds.
func ownerOf(fe *fdinfo.FileEntry) (o *fown.FownEntry, flags uint32) {
	p, flags := images.FileFown(fe)
	if p == nil {
		return nil, 0
	}
	return *p, flags
}

// ownerName is how errors name an owner: "process 7".
func ownerName(o *fown.FownEntry) string {
	switch o.GetPidType() {
	case fOwnerTID:
		return fmt.Sprintf("thread %d", o.GetPid())
	case fOwnerPID:
		return fmt.Sprintf("process %d", o.GetPid())
	case fOwnerPGRP:
		return fmt.Sprintf("process group %d", o.GetPid())
	}
	return fmt.Sprintf("%d of type %d", o.GetPid(), o.GetPidType())
}

// checkOwner refuses, at planning, an owner for SIGIO of file id (task t
// holds it) that the restore could not give back: a signal beyond the
// last, an owner of unknown type, or one that is not a thread, process or
// process group of the tree.
func (p *Plan) checkOwner(t *Task, id uint32, fe *fdinfo.FileEntry) error {
	o, flags := ownerOf(fe)
	bad := func(format string, args ...any) error {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: "+format, append([]any{id}, args...)...)}
	}
	if o.GetSignum() > maxSignal {
		return bad("signal %d for SIGIO (F_SETSIG) is not a signal", o.GetSignum())
	}
	async := flags&syscall.O_ASYNC != 0
	if o.GetPid() != 0 || o.GetSignum() != 0 || async {
		if p.sigio == nil {
			p.sigio = map[uint32]bool{}
		}
		p.sigio[id] = async
	}
	if o.GetPid() == 0 {
		return nil
	}
	if pt := o.GetPidType(); pt != fOwnerTID && pt != fOwnerPID && pt != fOwnerPGRP {
		return bad("owner for SIGIO (F_SETOWN_EX) of unknown type %d", pt)
	}
	if p.ownerTask(o) == nil {
		return bad("the owner for SIGIO (F_SETOWN), %s, is not in the tree", ownerName(o))
	}
	return nil
}

// ownerTask is the task the owner o is or belongs to: the task of the
// thread (F_OWNER_TID; F_OWNER_PID, which F_SETOWN gives a thread's tid
// too), or the leader of the process group, or its helper.
func (p *Plan) ownerTask(o *fown.FownEntry) *Task {
	pid := int(o.GetPid())
	if o.GetPidType() == fOwnerPGRP {
		lead := p.Task(pid)
		if lead == nil || lead.PGID != pid {
			return nil
		}
		return lead
	}
	for _, t := range p.Tasks {
		for _, th := range t.Threads {
			if th.TID == pid {
				return t
			}
		}
	}
	return nil
}

// ownerJob is the owner for SIGIO of one file: the engine's fd of it and
// what to set.
type ownerJob struct {
	id        uint32
	fd        int
	sig       int
	owner     *fOwnerEx // nil for none
	name      string    // of the owner, for errors
	uid, euid uint32
	async     bool
}

// setOwners gives the engine's copy of every file its owner for SIGIO as
// restore_fown does: the signal (F_SETSIG), then the owner (F_SETOWN_EX)
// named by its host pid, with the uid and euid of whoever set it at the
// dump as the engine's credentials, since the kernel keeps them to decide
// whether the owner may get the signal; then O_ASYNC, after the owner.
func (r *Restore) setOwners() error {
	ids := make([]uint32, 0, len(r.plan.sigio))
	for id := range r.plan.sigio {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var jobs []ownerJob
	for _, id := range ids {
		fe, err := r.plan.Dir.File(id)
		if err != nil {
			return err
		}
		o, flags := ownerOf(fe)
		uid, euid, err := r.plan.ownerUIDs(o) // userns.go: through the maps
		if err != nil {
			return fmt.Errorf("files.img: file %d: %w", id, err)
		}
		j := ownerJob{id: id, sig: int(o.GetSignum()), uid: uid, euid: euid, async: flags&syscall.O_ASYNC != 0}
		f := r.plan.Files[id]
		k, ok := r.files.index[fileKey(f)]
		if !ok {
			return fmt.Errorf("files.img: file %d has an owner for SIGIO, but the engine did not open it", id)
		}
		j.fd = r.files.fds[k]
		if o.GetPid() != 0 {
			host, err := r.ownerHost(o)
			if err != nil {
				return fmt.Errorf("files.img: file %d: %w", id, err)
			}
			j.owner = &fOwnerEx{Type: int32(o.GetPidType()), PID: int32(host)}
			j.name = fmt.Sprintf("%s (host pid %d)", ownerName(o), host)
		}
		jobs = append(jobs, j)
	}
	if len(jobs) == 0 {
		return nil
	}
	return setOwnersHere(jobs)
}

// setOwnersHere sets the owners of jobs. The credentials are changed on
// one locked thread with the raw system call (syscall.Setresuid would
// change every thread of the engine), and put back before it is let go;
// if that fails, the thread stays locked and ends with its goroutine. A
// thread is never ended otherwise: the restored root's parent-death
// signal (fork.c) is tied to whichever engine thread forked the launcher.
func setOwnersHere(jobs []ownerJob) error {
	return onReturningThread(func() (error, error) {
		// Changing the euid makes the process non-dumpable: put back.
		dumpable, _, _ := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_GET_DUMPABLE, 0, 0)
		for _, j := range jobs {
			if err := setOwner(j); err != nil {
				err = fmt.Errorf("files.img: file %d: %w", j.id, err)
				var cred *credError
				if errors.As(err, &cred) {
					return nil, err // the thread keeps other credentials: it ends
				}
				syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_DUMPABLE, dumpable, 0)
				return err, nil
			}
		}
		syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_DUMPABLE, dumpable, 0)
		return nil, nil
	})
}

// credError says that a thread could not get its credentials back.
type credError struct{ err error }

func (e *credError) Error() string { return e.err.Error() }
func (e *credError) Unwrap() error { return e.err }

// setOwner sets the owner for SIGIO of one file.
func setOwner(j ownerJob) error {
	if j.sig != 0 {
		if _, err := fcntl(j.fd, syscall.F_SETSIG, j.sig); err != nil {
			return fmt.Errorf("F_SETSIG %d: %w", j.sig, err)
		}
	}
	if j.owner != nil {
		if err := setOwnerAs(j.fd, *j.owner, j.uid, j.euid); err != nil {
			return fmt.Errorf("%s: %w", j.name, err)
		}
	}
	if j.async {
		fd := j.fd
		// A file opened with O_ASYNC has the flag but is not in the
		// file's list of whom to signal (open(2) does not call
		// ->fasync, and F_SETFL calls it only on a change): clear it
		// and set it again.
		fl, err := fcntl(fd, syscall.F_GETFL, 0)
		if err != nil {
			return err
		}
		if _, err := fcntl(fd, syscall.F_SETFL, fl&^syscall.O_ASYNC); err != nil {
			return fmt.Errorf("F_SETFL without O_ASYNC: %w", err)
		}
		if _, err := fcntl(fd, syscall.F_SETFL, fl|syscall.O_ASYNC); err != nil {
			return fmt.Errorf("F_SETFL O_ASYNC: %w", err)
		}
	}
	return nil
}

// ownerHost is the host pid of the owner o: a task's pid, a group's
// leader's, or a thread's host tid, found under its task in /proc.
func (r *Restore) ownerHost(o *fown.FownEntry) (int, error) {
	t := r.plan.ownerTask(o)
	if t == nil || r.hostPIDs[t.PID] == 0 {
		return 0, fmt.Errorf("%s is not in the restored tree", ownerName(o))
	}
	host := r.hostPIDs[t.PID]
	tid := int(o.GetPid())
	if o.GetPidType() == fOwnerPGRP || tid == t.PID {
		return host, nil
	}
	dir := fmt.Sprintf("/proc/%d/task", host)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var buf [4096]byte
	for _, e := range ents {
		var h int
		if _, err := fmt.Sscan(e.Name(), &h); err != nil {
			continue
		}
		if v, err := innermostPID(h, buf[:]); err == nil && v == tid {
			return h, nil
		}
	}
	return 0, fmt.Errorf("%s: no thread %d of task %d (host pid %d) in %s", ownerName(o), tid, t.PID, host, dir)
}

// setOwnerAs does F_SETOWN_EX ex on fd with uid and euid as the real and
// effective uid of the calling thread (locked: setOwnersHere), as the kernel
// records whoever sets an owner; then it puts the thread's back. The saved
// uid stays the engine's, so that it may.
func setOwnerAs(fd int, ex fOwnerEx, uid, euid uint32) error {
	r, e, _ := unix.Getresuid()
	ruid, eu := uint32(r), uint32(e)
	if ruid == uid && eu == euid {
		return fSetownEx(fd, ex)
	}
	if err := setresuidThread(uid, euid); err != nil {
		return fmt.Errorf("as uid %d euid %d: %w", uid, euid, err)
	}
	err := fSetownEx(fd, ex)
	if err != nil {
		err = fmt.Errorf("as uid %d euid %d: %w", uid, euid, err)
	}
	if e := setresuidThread(ruid, eu); e != nil {
		err = &credError{errors.Join(err, fmt.Errorf("back: %w", e))}
	}
	return err
}
