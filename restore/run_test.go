package restore

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/test/fixture"
)

// TestRestoreRuns restores the fixtures crest can restore and checks, as
// each fixture's README says, that they run on from where they were dumped:
// every out*.log continues with the next value, no gap, no repeat, no
// CORRUPT or "reaped" line. It also checks pids, sessions, groups, the fd
// tables and the mappings of the restored tasks.
func TestRestoreRuns(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name, fixture string
		tamper        func(*testing.T, *Plan)
	}{
		{"counter", "counter", nil},
		{"dynamic", "dynamic", nil},
		{"tree", "tree", nil},
		{"threads", "threads", nil},
		// The fixtures keep every signal's default disposition: this
		// one gets SIGUSR1 ignored, and checkTask sees it in SigIgn;
		// the engine ignores SIGUSR2, which execve passes on to the
		// agent, and the restored task must not have it ignored. It
		// also gets a lower RLIMIT_NOFILE than the engine's, which
		// checkTask checks like every other limit.
		{"counter with SIGUSR1 ignored and fewer files", "counter", func(t *testing.T, p *Plan) {
			signal.Ignore(syscall.SIGUSR2)
			t.Cleanup(func() {
				// Reset leaves it ignored: Notify installs Go's
				// handler and Stop puts back the default.
				c := make(chan os.Signal, 1)
				signal.Notify(c, syscall.SIGUSR2)
				signal.Stop(c)
			})
			for i := range p.Tasks[0].Sigactions {
				if sa := &p.Tasks[0].Sigactions[i]; sa.Signal == int(syscall.SIGUSR1) {
					sa.Handler = 1
				}
			}
			p.Tasks[0].Rlimits[syscall.RLIMIT_NOFILE] = Rlimit{Cur: 512, Max: 1024}
		}},
		// The fixtures ran as root with the machine's capabilities:
		// this one runs on as an unprivileged user with one capability.
		{"counter as uid 1000", "counter", func(_ *testing.T, p *Plan) {
			c := &p.Tasks[0].Creds
			c.UID, c.EUID, c.SUID, c.FSUID = 1000, 1000, 1000, 1000
			c.GID, c.EGID, c.SGID, c.FSGID = 1000, 1000, 1001, 1000
			c.Groups = []uint32{1000, 1002}
			c.CapInh, c.CapPrm, c.CapEff, c.CapAmb = 1<<10, 1<<10, 1<<10, 1<<10 // CAP_NET_BIND_SERVICE
			c.CapBnd = 1<<10 | 1<<7
			c.NoNewPrivs = true
		}},
	}
	for _, tt := range tests {
		name := tt.fixture
		t.Run(tt.name, func(t *testing.T) {
			dir := installFixture(t, name)
			p := loadPlan(t, name)
			if tt.tamper != nil {
				tt.tamper(t, p)
			}
			r, err := Start(context.Background(), p, Options{})
			if err != nil {
				t.Fatal(err)
			}
			hosts := abortAtCleanup(t, r, p)
			tl := r.Timeline()
			if len(tl.Stages) != 7 || tl.Stages[6].Stage != StageComplete || tl.Stages[6].Done == 0 {
				t.Errorf("timeline: %+v", tl.Stages)
			}
			if want := 2 + len(p.Tasks) + 4*p.NrThreads; len(tl.Arrivals) != want {
				t.Errorf("%d arrivals, want %d", len(tl.Arrivals), want)
			}
			for i, task := range p.Tasks {
				checkTask(t, task, hosts[i])
			}
			if name == "threads" {
				checkThreadLogs(t, dir, 20)
			} else {
				checkLogsContinue(t, name, dir, 20)
			}
		})
	}
}

// checkTask compares a restored task with its plan through /proc.
func checkTask(t *testing.T, task *Task, host int) {
	t.Helper()
	st := procStatus(t, host)
	for k, want := range map[string]int{"NSpid": task.PID, "NSpgid": task.PGID, "NSsid": task.SID} {
		if v := st[k]; len(v) != 2 || atoi(t, v[1]) != want {
			t.Errorf("task %d: %s %v, want %d in the new namespace", task.PID, k, v, want)
		}
	}
	if st["Name"][0] != task.Comm {
		t.Errorf("task %d: comm %q, want %q", task.PID, st["Name"][0], task.Comm)
	}
	// Credentials.
	c := task.Creds
	for k, want := range credsStatus(c) {
		if got := strings.Join(st[k], " "); got != want {
			t.Errorf("task %d: %s %q, want %q", task.PID, k, got, want)
		}
	}

	// Resource limits, from /proc/PID/limits: prlimit(2) of another
	// user's process needs CAP_SYS_RESOURCE, which the tests lack.
	limits := readLimits(t, host)
	for res, want := range task.Rlimits {
		if res >= len(limits) || limits[res] != want {
			t.Errorf("task %d: rlimit %d is %+v, want %+v", task.PID, res, limits[res], want)
		}
	}

	// fs and signal dispositions.
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", host)); err != nil || cwd != task.FS.Cwd {
		t.Errorf("task %d: cwd %q (%v), want %s", task.PID, cwd, err, task.FS.Cwd)
	}
	if got := st["Umask"][0]; got != fmt.Sprintf("%04o", task.FS.Umask) {
		t.Errorf("task %d: umask %s, want %04o", task.PID, got, task.FS.Umask)
	}
	var cgt, ign uint64
	for _, sa := range task.Sigactions {
		switch sa.Handler {
		case 0: // SIG_DFL
		case 1: // SIG_IGN
			ign |= 1 << (sa.Signal - 1)
		default:
			cgt |= 1 << (sa.Signal - 1)
		}
	}
	if got := st["SigCgt"][0]; got != fmt.Sprintf("%016x", cgt) {
		t.Errorf("task %d: SigCgt %s, want %016x", task.PID, got, cgt)
	}
	if got := st["SigIgn"][0]; got != fmt.Sprintf("%016x", ign) {
		t.Errorf("task %d: SigIgn %s, want %016x", task.PID, got, ign)
	}

	// Every thread has its tid in the new namespace.
	if got := atoi(t, st["Threads"][0]); got != len(task.Threads) {
		t.Errorf("task %d: %d threads, want %d", task.PID, got, len(task.Threads))
	}
	tids := map[int]bool{}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", host))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", host, e.Name())); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
					f := strings.Fields(v)
					tids[atoi(t, f[len(f)-1])] = true
				}
			}
		}
	}
	for _, th := range task.Threads {
		if !tids[th.TID] {
			t.Errorf("task %d: no thread %d (have %v)", task.PID, th.TID, tids)
		}
	}

	// The fd table is the image's, and nothing else.
	ents, err = os.ReadDir(fmt.Sprintf("/proc/%d/fd", host))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != len(task.FDs) {
		t.Errorf("task %d: %d fds, want %d", task.PID, len(ents), len(task.FDs))
	}
	for _, fd := range task.FDs {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", host, fd.FD))
		want := fd.File.Path
		if fd.File.Kind == FilePipe && strings.HasPrefix(link, "pipe:[") ||
			(fd.File.Kind == FileUnixSocket || fd.File.Kind == FileInetSocket) && strings.HasPrefix(link, "socket:[") {
			want = link // a new pipe or socket, a new inode number
		}
		switch fd.File.Kind {
		case FileEventfd, FileSignalfd, FileTimerfd, FileEpoll:
			want = "anon_inode:[" + fd.File.Kind.String() + "]"
		}
		if err != nil || link != want {
			t.Errorf("task %d fd %d: %q (%v), want %s", task.PID, fd.FD, link, err, want)
		}
	}

	// Every page of every mapping of the image is mapped with its
	// protection (the kernel merges neighbours that it can: the image's
	// r-- pieces of one file, for instance).
	maps := readMaps(t, host)
	for _, v := range task.Mem.VMAs {
		if v.Kind == VMAVsyscall {
			continue
		}
		for addr := v.Start; addr < v.End; {
			m := mappingAt(maps, addr)
			if m == nil {
				t.Errorf("task %d: %#x of %v mapping %#x-%#x is not mapped", task.PID, addr, v.Kind, v.Start, v.End)
				break
			}
			if m.prot != v.Prot {
				t.Errorf("task %d: %#x-%#x prot %#x, image %#x-%#x prot %#x", task.PID, m.start, m.end, m.prot, v.Start, v.End, v.Prot)
			}
			addr = m.end
		}
	}
	// The advice of each mapping: MADV_NOHUGEPAGE (15) shows as "nh" in
	// smaps (glibc gives it to thread stacks).
	nh := noHugepage(t, host)
	for _, v := range task.Mem.VMAs {
		if v.Madv&(1<<15) != 0 && (v.Kind == VMAAnonPrivate || v.Kind == VMAFilePrivate) && !nh[v.Start] {
			t.Errorf("task %d: mapping %#x-%#x lost MADV_NOHUGEPAGE", task.PID, v.Start, v.End)
		}
	}

	// And nothing else: neither the agent's own layout nor the crest area.
	var extra []string
	for _, m := range maps {
		if !task.Mem.covered(m.start, m.end) && m.start != 0xffffffffff600000 {
			extra = append(extra, fmt.Sprintf("%#x-%#x", m.start, m.end))
		}
	}
	if len(extra) > 0 {
		t.Errorf("task %d: mappings outside the image: %v", task.PID, extra)
	}
}

type mapping struct {
	start, end uint64
	prot       uint32
}

func mappingAt(maps []mapping, addr uint64) *mapping {
	for i := range maps {
		if maps[i].start <= addr && addr < maps[i].end {
			return &maps[i]
		}
	}
	return nil
}

func readMaps(t *testing.T, pid int) []mapping {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		lo, hi, _ := strings.Cut(fs[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		var prot uint32
		for i, bit := range []uint32{1, 2, 4} {
			if fs[1][i] != '-' {
				prot |= bit
			}
		}
		out = append(out, mapping{start: start, end: end, prot: prot})
	}
	return out
}

// checkLogsContinue waits until every out*.log of the fixture has grown by
// at least n lines and checks that each continues the dumped one: the same
// prefix, and lines "<text> N" (or "N") counting on from the last dumped
// value, each exactly once.
func checkLogsContinue(t *testing.T, name, dir string, n int) {
	t.Helper()
	dumped, err := filepath.Glob(fixture.Path(t, name, "files", "out*.log"))
	if err != nil || len(dumped) == 0 {
		t.Fatalf("no out*.log in the fixture %s (%v)", name, err)
	}
	for _, d := range dumped {
		checkLogContinues(t, name, dir, filepath.Base(d), n)
	}
}

// checkLogContinues is checkLogsContinue for the one log base.
func checkLogContinues(t *testing.T, name, dir, base string, n int) {
	t.Helper()
	lastLine, added := logLines(t, name, dir, base, n)
	prefix, last := splitCounter(t, lastLine)
	for i, l := range added {
		p, v := splitCounter(t, l)
		if p != prefix || v != last+1+i {
			t.Fatalf("%s: new line %d is %q, want %q", filepath.Join(dir, base), i, l, fmt.Sprintf("%s%d", prefix, last+1+i))
		}
	}
}

// logLines waits for n new lines of the log base of fixture name, restored
// in dir, and returns the last line the log had at the dump and the new
// ones.
func logLines(t *testing.T, name, dir, base string, n int) (last string, added []string) {
	t.Helper()
	before, err := os.ReadFile(fixture.Path(t, name, "files", base))
	if err != nil {
		t.Fatal(err)
	}
	old := strings.Split(strings.TrimRight(string(before), "\n"), "\n")
	return old[len(old)-1], waitLines(t, filepath.Join(dir, base), before, n)
}

// splitCounter splits "child1 159" into "child1 " and 159.
func splitCounter(t *testing.T, line string) (string, int) {
	t.Helper()
	i := strings.LastIndexByte(line, ' ') + 1
	v, err := strconv.Atoi(line[i:])
	if err != nil {
		t.Fatalf("log line %q: %v", line, err)
	}
	return line[:i], v
}

var threadLine = regexp.MustCompile(`^thread (\d) n=(\d+) shared=(\d+)$`)

// checkThreadLogs checks the threads fixture as its README says: each
// out-K.log continues with n=N+1, the shared= values keep increasing and no
// value appears twice across the three files.
func checkThreadLogs(t *testing.T, dir string, n int) {
	t.Helper()
	seen := map[int]string{}
	for k := 0; k < 3; k++ {
		base := fmt.Sprintf("out-%d.log", k)
		parse := func(l string) (int, int) {
			m := threadLine.FindStringSubmatch(l)
			if m == nil || m[1] != strconv.Itoa(k) {
				t.Fatalf("%s: line %q", base, l)
			}
			nv, _ := strconv.Atoi(m[2])
			sv, _ := strconv.Atoi(m[3])
			return nv, sv
		}
		lastLine, added := logLines(t, "threads", dir, base, n)
		lastN, lastS := parse(lastLine)
		for i, l := range added {
			nv, sv := parse(l)
			if nv != lastN+1+i || sv <= lastS {
				t.Fatalf("%s: new line %d is %q after n=%d shared=%d", base, i, l, lastN+i, lastS)
			}
			if other, dup := seen[sv]; dup {
				t.Fatalf("shared=%d twice: %s and %s", sv, other, base)
			}
			seen[sv] = base
			lastS = sv
		}
	}
}

// waitLines waits until the log at path has at least n complete lines
// after the dumped content before, and returns them.
func waitLines(t *testing.T, path string, before []byte, n int) []string {
	t.Helper()
	var added []string
	for try := 0; try < 1000 && len(added) < n; try++ {
		if try > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		now, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(now), string(before)) {
			t.Fatalf("%s: the dumped content was changed", path)
		}
		rest := string(now[len(before):])
		if i := strings.LastIndexByte(rest, '\n'); i >= 0 {
			added = strings.Split(rest[:i], "\n")
		}
	}
	if len(added) < n {
		t.Fatalf("%s: %d new lines, want at least %d: the restored task does not run on", path, len(added), n)
	}
	return added
}

// readLimits parses /proc/PID/limits, whose lines are in RLIMIT_* order.
func readLimits(t *testing.T, pid int) []Rlimit {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var out []Rlimit
	for _, l := range lines[1:] { // the header
		fs := strings.Fields(l[26:]) // after the name column
		v := func(s string) uint64 {
			if s == "unlimited" {
				return ^uint64(0)
			}
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/limits: %q: %v", pid, l, err)
			}
			return n
		}
		out = append(out, Rlimit{Cur: v(fs[0]), Max: v(fs[1])})
	}
	return out
}

// noHugepage returns the start of every mapping whose VmFlags have "nh".
func noHugepage(t *testing.T, pid int) map[uint64]bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]bool{}
	var start uint64
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			lo, _, _ := strings.Cut(f[0], "-")
			start, _ = strconv.ParseUint(lo, 16, 64)
		}
		if v, ok := strings.CutPrefix(l, "VmFlags:"); ok && strings.Contains(" "+v+" ", " nh ") {
			out[start] = true
		}
	}
	return out
}

// credsStatus is what /proc/PID/status shows of credentials c.
func credsStatus(c Creds) map[string]string {
	return map[string]string{
		"Uid":        fmt.Sprintf("%d %d %d %d", c.UID, c.EUID, c.SUID, c.FSUID),
		"Gid":        fmt.Sprintf("%d %d %d %d", c.GID, c.EGID, c.SGID, c.FSGID),
		"Groups":     strings.Trim(fmt.Sprint(c.Groups), "[]"),
		"CapInh":     fmt.Sprintf("%016x", c.CapInh),
		"CapPrm":     fmt.Sprintf("%016x", c.CapPrm),
		"CapEff":     fmt.Sprintf("%016x", c.CapEff),
		"CapBnd":     fmt.Sprintf("%016x", c.CapBnd),
		"CapAmb":     fmt.Sprintf("%016x", c.CapAmb),
		"NoNewPrivs": map[bool]string{false: "0", true: "1"}[c.NoNewPrivs],
	}
}
