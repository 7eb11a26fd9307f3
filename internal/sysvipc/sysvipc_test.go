package sysvipc

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestLayouts: IPC_STAT fills SemidDS and MsqidDS where the kernel puts
// its fields (a semaphore set of 3, a queue holding one 5-byte message),
// and a failing call is a SyscallError with its name.
func TestLayouts(t *testing.T) {
	sem, err := Call("semget", unix.SYS_SEMGET, unix.IPC_PRIVATE, 3, 0o600|unix.IPC_CREAT)
	if err != nil {
		t.Fatal(err)
	}
	defer Call("semctl(IPC_RMID)", unix.SYS_SEMCTL, uintptr(sem), 0, unix.IPC_RMID)
	var sds SemidDS
	if _, err := Call("semctl(IPC_STAT)", unix.SYS_SEMCTL, uintptr(sem), 0, unix.IPC_STAT, uintptr(unsafe.Pointer(&sds))); err != nil {
		t.Fatal(err)
	}
	if sds.Nsems != 3 || sds.Perm.Mode&0o777 != 0o600 || sds.Perm.Uid != uint32(os.Getuid()) {
		t.Errorf("semid64_ds %+v: want 3 semaphores, mode 0600, uid %d", sds, os.Getuid())
	}

	msq, err := Call("msgget", unix.SYS_MSGGET, unix.IPC_PRIVATE, 0o640|unix.IPC_CREAT)
	if err != nil {
		t.Fatal(err)
	}
	defer Call("msgctl(IPC_RMID)", unix.SYS_MSGCTL, uintptr(msq), unix.IPC_RMID, 0)
	msg := struct {
		typ  int64
		text [5]byte
	}{1, [5]byte{'h', 'e', 'l', 'l', 'o'}}
	if _, err := Call("msgsnd", unix.SYS_MSGSND, uintptr(msq), uintptr(unsafe.Pointer(&msg)), 5, unix.IPC_NOWAIT); err != nil {
		t.Fatal(err)
	}
	var mds MsqidDS
	if _, err := Call("msgctl(IPC_STAT)", unix.SYS_MSGCTL, uintptr(msq), unix.IPC_STAT, uintptr(unsafe.Pointer(&mds))); err != nil {
		t.Fatal(err)
	}
	if mds.Qnum != 1 || mds.Cbytes != 5 || mds.Qbytes == 0 || mds.Lspid != int32(os.Getpid()) || mds.Perm.Mode&0o777 != 0o640 {
		t.Errorf("msqid64_ds %+v: want 1 message of 5 bytes, last sender %d, mode 0640", mds, os.Getpid())
	}

	_, err = Call("semctl(IPC_STAT)", unix.SYS_SEMCTL, ^uintptr(0), 0, unix.IPC_STAT, uintptr(unsafe.Pointer(&sds)))
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "semctl(IPC_STAT)" || !errors.Is(err, syscall.EINVAL) {
		t.Errorf("a bad id: %v, want semctl(IPC_STAT): EINVAL", err)
	}
}
