package restore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// openPlan plans the image directory dir, which must open: the error is
// NewPlan's.
func openPlan(t testing.TB, dir string) (*Plan, error) {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return NewPlan(d)
}

// planDir plans the image directory dir, which must plan.
func planDir(t testing.TB, dir string) *Plan {
	t.Helper()
	p, err := openPlan(t, dir)
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return p
}

// loadPlan plans fixture name.
func loadPlan(t testing.TB, name string) *Plan {
	t.Helper()
	return planDir(t, fixture.Images(t, name))
}

type wantTask struct {
	pid, ppid, pgid, sid int
	threads              []int
	session              SessionAction
	group                GroupAction
	fd3                  string // base name of the file at fd 3
}

func TestPlanFixtures(t *testing.T) {
	tests := []struct {
		name      string
		tasks     []wantTask
		fileVMAs  []string // base names of files mapped privately
		nrThreads int
	}{
		{"counter", []wantTask{{1, 0, 1, 1, []int{1}, SessionLead, GroupLead, "out.log"}}, []string{"prog"}, 1},
		{"dynamic", []wantTask{{1, 0, 1, 1, []int{1}, SessionLead, GroupLead, "out.log"}},
			[]string{"prog", "libc.so.6", "ld-linux-x86-64.so.2"}, 1},
		{"threads", []wantTask{{1, 0, 1, 1, []int{1, 2, 3}, SessionLead, GroupLead, "out-1.log"}}, []string{"prog"}, 3},
		{"tree", []wantTask{
			{1, 0, 1, 1, []int{1}, SessionLead, GroupLead, "out-init.log"},
			{2, 1, 1, 1, []int{2}, SessionInherit, GroupInherit, "out-child1.log"},
			{3, 1, 3, 1, []int{3}, SessionInherit, GroupLead, "out-child2.log"},
			{4, 1, 1, 1, []int{4}, SessionInherit, GroupInherit, "out-child3.log"},
		}, []string{"prog"}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := loadPlan(t, tt.name)
			if !p.NewPIDNS || p.NrThreads != tt.nrThreads || p.NrHelpers != 0 {
				t.Errorf("NewPIDNS %v, NrThreads %d, NrHelpers %d; want true, %d, 0", p.NewPIDNS, p.NrThreads, p.NrHelpers, tt.nrThreads)
			}
			if len(p.Tasks) != len(tt.tasks) {
				t.Fatalf("%d tasks, want %d", len(p.Tasks), len(tt.tasks))
			}
			for i, w := range tt.tasks {
				task := p.Tasks[i]
				if task.Index != i || task.PID != w.pid || task.PPID != w.ppid || task.PGID != w.pgid || task.SID != w.sid {
					t.Errorf("task %d: index %d pid %d ppid %d pgid %d sid %d, want %d %d %d %d %d",
						i, task.Index, task.PID, task.PPID, task.PGID, task.SID, i, w.pid, w.ppid, w.pgid, w.sid)
				}
				var tids []int
				for _, th := range task.Threads {
					tids = append(tids, th.TID)
					if th.Core == nil {
						t.Errorf("task %d thread %d: no core", task.PID, th.TID)
					}
				}
				if !equalInts(tids, w.threads) {
					t.Errorf("task %d: threads %v, want %v", task.PID, tids, w.threads)
				}
				if task.Session != w.session || task.Group != w.group {
					t.Errorf("task %d: session %v group %v, want %v %v", task.PID, task.Session, task.Group, w.session, w.group)
				}
				if (task.Parent == nil) != (w.ppid == 0) || (task.Parent != nil && task.Parent.PID != w.ppid) {
					t.Errorf("task %d: wrong parent link", task.PID)
				}
				checkTaskCommon(t, tt.name, task)
				if got := filepath.Base(task.FDs[3].File.Path); got != w.fd3 {
					t.Errorf("task %d fd 3: %s, want %s", task.PID, got, w.fd3)
				}
			}
			mapped := map[string]bool{}
			for _, v := range p.Root().Mem.VMAs {
				if v.Kind == VMAFilePrivate {
					mapped[filepath.Base(v.File.Path)] = true
				}
			}
			for _, name := range tt.fileVMAs {
				if !mapped[name] {
					t.Errorf("no private file mapping of %s (have %v)", name, mapped)
				}
			}
			if len(mapped) != len(tt.fileVMAs) {
				t.Errorf("file mappings %v, want %v", mapped, tt.fileVMAs)
			}
			checkPageRuns(t, p)
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// checkTaskCommon checks what every fixture task shares: it ran as root
// from /opt/crest-fixtures/NAME with fds 0-2 on /dev/null, one vdso, one
// vvar, one vsyscall page and one stack.
func checkTaskCommon(t *testing.T, name string, task *Task) {
	t.Helper()
	dir := "/opt/crest-fixtures/" + name
	if task.FS.Cwd != dir || task.FS.Root != "/" || task.FS.Umask != 0o22 {
		t.Errorf("task %d: fs %+v, want cwd %s root / umask 022", task.PID, task.FS, dir)
	}
	c := task.Creds
	if c.UID != 0 || c.EUID != 0 || c.GID != 0 || c.CapEff == 0 || c.CapEff != c.CapPrm {
		t.Errorf("task %d: creds %+v, want root with full effective caps", task.PID, c)
	}
	if task.Comm != "prog" {
		t.Errorf("task %d: comm %q", task.PID, task.Comm)
	}
	if len(task.FDs) != 4 && name != "threads" {
		t.Errorf("task %d: %d fds, want 4", task.PID, len(task.FDs))
	}
	for i, fd := range task.FDs {
		if fd.FD != i {
			t.Errorf("task %d: fd table has a hole before fd %d", task.PID, fd.FD)
		}
		if i <= 2 && (fd.File.Path != "/dev/null" || fd.File.Flags&0o3 != 2) {
			t.Errorf("task %d fd %d: %s flags %#o, want /dev/null O_RDWR", task.PID, i, fd.File.Path, fd.File.Flags)
		}
		if i >= 3 && (fd.File.Flags&0o2003 != 0o2001 || fd.File.Pos == 0) {
			t.Errorf("task %d fd %d: flags %#o pos %d, want O_WRONLY|O_APPEND past 0", task.PID, i, fd.File.Flags, fd.File.Pos)
		}
		if !containsTask(fd.File.Users, task) {
			t.Errorf("task %d fd %d: file %d does not list the task as a user", task.PID, i, fd.File.ID)
		}
	}
	if task.Mem.ExePath != dir+"/prog" {
		t.Errorf("task %d: exe %s", task.PID, task.Mem.ExePath)
	}
	kinds := map[VMAKind]int{}
	stacks := 0
	for _, v := range task.Mem.VMAs {
		kinds[v.Kind]++
		if v.Flags&0x100 != 0 { // MAP_GROWSDOWN
			stacks++
		}
	}
	if kinds[VMAVDSO] != 1 || kinds[VMAVVAR] != 1 || kinds[VMAVsyscall] != 1 || stacks != 1 {
		t.Errorf("task %d: vma kinds %v, %d stacks; want one vdso, vvar, vsyscall, stack", task.PID, kinds, stacks)
	}
}

func containsTask(ts []*Task, t *Task) bool {
	for _, x := range ts {
		if x == t {
			return true
		}
	}
	return false
}

// checkPageRuns checks that the page runs of all tasks cover every page of
// each pages file exactly once, in order, and only inside mappings.
func checkPageRuns(t *testing.T, p *Plan) {
	t.Helper()
	next := map[string]int64{}
	for _, task := range p.Tasks {
		if len(task.Mem.Runs) == 0 {
			t.Errorf("task %d: no page runs", task.PID)
		}
		for _, r := range task.Mem.Runs {
			if r.Flags&images.PEPresent == 0 || r.Pages == "" {
				t.Errorf("task %d run %#x: flags %#x pages %q", task.PID, r.Vaddr, r.Flags, r.Pages)
				continue
			}
			if r.Offset != next[r.Pages] {
				t.Errorf("task %d run %#x: offset %d in %s, want %d", task.PID, r.Vaddr, r.Offset, filepath.Base(r.Pages), next[r.Pages])
			}
			next[r.Pages] = r.Offset + int64(r.NrPages)*images.PageSize
			if !task.Mem.covered(r.Vaddr, r.End()) {
				t.Errorf("task %d run %#x-%#x outside the mappings", task.PID, r.Vaddr, r.End())
			}
		}
	}
	for path, end := range next {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != end {
			t.Errorf("%s: %d bytes, runs cover %d", path, st.Size(), end)
		}
	}
}

// TestPlanSessions checks how sessions and groups are planned, on trees
// the fixtures do not have.
func TestPlanSessions(t *testing.T) {
	type node struct{ pid, ppid, pgid, sid int }
	tests := []struct {
		name    string
		tree    []node
		session []SessionAction
		group   []GroupAction
		err     string
	}{
		{name: "fixture tree", tree: []node{{1, 0, 1, 1}, {2, 1, 1, 1}, {3, 1, 3, 1}, {4, 1, 1, 1}},
			session: []SessionAction{SessionLead, SessionInherit, SessionInherit, SessionInherit},
			group:   []GroupAction{GroupLead, GroupInherit, GroupLead, GroupInherit}},
		{name: "join a sibling's group", tree: []node{{1, 0, 1, 1}, {2, 1, 2, 1}, {3, 1, 2, 1}},
			session: []SessionAction{SessionLead, SessionInherit, SessionInherit},
			group:   []GroupAction{GroupLead, GroupLead, GroupJoin}},
		{name: "grandchild inherits a group led below the root", tree: []node{{1, 0, 1, 1}, {2, 1, 2, 1}, {3, 2, 2, 1}},
			session: []SessionAction{SessionLead, SessionInherit, SessionInherit},
			group:   []GroupAction{GroupLead, GroupLead, GroupInherit}},
		{name: "child of a joiner joins too", tree: []node{{1, 0, 1, 1}, {2, 1, 2, 1}, {3, 1, 2, 1}, {4, 3, 2, 1}},
			session: []SessionAction{SessionLead, SessionInherit, SessionInherit, SessionInherit},
			group:   []GroupAction{GroupLead, GroupLead, GroupJoin, GroupJoin}},
		{name: "nested session", tree: []node{{1, 0, 1, 1}, {2, 1, 2, 2}, {3, 2, 2, 2}},
			session: []SessionAction{SessionLead, SessionLead, SessionInherit},
			group:   []GroupAction{GroupLead, GroupLead, GroupInherit}},
		// helpers (addHelpers) come after the tasks: 7 forked by 2, 9 by 1
		{name: "dead group leader", tree: []node{{1, 0, 1, 1}, {2, 1, 7, 1}},
			session: []SessionAction{SessionLead, SessionInherit, SessionInherit},
			group:   []GroupAction{GroupLead, GroupJoin, GroupLead}},
		{name: "dead session leader", tree: []node{{1, 0, 1, 1}, {2, 1, 2, 9}},
			session: []SessionAction{SessionLead, SessionInherit, SessionLead},
			group:   []GroupAction{GroupLead, GroupLead, GroupLead}},
		{name: "dead session and group leader", tree: []node{{1, 0, 1, 1}, {2, 1, 9, 9}, {3, 2, 9, 9}},
			session: []SessionAction{SessionLead, SessionInherit, SessionInherit, SessionLead},
			group:   []GroupAction{GroupLead, GroupInherit, GroupInherit, GroupLead}},
		// 3 went to the init from a session that 2 leads: a helper with
		// a free pid (4), 2's child, forks it
		{name: "session led by a sibling", tree: []node{{1, 0, 1, 1}, {2, 1, 2, 2}, {3, 1, 3, 2}},
			session: []SessionAction{SessionLead, SessionLead, SessionInherit, SessionInherit},
			group:   []GroupAction{GroupLead, GroupLead, GroupLead, GroupInherit}},
		{name: "dead session leader of a grandchild", tree: []node{{1, 0, 1, 1}, {2, 1, 2, 1}, {3, 2, 3, 9}}, err: "session 9 has no leader in the tree"},
		{name: "group in another session", tree: []node{{1, 0, 1, 1}, {2, 1, 2, 2}, {3, 1, 2, 1}}, err: "process group 2 is in session 2, the task in 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Plan{}
			byPID := map[int]*Task{}
			for i, n := range tt.tree {
				task := &Task{Index: i, PID: n.pid, PPID: n.ppid, PGID: n.pgid, SID: n.sid, Parent: byPID[n.ppid], Kind: TaskAlive}
				if task.Parent != nil {
					task.Parent.Children = append(task.Parent.Children, task)
				}
				byPID[n.pid] = task
				p.Tasks = append(p.Tasks, task)
			}
			p.addHelpers(byPID)
			err := p.planSessions(byPID)
			if tt.err != "" {
				var pe *PlanError
				if err == nil || !errors.As(err, &pe) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want a PlanError with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Tasks) != len(tt.session) {
				t.Fatalf("%d tasks, want %d", len(p.Tasks), len(tt.session))
			}
			for i, task := range p.Tasks {
				if task.Session != tt.session[i] || task.Group != tt.group[i] {
					t.Errorf("task %d: %v/%v, want %v/%v", task.PID, task.Session, task.Group, tt.session[i], tt.group[i])
				}
			}
		})
	}
}

// TestPlanRefuses checks that what crest can not restore yet is refused at
// planning, naming the task, image and what is missing, rather than
// restored without it. The fixtures are all restorable: each case damages a
// copy of one so that its images hold what is not.
func TestPlanRefuses(t *testing.T) {
	tests := []struct {
		name, fixture string
		damage        func(t *testing.T, dir string)
		want          string
	}{
		{"unix socket without its entry", "counter", func(t *testing.T, dir string) {
			editImage(t, dir, "files.img", func(img *images.Image) {
				img.Entries[2].Message.(*fdinfo.FileEntry).Type = fdinfo.FdTypes_UNIXSK.Enum()
			})
		}, "task 1: files.img: file 3: UNIXSK without its entry"},
		{"fanotify", "pipe", func(t *testing.T, dir string) {
			editImage(t, dir, "files.img", func(img *images.Image) {
				img.Entries[3].Message.(*fdinfo.FileEntry).Type = fdinfo.FdTypes_FANOTIFY.Enum()
			})
		}, "file 4 (from fdinfo-2.img): FANOTIFY files are not supported yet"},
		{"SCHED_DEADLINE", "signals", func(t *testing.T, dir string) {
			editImage(t, dir, "core-1.img", func(img *images.Image) {
				img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore.SchedPolicy = proto.Uint32(6)
			})
		}, "task 1: core-1.img: thread 1: scheduling policy SCHED_DEADLINE is not restored yet"},
		{"POSIX timer notifying a thread of its own (SIGEV_THREAD)", "signals", func(t *testing.T, dir string) {
			editImage(t, dir, "core-1.img", func(img *images.Image) {
				tm := img.Entries[0].Message.(*criu_core.CoreEntry).Tc.Timers
				z := proto.Uint64(0)
				tm.Posix = append(tm.Posix, &timer.PosixTimerEntry{ItId: proto.Uint32(0), ClockId: proto.Uint32(1),
					SiSigno: proto.Uint32(14), ItSigevNotify: proto.Uint32(2), SivalPtr: z, Overrun: proto.Uint32(0),
					Isec: z, Insec: z, Vsec: z, Vnsec: z})
			})
		}, "core-1.img: POSIX timer 0 (entry 0): notification 2 is not supported"},
		{"network namespace", "counter", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "netns-12.img"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "netns-12.img: namespaces other than the root's are not restored yet"},
		{"mount namespace", "tree", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "mountpoints-9.img"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "mountpoints-9.img: namespaces other than the root's are not restored yet"},
		{"nested time namespace", "tree", func(t *testing.T, dir string) {
			editImage(t, dir, "ids-3.img", func(img *images.Image) {
				img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry).TimeNsId = proto.Uint32(77)
			})
		}, "task 3: ids-3.img: time namespace 77, not the root's 5: nested time namespaces are not restored"},
		{"SysV shared memory", "shmem", func(t *testing.T, dir string) {
			editImage(t, dir, "mm-1.img", func(img *images.Image) {
				v := img.Entries[0].Message.(*mm.MmEntry).Vmas[7]
				v.Status = proto.Uint32(vmaAreaRegular | vmaAreaSysVIPC)
			})
		}, "mm-1.img: vma 7 (0x7f01a94d6000-0x7f01a95d6000, SysV shm 2 at offset 0x0): the segment is in an IPC namespace that is not the tree's own"},
		{"shared file mapping of a write-only file", "counter", func(t *testing.T, dir string) {
			editImage(t, dir, "mm-1.img", func(img *images.Image) {
				v := img.Entries[0].Message.(*mm.MmEntry).Vmas[0]
				v.Status = proto.Uint32(vmaAreaRegular | vmaFileShared)
				v.Flags = proto.Uint32(syscall.MAP_SHARED)
				v.Fdflags = proto.Uint32(syscall.O_WRONLY)
			})
		}, "task 1: mm-1.img: vma 0 (0x400000-0x401000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := fixture.CopyImages(t, tt.fixture)
			tt.damage(t, dir)
			_, err := openPlan(t, dir)
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want a PlanError with %q", err, tt.want)
			}
		})
	}
}

// TestPlanResources checks what the plan makes of the shared resources of
// the pipe, shmem, files and signals fixtures.
func TestPlanResources(t *testing.T) {
	t.Run("pipe", func(t *testing.T) {
		p := loadPlan(t, "pipe")
		pp := p.Pipes[97264]
		if len(p.Pipes) != 1 || pp == nil || string(pp.Data) != "msg 153\nmsg 154\n" || pp.BufSize != 65536 || pp.Owner != p.Tasks[0] {
			t.Fatalf("pipes %+v", p.Pipes)
		}
		w, r := p.Tasks[0].FDs[4].File, p.Tasks[1].FDs[3].File
		if w.Kind != FilePipe || r.Kind != FilePipe || w.Pipe != pp || r.Pipe != pp || w.Flags != 1 || r.Flags != 0 {
			t.Errorf("parent fd 4 %+v, child fd 3 %+v: want both ends of pipe %d", w, r, pp.ID)
		}
		// fds 0-2: one /dev/null description, inherited by the child
		if p.Tasks[0].FDs[0].File != p.Tasks[1].FDs[2].File || len(p.Tasks[0].FDs[0].File.Users) != 2 {
			t.Errorf("/dev/null is not one description shared by both tasks")
		}
	})
	t.Run("shmem", func(t *testing.T) {
		p := loadPlan(t, "shmem")
		m := p.Memfds[1]
		if len(p.Memfds) != 1 || m == nil || m.Name != "/dev/zero" || m.Size != 1<<20 || m.Seals != 1 || m.ShmID != 300 ||
			len(m.Runs) != 1 || m.Runs[0].NrPages != 256 {
			t.Fatalf("memfds %+v", p.Memfds)
		}
		for _, task := range p.Tasks {
			v := task.Mem.VMAs[7]
			if v.Kind != VMAFileShared || v.File == nil || v.File.Memfd != m || v.Start != 0x7f01a94d6000 {
				t.Errorf("task %d vma 7: %+v, want a shared mapping of memfd inode 1", task.PID, v)
			}
		}
	})
	t.Run("files", func(t *testing.T) {
		p := loadPlan(t, "files")
		fds := p.Tasks[0].FDs
		if len(fds) != 8 || fds[4].File != fds[5].File || fds[4].File.Pos != 6608 || fds[4].File.Size != 65536 {
			t.Fatalf("fds 4 and 5: %+v %+v, want one description of data.bin at 6608", fds[4].File, fds[5].File)
		}
		if f := fds[6].File; f.Kind != FileMemfd || f.Path != "/memfd:crest-memfd (deleted)" || f.Pos != 8192 || f.Memfd.Size != 8192 || f.Memfd.Seals != 1 {
			t.Errorf("fd 6: %+v", f)
		}
		if f := fds[7].File; f.Path != "/dev/null" || f.Flags&3 != 1 || f == fds[0].File {
			t.Errorf("fd 7: %+v, want its own O_WRONLY /dev/null", f)
		}
	})
	t.Run("signals", func(t *testing.T) {
		p := loadPlan(t, "signals")
		task := p.Tasks[0]
		if it := task.Itimers[ItimerReal]; it != (Itimer{0, 20000, 0, 15431}) || task.Itimers[ItimerVirtual].Armed() || task.Itimers[ItimerProf].Armed() {
			t.Errorf("itimers %+v", task.Itimers)
		}
		sigs := task.Threads[0].Signals
		if len(sigs) != 1 || sigs[0].Signo() != 12 || len(task.SharedSignals) != 0 {
			t.Errorf("pending %v, shared %v", sigs, task.SharedSignals)
		}
		handled := map[int]uint64{}
		for _, sa := range task.Sigactions {
			if sa.Handler > 1 {
				handled[sa.Signal] = sa.Flags
			}
		}
		if len(handled) != 3 || handled[10] != 0x1c000000 || handled[12] != 0x1c000000 || handled[14] != 0x1c000000 {
			t.Errorf("handlers %v", handled)
		}
	})
}
