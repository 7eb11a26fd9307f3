package restore

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventpoll"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/signalfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timerfd"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// addAnonFiles gives task 2 of the tree fixture's images (fd table
// fdinfo-3.img) three more fds: 10 an eventfd at 5 (O_NONBLOCK), 11 a
// signalfd for SIGUSR1 and SIGTERM, 12 a timerfd on CLOCK_MONOTONIC with
// 30 s left and a 40 s period, and 13 an epoll watching 10 and 12, each
// as CRIU 4.2 writes them. edit and editEpoll may change the files.img
// entries before they are written.
func addAnonFiles(t *testing.T, dir string, edit func(efd *eventfd.EventfdFileEntry, sfd *signalfd.SignalfdEntry, tfd *timerfd.TimerfdEntry),
	editEpoll func(*eventpoll.EventpollFileEntry)) {
	t.Helper()
	zero := func() *fown.FownEntry {
		return &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)}
	}
	efd := &eventfd.EventfdFileEntry{Id: proto.Uint32(100), Flags: proto.Uint32(04002), Fown: zero(), Counter: proto.Uint64(5)}
	sfd := &signalfd.SignalfdEntry{Id: proto.Uint32(101), Flags: proto.Uint32(02), Fown: zero(), Sigmask: proto.Uint64(1<<9 | 1<<14)}
	tfd := &timerfd.TimerfdEntry{Id: proto.Uint32(102), Flags: proto.Uint32(02), Fown: zero(), Clockid: proto.Uint32(1),
		Ticks: proto.Uint64(0), SettimeFlags: proto.Uint32(0), Vsec: proto.Uint64(30), Vnsec: proto.Uint64(0), Isec: proto.Uint64(40), Insec: proto.Uint64(0)}
	if edit != nil {
		edit(efd, sfd, tfd)
	}
	// 13: an epoll of the eventfd (edge-triggered) and the timerfd
	epfd := &eventpoll.EventpollFileEntry{Id: proto.Uint32(103), Flags: proto.Uint32(02), Fown: zero(), Tfd: []*eventpoll.EventpollTfdEntry{
		{Id: proto.Uint32(103), Tfd: proto.Uint32(10), Events: proto.Uint32(0x80000019), Data: proto.Uint64(0xa)},
		{Id: proto.Uint32(103), Tfd: proto.Uint32(12), Events: proto.Uint32(0x19), Data: proto.Uint64(0xc)},
	}}
	if editEpoll != nil {
		editEpoll(epfd)
	}
	editImage(t, dir, "files.img", func(img *images.Image) {
		img.Entries = append(img.Entries,
			images.Entry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_EVENTFD.Enum(), Id: proto.Uint32(100), Efd: efd}},
			images.Entry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_SIGNALFD.Enum(), Id: proto.Uint32(101), Sgfd: sfd}},
			images.Entry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_TIMERFD.Enum(), Id: proto.Uint32(102), Tfd: tfd}},
			images.Entry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_EVENTPOLL.Enum(), Id: proto.Uint32(103), Epfd: epfd}})
	})
	editImage(t, dir, "fdinfo-3.img", func(img *images.Image) {
		for i, ty := range []fdinfo.FdTypes{fdinfo.FdTypes_EVENTFD, fdinfo.FdTypes_SIGNALFD, fdinfo.FdTypes_TIMERFD, fdinfo.FdTypes_EVENTPOLL} {
			img.Entries = append(img.Entries, images.Entry{Message: &fdinfo.FdinfoEntry{Id: proto.Uint32(uint32(100 + i)),
				Flags: proto.Uint32(0), Type: ty.Enum(), Fd: proto.Uint32(uint32(10 + i))}})
		}
	})
}

// TestPlanAnonFiles: what the plan takes of eventfds, signalfds and
// timerfds, and what it refuses, naming the file.
func TestPlanAnonFiles(t *testing.T) {
	dir := fixture.CopyImages(t, "tree")
	addAnonFiles(t, dir, nil, nil)
	p := planDir(t, dir)
	e, s, tm := p.Files[100], p.Files[101], p.Files[102]
	if e == nil || e.Kind != FileEventfd || e.Eventfd.Counter != 5 || s == nil || s.Kind != FileSignalfd || s.Signalfd.Mask != 1<<9|1<<14 ||
		tm == nil || tm.Kind != FileTimerfd || tm.Timerfd.Clock != 1 || tm.Timerfd.Value.Seconds() != 30 || tm.Timerfd.Interval.Seconds() != 40 {
		t.Fatalf("planned %+v %+v %+v", e, s, tm)
	}
	if ep := p.Files[103]; ep == nil || ep.Kind != FileEpoll || len(p.Tasks[1].EpollAdds) != 2 ||
		p.Tasks[1].EpollAdds[1] != (EpollAdd{EpFD: 13, EpollItem: EpollItem{TFD: 12, Events: 0x19, Data: 0xc}}) {
		t.Errorf("epoll: %+v, adds %+v", ep, p.Tasks[1].EpollAdds)
	}
	// a periodic timer that fired and was not read, as CRIU 4.2 writes
	// it: armed again a period away
	dir = fixture.CopyImages(t, "tree")
	addAnonFiles(t, dir, func(_ *eventfd.EventfdFileEntry, _ *signalfd.SignalfdEntry, tf *timerfd.TimerfdEntry) {
		tf.Vsec, tf.Ticks = proto.Uint64(0), proto.Uint64(1)
	}, nil)
	if tm := planDir(t, dir).Files[102].Timerfd; tm.Value.Seconds() != 40 || tm.Ticks != 1 {
		t.Errorf("fired periodic timer: %+v, want 40 s left and 1 tick", tm)
	}
	dir = fixture.CopyImages(t, "tree")
	addAnonFiles(t, dir, nil, func(e *eventpoll.EventpollFileEntry) { e.Tfd[1].Tfd = proto.Uint32(99) })
	if _, err := openPlan(t, dir); err == nil || !strings.Contains(err.Error(), "task 2: files.img: file 103: the epoll at fd 13 watches fd 99, which the task does not have") {
		t.Errorf("an epoll of a missing fd: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*eventfd.EventfdFileEntry, *signalfd.SignalfdEntry, *timerfd.TimerfdEntry)
		want string
	}{
		{"an owner", func(e *eventfd.EventfdFileEntry, _ *signalfd.SignalfdEntry, _ *timerfd.TimerfdEntry) {
			e.Fown.Pid = proto.Uint32(7)
		}, "task 2: files.img: file 100: the owner for SIGIO (F_SETOWN), thread 7, is not in the tree"},
		{"a clock", func(_ *eventfd.EventfdFileEntry, _ *signalfd.SignalfdEntry, tf *timerfd.TimerfdEntry) {
			tf.Clockid = proto.Uint32(3)
		}, "task 2: files.img: file 102: timer on clock 3"},
		{"nanoseconds", func(_ *eventfd.EventfdFileEntry, _ *signalfd.SignalfdEntry, tf *timerfd.TimerfdEntry) {
			tf.Insec = proto.Uint64(1e9)
		}, "task 2: files.img: file 102: timer value 30.000000000 interval 40.1000000000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyImages(t, "tree")
			addAnonFiles(t, dir, tc.edit, nil)
			_, err := openPlan(t, dir)
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a PlanError with %q", err, tc.want)
			}
		})
	}
}

// TestRestoreAnonFiles restores the tree fixture with an eventfd, a
// signalfd and a timerfd added to task 2: the restored task has them at
// their fds, as the kernel tells in /proc/PID/fdinfo: the eventfd's count
// and O_NONBLOCK, the signalfd's mask, the timerfd's clock, period and a
// time left of at most what the image says.
func TestRestoreAnonFiles(t *testing.T) {
	needRoot(t)
	dir := fixture.CopyImages(t, "tree")
	addAnonFiles(t, dir, nil, nil)
	installFixture(t, "tree")
	p := planDir(t, dir)
	_, hosts := startChecked(t, p)
	host := hosts[1]
	info := func(fd int) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", host, fd))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	link := func(fd int) string {
		s, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", host, fd))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	field := func(s, key string) string {
		for _, l := range strings.Split(s, "\n") {
			if v, ok := strings.CutPrefix(l, key+":"); ok {
				return strings.TrimSpace(v)
			}
		}
		return ""
	}
	if l, i := link(10), info(10); l != "anon_inode:[eventfd]" || field(i, "eventfd-count") != "5" || field(i, "flags") != "04002" {
		t.Errorf("fd 10: %s\n%s", l, i)
	}
	if l, i := link(11), info(11); l != "anon_inode:[signalfd]" || field(i, "sigmask") != "0000000000004200" {
		t.Errorf("fd 11: %s\n%s", l, i)
	}
	// the epoll's items, as the kernel prints them: "tfd: %8d events: %8x data: %16llx ..."
	if l, i := link(13), info(13); l != "anon_inode:[eventpoll]" || !strings.Contains(i, "tfd:       10 events: 80000019 data:                a") ||
		!strings.Contains(i, "tfd:       12 events:       19 data:                c") {
		t.Errorf("fd 13: %s\n%s", l, i)
	}
	l, i := link(12), info(12)
	var sec, nsec int64
	fmt.Sscanf(field(i, "it_value"), "(%d, %d)", &sec, &nsec)
	if l != "anon_inode:[timerfd]" || field(i, "clockid") != "1" || field(i, "it_interval") != "(40, 0)" || sec*1e9+nsec <= 0 || sec*1e9+nsec > 30e9 {
		t.Errorf("fd 12: %s\n%s", l, i)
	}
}
