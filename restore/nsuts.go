package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/utsns"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore/agent"
)

// UTSNamespace is what the tree's own UTS namespace held at the dump
// (utsns-ID.img).
type UTSNamespace struct {
	ID         uint32
	File       string
	Hostname   string
	Domainname string
}

// loadNamespaces decides, as CRIU does (get_clone_mask, criu/pstree.c),
// whether the tree had UTS and IPC namespaces of its own: the root's
// differs from the dumping criu's (inventory root_ids). Then the root is
// born in new ones, which PREPARE_NAMESPACES fills from their images. A
// tree in the dumper's namespaces keeps the restoring engine's. Every
// other task must be in the root's: CRIU dumps no nested UTS or IPC
// namespaces and restores none. The net namespace is decided the same
// way (netns.go); CRIU restores tasks in other net namespaces than the
// root's, crest refuses them.
func (p *Plan) loadNamespaces() error {
	root := p.Root()
	rootIDs := p.Dir.Inventory.GetRootIds()
	if root.IDs == nil || rootIDs == nil {
		return p.checkNSImages()
	}
	for _, t := range p.Tasks[1:] {
		if t.IDs == nil {
			continue // a zombie or a helper: in no namespace of its own
		}
		for _, k := range []struct {
			kind        string
			task, owner uint32
		}{{"UTS", t.IDs.GetUtsNsId(), root.IDs.GetUtsNsId()}, {"IPC", t.IDs.GetIpcNsId(), root.IDs.GetIpcNsId()},
			{"net", t.IDs.GetNetNsId(), root.IDs.GetNetNsId()}, {"mount", t.IDs.GetMntNsId(), root.IDs.GetMntNsId()}} {
			if k.task != k.owner {
				return &PlanError{PID: t.PID, File: fmt.Sprintf("ids-%d.img", t.PID),
					Msg: fmt.Sprintf("%s namespace %d, not the root's %d: tasks in %s namespaces of their own are not restored (nor dumped by CRIU)", k.kind, k.task, k.owner, k.kind)}
			}
		}
	}
	// Images before ns_per_id are named for the root's pid.
	id := func(ns uint32) uint32 {
		if !p.Dir.Inventory.GetNsPerId() {
			return uint32(root.PID)
		}
		return ns
	}
	if root.IDs.GetUtsNsId() != rootIDs.GetUtsNsId() {
		uts, err := p.loadUTS(id(root.IDs.GetUtsNsId()))
		if err != nil {
			return err
		}
		p.UTS = uts
	}
	if root.IDs.GetIpcNsId() != rootIDs.GetIpcNsId() {
		ipc, err := p.loadIPC(id(root.IDs.GetIpcNsId()))
		if err != nil {
			return err
		}
		p.IPC = ipc
	}
	if root.IDs.GetNetNsId() != rootIDs.GetNetNsId() { // netns.go
		net, err := p.loadNet(id(root.IDs.GetNetNsId()))
		if err != nil {
			return err
		}
		p.Net = net
	}
	if root.IDs.GetMntNsId() != rootIDs.GetMntNsId() { // mntns.go
		mnt, err := p.loadMnt(id(root.IDs.GetMntNsId()))
		if err != nil {
			return err
		}
		p.Mnt = mnt
	}
	return p.checkNSImages()
}

// checkNSImages refuses images of namespaces not the tree's own
// (checkNetImages, checkMntImages), and plans the tree's own user
// namespace last, which owns the others (planUserNS, userns.go).
func (p *Plan) checkNSImages() error {
	if err := p.checkNetImages(); err != nil {
		return err
	}
	if err := p.checkMntImages(); err != nil {
		return err
	}
	return p.planUserNS()
}

func (p *Plan) loadUTS(id uint32) (*UTSNamespace, error) {
	name := fmt.Sprintf("utsns-%d.img", id)
	img, err := images.ReadKindFile(p.Dir.FilePath(name), images.KindUTSNS)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &PlanError{File: name, Msg: fmt.Sprintf("the tree's own UTS namespace %d has no image", id)}
	}
	if err != nil {
		return nil, &PlanError{File: name, Err: err}
	}
	if len(img.Entries) != 1 {
		return nil, &PlanError{File: name, Msg: fmt.Sprintf("%d entries, want one", len(img.Entries))}
	}
	e := img.Entries[0].Message.(*utsns.UtsnsEntry)
	u := &UTSNamespace{ID: id, File: name, Hostname: e.GetNodename(), Domainname: e.GetDomainname()}
	// the kernel's __NEW_UTS_LEN
	for _, s := range []struct{ what, v string }{{"nodename", u.Hostname}, {"domainname", u.Domainname}} {
		if len(s.v) > 64 {
			return nil, &PlanError{File: name, Msg: fmt.Sprintf("entry 0: %s of %d bytes, more than 64", s.what, len(s.v))}
		}
	}
	return u, nil
}

// namespaceFlags are the plan's flags for the namespaces the root is born
// in besides its pid namespace (agent.PlanNewUTS, agent.PlanNewIPC).
func (p *Plan) namespaceFlags() uint32 {
	var f uint32
	if p.UTS != nil {
		f |= agent.PlanNewUTS
	}
	if p.IPC != nil {
		f |= agent.PlanNewIPC
	}
	if p.Net != nil {
		f |= agent.PlanNewNet
	}
	if p.Mnt != nil {
		f |= agent.PlanNewNS
	}
	if p.User != nil {
		f |= agent.PlanNewUser
	}
	return f
}

// prepareNamespaces fills the UTS and IPC namespaces the root was born in,
// in PREPARE_NAMESPACES, as CRIU's prepare_namespace does in the root:
// before the root forks any task, so no task ever runs in them unfilled.
// The engine does it on a locked OS thread that joins the namespaces
// through the root's pidfd (joinTreeNamespaces) and goes back to its own
// before it is let go. It is not simply left to end with its goroutine:
// the root's parent-death signal (fork.c) is tied to whichever engine
// thread forked the launcher, which this one may be. Only when it can not
// go back does it stay locked and end. Each namespace is a step of the
// root in the timeline.
func (r *Restore) prepareNamespaces() error {
	p := r.plan
	if p.UTS == nil && p.IPC == nil && p.Net == nil {
		return r.prepareMounts() // mntns_mount.go
	}
	err := onReturningThread(func() (error, error) {
		back, err := engineNamespaces()
		if err != nil {
			return &StageError{Stage: StagePrepareNamespaces, PID: p.Root().PID, Err: err}, nil
		}
		err = r.fillNamespaces()
		if berr := back(); berr != nil {
			return err, &StageError{Stage: StagePrepareNamespaces, PID: p.Root().PID, Err: berr}
		}
		return err, nil
	})
	if err != nil {
		return err
	}
	// after the net namespace, as CRIU's prepare_namespace
	return r.prepareMounts()
}

// engineNamespaces opens the calling thread's UTS, IPC and net
// namespaces and returns what moves it back into them (and closes them).
func engineNamespaces() (back func() error, err error) {
	var fds []int
	for _, kind := range []string{"uts", "ipc", "net"} {
		fd, err := unix.Open("/proc/thread-self/ns/"+kind, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return nil, &os.PathError{Op: "open", Path: "/proc/thread-self/ns/" + kind, Err: err}
		}
		fds = append(fds, fd)
	}
	return func() error {
		var errs []error
		for i, flag := range []int{unix.CLONE_NEWUTS, unix.CLONE_NEWIPC, unix.CLONE_NEWNET} {
			if err := unix.Setns(fds[i], flag); err != nil {
				errs = append(errs, fmt.Errorf("back to the engine's namespace: %w", os.NewSyscallError("setns", err)))
			}
			unix.Close(fds[i])
		}
		return errors.Join(errs...)
	}, nil
}

func (r *Restore) fillNamespaces() error {
	p := r.plan
	var flags int
	if p.UTS != nil {
		flags |= unix.CLONE_NEWUTS
	}
	if p.IPC != nil {
		flags |= unix.CLONE_NEWIPC
	}
	if p.Net != nil {
		flags |= unix.CLONE_NEWNET
	}
	step := r.namespaceStep
	begin := boottime()
	join := joinTreeNamespaces
	if r.opts.Faults&FaultWrongNS != 0 {
		join = joinDecoyNamespaces // faults.go
	}
	if err := join(r.rootPidfd, r.rootPID, flags); err != nil {
		name := "net namespace"
		if p.UTS != nil {
			name = "uts namespace"
		} else if p.IPC != nil {
			name = "ipc namespace"
		}
		return step(name, begin, err)
	}
	if u := p.UTS; u != nil {
		err := unix.Sethostname([]byte(u.Hostname))
		if err != nil {
			err = fmt.Errorf("%s: sethostname %q: %w", u.File, u.Hostname, err)
		} else if err = unix.Setdomainname([]byte(u.Domainname)); err != nil {
			err = fmt.Errorf("%s: setdomainname %q: %w", u.File, u.Domainname, err)
		}
		if err := step("uts namespace", begin, err); err != nil {
			return err
		}
		begin = boottime()
	}
	if p.IPC != nil {
		r.log.Debug("ipc namespace", "id", p.IPC.ID, "objects", p.IPC.summary())
		if err := step("ipc namespace", begin, restoreIPC(p.IPC)); err != nil {
			return err
		}
	}
	if p.Net != nil {
		return r.fillNet() // netns_fill.go
	}
	return nil
}

// namespaceStep records step name of the root that the engine did in
// PREPARE_NAMESPACES from begin on (filling a namespace of the tree),
// ended now, or failed with err, which it returns as a StageError.
func (r *Restore) namespaceStep(name string, begin uint64, err error) error {
	root := r.plan.Root()
	e := StepEvent{PID: root.PID, TID: root.PID, Step: name, Stage: StagePrepareNamespaces, Begin: begin, Engine: true}
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			e.Errno = int(errno)
		}
		r.obs.StepDone(e)
		return &StageError{Stage: StagePrepareNamespaces, PID: root.PID, Step: name, Err: err}
	}
	e.End, e.Succeeded = boottime(), true
	r.obs.StepDone(e)
	return nil
}

// joinTreeNamespaces moves the calling thread into the namespaces flags of
// the root (pidfd, pid in the engine's namespace) and makes sure they are
// new ones: nothing the restore writes may reach the engine's (the
// host's) namespaces.
func joinTreeNamespaces(pidfd, pid, flags int) error {
	kinds := map[int]string{unix.CLONE_NEWUTS: "uts", unix.CLONE_NEWIPC: "ipc", unix.CLONE_NEWNET: "net", unix.CLONE_NEWNS: "mnt"}
	engine := map[string]uint64{}
	for flag, kind := range kinds {
		if flags&flag == 0 {
			continue
		}
		ino, err := nsIno("/proc/thread-self/ns/" + kind)
		if err != nil {
			return err
		}
		engine[kind] = ino
	}
	if err := unix.Setns(pidfd, flags); err != nil {
		return fmt.Errorf("setns(pidfd of the root %d, %#x): %w", pid, flags, os.NewSyscallError("setns", err))
	}
	for kind, was := range engine {
		now, err := nsIno("/proc/thread-self/ns/" + kind)
		if err != nil {
			return err
		}
		rootNS, err := nsIno(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
		if err != nil {
			return err
		}
		if now == was || now != rootNS {
			return fmt.Errorf("%s namespace: joined %d, the root's is %d, the engine's %d: not the tree's own", kind, now, rootNS, was)
		}
	}
	return nil
}

func nsIno(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return st.Ino, nil
}
