package restore

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventpoll"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"golang.org/x/sys/unix"
)

// Eventfds, signalfds and timerfds: files without a path, made anew by
// the engine from what the images say of them (CRIU's eventfd.c,
// signalfd.c, timerfd.c) and taken by the tasks like any other file.

// Eventfd is an eventfd's counter.
type Eventfd struct{ Counter uint64 }

// Signalfd is the set of signals a signalfd reads.
type Signalfd struct{ Mask uint64 }

// Timerfd is a timerfd's clock and timer: Value is the time left at the
// dump (0: disarmed), Interval the period, Ticks the expirations not read
// yet.
type Timerfd struct {
	Clock           int
	Value, Interval time.Duration
	Ticks           uint64
}

// anonFile plans an eventfd, signalfd or timerfd of files.img.
func (p *Plan) anonFile(t *Task, id uint32, fe *fdinfo.FileEntry) (*File, error) {
	bad := func(format string, args ...any) error {
		return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: "+format, append([]any{id}, args...)...)}
	}
	var f *File
	switch fe.GetType() {
	case fdinfo.FdTypes_EVENTFD:
		e := fe.GetEfd()
		if e == nil {
			return nil, bad("EVENTFD without its entry")
		}
		f = &File{ID: id, Kind: FileEventfd, Flags: e.GetFlags(), Eventfd: &Eventfd{Counter: e.GetCounter()}}
	case fdinfo.FdTypes_SIGNALFD:
		e := fe.GetSgfd()
		if e == nil {
			return nil, bad("SIGNALFD without its entry")
		}
		f = &File{ID: id, Kind: FileSignalfd, Flags: e.GetFlags(), Signalfd: &Signalfd{Mask: e.GetSigmask()}}
	case fdinfo.FdTypes_TIMERFD:
		e := fe.GetTfd()
		if e == nil {
			return nil, bad("TIMERFD without its entry")
		}
		if e.GetVnsec() >= 1e9 || e.GetInsec() >= 1e9 {
			return nil, bad("timer value %d.%09d interval %d.%09d", e.GetVsec(), e.GetVnsec(), e.GetIsec(), e.GetInsec())
		}
		switch e.GetClockid() {
		case unix.CLOCK_REALTIME, unix.CLOCK_MONOTONIC, unix.CLOCK_BOOTTIME, unix.CLOCK_REALTIME_ALARM, unix.CLOCK_BOOTTIME_ALARM:
		default:
			return nil, bad("timer on clock %d", e.GetClockid())
		}
		ts := func(sec, nsec uint64) time.Duration { return time.Duration(sec)*time.Second + time.Duration(nsec) }
		tf := &Timerfd{Clock: int(e.GetClockid()), Value: ts(e.GetVsec(), e.GetVnsec()), Interval: ts(e.GetIsec(), e.GetInsec()), Ticks: e.GetTicks()}
		if tf.Value == 0 && tf.Interval != 0 && tf.Ticks > 0 {
			// A periodic timer that fired and was not read since:
			// the kernel re-arms it only at the next read, so it
			// showed no time left. Set so, it would stay disarmed
			// after that read (CRIU 4.2 writes this and its restore
			// stalls such a reader; crest dump re-arms it first).
			// The next expiry is a period away.
			tf.Value = tf.Interval
		}
		f = &File{ID: id, Kind: FileTimerfd, Flags: e.GetFlags(), Timerfd: tf}
	}
	p.Files[id] = f
	return f, nil
}

// tfdIocSetTicks is TFD_IOC_SET_TICKS, _IOW('T', 0, u64): the expirations
// a timerfd has not been read for (CONFIG_CHECKPOINT_RESTORE).
const tfdIocSetTicks = 0x40085400

// openAnon makes the eventfd, signalfd or timerfd f is. Its status flags
// come from the image (O_NONBLOCK); every engine fd is close-on-exec.
func openAnon(f *File) (int, error) {
	nonblock := int(f.Flags) & syscall.O_NONBLOCK
	switch f.Kind {
	case FileEventfd:
		if f.Eventfd.Counter > 1<<32-1 {
			// eventfd(2) takes an unsigned int: write the rest
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|nonblock)
			if err != nil {
				return -1, fmt.Errorf("eventfd: %w", err)
			}
			if _, err := unix.Write(fd, binary.NativeEndian.AppendUint64(nil, f.Eventfd.Counter)); err != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("eventfd: counter %d: %w", f.Eventfd.Counter, err)
			}
			return fd, nil
		}
		fd, err := unix.Eventfd(uint(f.Eventfd.Counter), unix.EFD_CLOEXEC|nonblock)
		if err != nil {
			return -1, fmt.Errorf("eventfd: %w", err)
		}
		return fd, nil
	case FileSignalfd:
		mask := unix.Sigset_t{Val: [16]uint64{f.Signalfd.Mask}}
		fd, err := unix.Signalfd(-1, &mask, unix.SFD_CLOEXEC|nonblock)
		if err != nil {
			return -1, fmt.Errorf("signalfd: %w", err)
		}
		return fd, nil
	case FileEpoll:
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return -1, fmt.Errorf("epoll_create1: %w", err)
		}
		if nonblock != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, nonblock); err != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("epoll: O_NONBLOCK: %w", err)
			}
		}
		return fd, nil
	case FileTimerfd:
		tf := f.Timerfd
		fd, err := unix.TimerfdCreate(tf.Clock, unix.TFD_CLOEXEC|nonblock)
		if err != nil {
			return -1, fmt.Errorf("timerfd_create: %w", err)
		}
		// the time left, relative, as the kernel showed it at the dump
		its := unix.ItimerSpec{Value: unix.NsecToTimespec(tf.Value.Nanoseconds()), Interval: unix.NsecToTimespec(tf.Interval.Nanoseconds())}
		if err := unix.TimerfdSettime(fd, 0, &its, nil); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("timerfd_settime: %w", err)
		}
		if tf.Ticks > 0 {
			if err := timerfdSetTicks(fd, tf.Ticks); err != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("timerfd: %d expirations not read: %w", tf.Ticks, err)
			}
		}
		return fd, nil
	}
	return -1, fmt.Errorf("kind %v is not an anonymous file", f.Kind)
}

// Epoll is an epoll's items: the target of each is the fd TFD of the
// task whose fd table the dump read (CRIU's eventpoll tfd entries).
type Epoll struct {
	Items []EpollItem
}

// EpollItem is one target of an epoll.
type EpollItem struct {
	TFD    int
	Events uint32
	Data   uint64
}

// EpollAdd is an item a task adds to an epoll once its fds are in place:
// EpFD is the epoll's fd in the task.
type EpollAdd struct {
	EpFD int
	EpollItem
}

// epollFile plans an epoll of files.img: made empty by the engine, its
// items added by a task (planEpolls).
func (p *Plan) epollFile(t *Task, id uint32, e interface {
	GetFlags() uint32
	GetTfd() []*eventpoll.EventpollTfdEntry
	GetFown() *fown.FownEntry
}) (*File, error) {
	ep := &Epoll{}
	for _, tf := range e.GetTfd() {
		ep.Items = append(ep.Items, EpollItem{TFD: int(tf.GetTfd()), Events: tf.GetEvents(), Data: tf.GetData()})
	}
	f := &File{ID: id, Kind: FileEpoll, Flags: e.GetFlags(), Epoll: ep}
	p.Files[id] = f
	return f, nil
}

// planEpolls gives each epoll's items to the first task that holds it
// (plan order), at the fds that task has: the dump read the items in that
// fd table. A target fd the task does not have is an error.
func (p *Plan) planEpolls() error {
	done := map[*File]bool{}
	for _, t := range p.Tasks {
		fds := map[int]bool{}
		for _, fd := range t.FDs {
			fds[fd.FD] = true
		}
		for _, fd := range t.FDs {
			f := fd.File
			if f.Kind != FileEpoll || done[f] {
				continue
			}
			done[f] = true
			for _, it := range f.Epoll.Items {
				if !fds[it.TFD] {
					return &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: the epoll at fd %d watches fd %d, which the task does not have", f.ID, fd.FD, it.TFD)}
				}
				t.EpollAdds = append(t.EpollAdds, EpollAdd{EpFD: fd.FD, EpollItem: it})
			}
		}
	}
	return nil
}
