package restore

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/signalfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timerfd"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

func owner(typ, pid, sig uint32) *fown.FownEntry {
	return &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(sig), PidType: proto.Uint32(typ), Pid: proto.Uint32(pid)}
}

// TestPlanFown: owners for SIGIO the plan takes (a task, a thread, a
// process group of the tree, a signal alone) and those it refuses, naming
// files.img and the file. The tree fixture has tasks 1-4, in groups 1
// and 3; the eventfd is file 100 of task 2.
func TestPlanFown(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    *fown.FownEntry
		want string // "" when planned
	}{
		{"process", owner(fOwnerPID, 3, 10), ""},
		{"thread", owner(fOwnerTID, 4, 0), ""},
		{"process group", owner(fOwnerPGRP, 3, 29), ""},
		{"signal alone", owner(0, 0, 34), ""},
		{"process outside", owner(fOwnerPID, 77, 10), "task 2: files.img: file 100: the owner for SIGIO (F_SETOWN), process 77, is not in the tree"},
		{"thread outside", owner(fOwnerTID, 5, 0), "task 2: files.img: file 100: the owner for SIGIO (F_SETOWN), thread 5, is not in the tree"},
		{"no group", owner(fOwnerPGRP, 2, 0), "task 2: files.img: file 100: the owner for SIGIO (F_SETOWN), process group 2, is not in the tree"},
		{"type", owner(5, 1, 0), "task 2: files.img: file 100: owner for SIGIO (F_SETOWN_EX) of unknown type 5"},
		{"signal", owner(0, 0, 99), "task 2: files.img: file 100: signal 99 for SIGIO (F_SETSIG) is not a signal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyImages(t, "tree")
			addAnonFiles(t, dir, func(e *eventfd.EventfdFileEntry, _ *signalfd.SignalfdEntry, _ *timerfd.TimerfdEntry) {
				e.Fown = tc.o
			}, nil)
			_, err := openPlan(t, dir)
			var pe *PlanError
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("not planned: %v", err)
			case tc.want != "" && (!errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want a PlanError with %q", err, tc.want)
			}
		})
	}
}

// fileOwner reads the owner for SIGIO of fd of process pid through a
// pidfd_getfd copy: F_GETOWN_EX (the pid in our namespace), F_GETSIG,
// F_GETOWNER_UIDS and the status flags.
func fileOwner(t *testing.T, pid, fd int) (ex fOwnerEx, sig int, uids [2]uint32, flags int) {
	t.Helper()
	c := taskFD(t, pid, fd)
	var err error
	if _, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(c), unix.F_GETOWN_EX, uintptr(unsafe.Pointer(&ex))); e != 0 {
		t.Fatalf("F_GETOWN_EX: %v", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(c), 17, uintptr(unsafe.Pointer(&uids))); e != 0 { // F_GETOWNER_UIDS
		t.Fatalf("F_GETOWNER_UIDS: %v", e)
	}
	if sig, err = unix.FcntlInt(uintptr(c), unix.F_GETSIG, 0); err != nil {
		t.Fatal(err)
	}
	if flags, err = unix.FcntlInt(uintptr(c), unix.F_GETFL, 0); err != nil {
		t.Fatal(err)
	}
	return ex, sig, uids, flags
}

// TestRestoreFown gives the pipe fixture's pipe owners for SIGIO, with
// O_ASYNC: the reader (task 2) owns its end with SIGWINCH, set by euid
// 1000; process group 1 owns the writer's end with SIGURG (both signals
// are ignored by default, so that the fixture runs on as it is). The
// restored files carry them, named by their host pids.
func TestRestoreFown(t *testing.T) {
	needRoot(t)
	installFixture(t, "pipe")
	imgs := fixture.CopyImages(t, "pipe")
	editImage(t, imgs, "files.img", func(img *images.Image) {
		for _, e := range img.Entries {
			fe := e.Message.(*fdinfo.FileEntry)
			switch fe.GetId() {
			case 7: // the read end, task 2 fd 3
				fe.Pipe.Fown = &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(1000), Signum: proto.Uint32(uint32(syscall.SIGWINCH)),
					PidType: proto.Uint32(fOwnerPID), Pid: proto.Uint32(2)}
				fe.Pipe.Flags = proto.Uint32(fe.Pipe.GetFlags() | syscall.O_ASYNC)
			case 4: // the write end, task 1 fd 4
				fe.Pipe.Fown = owner(fOwnerPGRP, 1, uint32(syscall.SIGURG))
				fe.Pipe.Flags = proto.Uint32(fe.Pipe.GetFlags() | syscall.O_ASYNC)
			}
		}
	})
	p := planDir(t, imgs)
	_, hosts := startChecked(t, p)
	for _, c := range []struct {
		what      string
		pid, fd   int
		ex        fOwnerEx
		sig       int
		uid, euid uint32
	}{
		{"reader", hosts[1], 3, fOwnerEx{fOwnerPID, int32(hosts[1])}, int(syscall.SIGWINCH), 0, 1000},
		{"writer", hosts[0], 4, fOwnerEx{fOwnerPGRP, int32(hosts[0])}, int(syscall.SIGURG), 0, 0},
	} {
		ex, sig, uids, flags := fileOwner(t, c.pid, c.fd)
		if ex != c.ex || sig != c.sig || uids != [2]uint32{c.uid, c.euid} || flags&syscall.O_ASYNC == 0 {
			t.Errorf("%s: owner %+v signal %d uids %v flags %#o; want %+v, %d, [%d %d], O_ASYNC", c.what, ex, sig, uids, flags, c.ex, c.sig, c.uid, c.euid)
		}
	}
	if st := procStatus(t, hosts[0]); st["Uid"][1] != "0" {
		t.Errorf("task 1 restored with uids %v", st["Uid"])
	}
	checkLogContinues(t, "pipe", "/opt/crest-fixtures/pipe", "out.log", 10)
}

// TestRestoreFownThread: a file of the threads fixture owned by its
// second thread (F_OWNER_TID 2) gets the host tid of that thread.
func TestRestoreFownThread(t *testing.T) {
	needRoot(t)
	installFixture(t, "threads")
	imgs := fixture.CopyImages(t, "threads")
	editImage(t, imgs, "files.img", func(img *images.Image) {
		for _, e := range img.Entries {
			if fe := e.Message.(*fdinfo.FileEntry); fe.GetId() == 3 {
				fe.Reg.Fown = owner(fOwnerTID, 2, uint32(syscall.SIGWINCH))
			}
		}
	})
	p := planDir(t, imgs)
	_, hosts := startChecked(t, p)
	ex, sig, _, _ := fileOwner(t, hosts[0], 3)
	var buf [4096]byte
	tid, err := innermostPID(int(ex.PID), buf[:])
	if err != nil {
		t.Fatal(err)
	}
	if ex.Type != fOwnerTID || ex.PID == int32(hosts[0]) || tid != 2 || sig != int(syscall.SIGWINCH) {
		t.Errorf("owner %+v (tid %d in the tree) signal %d; want thread 2, SIGWINCH", ex, tid, sig)
	}
}
