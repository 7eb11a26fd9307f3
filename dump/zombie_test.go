package dump_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/procscan"
	"github.com/crest-restore/crest/test/workloads"
)

// deadStat reads the state and the exit_code field (52, the wait status
// of a task that ended) of /proc/HOST/stat.
func deadStat(t *testing.T, host int) (state byte, exitCode int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", host))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 50 {
		t.Fatalf("/proc/%d/stat: %q", host, s)
	}
	code, err := strconv.Atoi(f[49]) // field 52: fields start at 3
	if err != nil {
		t.Fatalf("/proc/%d/stat: exit_code %q", host, f[49])
	}
	return f[0][0], code
}

// waitZombies waits until the init of the zombie workload has n children
// in state Z, and returns the live tree with the zombies' wait statuses
// by pid in the namespace.
func waitZombies(t *testing.T, root, n int) (map[int]*check.Task, map[int]int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		live, err := check.Live(root)
		if err != nil {
			t.Fatal(err)
		}
		zombies := map[int]int{}
		for pid, lt := range live {
			if st, code := deadStat(t, lt.Host); st == 'Z' && lt.PPID == 1 {
				zombies[pid] = code
			}
		}
		if len(zombies) == n {
			return live, zombies
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d zombie children of the init after 10s, want %d", len(zombies), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkZombieImages checks the images in dir of the zombie workload,
// dumped when its tree was live (pids in its namespace) with the zombies
// zombies (pid -> wait status): pstree.img has every task with its pids,
// a zombie's one thread its pid; a zombie's core is task_core only, with
// TASK_DEAD, its wait status and comm; and no other image of a zombie
// exists.
func checkZombieImages(t *testing.T, dir string, live map[int]*check.Task, zombies map[int]int) *images.Dir {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Pstree) != len(live) {
		t.Errorf("%d tasks in pstree.img, %d live", len(d.Pstree), len(live))
	}
	for _, e := range d.Pstree {
		pid := int(e.GetPid())
		lt := live[pid]
		if lt == nil {
			t.Errorf("pstree.img has task %d, which the live tree has not", pid)
			continue
		}
		var threads []int
		for tid := range lt.Threads {
			threads = append(threads, tid)
		}
		slices.Sort(threads)
		got := fmt.Sprintf("ppid %d pgid %d sid %d threads %v", e.GetPpid(), e.GetPgid(), e.GetSid(), e.GetThreads())
		want := fmt.Sprintf("ppid %d pgid %d sid %d threads %v", lt.PPID, lt.PGID, lt.SID, threads)
		if got != want {
			t.Errorf("pstree.img task %d: %s, live %s", pid, got, want)
		}
		core, err := d.Core(uint32(pid))
		if err != nil {
			t.Fatal(err)
		}
		tc := core.GetTc()
		code, dead := zombies[pid]
		if !dead {
			if tc.GetTaskState() != 1 {
				t.Errorf("core-%d.img: task_state %d, want 1 (alive)", pid, tc.GetTaskState())
			}
			continue
		}
		got = fmt.Sprintf("mtype %v task_state %d exit_code %d comm %q", core.GetMtype(), tc.GetTaskState(), tc.GetExitCode(), tc.GetComm())
		want = fmt.Sprintf("mtype X86_64 task_state 2 exit_code %d comm %q", code, "zombie")
		if got != want {
			t.Errorf("core-%d.img: %s, want %s", pid, got, want)
		}
		if core.ThreadCore != nil || core.ThreadInfo != nil || tc.Rlimits != nil || tc.Sigactions != nil || tc.Timers != nil {
			t.Errorf("core-%d.img of a zombie has more than task_core's required fields: %v", pid, core)
		}
	}
	// Each alive task has its ids, mm, fs, pagemap and pages images, a
	// zombie none of them.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	perTask := regexp.MustCompile(`^(ids|mm|fs|pagemap|core)-(\d+)\.img$`)
	has := map[string][]int{}
	for _, e := range ents {
		if m := perTask.FindStringSubmatch(e.Name()); m != nil {
			n, _ := strconv.Atoi(m[2])
			has[m[1]] = append(has[m[1]], n)
		} else if strings.HasPrefix(e.Name(), "pages-") {
			has["pages"] = append(has["pages"], 0)
		}
	}
	var all, alive []int
	for pid := range live {
		all = append(all, pid)
		if _, dead := zombies[pid]; !dead {
			alive = append(alive, pid)
		}
	}
	slices.Sort(all)
	slices.Sort(alive)
	for kind, want := range map[string][]int{"ids": alive, "mm": alive, "fs": alive, "pagemap": alive, "core": all} {
		got := slices.Sorted(slices.Values(has[kind]))
		if !slices.Equal(got, want) {
			t.Errorf("%s-PID.img for tasks %v, want %v", kind, got, want)
		}
	}
	if len(has["pages"]) != len(alive) {
		t.Errorf("%d pages-*.img, want one per alive task (%d)", len(has["pages"]), len(alive))
	}
	return d
}

// zombieObserver records what a dump tells its Observer.
type zombieObserver struct {
	tasks []dump.TaskEvent
	steps map[int][]string // pid -> "stage/step"
}

func (o *zombieObserver) StageStarted(dump.StageEvent)   {}
func (o *zombieObserver) TaskCollected(e dump.TaskEvent) { o.tasks = append(o.tasks, e) }
func (o *zombieObserver) StepDone(e dump.StepEvent) {
	o.steps[e.PID] = append(o.steps[e.PID], e.Stage.String()+"/"+e.Step)
}

// TestDumpZombies dumps the zombie workload (test/workloads/src/zombie.c:
// an init with two zombie children, one that exited with status 7, one
// killed by SIGTERM, and a third that runs) as CRIU does: the zombies are
// in pstree.img with their pids, group and session, their cores say
// TASK_DEAD with their wait status, and nothing else of them is written.
// With --leave-running the tree runs on and they stay zombies of the
// init; with --leave-stopped too, the others stopped. A dump that kills the tree, then `crest restore -d`, brings them
// back as zombies with their pids, which the restored init reaps with the
// statuses they had, while it and its live child count on.
func TestDumpZombies(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	p, reaped := startReaped(t, "zombie")
	waitLines(t, p, "out-init.log", 3)
	waitLines(t, p, "out-child3.log", 3)
	live, zombies := waitZombies(t, p.Pid, 2)
	var codes []int
	for _, c := range zombies {
		codes = append(codes, c)
	}
	if slices.Sort(codes); !slices.Equal(codes, []int{15, 7 << 8}) {
		t.Fatalf("wait statuses of the zombies %v, want SIGTERM (15) and exit 7 (%d)", zombies, 7<<8)
	}

	// --leave-running, through the library for its Result and events
	kept := filepath.Join(t.TempDir(), "kept")
	obs := &zombieObserver{steps: map[int][]string{}}
	res, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: kept, LeaveRunning: true, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	if res.Tasks != 4 || res.Threads != 4 || res.Zombies != 2 {
		t.Errorf("Result: %d tasks, %d threads, %d zombies; want 4, 4 (one per zombie), 2", res.Tasks, res.Threads, res.Zombies)
	}
	if len(obs.tasks) != 4 {
		t.Errorf("TaskCollected %d times, want 4: %+v", len(obs.tasks), obs.tasks)
	}
	for _, e := range obs.tasks {
		if _, dead := zombies[e.PID]; dead && (e.PPID != 1 || !slices.Equal(e.Threads, []int{e.PID})) {
			t.Errorf("zombie %+v: want parent 1 and its pid its one thread", e)
		}
	}
	for pid := range zombies {
		if got := strings.Join(obs.steps[pid], " "); got != "dump tasks/core" {
			t.Errorf("steps of zombie %d: %q, want only its core (it is not seized)", pid, got)
		}
	}
	if got := strings.Join(obs.steps[1], " "); !strings.HasPrefix(got, "freeze/seize ") {
		t.Errorf("steps of the init: %q", got)
	}
	checkZombieImages(t, kept, live, zombies)
	for pid, code := range zombies {
		host := live[pid].Host
		st, err := procscan.Read(host)
		if err != nil {
			t.Errorf("zombie %d (host %d) after --leave-running: %v", pid, host, err)
			continue
		}
		if _, got := deadStat(t, host); st.State != 'Z' || st.PPID != p.Pid || got != code {
			t.Errorf("zombie %d (host %d) after --leave-running: %v, exit_code %d; want a zombie of %d with %d", pid, host, st, got, p.Pid, code)
		}
	}
	waitGrowth(t, p.Dir, "init", 10)
	waitGrowth(t, p.Dir, "child3", 10)

	// --leave-stopped: the alive tasks stop, the zombies stay as they are
	if res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(p.Pid), "-D", filepath.Join(t.TempDir(), "stopped"), "-s"); res.Code != 0 {
		t.Fatalf("crest dump -s: exit %d: %s", res.Code, res.Stderr)
	}
	for pid, lt := range live {
		if code, dead := zombies[pid]; dead {
			if st, got := deadStat(t, lt.Host); st != 'Z' || got != code {
				t.Errorf("zombie %d (host %d) after --leave-stopped: state %c, exit_code %d", pid, lt.Host, st, got)
			}
			continue
		}
		wantStopped(t, fmt.Sprintf("task %d", pid), lt.Host)
		if err := syscall.Kill(lt.Host, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	waitGrowth(t, p.Dir, "init", 10)
	waitGrowth(t, p.Dir, "child3", 10)
	if _, err := os.Stat(filepath.Join(p.Dir, "out-reaped.log")); err == nil {
		t.Errorf("the init reaped a child after --leave-running")
	}

	// kill, restore, reap
	imgs := dumpKilled(t, bin, p, live)
	reaped()
	d := checkZombieImages(t, imgs, live, zombies)
	before := map[string][]byte{}
	for _, l := range []string{"out-init.log", "out-child3.log"} {
		b, err := os.ReadFile(filepath.Join(p.Dir, l))
		if err != nil {
			t.Fatal(err)
		}
		before[l] = b
	}

	_, restored := restoreTree(t, bin, imgs, d, p.Dir)
	for pid, code := range zombies {
		lt := restored[pid]
		if lt == nil {
			continue // check.Tree said so
		}
		st, got := deadStat(t, lt.Host)
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", lt.Host))
		if err != nil {
			t.Fatal(err)
		}
		if st != 'Z' || got != code || string(comm) != "zombie\n" {
			t.Errorf("restored task %d (host %d): state %c, exit_code %d, comm %q; want a zombie with %d, comm zombie", pid, lt.Host, st, got, comm, code)
		}
	}
	check.Logs(t, p.Dir, before, map[string]check.Next{"out-init.log": check.Counter, "out-child3.log": check.Counter}, time.Second)

	if err := os.WriteFile(filepath.Join(p.Dir, "reap"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var want []string
	for pid, code := range zombies {
		want = append(want, fmt.Sprintf("reaped %d status %d", pid, code))
	}
	slices.Sort(want)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(p.Dir, "out-reaped.log"))
		got := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		slices.Sort(got)
		if slices.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("out-reaped.log 10s after creating reap:\n%s\nwant (in any order):\n%s", b, strings.Join(want, "\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	for pid := range zombies {
		if left := procscan.WaitGone(10*time.Second, restored[pid].Host); len(left) > 0 {
			t.Errorf("restored zombie %d (host %d) still in /proc after its parent reaped it", pid, restored[pid].Host)
		}
	}
}

// TestDumpZombieRoot: the root of a dump can not be a zombie (CRIU: "A
// root task is dead"); the dump fails and its parent still has it.
func TestDumpZombieRoot(t *testing.T) {
	p := workloads.Start(t, "zombie")
	_, zombies := waitZombies(t, p.Pid, 2)
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for pid := range zombies {
		host := live[pid].Host
		dir := filepath.Join(t.TempDir(), "images")
		_, err := dump.Dump(context.Background(), dump.Options{Pid: host, Dir: dir})
		var ue *dump.UnsupportedError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "the root of the tree is a zombie") {
			t.Errorf("dump of zombie %d: %v, want an UnsupportedError", host, err)
		}
		if st, err := procscan.Read(host); err != nil || st.State != 'Z' || st.PPID != p.Pid {
			t.Errorf("zombie %d after the failed dump: %v, %v", host, st, err)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("the failed dump left %s", dir)
		}
	}
}
