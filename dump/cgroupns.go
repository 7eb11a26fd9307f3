package dump

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The tree's cgroup namespace, as CRIU 4.2 dumps it (criu/cgroup.c
// dump_thread_cgroup, criu/proc_parse.c parse_thread_cgroup, cr-dump.c
// dump_task_core_all and dump_task_cgroup).
//
// A task in a cgroup namespace sees its cgroups from the namespace's root.
// The images keep the paths as the dumper sees them, and, in each member
// of a set (cg_member_entry.cgns_prefix), how much of the path is the
// namespace's root: CRIU's parasite reads the root task's
// /proc/self/cgroup (and each of its threads') from inside, and the
// inside path must be the end of the outside one; what is before it is
// the namespace's root (no prefix where the two are equal: the
// namespace's root is the hierarchy's, as the dumper sees it). crest
// reads the same file from a thread of its own that has entered the
// root's cgroup namespace for the read.
//
// CRIU knows one cgroup namespace, the root's (a task in another, nested
// or not, is refused): every other task's set takes the root's prefixes.
// It does so after it looked the set up among those met, whose members
// of the tree's already have the prefixes: a task outside the root (or
// a thread of one) never finds one and gets a set of its own, even when
// it is in the same cgroups as another. crest writes the same sets.
//
// The namespace itself has no image: ids-PID.img names it
// (cgroup_ns_id, ids.go) and the prefixes say where its root is.

// cgroupNS is the tree's own cgroup namespace: whether it has one, and
// the root task's set as it sees it from inside, by thread.
type cgroupNS struct {
	inside map[int][]cgMember // host tid of a root thread -> its cgroup file as seen from inside
	root   *cgSet             // the root leader's set, with its prefixes
}

// checkCgroupNS refuses tasks (and threads) in another cgroup namespace
// than the root's, and reads, when the root has one of its own, each root
// thread's cgroups as seen from inside it.
func (d *dumper) checkCgroupNS() (*cgroupNS, error) {
	root := d.tree.root
	rootIno, err := nsInode(root.pid, "cgroup")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", root, err)
	}
	own := rootIno != d.ns.own["cgroup"]
	for _, t := range d.tree.tasks {
		if t.dead != nil {
			continue // a zombie has left its namespaces
		}
		for _, th := range t.threads {
			ino, err := threadNSInode(t.pid, th.tid, "cgroup")
			if err != nil {
				return nil, fmt.Errorf("%s: %w", t, err)
			}
			if ino == rootIno {
				continue
			}
			what := "a task"
			if th.tid != t.pid {
				what = fmt.Sprintf("its thread %d", th.tid)
			}
			why := fmt.Sprintf("%s in a cgroup namespace other than the root's (%d, not %d) is not supported (CRIU: nested cgroup namespaces are not)", what, ino, rootIno)
			return nil, &UnsupportedError{Task: t.pid, Resource: "cgroup namespace", Why: why}
		}
	}
	if !own {
		return nil, nil
	}
	ns := &cgroupNS{inside: map[int][]cgMember{}}
	for _, th := range root.threads {
		file := procPath(root.pid, "task", strconv.Itoa(th.tid), "cgroup")
		b, err := readInCgroupNS(root.pid, file)
		if err != nil {
			return nil, fmt.Errorf("%s: thread %d: %s as seen in its cgroup namespace: %w", root, th.tid, file, err)
		}
		ctls, err := parseCgroupFile(file, b)
		if err != nil {
			return nil, err
		}
		ns.inside[th.tid] = ctls
	}
	return ns, nil
}

// threadNSInode is the inode of thread tid's namespace of kind.
func threadNSInode(pid, tid int, kind string) (uint64, error) {
	var st unix.Stat_t
	p := procPath(pid, "task", strconv.Itoa(tid), "ns", kind)
	if err := unix.Stat(p, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	return st.Ino, nil
}

// readInCgroupNS reads file from a thread that has entered the cgroup
// namespace of process pid (a /proc/PID/cgroup file shows the paths
// from the reader's cgroup namespace), and goes back to its own; a
// thread that can not go back ends with its goroutine.
func readInCgroupNS(pid int, file string) ([]byte, error) {
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		b, back, err := readEntered(pid, file)
		if back {
			runtime.UnlockOSThread()
		}
		done <- result{b, err}
	}()
	r := <-done
	return r.b, r.err
}

// readEntered is readInCgroupNS on the locked thread; back says whether
// the thread is in its own cgroup namespace again.
func readEntered(pid int, file string) (b []byte, back bool, err error) {
	self := "/proc/thread-self/ns/cgroup"
	ownFD, err := unix.Open(self, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, &os.PathError{Op: "open", Path: self, Err: err}
	}
	defer unix.Close(ownFD)
	target := procPath(pid, "ns", "cgroup")
	fd, err := unix.Open(target, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, &os.PathError{Op: "open", Path: target, Err: err}
	}
	err = unix.Setns(fd, unix.CLONE_NEWCGROUP)
	unix.Close(fd)
	if err != nil {
		return nil, true, fmt.Errorf("%s: %w", target, os.NewSyscallError("setns", err))
	}
	b, err = os.ReadFile(file)
	if serr := unix.Setns(ownFD, unix.CLONE_NEWCGROUP); serr != nil {
		return nil, false, fmt.Errorf("back to crest's cgroup namespace: %w", os.NewSyscallError("setns", serr))
	}
	return b, true, err
}

// withPrefixes gives the members of ctls, the root thread tid's set as
// crest sees it, the prefix of the namespace's root: where the path seen
// from inside is the end of the one seen from here (CRIU's
// parse_thread_cgroup).
func (ns *cgroupNS) withPrefixes(root *task, tid int, ctls []cgMember) ([]cgMember, error) {
	inside := ns.inside[tid]
	out := make([]cgMember, len(ctls))
	copy(out, ctls)
	for i := range out {
		ext := &out[i]
		for _, in := range inside {
			if in.name != ext.name || in.path == ext.path {
				continue
			}
			rest := strings.TrimPrefix(in.path, "/")
			if !strings.HasPrefix(in.path, "/") || !strings.HasSuffix(ext.path, rest) {
				return nil, &UnsupportedError{Task: root.pid, Resource: "cgroup namespace",
					Why: fmt.Sprintf("thread %d: controller %q: its cgroup %s, seen from inside its cgroup namespace as %s, is not below the namespace's root", tid, ext.name, ext.path, in.path)}
			}
			n := len(ext.path) - len(rest)
			if n > 0 && ext.path[n-1] == '/' {
				n--
			}
			ext.prefix = uint32(n)
		}
	}
	return out, nil
}

// strayPrefixes gives the members of s, a set of a task other than the
// root, the root's prefixes (CRIU's dump_thread_cgroup, for a "stray").
func (ns *cgroupNS) strayPrefixes(t *task, s *cgSet) error {
	for _, r := range ns.root.ctls {
		for i := range s.ctls {
			m := &s.ctls[i]
			if m.name != r.name {
				continue
			}
			if uint32(len(m.path)) < r.prefix {
				return &UnsupportedError{Task: t.pid, Resource: "cgroup namespace",
					Why: fmt.Sprintf("set %d: controller %q: its cgroup %s is shorter than the root's namespace prefix %d (CRIU: cg shorter than path prefix)", s.id, m.name, m.path, r.prefix)}
			}
			m.prefix = r.prefix
		}
	}
	return nil
}
