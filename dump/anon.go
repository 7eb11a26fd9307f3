package dump

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventpoll"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/signalfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timerfd"
)

// Anonymous-inode files. Eventfds, signalfds, timerfds, epolls and
// inotify files (inotify.go) are dumped as CRIU 4.2 dumps them: a
// files.img entry holding what /proc/PID/fdinfo/FD says of the file
// (criu/eventfd.c, signalfd.c, timerfd.c, eventpoll.c, fsnotify.c),
// except that a periodic timerfd found expired is started again first
// (forwardTimerfd). The other kinds are refused.
//
// All anonymous-inode files of a kind share one inode (fdinfo "ino:"), so
// they are told apart by their open file description (kcmp), as the
// other files are.

// anonTypes are the anonymous-inode files crest dumps, by /proc link.
var anonTypes = map[string]fdinfo.FdTypes{
	"anon_inode:[eventfd]":   fdinfo.FdTypes_EVENTFD,
	"anon_inode:[signalfd]":  fdinfo.FdTypes_SIGNALFD,
	"anon_inode:[timerfd]":   fdinfo.FdTypes_TIMERFD,
	"anon_inode:[eventpoll]": fdinfo.FdTypes_EVENTPOLL,
	"anon_inode:inotify":     fdinfo.FdTypes_INOTIFY, // inotify.go
}

// anonKinds names, for the error, the anonymous-inode files crest
// refuses, by /proc link.
var anonKinds = map[string]string{
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

// anonEntry is the files.img entry of an eventfd, signalfd, timerfd,
// epoll or inotify (typ), fd of process pid, whose fdinfo is fi; flags
// are its open flags without O_CLOEXEC (which is the fd's, in its fdinfo
// entry). why is set, and the entry nil, for a file in a state the
// images can not hold.
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
	case fdinfo.FdTypes_EVENTPOLL:
		if fe.Epfd, why, err = epollEntry(id, flags, pid, fd, fi); fe.Epfd == nil {
			return nil, why, err
		}
	case fdinfo.FdTypes_INOTIFY: // inotify.go
		if fe.Ify, why, err = inotifyEntry(id, flags, pid, fd); fe.Ify == nil {
			return nil, why, err
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

// Epolls. CRIU 4.2 writes an epoll's targets inline in its entry: per
// "tfd:" line of its fdinfo the target's fd number in the task's fd
// table, the events and data word it is watched with, and the target
// file's inode, device and position. The restore adds each target again
// by that fd number, so it must be the target: the kernel keeps an item
// as long as its file is open anywhere, also after the fd it was added
// by was closed or given to another file. crest refuses such an epoll
// (CRIU 4.2 looks for the file under another fd; crest does not).
// Whether the task's fd is the target's file is asked of the kernel
// itself: kcmp(KCMP_EPOLL_TFD), as CRIU does.

// epollEntry reads epoll fd of process pid from its fdinfo fi. why is
// set, and the entry nil, for a target that is not the file open at its
// fd number in the task.
func epollEntry(id, flags uint32, pid, fd int, fi *fdInfo) (e *eventpoll.EventpollFileEntry, why string, err error) {
	e = &eventpoll.EventpollFileEntry{Id: proto.Uint32(id), Flags: proto.Uint32(flags), Fown: zeroFown()}
	// An fd number may have several items, of files that had it in
	// turn; kcmp picks the one to compare by its rank among them (toff),
	// in the order fdinfo lists them.
	seen := map[uint32]uint32{}
	for _, line := range fi.tfds {
		t, err := parseTfd(line)
		if err != nil {
			return nil, "", err
		}
		t.Id = proto.Uint32(id)
		tfd := t.GetTfd()
		toff := seen[tfd]
		seen[tfd]++
		same, err := kcmpEpollTarget(pid, fd, tfd, toff)
		switch {
		case errors.Is(err, unix.EBADF):
			return nil, fmt.Sprintf("epoll target fd %d is not open in the task (closed, its file open elsewhere)", tfd), nil
		case err != nil:
			return nil, "", fmt.Errorf("epoll target fd %d: %w", tfd, err)
		case !same:
			return nil, fmt.Sprintf("epoll target fd %d is another file than the one watched (the fd was closed and reused)", tfd), nil
		}
		e.Tfd = append(e.Tfd, t)
	}
	return e, "", nil
}

// parseTfd reads a "tfd:" line of an epoll's fdinfo, which the kernel
// prints as "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x"
// (kernels before 3.19 stop after data). Dev is sdev as the kernel
// prints it, its own dev_t encoding, as CRIU 4.2 keeps it.
func parseTfd(line string) (*eventpoll.EventpollTfdEntry, error) {
	vals := map[string]string{}
	fields := strings.Fields(line)
	for i := 0; i < len(fields); i++ {
		k, v, _ := strings.Cut(fields[i], ":")
		if v == "" && i+1 < len(fields) {
			i++
			v = fields[i]
		}
		vals[k] = v
	}
	num := func(key string, base, bits int) (uint64, error) {
		v, ok := vals[key]
		if !ok {
			return 0, fmt.Errorf("%q: no %s", line, key)
		}
		n, err := strconv.ParseUint(v, base, bits)
		if err != nil {
			return 0, fmt.Errorf("%q: %s: %w", line, key, err)
		}
		return n, nil
	}
	tfd, err1 := num("tfd", 10, 32)
	events, err2 := num("events", 16, 32)
	data, err3 := num("data", 16, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, err
	}
	t := &eventpoll.EventpollTfdEntry{Tfd: proto.Uint32(uint32(tfd)), Events: proto.Uint32(uint32(events)), Data: proto.Uint64(data)}
	if _, ok := vals["pos"]; !ok {
		return t, nil
	}
	// pos is printed signed (%lli); CRIU keeps its bits.
	pos, err1 := strconv.ParseInt(vals["pos"], 10, 64)
	if err1 != nil {
		err1 = fmt.Errorf("%q: pos: %w", line, err1)
	}
	ino, err2 := num("ino", 16, 64)
	dev, err3 := num("sdev", 16, 32)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, err
	}
	t.Pos, t.Inode, t.Dev = proto.Uint64(uint64(pos)), proto.Uint64(ino), proto.Uint32(uint32(dev))
	return t, nil
}

// kcmpEpollTfd is KCMP_EPOLL_TFD (linux/kcmp.h).
const kcmpEpollTfd = 7

// kcmpEpollSlot is struct kcmp_epoll_slot (linux/kcmp.h): the toff-th
// item of fd number tfd in epoll efd.
type kcmpEpollSlot struct{ efd, tfd, toff uint32 }

// kcmpEpollTarget reports whether fd tfd of process pid is the file of
// the toff-th item of fd number tfd in pid's epoll epfd. The error is
// EBADF when tfd is not open.
func kcmpEpollTarget(pid, epfd int, tfd, toff uint32) (bool, error) {
	slot := kcmpEpollSlot{efd: uint32(epfd), tfd: tfd, toff: toff}
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(pid), kcmpEpollTfd, uintptr(tfd), uintptr(unsafe.Pointer(&slot)), 0)
	if e != 0 {
		return false, os.NewSyscallError("kcmp(KCMP_EPOLL_TFD)", e)
	}
	return r == 0, nil
}
