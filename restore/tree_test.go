package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore/agent"
	"github.com/crest-restore/crest/test/fixture"
)

// Trees with helpers and zombies: the fixtures have none, so each test
// edits a copy of the tree fixture's images. The fixture's program does
// not look at its session or group, and only the init reaps children
// (waitpid(-1, WNOHANG) on every tick, logging "init reaped" into
// out-init.log, which checkLogsContinue would see): zombies are given to
// child1 (pid 2), which never waits, so that they stay zombies.

// deadLeaderImages is the tree fixture as if child2 (3) and child3 (4)
// had been born in a session whose leader, 7, died (they went to the
// init), child2 leading its own group, child3 in the dead leader's group
// 7; and child1 (2) in process group 9, whose leader died too.
func deadLeaderImages(t *testing.T) string {
	dir := fixture.CopyImages(t, "tree")
	rewritePstree(t, dir, func(es []*pstree.PstreeEntry) {
		ids := map[uint32][2]uint32{2: {9, 1}, 3: {3, 7}, 4: {7, 7}} // pid: pgid, sid
		for _, e := range es {
			if v, ok := ids[e.GetPid()]; ok {
				e.Pgid, e.Sid = proto.Uint32(v[0]), proto.Uint32(v[1])
			}
		}
	})
	return dir
}

// siblingLeaderImages is the tree fixture as if child1 (2) had called
// setsid and forked child2 (3), which made a group of its own and went to
// the init when child1's first child, its parent, died: child2's session
// leader is alive, but not its ancestor.
func siblingLeaderImages(t *testing.T) string {
	dir := fixture.CopyImages(t, "tree")
	rewritePstree(t, dir, func(es []*pstree.PstreeEntry) {
		es[1].Pgid, es[1].Sid = proto.Uint32(2), proto.Uint32(2)
		es[2].Sid = proto.Uint32(2)
	})
	return dir
}

// zombieImages adds to the tree fixture two zombie children of child1 (2):
// 5, which exited with status 3, and 6, a session leader killed by
// SIGTERM; their entries and core images are what CRIU 4.2 writes for a
// zombie: task_core only, and a first thread it never set.
func zombieImages(t *testing.T) string {
	dir := fixture.CopyImages(t, "tree")
	zombies := []struct {
		pid, sid, exitCode, thread uint32
	}{{5, 1, 3 << 8, 4279947712}, {6, 6, 15, 0}}
	img, err := images.ReadFile(filepath.Join(dir, "pstree.img"))
	if err != nil {
		t.Fatal(err)
	}
	for _, z := range zombies {
		e := &pstree.PstreeEntry{Pid: proto.Uint32(z.pid), Ppid: proto.Uint32(2), Pgid: proto.Uint32(z.sid), Sid: proto.Uint32(z.sid),
			Threads: []uint32{z.thread}}
		img.Entries = append(img.Entries, images.Entry{Message: e})
		core, err := images.ReadFile(filepath.Join(dir, "core-2.img"))
		if err != nil {
			t.Fatal(err)
		}
		core.Entries = []images.Entry{{Message: &criu_core.CoreEntry{
			Mtype: criu_core.CoreEntry_X86_64.Enum(),
			Tc: &criu_core.TaskCoreEntry{TaskState: proto.Uint32(agent.TaskZombie), ExitCode: proto.Uint32(z.exitCode),
				Personality: proto.Uint32(0), Flags: proto.Uint32(0), BlkSigset: proto.Uint64(0), Comm: proto.String("prog")},
		}}}
		if err := images.WriteFile(filepath.Join(dir, fmt.Sprintf("core-%d.img", z.pid)), core); err != nil {
			t.Fatal(err)
		}
	}
	if err := images.WriteFile(filepath.Join(dir, "pstree.img"), img); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestPlanHelpersAndZombies(t *testing.T) {
	t.Run("dead leaders", func(t *testing.T) {
		p := planDir(t, deadLeaderImages(t))
		type want struct {
			pid, forker int
			kind        TaskKind
			session     SessionAction
			group       GroupAction
		}
		wants := []want{
			{1, 0, TaskAlive, SessionLead, GroupLead},
			{2, 1, TaskAlive, SessionInherit, GroupJoin},
			{3, 7, TaskAlive, SessionInherit, GroupLead},
			{4, 7, TaskAlive, SessionInherit, GroupInherit},
			{7, 1, TaskHelper, SessionLead, GroupLead},
			{9, 2, TaskHelper, SessionInherit, GroupLead},
		}
		if len(p.Tasks) != len(wants) || p.NrHelpers != 2 || p.NrThreads != 4 || p.NrZombies != 0 {
			t.Fatalf("%d tasks, %d helpers, %d threads, %d zombies; want 6, 2, 4, 0", len(p.Tasks), p.NrHelpers, p.NrThreads, p.NrZombies)
		}
		for i, w := range wants {
			task := p.Tasks[i]
			forker := 0
			if task.Parent != nil {
				forker = task.Parent.PID
			}
			if task.PID != w.pid || forker != w.forker || task.Kind != w.kind || task.Session != w.session || task.Group != w.group {
				t.Errorf("task %d: pid %d forked by %d, %v, %v/%v; want %+v", i, task.PID, forker, task.Kind, task.Session, task.Group, w)
			}
		}
		// the images' parents stay: 3 and 4 go back to the init
		if p.Task(3).PPID != 1 || p.Task(4).PPID != 1 {
			t.Errorf("ppids %d %d, want 1 1", p.Task(3).PPID, p.Task(4).PPID)
		}
		// helper slots follow the threads'
		if s7, s9 := p.Task(7).Threads[0].Slot, p.Task(9).Threads[0].Slot; s7 != 4 || s9 != 5 || p.nrSlots() != 6 {
			t.Errorf("helper slots %d %d of %d", s7, s9, p.nrSlots())
		}
		for st, n := range map[Stage]int{StageForking: 6, StageRestore: 6, StageRestoreSigchld: 4, StageRestoreCreds: 4, StageComplete: 4} {
			if got := p.Participants(st); got != n || len(p.participants(st)) != n {
				t.Errorf("%v: %d participants (%d listed), want %d", st, got, len(p.participants(st)), n)
			}
		}
	})
	t.Run("zombies", func(t *testing.T) {
		p := planDir(t, zombieImages(t))
		if len(p.Tasks) != 6 || p.NrThreads != 6 || p.NrZombies != 2 || p.NrHelpers != 0 {
			t.Fatalf("%d tasks, %d threads, %d zombies, %d helpers; want 6, 6, 2, 0", len(p.Tasks), p.NrThreads, p.NrZombies, p.NrHelpers)
		}
		for pid, code := range map[int]uint32{5: 3 << 8, 6: 15} {
			z := p.Task(pid)
			if z.Kind != TaskZombie || z.ExitCode != code || z.Parent != p.Task(2) || z.Comm != "prog" {
				t.Errorf("task %d: %v, exit code %#x, parent %v, comm %q", pid, z.Kind, z.ExitCode, z.Parent.PID, z.Comm)
			}
		}
		if p.Task(6).Session != SessionLead || p.Task(5).Session != SessionInherit || p.Task(5).Group != GroupInherit {
			t.Errorf("zombie sessions and groups: %v/%v, %v/%v", p.Task(5).Session, p.Task(5).Group, p.Task(6).Session, p.Task(6).Group)
		}
		for st, n := range map[Stage]int{StageForking: 6, StageRestore: 6, StageRestoreSigchld: 4, StageComplete: 4} {
			if got := p.Participants(st); got != n || len(p.participants(st)) != n {
				t.Errorf("%v: %d participants (%d listed), want %d", st, got, len(p.participants(st)), n)
			}
		}
	})
	t.Run("refused", func(t *testing.T) {
		for _, tt := range []struct {
			name string
			edit func(es []*pstree.PstreeEntry)
			want string
		}{
			// 2 forks 3, and 3 is in a session led by nobody in the
			// tree while its parent is not the init: no dump gives that.
			{"dead session leader below the init's children", func(es []*pstree.PstreeEntry) {
				es[2].Ppid, es[2].Sid = proto.Uint32(2), proto.Uint32(8)
			}, "task 3: pstree.img: session 8 has no leader in the tree, and the task is not the init's child"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				dir := fixture.CopyImages(t, "tree")
				rewritePstree(t, dir, tt.edit)
				_, err := openPlan(t, dir)
				var pe *PlanError
				if !errors.As(err, &pe) || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("error %v, want a PlanError with %q", err, tt.want)
				}
			})
		}
		// zombie 5 went to the init from session 7, whose leader is
		// gone: the helper would end as it does, and the init reap it
		t.Run("zombie forked by a helper", func(t *testing.T) {
			dir := zombieImages(t)
			rewritePstree(t, dir, func(es []*pstree.PstreeEntry) {
				es[4].Ppid, es[4].Pgid, es[4].Sid = proto.Uint32(1), proto.Uint32(7), proto.Uint32(7)
			})
			_, err := openPlan(t, dir)
			if want := "task 5: pstree.img: zombie born in session 7 by helper 7: not supported"; err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want %q", err, want)
			}
		})
	})
}

// TestRestoreHelpers restores trees that need helpers: every task gets its
// session and group, its parent is the one of the images, no helper is
// left once the restore is over, and the logs run on.
func TestRestoreHelpers(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name   string
		images func(t *testing.T) string
		tids   string // who arrives at FORKING and RESTORE
		steps  map[int][]string
	}{
		{"dead session and group leaders", deadLeaderImages, "[1 2 3 4 7 9]", map[int][]string{
			7: {"setsid"}, 9: {"setpgid"}, 2: {"join group", "wait helpers and zombies"}, 1: {"wait helpers and zombies"}}},
		{"session leader alive elsewhere", siblingLeaderImages, "[1 2 3 4 5]", map[int][]string{
			2: {"setsid", "wait helpers and zombies"}, 3: {"setpgid"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			restoreHelpers(t, planDir(t, tt.images(t)), tt.tids, tt.steps)
		})
	}
}

func restoreHelpers(t *testing.T, p *Plan, tids string, steps map[int][]string) {
	dir := installFixture(t, "tree")
	rec := &recorder{}
	r, err := Start(context.Background(), p, Options{Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[int]int{}
	for _, task := range p.Tasks {
		hosts[task.PID] = r.HostPID(task.PID)
	}
	defer func() {
		if err := r.Abort(); err != nil {
			t.Error(err)
		}
		checkGone(t, []int{hosts[1], hosts[2], hosts[3], hosts[4]})
	}()
	for _, task := range p.Tasks {
		if task.Kind != TaskAlive {
			continue
		}
		checkTask(t, task, hosts[task.PID])
		if task.Parent == nil {
			continue
		}
		// the image's parent: 3 and 4 went to the init when 7 exited
		if got, want := atoi(t, procStatus(t, hosts[task.PID])["PPid"][0]), hosts[task.PPID]; got != want {
			t.Errorf("task %d: PPid %d, want %d (task %d)", task.PID, got, want, task.PPID)
		}
	}
	checkOnlyTasks(t, r.RootPID(), p)
	for _, task := range p.Tasks {
		if task.Kind == TaskHelper && r.HostPID(task.PID) != 0 {
			t.Errorf("helper %d: host pid %d after the restore", task.PID, r.HostPID(task.PID))
		}
	}
	if len(rec.prepared) != 1 || fmt.Sprint(rec.prepared[0].TIDs[StageForking]) != tids ||
		fmt.Sprint(rec.prepared[0].TIDs[StageRestore]) != tids ||
		fmt.Sprint(rec.prepared[0].TIDs[StageRestoreCreds]) != "[1 2 3 4]" ||
		// the engine sees COMPLETE itself (ptrace): no arrivals at the barrier
		rec.prepared[0].Participants[StageComplete] != 0 || len(rec.prepared[0].TIDs[StageComplete]) != 0 {
		t.Errorf("prepared %+v", rec.prepared)
	}
	// the helpers took their session and group, and their parents waited for them
	for pid, names := range steps {
		for _, step := range names {
			if !hasStep(r, pid, step) {
				t.Errorf("task %d: no step %q", pid, step)
			}
		}
	}
	checkLogsContinue(t, "tree", dir, 20)
}

// TestRestoreZombies restores the tree with two zombie children of child1:
// they are zombies again, with their pids, parent and exit status, and
// child1 runs on.
func TestRestoreZombies(t *testing.T) {
	needRoot(t)
	dir := installFixture(t, "tree")
	p := planDir(t, zombieImages(t))
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	hosts := abortAtCleanup(t, r, p)
	for i, task := range p.Tasks {
		if task.Kind == TaskAlive {
			checkTask(t, task, hosts[i])
			continue
		}
		st := procStatus(t, hosts[i])
		if st["State"][0] != "Z" {
			t.Errorf("task %d: state %v, want Z", task.PID, st["State"])
		}
		for k, want := range map[string]int{"NSpid": task.PID, "NSpgid": task.PGID, "NSsid": task.SID} {
			if v := st[k]; len(v) != 2 || atoi(t, v[1]) != want {
				t.Errorf("task %d: %s %v, want %d in the new namespace", task.PID, k, v, want)
			}
		}
		if got, want := atoi(t, st["PPid"][0]), hosts[task.Parent.Index]; got != want {
			t.Errorf("task %d: PPid %d, want %d", task.PID, got, want)
		}
		if st["Name"][0] != "prog" {
			t.Errorf("task %d: comm %v", task.PID, st["Name"])
		}
		// /proc/PID/stat field 52 is the exit status as wait(2) gives it
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", hosts[i]))
		if err != nil {
			t.Fatal(err)
		}
		fs := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		if got := atoi(t, fs[len(fs)-1]); uint32(got) != task.ExitCode {
			t.Errorf("task %d: exit status %#x, want %#x", task.PID, got, task.ExitCode)
		}
	}
	checkOnlyTasks(t, r.RootPID(), p)
	checkLogsContinue(t, "tree", dir, 20)
	// still zombies: nobody reaped them while the tree ran on
	for i, task := range p.Tasks {
		if task.Kind == TaskZombie && procStatus(t, hosts[i])["State"][0] != "Z" {
			t.Errorf("task %d is no zombie any more", task.PID)
		}
	}
}

// checkOnlyTasks checks that the restored tree is the images' tasks (alive
// and zombies), no helper among them.
func checkOnlyTasks(t *testing.T, root int, p *Plan) {
	t.Helper()
	found, err := walkTree(root)
	if err != nil {
		t.Fatal(err)
	}
	var got, want []int
	for _, vpid := range found {
		got = append(got, vpid)
	}
	for _, task := range p.Tasks {
		if task.Kind != TaskHelper {
			want = append(want, task.PID)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the restored tree has pids %v, want %v", got, want)
	}
}

// TestRestoreHelperFailure makes a helper fail: the error names it, its
// step and errno, and nothing of the tree is left.
func TestRestoreHelperFailure(t *testing.T) {
	needRoot(t)
	installFixture(t, "tree")
	p := planDir(t, deadLeaderImages(t))
	// helper 7, the leader of session 7, joins group 1 of session 1:
	// nothing else waits for it in RESTORE, so it alone fails
	h := p.Task(7)
	h.Group, h.PGID = GroupJoin, 1
	rec := &recorder{}
	r, err := Start(context.Background(), p, Options{Observer: rec})
	if err == nil {
		r.Abort()
		t.Fatal("the restore succeeded")
	}
	var se *StageError
	if !errors.As(err, &se) || se.Stage != StageRestore || se.PID != 7 || se.Step != "join group" || se.Errno != syscall.EPERM {
		t.Fatalf("error %v (%+v), want stage RESTORE, task 7, join group, EPERM", err, se)
	}
	var hosts []int
	for _, a := range rec.Arrivals {
		if a.HostPID != 0 {
			hosts = append(hosts, a.HostPID)
		}
	}
	if len(hosts) == 0 {
		t.Error("no host pid was published")
	}
	checkGone(t, hosts)
}
