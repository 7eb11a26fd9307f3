package restore

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/internal/procfs"
)

// pidHolders finds what holds pid in the caller's pid namespace: a
// process or thread with that id, or processes whose process group or
// session it is. At most a few are named.
func pidHolders(pid int) []string {
	var out []string
	describe := func(p int, st *procfs.Stat) string {
		state := string(st.State)
		if st.State == 'Z' {
			state = "zombie"
		}
		return fmt.Sprintf("%d (%s, %s, parent %d)", p, st.Comm, state, st.Field(4))
	}
	if st, err := procfs.ReadStat(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// /proc/TID is there for a thread too, with its process's stat
		if tgid := procTgid(pid); tgid != 0 && tgid != pid {
			out = append(out, fmt.Sprintf("thread %d of process %s", pid, describe(tgid, st)))
		} else {
			out = append(out, "process "+describe(pid, st))
		}
	}
	const most = 4
	n := 0
	eachProcess(func(p int, st *procfs.Stat) bool { // the holders found until /proc fails, if it does
		if p == pid {
			return true
		}
		var as []string
		if int(st.Field(6)) == pid {
			as = append(as, "session")
		}
		if int(st.Field(5)) == pid {
			as = append(as, "process group")
		}
		if len(as) == 0 {
			return true
		}
		if n++; n > most {
			out = append(out, "and more")
			return false
		}
		out = append(out, fmt.Sprintf("the %s of %s", strings.Join(as, " and "), describe(p, st)))
		return true
	})
	return out
}

// eachProcess calls visit with every process of /proc and its stat, in
// the order /proc lists them, until visit returns false. Processes that
// end during the walk are passed over; an error says /proc could not be
// read.
func eachProcess(visit func(pid int, st *procfs.Stat) bool) error {
	d, err := os.Open("/proc")
	if err != nil {
		return err
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, name := range names {
		p, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		st, err := procfs.ReadStat("/proc/" + name + "/stat")
		if err != nil {
			continue // gone since
		}
		if !visit(p, st) {
			return nil
		}
	}
	return nil
}

// procTgid is the Tgid line of /proc/ID/status, 0 if it can not be read.
func procTgid(id int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", id))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Tgid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// reapWait is how long a restore into crest's own pid namespace waits for
// zombies that still hold a pid it needs: a tree that crest dump or criu
// dump has just killed leaves zombies until their parents (often pid 1)
// reap them, and a restore right after the dump would fail with EEXIST.
const reapWait = 5 * time.Second

// awaitReaped waits, up to reapWait, until no zombie holds a pid the
// tree's tasks need as their own, as a process group or as a session. It
// does not wait for a live holder, which will not go away: the fork then
// fails and names it (PIDInUseError). A tree in a pid namespace of its own
// needs none of these pids. The free case costs two kill(2) probes a task.
func (r *Restore) awaitReaped(ctx context.Context) {
	p := r.plan
	if p.NewPIDNS {
		return
	}
	var held []int
	for _, t := range p.Tasks {
		if pidTaken(t.PID) {
			held = append(held, t.PID)
		}
	}
	if len(held) == 0 || !onlyZombies(held) {
		return
	}
	r.log.Warn("waiting for zombies to be reaped: they hold pids the tree needs", "pids", held, "holders", pidHolders(held[0]), "at_most", reapWait)
	deadline := time.Now().Add(reapWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
		held = slices.DeleteFunc(held, func(pid int) bool { return !pidTaken(pid) })
		if len(held) == 0 || !onlyZombies(held) {
			return
		}
	}
}

// pidTaken: a process with pid, or a process group with that id, exists
// (zombies included). A session whose members all lead groups of their
// own is not seen; the fork then names it.
func pidTaken(pid int) bool {
	for _, id := range []int{pid, -pid} {
		if err := unix.Kill(id, 0); err == nil || err == unix.EPERM {
			return true
		}
	}
	return false
}

// onlyZombies: every process that is, or whose group or session is, one
// of pids is a zombie. One read of /proc.
func onlyZombies(pids []int) bool {
	want := map[int]bool{}
	for _, pid := range pids {
		want[pid] = true
	}
	only := true
	err := eachProcess(func(p int, st *procfs.Stat) bool {
		if (want[p] || want[int(st.Field(5))] || want[int(st.Field(6))]) && st.State != 'Z' {
			only = false
		}
		return only
	})
	return only && err == nil
}
