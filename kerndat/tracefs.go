package kerndat

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/internal/procfs"
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
	mounts, err := procfs.ReadMountinfo(mountinfo)
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, m := range mounts {
		if m.FSType == "tracefs" {
			dirs = append(dirs, m.Point)
		}
	}
	return dirs, nil
}
