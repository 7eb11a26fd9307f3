package restore

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/test/fixture"
)

// netUnix returns the unix sockets of /proc/PID/net/unix (the net
// namespace of PID): the path of each (empty when none) by inode.
func netUnix(t *testing.T, pid string) map[uint64]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]string{}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 7 {
			continue
		}
		ino, err := strconv.ParseUint(f[6], 10, 64)
		if err != nil {
			t.Fatalf("/proc/%s/net/unix: %q: %v", pid, l, err)
		}
		if len(f) > 7 {
			out[ino] = f[7]
		} else {
			out[ino] = ""
		}
	}
	return out
}

// socketInodes returns the inodes of the sockets pid holds, by fd.
func socketInodes(t *testing.T, pid string) map[string]uint64 {
	t.Helper()
	fds, err := os.ReadDir("/proc/" + pid + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, fd := range fds {
		name, _ := os.Readlink("/proc/" + pid + "/fd/" + fd.Name())
		if s, ok := strings.CutPrefix(name, "socket:["); ok {
			ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
			if err != nil {
				t.Fatalf("fd %s: %q: %v", fd.Name(), name, err)
			}
			out[fd.Name()] = ino
		}
	}
	return out
}

// dialInTree connects to the unix stream socket at path in the mount and
// net namespaces of pid, from a thread of ours that joined them (and ends
// with its goroutine), and returns the connection.
func dialInTree(pid int, path string) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	done := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread ends here
		var fds []int
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		for _, ns := range []string{"mnt", "net"} {
			fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/ns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				done <- res{err: err}
				return
			}
			fds = append(fds, fd)
		}
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			done <- res{err: os.NewSyscallError("unshare", err)}
			return
		}
		for i, flag := range []int{unix.CLONE_NEWNS, unix.CLONE_NEWNET} {
			if err := unix.Setns(fds[i], flag); err != nil {
				done <- res{err: os.NewSyscallError("setns", err)}
				return
			}
		}
		c, err := net.DialTimeout("unix", path, 10*time.Second)
		done <- res{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// checkOurNetThreads checks that every thread of ours is in our net
// namespace.
func checkOurNetThreads(t *testing.T, own uint64) {
	t.Helper()
	tids, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range tids {
		ino, err := nsIno("/proc/self/task/" + tid.Name() + "/ns/net")
		if err == nil && ino != own {
			t.Errorf("our thread %s is in net namespace %d, not ours %d", tid.Name(), ino, own)
		}
	}
}

// TestRestoreMntFilesNet restores crest dump's images of mntfilesnet
// (mntfiles in a net namespace of its own too): its unix sockets are
// bound by their paths in the tree's mount namespace and are sockets of
// the tree's net namespace (its /proc/net/unix has each the root holds,
// with the paths; ours has none), a connection made by the listener's
// path inside both namespaces is answered, and the workload runs on.
func TestRestoreMntFilesNet(t *testing.T) {
	own := ourMntNS(t)
	ownNet, err := nsIno("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	p, imgs := dumpedWorkload(t, "mntfilesnet", mntfilesLogs, 3, dump.Options{})
	plan := planDir(t, imgs)
	if plan.Net == nil {
		t.Fatal("the plan has no net namespace")
	}
	out, r := mntfilesRun(t, imgs, p.Dir)
	checkOurThreads(t, own)
	checkOurNetThreads(t, ownNet)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntfilesnet wrote:\n%s", out)
	}
	checkMntFiles(t, r, p.Dir)
	if m := ourMounts(t, p.Dir); len(m) > 0 {
		t.Errorf("mounts of the tree in our namespace:\n%s", strings.Join(m, "\n"))
	}

	root := strconv.Itoa(r.RootPID())
	theirNet, err := nsIno("/proc/" + root + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if theirNet == ownNet {
		t.Fatalf("the tree is in our net namespace %d", ownNet)
	}
	theirs, ours := netUnix(t, root), netUnix(t, "self")
	socks := socketInodes(t, root)
	if len(socks) != 5 {
		t.Errorf("the root holds sockets %v, want 5 (listener, client, accepted, bound and unbound datagram)", socks)
	}
	for fd, ino := range socks {
		if _, ok := theirs[ino]; !ok {
			t.Errorf("fd %s (socket:[%d]) is not in the tree's /proc/net/unix", fd, ino)
		}
		if _, ok := ours[ino]; ok {
			t.Errorf("fd %s (socket:[%d]) is in our net namespace's /proc/net/unix", fd, ino)
		}
	}
	for _, name := range []string{filepath.Join(p.Dir, "scratch/stream.sock"), "scratch/dgram.sock"} {
		found := false
		for ino, path := range theirs {
			if path == name {
				found = true
				if _, ok := ours[ino]; ok {
					t.Errorf("socket:[%d] at %s is in our net namespace too", ino, name)
				}
			}
		}
		if !found {
			t.Errorf("no socket bound to %s in the tree's /proc/net/unix", name)
		}
	}

	c, err := dialInTree(r.RootPID(), filepath.Join(p.Dir, "scratch/stream.sock"))
	if err != nil {
		t.Fatalf("connect to the restored listener inside the tree's namespaces: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if l, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.HasPrefix(l, "pong ") {
		t.Errorf("the restored listener answered %q, %v", l, err)
	}
	out = waitLog(t, p.Dir, "out-mntfiles.log", logSize(p.Dir, "out-mntfiles.log"), lines(3))
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntfilesnet wrote after the connection:\n%s", out)
	}
}

// TestRestoreMntFilesNetFails: a restore of mntfilesnet whose datagram
// socket is bound, in the tree's namespaces, to a path on the root mount
// (the host's directory) while its image names the tmpfs fails in
// PREPARE_NAMESPACES and leaves nothing behind: no process, no fd, no
// mount, no socket file in the host's directory, no thread of ours in
// another net namespace.
func TestRestoreMntFilesNetFails(t *testing.T) {
	own := ourMntNS(t)
	ownNet, err := nsIno("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer checkOurThreads(t, own)
	defer checkOurNetThreads(t, ownNet)
	p, imgs := dumpedWorkload(t, "mntfilesnet", mntfilesLogs, 3, dump.Options{})
	left := filepath.Join(p.Dir, "left.sock")
	dir := fixture.CopyDir(t, imgs)
	editUnix(t, dir, "dgram.sock\x00", func(fe *fdinfo.FileEntry) {
		fe.GetUsk().Name = append([]byte("left.sock"), 0)
	})
	plan := planDir(t, dir)
	kids, fds := childrenOfOurs(t), dirNames(t, "/proc/self/fd")
	r, err := Start(context.Background(), plan, Options{})
	if err == nil {
		abortAtCleanup(t, r, plan)
		t.Fatal("the restore did not fail")
	}
	var se *StageError
	if !errors.As(err, &se) || se.Stage != StagePrepareNamespaces || !strings.Contains(err.Error(), "not the socket's") {
		t.Errorf("error %v, want one of PREPARE_NAMESPACES with %q", err, "not the socket's")
	}
	if now := childrenOfOurs(t); len(now) > len(kids) {
		t.Errorf("processes left: %v (before: %v)", now, kids)
	}
	if now := dirNames(t, "/proc/self/fd"); now != fds {
		t.Errorf("our fds: %s, before the restore: %s", now, fds)
	}
	if m := ourMounts(t, p.Dir); len(m) > 0 {
		t.Errorf("mounts left in our namespace:\n%s", strings.Join(m, "\n"))
	}
	if _, err := os.Lstat(left); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: %v, want no socket file left", left, err)
	}
}
