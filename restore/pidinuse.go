package restore

import (
	"fmt"
	"os"
	"strconv"
	"strings"

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
	d, err := os.Open("/proc")
	if err != nil {
		return out
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	const most = 4
	n := 0
	for _, name := range names {
		p, err := strconv.Atoi(name)
		if err != nil || p == pid {
			continue
		}
		st, err := procfs.ReadStat("/proc/" + name + "/stat")
		if err != nil {
			continue
		}
		var as []string
		if int(st.Field(6)) == pid {
			as = append(as, "session")
		}
		if int(st.Field(5)) == pid {
			as = append(as, "process group")
		}
		if len(as) == 0 {
			continue
		}
		if n++; n > most {
			out = append(out, "and more")
			break
		}
		out = append(out, fmt.Sprintf("the %s of %s", strings.Join(as, " and "), describe(p, st)))
	}
	return out
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
