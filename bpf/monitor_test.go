package bpf

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// teAddr is where the tracee maps its task_entries (testdata/tracee.c).
const teAddr = 0x5e0000000000

var (
	traceeOnce sync.Once
	traceeDir  string
	traceeErr  error
)

// tracee builds testdata/tracee.c once per test process.
func tracee(t testing.TB) string {
	t.Helper()
	traceeOnce.Do(func() {
		traceeDir, traceeErr = os.MkdirTemp("", "crest-bpf-test")
		if traceeErr != nil {
			return
		}
		out, err := exec.Command("gcc", "-O2", "-Wall", "-Werror", "-o", filepath.Join(traceeDir, "tracee"),
			"testdata/tracee.c").CombinedOutput()
		if err != nil {
			traceeErr = errors.New("gcc testdata/tracee.c: " + err.Error() + "\n" + string(out))
		}
	})
	if traceeErr != nil {
		t.Fatal(traceeErr)
	}
	return filepath.Join(traceeDir, "tracee")
}

func TestMain(m *testing.M) {
	if dir, ok := os.LookupEnv(coldOpenEnv); ok {
		os.Exit(coldOpen(dir))
	}
	code := m.Run()
	if traceeDir != "" {
		os.RemoveAll(traceeDir)
	}
	os.Exit(code)
}

// startTracee starts the tracee with args (the fault, the protocol); it
// waits for run() to begin.
func startTracee(t testing.TB, args ...string) (cmd *exec.Cmd, run func()) {
	t.Helper()
	cmd = exec.Command(tracee(t), args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, func() {
		t.Helper()
		stdin.Write([]byte("x"))
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("tracee %v: %v", args, err)
		}
	}
}

// runTracked runs the tracee with args, tracked by m, and returns its pid.
func runTracked(t testing.TB, m *Monitor, args ...string) int {
	t.Helper()
	cmd, run := startTracee(t, args...)
	if err := m.Track(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	run()
	if err := m.Sync(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// pidLevel is the pid-namespace level of the test process.
func pidLevel(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "NSpid:" {
			return len(f) - 2
		}
	}
	t.Fatal("no NSpid in /proc/self/status")
	return 0
}

func utsInode(t testing.TB) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/uts", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func openMonitor(t testing.TB, opts Options) *Monitor {
	t.Helper()
	m, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestOpenClose loads, attaches and detaches, and leaves no program
// behind.
func TestOpenClose(t *testing.T) {
	m, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	tm := m.Timing()
	t.Logf("load %v attach %v", tm.Load, tm.Attach)
	if tm.Load == 0 || tm.Attach == 0 {
		t.Errorf("timing %+v: load and attach must be measured", tm)
	}
	var ids []ebpf.ProgramID
	for _, p := range []*ebpf.Program{m.objs.CrestSysEnter, m.objs.CrestSysExit, m.objs.CrestFork, m.objs.CrestExit} {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ids = append(ids, id)
	}
	if got := m.Tracked(); len(got) != 0 {
		t.Errorf("tracked %v before Track", got)
	}
	if err := m.Track(4242); err != nil {
		t.Fatal(err)
	}
	if got := m.Tracked(); !slices.Equal(got, []int{4242}) {
		t.Errorf("tracked %v, want [4242]", got)
	}
	if err := m.Untrack(4242); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if m.Timing().Detach == 0 {
		t.Error("detach not measured")
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, id := range ids {
		// Freed after an RCU grace period: poll briefly.
		for i := 0; ; i++ {
			p, err := ebpf.NewProgramFromID(id)
			if errors.Is(err, os.ErrNotExist) {
				break
			}
			if err == nil {
				p.Close()
			}
			if i == 200 {
				t.Fatalf("program %d still loaded after Close", id)
			}
			unix.Nanosleep(&unix.Timespec{Nsec: 10e6}, nil)
		}
	}
}

// TestOpenBadOptions: options the kernel would refuse are refused first.
func TestOpenBadOptions(t *testing.T) {
	if _, err := Open(Options{RingSize: 3 << 12}); err == nil || !strings.Contains(err.Error(), "ring buffer size 12288") {
		t.Errorf("Open(RingSize 12288) = %v", err)
	}
}

// TestNotSupported: without CAP_BPF and CAP_SYS_ADMIN (a child that
// drops them) the monitor does not load, and says why.
func TestNotSupported(t *testing.T) {
	if os.Getenv("CREST_BPF_UNPRIVILEGED") == "1" {
		_, err := Open(Options{})
		if err == nil || !errors.Is(err, ErrNotSupported) {
			os.Stdout.WriteString("Open: " + errString(err) + "\n")
			os.Exit(1)
		}
		os.Stdout.WriteString("Open: " + err.Error() + "\n")
		os.Exit(0)
	}
	// nobody must be able to run a copy of this test binary.
	dir, err := os.MkdirTemp("", "crest-bpf-nobody")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "bpf.test")
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestNotSupported$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CREST_BPF_UNPRIVILEGED=1")
	// Run as nobody: no capabilities at all.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("unprivileged Open did not fail with ErrNotSupported: %v", err)
	}
	if !strings.Contains(string(out), "bpf monitor not supported: ") {
		t.Errorf("message %q does not say why", out)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// TestTrackTracee runs the tracee's tree, tracked, beside an untracked
// copy, and checks every traced value.
func TestTrackTracee(t *testing.T) {
	m := openMonitor(t, Options{})
	other, runOther := startTracee(t, "none")
	done := make(chan struct{})
	go func() { defer close(done); runOther() }()
	engine := runTracked(t, m, "none")
	<-done
	if err := m.Sync(); err != nil {
		t.Fatal(err)
	}
	events := m.Events()
	level := pidLevel(t) + 1

	// Who is who: the tracee and every process it forked.
	ours := map[int]bool{engine: true}
	byNS := map[int]int{} // global tid -> tid in the new namespace
	var forks []*ForkEvent
	for _, e := range events {
		if f, ok := e.(*ForkEvent); ok {
			forks = append(forks, f)
			ours[f.ChildPID] = true
			if f.ChildLevel() == level {
				byNS[f.ChildTID] = f.ChildTIDs[level]
			}
		}
	}
	for _, e := range events {
		if !ours[e.Head().PID] {
			t.Errorf("event of an untracked process: %+v", e)
		}
		if e.Head().PID == other.Process.Pid {
			t.Errorf("event of the untracked tracee %d: %+v", other.Process.Pid, e)
		}
	}

	// Forks: the root at the new level, the others inside it, with the
	// pids the tracee asked for and the right parents.
	type fork struct{ parent, child, pid int }
	var gotForks []fork
	for _, f := range forks {
		if f.ChildLevel() != level {
			t.Errorf("fork at level %d, want %d: %+v", f.ChildLevel(), level, f)
			continue
		}
		parent := 0
		if len(f.ParentTIDs) > level {
			parent = f.ParentTIDs[level]
		} else if f.PID != engine {
			t.Errorf("fork of the root by %d, not the tracee %d", f.PID, engine)
		}
		if f.ChildTIDs[0] != f.ChildTID || f.ChildPIDs[0] != f.ChildPID {
			t.Errorf("fork: level 0 numbers %d/%d, want the global %d/%d", f.ChildPIDs[0], f.ChildTIDs[0], f.ChildPID, f.ChildTID)
		}
		if f.ChildTID == f.ChildPID && !slices.Equal(f.RealParentPIDs, f.ParentPIDs) {
			t.Errorf("fork without CLONE_PARENT: real parent %v, forker %v", f.RealParentPIDs, f.ParentPIDs)
		}
		gotForks = append(gotForks, fork{parent, f.ChildTIDs[level], f.ChildPIDs[level]})
	}
	wantForks := []fork{{0, 1, 1}, {1, 5, 5}, {1, 7, 7}, {7, 9, 9}, {5, 6, 5}, {9, 10, 9}}
	slices.SortFunc(gotForks, func(a, b fork) int { return a.child - b.child })
	slices.SortFunc(wantForks, func(a, b fork) int { return a.child - b.child })
	if !slices.Equal(gotForks, wantForks) {
		t.Errorf("forks (parent, child tid, child pid) %v, want %v", gotForks, wantForks)
	}

	// clone3: set_tid as asked, CLONE_NEWPID for the root, CLONE_THREAD
	// for the threads, and the return is the child in the caller's ns.
	type clone3 struct {
		setTID    int32
		newPID    bool
		thread    bool
		retIsKid  bool
		argsRead  bool
		byEngine  bool
		setTIDLen int
	}
	var got3 []clone3
	for _, e := range events {
		c, ok := e.(*Clone3Event)
		if !ok {
			continue
		}
		if !c.Returned || c.Ret <= 0 {
			t.Errorf("clone3 did not return a child: %+v", c)
			continue
		}
		var kid int32
		if len(c.SetTID) > 0 {
			kid = c.SetTID[0]
		}
		retIsKid := c.PID == engine || int(c.Ret) == int(kid)
		got3 = append(got3, clone3{kid, c.Flags&unix.CLONE_NEWPID != 0, c.Flags&unix.CLONE_THREAD != 0,
			retIsKid, c.ArgsRead, c.PID == engine, int(c.SetTIDSize)})
	}
	want3 := []clone3{
		{1, true, false, true, true, true, 1}, {5, false, false, true, true, false, 1},
		{6, false, true, true, true, false, 1}, {7, false, false, true, true, false, 1},
		{9, false, false, true, true, false, 1}, {10, false, true, true, true, false, 1},
	}
	slices.SortFunc(got3, func(a, b clone3) int { return int(a.setTID - b.setTID) })
	if !slices.Equal(got3, want3) {
		t.Errorf("clone3 calls\n%+v\nwant\n%+v", got3, want3)
	}

	// setns: the root, into the uts namespace it is in.
	var setns []*SetnsEvent
	for _, e := range events {
		if s, ok := e.(*SetnsEvent); ok {
			setns = append(setns, s)
		}
	}
	if len(setns) != 1 {
		t.Fatalf("%d setns events, want 1: %+v", len(setns), setns)
	}
	s := setns[0]
	if byNS[s.TID] != 1 || s.NSType != unix.CLONE_NEWUTS || !s.Resolved || s.Inode != utsInode(t) ||
		s.FSMagic != unix.NSFS_MAGIC || !s.Returned || s.Ret != 0 {
		t.Errorf("setns %+v: want the root (ns tid 1) joining uts %d (nsfs) successfully", s, utsInode(t))
	}

	// futex: the engine switches 0..6 in order; 30 arrivals; every wait
	// on start expects the stage then open.
	var switches []int32
	arrivals := map[int]int{} // ns tid -> count
	for _, e := range events {
		f, ok := e.(*FutexEvent)
		if !ok {
			continue
		}
		op, oparg := wakeOp(f.Val3)
		switch {
		case f.Cmd() == FutexWakeOp && f.Addr == teAddr && f.Addr2 == teAddr && op == futexOpSet:
			if f.PID != engine {
				t.Errorf("switch by %d, not the engine: %+v", f.PID, f)
			}
			switches = append(switches, oparg)
			if f.WordAtExitOK {
				t.Errorf("switch to %d: a wake's word read at its exit: %+v", oparg, f)
			}
		case f.Cmd() == FutexWakeOp && f.Addr == teAddr+4 && f.Addr2 == teAddr+4 && op == futexOpAdd && oparg == -1:
			arrivals[byNS[f.TID]]++
		case f.Cmd() == FutexWait && f.Addr == teAddr:
			if !f.WordOK || f.Word != f.Val && !(f.Returned && f.Ret == -int64(unix.EAGAIN)) {
				t.Errorf("wait on start: word %d val %d ret %d", f.Word, f.Val, f.Ret)
			}
			// it returned once the engine switched past its stage
			if !f.Returned || !f.WordAtExitOK || int32(f.WordAtExit) <= int32(f.Val) {
				t.Errorf("wait on start for %d: returned %v, word at exit %d (ok %v)", int32(f.Val), f.Returned, int32(f.WordAtExit), f.WordAtExitOK)
			}
		case f.Cmd() == FutexWait && f.Addr == teAddr+4:
			if f.PID != engine {
				t.Errorf("wait on nr_in_progress by %d, not the engine", f.PID)
			}
		case f.Addr == teAddr || f.Addr == teAddr+4:
			t.Errorf("unexpected futex on task_entries: %+v", f)
		}
	}
	if !slices.Equal(switches, []int32{0, 1, 2, 3, 4, 5, 6}) {
		t.Errorf("switches %v, want 0..6", switches)
	}
	wantArrivals := map[int]int{1: 7, 5: 5, 7: 5, 9: 5, 6: 4, 10: 4}
	for tid, n := range wantArrivals {
		if arrivals[tid] != n {
			t.Errorf("ns tid %d arrived %d times, want %d", tid, arrivals[tid], n)
		}
	}
	if len(arrivals) != len(wantArrivals) {
		t.Errorf("arrivals by %v, want only %v", arrivals, wantArrivals)
	}

	// exits: every thread, and the engine, each once.
	exits := map[int]int{}
	for _, e := range events {
		if x, ok := e.(*ExitEvent); ok {
			if x.PID == engine {
				exits[-1]++
			} else {
				exits[byNS[x.TID]]++
			}
		}
	}
	for _, tid := range []int{-1, 1, 5, 6, 7, 9, 10} {
		if exits[tid] != 1 {
			t.Errorf("exits of ns tid %d (-1: engine): %d, want 1 (%v)", tid, exits[tid], exits)
		}
	}
	if d := m.Dropped(); d != 0 {
		t.Errorf("%d events dropped", d)
	}
	// The tree is gone: the tracked map shrinks back.
	for _, pid := range m.Tracked() {
		if ours[pid] {
			t.Errorf("pid %d still tracked after it exited", pid)
		}
	}
}

// TestFutexFilter: private futexes (the Go runtime's) stay out unless
// asked for, and ranges limit the shared ones.
func TestFutexFilter(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		ranges  []Range
		private bool // the private wake is reported
		inside  bool // the shared wake on the watched word is reported
		outside bool // the shared wake on the other word is reported
	}{
		{"default", Options{}, nil, false, true, true},
		{"all futexes", Options{AllFutexes: true}, nil, true, true, true},
		{"range", Options{}, []Range{{0, 0}}, false, true, false}, // set below
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := openMonitor(t, tt.opts)
			words := make([]uint32, 2)
			if tt.ranges != nil {
				a := uint64(uintptr(unsafe.Pointer(&words[0])))
				if err := m.WatchFutexes(Range{a, a + 4}); err != nil {
					t.Fatal(err)
				}
			}
			runtime.LockOSThread()
			tid := unix.Gettid()
			if err := m.Track(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&words[0])), FutexWake|futexPrivateFlag, 1, 0, 0, 0)
			unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&words[0])), FutexWake, 1, 0, 0, 0)
			unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&words[1])), FutexWake, 1, 0, 0, 0)
			m.Untrack(os.Getpid())
			runtime.UnlockOSThread()
			if err := m.Sync(); err != nil {
				t.Fatal(err)
			}
			var private, inside, outside bool
			for _, e := range m.Events() {
				f, ok := e.(*FutexEvent)
				if !ok || f.TID != tid {
					continue
				}
				switch {
				case f.Op == FutexWake|futexPrivateFlag && f.Addr == uint64(uintptr(unsafe.Pointer(&words[0]))):
					private = true
				case f.Op == FutexWake && f.Addr == uint64(uintptr(unsafe.Pointer(&words[0]))):
					inside = true
				case f.Op == FutexWake && f.Addr == uint64(uintptr(unsafe.Pointer(&words[1]))):
					outside = true
				}
			}
			runtime.KeepAlive(words)
			if private != tt.private || inside != tt.inside || outside != tt.outside {
				t.Errorf("reported private %v, watched %v, other %v; want %v %v %v",
					private, inside, outside, tt.private, tt.inside, tt.outside)
			}
		})
	}
}

// trackedFutexWakes makes n shared FUTEX_WAKE calls on one word, from one
// thread, with this process tracked by m only meanwhile: 2n events.
func trackedFutexWakes(t *testing.T, m *Monitor, n int) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := m.Track(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	var word uint32
	for range n {
		unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&word)), FutexWake, 1, 0, 0, 0)
	}
	m.Untrack(os.Getpid())
}

// TestDrops overflows a one-page ring buffer that is never woken for:
// the loss is counted, not silent.
func TestDrops(t *testing.T) {
	m := openMonitor(t, Options{RingSize: os.Getpagesize(), WakeupBytes: 1 << 30})
	trackedFutexWakes(t, m, 1000)
	if m.Dropped() == 0 {
		t.Fatal("1000 futex calls into a one-page ring buffer: nothing dropped")
	}
	t.Logf("dropped %d", m.Dropped())
	r, err := m.Verify(Expect{})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || r.Dropped == 0 || !strings.Contains(r.Verdict, "events dropped") {
		t.Errorf("report with drops: ok %v, dropped %d, verdict %q", r.OK, r.Dropped, r.Verdict)
	}
}

// TestWakeups: the reader is woken only once WakeupBytes of events wait
// unread, and Sync reads what waits below that.
func TestWakeups(t *testing.T) {
	// eventually waits up to d for the reader to have decoded n events
	// of its own accord.
	eventually := func(m *Monitor, n int, d time.Duration) int {
		deadline := time.Now().Add(d)
		for {
			got := len(m.Events())
			if got >= n || time.Now().After(deadline) {
				return got
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Run("below", func(t *testing.T) {
		m := openMonitor(t, Options{WakeupBytes: 1 << 20})
		trackedFutexWakes(t, m, 20)
		// 20 futex calls are 40 events, a few KiB: no wake-up is due.
		if got := eventually(m, 1, 300*time.Millisecond); got != 0 {
			t.Fatalf("%d events read with no wake-up due", got)
		}
		if err := m.Sync(); err != nil {
			t.Fatal(err)
		}
		if got := len(m.Events()); got < 20 {
			t.Fatalf("after Sync %d events, want at least 20", got)
		}
	})
	t.Run("above", func(t *testing.T) {
		m := openMonitor(t, Options{WakeupBytes: 4096})
		trackedFutexWakes(t, m, 200)
		// 200 futex calls are well over 4 KiB: the reader was woken and
		// read them without a Sync.
		if got := eventually(m, 100, 5*time.Second); got < 100 {
			t.Fatalf("%d events read, want at least 100 without a Sync", got)
		}
	})
}

// TestVerifyTooDeep: a task deeper in pid namespaces than the fork events
// record gets no verdict, and the error says why; one level less is
// verified.
func TestVerifyTooDeep(t *testing.T) {
	m := openMonitor(t, Options{})
	_, err := m.Verify(Expect{Tasks: []ExpectTask{{PID: 1, NSLevel: maxLevels}}})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("task 1 is at pid-namespace level %d", maxLevels)) ||
		!strings.Contains(err.Error(), fmt.Sprintf("levels 0 to %d only", maxLevels-1)) {
		t.Errorf("level %d: %v, want no verdict naming the task and the levels", maxLevels, err)
	}
	if _, err := m.Verify(Expect{Tasks: []ExpectTask{{PID: 1, NSLevel: maxLevels - 1}}}); err != nil {
		t.Errorf("level %d: %v, want a verdict", maxLevels-1, err)
	}
}

// TestNamespacesSeen: the fork and setns events carry the namespaces the
// kernel put the tasks in. The tracee's root is born in a new pid
// namespace and in ours of every other type, and so are its tasks and
// threads; its setns into its own uts namespace leaves it there. With the
// wrong-ns fault it unshares a new uts namespace first, joins that, and
// the tasks it forks afterwards are in that one.
func TestNamespacesSeen(t *testing.T) {
	own, err := ReadNamespaces("/proc/self")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []uint64{own.UTS, own.IPC, own.Mnt, own.PID, own.Net, own.Time, own.Cgroup, own.User} {
		if n == 0 {
			t.Fatalf("our namespaces %+v: one unknown", own)
		}
	}
	level := pidLevel(t) + 1
	for _, fault := range []string{"none", "wrong-ns"} {
		t.Run(fault, func(t *testing.T) {
			m := openMonitor(t, Options{})
			engine := runTracked(t, m, fault)
			var root *ForkEvent
			var forks []*ForkEvent
			var setns []*SetnsEvent
			for _, e := range m.Events() {
				switch e := e.(type) {
				case *ForkEvent:
					if e.PID == engine {
						root = e
					} else {
						forks = append(forks, e)
					}
				case *SetnsEvent:
					setns = append(setns, e)
				}
			}
			if root == nil || root.ChildLevel() != level || len(forks) != 5 || len(setns) != 1 {
				t.Fatalf("root fork %+v, %d other forks, %d setns: want the root, 5 others, one setns", root, len(forks), len(setns))
			}
			wantRoot := own
			if root.ChildNS.PID == own.PID || root.ChildNS.PID == 0 {
				t.Errorf("the root's pid namespace for children %d, ours %d: want a new one", root.ChildNS.PID, own.PID)
			}
			wantRoot.PID = root.ChildNS.PID
			if root.ChildNS != wantRoot {
				t.Errorf("the root was born in %+v, want %+v", root.ChildNS, wantRoot)
			}
			s := setns[0]
			after := wantRoot
			if fault == "wrong-ns" {
				if s.After.UTS == own.UTS || s.After.UTS == 0 || s.Inode != s.After.UTS {
					t.Errorf("setns into a fresh uts namespace: fd's inode %d, after %d, ours %d", s.Inode, s.After.UTS, own.UTS)
				}
				after.UTS = s.After.UTS
			}
			if !s.Returned || s.Ret != 0 || s.TID != root.ChildTID || s.After != after {
				t.Errorf("setns of the root %+v: want it in %+v after", s, after)
			}
			for _, f := range forks {
				if f.ChildNS != after {
					t.Errorf("fork of tid %d (thread %v): in %+v, want the root's %+v", f.ChildTIDs[level], f.Thread(), f.ChildNS, after)
				}
			}
		})
	}
}
