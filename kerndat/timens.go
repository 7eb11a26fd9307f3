package kerndat

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// TimeNamespace reports whether crest can give a restored tree its dumped
// monotonic and boottime clocks: it unshares a time namespace on a
// throw-away thread and sets the offsets its children would see.
var TimeNamespace = NewProbe(TimeNamespaceName, Restore, func() Feature {
	return probeTimeNamespace("/proc/self/ns/time", "monotonic 86400 0\nboottime 86400 0\n")
})

func probeTimeNamespace(nsPath, offsets string) Feature {
	self, err := os.Readlink(nsPath)
	if err != nil {
		return Missing("no time namespaces: %s", ErrText(err))
	}
	var f Feature
	onThrowawayThread(func() { f = unshareTime(offsets) })
	if f.OK {
		f.Reason = fmt.Sprintf("we are in %s; %s", self, f.Reason)
	}
	return f
}

// unshareTime runs on a throw-away thread: unshare(CLONE_NEWTIME) moves
// the thread's future children into the new namespace for good.
func unshareTime(offsets string) Feature {
	tid := unix.Gettid()
	if err := unix.Unshare(unix.CLONE_NEWTIME); err != nil {
		return Missing("unshare(CLONE_NEWTIME) on thread %d: %s", tid, ErrText(err))
	}
	cur, err := os.Readlink("/proc/thread-self/ns/time")
	if err != nil {
		return Missing("unshare(CLONE_NEWTIME) on thread %d, then %s", tid, ErrText(err))
	}
	next, err := os.Readlink("/proc/thread-self/ns/time_for_children")
	if err != nil {
		return Missing("unshare(CLONE_NEWTIME) on thread %d, then %s", tid, ErrText(err))
	}
	if cur == next {
		return Missing("unshare(CLONE_NEWTIME) on thread %d left time_for_children at %s", tid, next)
	}
	// The offsets can be set until a first task enters the namespace, which
	// is how a restore will carry the dumped clocks over.
	path := fmt.Sprintf("/proc/%d/timens_offsets", tid)
	if err := os.WriteFile(path, []byte(offsets), 0); err != nil {
		return Missing("new time namespace %s, but setting offsets %q: %s", next, offsets, ErrText(err))
	}
	got, err := os.ReadFile(path)
	if err != nil {
		return Missing("new time namespace %s, but %s", next, ErrText(err))
	}
	want, have := parseOffsets(offsets), parseOffsets(string(got))
	for clock, off := range want {
		if have[clock] != off {
			return Missing("new time namespace %s: wrote offsets %q to %s, read back %q", next, offsets, path, got)
		}
	}
	return OK("unshare(CLONE_NEWTIME) gave children %s, offsets set (%s)", next, formatOffsets(want))
}

// parseOffsets reads timens_offsets lines, "clock sec nsec" with any
// spacing, into clock -> "sec nsec".
func parseOffsets(s string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(s, "\n") {
		if f := strings.Fields(l); len(f) == 3 {
			m[f[0]] = f[1] + " " + f[2]
		}
	}
	return m
}

func formatOffsets(m map[string]string) string {
	var out []string
	for clock, off := range m {
		out = append(out, clock+" "+off)
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// ParseTimensOffsets reads a /proc/PID/timens_offsets file: a line per
// clock, its name (or number: 1 monotonic, 7 boottime), seconds and
// nanoseconds. The clocks of a process in that time namespace are the
// host's plus these.
func ParseTimensOffsets(s string) (mono, boot time.Duration, err error) {
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 {
			return 0, 0, fmt.Errorf("timens_offsets line %q", l)
		}
		sec, err1 := strconv.ParseInt(f[1], 10, 64)
		nsec, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("timens_offsets line %q", l)
		}
		v := time.Duration(sec)*time.Second + time.Duration(nsec)
		switch f[0] {
		case "monotonic", "1":
			mono = v
		case "boottime", "7":
			boot = v
		}
	}
	return mono, boot, nil
}
