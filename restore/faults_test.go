package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFaults runs each injected fault on a real restore and checks that it
// breaks what it claims to, as far as the engine itself can see it, and
// that nothing is left behind. The kernel-side monitor's tests check that
// it catches them from the kernel's side.
func TestFaults(t *testing.T) {
	needRoot(t)
	tests := []struct {
		fault   string
		fixture string
		// check gets Start's error and what the observer saw.
		check func(t *testing.T, err error, rec *recorder)
	}{
		{"no-set-tid", "tree", func(t *testing.T, err error, rec *recorder) {
			// Task 4, forked first without set_tid, took pid 2: task 2
			// can not have it.
			wantStageError(t, err, StageForking, 1, "fork children", syscall.EEXIST)
		}},
		{"no-wait", "tree", func(t *testing.T, err error, rec *recorder) {
			wantStageError(t, err, StageRestoreCreds, 0, "", 0)
			if err == nil || !strings.Contains(err.Error(), "1 of 4 participants missing") {
				t.Errorf("error %v, want a timeout with one participant missing", err)
			}
		}},
		// What follows an early switch depends on which thread was late
		// and when: the restore may complete or fail. Only the monitor
		// sees the switch itself; here the restore must end either way.
		{"early-switch", "threads", func(t *testing.T, err error, rec *recorder) {
			if err != nil {
				var se *StageError
				if !errors.As(err, &se) || se.Stage < StageRestore {
					t.Errorf("error %v, want nil or a *StageError from RESTORE on", err)
				}
			}
			if rec.Stage(StageRestoreCreds) == nil {
				t.Error("no switch to RESTORE_CREDS")
			}
		}},
		{"drop-thread", "threads", func(t *testing.T, err error, rec *recorder) {
			wantStageError(t, err, StageRestore, 0, "", 0)
			if err == nil || !strings.Contains(err.Error(), "1 of 3 participants missing") {
				t.Errorf("error %v, want a timeout with one participant missing", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.fault, func(t *testing.T) {
			f, err := ParseFault(tt.fault)
			if err != nil {
				t.Fatal(err)
			}
			if f.String() != tt.fault {
				t.Errorf("Fault(%d).String() = %q", f, f)
			}
			installFixture(t, tt.fixture)
			p := loadPlan(t, tt.fixture)
			rec := &recorder{}
			r, err := Start(context.Background(), p, Options{Faults: f, StageTimeout: time.Second, Observer: rec})
			var hosts []int
			for _, a := range rec.Arrivals {
				if a.HostPID != 0 {
					hosts = append(hosts, a.HostPID)
				}
			}
			tt.check(t, err, rec)
			if r != nil {
				if err := r.Abort(); err != nil {
					t.Error(err)
				}
			}
			checkGone(t, hosts)
		})
	}
}

// wantStageError checks err is a *StageError of stage (and, when given,
// task pid, step and errno).
func wantStageError(t *testing.T, err error, stage Stage, pid int, step string, errno syscall.Errno) {
	t.Helper()
	var se *StageError
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T), want a *StageError", err, err)
	}
	if se.Stage != stage || (pid != 0 && se.PID != pid) || (step != "" && se.Step != step) || (errno != 0 && se.Errno != errno) {
		t.Errorf("error %q, want stage %v pid %d step %q errno %v", err, stage, pid, step, errno)
	}
}

// inRootNamespaces runs f on a thread in the UTS and IPC namespaces of
// process pid, and brings the thread back to ours (or lets it end).
func inRootNamespaces(t *testing.T, pid int, f func()) {
	t.Helper()
	kinds := []struct {
		name string
		flag int
	}{{"uts", unix.CLONE_NEWUTS}, {"ipc", unix.CLONE_NEWIPC}}
	done := make(chan error)
	go func() {
		runtime.LockOSThread()
		var own, theirs []int
		defer func() {
			for _, fd := range append(own, theirs...) {
				unix.Close(fd)
			}
		}()
		for _, k := range kinds {
			o, err := unix.Open("/proc/thread-self/ns/"+k.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				runtime.UnlockOSThread()
				done <- err
				return
			}
			own = append(own, o)
			r, err := unix.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, k.name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				runtime.UnlockOSThread()
				done <- err
				return
			}
			theirs = append(theirs, r)
		}
		var errs []error
		for i, k := range kinds {
			if err := unix.Setns(theirs[i], k.flag); err != nil {
				errs = append(errs, fmt.Errorf("setns into the root's %s: %w", k.name, err))
			}
		}
		if len(errs) == 0 {
			f()
		}
		for i, k := range kinds {
			if err := unix.Setns(own[i], k.flag); err != nil {
				// still locked: the thread ends with the goroutine
				done <- errors.Join(append(errs, fmt.Errorf("back to our %s: %w", k.name, err))...)
				return
			}
		}
		runtime.UnlockOSThread()
		done <- errors.Join(errs...)
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// ourNamespaces checks that every thread of this process is in the UTS
// and IPC namespaces it was in (uts, ipc) and that nothing of nsuts's
// reached them: our hostname is host, no SysV object has its keys.
func ourNamespaces(t *testing.T, host string, uts, ipc uint64) {
	t.Helper()
	for kind, want := range map[string]uint64{"uts": uts, "ipc": ipc} {
		links, _ := filepath.Glob("/proc/self/task/*/ns/" + kind)
		for _, l := range links {
			if ino, err := nsIno(l); err == nil && ino != want {
				t.Errorf("%s: %d, not our %d", l, ino, want)
			}
		}
	}
	if h, err := os.Hostname(); err != nil || h != host {
		t.Errorf("our hostname %q (%v), was %q", h, err, host)
	}
	if left := sysvKeys(t); len(left) > 0 {
		t.Errorf("SysV objects of nsuts in our IPC namespace: %q", left)
	}
}

// TestFaultWrongNS: under FaultWrongNS the engine fills decoy namespaces
// instead of the root's, and the engine itself does not notice (only the
// monitor does: cmd/crest's TestVerifyFaults). Parked after
// PREPARE_NAMESPACES, the root is in new UTS and IPC namespaces that hold
// none of nsuts's names or SysV objects; nothing reached ours, and every
// thread of ours is back in them. Run on, the restore fails (the tasks'
// SysV segments are not in the root's IPC namespace) and leaves nothing.
func TestFaultWrongNS(t *testing.T) {
	imgs, _ := nsutsImages(t)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	uts, _ := nsIno("/proc/self/ns/uts")
	ipc, _ := nsIno("/proc/self/ns/ipc")
	f, err := ParseFault("wrong-ns")
	if err != nil || f != FaultWrongNS || f.String() != "wrong-ns" {
		t.Fatalf("ParseFault(wrong-ns) = %v, %v", f, err)
	}

	t.Run("parked", func(t *testing.T) {
		r, err := Start(context.Background(), planDir(t, imgs), Options{Faults: FaultWrongNS, Until: StagePrepareNamespaces})
		if err != nil {
			t.Fatalf("Start: %v, want the fault unnoticed by the engine", err)
		}
		root := r.RootPID()
		rootUTS, _ := nsIno(fmt.Sprintf("/proc/%d/ns/uts", root))
		rootIPC, _ := nsIno(fmt.Sprintf("/proc/%d/ns/ipc", root))
		if rootUTS == uts || rootIPC == ipc || rootUTS == 0 || rootIPC == 0 {
			t.Errorf("root %d in uts %d, ipc %d; ours %d, %d: want new ones", root, rootUTS, rootIPC, uts, ipc)
		}
		var name unix.Utsname
		var keys []string
		inRootNamespaces(t, root, func() {
			unix.Uname(&name)
			keys = sysvKeys(t)
		})
		if got := unix.ByteSliceToString(name.Nodename[:]); got != host {
			t.Errorf("the root's hostname %q, want ours %q: its namespace filled after all", got, host)
		}
		if len(keys) > 0 {
			t.Errorf("SysV objects in the root's IPC namespace: %q", keys)
		}
		ourNamespaces(t, host, uts, ipc)
		if err := r.Abort(); err != nil {
			t.Error(err)
		}
	})

	t.Run("run on", func(t *testing.T) {
		rec := &recorder{}
		r, err := Start(context.Background(), planDir(t, imgs), Options{Faults: FaultWrongNS, StageTimeout: time.Second, Observer: rec})
		var hosts []int
		for _, a := range rec.Arrivals {
			if a.HostPID != 0 {
				hosts = append(hosts, a.HostPID)
			}
		}
		// the root's shmat of segment 7, not in its IPC namespace
		wantStageError(t, err, StageRestore, 1, "memory", syscall.EINVAL)
		if r != nil {
			r.Abort()
		}
		checkGone(t, hosts)
		ourNamespaces(t, host, uts, ipc)
	})
}
