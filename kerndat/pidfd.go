package kerndat

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// PidfdOpen reports whether pidfd_open(2) works: it opens a pidfd for crest
// itself and checks the fdinfo names our pid.
var PidfdOpen = NewProbe(PidfdOpenName, Restore|Dump, func() Feature {
	return probePidfdOpen(os.Getpid())
})

// PidfdGetfd reports whether pidfd_getfd(2) works, as the restored tasks will
// use it to take the files the engine opened: it takes the read end of a
// pipe from crest itself through a pidfd and checks that the copy is the
// same pipe.
var PidfdGetfd = NewProbe(PidfdGetfdName, Restore|Dump, probeSelfGetfd)

func probeSelfGetfd() Feature {
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return Missing("pidfd_open(%d): %s", os.Getpid(), ErrText(err))
	}
	defer unix.Close(pidfd)
	r, w, err := os.Pipe()
	if err != nil {
		return Missing("pipe2: %s", ErrText(err))
	}
	defer r.Close()
	defer w.Close()
	f := probePidfdGetfd(pidfd, int(r.Fd()))
	if f.OK {
		f.Reason = fmt.Sprintf("from ourselves (pidfd_open(%d)): %s", os.Getpid(), f.Reason)
	}
	return f
}

func probePidfdOpen(pid int) Feature {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return Missing("pidfd_open(%d): %s", pid, ErrText(err))
	}
	defer unix.Close(pidfd)
	nspid, err := pidfdNSpid(pidfd)
	if err != nil {
		return Missing("pidfd_open(%d) gave fd %d, but %v", pid, pidfd, err)
	}
	if nspid[0] != pid {
		return Missing("pidfd_open(%d) gave fd %d for pid %d", pid, pidfd, nspid[0])
	}
	return OK("pidfd_open(%d) gave a pidfd whose fdinfo names pid %d", pid, nspid[0])
}

// probePidfdGetfd takes fd from the process behind pidfd and checks that the
// copy refers to the same file as our own fd of that number (so it is
// meant for a pidfd of crest itself).
func probePidfdGetfd(pidfd, fd int) Feature {
	call := fmt.Sprintf("pidfd_getfd(pidfd, %d)", fd)
	var want unix.Stat_t
	if err := unix.Fstat(fd, &want); err != nil {
		return Missing("fstat(%d): %s", fd, ErrText(err))
	}
	got, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return Missing("%s: %s", call, ErrText(err))
	}
	defer unix.Close(got)
	var st unix.Stat_t
	if err := unix.Fstat(got, &st); err != nil {
		return Missing("%s gave fd %d, but fstat: %s", call, got, ErrText(err))
	}
	if st.Dev != want.Dev || st.Ino != want.Ino {
		return Missing("%s gave fd %d for dev %d inode %d, want dev %d inode %d",
			call, got, st.Dev, st.Ino, want.Dev, want.Ino)
	}
	flags, err := unix.FcntlInt(uintptr(got), unix.F_GETFD, 0)
	if err != nil {
		return Missing("%s gave fd %d, but fcntl(F_GETFD): %s", call, got, ErrText(err))
	}
	cloexec := ""
	if flags&unix.FD_CLOEXEC != 0 {
		cloexec = ", close-on-exec as the kernel sets it"
	}
	return OK("%s gave fd %d, the same pipe (inode %d)%s", call, got, st.Ino, cloexec)
}
