// Package check compares a live, restored process tree with the image
// directory it came from, and a workload's logs with what they held at
// the dump, for end-to-end tests: the same pids, groups, sessions and
// threads in the new pid namespace (Tree), the same mappings (Maps) and
// fd tables (FDs), and logs that continue line by line from where the
// dump left them (Logs).
package check

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/images"
)

// Task is a live task of a restored tree, pids in the tree's own pid
// namespace unless named host.
type Task struct {
	Host           int
	PID, PPID      int
	PGID, SID      int
	Threads        map[int]int // tid in the namespace -> host tid
	hostPPID       int
	nsLevels       int
	threadProblems []string
}

// status reads /proc/PID/status (or task/TID/status) into fields.
func status(path string) (map[string][]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	st := map[string][]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			st[k] = strings.Fields(v)
		}
	}
	return st, nil
}

// last returns the innermost level of a NS* field as a number.
func last(path, key string, st map[string][]string) (int, error) {
	v := st[key]
	if len(v) == 0 {
		return 0, fmt.Errorf("%s: no %s", path, key)
	}
	return strconv.Atoi(v[len(v)-1])
}

// Live walks the tree rooted at host pid root through every thread's
// children file, and returns its tasks by pid in the root's namespace.
func Live(root int) (map[int]*Task, error) {
	out := map[int]*Task{}
	queue := []int{root}
	for len(queue) > 0 {
		host := queue[0]
		queue = queue[1:]
		path := fmt.Sprintf("/proc/%d/status", host)
		st, err := status(path)
		if err != nil {
			return nil, err
		}
		lt := &Task{Host: host, Threads: map[int]int{}, nsLevels: len(st["NSpid"])}
		for key, dst := range map[string]*int{"NSpid": &lt.PID, "NSpgid": &lt.PGID, "NSsid": &lt.SID, "PPid": &lt.hostPPID} {
			if *dst, err = last(path, key, st); err != nil {
				return nil, err
			}
		}
		if out[lt.PID] != nil {
			return nil, fmt.Errorf("pid %d twice in the tree of %d (host %d and %d)", lt.PID, root, out[lt.PID].Host, host)
		}
		out[lt.PID] = lt
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", host))
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			tid, _ := strconv.Atoi(e.Name())
			tpath := fmt.Sprintf("/proc/%d/task/%d/status", host, tid)
			tst, err := status(tpath)
			if err != nil {
				return nil, err
			}
			nstid, err := last(tpath, "NSpid", tst)
			if err != nil {
				return nil, err
			}
			if tgid, _ := last(tpath, "NStgid", tst); tgid != lt.PID {
				lt.threadProblems = append(lt.threadProblems, fmt.Sprintf("thread %d (host %d) has NStgid %v", nstid, tid, tst["NStgid"]))
			}
			lt.Threads[nstid] = tid
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", host, tid))
			if err != nil {
				return nil, err
			}
			for _, f := range strings.Fields(string(b)) {
				n, _ := strconv.Atoi(f)
				queue = append(queue, n)
			}
		}
	}
	byHost := map[int]*Task{}
	for _, lt := range out {
		byHost[lt.Host] = lt
	}
	for _, lt := range out {
		if par := byHost[lt.hostPPID]; par != nil {
			lt.PPID = par.PID
		}
	}
	return out, nil
}

// Tree checks the live tree rooted at host pid root against pstree.img:
// every task with its pid, parent, group, session and thread ids in a
// pid namespace of its own (two levels: ours and the new one), and no
// task more. It returns the live tasks by pid.
func Tree(t testing.TB, d *images.Dir, root int) map[int]*Task {
	t.Helper()
	live, err := Live(root)
	if err != nil {
		t.Fatalf("restored tree of %d: %v", root, err)
	}
	seen := map[int]bool{}
	for _, e := range d.Pstree {
		pid := int(e.GetPid())
		seen[pid] = true
		lt := live[pid]
		if lt == nil {
			t.Errorf("pstree.img task %d is not in the restored tree", pid)
			continue
		}
		if lt.nsLevels != 2 {
			t.Errorf("task %d (host %d): %d pid namespace levels, want 2 (ours and the restored one)", pid, lt.Host, lt.nsLevels)
		}
		got := fmt.Sprintf("ppid %d pgid %d sid %d", lt.PPID, lt.PGID, lt.SID)
		want := fmt.Sprintf("ppid %d pgid %d sid %d", e.GetPpid(), e.GetPgid(), e.GetSid())
		if got != want {
			t.Errorf("task %d (host %d): %s, pstree.img has %s", pid, lt.Host, got, want)
		}
		var gotT, wantT []int
		for tid := range lt.Threads {
			gotT = append(gotT, tid)
		}
		for _, tid := range images.Threads(e) {
			wantT = append(wantT, int(tid))
		}
		slices.Sort(gotT)
		slices.Sort(wantT)
		if !slices.Equal(gotT, wantT) {
			t.Errorf("task %d (host %d): threads %v, pstree.img has %v", pid, lt.Host, gotT, wantT)
		}
		for _, p := range lt.threadProblems {
			t.Errorf("task %d: %s", pid, p)
		}
	}
	for pid, lt := range live {
		if !seen[pid] {
			t.Errorf("the restored tree has task %d (host %d), which pstree.img has not", pid, lt.Host)
		}
	}
	return live
}

// Maps checks /proc/HOST/maps of the task pid against its mm image, line
// by line: addresses, protection, private or shared, and what is mapped.
// [vvar] and [vvar_vclock], one VVAR entry in CRIU 4.2's images on this
// kernel, count as one. Mappings the kernel merged where the images have
// two are a difference too: the restore left them mergeable.
func Maps(t testing.TB, s *images.Summary, pid uint32, host int) {
	t.Helper()
	var want []string
	for _, task := range s.Tasks {
		if task.PID != pid || task.Memory == nil {
			continue
		}
		for _, v := range task.Memory.VMAs {
			want = append(want, mapsLine(v.Start, v.End, v.ProtString(), v.Shared(), vmaName(v.Name)))
		}
	}
	if want == nil {
		t.Errorf("task %d: no mappings in the images", pid)
		return
	}
	got, err := readMaps(host)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("task %d: /proc/%d/maps differs from mm-%d.img:\n%s", pid, host, pid, diff(want, got))
	}
}

func mapsLine(start, end uint64, prot string, shared bool, name string) string {
	sp := "p"
	if shared {
		sp = "s"
	}
	return strings.TrimSpace(fmt.Sprintf("%x-%x %s%s %s", start, end, prot, sp, name))
}

// vmaName turns the images' name of a mapping into what maps shows.
func vmaName(name string) string {
	if i := strings.Index(name, " +0x"); i >= 0 {
		name = name[:i]
	}
	if n, ok := strings.CutPrefix(name, "memfd:"); ok {
		return "/memfd:" + n + " (deleted)"
	}
	return name
}

// readMaps reads /proc/PID/maps as mapsLine strings, [vvar] and the
// [vvar_vclock] after it joined.
func readMaps(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	type line struct {
		start, end  uint64
		perms, name string
	}
	var ls []line
	for _, s := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(s)
		if len(f) < 5 {
			return nil, fmt.Errorf("/proc/%d/maps: %q", pid, s)
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		l := line{perms: f[1], name: strings.Join(f[5:], " ")}
		if strings.HasPrefix(l.name, "/SYSV") {
			// a SysV segment: the images name it by its id, the inode
			l.name = "SYSV shmid " + f[4]
		}
		l.start, _ = strconv.ParseUint(lo, 16, 64)
		l.end, _ = strconv.ParseUint(hi, 16, 64)
		if n := len(ls); l.name == "[vvar_vclock]" && n > 0 && ls[n-1].name == "[vvar]" && ls[n-1].end == l.start {
			ls[n-1].end = l.end
			continue
		}
		ls = append(ls, l)
	}
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = mapsLine(l.start, l.end, l.perms[:3], l.perms[3] == 's', l.name)
	}
	return out, nil
}

// diff lists the lines only in want ("-") or only in got ("+").
func diff(want, got []string) string {
	var b strings.Builder
	for _, w := range want {
		if !slices.Contains(got, w) {
			fmt.Fprintf(&b, "  - %s (images)\n", w)
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			fmt.Fprintf(&b, "  + %s (maps)\n", g)
		}
	}
	if b.Len() == 0 {
		return "  the same lines in another order"
	}
	return b.String()
}

// FDs checks the fd table of the task pid (host pid host) against its
// fdinfo and files images: the same fd numbers and no others, each on its
// file (a pipe on some pipe: the restored one has a new inode), with its
// flags, close-on-exec included. Offsets are not compared: the task moves
// them as soon as it runs.
func FDs(t testing.TB, s *images.Summary, pid uint32, host int) {
	t.Helper()
	want := map[int]bool{}
	for _, task := range s.Tasks {
		if task.PID != pid {
			continue
		}
		for _, fd := range task.FDs {
			n := int(fd.FD)
			want[n] = true
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", host, n))
			if err != nil {
				t.Errorf("task %d fd %d (%s in the images): %v", pid, n, fd.Name, err)
				continue
			}
			name := fd.Name
			switch fd.Type {
			case "PIPE":
				name = "pipe:["
			case "UNIXSK", "INETSK", "NETLINKSK", "PACKETSK":
				// a socket made anew has an inode of its own
				name = "socket:["
			case "MEMFD":
				name = vmaName(fd.Name)
			}
			same := link == name
			if name == "pipe:[" || name == "socket:[" {
				same = strings.HasPrefix(link, name)
			}
			if !same {
				t.Errorf("task %d fd %d: %q, the images have %q", pid, n, link, fd.Name)
			}
			flags := fd.Flags
			if flags&0o20000000 != 0 {
				// O_TMPFILE: reopened by name, as CRIU does
				flags &^= 0o20200000
			}
			if fd.CloseOnExec {
				flags |= 0o2000000 // O_CLOEXEC
			}
			if got, err := fdFlags(host, n); err != nil {
				t.Error(err)
			} else if got != flags {
				t.Errorf("task %d fd %d (%s): flags %#o, the images have %#o", pid, n, link, got, flags)
			}
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", host))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if n, _ := strconv.Atoi(e.Name()); !want[n] {
			link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", host, n))
			t.Errorf("task %d: fd %d (%s) is not in the images", pid, n, link)
		}
	}
}

// fdFlags reads the flags of /proc/PID/fdinfo/FD.
func fdFlags(pid, fd int) (uint32, error) {
	path := fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd)
	st, err := status(path)
	if err != nil {
		return 0, err
	}
	if len(st["flags"]) != 1 {
		return 0, fmt.Errorf("%s: flags %q", path, st["flags"])
	}
	v, err := strconv.ParseUint(st["flags"][0], 8, 32)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return uint32(v), nil
}

// Next checks that line may follow prev in a log.
type Next func(prev, line string) error

// Counter is the rule of logs whose lines are "<text> N" (or "N"): the
// same text, N counting on by one.
func Counter(prev, line string) error {
	i := strings.LastIndexByte(prev, ' ') + 1
	n, err := strconv.Atoi(prev[i:])
	if err != nil {
		return fmt.Errorf("line %q does not end in a number", prev)
	}
	if want := prev[:i] + strconv.Itoa(n+1); line != want {
		return fmt.Errorf("%q, want %q", line, want)
	}
	return nil
}

// Snapshot reads the log of every rule in dir: what a tree wrote before
// its dump, for Logs to check that the restored tree goes on from it.
func Snapshot(t testing.TB, dir string, rules map[string]Next) map[string][]byte {
	t.Helper()
	out := make(map[string][]byte, len(rules))
	for base := range rules {
		b, err := os.ReadFile(filepath.Join(dir, base))
		if err != nil {
			t.Fatal(err)
		}
		out[base] = b
	}
	return out
}

// Logs watches the logs of a restored workload in dir for at least d:
// each log (by base name, with its rule) must keep the content it had at
// the dump (before), and at every look (at the start, then every d/2)
// have grown since the last one, with every new line following the one
// before it by its rule, and no line saying CORRUPT.
func Logs(t testing.TB, dir string, before map[string][]byte, rules map[string]Next, d time.Duration) {
	t.Helper()
	const looks = 2
	// A log that did not grow between two looks gets up to stall more
	// to grow before it counts as stopped: a loaded machine may hold a
	// task off the CPU for longer than a look, a stopped tree writes
	// nothing.
	const stall = 5 * time.Second
	grown := map[string]int{}
	start := time.Now()
	for look := 0; look <= looks; look++ {
		if look > 0 {
			time.Sleep(time.Until(start.Add(d * time.Duration(look) / looks)))
		}
		for base, rule := range rules {
			added, err := follow(filepath.Join(dir, base), before[base], rule)
			for waited := time.Duration(0); err == nil && look > 0 && len(added) <= grown[base] && waited < stall; waited += 20 * time.Millisecond {
				time.Sleep(20 * time.Millisecond)
				added, err = follow(filepath.Join(dir, base), before[base], rule)
			}
			if err != nil {
				t.Fatalf("%v after the restore: %v", time.Since(start).Round(time.Millisecond), err)
			}
			if look > 0 && len(added) <= grown[base] {
				t.Fatalf("%s: no new line in %v (%d since the restore): the restored tree stopped", base, d/looks+stall, len(added))
			}
			grown[base] = len(added)
		}
	}
	if el := time.Since(start); el < d {
		t.Fatalf("watched for %v only", el)
	}
}

// follow checks the complete lines of path after before: each follows the
// one before it by rule, the first the last line of before.
func follow(path string, before []byte, rule Next) ([]string, error) {
	now, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(now, before) {
		return nil, fmt.Errorf("%s: the content it had at the dump was changed", path)
	}
	old := strings.Split(strings.TrimRight(string(before), "\n"), "\n")
	prev := old[len(old)-1]
	if len(before) == 0 || strings.Contains(prev, "CORRUPT") {
		return nil, fmt.Errorf("%s: last line at the dump %q", path, prev)
	}
	rest := string(now[len(before):])
	i := strings.LastIndexByte(rest, '\n')
	if i < 0 {
		return nil, nil
	}
	added := strings.Split(rest[:i], "\n")
	for n, l := range added {
		if strings.Contains(l, "CORRUPT") {
			return nil, fmt.Errorf("%s: new line %d is %q", filepath.Base(path), n, l)
		}
		if err := rule(prev, l); err != nil {
			return nil, fmt.Errorf("%s: new line %d after %q: %w", filepath.Base(path), n, prev, err)
		}
		prev = l
	}
	return added, nil
}

// SysVMaps returns the SysV shared memory mappings of pid as
// /proc/PID/maps shows them (range, perms, offset, inode), each with the
// mode of its map_files link (0400 for a read-only attach).
func SysVMaps(t testing.TB, pid int) []string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 6 || !strings.HasPrefix(fl[5], "/SYSV") {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(fmt.Sprintf("/proc/%d/map_files/%s", pid, fl[0]), &st); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s %s %s %s %o", fl[0], fl[1], fl[2], fl[4], st.Mode&0o777))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
