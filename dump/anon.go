package dump

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/signalfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timerfd"
)

// Anonymous-inode files. Eventfds, signalfds and timerfds are dumped as
// CRIU 4.2 dumps them: a files.img entry holding what
// /proc/PID/fdinfo/FD says of the file (criu/eventfd.c, signalfd.c,
// timerfd.c), except that a periodic timerfd found expired is started
// again first (forwardTimerfd). The other kinds are refused.
//
// All anonymous-inode files of a kind share one inode (fdinfo "ino:"), so
// they are told apart by their open file description (kcmp), as the
// other files are.

// anonTypes are the anonymous-inode files crest dumps, by /proc link.
var anonTypes = map[string]fdinfo.FdTypes{
	"anon_inode:[eventfd]":  fdinfo.FdTypes_EVENTFD,
	"anon_inode:[signalfd]": fdinfo.FdTypes_SIGNALFD,
	"anon_inode:[timerfd]":  fdinfo.FdTypes_TIMERFD,
}

// anonKinds names, for the error, the anonymous-inode files crest
// refuses, by /proc link.
var anonKinds = map[string]string{
	"anon_inode:[eventpoll]":   "epoll",
	"anon_inode:inotify":       "inotify",
	"anon_inode:[fanotify]":    "fanotify",
	"anon_inode:[io_uring]":    "io_uring",
	"anon_inode:[pidfd]":       "pidfd",
	"anon_inode:[userfaultfd]": "userfaultfd",
	"anon_inode:[perf_event]":  "perf event",
	"anon_inode:bpf-map":       "BPF map",
	"anon_inode:bpf-prog":      "BPF program",
	"anon_inode:bpf_link":      "BPF link",
}

// anonRefusal says why the anonymous-inode file name (not one of
// anonTypes) is refused.
func anonRefusal(name string) string {
	kind, ok := anonKinds[name]
	if !ok {
		kind = "anonymous-inode " + strings.TrimPrefix(name, "anon_inode:")
	}
	return kind + " files are not supported"
}

// anonEntry is the files.img entry of an eventfd, signalfd or timerfd
// (typ), fd of process pid, whose fdinfo is fi; flags are its open flags
// without O_CLOEXEC (which is the fd's, in its fdinfo entry). why is set,
// and the entry nil, for a file in a state the images can not hold.
func anonEntry(id uint32, typ fdinfo.FdTypes, flags uint32, pid, fd int, fi *fdInfo) (fe *fdinfo.FileEntry, why string, err error) {
	fe = &fdinfo.FileEntry{Type: typ.Enum(), Id: proto.Uint32(id)}
	switch typ {
	case fdinfo.FdTypes_EVENTFD:
		// The kernel prints the count with %16llx.
		count, err := fi.number("eventfd-count", 16)
		if err != nil {
			return nil, "", err
		}
		// EFD_SEMAPHORE is kept in the eventfd, not in the file's
		// flags, and eventfd_file_entry has no field for it: CRIU
		// would bring back a plain eventfd. Older kernels have no
		// such line, and no way to tell.
		if sem, ok := fi.rest["eventfd-semaphore"]; ok && sem != "0" {
			return nil, "eventfds in semaphore mode (EFD_SEMAPHORE) are not supported", nil
		}
		fe.Efd = &eventfd.EventfdFileEntry{Id: proto.Uint32(id), Flags: proto.Uint32(flags), Fown: zeroFown(),
			Counter: proto.Uint64(count)}
	case fdinfo.FdTypes_SIGNALFD:
		mask, err := fi.number("sigmask", 16)
		if err != nil {
			return nil, "", err
		}
		fe.Sgfd = &signalfd.SignalfdEntry{Id: proto.Uint32(id), Flags: proto.Uint32(flags), Fown: zeroFown(),
			Sigmask: proto.Uint64(mask)}
	case fdinfo.FdTypes_TIMERFD:
		for try := 0; ; try++ {
			if fe.Tfd, why, err = timerfdEntry(fi); fe.Tfd == nil {
				return nil, why, err
			}
			fe.Tfd.Id, fe.Tfd.Flags, fe.Tfd.Fown = proto.Uint32(id), proto.Uint32(flags), zeroFown()
			if !expiredPeriodic(fe.Tfd) {
				break
			}
			if try == settleTries {
				// It expires again before we read it: a timer of a
				// few microseconds. The next expiration is less than
				// an interval away.
				fe.Tfd.Vsec, fe.Tfd.Vnsec = proto.Uint64(fe.Tfd.GetIsec()), proto.Uint64(fe.Tfd.GetInsec())
				break
			}
			if err := forwardTimerfd(pid, fd); err != nil {
				return nil, "", err
			}
			if fi, err = readFdinfo(pid, fd); err != nil {
				return nil, "", err
			}
		}
	default:
		return nil, "", fmt.Errorf("no anonymous-inode file of type %v", typ)
	}
	return fe, "", nil
}

// timerfdEntry reads a timerfd's state from its fdinfo, without id,
// flags and fown. why is set, and the entry nil, for a clock the images
// can not hold.
func timerfdEntry(fi *fdInfo) (t *timerfd.TimerfdEntry, why string, err error) {
	clock, err := fi.number("clockid", 10)
	if err != nil {
		return nil, "", err
	}
	switch clock {
	case unix.CLOCK_REALTIME, unix.CLOCK_MONOTONIC, unix.CLOCK_BOOTTIME:
	default:
		// CRIU refuses the alarm clocks (verify_timerfd).
		return nil, fmt.Sprintf("timerfds on clock %d are not supported", clock), nil
	}
	ticks, err := fi.number("ticks", 10)
	if err != nil {
		return nil, "", err
	}
	settime, err := fi.number("settime flags", 8)
	if err != nil {
		return nil, "", err
	}
	// it_value is the time left, also for a TFD_TIMER_ABSTIME timer:
	// the restore adds the clock's time then, as CRIU's restorer does.
	vsec, vnsec, err := fi.timespec("it_value")
	if err != nil {
		return nil, "", err
	}
	isec, insec, err := fi.timespec("it_interval")
	if err != nil {
		return nil, "", err
	}
	return &timerfd.TimerfdEntry{Clockid: proto.Uint32(uint32(clock)), Ticks: proto.Uint64(ticks),
		SettimeFlags: proto.Uint32(uint32(settime)), Vsec: proto.Uint64(vsec), Vnsec: proto.Uint64(vnsec),
		Isec: proto.Uint64(isec), Insec: proto.Uint64(insec)}, "", nil
}

// Expired periodic timerfds. When a periodic timer expires, the kernel
// counts one tick and leaves the timer stopped until the next read(2) or
// timerfd_gettime(2) adds the expirations since and starts it again.
// Until then fdinfo shows it_value (0, 0), which a restore (CRIU 4.2's
// too: criu issue 3162) takes for a disarmed timer. A task stopped for
// the dump reads its timer no longer, so a timer faster than the freeze
// is nearly always found so.
//
// forwardTimerfd does what the task's next read(2) would do first:
// timerfd_gettime(2) on the same open file (pidfd_getfd), which adds the
// expirations to the ticks and starts the timer again; the task then
// reads the ticks it would have read. The fdinfo read after it has the
// time left to the next expiration and all the ticks.

// settleTries is how often a timer that expired is forwarded and read
// again before the dump gives up on seeing it running.
const settleTries = 3

// expiredPeriodic reports whether t is a periodic timer that expired and
// was not started again.
func expiredPeriodic(t *timerfd.TimerfdEntry) bool {
	return t.GetVsec() == 0 && t.GetVnsec() == 0 && (t.GetIsec() != 0 || t.GetInsec() != 0)
}

// forwardTimerfd starts the expired periodic timerfd fd of process pid
// again, counting the expirations since in its ticks.
func forwardTimerfd(pid, fd int) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return os.NewSyscallError("pidfd_open", err)
	}
	defer unix.Close(pidfd)
	tfd, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return os.NewSyscallError("pidfd_getfd", err)
	}
	defer unix.Close(tfd)
	var cur unix.ItimerSpec
	if err := unix.TimerfdGettime(tfd, &cur); err != nil {
		return os.NewSyscallError("timerfd_gettime", err)
	}
	return nil
}
