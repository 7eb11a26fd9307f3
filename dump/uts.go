package dump

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/utsns"

	"github.com/crest-restore/crest/images"
)

// UTS, IPC and net namespaces, as CRIU (criu/namespaces.c) takes them: a
// tree whose root is in crest's own shares them with the host and has no
// image of them; a root in one of its own makes it the tree's, dumped
// into utsns-ID.img, ipcns-*-ID.img and the net images (netns.go; ID its
// id in ids-*.img), and every other task must be in it too (CRIU dumps no
// nested UTS or IPC ones, crest no other net ones, and a task back in
// crest's could not be restored).

// checkUTSIPC decides whether the tree has UTS, IPC and net namespaces of
// its own and refuses tasks that are in others than the root's.
func (d *dumper) checkUTSIPC() error {
	root := d.tree.root
	for _, kind := range []string{"uts", "ipc", "net", "mnt"} {
		rootIno, err := nsInode(root.pid, kind)
		if err != nil {
			return fmt.Errorf("%s: %w", root, err)
		}
		own := rootIno != d.ns.own[kind]
		for _, t := range d.tree.tasks {
			if t.dead != nil || t == root {
				continue // a zombie has left its namespaces
			}
			ino, err := nsInode(t.pid, kind)
			if err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			if ino != rootIno {
				why := "a task in a " + kind + " namespace other than the root's is not supported (nor by CRIU)"
				if kind == "net" {
					why = "a task in a net namespace other than the root's is not supported (CRIU dumps it; crest restores only the root's own)"
				}
				if !own {
					why = "a nested " + kind + " namespace is not supported: only the root's own"
				}
				return &UnsupportedError{Task: t.pid, Resource: kind + " namespace", Why: why}
			}
		}
		switch kind {
		case "uts":
			d.ownUTS = own
		case "ipc":
			d.ownIPC = own
		case "net":
			d.setNet(own, rootIno) // netns.go
		case "mnt":
			d.ownMnt = own // mntns.go
		}
	}
	return nil
}

// writeNamespaces writes the images of the tree's own UTS and IPC
// namespaces, read from inside them.
func (d *dumper) writeNamespaces() error {
	if !d.ownUTS && !d.ownIPC && !d.ownNet {
		return nil
	}
	root := d.tree.root
	var flags int
	if d.ownUTS {
		flags |= unix.CLONE_NEWUTS
	}
	if d.ownIPC {
		flags |= unix.CLONE_NEWIPC
	}
	if d.ownNet {
		flags |= unix.CLONE_NEWNET
	}
	return inNamespaces(root.pid, flags, func() error {
		if d.ownUTS {
			if err := d.writeUTS(); err != nil {
				return err
			}
		}
		if d.ownIPC {
			if err := d.writeIPC(); err != nil {
				return err
			}
		}
		if d.ownNet {
			return d.writeNet() // netns.go
		}
		return nil
	})
}

// writeUTS writes the hostname and domain name of the UTS namespace the
// calling thread is in, as CRIU's dump_uts_ns does (uname).
func (d *dumper) writeUTS() error {
	ino, err := nsInode(d.tree.root.pid, "uts")
	if err != nil {
		return err
	}
	name := fmt.Sprintf("utsns-%d.img", d.ns.id(ino))
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return fmt.Errorf("%s: %w", name, os.NewSyscallError("uname", err))
	}
	e := &utsns.UtsnsEntry{Nodename: proto.String(unix.ByteSliceToString(u.Nodename[:])),
		Domainname: proto.String(unix.ByteSliceToString(u.Domainname[:]))}
	return d.write(name, images.KindUTSNS, images.Entry{Message: e})
}

// inNamespaces runs fn on an OS thread locked for it that has joined the
// namespaces flags of task pid (through a pidfd), and that goes back to
// crest's own before it is let go; if it can not, it stays locked and
// ends with its goroutine. It checks it is in the task's namespaces, not
// crest's, before fn runs.
func inNamespaces(pid, flags int, fn func() error) error {
	kinds := map[int]string{unix.CLONE_NEWUTS: "uts", unix.CLONE_NEWIPC: "ipc", unix.CLONE_NEWNET: "net"}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var back []int // fds of crest's namespaces, by kinds' order
		var flagsBack []int
		closeBack := func() {
			for _, fd := range back {
				unix.Close(fd)
			}
		}
		for flag, kind := range kinds {
			if flags&flag == 0 {
				continue
			}
			fd, err := unix.Open("/proc/thread-self/ns/"+kind, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				closeBack()
				runtime.UnlockOSThread()
				done <- &os.PathError{Op: "open", Path: "/proc/thread-self/ns/" + kind, Err: err}
				return
			}
			back, flagsBack = append(back, fd), append(flagsBack, flag)
		}
		err := joinNamespaces(pid, flags, kinds)
		if err == nil {
			err = fn()
		}
		var errs []error
		for i, fd := range back {
			if serr := unix.Setns(fd, flagsBack[i]); serr != nil {
				errs = append(errs, fmt.Errorf("back to crest's %s namespace: %w", kinds[flagsBack[i]], os.NewSyscallError("setns", serr)))
			}
		}
		closeBack()
		if len(errs) == 0 {
			runtime.UnlockOSThread()
		}
		done <- errors.Join(append([]error{err}, errs...)...)
	}()
	return <-done
}

func joinNamespaces(pid, flags int, kinds map[int]string) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("task %d: %w", pid, os.NewSyscallError("pidfd_open", err))
	}
	defer unix.Close(pidfd)
	if err := unix.Setns(pidfd, flags); err != nil {
		return fmt.Errorf("task %d: joining its namespaces %#x: %w", pid, flags, os.NewSyscallError("setns", err))
	}
	for flag, kind := range kinds {
		if flags&flag == 0 {
			continue
		}
		var self, task unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/"+kind, &self); err != nil {
			return &os.PathError{Op: "stat", Path: "/proc/thread-self/ns/" + kind, Err: err}
		}
		if err := unix.Stat(procPath(pid, "ns", kind), &task); err != nil {
			return &os.PathError{Op: "stat", Path: procPath(pid, "ns", kind), Err: err}
		}
		if self.Ino != task.Ino {
			return fmt.Errorf("task %d: joined %s namespace %d, not its %d", pid, kind, self.Ino, task.Ino)
		}
	}
	return nil
}
