package restore

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"

	ipc_var "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-var"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// inNewIPC runs fn on a locked thread in a new IPC namespace of its own,
// which ends with the thread (never ours: see inIPC).
func inNewIPC(t *testing.T, fn func()) {
	t.Helper()
	err := inIPC(func() error { return unix.Unshare(unix.CLONE_NEWIPC) }, func() error { fn(); return nil })
	if err != nil {
		t.Fatal(err)
	}
}

// inIPC runs fn on a locked thread that enter moved into another IPC
// namespace, and brings the thread back to ours; a thread that cannot
// come back stays locked and ends with its goroutine.
func inIPC(enter, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		back, err := os.Open("/proc/thread-self/ns/ipc")
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer back.Close()
		if err = enter(); err == nil {
			err = fn()
		}
		if berr := unix.Setns(int(back.Fd()), unix.CLONE_NEWIPC); berr != nil {
			done <- errors.Join(err, berr) // stays locked: the thread ends
			return
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	return <-done
}

// TestIPCInfo: IPC_INFO says what /proc/sys says of a namespace's IPC
// sysctls, and writeIPCSysctls's values are there afterwards; a value the
// kernel keeps otherwise than it was written (a leading space) fails the
// check, naming the sysctl.
func TestIPCInfo(t *testing.T) {
	needRoot(t)
	v := &ipc_var.IpcVarEntry{SemCtls: []uint32{300, 40000, 64, 200}, MsgCtlmax: proto.Uint32(4000),
		MsgCtlmnb: proto.Uint32(20000), MsgCtlmni: proto.Uint32(1000), AutoMsgmni: proto.Uint32(0),
		ShmCtlmax: proto.Uint64(1 << 30), ShmCtlall: proto.Uint64(1 << 21), ShmCtlmni: proto.Uint32(2048),
		ShmRmidForced: proto.Uint32(0), MqQueuesMax: proto.Uint32(77), MqMsgMax: proto.Uint32(12),
		MqMsgsizeMax: proto.Uint32(9000)}
	inNewIPC(t, func() {
		before, err := ipcInfo()
		if err != nil {
			t.Error(err)
			return
		}
		for path, val := range before {
			b, err := os.ReadFile("/proc/sys/" + path)
			if err != nil {
				t.Error(err)
				continue
			}
			if got := strings.Join(strings.Fields(string(b)), " "); got != val {
				t.Errorf("%s: /proc/sys has %q, IPC_INFO %q", path, got, val)
			}
		}
		if err := writeIPCSysctls(v); err != nil {
			t.Errorf("writeIPCSysctls: %v", err)
		}
		after, err := ipcInfo()
		if err != nil {
			t.Error(err)
			return
		}
		for path, want := range map[string]string{"kernel/sem": "300 40000 64 200", "kernel/msgmax": "4000",
			"kernel/msgmnb": "20000", "kernel/msgmni": "1000", "kernel/shmmax": "1073741824",
			"kernel/shmall": "2097152", "kernel/shmmni": "2048"} {
			if after[path] != want {
				t.Errorf("%s: IPC_INFO %q after the write, want %q", path, after[path], want)
			}
		}
		err = checkIPCSysctls([]ipcSysctl{{"kernel/msgmax", "4000"}, {"kernel/shmmni", " 2048"}})
		if err == nil || !strings.Contains(err.Error(), `sysctl kernel/shmmni = " 2048" was written, but the IPC namespace has "2048"`) {
			t.Errorf("a value that does not hold: %v", err)
		}
	})
}
