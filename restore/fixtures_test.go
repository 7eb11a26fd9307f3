package restore

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/procscan"

	_ "github.com/crest-restore/crest/internal/mainthread" // no test wedges the main thread in a tree's namespaces
)

// The end-to-end tests of issue 3: each fixture restored detached through
// the real crest binary, as a user runs it, and compared with its images
// through /proc, five times in a row; and the failures a user meets (a
// missing or changed binary, damaged images, an occupied pid), each with a
// message naming the cause and nothing of the attempt left alive.

// TestFixturesCLI restores counter, dynamic, tree and threads with
// `crest restore -D IMAGES -d --pidfile F`, five times each, each time from
// a fresh install, and checks the restored tree against the images:
// pids, parents, groups and sessions in the new pid namespace, every
// thread's tid, /proc/PID/maps entry by entry, the fd tables with their
// offsets and flags, signal masks and dispositions, credentials and comm,
// and that every log continues from its dumped line for at least a second.
func TestFixturesCLI(t *testing.T) {
	needRoot(t)
	bin := cli.Binary(t)
	cli.Subreaper(t)
	for _, name := range []string{"counter", "dynamic", "tree", "threads"} {
		t.Run(name, func(t *testing.T) {
			p := loadPlan(t, name)
			imgs := fixture.Images(t, name)
			for i := 1; i <= 5; i++ {
				restoreFailed := true
				ok := t.Run(fmt.Sprintf("restore %d", i), func(t *testing.T) {
					dir := fixture.Install(t, name)
					root := cli.RestoreDetached(t, bin, imgs)
					restoreFailed = false
					defer func() {
						killTree(t, root)
						cli.NothingLeft(t, dir)
					}()
					// crest -d has exited: the root is in no one's
					// care but ours (we are the subreaper).
					if st, err := procscan.Read(root); err != nil || st.PPID != os.Getpid() {
						t.Errorf("root %d after crest -d exited: %+v (%v), want a child of the test (pid %d)", root, st, err, os.Getpid())
					}
					live := liveTree(t, root)
					checkPstree(t, p.Dir, live)
					// One subtest per kind of check, so that a
					// report says which property broke.
					for _, c := range []struct {
						name  string
						check func(t *testing.T, task *Task, lt *liveTask)
					}{
						{"task", func(t *testing.T, task *Task, lt *liveTask) { checkTask(t, task, lt.host) }},
						{"threads", func(t *testing.T, task *Task, lt *liveTask) { checkThreads(t, p.Dir, task, lt) }},
						{"maps", func(t *testing.T, task *Task, lt *liveTask) { checkMaps(t, p.Dir, task, lt.host) }},
						{"fds", func(t *testing.T, task *Task, lt *liveTask) { checkFDs(t, p.Dir, task, lt.host) }},
					} {
						t.Run(c.name, func(t *testing.T) {
							for _, task := range p.Tasks {
								if lt := live[task.PID]; lt != nil { // else checkPstree reported it
									c.check(t, task, lt)
								}
							}
						})
					}
					t.Run("runs on", func(t *testing.T) { checkRunsOn(t, name, dir, time.Second) })
				})
				if !ok && restoreFailed {
					break // the next ones would fail the same way
				}
			}
		})
	}
}

// TestFailuresCLI runs crest restore on what can not be restored and checks
// that it fails with a message naming the cause, and that no process of
// the attempt is left: none running from /opt/crest-fixtures, no agent, no
// child of ours (we are the subreaper, so orphans of the attempt would come
// to us).
func TestFailuresCLI(t *testing.T) {
	needRoot(t)
	bin := cli.Binary(t)
	cli.Subreaper(t)
	prog := filepath.Join(fixture.OptDir, "counter", "prog")
	var started []int // processes a damage started, killed before the check for leftovers
	tests := []struct {
		name    string
		fixture string
		// damage breaks the installed fixture or a copy of its images
		// (in imgs) and returns what the message must name ("a|b":
		// either).
		damage func(t *testing.T, imgs string) []string
	}{
		{"missing binary", "counter", func(t *testing.T, imgs string) []string {
			if err := os.Remove(prog); err != nil {
				t.Fatal(err)
			}
			return []string{prog, "no such file", "task 1", "ROOT_TASK"}
		}},
		{"truncated pages file", "counter", func(t *testing.T, imgs string) []string {
			// Half of it: the 2 MiB buffer's run ends past the new end.
			if err := os.Truncate(filepath.Join(imgs, "pages-1.img"), 1<<20); err != nil {
				t.Fatal(err)
			}
			return []string{"pages-1.img", "pagemap-1.img", "task 1"}
		}},
		{"corrupt core magic", "counter", func(t *testing.T, imgs string) []string {
			flipBytes(t, filepath.Join(imgs, "core-1.img"), 4, 4) // CORE's magic, after IMG_COMMON
			return []string{"core-1.img", "task 1"}
		}},
		{"corrupt core entry size", "counter", func(t *testing.T, imgs string) []string {
			flipBytes(t, filepath.Join(imgs, "core-1.img"), 8, 2)
			return []string{"core-1.img", "offset", "task 1"}
		}},
		{"corrupt core message", "counter", func(t *testing.T, imgs string) []string {
			// The first tag byte of the message becomes an invalid wire type.
			flipBytes(t, filepath.Join(imgs, "core-1.img"), 12, 1)
			return []string{"core-1.img", "task 1"}
		}},
		// The images of counter rewritten so that the root is the test
		// process's own pid, in the pid namespace of the dumping CRIU
		// (ids-PID.img's pid_ns_id is inventory.img's root one): no new
		// pid namespace is asked for, the tree goes into crest's, where
		// the fork of the root fails with EEXIST.
		{"root pid in use in crest's namespace", "counter", func(t *testing.T, imgs string) []string {
			pid := os.Getpid()
			renumberRoot(t, imgs, pid)
			return []string{"stage ROOT_TASK", fmt.Sprintf("task %d: fork children: pid %d is in use (EEXIST): process %d (", pid, pid, pid)}
		}},
		// The root's pid belongs to no process, but a session and
		// process group still carry it: a shell that made a session,
		// started a sleep in it and exited (as a dumped tree's leader
		// whose killed children are zombies not reaped yet). The message
		// names the process that holds it.
		{"root pid held by a session", "counter", func(t *testing.T, imgs string) []string {
			out, err := exec.Command("setsid", "sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $$ $!").Output()
			if err != nil {
				t.Fatal(err)
			}
			var leader, sleeper int
			if _, err := fmt.Sscan(string(out), &leader, &sleeper); err != nil {
				t.Fatalf("%q: %v", out, err)
			}
			started = append(started, sleeper)
			renumberRoot(t, imgs, leader)
			return []string{"stage ROOT_TASK", fmt.Sprintf("pid %d is in use (EEXIST): the session and process group of %d (sleep, ", leader, sleeper)}
		}},
		// The same in RESTORE: counter renumbered to a free pid of
		// crest's namespace gets a second thread with the test's pid
		// (its core image a copy of the leader's). The root is forked,
		// then its clone3 of that thread fails with EEXIST, and the
		// rollback, with no pid namespace to take the tree along, kills
		// the root itself.
		{"thread tid in use in crest's namespace", "counter", func(t *testing.T, imgs string) []string {
			pid, tid := freePID(t), os.Getpid()
			renumberRoot(t, imgs, pid)
			rewritePstree(t, imgs, func(es []*pstree.PstreeEntry) {
				es[0].Threads = append(es[0].Threads, uint32(tid))
			})
			b, err := os.ReadFile(filepath.Join(imgs, fmt.Sprintf("core-%d.img", pid)))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(imgs, fmt.Sprintf("core-%d.img", tid)), b, 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"stage RESTORE", fmt.Sprintf("task %d", pid), "threads", "file exists (errno 17)"}
		}},
		// An occupied pid that the restore meets: tree's root gets a
		// second thread with tid 3, which child2 (pid 3) has by then. The
		// clone3 of that thread fails with EEXIST in RESTORE, after every
		// task was forked, so the rollback has a whole tree to remove.
		{"thread tid in use in the new namespace", "tree", func(t *testing.T, imgs string) []string {
			rewritePstree(t, imgs, func(es []*pstree.PstreeEntry) {
				es[0].Threads = append(es[0].Threads, 3)
			})
			return []string{"stage RESTORE", "task 1", "threads", "file exists (errno 17)"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := fixture.Install(t, tt.fixture)
			imgs := fixture.CopyImages(t, tt.fixture)
			want := tt.damage(t, imgs)
			pidfile := filepath.Join(t.TempDir(), "pid")
			res := cli.Run(t, bin, "restore", "-D", imgs, "-d", "--pidfile", pidfile)
			if res.Code == 0 {
				if b, err := os.ReadFile(pidfile); err == nil {
					if root, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
						killTree(t, root)
					}
				}
				t.Fatalf("crest restore succeeded: %s", res.Stderr)
			}
			if res.Code != 1 {
				t.Errorf("exit status %d, want 1", res.Code)
			}
			msg := res.Stderr
			t.Logf("exit %d: %s", res.Code, strings.TrimSpace(msg))
			for _, w := range want {
				found := false
				for _, alt := range strings.Split(w, "|") {
					found = found || strings.Contains(msg, alt)
				}
				if !found {
					t.Errorf("message %q does not name %q", msg, w)
				}
			}
			if !strings.HasPrefix(msg, "crest restore: ") || strings.Count(strings.TrimSpace(msg), "\n") != 0 {
				t.Errorf("message %q: want one line starting with \"crest restore: \"", msg)
			}
			for _, pid := range started {
				killTree(t, pid)
			}
			started = nil
			cli.NothingLeft(t, dir)
		})
	}
}

// TestReopenedFileChecked restores counter after changing the size or the
// mode of its binary or the mode of its cwd: CRIU checks both for the
// regular files it reopens (all but those open O_WRONLY|O_APPEND), and so
// must crest, naming the file; nothing of the attempt is left. The logs,
// open O_WRONLY|O_APPEND, may have grown: restoring with a longer out.log
// works.
func TestReopenedFileChecked(t *testing.T) {
	needRoot(t)
	bin := cli.Binary(t)
	cli.Subreaper(t)
	imgs := fixture.Images(t, "counter")
	prog := filepath.Join(fixture.OptDir, "counter", "prog")
	for _, tt := range []struct {
		name   string
		change func() error
		want   string
	}{
		{"size", func() error { return os.Truncate(prog, 4096) }, "4096 bytes, the image has 762544"},
		{"mode", func() error { return os.Chmod(prog, 0o755|os.ModeSetuid) }, "mode 0104755, the image has 0100755"},
		{"mode of a directory", func() error { return os.Chmod(filepath.Dir(prog), 0o700) }, "/opt/crest-fixtures/counter: mode 040700, the image has 040755"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := fixture.Install(t, "counter")
			if err := tt.change(); err != nil {
				t.Fatal(err)
			}
			res := cli.Run(t, bin, "restore", "-D", imgs, "-d")
			if res.Code != 1 || !strings.Contains(res.Stderr, tt.want) {
				t.Errorf("exit %d, message %q; want 1 and a message with %q", res.Code, res.Stderr, tt.want)
			}
			cli.NothingLeft(t, dir)
		})
	}
	t.Run("grown log", func(t *testing.T) {
		dir := fixture.Install(t, "counter")
		// Appended by someone else after the dump: not a reason to
		// refuse a file that is open O_WRONLY|O_APPEND.
		f, err := os.OpenFile(filepath.Join(dir, "out.log"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("# appended after the dump\n")
		f.Close()
		root := cli.RestoreDetached(t, bin, imgs)
		killTree(t, root)
		cli.NothingLeft(t, dir)
	})
}

// killTree kills a restored tree through its root (the init of its pid
// namespace), reaps the root and waits until every task of it is gone.
func killTree(t testing.TB, root int) {
	t.Helper()
	var pids []int
	if found, err := walkTree(root); err == nil {
		for h := range found {
			pids = append(pids, h)
		}
	}
	if err := syscall.Kill(root, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		t.Errorf("kill %d: %v", root, err)
	}
	for {
		_, err := syscall.Wait4(root, nil, syscall.WALL, nil)
		if err != syscall.EINTR {
			break // ECHILD: not ours, pid 1 reaps it; WaitGone below waits
		}
	}
	if left := procscan.WaitGone(10*time.Second, append(pids, root)...); len(left) > 0 {
		t.Errorf("pids %v of the tree of %d still exist 10s after SIGKILL", left, root)
	}
}

// flipBytes inverts n bytes of path at off.
func flipBytes(t testing.TB, path string, off, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := off; i < off+n; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func rewritePstree(t testing.TB, imgs string, edit func([]*pstree.PstreeEntry)) {
	t.Helper()
	path := filepath.Join(imgs, "pstree.img")
	img, err := images.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var es []*pstree.PstreeEntry
	for _, e := range img.Entries {
		es = append(es, e.Message.(*pstree.PstreeEntry))
	}
	edit(es)
	if err := images.WriteFile(path, img); err != nil {
		t.Fatal(err)
	}
}

// renumberRoot gives the single task of a copied image set the pid pid
// (and its session and group), renaming its per-pid images.
func renumberRoot(t testing.TB, imgs string, pid int) {
	t.Helper()
	rewritePstree(t, imgs, func(es []*pstree.PstreeEntry) {
		if len(es) != 1 || len(es[0].Threads) != 1 {
			t.Fatalf("renumberRoot: %d tasks", len(es))
		}
		p := uint32(pid)
		es[0].Pid, es[0].Pgid, es[0].Sid, es[0].Threads = &p, &p, &p, []uint32{p}
	})
	for _, f := range []string{"core", "ids", "fs", "mm", "pagemap"} {
		if err := os.Rename(filepath.Join(imgs, f+"-1.img"), filepath.Join(imgs, fmt.Sprintf("%s-%d.img", f, pid))); err != nil {
			t.Fatal(err)
		}
	}
	// CRIU restores into a new pid namespace when the root's pid_ns_id
	// differs from the root_ids of inventory.img (get_clone_mask): make
	// them equal.
	inv, err := images.ReadFile(filepath.Join(imgs, "inventory.img"))
	if err != nil {
		t.Fatal(err)
	}
	rootNS := inv.Entries[0].Message.(*inventory.InventoryEntry).GetRootIds().GetPidNsId()
	path := filepath.Join(imgs, fmt.Sprintf("ids-%d.img", pid))
	ids, err := images.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ids.Entries[0].Message.(*criu_core.TaskKobjIdsEntry).PidNsId = &rootNS
	if err := images.WriteFile(path, ids); err != nil {
		t.Fatal(err)
	}
}

// liveTask is a restored task as /proc shows it.
type liveTask struct {
	host     int         // pid in our namespace
	pid      int         // pid in the restored namespace
	hostPPid int         // parent, in our namespace
	threads  map[int]int // tid in the restored namespace -> host tid
}

// liveTree finds the restored tasks from the root down, through every
// thread's children file, keyed by their pid in the new namespace.
func liveTree(t *testing.T, root int) map[int]*liveTask {
	t.Helper()
	out := map[int]*liveTask{}
	queue := []int{root}
	for len(queue) > 0 {
		host := queue[0]
		queue = queue[1:]
		st := procStatus(t, host)
		ns := st["NSpid"]
		lt := &liveTask{host: host, pid: atoi(t, ns[len(ns)-1]), hostPPid: atoi(t, st["PPid"][0]), threads: map[int]int{}}
		if out[lt.pid] != nil {
			t.Fatalf("pid %d twice in the restored tree (host %d and %d)", lt.pid, out[lt.pid].host, host)
		}
		out[lt.pid] = lt
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", host))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			tid := atoi(t, e.Name())
			tst := procStatus(t, tid)
			nspid, nstgid := tst["NSpid"], tst["NStgid"]
			if len(nspid) != 2 || len(nstgid) != 2 {
				t.Errorf("thread %d: NSpid %v NStgid %v, want two levels (ours, the restored namespace)", tid, nspid, nstgid)
				continue
			}
			if atoi(t, nstgid[1]) != lt.pid {
				t.Errorf("thread %d: NStgid %v, want %d in the restored namespace", tid, nstgid, lt.pid)
			}
			lt.threads[atoi(t, nspid[1])] = tid
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", host, tid))
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range strings.Fields(string(b)) {
				queue = append(queue, atoi(t, f))
			}
		}
	}
	return out
}

// checkPstree compares the live tree with pstree.img: the same pids, each
// with its parent, group, session and threads, in the new namespace.
func checkPstree(t *testing.T, d *images.Dir, live map[int]*liveTask) {
	t.Helper()
	byHost := map[int]*liveTask{}
	for _, lt := range live {
		byHost[lt.host] = lt
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
		st := procStatus(t, lt.host)
		for k, want := range map[string]int{"NSpgid": int(e.GetPgid()), "NSsid": int(e.GetSid())} {
			if v := st[k]; len(v) != 2 || atoi(t, v[1]) != want {
				t.Errorf("task %d: %s %v, want %d in the new namespace", pid, k, v, want)
			}
		}
		// The parent in the new namespace: the root's is outside it (0).
		ppid := 0
		if par := byHost[lt.hostPPid]; par != nil {
			ppid = par.pid
		}
		if ppid != int(e.GetPpid()) {
			t.Errorf("task %d: parent %d (host %d), pstree.img has %d", pid, ppid, lt.hostPPid, e.GetPpid())
		}
		var want, got []int
		for _, tid := range e.GetThreads() {
			want = append(want, int(tid))
		}
		for tid := range lt.threads {
			got = append(got, tid)
		}
		sort.Ints(want)
		sort.Ints(got)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("task %d: threads %v in the new namespace, pstree.img has %v", pid, got, want)
		}
	}
	for pid, lt := range live {
		if !seen[pid] {
			t.Errorf("restored tree has task %d (host %d), which pstree.img has not", pid, lt.host)
		}
	}
}

// checkThreads compares each thread's signal mask and comm with its core
// image.
func checkThreads(t *testing.T, d *images.Dir, task *Task, lt *liveTask) {
	t.Helper()
	for _, th := range task.Threads {
		host := lt.threads[th.TID]
		if host == 0 {
			continue // checkPstree reported it
		}
		core, err := d.Core(uint32(th.TID))
		if err != nil {
			t.Fatal(err)
		}
		blk := core.GetTc().GetBlkSigset()
		if tc := core.GetThreadCore(); tc != nil && tc.BlkSigset != nil {
			blk = tc.GetBlkSigset()
		}
		st := procStatus(t, host)
		if got := st["SigBlk"][0]; got != fmt.Sprintf("%016x", blk) {
			t.Errorf("task %d thread %d: SigBlk %s, core-%d.img has %016x", task.PID, th.TID, got, th.TID, blk)
		}
		comm := core.GetThreadCore().GetComm()
		if comm == "" {
			comm = core.GetTc().GetComm()
		}
		if got := strings.Join(st["Name"], " "); got != comm {
			t.Errorf("task %d thread %d: comm %q, core-%d.img has %q", task.PID, th.TID, got, th.TID, comm)
		}
	}
}

// mapsLine is one line of /proc/PID/maps, or what the images say it must be.
type mapsLine struct {
	start, end uint64
	perms      string // "r-xp"
	offset     uint64
	path       string
}

func (m mapsLine) String() string {
	return fmt.Sprintf("%x-%x %s %08x %s", m.start, m.end, m.perms, m.offset, m.path)
}

// checkMaps compares /proc/PID/maps with the task's mm image, line by line:
// addresses, protection, private or shared, offset and file. [vvar] and
// [vvar_vclock], which CRIU 4.2 records as one VVAR entry on this kernel,
// count as one.
func checkMaps(t *testing.T, d *images.Dir, task *Task, host int) {
	t.Helper()
	m, err := d.MM(uint32(task.PID))
	if err != nil {
		t.Fatal(err)
	}
	var want []mapsLine
	for _, v := range m.GetVmas() {
		l := mapsLine{start: v.GetStart(), end: v.GetEnd(), perms: perms(v.GetProt(), v.GetFlags()&syscall.MAP_SHARED != 0)}
		st := v.GetStatus()
		switch {
		case st&vmaAreaVsyscall != 0:
			l.path = "[vsyscall]"
		case st&vmaAreaVDSO != 0:
			l.path = "[vdso]"
		case st&vmaAreaVVAR != 0:
			l.path = "[vvar]"
		case st&(vmaFilePrivate|vmaFileShared) != 0:
			f, err := d.File(uint32(v.GetShmid()))
			if err != nil {
				t.Fatal(err)
			}
			l.path, l.offset = f.GetReg().GetName(), v.GetPgoff()
		// The kernel names the mappings that hold the mm's brk area
		// and its initial stack pointer (vma_is_initial_heap/stack).
		case l.start <= m.GetMmBrk() && l.end >= m.GetMmStartBrk():
			l.path = "[heap]"
		case l.start <= m.GetMmStartStack() && l.end >= m.GetMmStartStack():
			l.path = "[stack]"
		}
		want = append(want, l)
	}
	got := readMapsLines(t, host)
	inGot, inWant := map[mapsLine]bool{}, map[mapsLine]bool{}
	for _, l := range got {
		inGot[l] = true
	}
	for _, l := range want {
		inWant[l] = true
	}
	// The image's VMAs missing from maps, in runs of neighbours: a run
	// that is exactly one line of maps was joined by the kernel, which
	// merges neighbours whose flags are equal (such as VM_ACCOUNT, which a
	// private mapping gets once it was writable: the r-- rodata and the
	// r-- relro of an ELF file differ in it at the dump).
	for i := 0; i < len(want); {
		if inGot[want[i]] {
			i++
			continue
		}
		j := i + 1
		for j < len(want) && !inGot[want[j]] && want[j].start == want[j-1].end {
			j++
		}
		joined := want[i]
		joined.end = want[j-1].end
		switch {
		case j-i > 1 && inGot[joined]:
			t.Errorf("task %d: /proc/%d/maps has %q where mm-%d.img has %d mappings %q: the restore left them mergeable",
				task.PID, host, joined, task.PID, j-i, want[i:j])
			delete(inGot, joined)
			inWant[joined] = true
		default:
			for _, w := range want[i:j] {
				t.Errorf("task %d: mm-%d.img has %q, /proc/%d/maps has not", task.PID, task.PID, w, host)
			}
		}
		i = j
	}
	for _, g := range got {
		if !inWant[g] {
			t.Errorf("task %d: /proc/%d/maps has %q, which mm-%d.img has not", task.PID, host, g, task.PID)
		}
	}
}

func perms(prot uint32, shared bool) string {
	b := []byte("---p")
	if prot&syscall.PROT_READ != 0 {
		b[0] = 'r'
	}
	if prot&syscall.PROT_WRITE != 0 {
		b[1] = 'w'
	}
	if prot&syscall.PROT_EXEC != 0 {
		b[2] = 'x'
	}
	if shared {
		b[3] = 's'
	}
	return string(b)
}

// readMapsLines parses /proc/PID/maps, joining [vvar] and the
// [vvar_vclock] after it.
func readMapsLines(t *testing.T, pid int) []mapsLine {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []mapsLine
	for _, s := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(s)
		if len(f) < 5 {
			t.Fatalf("/proc/%d/maps: %q", pid, s)
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		l := mapsLine{perms: f[1], path: strings.Join(f[5:], " ")}
		l.start, _ = strconv.ParseUint(lo, 16, 64)
		l.end, _ = strconv.ParseUint(hi, 16, 64)
		l.offset, _ = strconv.ParseUint(f[2], 16, 64)
		if n := len(out); l.path == "[vvar_vclock]" && n > 0 && out[n-1].path == "[vvar]" && out[n-1].end == l.start && out[n-1].perms == l.perms {
			out[n-1].end = l.end
			continue
		}
		out = append(out, l)
	}
	return out
}

// checkFDs compares the fd table with fdinfo-N.img and files.img: the same
// numbers (and no others), each with its file, its flags (close-on-exec
// included) and its offset. A file open O_APPEND has its offset at the
// end of the file, which only grew since the dump; any other has the
// dumped offset.
func checkFDs(t *testing.T, d *images.Dir, task *Task, host int) {
	t.Helper()
	ids, err := d.IDs(uint32(task.PID))
	if err != nil {
		t.Fatal(err)
	}
	ents, err := d.Fdinfo(ids.GetFilesId())
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]bool{}
	for _, e := range ents {
		fd := int(e.GetFd())
		want[fd] = true
		fe, err := d.File(e.GetId())
		if err != nil {
			t.Fatal(err)
		}
		reg := fe.GetReg()
		if reg == nil {
			t.Errorf("task %d fd %d: file %d is %v, this test knows regular files only", task.PID, fd, e.GetId(), fe.GetType())
			continue
		}
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", host, fd))
		if err != nil || link != reg.GetName() {
			t.Errorf("task %d fd %d: %q (%v), files.img has %s", task.PID, fd, link, err, reg.GetName())
			continue
		}
		wantFlags := reg.GetFlags()
		if e.GetFlags()&fdCloexec != 0 {
			wantFlags |= syscall.O_CLOEXEC
		}
		appending := reg.GetFlags()&syscall.O_APPEND != 0
		var pos, flags uint64
		for try := 0; ; try++ {
			pos, flags = readFdinfo(t, host, fd)
			if !appending {
				break
			}
			// The task appends while we look: the offset is the size
			// when it did not move around the stat.
			fi, err := os.Stat(reg.GetName())
			if err != nil {
				t.Fatal(err)
			}
			pos2, _ := readFdinfo(t, host, fd)
			if pos2 == pos && uint64(fi.Size()) == pos || try == 100 {
				if uint64(fi.Size()) != pos {
					t.Errorf("task %d fd %d: offset %d, but %s has %d bytes", task.PID, fd, pos, reg.GetName(), fi.Size())
				}
				break
			}
		}
		if flags != uint64(wantFlags) {
			t.Errorf("task %d fd %d (%s): flags %#o, the images say %#o", task.PID, fd, reg.GetName(), flags, wantFlags)
		}
		if appending && pos < reg.GetPos() || !appending && pos != reg.GetPos() {
			t.Errorf("task %d fd %d (%s): offset %d, files.img has %d", task.PID, fd, reg.GetName(), pos, reg.GetPos())
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", host))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fds {
		if fd := atoi(t, e.Name()); !want[fd] {
			link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", host, fd))
			t.Errorf("task %d: fd %d (%s) is not in the images", task.PID, fd, link)
		}
	}
}

// readFdinfo returns the pos and flags lines of /proc/PID/fdinfo/FD.
func readFdinfo(t *testing.T, pid, fd int) (pos, flags uint64) {
	t.Helper()
	st := map[string][]string{}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		st[k] = strings.Fields(v)
	}
	pos, err1 := strconv.ParseUint(st["pos"][0], 10, 64)
	flags, err2 := strconv.ParseUint(st["flags"][0], 8, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/fdinfo/%d: %q", pid, fd, b)
	}
	return pos, flags
}

// checkRunsOn watches the fixture's logs for at least d: at each look every
// out*.log continues its dumped content without gap, repeat or CORRUPT
// line, and every log has grown since the look before.
func checkRunsOn(t *testing.T, name, dir string, d time.Duration) {
	t.Helper()
	dumped, err := filepath.Glob(fixture.Path(t, name, "files", "out*.log"))
	if err != nil || len(dumped) == 0 {
		t.Fatalf("no out*.log in the fixture %s (%v)", name, err)
	}
	before := map[string][]byte{}
	for _, p := range dumped {
		if before[filepath.Base(p)], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	// Lines come every 10 ms. A log that did not grow between two looks
	// gets up to stall more to grow before it counts as stopped: a
	// machine loaded by other work (CI beside a fuzzer) may hold a task
	// off the CPU for longer than a look, a stopped tree writes nothing.
	const looks = 2
	const stall = 5 * time.Second
	last := map[string]int{}
	start := time.Now()
	for look := 0; look <= looks; look++ {
		if look > 0 {
			time.Sleep(time.Until(start.Add(d * time.Duration(look) / looks)))
		}
		var shared []int // the threads fixture's shared= values, all logs
		for base, old := range before {
			added, err := newLines(filepath.Join(dir, base), old)
			if err != nil {
				t.Fatal(err)
			}
			for waited := time.Duration(0); look > 0 && len(added) <= last[base] && waited < stall; waited += 20 * time.Millisecond {
				time.Sleep(20 * time.Millisecond)
				if added, err = newLines(filepath.Join(dir, base), old); err != nil {
					t.Fatal(err)
				}
			}
			vals, err := continues(name, base, old, added)
			if err != nil {
				t.Fatalf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
			}
			shared = append(shared, vals...)
			if look > 0 && len(added) <= last[base] {
				t.Fatalf("%s: no new line in %v (%d after the dump): the restored tree stopped", base, d/looks+stall, len(added))
			}
			last[base] = len(added)
		}
		sort.Ints(shared)
		for i := 1; i < len(shared); i++ {
			if shared[i] == shared[i-1] {
				t.Fatalf("shared=%d appears twice across the threads' logs", shared[i])
			}
		}
	}
	if el := time.Since(start); el < d {
		t.Fatalf("watched for %v only", el)
	}
}

// newLines returns the complete lines of path after the dumped content.
func newLines(path string, before []byte) ([]string, error) {
	now, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(now, before) {
		return nil, fmt.Errorf("%s: the dumped content was changed", path)
	}
	rest := string(now[len(before):])
	i := strings.LastIndexByte(rest, '\n')
	if i < 0 {
		return nil, nil
	}
	return strings.Split(rest[:i], "\n"), nil
}

// continues checks the new lines of one log against its last dumped line:
// "N" or "<role> N" counting on by one, or, for the threads fixture,
// "thread K n=N shared=S" with n counting on by one and S increasing. It
// returns the shared= values seen.
func continues(name, base string, before []byte, added []string) ([]int, error) {
	old := strings.Split(strings.TrimRight(string(before), "\n"), "\n")
	lastLine := old[len(old)-1]
	for i, l := range added {
		if strings.Contains(l, "CORRUPT") || strings.Contains(l, "reaped") {
			return nil, fmt.Errorf("%s: new line %d is %q", base, i, l)
		}
	}
	if name == "threads" {
		m := threadLine.FindStringSubmatch(lastLine)
		if m == nil {
			return nil, fmt.Errorf("%s: dumped line %q", base, lastLine)
		}
		k, n, s := m[1], atoiOr(m[2]), atoiOr(m[3])
		var shared []int
		for i, l := range added {
			m := threadLine.FindStringSubmatch(l)
			if m == nil || m[1] != k || atoiOr(m[2]) != n+1+i || atoiOr(m[3]) <= s {
				return nil, fmt.Errorf("%s: new line %d is %q after %q", base, i, l, lastLine)
			}
			s = atoiOr(m[3])
			shared = append(shared, s)
			lastLine = l
		}
		return shared, nil
	}
	j := strings.LastIndexByte(lastLine, ' ') + 1
	prefix, last := lastLine[:j], atoiOr(lastLine[j:])
	if last < 0 {
		return nil, fmt.Errorf("%s: dumped line %q", base, lastLine)
	}
	for i, l := range added {
		if want := fmt.Sprintf("%s%d", prefix, last+1+i); l != want {
			return nil, fmt.Errorf("%s: new line %d is %q, want %q", base, i, l, want)
		}
	}
	return nil, nil
}

func atoiOr(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}

// putCRIUTestdata puts the program and the files of a CRIU 4.2 image set
// of images/testdata (fx) back at dir, where they were at its dump, in
// place of whatever is there.
func putCRIUTestdata(t *testing.T, fx, dir string) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(fx, "files"))); err != nil {
		t.Fatal(err)
	}
	prog, err := os.ReadFile(filepath.Join(fx, "prog"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prog"), prog, 0o755); err != nil {
		t.Fatal(err)
	}
}
