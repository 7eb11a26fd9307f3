package kerndat

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Need says which parts of crest use a feature. A Feature nobody needs
// (Need 0) is information: its absence never stops anything.
type Need uint8

const (
	// Restore: crest restore can not work without the feature.
	Restore Need = 1 << iota
	// Dump: crest dump can not work without it.
	Dump
	// Monitor: the eBPF monitor (crest restore --verify) can not work
	// without it.
	Monitor
)

var needNames = []struct {
	need Need
	name string
}{{Restore, "restore"}, {Dump, "dump"}, {Monitor, "monitor"}}

// Names lists the parts of crest n stands for: "restore", "dump", "monitor".
func (n Need) Names() []string {
	names := []string{}
	for _, nn := range needNames {
		if n&nn.need != 0 {
			names = append(names, nn.name)
		}
	}
	return names
}

// String is "restore,dump", or "info" for a feature nobody needs.
func (n Need) String() string {
	if n == 0 {
		return "info"
	}
	return strings.Join(n.Names(), ",")
}

// MarshalJSON writes n as a list of names, empty for information.
func (n Need) MarshalJSON() ([]byte, error) { return json.Marshal(n.Names()) }

// UnmarshalJSON reads what MarshalJSON writes.
func (n *Need) UnmarshalJSON(b []byte) error {
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return err
	}
	*n = 0
next:
	for _, s := range names {
		for _, nn := range needNames {
			if s == nn.name {
				*n |= nn.need
				continue next
			}
		}
		return fmt.Errorf("kerndat: unknown need %q", s)
	}
	return nil
}

// Names of kerndat's features as they appear in a Report and in crest
// check's output (package bpf names its own).
const (
	Clone3SetTIDName     = "clone3_set_tid"
	PidfdOpenName        = "pidfd_open"
	PidfdGetfdName       = "pidfd_getfd"
	CheckpointCapName    = "cap_checkpoint_restore"
	SysResourceCapName   = "cap_sys_resource"
	TimeNamespaceName    = "time_namespace"
	UserfaultfdName      = "userfaultfd"
	TracefsName          = "tracefs"
	XSaveName            = "xsave"
	TCPRepairName        = "tcp_repair"
	NetworkLockToolsName = "network_lock_tools"
)

// Feature is the outcome of one probe.
type Feature struct {
	Name     string `json:"name"`
	OK       bool   `json:"ok"`
	NeededBy Need   `json:"needed_by"`
	// Reason says what the probe did and found: the syscall and errno
	// when the kernel refused, or the evidence that the feature works.
	Reason string `json:"reason"`
	// Took is how long the probe ran, the first (and only) time.
	Took time.Duration `json:"took_ns"`
}

func (f Feature) String() string {
	status := "ok"
	if !f.OK {
		status = "missing"
	}
	return fmt.Sprintf("%s: %s (%s): %s", f.Name, status, f.NeededBy, f.Reason)
}

// OK and Missing build a Feature's outcome; NewProbe fills in its name,
// need and time.
func OK(format string, args ...any) Feature {
	return Feature{OK: true, Reason: fmt.Sprintf(format, args...)}
}

// Missing builds the outcome of a probe that found the feature unusable;
// the reason names the system call and errno, or what was found instead.
func Missing(format string, args ...any) Feature {
	return Feature{OK: false, Reason: fmt.Sprintf(format, args...)}
}

// NewProbe returns a function that runs fn the first time it is called,
// names and times its result, and returns that same result ever after.
// Package bpf makes its probes with it too.
func NewProbe(name string, need Need, fn func() Feature) func() Feature {
	return sync.OnceValue(func() Feature {
		start := time.Now()
		f := fn()
		f.Name, f.NeededBy, f.Took = name, need, time.Since(start)
		return f
	})
}

// Report is everything crest check prints.
type Report struct {
	Kernel  string `json:"kernel"`  // uname release
	Machine string `json:"machine"` // uname machine
	// XFeatures is the CPU's user xsave feature mask as the OS enabled it
	// (XCR0); 0 where there is no xsave.
	XFeatures uint64    `json:"xfeatures"`
	Features  []Feature `json:"features"`
	// Took is the wall time of this Check. Probes are cached, so only the
	// first Check in a process measures them.
	Took time.Duration `json:"took_ns"`
}

// Check runs the probe sets in order (each probe at most once per process)
// and reports them with the kernel's identity and the time it all took.
// cmd/crest calls it as Check(kerndat.Features, bpf.Features).
func Check(sets ...func() []Feature) *Report {
	start := time.Now()
	r := &Report{}
	r.Kernel, r.Machine = Kernel()
	r.XFeatures = XFeatures()
	for _, set := range sets {
		r.Features = append(r.Features, set()...)
	}
	r.Took = time.Since(start)
	return r
}

// Feature returns the named feature and whether the report has it.
func (r *Report) Feature(name string) (Feature, bool) {
	for _, f := range r.Features {
		if f.Name == name {
			return f, true
		}
	}
	return Feature{}, false
}

// Missing lists the missing features that any part in need needs.
func (r *Report) Missing(need Need) []Feature {
	var out []Feature
	for _, f := range r.Features {
		if !f.OK && f.NeededBy&need != 0 {
			out = append(out, f)
		}
	}
	return out
}

// Features runs (once) and returns every probe of this package, in the
// order crest check prints them.
func Features() []Feature {
	return []Feature{
		Clone3SetTID(),
		PidfdOpen(),
		PidfdGetfd(),
		CheckpointCap(),
		SysResourceCap(),
		TimeNamespace(),
		Userfaultfd(),
		Tracefs(),
		XSave(),
		TCPRepair(),
		NetworkLockTools(),
	}
}

// ErrText is err's message with the errno's name appended when err carries
// one: "clone3: file exists (EEXIST)". Reasons use it so that a refused
// probe names the errno a reader can look up.
func ErrText(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return fmt.Sprintf("%v (%s)", err, name)
		}
	}
	return err.Error()
}
