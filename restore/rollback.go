package restore

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// rollback stores FAIL, kills the tree through its root (the init of its
// pid namespace: its death takes every task of the namespace), reaps the
// root and waits until every task the engine knew of is gone.
func (r *Restore) rollback() error {
	if r.shared == nil {
		return nil
	}
	r.shared.abort()
	if r.rootPID <= 0 {
		return nil
	}
	known := map[int]bool{r.rootPID: true}
	for _, h := range r.hostPIDs {
		known[h] = true
	}
	if found, _ := walkTree(r.rootPID); found != nil {
		for h := range found {
			known[h] = true
		}
	}
	var errs []error
	if err := pidfdSignal(r.rootPidfd, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		errs = append(errs, fmt.Errorf("killing root %d: %w", r.rootPID, err))
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

// release frees the engine's side of a restore.
func (r *Restore) release() {
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
	r.closed = true
}
