// Package sysvipc holds what crest dump and crest restore both need to
// reach SysV IPC objects that golang.org/x/sys/unix does not wrap: the
// kernel's semid64_ds and msqid64_ds and a raw call of the ipc syscalls.
package sysvipc

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// SemidDS is the kernel's struct semid64_ds on x86-64.
type SemidDS struct {
	Perm  unix.SysvIpcPerm
	Otime int64
	_     uint64
	Ctime int64
	_     uint64
	Nsems uint64
	_     [2]uint64
}

// MsqidDS is the kernel's struct msqid64_ds on x86-64.
type MsqidDS struct {
	Perm                 unix.SysvIpcPerm
	Stime, Rtime, Ctime  int64
	Cbytes, Qnum, Qbytes uint64
	Lspid, Lrpid         int32
	_                    [2]uint64
}

// Call makes the ipc syscall trap (semget, semctl, msgrcv ...) with up to
// six arguments; a failure is an os.SyscallError named name.
func Call(name string, trap uintptr, args ...uintptr) (int, error) {
	if len(args) > 6 {
		panic(fmt.Sprintf("sysvipc.Call(%s): %d arguments", name, len(args)))
	}
	var a [6]uintptr
	copy(a[:], args)
	r, _, errno := unix.Syscall6(trap, a[0], a[1], a[2], a[3], a[4], a[5])
	if errno != 0 {
		return -1, os.NewSyscallError(name, errno)
	}
	return int(r), nil
}
