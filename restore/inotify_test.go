package restore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fh"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fsnotify"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
)

// watched is a file an inotify of a test watches: made in a directory of
// the test, its entry written as CRIU 4.2 writes it (inode, device in the
// kernel's encoding, the file handle in sixteen u64 words, the path).
type watched struct {
	name   string // in the test's directory; a name ending in / is a directory
	wd     uint32
	mask   uint32
	noPath bool // the image has only the file handle
}

// watchEntries makes the files of ws in dir and returns their watch
// entries for inotify file id.
func watchEntries(t *testing.T, dir string, id uint32, ws []watched) []*fsnotify.InotifyWdEntry {
	t.Helper()
	var out []*fsnotify.InotifyWdEntry
	for _, w := range ws {
		path := filepath.Join(dir, w.name)
		var err error
		if strings.HasSuffix(w.name, "/") {
			err = os.Mkdir(path, 0o755)
		} else {
			err = os.WriteFile(path, []byte("watched"), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, watchEntry(t, path, id, w))
	}
	return out
}

// watchEntry is the watch entry of w on the file at path.
func watchEntry(t *testing.T, path string, id uint32, w watched) *fsnotify.InotifyWdEntry {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 128)
	copy(raw, h.Bytes())
	words := make([]uint64, 16)
	for i := range words {
		words[i] = binary.NativeEndian.Uint64(raw[8*i:])
	}
	f := &fh.FhEntry{Bytes: proto.Uint32(uint32(h.Size())), Type: proto.Uint32(uint32(h.Type())), Handle: words}
	if !w.noPath {
		f.Path = proto.String(path)
	}
	return &fsnotify.InotifyWdEntry{Id: proto.Uint32(id), IIno: proto.Uint64(st.Ino), Mask: proto.Uint32(w.mask),
		IgnoredMask: proto.Uint32(0), SDev: proto.Uint32(unix.Major(st.Dev)<<20 | unix.Minor(st.Dev)), Wd: proto.Uint32(w.wd), FHandle: f}
}

// addInotify gives task 2 of the tree fixture's images (fd table
// fdinfo-3.img) fd 10, inotify file 110 (O_NONBLOCK) with watches wds.
func addInotify(t *testing.T, dir string, wds []*fsnotify.InotifyWdEntry) {
	t.Helper()
	zero := &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)}
	ify := &fsnotify.InotifyFileEntry{Id: proto.Uint32(110), Flags: proto.Uint32(04000), Fown: zero, Wd: wds}
	editImage(t, dir, "files.img", func(img *images.Image) {
		img.Entries = append(img.Entries, images.Entry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_INOTIFY.Enum(), Id: proto.Uint32(110), Ify: ify}})
	})
	editImage(t, dir, "fdinfo-3.img", func(img *images.Image) {
		img.Entries = append(img.Entries, images.Entry{Message: &fdinfo.FdinfoEntry{Id: proto.Uint32(110),
			Flags: proto.Uint32(0), Type: fdinfo.FdTypes_INOTIFY.Enum(), Fd: proto.Uint32(10)}})
	})
}

// liveWatches reads the watches of the inotify at fd of process pid as
// the kernel lists them: "wd ino mask" (hexadecimal, as printed), sorted.
func liveWatches(t *testing.T, pid, fd int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		var wd, mask uint32
		var ino uint64
		if _, err := fmt.Sscanf(l, "inotify wd:%x ino:%x sdev:%x mask:%x", &wd, &ino, new(uint32), &mask); err == nil {
			out = append(out, fmt.Sprintf("%d %x %x", wd, ino, mask))
		}
	}
	slices.Sort(out)
	return out
}

// want is what liveWatches shows of wds.
func wantWatches(wds []*fsnotify.InotifyWdEntry) []string {
	var out []string
	for _, w := range wds {
		out = append(out, fmt.Sprintf("%d %x %x", w.GetWd(), w.GetIIno(), w.GetMask()&inotifyMask))
	}
	slices.Sort(out)
	return out
}

// TestPlanInotify: an inotify of files.img as CRIU 4.2 writes it is
// planned with its watches in wd order, the masks without the bits the
// kernel does not take back, the devices in stat(2)'s encoding, the
// handles as bytes; entries that can not be restored are refused,
// naming the file and the watch.
func TestPlanInotify(t *testing.T) {
	base := t.TempDir()
	ws := []watched{
		{name: "dir/", wd: 7, mask: unix.IN_CREATE | unix.IN_DELETE | unix.IN_EXCL_UNLINK},
		{name: "file", wd: 2, mask: unix.IN_MODIFY | unix.IN_ONESHOT | 0x08000000 /* FS_EVENT_ON_CHILD */, noPath: true},
	}
	wds := watchEntries(t, base, 110, ws)
	dir := fixture.CopyImages(t, "tree")
	addInotify(t, dir, wds)
	p := planDir(t, dir)
	f := p.Files[110]
	if f == nil || f.Kind != FileInotify || f.Flags != 04000 || f.Inotify == nil || len(f.Inotify.Watches) != 2 {
		t.Fatalf("planned %+v", f)
	}
	if f.Kind.String() != "inotify" {
		t.Errorf("kind %q", f.Kind)
	}
	var st unix.Stat_t
	if err := unix.Stat(base, &st); err != nil {
		t.Fatal(err)
	}
	file, d := f.Inotify.Watches[0], f.Inotify.Watches[1]
	if file.WD != 2 || file.Mask != unix.IN_MODIFY|unix.IN_ONESHOT || file.Path != "" || file.Ino != wds[1].GetIIno() ||
		file.Dev != st.Dev || file.HandleType != int32(wds[1].GetFHandle().GetType()) || len(file.Handle) != int(wds[1].GetFHandle().GetBytes()) {
		t.Errorf("watch wd 2: %+v", file)
	}
	if d.WD != 7 || d.Mask != unix.IN_CREATE|unix.IN_DELETE|unix.IN_EXCL_UNLINK || d.Path != filepath.Join(base, "dir") || d.Dev != st.Dev {
		t.Errorf("watch wd 7: %+v", d)
	}
	var users []int
	for _, task := range p.Tasks {
		for _, fd := range task.FDs {
			if fd.File == f {
				users = append(users, fd.FD)
			}
		}
	}
	if !slices.Equal(users, []int{10}) {
		t.Errorf("fds of the inotify: %v, want [10]", users)
	}

	for _, tc := range []struct {
		name string
		edit func(ws []*fsnotify.InotifyWdEntry) []*fsnotify.InotifyWdEntry
		want string
	}{
		{"wd 0", func(ws []*fsnotify.InotifyWdEntry) []*fsnotify.InotifyWdEntry {
			ws[0].Wd = proto.Uint32(0)
			return ws
		}, "file 110: inotify watch wd 0"},
		{"wd twice", func(ws []*fsnotify.InotifyWdEntry) []*fsnotify.InotifyWdEntry {
			ws[1].Wd = proto.Uint32(7)
			return ws
		}, "inotify watch wd 7 appears twice"},
		{"one inode twice", func(ws []*fsnotify.InotifyWdEntry) []*fsnotify.InotifyWdEntry {
			w := proto.Clone(ws[0]).(*fsnotify.InotifyWdEntry)
			w.Wd = proto.Uint32(9)
			return append(ws, w)
		}, "inotify watches wd 7 and 9 are on the same inode"},
		{"handle too long", func(ws []*fsnotify.InotifyWdEntry) []*fsnotify.InotifyWdEntry {
			ws[1].FHandle.Bytes = proto.Uint32(200)
			return ws
		}, "inotify watch wd 2: file handle of 200 bytes"},
		{"neither path nor handle", func(ws []*fsnotify.InotifyWdEntry) []*fsnotify.InotifyWdEntry {
			ws[1].FHandle.Bytes = proto.Uint32(0)
			return ws
		}, "inotify watch wd 2 has neither a path nor a file handle"},
		{"no event", func(ws []*fsnotify.InotifyWdEntry) []*fsnotify.InotifyWdEntry {
			ws[0].Mask = proto.Uint32(unix.IN_ONESHOT)
			return ws
		}, "inotify watch wd 7: mask 0x80000000 has no event"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := make([]*fsnotify.InotifyWdEntry, len(wds))
			for i, w := range wds {
				ws[i] = proto.Clone(w).(*fsnotify.InotifyWdEntry)
			}
			dir := fixture.CopyImages(t, "tree")
			addInotify(t, dir, tc.edit(ws))
			_, err := openPlan(t, dir)
			var pe *PlanError
			if !errors.As(err, &pe) || pe.File != "files.img" || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("plan: %v, want a PlanError of files.img saying %q", err, tc.want)
			}
		})
	}
}

// inotifyTask returns the task of p whose fd 10 is inotify file 110.
func inotifyTask(t *testing.T, p *Plan) int {
	t.Helper()
	for i, task := range p.Tasks {
		for _, fd := range task.FDs {
			if fd.FD == 10 && fd.File.ID == 110 {
				return i
			}
		}
	}
	t.Fatal("no task has the inotify at fd 10")
	return -1
}

// TestRestoreInotify restores the tree fixture with an inotify added to
// task 2, watching a directory by its path (wd 2) and a file by its
// handle only (wd 5): the restored task has it at fd 10, O_NONBLOCK, with
// those wds on those inodes, and a change to the file is reported on it
// with wd 5.
func TestRestoreInotify(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	wds := watchEntries(t, base, 110, []watched{
		{name: "dir/", wd: 2, mask: unix.IN_CREATE | unix.IN_MOVED_TO},
		{name: "file", wd: 5, mask: unix.IN_MODIFY | unix.IN_CLOSE_WRITE, noPath: true},
	})
	dir := fixture.CopyImages(t, "tree")
	addInotify(t, dir, wds)
	installFixture(t, "tree")
	p := planDir(t, dir)
	i := inotifyTask(t, p)
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	host := abortAtCleanup(t, r, p)[i]
	if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/10", host)); err != nil || l != "anon_inode:inotify" {
		t.Fatalf("fd 10: %q (%v)", l, err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/10", host))
	if err != nil || !strings.Contains(string(b), "flags:\t04000\n") {
		t.Errorf("fd 10: fdinfo %s (%v), want flags 04000", b, err)
	}
	if got, want := liveWatches(t, host, 10), wantWatches(wds); !slices.Equal(got, want) {
		t.Errorf("watches %v, want %v", got, want)
	}
	// The same file as the task's, through a copy of its fd.
	pidfd, err := unix.PidfdOpen(host, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	ify, err := unix.PidfdGetfd(pidfd, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ify)
	if err := os.WriteFile(filepath.Join(base, "file"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := unix.Read(ify, buf)
	if err != nil || n < unix.SizeofInotifyEvent {
		t.Fatalf("read the inotify: %d, %v", n, err)
	}
	if wd, mask := int32(binary.NativeEndian.Uint32(buf)), binary.NativeEndian.Uint32(buf[4:]); wd != 5 || mask != unix.IN_MODIFY {
		t.Errorf("first event: wd %d mask %#x, want wd 5 IN_MODIFY", wd, mask)
	}
}

// inotifyFDs lists the fds of this process that are inotify files or
// opened O_PATH (a watched file the engine opened).
func inotifyFDs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		flags, _ := unix.FcntlInt(uintptr(atoi(t, e.Name())), unix.F_GETFL, 0)
		if l == "anon_inode:inotify" || flags&unix.O_PATH != 0 {
			out = append(out, e.Name()+" "+l)
		}
	}
	return out
}

// TestRestoreInotifyFileChanged: a watched file that is not the one of
// the images any more (another file renamed over it, or gone) fails the
// restore with an InotifyWatchError naming the task, the fd, the wd and
// the path; the restore leaves nothing: no task, no inotify or file of
// the engine.
func TestRestoreInotifyFileChanged(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, path string)
		want   string
		is     error
	}{
		{"replaced", func(t *testing.T, path string) {
			other := path + ".new"
			if err := os.WriteFile(other, []byte("another"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(other, path); err != nil {
				t.Fatal(err)
			}
		}, "the image has inode", errWatchedFileChanged},
		{"removed", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, "open ", syscall.ENOENT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			// wd 1, which comes back, and wd 4 on the changed file
			wds := watchEntries(t, base, 110, []watched{
				{name: "dir/", wd: 1, mask: unix.IN_CREATE},
				{name: "file", wd: 4, mask: unix.IN_MODIFY},
			})
			dir := fixture.CopyImages(t, "tree")
			addInotify(t, dir, wds)
			fixDir := installFixture(t, "tree")
			p := planDir(t, dir)
			task := p.Tasks[inotifyTask(t, p)]
			path := filepath.Join(base, "file")
			tc.change(t, path)
			before := inotifyFDs(t)
			r, err := Start(context.Background(), p, Options{})
			if err == nil {
				abortAtCleanup(t, r, p)
				t.Fatal("restored an inotify watching a file that changed")
			}
			for _, want := range []string{fmt.Sprintf("task %d: ", task.PID), "fd 10: inotify watch wd 4: " + path + ": ", tc.want} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			var we *InotifyWatchError
			if !errors.As(err, &we) || we.FD != 10 || we.WD != 4 || we.Path != path || !errors.Is(err, tc.is) {
				t.Errorf("error %v (%#v), want an InotifyWatchError of fd 10, wd 4, %s, %v", err, we, path, tc.is)
			}
			cli.NothingLeft(t, fixDir)
			if after := inotifyFDs(t); !slices.Equal(after, before) {
				t.Errorf("inotify and O_PATH fds of the engine left: %v, before the restore %v", after, before)
			}
		})
	}
}

// TestInotifyWatchWDs adds watches with wds 1, 4 and 9 to a new inotify,
// with INOTIFY_IOC_SETNEXTWD and without (adding and removing watches
// until the kernel's wds line up): the kernel lists the three watches at
// those wds on their inodes, and no event of the removed watches is left
// queued. Without the ioctl, a wd the kernel has passed already is
// refused, naming it.
func TestInotifyWatchWDs(t *testing.T) {
	needRoot(t) // open_by_handle_at needs CAP_DAC_READ_SEARCH
	for _, setNext := range []bool{true, false} {
		t.Run("setnextwd="+strconv.FormatBool(setNext), func(t *testing.T) {
			base := t.TempDir()
			wds := watchEntries(t, base, 1, []watched{
				{name: "a", wd: 9, mask: unix.IN_ATTRIB},
				{name: "d/", wd: 1, mask: unix.IN_CREATE | unix.IN_EXCL_UNLINK},
				{name: "b", wd: 4, mask: unix.IN_MODIFY | unix.IN_ONESHOT, noPath: true},
			})
			dir := fixture.CopyImages(t, "tree")
			addInotify(t, dir, wds)
			ws := planDir(t, dir).Files[110].Inotify.Watches
			fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := addWatches(fd, 10, ws, setNext); err != nil {
				t.Fatal(err)
			}
			if got, want := liveWatches(t, os.Getpid(), fd), wantWatches(wds); !slices.Equal(got, want) {
				t.Errorf("watches %v, want %v", got, want)
			}
			if n, err := unix.IoctlGetInt(fd, unix.TIOCINQ); err != nil || n != 0 {
				t.Errorf("%d bytes of events queued (%v), want none", n, err)
			}
			if setNext {
				return // the kernel sets its next wd where it is told
			}
			// wd 9 was given: a watch that wants 6 can not have it
			late := ws[1]
			late.WD = 6
			late.Path = filepath.Join(base, "c")
			if err := os.WriteFile(late.Path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			late.Ino, late.Dev = inode(t, late.Path)
			err = addWatches(fd, 10, []InotifyWatch{late}, setNext)
			var we *InotifyWatchError
			if !errors.As(err, &we) || we.WD != 6 || !strings.Contains(err.Error(), "fd 10: inotify watch wd 6: "+late.Path+": ") ||
				!strings.Contains(err.Error(), "gave wd 10") {
				t.Errorf("adding wd 6 after 9: %v, want an InotifyWatchError saying the kernel gave wd 10", err)
			}
			if got, want := liveWatches(t, os.Getpid(), fd), wantWatches(wds); !slices.Equal(got, want) {
				t.Errorf("after the refused watch: watches %v, want %v", got, want)
			}
		})
	}
}

func inode(t *testing.T, path string) (ino, dev uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino, st.Dev
}

// TestInotifyHandleNotFound: a watch with only a file handle that no
// mount of its device resolves (its file deleted) is refused, naming the
// wd and the inode, and the engine keeps no fd of it.
func TestInotifyHandleNotFound(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	wds := watchEntries(t, base, 1, []watched{{name: "gone", wd: 3, mask: unix.IN_MODIFY, noPath: true}})
	dir := fixture.CopyImages(t, "tree")
	addInotify(t, dir, wds)
	ws := planDir(t, dir).Files[110].Inotify.Watches
	if err := os.Remove(filepath.Join(base, "gone")); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	before := inotifyFDs(t)
	err = addWatches(fd, 10, ws, true)
	want := fmt.Sprintf("fd 10: inotify watch wd 3: file handle of inode %d on device %d:%d: open_by_handle_at through ",
		ws[0].Ino, unix.Major(ws[0].Dev), unix.Minor(ws[0].Dev))
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, syscall.ESTALE) {
		t.Errorf("error %v, want %q and ESTALE", err, want)
	}
	if after := inotifyFDs(t); !slices.Equal(after, before) {
		t.Errorf("fds left: %v, before %v", after, before)
	}
}
