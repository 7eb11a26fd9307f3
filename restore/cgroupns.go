package restore

import (
	"fmt"
	"path"
	"strings"
)

// The tree's cgroup namespace, as CRIU 4.2 restores it (criu/cgroup.c:
// prepare_cgns, move_in_cgroup, run by the root task in cr-restore.c).
//
// A task in a cgroup namespace sees its cgroups from the namespace's
// root: in each hierarchy, the cgroup its maker was in when it unshared.
// CRIU's dump reads the root task's /proc/self/cgroup from inside (its
// parasite) and from outside, and records where the namespace's root is
// as the length of its path, a prefix of the task's cgroup's:
// cg_member_entry.cgns_prefix (none where the two views are equal: the
// namespace's root is the hierarchy's, as the dumper saw it). The root's
// set has them; every other set takes the root's, as CRIU knows one
// cgroup namespace only, the root's (its dump refuses a nested one).
//
// unshare(CLONE_NEWCGROUP) pins the new namespace's root to the caller's
// cgroups, so the root task must be in the namespace's roots when it
// unshares, and go on into its own cgroups after:
//
//   - PREPARE_NAMESPACES: the engine moves the root, which has not forked
//     yet, into Roots rather than into its own set (cgroup.go
//     prepareCgroups);
//   - FORKING: the root's cgroups step (the agent's, fork.c) begins with
//     the unshare, then writes the root into the cgroup.procs files of
//     its own set where it differs from Roots, through the engine's fds
//     (a cgroup.procs file keeps its opener's view and permissions: the
//     engine's, in crest's namespace, the paths CRIU's restore uses too).
//     Only then does the root fork: every other task is born in the
//     namespace, and in its parent's cgroups, and enters its own as in a
//     tree without one.
//
// Where the image gives a hierarchy no prefix, CRIU unshares with the root
// in its own (criu's) cgroup there; crest moves the root to the
// hierarchy's root first, where the dump saw the namespace's root, so
// that the paths the tasks see from inside are the dumped ones.
//
// Refused, by name: a set whose prefix is not the root's (a nested cgroup
// namespace), a cgroup outside the namespace's root, a task whose
// ids-PID.img names another cgroup namespace than the root's, and a root
// in a cgroup namespace of its own (ids) that cgroup.img gives no root.

// CgroupNS is the tree's own cgroup namespace.
type CgroupNS struct {
	// ID is the root's cgroup_ns_id (ids-PID.img), 0 when not recorded.
	ID uint32
	// Roots are the namespace's roots, one per controller of the root's
	// set: where the root unshares it.
	Roots *CgroupSet
}

// cgnsRoot is the root of the cgroup namespace cgns_prefix gives the
// cgroup p: its first prefix bytes, a cgroup at or above p; "" for 0.
func cgnsRoot(p string, prefix uint32) (string, error) {
	if prefix == 0 {
		return "", nil
	}
	if int(prefix) > len(p) {
		return "", fmt.Errorf("cgroup namespace prefix %d is longer than the path %q", prefix, p)
	}
	if rest := p[prefix:]; rest != "" && rest[0] != '/' && prefix > 1 {
		return "", fmt.Errorf("cgroup namespace prefix %d of %q ends inside a name", prefix, p)
	}
	return path.Clean(p[:prefix]), nil
}

// below reports whether the cgroup p is dir or below it.
func below(p, dir string) bool {
	return dir == "/" || p == dir || strings.HasPrefix(p, dir+"/")
}

// planCgroupNS decides, once every task's set is known (placeCgroups),
// whether the tree has a cgroup namespace of its own and where its roots
// are, and refuses what crest does not restore.
func (p *Plan) planCgroupNS() error {
	cg := p.Cgroups
	root := p.Root()
	rootSet := cg.want[root]
	var roots *CgroupSet
	for _, m := range rootSet.Members {
		if m.NSRoot != "" {
			roots = &CgroupSet{}
			break
		}
	}
	id, err := p.cgroupNSID()
	if err != nil {
		return err
	}
	if id != 0 && roots == nil {
		return &PlanError{PID: root.PID, File: fmt.Sprintf("ids-%d.img", root.PID), Msg: fmt.Sprintf("cgroup namespace %d of the tree's own, but %s gives the root's set %d no namespace root (cgns_prefix): a cgroup namespace at the hierarchies' roots is not restored", id, cgroupImage, rootSet.ID)}
	}
	if roots != nil {
		for _, m := range rootSet.Members {
			r := m.NSRoot
			if r == "" {
				r = "/"
			}
			if !below(m.Path, r) {
				return &PlanError{PID: root.PID, File: cgroupImage, Msg: fmt.Sprintf("set %d: controller %s: task %d's cgroup %s is not below its cgroup namespace's root %s", rootSet.ID, m.Controller, root.PID, m.Path, r)}
			}
			roots.Members = append(roots.Members, CgroupMember{Controller: m.Controller, Name: m.Name, Path: r})
		}
		cg.NS = &CgroupNS{ID: id, Roots: roots}
	}
	check := func(t *Task, tid int, s *CgroupSet) error {
		what := fmt.Sprintf("task %d", t.PID)
		if tid != t.PID {
			what = fmt.Sprintf("thread %d of task %d", tid, t.PID)
		}
		for _, m := range s.Members {
			if roots == nil {
				if m.NSRoot != "" {
					return &PlanError{PID: t.PID, File: cgroupImage, Msg: fmt.Sprintf("set %d: controller %s: %s is in a cgroup namespace rooted at %s, the root task %d in none (its set %d): a cgroup namespace other than the root's is not restored", s.ID, m.Controller, what, m.NSRoot, root.PID, rootSet.ID)}
				}
				continue
			}
			r := roots.Path(m.Controller)
			if r == "" {
				if m.NSRoot != "" {
					return &PlanError{PID: t.PID, File: cgroupImage, Msg: fmt.Sprintf("set %d: controller %s: %s has a cgroup namespace root %s, the root task's set %d no cgroup in the controller", s.ID, m.Controller, what, m.NSRoot, rootSet.ID)}
				}
				continue
			}
			if m.NSRoot != "" && m.NSRoot != r {
				return &PlanError{PID: t.PID, File: cgroupImage, Msg: fmt.Sprintf("set %d: controller %s: %s is in a cgroup namespace rooted at %s, the root task's at %s (set %d): nested cgroup namespaces are not restored", s.ID, m.Controller, what, m.NSRoot, r, rootSet.ID)}
			}
			if !below(m.Path, r) {
				return &PlanError{PID: t.PID, File: cgroupImage, Msg: fmt.Sprintf("set %d: controller %s: %s is in the cgroup %s, outside the tree's cgroup namespace (its root %s): not restored", s.ID, m.Controller, what, m.Path, r)}
			}
		}
		return nil
	}
	for _, t := range p.forkOrder() {
		if err := check(t, t.PID, cg.want[t]); err != nil {
			return err
		}
	}
	for _, m := range cg.threadMoves {
		if err := check(m.task, m.tid, m.set); err != nil {
			return err
		}
	}
	return nil
}

// cgroupNSID is the root's cgroup namespace id when it is not the
// dumper's (inventory.img's root_ids), 0 when it is or either is not
// recorded; every other task with ids must be in the root's.
func (p *Plan) cgroupNSID() (uint32, error) {
	root := p.Root()
	if root.IDs == nil || root.IDs.CgroupNsId == nil {
		return 0, nil
	}
	rootNS := root.IDs.GetCgroupNsId()
	for _, t := range p.forkOrder()[1:] {
		if t.IDs == nil || t.IDs.CgroupNsId == nil || t.IDs.GetCgroupNsId() == rootNS {
			continue
		}
		return 0, &PlanError{PID: t.PID, File: fmt.Sprintf("ids-%d.img", t.PID), Msg: fmt.Sprintf("task %d is in cgroup namespace %d, not the root task %d's %d: a cgroup namespace other than the root's is not restored", t.PID, t.IDs.GetCgroupNsId(), root.PID, rootNS)}
	}
	inv := p.Dir.Inventory.GetRootIds()
	if inv == nil || inv.CgroupNsId == nil || inv.GetCgroupNsId() == rootNS {
		return 0, nil
	}
	return rootNS, nil
}

// cgroupNSError is the root's failure in its cgroups step, in a tree
// with a cgroup namespace of its own: the unshare, or the moves after.
type cgroupNSError struct {
	at    *CgroupSet
	enter *cgroupEnterError
}

func (e *cgroupNSError) Error() string {
	var roots []string
	for _, m := range e.at.Members {
		if m.Path != "/" {
			roots = append(roots, fmt.Sprintf("%s:%s", m.Controller, m.Path))
		}
	}
	s := "unshare(CLONE_NEWCGROUP) in the cgroup namespace's roots " + strings.Join(roots, " ")
	if len(e.enter.files) == 0 {
		return s
	}
	return s + ", then " + e.enter.Error()
}

func (e *cgroupNSError) Unwrap() error { return e.enter }

// checkCgroupNSWithout refuses, in a tree without cgroup.img, a root in
// a cgroup namespace of its own: nothing says where its roots are (CRIU
// restores such a tree in its own cgroup namespace).
func (p *Plan) checkCgroupNSWithout() error {
	id, err := p.cgroupNSID()
	if err != nil || id == 0 {
		return err
	}
	root := p.Root()
	return &PlanError{PID: root.PID, File: fmt.Sprintf("ids-%d.img", root.PID), Msg: fmt.Sprintf("cgroup namespace %d of the tree's own, and no %s to say where its roots are: not restored", id, cgroupImage)}
}
