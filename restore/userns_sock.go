package restore

import (
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// The owner of the sockets of a tree with a user namespace of its own.
// A socket's inode belongs to the fsuid and fsgid of whoever made it
// (sock_alloc; for TCP, UDP and netlink the socket's sk_uid, shown in
// /proc/net/* and sock_diag, is taken from it). CRIU's restore makes the
// tree's sockets in its tasks, which it has made root inside first
// (prepare_userns_creds: setuid(0), setgid(0)), so they belong to the ids
// the namespace's root maps to; the engine makes them outside, as host
// root, which the namespace does not map (the overflow id inside). So the
// engine makes each socket (socket(2), socketpair(2), the accept4(2) that
// makes the accepted end of a unix connection) with its thread's fsuid
// and fsgid set to those ids for that one call, and back: setfsuid and
// setfsgid are the calling thread's only. Nothing else is done with
// those ids: leaving fsuid 0 drops the file system capabilities from the
// effective set (cap_task_fix_setuid; CAP_NET_ADMIN for TCP_REPAIR,
// CAP_NET_BIND_SERVICE and CAP_NET_RAW are not among them), which binding
// a unix socket to a path and its chown need; going back to 0 raises them
// again. Any change of fsuid or fsgid also makes the process not dumpable
// (commit_creds sets it to fs.suid_dumpable): the engine would stay so,
// and the file holder forked from it after, which the tasks could then
// no longer take files from (ptrace_may_access wants CAP_SYS_PTRACE over
// a process that is not dumpable); it is made dumpable again.
//
// CRIU's restore of a tree whose namespace does not map root fails (its
// setuid(0) there is refused); crest refuses such a tree when it has a
// socket to make, and restores the others.

// suidDumpUser is PR_GET_DUMPABLE's "dumpable" (SUID_DUMP_USER).
const suidDumpUser = 1

// sockOwner is who the engine makes a tree's sockets as: host ids. nil
// is the engine itself, and costs no system call.
type sockOwner struct {
	uid, gid int
}

// planSockOwner gives every socket of the plan the ids the root of u
// maps to (the unix sockets through their set, which the engine makes
// at once).
func (p *Plan) planSockOwner(u *UserNamespace) error {
	var socks []*File
	for _, id := range slices.Sorted(maps.Keys(p.Files)) {
		switch f := p.Files[id]; {
		case f.Kind == FileUnixSocket && f.Unix != nil && f.Unix.set != nil,
			f.Kind == FileInetSocket && f.Inet != nil,
			f.Kind == FileNetlinkSocket && f.Netlink != nil,
			f.Kind == FilePacketSocket && f.Packet != nil:
			socks = append(socks, f)
		}
	}
	if len(socks) == 0 {
		return nil
	}
	uid, uok := hostID(u.UIDMap, 0)
	gid, gok := hostID(u.GIDMap, 0)
	if !uok || !gok {
		return &PlanError{File: u.File, Msg: fmt.Sprintf("the namespace's root (uid 0, gid 0) is not in its maps, and the tree's sockets (file %d first) are made as it: CRIU's restore refuses such a namespace (its setuid(0) inside fails)", socks[0].ID)}
	}
	o := &sockOwner{uid: int(uid), gid: int(gid)}
	for _, f := range socks {
		switch f.Kind {
		case FileUnixSocket:
			f.Unix.set.owner = o
		case FileInetSocket:
			f.Inet.owner = o
		case FileNetlinkSocket:
			f.Netlink.owner = o
		case FilePacketSocket:
			f.Packet.owner = o
		}
	}
	return nil
}

// makeSocket runs mk, a system call that makes sockets, as o: with the
// calling thread's fsgid and fsuid set to o's for it, then back. The
// error is mk's, or one of setting the ids (setfsuid and setfsgid report
// no error: the ids are read back).
func (o *sockOwner) makeSocket(mk func() error) error {
	if o == nil {
		return mk()
	}
	runtime.LockOSThread()
	dumpable, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return os.NewSyscallError("prctl(PR_GET_DUMPABLE)", err)
	}
	oldGID, _ := unix.SetfsgidRetGid(o.gid)
	oldUID, _ := unix.SetfsuidRetUid(o.uid)
	// -1 changes nothing and returns the current id
	gid, _ := unix.SetfsgidRetGid(-1)
	uid, _ := unix.SetfsuidRetUid(-1)
	if uid != o.uid || gid != o.gid {
		err = fmt.Errorf("making a socket as %d:%d, the namespace's root: fsuid %d fsgid %d: %w", o.uid, o.gid, uid, gid,
			os.NewSyscallError("setfsuid", syscall.EPERM))
	} else {
		err = mk()
	}
	unix.SetfsuidRetUid(oldUID)
	unix.SetfsgidRetGid(oldGID)
	gid, _ = unix.SetfsgidRetGid(-1)
	uid, _ = unix.SetfsuidRetUid(-1)
	if uid != oldUID || gid != oldGID {
		// the thread keeps ids that are not the engine's: it stays
		// locked, and the runtime ends it with its goroutine
		return fmt.Errorf("fsuid %d fsgid %d back to %d:%d after making a socket: %w", uid, gid, oldUID, oldGID,
			os.NewSyscallError("setfsuid", syscall.EPERM))
	}
	runtime.UnlockOSThread()
	if dumpable != suidDumpUser {
		return err // not ours to raise
	}
	if derr := unix.Prctl(unix.PR_SET_DUMPABLE, suidDumpUser, 0, 0, 0); derr != nil && err == nil {
		err = fmt.Errorf("dumpable again after making a socket: %w", os.NewSyscallError("prctl(PR_SET_DUMPABLE)", derr))
	}
	return err
}
