package kerndat

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFeaturesHere runs every probe for real. This machine (root in a VM,
// Linux 6.18) has all of them except CAP_SYS_RESOURCE and, unless someone
// mounted it, tracefs; those two are checked against the kernel's own
// account (/proc/self/status, statfs) rather than assumed.
func TestFeaturesHere(t *testing.T) {
	capEff := statusCapEff(t)
	var tracefsMounted bool
	var st unix.Statfs_t
	if unix.Statfs(tracefsDir, &st) == nil && st.Type == unix.TRACEFS_MAGIC {
		tracefsMounted = true
	}
	lockTools := true // .ci/run installs them
	for _, tool := range []string{"iptables", "ip6tables", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			lockTools = false
		}
	}
	tests := []struct {
		name     string
		need     Need
		ok       bool
		contains []string
	}{
		{Clone3SetTIDName, Restore, true, []string{"clone3(CLONE_NEWPID|CLONE_PIDFD, set_tid={1})", "which is 1 in its pid namespace", " 1)"}},
		{PidfdOpenName, Restore | Dump, true, []string{fmt.Sprintf("names pid %d", os.Getpid())}},
		{PidfdGetfdName, Restore | Dump, true, []string{"the same pipe"}},
		{CheckpointCapName, Restore | Dump, true, []string{"capget(0)", "has CAP_CHECKPOINT_RESTORE"}},
		{SysResourceCapName, 0, hasCap(capEff, unix.CAP_SYS_RESOURCE), []string{fmt.Sprintf("%#x", capEff), "CAP_SYS_RESOURCE"}},
		{TimeNamespaceName, Restore, true, []string{"unshare(CLONE_NEWTIME)", "offsets set (boottime 86400 0; monotonic 86400 0)"}},
		{UserfaultfdName, 0, true, []string{"userfaultfd(O_CLOEXEC|O_NONBLOCK) gave an fd", "UFFDIO_API: features 0x"}},
		{TracefsName, 0, tracefsMounted, nil},
		{XSaveName, 0, cpuinfoHasFlag(t, "avx512f"), []string{fmt.Sprintf("XCR0 %#x", XFeatures()), "the fixtures' 0xe5"}},
		{TCPRepairName, 0, true, []string{"repair mode (TCP_REPAIR)", "read back (1000)"}},
		{NetworkLockToolsName, 0, lockTools, []string{"iptables", "nft"}},
	}
	features := Features()
	if len(features) != len(tests) {
		t.Fatalf("Features() has %d features, the test knows %d", len(features), len(tests))
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := features[i]
			t.Log(f)
			if f.Name != tt.name || f.NeededBy != tt.need {
				t.Fatalf("feature %d is %s needed by %s, want %s needed by %s", i, f.Name, f.NeededBy, tt.name, tt.need)
			}
			if f.OK != tt.ok {
				t.Errorf("ok = %v, want %v: %s", f.OK, tt.ok, f.Reason)
			}
			for _, s := range tt.contains {
				if !strings.Contains(f.Reason, s) {
					t.Errorf("reason %q lacks %q", f.Reason, s)
				}
			}
			if f.Took <= 0 {
				t.Errorf("took %v, want the probe's running time", f.Took)
			}
		})
	}
	if !tracefsMounted {
		f, _ := Check(Features).Feature(TracefsName)
		if !strings.Contains(f.Reason, "mount -t tracefs nodev /sys/kernel/tracing") {
			t.Errorf("tracefs is not mounted, but the reason does not say how to mount it: %s", f.Reason)
		}
	}
}

func TestCheck(t *testing.T) {
	r := Check(Features)
	release, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	if r.Kernel != strings.TrimSpace(string(release)) {
		t.Errorf("kernel %q, /proc/sys/kernel/osrelease says %q", r.Kernel, release)
	}
	if runtime.GOARCH == "amd64" && r.Machine != "x86_64" {
		t.Errorf("machine %q on amd64", r.Machine)
	}
	if runtime.GOARCH == "amd64" && r.XFeatures&3 != 3 {
		t.Errorf("xfeatures %#x lack x87 and sse", r.XFeatures)
	}
	if m := r.Missing(Restore | Dump); len(m) != 0 {
		t.Errorf("missing for restore or dump on this machine: %v", m)
	}
	again := Check(Features)
	if !slices.Equal(r.Features, again.Features) {
		t.Errorf("second Check differs (probes must run once):\n%v\n%v", r.Features, again.Features)
	}
	if f, ok := r.Feature(Clone3SetTIDName); !ok || !f.OK {
		t.Errorf("Feature(%q) = %v, %v", Clone3SetTIDName, f, ok)
	}
	if _, ok := r.Feature("no_such_feature"); ok {
		t.Error("Feature found a feature nobody probes")
	}

	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if !slices.Equal(back.Features, r.Features) || back.Kernel != r.Kernel || back.XFeatures != r.XFeatures {
		t.Errorf("JSON round trip changed the report:\n%s", b)
	}
}

func TestNeed(t *testing.T) {
	tests := []struct {
		need Need
		str  string
		json string
	}{
		{0, "info", `[]`},
		{Restore, "restore", `["restore"]`},
		{Restore | Dump, "restore,dump", `["restore","dump"]`},
		{Monitor, "monitor", `["monitor"]`},
		{Restore | Dump | Monitor, "restore,dump,monitor", `["restore","dump","monitor"]`},
	}
	for _, tt := range tests {
		if got := tt.need.String(); got != tt.str {
			t.Errorf("Need(%d).String() = %q, want %q", tt.need, got, tt.str)
		}
		b, err := json.Marshal(tt.need)
		if err != nil || string(b) != tt.json {
			t.Errorf("json.Marshal(Need(%d)) = %s, %v, want %s", tt.need, b, err, tt.json)
		}
		var back Need
		if err := json.Unmarshal(b, &back); err != nil || back != tt.need {
			t.Errorf("json.Unmarshal(%s) = %d, %v", b, back, err)
		}
	}
	var n Need
	if err := json.Unmarshal([]byte(`["restore","lunch"]`), &n); err == nil {
		t.Error("an unknown need decoded without error")
	}
}

// TestProbesLeaveNothingBehind runs each probe's core again (uncached) and
// checks that no fd and no child outlives it.
func TestProbesLeaveNothingBehind(t *testing.T) {
	Features() // the runtime opens what it keeps (epoll, ...) on first use
	before := openFDs(t)
	for _, probe := range []func() Feature{
		func() Feature { return probeClone3(unix.CLONE_NEWPID, []int32{1}) },
		func() Feature { return probeClone3(0, []int32{int32(os.Getpid())}) }, // fails
		func() Feature { return probePidfdOpen(os.Getpid()) },
		probeSelfGetfd,
		func() Feature { return probeCheckpointCap(0) },
		func() Feature { return probeTimeNamespace("/proc/self/ns/time", "monotonic 1 0\n") },
		func() Feature { return probeUserfaultfd(unix.O_CLOEXEC, "/dev/userfaultfd") },
		func() Feature { return probeUserfaultfd(2, "/dev/userfaultfd") }, // fails
		func() Feature { return probeTracefs("/proc/self/mountinfo", tracefsDir) },
	} {
		probe()
	}
	if after := openFDs(t); !slices.Equal(before, after) {
		t.Errorf("open fds changed:\nbefore %v\nafter  %v", before, after)
	}
	assertNoChildren(t)
}

// openFDs lists our open fds and what they are.
func openFDs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's own fd, closed by now
		}
		fds = append(fds, e.Name()+"->"+target)
	}
	return fds
}

// assertNoChildren fails if we have a child, running or a zombie.
func assertNoChildren(t *testing.T) {
	t.Helper()
	var info unix.Siginfo
	err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	if !errors.Is(err, unix.ECHILD) {
		t.Errorf("waitid(P_ALL) = %v, want ECHILD: a probe left a child behind", err)
	}
}

// freePID returns a pid that nothing in our pid namespace has (for now).
func freePID(t *testing.T) int32 {
	t.Helper()
	last := readInt(t, "/proc/sys/kernel/ns_last_pid")
	max := readInt(t, "/proc/sys/kernel/pid_max")
	// Well ahead of the next pid the kernel hands out, wrapping at pid_max
	// as the kernel does (pids below 300 are reserved once it wraps).
	for i := 0; i < max; i++ {
		pid := 300 + (last+1000-300+i)%(max-300)
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			return int32(pid)
		}
	}
	t.Fatalf("no free pid below pid_max %d", max)
	return 0
}

func readInt(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

// statusCapEff reads CapEff from /proc/thread-self/status (capabilities
// are per thread).
func statusCapEff(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no CapEff in /proc/thread-self/status")
	return 0
}

// cpuinfoHasFlag reports whether the first CPU in /proc/cpuinfo lists flag.
func cpuinfoHasFlag(t *testing.T, flag string) bool {
	t.Helper()
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "flags"); ok {
			return slices.Contains(strings.Fields(strings.TrimLeft(v, " \t:")), flag)
		}
	}
	return false
}

// TestNetworkLockToolsMissing: without the tools in $PATH the probe says
// which are missing and what that means for CRIU's locked images.
func TestNetworkLockToolsMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	f := probeNetworkLockTools()
	if f.OK || !strings.Contains(f.Reason, "not in $PATH: iptables, ip6tables, nft (found: none)") || !strings.Contains(f.Reason, "--tcp-established") {
		t.Errorf("%+v", f)
	}
}
