package dump

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/cgroup"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/procfs"
)

// The tree's cgroups, as CRIU 4.2's dump writes them (criu/cgroup.c:
// dump_thread_cgroup, dump_cgroups).
//
// Every thread's /proc/PID/task/TID/cgroup is a set: one cgroup per
// hierarchy. Sets get ids in the order met, crest's own first (id 1, the
// inventory's root_cg_set), then the tree's, task by task in pstree order,
// each leader before its threads; every thread's core names its set
// (thread_core.cg_set). Each set met for the first time is walked: in
// every hierarchy, the set's cgroup and every cgroup below it, with the
// properties CRIU dumps for the hierarchy's controllers (pids.max,
// memory.limit_in_bytes, cpu.cfs_quota_us ...) and the owner and mode of
// each. When every thread is in crest's own set nothing is written, as
// CRIU writes nothing for a tree in its own cgroups; otherwise cgroup.img
// holds every set but crest's and every hierarchy with the cgroups walked.
//
// A tree in a cgroup namespace of its own has the namespace's root in
// each member of its sets (cgns_prefix, cgroupns.go).
type cgroups struct {
	ctls  []*cgController // crest's hierarchies (/proc/self/cgroup), named ones appended when met
	sets  []*cgSet        // sets[0] is crest's own
	byTid map[int]uint32  // host tid -> set id
	mnts  []cgMount
}

// cgController is a hierarchy: its controllers ("" for cgroup v2) and
// the cgroups of it walked, as trees from their first-walked ones (heads).
type cgController struct {
	names    []string
	mount    string // where its root is mounted here, "" until needed
	threaded bool
	heads    []*cgDir
}

type cgDir struct {
	path     string // in the hierarchy, "/" for its root
	perms    *cgroup.CgroupPerms
	props    []*cgroup.CgroupPropEntry
	children []*cgDir
}

// cgSet is one thread's cgroups: a hierarchy's name in /proc/PID/cgroup
// ("cpu,cpuacct", "name=systemd", "" for v2) and the path, by name.
type cgSet struct {
	id   uint32
	ctls []cgMember
}

type cgMember struct {
	name, path string
	prefix     uint32 // cgns_prefix: the length of its cgroup namespace's root in path (cgroupns.go)
}

type cgMount struct {
	point string
	v2    bool
	opts  []string
}

// The properties CRIU dumps for each controller (its built-in
// cgroup-props), then those of every v1 hierarchy (cgroup.procs and tasks
// for their mode only) or of cgroup v2. A property the kernel does not
// have is passed over.
var (
	cgroupProps = map[string][]string{
		"cpu": {"cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.rt_period_us", "cpu.rt_runtime_us"},
		// limit_in_bytes before memsw.limit_in_bytes: the order they are restored in
		"memory": {"memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.swappiness",
			"memory.soft_limit_in_bytes", "memory.move_charge_at_immigrate", "memory.oom_control",
			"memory.use_hierarchy", "memory.kmem.limit_in_bytes", "memory.kmem.tcp.limit_in_bytes"},
		"cpuset": {"cpuset.cpus", "cpuset.mems", "cpuset.memory_migrate", "cpuset.cpu_exclusive",
			"cpuset.mem_exclusive", "cpuset.mem_hardwall", "cpuset.memory_spread_page",
			"cpuset.memory_spread_slab", "cpuset.sched_load_balance", "cpuset.sched_relax_domain_level"},
		"blkio":    {"blkio.weight"},
		"net_cls":  {"net_cls.classid"},
		"net_prio": {"net_prio.ifpriomap"},
		"pids":     {"pids.max"},
		"devices":  {"devices.list"},
	}
	cgroupPropsV1 = []string{"cgroup.clone_children", "notify_on_release", "cgroup.procs", "tasks"}
	cgroupPropsV2 = []string{"cgroup.subtree_control", "cgroup.max.descendants", "cgroup.max.depth", "cgroup.freeze", "cgroup.type"}
)

func (c *cgController) v2() bool { return len(c.names) == 1 && c.names[0] == "" }

func (c *cgController) String() string {
	if c.v2() {
		return "cgroup2"
	}
	return strings.Join(c.names, ",")
}

// collectCgroups reads the set of every thread of the tree (zombies have
// none) and walks each new set's cgroups.
func (d *dumper) collectCgroups() error {
	cg := &cgroups{byTid: map[int]uint32{}}
	own, err := readCgroupFile("/proc/self/cgroup")
	if err != nil {
		return fmt.Errorf("crest's own cgroups: %w", err)
	}
	// the hierarchies of crest's /proc/self/cgroup but the named ones,
	// as CRIU's collect_controllers
	for _, m := range own {
		var names []string
		for _, n := range strings.Split(m.name, ",") {
			if !strings.HasPrefix(n, "name=") {
				names = append(names, n)
			}
		}
		if len(names) > 0 {
			cg.ctls = append(cg.ctls, &cgController{names: names})
		}
	}
	cg.sets = []*cgSet{{id: 1, ctls: sortedSet(own)}}
	ns, err := d.checkCgroupNS() // cgroupns.go
	if err != nil {
		return err
	}
	for _, t := range d.tree.tasks {
		if t.dead != nil {
			continue
		}
		for _, th := range t.threads {
			file := procPath(t.pid, "task", strconv.Itoa(th.tid), "cgroup")
			ctls, err := readCgroupFile(file)
			if err != nil {
				return fmt.Errorf("%s: thread %d: %w", t, th.tid, err)
			}
			ctls = sortedSet(ctls)
			if ns != nil && t == d.tree.root {
				if ctls, err = ns.withPrefixes(t, th.tid, ctls); err != nil {
					return err
				}
			}
			s, err := cg.set(ctls)
			if err != nil {
				return fmt.Errorf("%s: thread %d: cgroups: %w", t, th.tid, err)
			}
			switch {
			case ns == nil:
			case t == d.tree.root:
				if ns.root == nil {
					ns.root = s
				}
			default:
				if err := ns.strayPrefixes(t, s); err != nil {
					return err
				}
			}
			cg.byTid[th.tid] = s.id
		}
	}
	d.cgroups = cg
	return nil
}

// cgSetOf is the id of the set of host thread tid, 1 (crest's) when the
// cgroups were not collected.
func (d *dumper) cgSetOf(tid int) uint32 {
	if d.cgroups == nil || d.cgroups.byTid[tid] == 0 {
		return 1
	}
	return d.cgroups.byTid[tid]
}

// readCgroupFile reads a /proc/.../cgroup file: one hierarchy a line,
// "id:controllers:path".
func readCgroupFile(file string) ([]cgMember, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return parseCgroupFile(file, b)
}

// parseCgroupFile parses b, the text of the cgroup file file.
func parseCgroupFile(file string, b []byte) ([]cgMember, error) {
	var out []cgMember
	for line := range strings.Lines(string(b)) {
		_, rest, ok1 := strings.Cut(strings.TrimSuffix(line, "\n"), ":")
		name, p, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%s: %q", file, line)
		}
		out = append(out, cgMember{name: name, path: p})
	}
	return out, nil
}

// sortedSet is a set's hierarchies sorted by their controllers, as CRIU
// keeps and writes a set.
func sortedSet(ctls []cgMember) []cgMember {
	out := slices.Clone(ctls)
	slices.SortStableFunc(out, func(a, b cgMember) int { return strings.Compare(a.name, b.name) })
	return out
}

// set returns the set of ctls, made and walked when new.
func (cg *cgroups) set(ctls []cgMember) (*cgSet, error) {
	for _, s := range cg.sets {
		if slices.Equal(s.ctls, ctls) {
			return s, nil
		}
	}
	s := &cgSet{id: uint32(len(cg.sets) + 1), ctls: ctls}
	for _, m := range ctls {
		c, err := cg.controller(m.name)
		if err != nil {
			return nil, err
		}
		if err := cg.walk(c, m.path); err != nil {
			return nil, fmt.Errorf("controller %s: %w", c, err)
		}
	}
	cg.sets = append(cg.sets, s)
	return s, nil
}

// controller returns the hierarchy whose controllers are all in name (CRIU's
// cgroup_contains); a named hierarchy is added when first met.
func (cg *cgroups) controller(name string) (*cgController, error) {
	parts := strings.Split(name, ",")
	for _, c := range cg.ctls {
		if c.v2() != (name == "") {
			continue
		}
		all := true
		for _, n := range c.names {
			all = all && (c.v2() || slices.Contains(parts, n))
		}
		if all {
			return c, nil
		}
	}
	if !strings.HasPrefix(name, "name=") {
		return nil, fmt.Errorf("hierarchy %q is not one of crest's own (/proc/self/cgroup)", name)
	}
	c := &cgController{names: []string{name}}
	cg.ctls = append(cg.ctls, c)
	return c, nil
}

// walk adds the cgroup at p and every one below it to c, with their
// properties, where c does not have them yet (CRIU's add_cgroup).
func (cg *cgroups) walk(c *cgController, p string) error {
	if c.mount == "" {
		if cg.mnts == nil {
			var err error
			if cg.mnts, err = readCgroupMounts(); err != nil {
				return err
			}
		}
		if c.mount = findCgroupMount(cg.mnts, c); c.mount == "" {
			return fmt.Errorf("not mounted here: its cgroups can not be read")
		}
	}
	host := c.mount
	if p != "/" {
		host += p
	}
	var st unix.Stat_t
	if err := unix.Stat(host, &st); err != nil {
		return &os.PathError{Op: "stat", Path: host, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil
	}
	if err := c.add(p, host, &st); err != nil {
		return err
	}
	// in the directory's order, as CRIU's ftw
	f, err := os.Open(host)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", host, err)
	}
	for _, name := range names {
		if ent, err := os.Lstat(host + "/" + name); err != nil || !ent.IsDir() {
			continue
		}
		child := "/" + name
		if p != "/" {
			child = p + child
		}
		if err := cg.walk(c, child); err != nil {
			return err
		}
	}
	return nil
}

// add records the cgroup at p (host: where it is here) under the deepest
// cgroup of c above it, or as a head; one already there is left.
func (c *cgController) add(p, host string, st *unix.Stat_t) error {
	list := &c.heads
	for {
		var under *cgDir
		for _, d := range *list {
			if d.path == p {
				return nil
			}
			if isSubpath(p, d.path) {
				under = d
				break
			}
		}
		if under == nil {
			break
		}
		list = &under.children
	}
	d := &cgDir{path: p, perms: cgPerms(st)}
	props := cgroupPropsV1
	if c.v2() {
		props = cgroupPropsV2
	}
	var names []string
	for _, n := range c.names {
		names = append(names, cgroupProps[n]...)
	}
	for _, name := range append(names, props...) {
		pr, err := readCgroupProp(host, name)
		if err != nil {
			return err
		}
		if pr == nil {
			continue
		}
		if name == "tasks" || (name == "cgroup.type" && pr.GetValue() == "threaded") {
			c.threaded = true
		}
		d.props = append(d.props, pr)
	}
	*list = append(*list, d)
	return nil
}

// isSubpath reports whether p is below dir (CRIU's issubpath).
func isSubpath(p, dir string) bool {
	return strings.HasPrefix(p, dir) && (dir == "/" || len(p) == len(dir) || p[len(dir)] == '/')
}

func cgPerms(st *unix.Stat_t) *cgroup.CgroupPerms {
	return &cgroup.CgroupPerms{Mode: proto.Uint32(st.Mode), Uid: proto.Uint32(st.Uid), Gid: proto.Uint32(st.Gid)}
}

// readCgroupProp reads property name of the cgroup at dir as CRIU's
// read_cgroup_prop: the value without its last newline ("-1" for one that
// reads as LLONG_MAX), none for cgroup.procs and tasks, only
// oom_kill_disable's value of memory.oom_control; nil when the kernel
// has no such file.
func readCgroupProp(dir, name string) (*cgroup.CgroupPropEntry, error) {
	file := dir + "/" + name
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, &os.PathError{Op: "fstat", Path: file, Err: err}
	}
	pr := &cgroup.CgroupPropEntry{Name: proto.String(name), Value: proto.String(""), Perms: cgPerms(&st)}
	if name == "cgroup.procs" || name == "tasks" {
		return pr, nil
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	v := strings.TrimSuffix(string(b), "\n")
	if isLLongMax(v) {
		v = "-1"
	}
	if name == "memory.oom_control" {
		rest, ok := strings.CutPrefix(v, "oom_kill_disable ")
		line, _, _ := strings.Cut(rest, "\n")
		if _, err := strconv.Atoi(line); !ok || err != nil {
			return nil, fmt.Errorf("%s: no oom_kill_disable in %q", file, v)
		}
		v = line
	}
	pr.Value = proto.String(v)
	return pr, nil
}

// isLLongMax reports whether strtoll(3) reads s as LLONG_MAX (its value,
// or a larger one).
func isLLongMax(s string) bool {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	end := 0
	for end < len(s) && s[end] >= '0' && s[end] <= '9' {
		end++
	}
	if end == 0 || neg {
		return false
	}
	v, err := strconv.ParseInt(s[:end], 10, 64)
	return err != nil || v == math.MaxInt64
}

// readCgroupMounts reads the cgroup and cgroup2 mounts of a hierarchy's
// root of crest's mount namespace (/proc/self/mountinfo).
func readCgroupMounts() ([]cgMount, error) {
	mounts, err := procfs.ReadMountinfo("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	out := []cgMount{}
	for _, m := range mounts {
		if (m.FSType != "cgroup" && m.FSType != "cgroup2") || m.Root != "/" {
			continue
		}
		out = append(out, cgMount{point: m.Point, v2: m.FSType == "cgroup2", opts: m.SuperOptions})
	}
	return out, nil
}

func findCgroupMount(ms []cgMount, c *cgController) string {
	for _, m := range ms {
		if m.v2 != c.v2() {
			continue
		}
		all := true
		for _, n := range c.names {
			all = all && (m.v2 || slices.Contains(m.opts, n))
		}
		if all {
			return m.point
		}
	}
	return ""
}

// writeCgroups writes cgroup.img, unless every thread is in crest's own
// set (CRIU's dump_cgroups).
func (d *dumper) writeCgroups() error {
	cg := d.cgroups
	if cg == nil || len(cg.sets) == 1 {
		return nil
	}
	e := &cgroup.CgroupEntry{}
	for _, s := range cg.sets[1:] {
		se := &cgroup.CgSetEntry{Id: proto.Uint32(s.id)}
		for _, m := range s.ctls {
			me := &cgroup.CgMemberEntry{Name: proto.String(m.name), Path: proto.String(m.path)}
			if m.prefix > 0 {
				me.CgnsPrefix = proto.Uint32(m.prefix)
			}
			se.Ctls = append(se.Ctls, me)
		}
		e.Sets = append(e.Sets, se)
	}
	for _, c := range cg.ctls {
		ce := &cgroup.CgControllerEntry{Cnames: c.names, IsThreaded: proto.Bool(c.threaded)}
		ce.Dirs = cgDirEntries(c.heads, "")
		e.Controllers = append(e.Controllers, ce)
	}
	return d.write("cgroup.img", images.KindCgroup, images.Entry{Message: e})
}

// cgDirEntries are the entries of dirs, named from their parent's path
// ("" for the heads, named from the hierarchy's root).
func cgDirEntries(dirs []*cgDir, parent string) []*cgroup.CgroupDirEntry {
	var out []*cgroup.CgroupDirEntry
	for _, d := range dirs {
		name := strings.TrimPrefix(d.path, "/")
		if parent != "" && parent != "/" {
			name = strings.TrimPrefix(d.path, parent+"/")
		}
		out = append(out, &cgroup.CgroupDirEntry{DirName: proto.String(name), Children: cgDirEntries(d.children, d.path),
			Properties: d.props, DirPerms: d.perms})
	}
	return out
}
