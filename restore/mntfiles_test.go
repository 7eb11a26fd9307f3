package restore

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/fixture"
)

var mntfilesLogs = map[string]check.Next{"out-mntfiles.log": check.Counter}

// mntfilesPaths are the files the workload mntfiles keeps on its tmpfs,
// with the mode each must have in the tree's namespace.
var mntfilesPaths = map[string]uint32{
	"scratch/fifo":        unix.S_IFIFO | 0o640,
	"scratch/stream.sock": unix.S_IFSOCK | 0o660,
	"scratch/dgram.sock":  unix.S_IFSOCK | 0o600,
}

// mntfilesRun restores the mntfiles images in dir, whose workload ran in
// wdir, and returns what its log grew by and the restore.
func mntfilesRun(t *testing.T, dir, wdir string) (string, *Restore) {
	t.Helper()
	p := planDir(t, dir)
	if p.Mnt == nil || len(p.Fifos) != 1 {
		t.Fatalf("the plan has mount namespace %v and FIFOs %v, want one of each", p.Mnt, p.Fifos)
	}
	from := logSize(wdir, "out-mntfiles.log")
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	return waitLog(t, wdir, "out-mntfiles.log", from, lines(5)), r
}

// checkMntFiles checks the restored tree's files from outside (the
// workload checks them from inside): each is at its path in the tree's
// namespace (through /proc/ROOT/root) with its type and mode, none is in
// ours, the pty's ends are of the devpts the tree has at /dev/pts, not
// ours, and the listener answers a connection made by its path there.
func checkMntFiles(t *testing.T, r *Restore, wdir string) {
	t.Helper()
	root := "/proc/" + strconv.Itoa(r.RootPID()) + "/root"
	var theirs, ours unix.Stat_t
	if err := unix.Stat(root+"/dev/pts", &theirs); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/dev/pts", &ours); err != nil {
		t.Fatal(err)
	}
	if theirs.Dev == ours.Dev {
		t.Errorf("the tree's /dev/pts is our devpts (device %#x)", ours.Dev)
	}
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(r.RootPID()) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	ends := 0
	for _, fd := range fds {
		link := "/proc/" + strconv.Itoa(r.RootPID()) + "/fd/" + fd.Name()
		name, _ := os.Readlink(link)
		var st unix.Stat_t
		if !strings.HasPrefix(name, "/dev/pts/") || unix.Stat(link, &st) != nil {
			continue
		}
		ends++
		if st.Dev != theirs.Dev {
			t.Errorf("fd %s (%s) is on device %#x, not the tree's devpts %#x", fd.Name(), name, st.Dev, theirs.Dev)
		}
	}
	if ends != 1 {
		t.Errorf("%d fds of the root on /dev/pts/N, want 1 (the slave)", ends)
	}
	for name, mode := range mntfilesPaths {
		var st unix.Stat_t
		if err := unix.Lstat(root+filepath.Join(wdir, name), &st); err != nil {
			t.Errorf("in the tree's namespace: %v", err)
		} else if st.Mode != mode {
			t.Errorf("in the tree's namespace: %s: mode %#o, want %#o", name, st.Mode, mode)
		}
		if _, err := os.Lstat(filepath.Join(wdir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("in our namespace: %s: %v, want none", name, err)
		}
	}
	c, err := net.Dial("unix", root+filepath.Join(wdir, "scratch/stream.sock"))
	if err != nil {
		t.Fatalf("connect to the restored listener: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if l, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(l, "pong ") {
		t.Errorf("the restored listener answered %q, %v", l, err)
	}
	// The workload closes the connection after its answer; wait for that
	// so its accepted socket is gone before the caller looks at its fds
	// (accept makes that socket in our net namespace, the connecting
	// one's, so a check of the tree's sockets must not see it).
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		t.Errorf("after its answer the restored listener sent %q, %v; want it closed", rest, err)
	}
}

// TestRestoreMntFiles restores crest dump's images of mntfiles: its FIFO
// is opened in the tree's mount namespace on its tmpfs with the data it
// held, its unix sockets are bound there at their paths (an absolute
// and a relative name) with their modes, the client is connected to the
// listener by its path there, its pty is made in the devpts instance the
// tree has at /dev/pts; the workload uses them all, and nothing of them
// is in our namespace.
func TestRestoreMntFiles(t *testing.T) {
	own := ourMntNS(t)
	p, imgs := dumpedWorkload(t, "mntfiles", mntfilesLogs, 3, dump.Options{})
	out, r := mntfilesRun(t, imgs, p.Dir)
	checkOurThreads(t, own)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntfiles wrote:\n%s", out)
	}
	checkMntFiles(t, r, p.Dir)
	if m := ourMounts(t, p.Dir); len(m) > 0 {
		t.Errorf("mounts of the tree in our namespace:\n%s", strings.Join(m, "\n"))
	}
}

// The images of images/testdata/criu-4.2-mntfiles: CRIU 4.2's dump of the
// workload mntfiles, run in criuMntFilesDir.
const criuMntFilesDir = "/tmp/crest-criu-4.2-mntfiles"

// TestRestoreMntFilesCRIU restores CRIU 4.2's images of mntfiles
// (images/testdata/criu-4.2-mntfiles), its program and log put back where
// they were: the workload runs on with its FIFO, sockets and pty.
func TestRestoreMntFilesCRIU(t *testing.T) {
	needRoot(t)
	fx := filepath.Join("..", "images", "testdata", "criu-4.2-mntfiles")
	t.Cleanup(func() { os.RemoveAll(criuMntFilesDir) })
	putCRIUTestdata(t, fx, criuMntFilesDir)
	if err := os.Mkdir(filepath.Join(criuMntFilesDir, "scratch"), 0o755); err != nil {
		t.Fatal(err)
	}
	before := check.Snapshot(t, criuMntFilesDir, mntfilesLogs)
	out, r := mntfilesRun(t, filepath.Join(fx, "images"), criuMntFilesDir)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored mntfiles wrote:\n%s", out)
	}
	checkMntFiles(t, r, criuMntFilesDir)
	check.Logs(t, criuMntFilesDir, before, mntfilesLogs, 100*time.Millisecond)
}

// unixFileOf returns the unix socket entry of files.img in dir bound to
// a name ending in suffix.
func unixFileOf(img *images.Image, suffix string) *fdinfo.FileEntry {
	for _, e := range img.Entries {
		if fe := e.Message.(*fdinfo.FileEntry); fe.GetUsk() != nil && strings.HasSuffix(string(fe.GetUsk().GetName()), suffix) {
			return fe
		}
	}
	return nil
}

// editUnix edits the unix socket of files.img in dir bound to *suffix.
func editUnix(t *testing.T, dir, suffix string, edit func(fe *fdinfo.FileEntry)) {
	t.Helper()
	editImage(t, dir, "files.img", func(img *images.Image) {
		fe := unixFileOf(img, suffix)
		if fe == nil {
			t.Fatalf("no unix socket bound to *%s", suffix)
		}
		edit(fe)
	})
}

// TestPlanMntFiles: a unix socket of a tree with its own mount namespace
// whose image names a mount not in it is refused, naming the file.
func TestPlanMntFiles(t *testing.T) {
	_, imgs := dumpedWorkload(t, "mntfiles", mntfilesLogs, 3, dump.Options{})
	dir := fixture.CopyDir(t, imgs)
	editUnix(t, dir, "dgram.sock\x00", func(fe *fdinfo.FileEntry) { fe.GetUsk().MntId = proto.Int32(99999) })
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewPlan(d, Options{})
	var pe *PlanError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "mnt_id 99999 is not a mount of") || !strings.Contains(err.Error(), "dgram.sock") {
		t.Errorf("error %v, want a PlanError naming the socket and its mnt_id", err)
	}
}

// TestRestoreMntFilesFails: a restore of mntfiles that fails in the
// tree's namespace (its FIFO or its pty's slave not on the mount its image
// names; a socket
// bound to a path on the root mount, the host's directory, while its image
// names the tmpfs) fails in PREPARE_NAMESPACES and leaves nothing behind:
// no process, no fd, no mount, no socket file in the host's directory.
func TestRestoreMntFilesFails(t *testing.T) {
	own := ourMntNS(t)
	defer checkOurThreads(t, own)
	p, imgs := dumpedWorkload(t, "mntfiles", mntfilesLogs, 3, dump.Options{})
	rootMount := func(t *testing.T, dir string) int32 {
		var id int32
		editMounts(t, dir, func(es []*mnt.MntEntry) {
			for _, e := range es {
				if e.GetMountpoint() == "/" {
					id = int32(e.GetMntId())
				}
			}
		})
		return id
	}
	left := filepath.Join(p.Dir, "left.sock")
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"fifo not on its mount", func(t *testing.T, dir string) {
			root := rootMount(t, dir)
			editImage(t, dir, "files.img", func(img *images.Image) {
				for _, e := range img.Entries {
					if r := e.Message.(*fdinfo.FileEntry).GetReg(); r != nil && strings.HasSuffix(r.GetName(), "/scratch/fifo") {
						r.MntId = proto.Int32(root)
					}
				}
			})
		}, "not on mount"},
		{"pty slave not on its mount", func(t *testing.T, dir string) {
			root := rootMount(t, dir)
			editImage(t, dir, "files.img", func(img *images.Image) {
				for _, e := range img.Entries {
					if r := e.Message.(*fdinfo.FileEntry).GetReg(); r != nil && strings.HasPrefix(r.GetName(), "/dev/pts/") {
						r.MntId = proto.Int32(root)
					}
				}
			})
		}, "of /dev/pts/0 opened on mount"},
		{"socket not on its mount", func(t *testing.T, dir string) {
			editUnix(t, dir, "dgram.sock\x00", func(fe *fdinfo.FileEntry) {
				fe.GetUsk().Name = append([]byte("left.sock"), 0)
			})
		}, "not the socket's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			plan := planDir(t, dir)
			kids, fds := childrenOfOurs(t), dirNames(t, "/proc/self/fd")
			r, err := Start(context.Background(), plan, Options{})
			if err == nil {
				abortAtCleanup(t, r, plan)
				t.Fatal("the restore did not fail")
			}
			var se *StageError
			if !errors.As(err, &se) || se.Stage != StagePrepareNamespaces || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one of PREPARE_NAMESPACES with %q", err, tc.want)
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
		})
	}
}
