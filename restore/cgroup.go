package restore

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/cgroup"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/internal/procfs"
	"github.com/crest-restore/crest/restore/agent"
)

// The tree's cgroups, as CRIU 4.2 restores them in its default mode
// (--manage-cgroups=soft; criu/cgroup.c).
//
// cgroup.img holds the cgroup sets of the tree's tasks and threads (a set
// names one cgroup per controller) and, per controller, every cgroup the
// dump walked under them, with properties (pids.max,
// memory.limit_in_bytes ...). Each thread's core names its set
// (thread_core.cg_set); inventory.img names the set the dumping criu was
// in (root_cg_set). CRIU writes cgroup.img only when some task was in
// other cgroups than criu itself; a task in criu's set stays in the
// restoring process's cgroups.
//
// Soft mode: a cgroup that exists is used as it is; one that does not is
// made, and only those made get the dumped properties: the few that must
// be there before a task enters (cpuset.cpus, memory.use_hierarchy ...,
// CRIU's special_props) right away, the others (the limits) once every
// task is restored, so that forking and filling memory never run into a
// limit the tree did not run into. Unlike CRIU, the cgroups crest made are
// removed again when the restore fails (rollback), and an existing cgroup's
// mode and owner are left alone (CRIU sets them to the dumped ones).
//
// Where the tasks go in: each before it forks its children, as CRIU's
// restore_task_cgroup, so that every child is born, and its fork charged
// (pids, the kernel memory of a fork), in its parent's cgroups; and
// before its memory is filled, which is charged where it was:
//
//   - PREPARE_NAMESPACES: the engine makes the cgroups, opens the
//     cgroup.procs files the tasks enter through onto the fd numbers the
//     plan gave them (reserveCgroupFiles), and moves the root into its
//     set while it waits, before it forks anything (in a cgroup
//     namespace of the tree's own, into the namespace's roots: the root
//     unshares it and enters its own set itself, first thing in FORKING;
//     cgroupns.go);
//   - FORKING: every other task, born in its parent's cgroups, enters
//     its own itself right after its pid check, before it forks (the
//     agent's "cgroups" step, fork.c): it takes the cgroup.procs files of
//     the controllers where its set differs from its parent's from the
//     engine and writes "0" into each. A task in its parent's set does
//     nothing, as in CRIU;
//   - end of RESTORE: threads whose set differs from their task's (v1
//     controllers, v2 threaded ones) are moved by the engine while they
//     wait at the barrier, before they run their own code, as CRIU's
//     threads have cgroupd move them in RESTORE; a thread forks nothing.
//     Then the properties of the cgroups made are written.
//
// A tree without cgroup.img pays nothing: Plan.Cgroups is nil and each
// hook returns at once.
type Cgroups struct {
	// RootSet is inventory.img's root_cg_set, the set the dumping criu
	// was in: tasks in it stay in crest's own cgroups. 0: not recorded.
	RootSet uint32
	// Sets are cgroup.img's sets by id; Controllers its controllers,
	// each with the cgroups the dump walked.
	Sets        map[uint32]*CgroupSet
	Controllers []*CgroupController
	// NS is the tree's own cgroup namespace, nil when it is in crest's
	// (cgroupns.go).
	NS *CgroupNS

	// own stands for RootSet: crest's own cgroups (/proc/self/cgroup)
	// in the image's controllers.
	own *CgroupSet
	// want is the set each task is restored into: an alive task's own,
	// a helper's or zombie's its parent's (CRIU dumps none for them).
	want map[*Task]*CgroupSet
	// rootMove moves the root (the engine, PREPARE_NAMESPACES); enter
	// are the other tasks born in their parent's cgroups but wanted
	// elsewhere, which enter their own before they fork (the agent,
	// FORKING), enterFiles the cgroup.procs files of all those moves,
	// each once; threadMoves the threads in other cgroups than their
	// task (the engine, end of RESTORE).
	rootMove    cgroupMove
	enter       map[*Task]cgroupMove
	enterFiles  []string
	threadMoves []cgroupMove
}

// CgroupSet is a cg_set_entry: one cgroup per controller.
type CgroupSet struct {
	ID      uint32
	Members []CgroupMember
}

// CgroupMember is the cgroup of a set in one controller.
type CgroupMember struct {
	Controller *CgroupController
	// Name is the controller as /proc/PID/cgroup names it ("cpu,cpuacct",
	// "name=systemd", "" for cgroup v2); Path the cgroup in its
	// hierarchy, "/" for the root.
	Name string
	Path string
	// NSRoot is the root of the cgroup namespace the task was in, in
	// this hierarchy (the path's first cgns_prefix bytes), "" when the
	// image gives none (cgroupns.go).
	NSRoot string
}

// CgroupController is a cg_controller_entry: a hierarchy, with the
// cgroups of it the dump walked.
type CgroupController struct {
	// Names are its controllers (cnames): one for a hierarchy of its
	// own, several when co-mounted, "name=X" for a named one, "" for
	// cgroup v2.
	Names []string
	// Threaded: its threads may be in other cgroups than their process
	// (every v1 hierarchy; a v2 one with threaded cgroups).
	Threaded bool
	// Dirs are the cgroups of the image, parents before children.
	Dirs []*CgroupDir
	// Mount is where the hierarchy's root is mounted in crest's mount
	// namespace; "" when it is not (refused when the restore needs it).
	Mount string
}

// CgroupDir is a cgroup_dir_entry: a cgroup the dump walked.
type CgroupDir struct {
	Path  string // in the hierarchy, "/" for its root
	Perms *cgroup.CgroupPerms
	Props []*cgroup.CgroupPropEntry
}

// cgroupMove is what one task or thread is written into: the cgroup.procs
// (a task) or tasks / cgroup.threads (a thread) files of its cgroups that
// differ from those it is in.
type cgroupMove struct {
	task  *Task
	tid   int // the thread, image tid; the task's pid for a task
	set   *CgroupSet
	files []string
	// unshareNS: the task (the root) unshares its cgroup namespace
	// before it writes itself into files (cgroupns.go)
	unshareNS bool
}

func (c *CgroupController) String() string {
	if c.v2() {
		return "cgroup2"
	}
	return strings.Join(c.Names, ",")
}

func (c *CgroupController) v2() bool { return len(c.Names) == 1 && c.Names[0] == "" }

// host is where the cgroup at path (in the hierarchy) is in crest's mount
// namespace.
func (c *CgroupController) host(p string) string {
	if p == "/" {
		return c.Mount
	}
	return c.Mount + p
}

// Path returns the cgroup of set s in controller c, "" when s has none.
func (s *CgroupSet) Path(c *CgroupController) string {
	for _, m := range s.Members {
		if m.Controller == c {
			return m.Path
		}
	}
	return ""
}

const cgroupImage = "cgroup.img"

// planCgroups reads cgroup.img, found by checkNamespaces, once every
// task's core is loaded: the sets, the controllers and their cgroups,
// where each task and thread goes and which moves that takes.
func (p *Plan) planCgroups() error {
	cg := p.Cgroups
	if cg == nil {
		return p.checkCgroupNSWithout() // cgroupns.go
	}
	bad := func(format string, args ...any) error {
		return &PlanError{File: cgroupImage, Msg: fmt.Sprintf(format, args...)}
	}
	e, err := p.Dir.Cgroup()
	if err != nil {
		return &PlanError{File: cgroupImage, Err: err}
	}
	if inv := p.Dir.Inventory; inv.RootCgSet != nil {
		if inv.GetRootCgSet() == 0 {
			return &PlanError{File: "inventory.img", Msg: "root_cg_set 0 (CRIU: corrupted root cgset)"}
		}
		cg.RootSet = inv.GetRootCgSet()
	}
	cg.Sets = map[uint32]*CgroupSet{}
	for i, ce := range e.GetControllers() {
		c := &CgroupController{Names: ce.GetCnames(), Threaded: ce.GetIsThreaded()}
		if len(c.Names) == 0 {
			return bad("controller %d: no names (cnames)", i)
		}
		for _, n := range c.Names {
			if strings.ContainsAny(n, ",/\x00") || (n == "" && len(c.Names) > 1) {
				return bad("controller %d: name %q", i, n)
			}
		}
		if err := c.addDirs(ce.GetDirs(), ""); err != nil {
			return bad("controller %s: %v", c, err)
		}
		cg.Controllers = append(cg.Controllers, c)
	}
	for _, se := range e.GetSets() {
		id := se.GetId()
		if id == 0 || cg.Sets[id] != nil {
			return bad("set %d: id 0 or given twice", id)
		}
		s := &CgroupSet{ID: id}
		for _, me := range se.GetCtls() {
			name, p := me.GetName(), me.GetPath()
			c := cg.controller(name)
			if c == nil {
				return bad("set %d: controller %q is none of the image's controllers", id, name)
			}
			if s.Path(c) != "" {
				return bad("set %d: controller %s twice", id, c)
			}
			if !strings.HasPrefix(p, "/") || escapes(p) {
				return bad("set %d: controller %s: path %q is not a path in its hierarchy (absolute, no ..)", id, c, p)
			}
			nsRoot, err := cgnsRoot(p, me.GetCgnsPrefix()) // cgroupns.go
			if err != nil {
				return bad("set %d: controller %s: %v", id, c, err)
			}
			s.Members = append(s.Members, CgroupMember{Controller: c, Name: name, Path: path.Clean(p), NSRoot: nsRoot})
		}
		cg.Sets[id] = s
	}
	mounts, err := readCgroupMounts()
	if err != nil {
		return &PlanError{File: cgroupImage, Err: err}
	}
	for _, c := range cg.Controllers {
		c.Mount = mounts.find(c)
		for _, d := range c.Dirs {
			if d.Path != "/" && c.Mount == "" {
				return bad("controller %s: not mounted here, and its cgroup %s is to be made", c, d.Path)
			}
		}
	}
	if cg.own, err = ownCgroups(cg.Controllers); err != nil {
		return &PlanError{File: cgroupImage, Err: err}
	}
	return p.placeCgroups()
}

// addDirs flattens the dir entries under parent ("" for the heads: their
// names are paths from the hierarchy's root), parents first.
func (c *CgroupController) addDirs(ents []*cgroup.CgroupDirEntry, parent string) error {
	for _, d := range ents {
		name := d.GetDirName()
		var p string
		switch {
		case parent == "" && name == "":
			p = "/"
		case name == "" || strings.HasPrefix(name, "/") || escapes(name) || strings.Contains(name, "\x00"):
			return fmt.Errorf("cgroup %q under %q: not a path below it (relative, no ..)", name, cmp.Or(parent, "/"))
		default:
			p = path.Join("/", parent, name)
		}
		for _, pr := range d.GetProperties() {
			n := pr.GetName()
			if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") {
				return fmt.Errorf("cgroup %s: property %q is not a file name", p, n)
			}
			if n == "freezer.state" {
				// CRIU dumps it only with --freeze-cgroup and writes it
				// back after everything else, into the frozen state.
				return fmt.Errorf("cgroup %s: freezer.state (criu dump --freeze-cgroup) is not restored", p)
			}
		}
		c.Dirs = append(c.Dirs, &CgroupDir{Path: p, Perms: d.GetDirPerms(), Props: d.GetProperties()})
		if err := c.addDirs(d.GetChildren(), p); err != nil {
			return err
		}
	}
	return nil
}

// escapes reports whether p has a ".." or "." component, or an empty one
// inside: a cgroup path of the image must name a cgroup below the
// hierarchy's root as it is.
func escapes(p string) bool {
	for i, part := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if part == ".." || part == "." || (part == "" && (i > 0 || p != "/")) {
			return true
		}
	}
	return false
}

// controller returns the controller entry whose names are all among the
// controllers of name, as /proc/PID/cgroup names them (CRIU's
// cgroup_contains).
func (cg *Cgroups) controller(name string) *CgroupController {
	parts := strings.Split(name, ",")
	for _, c := range cg.Controllers {
		if c.v2() != (name == "") {
			continue
		}
		all := true
		for _, n := range c.Names {
			all = all && (c.v2() || slices.Contains(parts, n))
		}
		if all {
			return c
		}
	}
	return nil
}

// coreCgSet is the cgroup set a thread's core names: thread_core.cg_set,
// or the task core's, where images before CRIU 3.x kept it.
func coreCgSet(core *criu_core.CoreEntry) uint32 {
	if tc := core.GetThreadCore(); tc != nil && tc.CgSet != nil {
		return tc.GetCgSet()
	}
	return core.GetTc().GetCgSet()
}

// placeCgroups decides where every task and thread goes, as CRIU's
// restore_task_cgroup: an alive task into its set (crest's own cgroups
// for the dumping criu's), a helper or a zombie into its parent's.
func (p *Plan) placeCgroups() error {
	cg := p.Cgroups
	cg.want = map[*Task]*CgroupSet{}
	lookup := func(id uint32) *CgroupSet {
		if id == cg.RootSet {
			return cg.own
		}
		return cg.Sets[id]
	}
	for _, t := range p.forkOrder() {
		var set *CgroupSet
		if t.Kind == TaskAlive {
			core := fmt.Sprintf("core-%d.img", t.PID)
			id := coreCgSet(t.Threads[0].Core)
			if id != 0 {
				if set = lookup(id); set == nil {
					return &PlanError{PID: t.PID, File: core, Msg: fmt.Sprintf("cg_set %d is not in %s (sets %v) nor inventory.img's root_cg_set %d", id, cgroupImage, cgroupSetIDs(cg.Sets), cg.RootSet)}
				}
			}
			for _, th := range t.Threads[1:] {
				tid := coreCgSet(th.Core)
				if tid == 0 || tid == id {
					continue
				}
				ts := lookup(tid)
				if ts == nil {
					return &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", th.TID), Msg: fmt.Sprintf("thread %d: cg_set %d is not in %s (sets %v) nor inventory.img's root_cg_set %d", th.TID, tid, cgroupImage, cgroupSetIDs(cg.Sets), cg.RootSet)}
				}
				cg.threadMoves = append(cg.threadMoves, cgroupMove{task: t, tid: th.TID, set: ts})
			}
		}
		switch {
		case set != nil:
		case t.Parent != nil:
			set = cg.want[t.Parent]
		default:
			set = cg.own
		}
		cg.want[t] = set
	}
	// before the moves: the root's first one is into the namespace's
	// root, when the tree has a cgroup namespace of its own
	if err := p.planCgroupNS(); err != nil { // cgroupns.go
		return err
	}
	root := p.Root()
	rootSet := cg.want[root]
	check := func(t *Task, tid int, s *CgroupSet) error {
		for _, m := range s.Members {
			if m.Controller.Mount == "" {
				what := fmt.Sprintf("task %d", t.PID)
				if tid != t.PID {
					what = fmt.Sprintf("thread %d of task %d", tid, t.PID)
				}
				return &PlanError{PID: t.PID, File: cgroupImage, Msg: fmt.Sprintf("set %d: controller %s: not mounted here, and %s is in its cgroup %s", s.ID, m.Controller, what, m.Path)}
			}
		}
		return nil
	}
	// the root moves from crest's cgroups, the others from their
	// parent's, which they are born in; in a cgroup namespace of the
	// tree's own the engine moves the root into the namespace's root
	// only, and the root goes on into its own after its unshare
	first := rootSet
	if cg.NS != nil {
		first = cg.NS.Roots
	}
	cg.rootMove = cgroupMove{task: root, tid: root.PID, set: first, files: procsFiles(first, cg.own)}
	if len(cg.rootMove.files) > 0 {
		if err := check(root, root.PID, first); err != nil {
			return err
		}
	}
	cg.enter = map[*Task]cgroupMove{}
	for _, t := range p.forkOrder() {
		s, from, unshare := cg.want[t], cg.own, false
		switch {
		case t.Parent != nil:
			from = cg.want[t.Parent]
		case cg.NS == nil:
			continue // moved by the engine
		default:
			from, unshare = cg.NS.Roots, true
		}
		files := procsFiles(s, from)
		if len(files) == 0 && !unshare {
			continue
		}
		if len(files) > 0 {
			if err := check(t, t.PID, s); err != nil {
				return err
			}
		}
		cg.enter[t] = cgroupMove{task: t, tid: t.PID, set: s, files: files, unshareNS: unshare}
		for _, f := range files {
			if !slices.Contains(cg.enterFiles, f) {
				cg.enterFiles = append(cg.enterFiles, f)
			}
		}
	}
	moves := cg.threadMoves[:0]
	for _, m := range cg.threadMoves {
		task := cg.want[m.task]
		for _, mb := range m.set.Members {
			c := mb.Controller
			if !c.Threaded || task.Path(c) == mb.Path {
				continue
			}
			file := "tasks"
			if c.v2() {
				file = "cgroup.threads"
			}
			m.files = append(m.files, c.host(mb.Path)+"/"+file)
		}
		if len(m.files) > 0 {
			if err := check(m.task, m.tid, m.set); err != nil {
				return err
			}
			moves = append(moves, m)
		}
	}
	cg.threadMoves = moves
	return nil
}

// procsFiles are the cgroup.procs files a process in set from writes
// itself into to be in set to: those of the controllers where the two
// differ, in the order of to's members.
func procsFiles(to, from *CgroupSet) []string {
	var files []string
	for _, m := range to.Members {
		if from.Path(m.Controller) != m.Path {
			files = append(files, m.Controller.host(m.Path)+"/cgroup.procs")
		}
	}
	return files
}

func cgroupSetIDs(sets map[uint32]*CgroupSet) []uint32 {
	var ids []uint32
	for id := range sets {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// cgroupMounts are the cgroup hierarchies mounted in crest's mount
// namespace, by their root's mount point.
type cgroupMounts []cgroupMountPoint

type cgroupMountPoint struct {
	point string
	v2    bool
	opts  []string // the super options: the controllers, name=X
}

// readCgroupMounts reads /proc/self/mountinfo's cgroup and cgroup2
// mounts of a hierarchy's root ("/" as seen from crest's cgroup
// namespace): where crest finds the cgroups the image names.
func readCgroupMounts() (cgroupMounts, error) {
	mounts, err := procfs.ReadMountinfo("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out cgroupMounts
	for _, m := range mounts {
		if (m.FSType != "cgroup" && m.FSType != "cgroup2") || m.Root != "/" {
			continue
		}
		out = append(out, cgroupMountPoint{point: m.Point, v2: m.FSType == "cgroup2", opts: m.SuperOptions})
	}
	return out, nil
}

// find returns where controller c's hierarchy is mounted, "" if nowhere.
func (ms cgroupMounts) find(c *CgroupController) string {
	for _, m := range ms {
		if m.v2 != c.v2() {
			continue
		}
		if m.v2 {
			return m.point
		}
		all := true
		for _, n := range c.Names {
			all = all && slices.Contains(m.opts, n)
		}
		if all {
			return m.point
		}
	}
	return ""
}

// ownCgroups is crest's own set in the controllers: its cgroups as
// /proc/self/cgroup names them.
func ownCgroups(ctls []*CgroupController) (*CgroupSet, error) {
	const self = "/proc/self/cgroup"
	b, err := os.ReadFile(self)
	if err != nil {
		return nil, err
	}
	own := &CgroupSet{}
	for line := range strings.Lines(string(b)) {
		_, rest, ok1 := strings.Cut(strings.TrimSuffix(line, "\n"), ":")
		names, p, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%s: %q", self, line)
		}
		for _, c := range ctls {
			if own.Path(c) != "" {
				continue
			}
			if c.v2() != (names == "") {
				continue
			}
			all := true
			for _, n := range c.Names {
				all = all && (c.v2() || slices.Contains(strings.Split(names, ","), n))
			}
			if all {
				own.Members = append(own.Members, CgroupMember{Controller: c, Name: names, Path: p})
			}
		}
	}
	return own, nil
}

// cgroupRun is what a restore did with cgroups: the ones it made, to be
// removed when it fails, and those whose properties wait until the tasks
// are restored.
type cgroupRun struct {
	made    []string // in crest's mount namespace, in the order made
	created []createdCgroup
}

type createdCgroup struct {
	ctl  *CgroupController
	dir  *CgroupDir
	host string
}

// CRIU's special_props: written as soon as the cgroup is made, before any
// task enters it (a cpuset without cpus takes none), and never again.
var specialCgroupProps = []string{"cpuset.cpus", "cpuset.mems", "devices.list", "memory.kmem.limit_in_bytes",
	"memory.swappiness", "memory.oom_control", "memory.use_hierarchy", "cgroup.type"}

const (
	stepCgroupDirs  = "cgroup dirs"
	stepCgroups     = "cgroups"
	stepCgroupProps = "cgroup properties"
)

// prepareCgroups, in PREPARE_NAMESPACES: makes the cgroups of the image
// that do not exist, with their special properties, opens the
// cgroup.procs files the tasks enter through onto their fd numbers, and
// moves the root, which has not forked yet, into its set.
func (r *Restore) prepareCgroups() error {
	cg := r.plan.Cgroups
	if cg == nil {
		return nil
	}
	r.cgroups = &cgroupRun{}
	root := r.plan.Root()
	begin := boottime()
	err := r.cgroups.makeDirs(cg)
	if err == nil {
		err = r.files.openCgroupFiles(cg)
	}
	if err := r.cgroupStep(StagePrepareNamespaces, root.PID, root.PID, stepCgroupDirs, begin, err); err != nil {
		return err
	}
	if len(cg.rootMove.files) == 0 {
		return nil
	}
	begin = boottime()
	return r.cgroupStep(StagePrepareNamespaces, root.PID, root.PID, stepCgroups, begin, moveIntoCgroups(cg.rootMove, r.rootPID))
}

// warmCgroupMoves, at the start of a restore that moves tasks: the first
// cgroup migration after a while waits for an RCU grace period (the
// kernel's cgroup_threadgroup_rwsem switches its readers to the slow path
// first), about 10 ms here, and the next ones within a grace period are
// quick. A no-op migration of an engine thread into its own cgroup, in
// the background, starts that wait while the engine prepares and
// launches, before the root's move needs it. Its failure costs time only.
func (r *Restore) warmCgroupMoves() {
	cg := r.plan.Cgroups
	if cg == nil || len(cg.rootMove.files)+len(cg.enter)+len(cg.threadMoves) == 0 {
		return
	}
	for _, m := range cg.own.Members {
		c := m.Controller
		if c.Mount == "" {
			continue
		}
		file := c.host(m.Path) + "/tasks"
		if c.v2() {
			file = c.host(m.Path) + "/cgroup.threads"
		}
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if err := writeCgroupFile(file, strconv.Itoa(unix.Gettid())); err != nil {
				r.log.Debug("cgroup warm-up", "err", err)
			}
		}()
		return
	}
}

// cgroupKey is the key in prepared.index of a cgroup.procs file the
// tasks enter their cgroups through.
func cgroupKey(file string) string { return "cgroup:" + file }

// reserveCgroupFiles, with the files the tasks take (before the plan is
// written): an fd number, held by a placeholder (/dev/null), for each
// cgroup.procs file a task enters its cgroups through. The cgroups may
// not exist before PREPARE_NAMESPACES makes them, when openCgroupFiles
// puts each file onto its number, before any task takes one.
func (pr *prepared) reserveCgroupFiles(p *Plan) error {
	cg := p.Cgroups
	if cg == nil {
		return nil
	}
	for _, f := range cg.enterFiles {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: "/dev/null", Err: err}
		}
		pr.add(cgroupKey(f), fd)
	}
	return nil
}

// openCgroupFiles opens the cgroup.procs files of reserveCgroupFiles,
// write-only, onto their placeholders. The kernel checks a write into
// one against the credentials it was opened with: the engine's.
func (pr *prepared) openCgroupFiles(cg *Cgroups) error {
	for _, f := range cg.enterFiles {
		fd, err := unix.Open(f, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: f, Err: err}
		}
		err = unix.Dup3(fd, pr.fds[pr.index[cgroupKey(f)]], unix.O_CLOEXEC)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("%s: %w", f, os.NewSyscallError("dup3", err))
		}
	}
	return nil
}

// enterFDs are the engine's fds of the cgroup.procs files task t writes
// itself into before it forks (the plan's cgroup_fds), none without
// cgroup.img; first -1 for the root of a tree with a cgroup namespace of
// its own: it unshares one there (cgroupns.go), but under
// FaultNoCgroupNS.
func (cg *Cgroups) enterFDs(t *Task, pr *prepared, f Fault) []int32 {
	if cg == nil {
		return nil
	}
	var fds []int32
	if cg.enter[t].unshareNS && f&FaultNoCgroupNS == 0 {
		fds = append(fds, agent.CgroupUnshareNS)
	}
	for _, f := range cg.enter[t].files {
		fds = append(fds, int32(pr.fds[pr.index[cgroupKey(f)]]))
	}
	return fds
}

// explainEnter names, in the failure of a task's cgroups step (the
// agent's), the set and the files it was writing itself into.
func (cg *Cgroups) explainEnter(e *StageError) {
	if cg == nil {
		return
	}
	for t, m := range cg.enter {
		if t.PID == e.PID {
			e.Err = &cgroupEnterError{set: m.set.ID, files: m.files, errno: e.Errno}
			if m.unshareNS {
				e.Err = &cgroupNSError{at: cg.NS.Roots, enter: e.Err.(*cgroupEnterError)}
			}
			return
		}
	}
}

// cgroupEnterError is a task's failure to enter its cgroups: what it
// wrote "0" into, with the errno of the agent's pidfd_getfd or write.
type cgroupEnterError struct {
	set   uint32
	files []string
	errno syscall.Errno
}

func (e *cgroupEnterError) Error() string {
	if len(e.files) == 1 {
		return fmt.Sprintf("entering set %d: writing 0 into %s", e.set, e.files[0])
	}
	return fmt.Sprintf("entering set %d: writing 0 into one of %s", e.set, strings.Join(e.files, ", "))
}

func (e *cgroupEnterError) Unwrap() error { return e.errno }

// cgroupsAfterRestore, once every thread exists and waits at the end of
// RESTORE: moves the threads whose sets differ from their task's, then
// writes the properties of the cgroups the restore made.
func (r *Restore) cgroupsAfterRestore() error {
	cg := r.plan.Cgroups
	if cg == nil || r.cgroups == nil {
		return nil
	}
	hostTIDs := map[*Task]map[int]int{}
	for _, m := range cg.threadMoves {
		begin := boottime()
		tids := hostTIDs[m.task]
		var err error
		if tids == nil {
			tids, err = threadsOf(r.hostPIDs[m.task.PID])
			hostTIDs[m.task] = tids
		}
		if err == nil {
			if tids[m.tid] == 0 {
				err = fmt.Errorf("thread %d is not among the threads of host pid %d", m.tid, r.hostPIDs[m.task.PID])
			} else {
				err = moveIntoCgroups(m, tids[m.tid])
			}
		}
		if err := r.cgroupStep(StageRestore, m.task.PID, m.tid, stepCgroups, begin, err); err != nil {
			return err
		}
	}
	if len(r.cgroups.created) == 0 {
		return nil
	}
	root := r.plan.Root()
	begin := boottime()
	return r.cgroupStep(StageRestore, root.PID, root.PID, stepCgroupProps, begin, r.cgroups.writeProps())
}

// cgroupStep records a cgroup step the engine did for task pid (thread
// tid) in stage st, from begin on, or its failure as a StageError.
func (r *Restore) cgroupStep(st Stage, pid, tid int, name string, begin uint64, err error) error {
	e := StepEvent{PID: pid, TID: tid, Step: name, Stage: st, Begin: begin, Engine: true}
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			e.Errno = int(errno)
		}
		r.obs.StepDone(e)
		se := &StageError{Stage: st, PID: pid, Step: name, Err: err}
		if tid != pid {
			se.TID = tid
		}
		return se
	}
	e.End, e.Succeeded = boottime(), true
	r.obs.StepDone(e)
	return nil
}

// moveIntoCgroups writes the host id of a task (its pid) or thread (its
// tid) into the files of m.
func moveIntoCgroups(m cgroupMove, id int) error {
	if id <= 0 {
		return fmt.Errorf("no host pid for task %d", m.task.PID)
	}
	what := fmt.Sprintf("task %d", m.task.PID)
	if m.tid != m.task.PID {
		what = fmt.Sprintf("thread %d of task %d", m.tid, m.task.PID)
	}
	for _, f := range m.files {
		if err := writeCgroupFile(f, strconv.Itoa(id)); err != nil {
			return fmt.Errorf("moving %s (host %d) into set %d: %w", what, id, m.set.ID, err)
		}
	}
	return nil
}

// threadsOf maps the image tids of process host's threads (the last
// NSpid of each) to their host tids.
func threadsOf(host int) (map[int]int, error) {
	dir := fmt.Sprintf("/proc/%d/task", host)
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	out := map[int]int{}
	var buf [4096]byte
	for _, n := range names {
		tid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		vtid, err := innermostTID(host, tid, buf[:])
		if err != nil {
			return nil, err
		}
		out[vtid] = tid
	}
	return out, nil
}

// innermostTID reads the last NSpid of /proc/PID/task/TID/status.
func innermostTID(pid, tid int, buf []byte) (int, error) {
	p := fmt.Sprintf("/proc/%d/task/%d/status", pid, tid)
	b, err := readProc(p, buf)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			fs := strings.Fields(rest)
			if len(fs) > 0 {
				return strconv.Atoi(fs[len(fs)-1])
			}
		}
	}
	return 0, fmt.Errorf("%s: no NSpid", p)
}

// makeDirs makes every cgroup of the image that does not exist, parents
// first, with its mode and owner and its special properties; the ones
// that exist are left as they are.
func (run *cgroupRun) makeDirs(cg *Cgroups) error {
	for _, c := range cg.Controllers {
		for _, d := range c.Dirs {
			if d.Path == "/" {
				continue
			}
			host := c.host(d.Path)
			made, err := run.mkdirAll(c.Mount, d.Path)
			if err != nil {
				return fmt.Errorf("controller %s: cgroup %s: %w", c, d.Path, err)
			}
			if !made {
				continue
			}
			run.created = append(run.created, createdCgroup{ctl: c, dir: d, host: host})
			if err := setCgroupPerms(host, d.Perms); err != nil {
				return fmt.Errorf("controller %s: cgroup %s: %w", c, d.Path, err)
			}
			for _, pr := range d.Props {
				if !slices.Contains(specialCgroupProps, pr.GetName()) {
					continue
				}
				if err := writeSpecialProp(host, pr); err != nil {
					return fmt.Errorf("controller %s: cgroup %s: %w", c, d.Path, err)
				}
			}
		}
	}
	return nil
}

// mkdirAll makes the cgroup at p under mount and the ones above it that
// are missing, noting each made; made says whether p itself was.
func (run *cgroupRun) mkdirAll(mount, p string) (made bool, err error) {
	if _, err := os.Lstat(mount + p); err == nil {
		return false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	cur := mount
	for _, part := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		cur += "/" + part
		err := unix.Mkdir(cur, 0o755)
		switch {
		case err == nil:
			run.made = append(run.made, cur)
		case err == unix.EEXIST:
		default:
			return false, &os.PathError{Op: "mkdir", Path: cur, Err: err}
		}
	}
	return true, nil
}

// setCgroupPerms gives the cgroup at dir the dumped owner and mode, as
// CRIU's prepare_dir_perms.
func setCgroupPerms(dir string, perms *cgroup.CgroupPerms) error {
	if perms == nil {
		return nil
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	return fchperm(fd, dir, perms)
}

// fchperm sets owner and mode of an open cgroup file, as CRIU's
// cr_fchperm.
func fchperm(fd int, name string, perms *cgroup.CgroupPerms) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: name, Err: err}
	}
	if st.Uid != perms.GetUid() || st.Gid != perms.GetGid() {
		if err := unix.Fchown(fd, int(perms.GetUid()), int(perms.GetGid())); err != nil {
			return &os.PathError{Op: "fchown", Path: name, Err: err}
		}
	}
	if err := unix.Fchmod(fd, perms.GetMode()&0o7777); err != nil {
		return &os.PathError{Op: "fchmod", Path: name, Err: err}
	}
	return nil
}

// writeSpecialProp writes one of CRIU's special properties into the
// cgroup dir just made, as restore_special_property.
func writeSpecialProp(dir string, pr *cgroup.CgroupPropEntry) error {
	name, value := pr.GetName(), pr.GetValue()
	switch {
	case name == "memory.swappiness" && value == "60", name == "memory.oom_control" && value == "0":
		return nil // the kernel's defaults
	case name == "cgroup.type" && value != "threaded":
		return nil // only "threaded" can be written
	case name == "devices.list":
		// The list is what is allowed: deny everything, then allow
		// each line (the kernel reads one rule per write).
		perms := &cgroup.CgroupPerms{Mode: proto.Uint32(0o200), Uid: proto.Uint32(pr.GetPerms().GetUid()), Gid: proto.Uint32(pr.GetPerms().GetGid())}
		if err := writeCgroupProp(dir, "devices.deny", "a", perms, false); err != nil {
			return err
		}
		if value == "" {
			return nil
		}
		return writeCgroupProp(dir, "devices.allow", value, perms, true)
	}
	return writeCgroupProp(dir, name, value, pr.GetPerms(), false)
}

// writeProps writes the properties of the cgroups the restore made, but
// the special ones (written when made), in the image's order: parents
// before children, each cgroup's in order (memory.limit_in_bytes before
// memory.memsw.limit_in_bytes).
func (run *cgroupRun) writeProps() error {
	for _, c := range run.created {
		for _, pr := range c.dir.Props {
			name := pr.GetName()
			if slices.Contains(specialCgroupProps, name) {
				continue
			}
			var err error
			switch name {
			case "cgroup.subtree_control":
				err = writeSubtreeControl(c.host, pr)
			case "net_prio.ifpriomap":
				err = writeIfpriomap(c.host, pr)
			default:
				err = writeCgroupProp(c.host, name, pr.GetValue(), pr.GetPerms(), false)
			}
			if err != nil {
				return fmt.Errorf("controller %s: cgroup %s: %w", c.ctl, c.dir.Path, err)
			}
		}
	}
	return nil
}

// writeCgroupProp sets the owner and mode of property name of the cgroup
// dir and writes value into it, a line per write when lines; the values
// of cgroup.procs and tasks are never written (CRIU dumps them empty).
func writeCgroupProp(dir, name, value string, perms *cgroup.CgroupPerms, lines bool) error {
	file := dir + "/" + name
	fd, err := unix.Open(file, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: file, Err: err}
	}
	defer unix.Close(fd)
	if perms != nil {
		if err := fchperm(fd, file, perms); err != nil {
			return err
		}
	}
	if name == "cgroup.procs" || name == "tasks" {
		return nil
	}
	vals := []string{value}
	if lines {
		vals = strings.Split(value, "\n")
	}
	for _, v := range vals {
		n, err := unix.Write(fd, []byte(v))
		if err == unix.EOPNOTSUPP && name == "memory.kmem.limit_in_bytes" {
			// deprecated since Linux 5.16, as CRIU lets it pass
			continue
		}
		if err == nil && n != len(v) {
			err = unix.EIO
		}
		if err != nil {
			return fmt.Errorf("property %s = %q: %w", name, v, &os.PathError{Op: "write", Path: file, Err: err})
		}
	}
	return nil
}

// writeSubtreeControl makes cgroup.subtree_control enable what the image
// says: every controller enabled now off, then the image's on, in one
// write, as CRIU's restore_cgroup_subtree_control.
func writeSubtreeControl(dir string, pr *cgroup.CgroupPropEntry) error {
	file := dir + "/cgroup.subtree_control"
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var ops []string
	for _, c := range strings.Fields(string(b)) {
		ops = append(ops, "-"+c)
	}
	for _, c := range strings.Fields(pr.GetValue()) {
		ops = append(ops, "+"+c)
	}
	return writeCgroupProp(dir, "cgroup.subtree_control", strings.Join(ops, " "), pr.GetPerms(), false)
}

// writeIfpriomap writes the interfaces of net_prio.ifpriomap with a
// priority other than 0 (the default), one per write; an interface this
// host does not have is passed over, as in CRIU.
func writeIfpriomap(dir string, pr *cgroup.CgroupPropEntry) error {
	file := dir + "/net_prio.ifpriomap"
	fd, err := unix.Open(file, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: file, Err: err}
	}
	defer unix.Close(fd)
	if perms := pr.GetPerms(); perms != nil {
		if err := fchperm(fd, file, perms); err != nil {
			return err
		}
	}
	for _, l := range strings.Split(pr.GetValue(), "\n") {
		_, prio, ok := strings.Cut(l, " ")
		if !ok {
			if l == "" {
				continue
			}
			return fmt.Errorf("property net_prio.ifpriomap: line %q", l)
		}
		if n, _ := strconv.Atoi(strings.TrimSpace(prio)); n == 0 {
			continue
		}
		unix.Write(fd, []byte(l))
	}
	return nil
}

// writeCgroupFile writes s into a cgroup file in one write.
func writeCgroupFile(file, s string) error {
	fd, err := unix.Open(file, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: file, Err: err}
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(s)); err != nil {
		return &os.PathError{Op: "write", Path: file, Err: err}
	}
	return nil
}

// removeCgroups, in the rollback once every task is gone: removes the
// cgroups the restore made, children first. A cgroup may stay busy for a
// moment after its last task was reaped.
func (r *Restore) removeCgroups() error {
	if r.cgroups == nil {
		return nil
	}
	var errs []error
	deadline := time.Now().Add(2 * time.Second)
	for i := len(r.cgroups.made) - 1; i >= 0; i-- {
		dir := r.cgroups.made[i]
		for {
			err := unix.Rmdir(dir)
			if err == nil || err == unix.ENOENT {
				break
			}
			if err == unix.EBUSY && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
				continue
			}
			errs = append(errs, fmt.Errorf("removing the cgroup the restore made: %w", &os.PathError{Op: "rmdir", Path: dir, Err: err}))
			break
		}
	}
	r.cgroups = nil
	return errors.Join(errs...)
}
