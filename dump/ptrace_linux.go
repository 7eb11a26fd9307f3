package dump

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds the raw ptrace and syscall wrappers the dumper needs
// beyond golang.org/x/sys/unix. Each returns an *os.SyscallError naming
// the request.

func ptrace(req uintptr, tid int, addr, data uintptr) (uintptr, error) {
	r, _, e := unix.Syscall6(unix.SYS_PTRACE, req, uintptr(tid), addr, data, 0, 0)
	if e != 0 {
		return 0, e
	}
	return r, nil
}

// getRegset reads the register set nt of thread tid into buf and returns
// how many bytes the kernel filled.
func getRegset(tid int, nt uintptr, buf []byte) (int, error) {
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if _, err := ptrace(unix.PTRACE_GETREGSET, tid, nt, uintptr(unsafe.Pointer(&iov))); err != nil {
		return 0, os.NewSyscallError(fmt.Sprintf("ptrace(PTRACE_GETREGSET, %#x)", nt), err)
	}
	return int(iov.Len), nil
}

// getSigmask returns the blocked signal mask of thread tid.
func getSigmask(tid int) (uint64, error) {
	var mask uint64
	if _, err := ptrace(unix.PTRACE_GETSIGMASK, tid, 8, uintptr(unsafe.Pointer(&mask))); err != nil {
		return 0, os.NewSyscallError("ptrace(PTRACE_GETSIGMASK)", err)
	}
	return mask, nil
}

// rseqConfig is struct ptrace_rseq_configuration.
type rseqConfig struct {
	Pointer   uint64
	Size      uint32
	Signature uint32
	Flags     uint32
	_         uint32
}

func getRseq(tid int) (rseqConfig, error) {
	var c rseqConfig
	_, err := ptrace(unix.PTRACE_GET_RSEQ_CONFIGURATION, tid, unsafe.Sizeof(c), uintptr(unsafe.Pointer(&c)))
	if err != nil {
		return c, os.NewSyscallError("ptrace(PTRACE_GET_RSEQ_CONFIGURATION)", err)
	}
	return c, nil
}

// userDesc is struct user_desc of the x86 TLS (GDT) entries.
type userDesc struct {
	EntryNumber uint32
	BaseAddr    uint32
	Limit       uint32
	Flags       uint32 // seg_32bit:1 contents:2 read_exec_only:1 limit_in_pages:1 seg_not_present:1 useable:1 lm:1
}

func getThreadArea(tid int, entry uint32) (userDesc, error) {
	var d userDesc
	if _, err := ptrace(unix.PTRACE_GET_THREAD_AREA, tid, uintptr(entry), uintptr(unsafe.Pointer(&d))); err != nil {
		return d, os.NewSyscallError("ptrace(PTRACE_GET_THREAD_AREA)", err)
	}
	return d, nil
}

const siginfoSize = 128

// peekSiginfo returns the queued siginfos of thread tid (shared: the
// process's shared queue), without dequeuing them.
func peekSiginfo(tid int, shared bool) ([][]byte, error) {
	type peekArgs struct {
		Off   uint64
		Flags uint32
		Nr    int32
	}
	var out [][]byte
	buf := make([]byte, 32*siginfoSize)
	for {
		a := peekArgs{Off: uint64(len(out)), Nr: 32}
		if shared {
			a.Flags = 1 // PTRACE_PEEKSIGINFO_SHARED
		}
		n, err := ptrace(unix.PTRACE_PEEKSIGINFO, tid, uintptr(unsafe.Pointer(&a)), uintptr(unsafe.Pointer(&buf[0])))
		if err != nil {
			return nil, os.NewSyscallError("ptrace(PTRACE_PEEKSIGINFO)", err)
		}
		if n == 0 {
			return out, nil
		}
		for i := 0; i < int(n); i++ {
			out = append(out, append([]byte(nil), buf[i*siginfoSize:(i+1)*siginfoSize]...))
		}
	}
}

// getRobustList returns the robust futex list head and length of tid.
func getRobustList(tid int) (uint64, uint64, error) {
	var head, size uint64
	_, _, e := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(tid), uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&size)))
	if e != 0 {
		return 0, 0, os.NewSyscallError("get_robust_list", e)
	}
	return head, size, nil
}

// kcmp types (linux/kcmp.h).
const (
	kcmpFile    = 0
	kcmpVM      = 1
	kcmpFiles   = 2
	kcmpFS      = 3
	kcmpSighand = 4
)

// kcmpEqual reports whether pid1's and pid2's kernel objects of type typ
// (for kcmpFile: their fds idx1 and idx2) are the same.
func kcmpEqual(pid1, pid2, typ, idx1, idx2 int) (bool, error) {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), uintptr(typ), uintptr(idx1), uintptr(idx2), 0)
	if e != 0 {
		return false, os.NewSyscallError("kcmp", e)
	}
	return r == 0, nil
}

// readRemote reads len(b) bytes at addr of process pid.
func readRemote(pid int, addr uint64, b []byte) error {
	local := []unix.Iovec{{Base: &b[0]}}
	local[0].SetLen(len(b))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}
	n, err := unix.ProcessVMReadv(pid, local, remote, 0)
	if err != nil {
		return os.NewSyscallError(fmt.Sprintf("process_vm_readv(%#x, %d)", addr, len(b)), err)
	}
	if n != len(b) {
		return fmt.Errorf("process_vm_readv(%#x, %d): short read of %d bytes", addr, len(b), n)
	}
	return nil
}

func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
func le16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }
