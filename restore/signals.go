package restore

import (
	"encoding/binary"
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/siginfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
)

// Signal state beyond the dispositions (Task.Sigactions) and the blocked
// masks and alternate stacks (restored with each thread's rt_sigreturn):
// pending signals, per thread and shared, which the agent queues again
// with rt_tgsigqueueinfo / rt_sigqueueinfo while every signal is blocked,
// and the interval timers, which the leader sets last (agent signals.c).

// Siginfo is one pending signal: the kernel's siginfo_t, as CRIU stores it.
type Siginfo [128]byte

// Signo is the signal's number.
func (s *Siginfo) Signo() int { return int(int32(binary.LittleEndian.Uint32(s[0:]))) }

// Itimer is one interval timer: its period and the time left until it
// fires next, in seconds and microseconds (CRIU's itimer_entry).
type Itimer struct {
	IntervalSec, IntervalUsec uint64
	ValueSec, ValueUsec       uint64
}

// Armed reports whether the timer runs.
func (it Itimer) Armed() bool { return it.ValueSec|it.ValueUsec != 0 }

// The indices of Task.Itimers, setitimer(2)'s which.
const (
	ItimerReal    = 0
	ItimerVirtual = 1
	ItimerProf    = 2
)

// PosixTimer is one POSIX timer of a task (timer_create(2); CRIU's
// posix_timer_entry): created again with its id, clock and notification,
// and armed with its period and the time left. Its overrun count is not
// restored (the kernel has no way to set it).
type PosixTimer struct {
	ID, ClockID               uint32
	Signo, Notify             uint32 // sigev_signo, sigev_notify
	SivalPtr                  uint64 // sigev_value
	NotifyTID                 int32  // for SIGEV_THREAD_ID: the thread (image tid)
	IntervalSec, IntervalNsec uint64
	ValueSec, ValueNsec       uint64
}

// sigev_notify values the restore knows (SIGEV_THREAD is glibc's, made
// of SIGEV_THREAD_ID).
const (
	sigevSignal   = 0
	sigevNone     = 1
	sigevThreadID = 4
)

// loadSignals reads t's interval timers, POSIX timers and pending signals.
func loadSignals(t *Task) error {
	name := fmt.Sprintf("core-%d.img", t.PID)
	tc := t.Threads[0].Core.GetTc()
	if tm := tc.GetTimers(); tm != nil {
		for i, ie := range []*timer.ItimerEntry{tm.GetReal(), tm.GetVirt(), tm.GetProf()} {
			it, err := itimer(ie)
			if err != nil {
				return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("itimer %d", i), Err: err}
			}
			t.Itimers[i] = it
		}
	}
	for i, pt := range tc.GetTimers().GetPosix() {
		ptm := PosixTimer{ID: pt.GetItId(), ClockID: pt.GetClockId(), Signo: pt.GetSiSigno(), Notify: pt.GetItSigevNotify(),
			SivalPtr: pt.GetSivalPtr(), NotifyTID: pt.GetNotifyThreadId(),
			IntervalSec: pt.GetIsec(), IntervalNsec: pt.GetInsec(), ValueSec: pt.GetVsec(), ValueNsec: pt.GetVnsec()}
		where := fmt.Sprintf("POSIX timer %d (entry %d)", ptm.ID, i)
		switch {
		case ptm.Notify != sigevSignal && ptm.Notify != sigevNone && ptm.Notify != sigevThreadID:
			return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("%s: notification %d is not supported", where, ptm.Notify)}
		case ptm.Notify != sigevNone && (ptm.Signo < 1 || ptm.Signo > 64):
			return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("%s: signal %d", where, ptm.Signo)}
		case ptm.IntervalNsec >= 1e9 || ptm.ValueNsec >= 1e9:
			return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("%s: invalid time", where)}
		case ptm.ID > 1<<31-1:
			return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("%s: invalid id", where)}
		}
		if ptm.Notify == sigevThreadID && !hasThread(t, int(ptm.NotifyTID)) {
			return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("%s: notifies thread %d, which is not the task's", where, ptm.NotifyTID)}
		}
		for _, o := range t.PosixTimers {
			if o.ID == ptm.ID {
				return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("%s: the id appears twice", where)}
			}
		}
		t.PosixTimers = append(t.PosixTimers, ptm)
	}
	var err error
	if t.SharedSignals, err = siginfos(tc.GetSignalsS().GetSignals()); err != nil {
		return &PlanError{PID: t.PID, File: name, Msg: "shared pending signals", Err: err}
	}
	for i := range t.Threads {
		th := &t.Threads[i]
		if th.Signals, err = siginfos(th.Core.GetThreadCore().GetSignalsP().GetSignals()); err != nil {
			return &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", th.TID), Msg: "pending signals", Err: err}
		}
	}
	return nil
}

// itimer decodes a timer. As CRIU does, a periodic timer whose time left
// was too short to record fires after one period; unlike CRIU, a one-shot
// timer (no period) keeps its time left instead of being dropped.
func itimer(ie *timer.ItimerEntry) (Itimer, error) {
	it := Itimer{IntervalSec: ie.GetIsec(), IntervalUsec: ie.GetIusec(), ValueSec: ie.GetVsec(), ValueUsec: ie.GetVusec()}
	if it.IntervalUsec >= 1e6 || it.ValueUsec >= 1e6 || int64(it.IntervalSec) < 0 || int64(it.ValueSec) < 0 {
		return Itimer{}, fmt.Errorf("invalid time: %+v", it)
	}
	if !it.Armed() && it.IntervalSec|it.IntervalUsec != 0 {
		it.ValueSec, it.ValueUsec = it.IntervalSec, it.IntervalUsec
	}
	return it, nil
}

func siginfos(ents []*siginfo.SiginfoEntry) ([]Siginfo, error) {
	var out []Siginfo
	for i, e := range ents {
		b := e.GetSiginfo()
		if len(b) != len(Siginfo{}) {
			return nil, fmt.Errorf("entry %d: siginfo of %d bytes, want %d", i, len(b), len(Siginfo{}))
		}
		var si Siginfo
		copy(si[:], b)
		if s := si.Signo(); s < 1 || s > 64 {
			return nil, fmt.Errorf("entry %d: signal %d", i, s)
		}
		out = append(out, si)
	}
	return out, nil
}

func hasThread(t *Task, tid int) bool {
	for _, th := range t.Threads {
		if th.TID == tid {
			return true
		}
	}
	return false
}
