package kerndat

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// tracefsDir is where tracefs belongs (since Linux 4.1).
const tracefsDir = "/sys/kernel/tracing"

// Tracefs reports where tracefs is mounted. The monitor's tp_btf programs
// do not need it (they attach by BTF id), but tracepoint links, which look
// up event ids in tracefs, and reading trace_pipe while debugging a BPF
// program do; so its absence is information. The probe never mounts
// anything.
var Tracefs = NewProbe(TracefsName, 0, func() Feature {
	return probeTracefs("/proc/self/mountinfo", tracefsDir)
})

// probeTracefs looks for tracefs mounts in mountinfo rather than at the
// usual paths: touching /sys/kernel/debug/tracing would automount tracefs
// there, and a probe must not change the system.
func probeTracefs(mountinfo, want string) Feature {
	mounts, err := tracefsMounts(mountinfo)
	if err != nil {
		return Missing("%s", ErrText(err))
	}
	if len(mounts) == 0 {
		return Missing("not mounted (no tracefs in %s); mount it with: mount -t tracefs nodev %s", mountinfo, want)
	}
	dir := mounts[0]
	for _, m := range mounts {
		if m == want {
			dir = m
		}
	}
	return tracefsAt(dir)
}

// tracefsAt checks that dir is a usable tracefs mount.
func tracefsAt(dir string) Feature {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Missing("statfs(%s): %s; mount it with: mount -t tracefs nodev %s", dir, ErrText(err), dir)
	}
	if st.Type != unix.TRACEFS_MAGIC {
		return Missing("%s is not tracefs (statfs f_type %#x, want %#x); mount it with: mount -t tracefs nodev %s",
			dir, st.Type, unix.TRACEFS_MAGIC, dir)
	}
	events := filepath.Join(dir, "events")
	if _, err := os.Stat(events); err != nil {
		return Missing("tracefs at %s has no events: %s", dir, ErrText(err))
	}
	return OK("tracefs mounted at %s (statfs f_type %#x, events/ present)", dir, st.Type)
}

// tracefsMounts lists the mount points of tracefs in a mountinfo file.
func tracefsMounts(mountinfo string) ([]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var dirs []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, fl := range fields {
			if fl == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		if fields[sep+1] == "tracefs" {
			dirs = append(dirs, unescapeMountinfo(fields[4]))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", mountinfo, err)
	}
	return dirs, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) the kernel
// writes in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
