package restore

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// rollback stores FAIL, kills the tree and waits until every task the
// engine knew of is gone. In a pid namespace of its own the root is its
// init, whose death takes every task of the namespace; in crest's pid
// namespace every task of the tree is killed, found from the root down
// again until no new one turns up (a task may be forking while the
// rollback begins). The root is reaped here. Then the cgroups the restore
// made go (cgroup.go).
func (r *Restore) rollback() (err error) {
	defer func() { err = errors.Join(err, r.removeCgroups(), r.removeVeths()) }()
	if r.shared == nil {
		return nil
	}
	r.shared.abort()
	r.reapLauncher()
	// the kernel stored the root's pid before the root ran, also when the
	// restore fails before the root arrived
	if err := r.learnRoot(); err != nil {
		r.log.Warn("rollback", "err", err)
	}
	if r.rootPID <= 0 {
		return nil
	}
	known := map[int]bool{r.rootPID: true}
	for _, h := range r.hostPIDs {
		known[h] = true
	}
	var errs []error
	if r.plan.NewPIDNS {
		if found, _ := walkTree(r.rootPID); found != nil {
			for h := range found {
				known[h] = true
			}
		}
		kill := func() error { return pidfdSignal(r.rootPidfd, syscall.SIGKILL) }
		if r.rootPidfd < 0 {
			kill = func() error { return syscall.Kill(r.rootPID, syscall.SIGKILL) } // still our unreaped child
		}
		if err := kill(); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("killing root %d: %w", r.rootPID, err))
		}
	} else {
		errs = append(errs, r.killAll(known)...)
	}
	// The root is the engine's child (CLONE_PARENT): reap it here.
	for {
		_, err := syscall.Wait4(r.rootPID, nil, syscall.WALL, nil)
		if err != syscall.EINTR {
			if err != nil && err != syscall.ECHILD {
				errs = append(errs, fmt.Errorf("waiting for root %d: %w", r.rootPID, err))
			}
			break
		}
	}
	r.rootPID = 0
	deadline := time.Now().Add(10 * time.Second)
	for h := range known {
		for {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", h)); errors.Is(err, os.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("pid %d still exists after the rollback", h))
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// killAll kills every task of a tree restored into crest's pid namespace,
// each through a pidfd, the root's last: the root is the engine's child
// and stays (a zombie at worst) until it is reaped, so the walks from it
// find the tasks forked meanwhile. Every pid killed is added to known.
// Killing a parent first does not lose its children: they were found in
// the same walk.
func (r *Restore) killAll(known map[int]bool) []error {
	var errs []error
	kill := func(h int) {
		if h == r.rootPID {
			return
		}
		fd, err := pidfdOpen(h)
		if err != nil {
			if !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("killing task %d: %w", h, err))
			}
			return
		}
		defer syscall.Close(fd)
		if err := pidfdSignal(fd, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("killing task %d: %w", h, err))
		}
	}
	// Only what the walks find is killed: a pid learned earlier may
	// have been freed and taken by a process of someone else's.
	killed := map[int]bool{}
	for {
		found, _ := walkTree(r.rootPID)
		fresh := false
		for h := range found {
			if !killed[h] {
				kill(h)
				killed[h], known[h], fresh = true, true, true
			}
		}
		if !fresh {
			break
		}
	}
	if err := pidfdSignal(r.rootPidfd, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		errs = append(errs, fmt.Errorf("killing root %d: %w", r.rootPID, err))
	}
	return errs
}

// release frees the engine's side of a restore.
func (r *Restore) release() {
	r.reapLauncher()
	r.holder.close() // userns.go
	r.holder = nil
	if r.rootPidfd >= 0 {
		syscall.Close(r.rootPidfd)
		r.rootPidfd = -1
	}
	if r.shared != nil {
		r.shared.close()
		r.shared = nil
	}
	if r.files != nil {
		r.files.close()
	}
	r.closeLaunched()
	r.closed = true
}
