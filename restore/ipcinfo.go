package restore

import (
	"fmt"
	"strconv"
	"unsafe"

	ipc_var "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-var"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/internal/sysvipc"
)

// The IPC sysctls are written through /proc/sys, whose lookup kernel
// 6.18 sometimes resolves to another IPC namespace's table while that one
// is being made or read at the same moment (seen from the workloads: a
// /proc/sys read gave another namespace's value while IPC_INFO gave the
// right one). So after writing them the engine asks the namespace itself,
// through the IPC_INFO commands of msgctl, shmctl and semctl, which always
// answer for the caller's namespace, writes again what does not hold, and
// fails naming the sysctl when it still does not.

// ipcInfoCmd is IPC_INFO of linux/ipc.h (x/sys/unix has no name for it).
const ipcInfoCmd = 3

// The kernel's struct msginfo, struct seminfo and struct shminfo64.
type msgInfo struct {
	Pool, Map, Max, Mnb, Mni, Ssz, Tql int32
	Seg                                uint16
	_                                  uint16
}

type semInfo struct {
	Map, Mni, Mns, Mnu, Msl, Opm, Ume, Usz, Vmx, Aem int32
}

type shmInfo struct {
	Max, Min, Mni, Seg, All uint64
	_                       [4]uint64
}

// ipcInfo is what the calling thread's IPC namespace says of the sysctls
// restoreIPC writes, by their paths under /proc/sys.
func ipcInfo() (map[string]string, error) {
	var mi msgInfo
	var si semInfo
	var hi shmInfo
	if _, err := sysvipc.Call("msgctl(IPC_INFO)", unix.SYS_MSGCTL, 0, ipcInfoCmd, uintptr(unsafe.Pointer(&mi))); err != nil {
		return nil, err
	}
	if _, err := sysvipc.Call("semctl(IPC_INFO)", unix.SYS_SEMCTL, 0, 0, ipcInfoCmd, uintptr(unsafe.Pointer(&si))); err != nil {
		return nil, err
	}
	if _, err := sysvipc.Call("shmctl(IPC_INFO)", unix.SYS_SHMCTL, 0, ipcInfoCmd, uintptr(unsafe.Pointer(&hi))); err != nil {
		return nil, err
	}
	i := func(v int32) string { return strconv.FormatInt(int64(v), 10) }
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	return map[string]string{
		"kernel/sem":    fmt.Sprintf("%d %d %d %d", si.Msl, si.Mns, si.Opm, si.Mni),
		"kernel/msgmax": i(mi.Max), "kernel/msgmnb": i(mi.Mnb), "kernel/msgmni": i(mi.Mni),
		"kernel/shmmax": u(hi.Max), "kernel/shmall": u(hi.All), "kernel/shmmni": u(hi.Mni),
	}, nil
}

// writeIPCSysctls writes the sysctls of v (ipcSysctls) into the calling
// thread's IPC namespace and makes sure those IPC_INFO shows hold there.
func writeIPCSysctls(v *ipc_var.IpcVarEntry) error {
	want := ipcSysctls(v)
	for _, s := range want {
		if err := writeSysctl(s.path, s.value); err != nil {
			return err
		}
	}
	return checkIPCSysctls(want)
}

// checkIPCSysctls compares want with IPC_INFO, writes again what differs
// and looks again, a few times, before it fails naming the sysctl.
func checkIPCSysctls(want []ipcSysctl) error {
	const tries = 5
	for try := 1; ; try++ {
		got, err := ipcInfo()
		if err != nil {
			return err
		}
		var wrong *ipcSysctl
		for i, s := range want {
			if g, ok := got[s.path]; ok && g != s.value {
				if try == tries {
					return fmt.Errorf("sysctl %s = %q was written, but the IPC namespace has %q (IPC_INFO)", s.path, s.value, g)
				}
				wrong = &want[i]
				if err := writeSysctl(s.path, s.value); err != nil {
					return err
				}
			}
		}
		if wrong == nil {
			return nil
		}
	}
}
