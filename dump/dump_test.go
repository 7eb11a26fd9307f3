package dump_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/workloads"
)

// liveTask is a task of a running tree as /proc shows it, pids in the
// tree's pid namespace.
type liveTask struct {
	pid, ppid, pgid, sid uint32
	threads              []uint32
}

func lastField(t *testing.T, status, key string) uint32 {
	t.Helper()
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			f := strings.Fields(v)
			n, err := strconv.ParseUint(f[len(f)-1], 10, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(n)
		}
	}
	t.Fatalf("no %s in status", key)
	return 0
}

// liveTree walks the tree rooted at host pid through /proc, parents
// before children.
func liveTree(t *testing.T, pid int, ppid uint32) []liveTask {
	t.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	lt := liveTask{pid: lastField(t, string(st), "NSpid"), ppid: ppid,
		pgid: lastField(t, string(st), "NSpgid"), sid: lastField(t, string(st), "NSsid")}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var kids []int
	for _, e := range ents {
		ts, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		lt.threads = append(lt.threads, lastField(t, string(ts), "NSpid"))
		c, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(string(c)) {
			n, _ := strconv.Atoi(f)
			kids = append(kids, n)
		}
	}
	out := []liveTask{lt}
	for _, k := range kids {
		out = append(out, liveTree(t, k, lt.pid)...)
	}
	return out
}

// liveMaps reads /proc/PID/maps as "start-end perms name" lines, with
// [vvar] and [vvar_vclock] joined as CRIU records them.
func liveMaps(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var prevVvarStart string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		name := ""
		if len(f) > 5 {
			name = f[5]
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		if name == "[vvar_vclock]" && prevVvarStart != "" && strings.HasSuffix(out[len(out)-1], "[vvar]") {
			last := strings.Fields(out[len(out)-1])
			plo, phi, _ := strings.Cut(last[0], "-")
			if phi == lo {
				out[len(out)-1] = fmt.Sprintf("%s-%s %s %s", plo, hi, last[1], last[2])
				continue
			}
		}
		if name == "[vvar]" {
			prevVvarStart = lo
		}
		out = append(out, fmt.Sprintf("%s-%s %s %s", lo, hi, f[1][:3]+string(f[1][3]), name))
	}
	return out
}

func imageMaps(s *images.Summary, pid uint32) []string {
	var out []string
	for _, task := range s.Tasks {
		if task.PID != pid {
			continue
		}
		for _, v := range task.Memory.VMAs {
			sp := "p"
			if v.Shared() {
				sp = "s"
			}
			name := v.Name
			if i := strings.Index(name, " +0x"); i >= 0 {
				name = name[:i]
			}
			out = append(out, fmt.Sprintf("%08x-%08x %s%s %s", v.Start, v.End, v.ProtString(), sp, name))
		}
	}
	return out
}

// dumpRefusedWithChild waits for three lines of log, dumps p into a
// temporary directory, and checks with refusedCleanly that the dump was
// refused saying want(child), child being the host pid of p's task other
// than its init (0 if none).
func dumpRefusedWithChild(t *testing.T, p *workloads.Process, log string, want func(child int) string) {
	t.Helper()
	waitLines(t, p, log, 3)
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	child := 0
	for _, lt := range live {
		if lt.PID != 1 {
			child = lt.Host
		}
	}
	parent := t.TempDir()
	_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
	refusedCleanly(t, err, p, parent, log, want(child))
}

// refusedCleanly checks a dump of p that had to be refused: err is an
// *UnsupportedError saying every want, nothing was left in parent (where
// the image directory was to go), and the tree runs on (log, in its
// directory, grows by five lines).
func refusedCleanly(t *testing.T, err error, p *workloads.Process, parent, log string, want ...string) {
	t.Helper()
	var ue *dump.UnsupportedError
	if !errors.As(err, &ue) {
		t.Fatalf("dump: %v, want an UnsupportedError", err)
	}
	t.Logf("dump: %v", err)
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Errorf("the failed dump left %v in %s", ents, parent)
	}
	n := len(waitLines(t, p, log, 1))
	waitLines(t, p, log, n+5)
	if !workloads.Alive(p.Pid) {
		t.Errorf("tree %d died after the failed dump", p.Pid)
	}
}

func waitLines(t *testing.T, p *workloads.Process, name string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(p.Dir, name)); err == nil {
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			if len(lines) >= n && lines[0] != "" {
				return lines
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %d lines after 10s", name, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func noCorrupt(t *testing.T, p *workloads.Process, logs []string) {
	t.Helper()
	for _, l := range logs {
		b, err := os.ReadFile(filepath.Join(p.Dir, l))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "CORRUPT") || strings.Contains(string(b), "reaped") {
			t.Errorf("%s after the dump:\n%s", l, b)
		}
	}
}

// checkCounterBuffer reads counter's xorshift buffer back from the images.
func checkCounterBuffer(t *testing.T, p *workloads.Process, d *images.Dir) {
	t.Helper()
	var buf uint64
	var size int
	var seed uint64
	info := p.WaitFile(t, "info.txt")
	if _, err := fmt.Sscanf(string(info), "buf=0x%x size=%d seed=0x%x", &buf, &size, &seed); err != nil {
		t.Fatalf("info.txt %q: %v", info, err)
	}
	runs, err := d.PageRuns(1)
	if err != nil {
		t.Fatal(err)
	}
	pages, err := images.OpenPages(runs)
	if err != nil {
		t.Fatal(err)
	}
	defer pages.Close()
	b := make([]byte, size)
	if n, err := pages.ReadAt(b, buf); err != nil {
		t.Fatalf("reading the buffer at %#x from the images: %d bytes: %v", buf, n, err)
	}
	s := seed
	for i := 0; i < size/8; i++ {
		s ^= s << 13
		s ^= s >> 7
		s ^= s << 17
		if got := binary.LittleEndian.Uint64(b[8*i:]); got != s {
			t.Fatalf("buffer word %d at %#x: %#x in the images, want %#x", i, buf+uint64(8*i), got, s)
		}
	}
}

func TestDumpWorkloads(t *testing.T) {
	for _, tc := range []struct {
		name string
		logs []string
	}{
		{"counter", []string{"out.log"}},
		{"tree", []string{"out-init.log", "out-child1.log", "out-child2.log", "out-child3.log"}},
		{"threads", []string{"out-0.log", "out-1.log", "out-2.log"}},
		{"pipe", []string{"out.log", "out-parent.log"}},
		{"signals", []string{"out.log"}},
		{"dynamic", []string{"out.log"}},
		{"spin", []string{"out.log"}},
	} {
		for _, leave := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/leave-running=%v", tc.name, leave), func(t *testing.T) {
				p := workloads.Start(t, tc.name)
				for _, l := range tc.logs {
					waitLines(t, p, l, 3)
				}
				live := liveTree(t, p.Pid, 0)
				mapsBefore := liveMaps(t, p.Pid)
				masksBefore := sigMasks(t, p.Pid)
				dir := filepath.Join(t.TempDir(), "images")
				res, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir, LeaveRunning: leave})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("dumped %d tasks, %d threads, %d pages; frozen %v", res.Tasks, res.Threads, res.Pages, res.Frozen)
				if leave {
					// The dump leaves no trace: the same mappings.
					if after := sigMasks(t, p.Pid); after != masksBefore {
						t.Errorf("blocked signals changed by the dump: %s, before %s", after, masksBefore)
					}
					if after := liveMaps(t, p.Pid); strings.Join(after, "\n") != strings.Join(mapsBefore, "\n") {
						t.Errorf("maps changed by the dump:\nbefore:\n%s\nafter:\n%s",
							strings.Join(mapsBefore, "\n"), strings.Join(after, "\n"))
					}
				} else if !workloads.WaitGone(p.Pid, 20*time.Second) && workloads.Alive(p.Pid) {
					t.Errorf("tree %d still alive after a dump without --leave-running", p.Pid)
				}

				d, err := images.Open(dir)
				if err != nil {
					t.Fatal(err)
				}
				s, err := images.Summarize(d)
				if err != nil {
					t.Fatal(err)
				}
				if len(s.Tasks) != len(live) {
					t.Fatalf("%d tasks in the images, %d live", len(s.Tasks), len(live))
				}
				for i, lt := range live {
					it := s.Tasks[i]
					got := fmt.Sprintf("pid %d ppid %d pgid %d sid %d threads %v", it.PID, it.PPID, it.PGID, it.SID, it.Threads)
					want := fmt.Sprintf("pid %d ppid %d pgid %d sid %d threads %v", lt.pid, lt.ppid, lt.pgid, lt.sid, lt.threads)
					if got != want {
						t.Errorf("pstree entry %d: %s, live %s", i, got, want)
					}
				}
				if got, want := strings.Join(imageMaps(s, 1), "\n"), strings.Join(mapsBefore, "\n"); got != want {
					t.Errorf("VMAs of task 1:\nimages:\n%s\n/proc/PID/maps:\n%s", got, want)
				}
				switch tc.name {
				case "counter", "dynamic":
					checkCounterBuffer(t, p, d)
				case "pipe":
					checkPipe(t, d, s)
				case "signals":
					checkSignals(t, d)
				}
				if leave {
					n := make([]int, len(tc.logs))
					for i, l := range tc.logs {
						n[i] = len(waitLines(t, p, l, 1))
					}
					for i, l := range tc.logs {
						waitLines(t, p, l, n[i]+5)
					}
					noCorrupt(t, p, tc.logs)
					if !workloads.Alive(p.Pid) {
						t.Errorf("tree %d died after --leave-running", p.Pid)
					}
				}
			})
		}
	}
}

func TestDumpNoSuchPid(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "images")
	_, err := dump.Dump(context.Background(), dump.Options{Pid: 1 << 30, Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "no process 1073741824") {
		t.Fatalf("dump of a pid that does not exist: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("images dir after a failed dump: %v", err)
	}
}

// TestDumpUnsupported: state crest cannot restore fails the dump with an
// error naming the task, fd and why; the tree runs on unharmed and no
// directory is left behind.
func TestDumpUnsupported(t *testing.T) {
	for _, tc := range []struct {
		workload string
		want     []string
	}{
		{"lock", []string{"task 1", "fd 3", "/lock", "file locks are not supported"}},
	} {
		t.Run(tc.workload, func(t *testing.T) {
			p := workloads.Start(t, tc.workload)
			waitLines(t, p, "out.log", 3)
			mapsBefore := liveMaps(t, p.Pid)
			parent := t.TempDir()
			dir := filepath.Join(parent, "images")
			_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir})
			var ue *dump.UnsupportedError
			if !errors.As(err, &ue) {
				t.Fatalf("dump: %v, want an UnsupportedError", err)
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 0 {
				t.Errorf("the failed dump left %v in %s", ents, parent)
			}
			n := len(waitLines(t, p, "out.log", 1))
			waitLines(t, p, "out.log", n+5)
			noCorrupt(t, p, []string{"out.log"})
			if after := liveMaps(t, p.Pid); strings.Join(after, "\n") != strings.Join(mapsBefore, "\n") {
				t.Errorf("maps changed by the failed dump:\n%s\n---\n%s", strings.Join(mapsBefore, "\n"), strings.Join(after, "\n"))
			}
		})
	}
}

func TestDumpRefusesImagesDir(t *testing.T) {
	p := workloads.Start(t, "counter")
	waitLines(t, p, "out.log", 1)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pstree.img"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "already holds images") {
		t.Fatalf("dump into a directory with images: %v", err)
	}
	if !workloads.Alive(p.Pid) {
		t.Fatal("tree died")
	}
	// A directory holding only a log is fine: the log stays in it.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, "dump.log"), []byte("log\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir2, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"dump.log", "pstree.img", "inventory.img"} {
		if _, err := os.Stat(filepath.Join(dir2, name)); err != nil {
			t.Error(err)
		}
	}
}

// checkPipe: the pipe between the two tasks is in the images with the
// bytes it held, whole messages or parts of them.
func checkPipe(t *testing.T, d *images.Dir, s *images.Summary) {
	t.Helper()
	if len(s.Pipes) != 1 || len(s.Pipes[0].Ends) != 2 {
		t.Fatalf("pipes in the images: %+v, want one with two ends", s.Pipes)
	}
	data, err := d.PipesData()
	if err != nil {
		t.Fatal(err)
	}
	for _, pd := range data {
		if strings.Trim(string(pd.Data), "msg 0123456789\n") != "" {
			t.Errorf("pipe data %q is not messages", pd.Data)
		}
	}
}

// checkSignals: handlers, mask, pending SIGUSR2, sigaltstack and itimer.
func checkSignals(t *testing.T, d *images.Dir) {
	t.Helper()
	core, err := d.Core(1)
	if err != nil {
		t.Fatal(err)
	}
	tc, th := core.GetTc(), core.GetThreadCore()
	const saOnstackRestartRestorer = 0x1c000000
	for _, sig := range []int{10, 12, 14} { // SIGUSR1, SIGUSR2, SIGALRM
		i := sig - 1
		if sig > 9 { // no entry for SIGKILL (9)
			i--
		}
		sa := tc.GetSigactions()[i]
		if sa.GetSigaction() == 0 || sa.GetFlags() != saOnstackRestartRestorer {
			t.Errorf("signal %d: %v", sig, sa)
		}
	}
	if got := tc.GetBlkSigset(); got != 0x800 {
		t.Errorf("blocked signals %#x, want SIGUSR2 (0x800)", got)
	}
	if sas := th.GetSas(); sas.GetSsSize() != 65536 || sas.GetSsSp() == 0 {
		t.Errorf("sigaltstack %v", sas)
	}
	if r := tc.GetTimers().GetReal(); r.GetIsec() != 0 || r.GetIusec() != 20000 {
		t.Errorf("ITIMER_REAL %v, want an interval of 20 ms", r)
	}
	var pending []int
	for _, si := range th.GetSignalsP().GetSignals() {
		pending = append(pending, int(binary.LittleEndian.Uint32(si.GetSiginfo())))
	}
	if fmt.Sprint(pending) != "[12]" {
		t.Errorf("pending thread signals %v, want [12] (SIGUSR2)", pending)
	}
}

// sigMasks returns the SigBlk line of every thread of pid.
func sigMasks(t *testing.T, pid int) string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "SigBlk:") {
				out = append(out, e.Name()+" "+strings.TrimSpace(line[7:]))
			}
			// The single-step traps of the remote syscalls must not
			// stay pending (SIGTRAP is bit 4).
			if k, v, _ := strings.Cut(line, ":"); k == "SigPnd" || k == "ShdPnd" {
				if n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && n&0x10 != 0 {
					out = append(out, e.Name()+" SIGTRAP pending")
				}
			}
		}
	}
	return strings.Join(out, ", ")
}

func TestDumpRefusesThreadAndCancel(t *testing.T) {
	p := workloads.Start(t, "threads")
	waitLines(t, p, "out-2.log", 2)
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var tid int
	for _, e := range ents {
		if n, _ := strconv.Atoi(e.Name()); n != p.Pid {
			tid = n
		}
	}
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: tid, Dir: dir}); err == nil ||
		!strings.Contains(err.Error(), "is a thread of process") {
		t.Errorf("dump of thread %d: %v", tid, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := dump.Dump(ctx, dump.Options{Pid: p.Pid, Dir: dir}); !errors.Is(err, context.Canceled) {
		t.Errorf("dump with a cancelled context: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("images dir after failed dumps: %v", err)
	}
	n := len(waitLines(t, p, "out-0.log", 1))
	waitLines(t, p, "out-0.log", n+3)
	noCorrupt(t, p, []string{"out-0.log", "out-1.log", "out-2.log"})
}

// startReaped starts workload name for a test that made itself the
// subreaper (cli.Subreaper), so the workload's root is its child, and
// returns it with reaped, to call once the test reaped the root itself
// (after a dump that killed it). If the test ends before, the root is
// killed and reaped, not left a zombie of the test.
func startReaped(t *testing.T, name string) (p *workloads.Process, reaped func()) {
	t.Helper()
	p = workloads.Start(t, name)
	done := false
	t.Cleanup(func() {
		if !done {
			syscall.Kill(p.Pid, syscall.SIGKILL)
			syscall.Wait4(p.Pid, nil, syscall.WALL, nil)
		}
	})
	return p, func() { done = true }
}
