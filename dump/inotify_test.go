package dump_test

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/workloads"
)

// inotifyProgram is a workload that runs setup (the first fd it opens is
// 4) in a directory holding the directory "wdir" and the files "wfile"
// and "gap", then ticks (out-inotify.log).
func inotifyProgram(t *testing.T, name, setup string) *workloads.Process {
	t.Helper()
	p := workloads.StartTicking(t, "inotify", name, workloads.TickSource{Includes: `#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
`, Setup: `if (mkdir("wdir", 0755) || close(open("wfile", O_WRONLY | O_CREAT, 0644)) ||
	    close(open("gap", O_WRONLY | O_CREAT, 0644)))
		return 2;
	` + setup})
	waitLines(t, p, "out-inotify.log", 3)
	return p
}

// fdinfoWatch is an "inotify wd:" line of a live inotify's fdinfo.
type fdinfoWatch struct {
	wd, sdev, mask, ignored, bytes, typ uint32
	ino                                 uint64
	handle                              []byte
}

// liveInotify reads the watches of inotify fd of process pid, in the
// order the kernel lists them.
func liveInotify(t *testing.T, pid, fd int) []fdinfoWatch {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	var out []fdinfoWatch
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "inotify ") {
			continue
		}
		var w fdinfoWatch
		var h string
		if _, err := fmt.Sscanf(l, "inotify wd:%x ino:%x sdev:%x mask:%x ignored_mask:%x fhandle-bytes:%x fhandle-type:%x f_handle:%s",
			&w.wd, &w.ino, &w.sdev, &w.mask, &w.ignored, &w.bytes, &w.typ, &h); err != nil {
			t.Fatalf("fdinfo %q: %v", l, err)
		}
		if w.handle, err = hex.DecodeString(h); err != nil {
			t.Fatal(err)
		}
		out = append(out, w)
	}
	return out
}

// TestDumpInotify: an inotify (fd 4, O_NONBLOCK, a dup at 5) with watches
// on a directory and a file (wds 1 and 3; 2 was removed), and one without
// watches (fd 6, close-on-exec): files.img has every field of each as the
// kernel shows them (wd, inode, device, mask, ignored mask, the file
// handle in sixteen u64 words), the paths of the watched files, their
// flags and ids.
func TestDumpInotify(t *testing.T) {
	p := inotifyProgram(t, "watches", `int i = inotify_init1(IN_NONBLOCK);
	if (i != 4 || inotify_add_watch(i, "wdir", IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) != 1 ||
	    inotify_add_watch(i, "gap", IN_ATTRIB) != 2 ||
	    inotify_add_watch(i, "wfile", IN_MODIFY | IN_ONESHOT | IN_EXCL_UNLINK) != 3 ||
	    inotify_rm_watch(i, 2) || dup(i) != 5 || inotify_init1(IN_CLOEXEC) != 6)
		return 2;
	close(open("wfile", O_WRONLY)); /* an event queued: not in the images */`)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	fds := imageFds(t, d, 1)
	for _, tc := range []struct {
		fd      uint32
		cloexec bool
		flags   uint32
		live    int // the fd the watches are read from
	}{{4, false, unix.O_NONBLOCK, 4}, {5, false, unix.O_NONBLOCK, 4}, {6, true, unix.O_RDONLY, 6}} {
		e, ok := fds[tc.fd]
		if !ok || e.fdinfo.GetType() != fdinfo.FdTypes_INOTIFY || e.file.GetIfy() == nil {
			t.Fatalf("fd %d: %v %v, want an inotify", tc.fd, e.fdinfo, e.file)
		}
		if got := e.fdinfo.GetFlags() == unix.FD_CLOEXEC; got != tc.cloexec {
			t.Errorf("fd %d: fd flags %#x, want close-on-exec %v", tc.fd, e.fdinfo.GetFlags(), tc.cloexec)
		}
		ify := e.file.GetIfy()
		if ify.GetId() != e.file.GetId() || ify.GetId() != e.fdinfo.GetId() || ify.GetFlags() != tc.flags {
			t.Errorf("fd %d: entry id %d flags %#o, file id %d, fdinfo id %d; want flags %#o", tc.fd, ify.GetId(), ify.GetFlags(),
				e.file.GetId(), e.fdinfo.GetId(), tc.flags)
		}
		zeroOwner(t, fmt.Sprintf("fd %d", tc.fd), ify.GetFown())
		live := liveInotify(t, p.Pid, tc.live)
		if len(ify.GetWd()) != len(live) {
			t.Fatalf("fd %d: %d watches in the images, the kernel lists %d", tc.fd, len(ify.GetWd()), len(live))
		}
		for i, w := range ify.GetWd() {
			l := live[i]
			h := w.GetFHandle()
			var raw []byte
			for _, x := range h.GetHandle() {
				raw = binary.NativeEndian.AppendUint64(raw, x)
			}
			if w.GetId() != ify.GetId() || w.GetWd() != l.wd || w.GetIIno() != l.ino || w.GetSDev() != l.sdev || w.GetMask() != l.mask ||
				w.GetIgnoredMask() != l.ignored || h.GetBytes() != l.bytes || h.GetType() != l.typ || len(h.GetHandle()) != 16 ||
				string(raw[:l.bytes]) != string(l.handle) || strings.Trim(string(raw[l.bytes:]), "\x00") != "" {
				t.Errorf("fd %d: watch %v, the kernel lists %+v", tc.fd, w, l)
			}
		}
	}
	// What the test sees of the watched files: their paths, inodes,
	// devices and handles are the images'.
	ws := fds[4].file.GetIfy().GetWd()
	want := map[uint32]struct {
		name string
		mask uint32
	}{1: {"wdir", unix.IN_CREATE | unix.IN_MOVED_TO}, 3: {"wfile", unix.IN_MODIFY | unix.IN_ONESHOT | unix.IN_EXCL_UNLINK}}
	if len(ws) != len(want) {
		t.Fatalf("%d watches, want wds 1 and 3", len(ws))
	}
	for _, w := range ws {
		wt, ok := want[w.GetWd()]
		if !ok {
			t.Errorf("watch wd %d, want 1 and 3", w.GetWd())
			continue
		}
		path := filepath.Join(p.Dir, wt.name)
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
		if err != nil {
			t.Fatal(err)
		}
		fh := w.GetFHandle()
		var raw []byte
		for _, x := range fh.GetHandle() {
			raw = binary.NativeEndian.AppendUint64(raw, x)
		}
		if fh.GetPath() != path || fh.MntId != nil || w.GetMask() != wt.mask || w.GetIIno() != st.Ino ||
			w.GetSDev() != unix.Major(st.Dev)<<20|unix.Minor(st.Dev) || int32(fh.GetType()) != h.Type() || string(raw[:fh.GetBytes()]) != string(h.Bytes()) {
			t.Errorf("watch wd %d: %v; %s is inode %d device %d:%d handle type %d %x", w.GetWd(), w, path, st.Ino,
				unix.Major(st.Dev), unix.Minor(st.Dev), h.Type(), h.Bytes())
		}
	}
	if !workloads.Alive(p.Pid) {
		t.Errorf("tree %d died after the dump", p.Pid)
	}
}

// TestDumpRefusesInotify: an inotify whose watched file can not be
// found by its handle (a directory deleted while an fd of it keeps the
// watch, a file another is mounted over) or that signals (O_ASYNC)
// fails the dump with an error naming the task, the fd, the wd and the
// inode; the dump leaves nothing and the tree runs on.
func TestDumpRefusesInotify(t *testing.T) {
	for _, tc := range []struct {
		name, setup string
		want        []string
		// mount, if set, mounts something over the watched file
		mount bool
	}{
		{"deleted", `int i = inotify_init1(0);
	if (i != 4 || open("wdir", O_RDONLY | O_DIRECTORY) != 5 || inotify_add_watch(i, "wdir", IN_CREATE) != 1 || rmdir("wdir"))
		return 2;`, []string{"inotify watch wd 1 on inode ", "of device ", "deleted"}, false},
		{"mounted over", `int i = inotify_init1(0);
	if (i != 4 || inotify_add_watch(i, "wfile", IN_MODIFY) != 1)
		return 2;`, []string{"inotify watch wd 1 on inode ", "wfile is another file"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := inotifyProgram(t, strings.ReplaceAll(tc.name, " ", "-"), tc.setup)
			live := liveInotify(t, p.Pid, 4)
			if tc.mount {
				target := filepath.Join(p.Dir, "wfile")
				if err := unix.Mount(filepath.Join(p.Dir, "gap"), target, "", unix.MS_BIND, ""); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					if err := unix.Unmount(target, 0); err != nil {
						t.Error(err)
					}
				})
			}
			parent := t.TempDir()
			_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
			want := append([]string{"task 1", "fd 4 (anon_inode:inotify)", "inode " + strconv.FormatUint(live[0].ino, 10) + " of device " +
				fmt.Sprintf("%d:%d", live[0].sdev>>20, live[0].sdev&(1<<20-1))}, tc.want...)
			refusedCleanly(t, err, p, parent, "out-inotify.log", want...)
		})
	}
}
