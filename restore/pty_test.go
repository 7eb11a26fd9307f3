package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

var ptypairLogs = map[string]check.Next{"out-parent.log": check.Counter, "out-child.log": check.Counter, "out-fg.log": check.Counter}

// ptypairImages dumps ptypair with crest's dump (which kills it).
func ptypairImages(t *testing.T) (*workloads.Process, string) {
	t.Helper()
	return dumpedWorkload(t, "ptypair", ptypairLogs, 5, dump.Options{})
}

// TestRestorePTYPair restores ptypair from crest's images: the plan has
// one pair, the master held by the init, the slave the controlling
// terminal of the child, the grandchild's group in the foreground, data
// queued both ways; the restored tree has the same pty number (fdinfo's
// tty-index), the child has it as its terminal with the grandchild in
// the foreground (/proc stat), and the workload, which checks termios,
// window size, session, foreground group, packet mode, lock and the
// sequence of the queued messages every tick, runs on.
func TestRestorePTYPair(t *testing.T) {
	p, imgs := ptypairImages(t)
	before := check.Snapshot(t, p.Dir, ptypairLogs)
	plan := planDir(t, imgs)
	if len(plan.PTYs) != 1 {
		t.Fatalf("%d pty pairs planned, want 1", len(plan.PTYs))
	}
	var pp *PTYPair
	for _, v := range plan.PTYs {
		pp = v
	}
	root := plan.Root()
	if pp.Holder != root || pp.Master == nil || len(pp.Slaves) == 0 || pp.Leader == nil || pp.Leader.Parent != root {
		t.Fatalf("pair %+v: want the master held by the init, slaves, and the init's child as the leader", pp)
	}
	if !pp.MasterInfo.GetLocked() || !pp.MasterInfo.GetPacketMode() {
		t.Errorf("master: locked %v, packet mode %v; want both", pp.MasterInfo.GetLocked(), pp.MasterInfo.GetPacketMode())
	}
	if len(pp.ToMaster) == 0 || len(pp.ToSlave) == 0 || pp.ToMaster[0] != 'c' || pp.ToSlave[0] != 'p' ||
		len(pp.ToMaster)%16 != 0 || len(pp.ToSlave)%16 != 0 {
		t.Errorf("queued data: %q to the master, %q to the slave; want whole messages both ways", pp.ToMaster, pp.ToSlave)
	}
	fg := pp.Leader.CTTY.Pgrp
	if fg == 0 || fg == pp.Leader.PID {
		t.Errorf("foreground group %d, want the grandchild's", fg)
	}

	r, err := Start(context.Background(), plan, Options{})
	if err != nil {
		t.Fatal(err)
	}
	host := r.RootPID()
	r.Detach()
	defer killTree(t, host)
	if got := ptyFdinfoField(t, host, masterFD(t, root, pp), "tty-index"); got != strconv.Itoa(pp.Index) {
		t.Errorf("the restored master is pty %s, want %d", got, pp.Index)
	}
	leader := r.HostPID(pp.Leader.PID)
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", leader))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
	ttyNr, _ := strconv.Atoi(f[4])
	tpgid, _ := strconv.Atoi(f[5])
	if maj, min := (ttyNr>>8)&0xfff, (ttyNr&0xff)|((ttyNr>>12)&0xfff00); maj != 136+pp.Index/256 || min != pp.Index%256 {
		t.Errorf("the leader's controlling terminal is %d:%d, want /dev/pts/%d", maj, min, pp.Index)
	}
	if tpgid != r.HostPID(fg) {
		t.Errorf("the terminal's foreground group is %d, want %d (group %d of the images)", tpgid, r.HostPID(fg), fg)
	}
	check.Logs(t, p.Dir, before, ptypairLogs, 2*time.Second)
}

func masterFD(t *testing.T, task *Task, pp *PTYPair) int {
	t.Helper()
	for _, fd := range task.FDs {
		if fd.File == pp.Master {
			return fd.FD
		}
	}
	t.Fatalf("task %d holds no fd of the master", task.PID)
	return -1
}

func ptyFdinfoField(t *testing.T, pid, fd int, key string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestRestorePTYIndexTaken: the pty number of the images is held by the
// test, so the restore fails naming the task, the file, /dev/ptmx and the
// index, and leaves no process, no fd and no pty behind.
func TestRestorePTYIndexTaken(t *testing.T) {
	p, imgs := ptypairImages(t)
	plan := planDir(t, imgs)
	var pp *PTYPair
	for _, v := range plan.PTYs {
		pp = v
	}
	held := holdPTY(t, pp.Index)
	defer unix.Close(held)
	ptsBefore, fdsBefore := dirNames(t, "/dev/pts"), dirNames(t, "/proc/self/fd")
	_, err := Start(context.Background(), plan, Options{})
	if err == nil {
		t.Fatal("the restore succeeded with its pty number taken")
	}
	for _, w := range []string{fmt.Sprintf("task %d", pp.Holder.PID), fmt.Sprintf("file %d", pp.Master.ID),
		"/dev/ptmx", fmt.Sprintf("pty index %d is taken", pp.Index), fmt.Sprintf("fd %d", masterFD(t, pp.Holder, pp))} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q does not say %q", err, w)
		}
	}
	if now := dirNames(t, "/dev/pts"); now != ptsBefore {
		t.Errorf("ptys after the failed restore: %s, before: %s", now, ptsBefore)
	}
	if now := dirNames(t, "/proc/self/fd"); now != fdsBefore {
		t.Errorf("the test's fds after the failed restore: %s, before: %s", now, fdsBefore)
	}
	if pids := commPIDs(t, "ptypair", p.Dir); len(pids) > 0 {
		t.Errorf("ptypair processes after the failed restore: %v", pids)
	}
}

// holdPTY opens /dev/ptmx until it makes pty index, and closes the
// others.
func holdPTY(t *testing.T, index int) int {
	t.Helper()
	var others []int
	defer func() {
		for _, fd := range others {
			unix.Close(fd)
		}
	}()
	for range 64 {
		fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
		if err != nil {
			t.Fatal(err)
		}
		if int(n) == index {
			return fd
		}
		others = append(others, fd)
	}
	t.Fatalf("could not get pty %d", index)
	return -1
}

func dirNames(t *testing.T, dir string) string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, e := range es {
		s = append(s, e.Name())
	}
	return strings.Join(s, " ")
}

// commPIDs returns the processes named comm whose working directory is
// dir (a workload's own: other tests may run the same program meanwhile).
func commPIDs(t *testing.T, comm, dir string) []int {
	t.Helper()
	es, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range es {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && cwd == dir {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestPlanPTYRefusals edits crest's images of ptypair into what can not
// be restored; each is refused naming the image file, the entry or file,
// and the task.
func TestPlanPTYRefusals(t *testing.T) {
	_, imgs := ptypairImages(t)
	plan := planDir(t, imgs)
	var pp *PTYPair
	for _, v := range plan.PTYs {
		pp = v
	}
	master := ttyInfoID(pp.Index, true)
	for _, tc := range []struct {
		name string
		edit func(dir string)
		want []string
	}{
		{"session leader outside", func(dir string) {
			editTTYInfo(t, dir, master, func(e *tty.TtyInfoEntry) { e.Sid = proto.Uint32(77) })
		}, []string{"tty-info.img", fmt.Sprintf("task %d", pp.Holder.PID), fmt.Sprintf("file %d", pp.Master.ID), "session 77"}},
		{"foreground group outside", func(dir string) {
			editTTYInfo(t, dir, master, func(e *tty.TtyInfoEntry) { e.Pgrp = proto.Uint32(77) })
		}, []string{"tty-info.img", fmt.Sprintf("task %d", pp.Holder.PID), "foreground group 77"}},
		{"queued data of no pair", func(dir string) {
			path := filepath.Join(dir, "tty-data.img")
			img, err := images.ReadKindFile(path, images.KindTTYData)
			if err != nil {
				t.Fatal(err)
			}
			img.Entries[0].Message.(*tty.TtyDataEntry).TtyId = proto.Uint32(uint32(pp.Index+5) << 1)
			if err := images.WriteFile(path, img); err != nil {
				t.Fatal(err)
			}
		}, []string{"tty-data.img", "entry 0", fmt.Sprintf("terminal %d", (pp.Index+5)<<1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(dir)
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewPlan(d)
			var pe *PlanError
			if !errors.As(err, &pe) {
				t.Fatalf("planning: %v, want a PlanError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
		})
	}
}

func editTTYInfo(t *testing.T, dir string, id uint32, edit func(*tty.TtyInfoEntry)) {
	t.Helper()
	path := filepath.Join(dir, "tty-info.img")
	img, err := images.ReadKindFile(path, images.KindTTYInfo)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range img.Entries {
		if m := e.Message.(*tty.TtyInfoEntry); m.GetId() == id {
			edit(m)
		}
	}
	if err := images.WriteFile(path, img); err != nil {
		t.Fatal(err)
	}
}

// TestRestorePTYPacketData: the queued data of a master in packet mode is
// in tty-data.img as CRIU 4.2 writes it, what the master's reads gave: a
// packet header (0) before the data, and a status byte alone first when
// one was pending (here TIOCPKT_FLUSHREAD, as the image of a tree that
// flushed its input would have it). The restore gives the master the
// messages alone, which the workload, reading in packet mode, checks
// byte by byte: a header written back as data would reach it as a NUL
// (CRIU's restore does that). A master out of packet mode keeps every
// byte of its entry.
func TestRestorePTYPacketData(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(dumped []byte) []byte // the master's entry, from crest's
		// packet: the master stays in packet mode, and the tree is
		// restored; else the plan keeps the entry whole
		packet bool
	}{
		{"header", func(b []byte) []byte { return b }, true},
		{"status byte, then header", func(b []byte) []byte { return append([]byte{unix.TIOCPKT_FLUSHREAD}, b...) }, true},
		{"no packet mode", func(b []byte) []byte { return b }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, imgs := ptypairImages(t)
			dir := fixture.CopyDir(t, imgs)
			plan := planDir(t, dir)
			var pp *PTYPair
			for _, v := range plan.PTYs {
				pp = v
			}
			master := ttyInfoID(pp.Index, true)
			var dumped []byte
			editTTYData(t, dir, master, func(b []byte) []byte { dumped = b; return tc.edit(b) })
			if len(dumped) < 17 || dumped[0] != 0 || dumped[1] != 'c' || (len(dumped)-1)%16 != 0 {
				t.Fatalf("the master's queued data %q, want a packet header and whole echoes", dumped)
			}
			messages := dumped[1:]
			if !tc.packet {
				editTTYInfo(t, dir, master, func(e *tty.TtyInfoEntry) { e.PacketMode = proto.Bool(false) })
			}
			plan = planDir(t, dir)
			for _, v := range plan.PTYs {
				pp = v
			}
			want := messages
			if !tc.packet {
				want = tc.edit(dumped)
			}
			if string(pp.ToMaster) != string(want) {
				t.Fatalf("planned for the master: %q, want %q", pp.ToMaster, want)
			}
			if !tc.packet {
				return
			}
			before := check.Snapshot(t, p.Dir, ptypairLogs)
			r, err := Start(context.Background(), plan, Options{})
			if err != nil {
				t.Fatal(err)
			}
			host := r.RootPID()
			r.Detach()
			defer killTree(t, host)
			check.Logs(t, p.Dir, before, ptypairLogs, 2*time.Second)
		})
	}
}

// editTTYData replaces the data of tty-data.img's entry id by what edit
// makes of it.
func editTTYData(t *testing.T, dir string, id uint32, edit func([]byte) []byte) {
	t.Helper()
	path := filepath.Join(dir, "tty-data.img")
	img, err := images.ReadKindFile(path, images.KindTTYData)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range img.Entries {
		if m := e.Message.(*tty.TtyDataEntry); m.GetTtyId() == id {
			m.Data, found = edit(m.GetData()), true
		}
	}
	if !found {
		t.Fatalf("tty-data.img has no entry of terminal %d", id)
	}
	if err := images.WriteFile(path, img); err != nil {
		t.Fatal(err)
	}
}
