package dump_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// The filters of test/workloads/src/seccomp.c.
var (
	denyUnameEPERM    = workloads.DenyFilter(syscall.SYS_UNAME, uint32(syscall.EPERM))
	denyUnameEXDEV    = workloads.DenyFilter(syscall.SYS_UNAME, uint32(syscall.EXDEV))
	denyGetpgrpEACCES = workloads.DenyFilter(syscall.SYS_GETPGRP, uint32(syscall.EACCES))
	denyGetpgrpENOTTY = workloads.DenyFilter(syscall.SYS_GETPGRP, uint32(syscall.ENOTTY))
)

const flagTSYNC = 1 // SECCOMP_FILTER_FLAG_TSYNC

// wantSeccomp is what a thread's core and its chain in seccomp.img must
// say: the mode (nil: no seccomp_mode at all) and the filters in the
// order they were installed, each with its flags.
type wantSeccomp struct {
	mode  *criu_core.SeccompMode
	progs [][]byte
	flags uint32
}

// TestDumpSeccomp dumps test/workloads/src/seccomp.c, whose children are
// in seccomp, with `crest dump --leave-running`, then again killing it,
// and checks the images as CRIU 4.2 lays them out: each thread's mode in
// its core, its filters in seccomp.img from the core's seccomp_filter
// along prev in the order they were installed; the filter child's threads
// apart (different chains), the tsync child's chain on its leader only,
// with TSYNC, its thread disabled; the strict child strict, the init
// without seccomp. After --leave-running the filters are still in place
// (the status lines as before) and work: every log, checked by the
// workload against its filters, counts on without CORRUPT.
func TestDumpSeccomp(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	p, reaped := startReaped(t, "seccomp")
	roles := []string{"init", "filter", "filterthread", "tsync", "tsyncthread", "strict"}
	for _, r := range roles {
		waitLines(t, p, "out-"+r+".log", 3)
	}
	live, err := check.Live(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	// the tasks by the log each holds open
	pids := map[string]int{}
	for pid, lt := range live {
		for _, r := range []string{"init", "filter", "tsync", "strict"} {
			if holdsLog(t, lt.Host, r) {
				pids[r] = pid
			}
		}
	}
	if len(pids) != 4 || pids["init"] != 1 || len(live) != 4 {
		t.Fatalf("tasks of the workload: %v of %d", pids, len(live))
	}
	filter, tsync := live[pids["filter"]], live[pids["tsync"]]
	if len(filter.Threads) != 2 || len(tsync.Threads) != 2 {
		t.Fatalf("threads: filter %v, tsync %v, want two each", filter.Threads, tsync.Threads)
	}
	other := func(lt *check.Task) int {
		for tid := range lt.Threads {
			if tid != lt.PID {
				return tid
			}
		}
		return 0
	}
	filterMode, strictMode := criu_core.SeccompMode_filter.Enum(), criu_core.SeccompMode_strict.Enum()
	want := map[int]wantSeccomp{ // by tid in the namespace
		1:              {},
		filter.PID:     {mode: filterMode, progs: [][]byte{denyUnameEPERM, denyUnameEXDEV, denyGetpgrpEACCES}},
		other(filter):  {mode: filterMode, progs: [][]byte{denyUnameEPERM}},
		tsync.PID:      {mode: filterMode, progs: [][]byte{denyGetpgrpENOTTY}, flags: flagTSYNC},
		other(tsync):   {},
		pids["strict"]: {mode: strictMode},
	}
	statusBefore := seccompStatus(t, live)

	kept := filepath.Join(t.TempDir(), "kept")
	if res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(p.Pid), "-D", kept, "--leave-running"); res.Code != 0 {
		t.Fatalf("crest dump --leave-running: exit %d: %s", res.Code, res.Stderr)
	}
	logs := map[string][]byte{}
	rules := map[string]check.Next{}
	for r, b := range logsOf(t, p.Dir, roles...) {
		logs["out-"+r+".log"] = b
		rules["out-"+r+".log"] = check.Counter
	}
	dk, err := images.Open(kept)
	if err != nil {
		t.Fatal(err)
	}
	checkSeccompImages(t, dk, want)

	t.Run("runs on", func(t *testing.T) {
		check.Logs(t, p.Dir, logs, rules, time.Second)
		if after := seccompStatus(t, live); !slices.Equal(after, statusBefore) {
			t.Errorf("seccomp status after the dump:\n%s\nbefore:\n%s", strings.Join(after, "\n"), strings.Join(statusBefore, "\n"))
		}
	})

	killed := filepath.Join(t.TempDir(), "killed")
	if res := cli.Run(t, bin, "dump", "-t", strconv.Itoa(p.Pid), "-D", killed); res.Code != 0 {
		t.Fatalf("crest dump: exit %d: %s", res.Code, res.Stderr)
	}
	reap(t, p.Pid, live)
	reaped()
	dd, err := images.Open(killed)
	if err != nil {
		t.Fatal(err)
	}
	checkSeccompImages(t, dd, want)
	t.Run("same as --leave-running", func(t *testing.T) {
		a, b := seccompOf(t, dk), seccompOf(t, dd)
		if !proto.Equal(a, b) {
			t.Errorf("seccomp.img: %v after --leave-running, %v after the killing dump", a, b)
		}
		for tid := range want {
			if a, b := seccompFields(threadCore(t, dk, tid)), seccompFields(threadCore(t, dd, tid)); a != b {
				t.Errorf("core-%d.img: %s after --leave-running, %s after the killing dump", tid, a, b)
			}
		}
	})
}

// checkSeccompImages checks the seccomp state of every thread of want in
// the images of d, and that seccomp.img holds no filter no chain uses.
func checkSeccompImages(t *testing.T, d *images.Dir, want map[int]wantSeccomp) {
	t.Helper()
	se := seccompOf(t, d)
	used := map[uint32]int{} // filter index -> tid whose chain has it
	nfilters := 0
	for tid, w := range want {
		tc := threadCore(t, d, tid)
		if modeOf(tc.SeccompMode) != modeOf(w.mode) {
			t.Errorf("core-%d.img: seccomp_mode %s, want %s", tid, modeOf(tc.SeccompMode), modeOf(w.mode))
		}
		if w.progs == nil {
			if tc.SeccompFilter != nil {
				t.Errorf("core-%d.img: seccomp_filter %d, want none", tid, *tc.SeccompFilter)
			}
			continue
		}
		nfilters += len(w.progs)
		if tc.SeccompFilter == nil {
			t.Errorf("core-%d.img: no seccomp_filter, want a chain of %d", tid, len(w.progs))
			continue
		}
		var chain []*seccomp.SeccompFilter
		for i, next := *tc.SeccompFilter, true; next; {
			if int(i) >= len(se.SeccompFilters) || len(chain) > len(se.SeccompFilters) {
				t.Fatalf("core-%d.img: chain %v then index %d, in seccomp.img of %d filters", tid, chain, i, len(se.SeccompFilters))
			}
			if u, ok := used[i]; ok {
				t.Errorf("seccomp.img: filter %d in the chains of threads %d and %d", i, u, tid)
			}
			used[i] = tid
			f := se.SeccompFilters[i]
			chain = append(chain, f)
			i, next = f.GetPrev(), f.Prev != nil
		}
		if len(chain) != len(w.progs) {
			t.Errorf("thread %d: a chain of %d filters, want %d", tid, len(chain), len(w.progs))
			continue
		}
		for i, f := range chain {
			if string(f.Filter) != string(w.progs[i]) {
				t.Errorf("thread %d: filter %d of its chain is\n%x\nwant\n%x", tid, i, f.Filter, w.progs[i])
			}
			if f.Flags == nil || *f.Flags != w.flags {
				t.Errorf("thread %d: filter %d of its chain has flags %s, want %d", tid, i, flagsOf(f), w.flags)
			}
		}
	}
	if len(se.SeccompFilters) != nfilters {
		t.Errorf("seccomp.img holds %d filters, want %d", len(se.SeccompFilters), nfilters)
	}
}

func flagsOf(f *seccomp.SeccompFilter) string {
	if f.Flags == nil {
		return "none"
	}
	return strconv.FormatUint(uint64(*f.Flags), 10)
}

func modeOf(m *criu_core.SeccompMode) string {
	if m == nil {
		return "none"
	}
	return m.String()
}

// seccompFields says what a thread core holds of seccomp.
func seccompFields(tc *criu_core.ThreadCoreEntry) string {
	s := "seccomp_mode " + modeOf(tc.SeccompMode)
	if tc.SeccompFilter != nil {
		s += fmt.Sprintf(", seccomp_filter %d", *tc.SeccompFilter)
	}
	return s
}

func seccompOf(t *testing.T, d *images.Dir) *seccomp.SeccompEntry {
	t.Helper()
	se, err := d.Seccomp()
	if err != nil {
		t.Fatal(err)
	}
	if se == nil {
		t.Fatal("no seccomp.img")
	}
	return se
}

func threadCore(t *testing.T, d *images.Dir, tid int) *criu_core.ThreadCoreEntry {
	t.Helper()
	core, err := d.Core(uint32(tid))
	if err != nil {
		t.Fatal(err)
	}
	if core.GetThreadCore() == nil {
		t.Fatalf("core-%d.img: no thread_core", tid)
	}
	return core.GetThreadCore()
}

// holdsLog reports whether host has out-ROLE.log open.
func holdsLog(t *testing.T, host int, role string) bool {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", host))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", host, e.Name()))
		if err == nil && strings.HasSuffix(target, "/out-"+role+".log") {
			return true
		}
	}
	return false
}

// seccompStatus is the Seccomp and Seccomp_filters lines of every thread
// of tree, sorted, each with its tid.
func seccompStatus(t *testing.T, tree map[int]*check.Task) []string {
	t.Helper()
	var out []string
	for _, lt := range tree {
		for tid, host := range lt.Threads {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", lt.Host, host))
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "Seccomp:") || strings.HasPrefix(l, "Seccomp_filters:") {
					out = append(out, fmt.Sprintf("thread %d %s", tid, strings.Join(strings.Fields(l), " ")))
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// listenerSrc installs a filter whose getppid goes to a user-space
// listener (SECCOMP_FILTER_FLAG_NEW_LISTENER) and keeps the listener's
// fd, then counts in out.log without calling getppid.
const listenerSrc = `#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	struct sock_filter prog[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog fprog = { .len = 4, .filter = prog };
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	char line[32];
	int fd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);

	if (fd < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return 2;
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog) < 0)
		return 3;
	for (unsigned long n = 1;; n++) {
		snprintf(line, sizeof line, "%lu\n", n);
		if (write(fd, line, strlen(line)) < 0)
			return 4;
		nanosleep(&tick, NULL);
	}
}
`

// TestDumpSeccompListener: a filter that hands syscalls to a user-space
// listener can not come back without it; the dump refuses it, naming the
// task and the thread, and the tree runs on.
func TestDumpSeccompListener(t *testing.T) {
	prog, err := workloads.BuildSource("seccomp-listener", "listener.c", []byte(listenerSrc), []string{"-static", "-O2"})
	if err != nil {
		t.Fatal(err)
	}
	p := workloads.StartIn(t, prog, t.TempDir())
	waitLines(t, p, "out.log", 3)
	parent := t.TempDir()
	_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
	var ue *dump.UnsupportedError
	if !errors.As(err, &ue) {
		t.Fatalf("dump: %v, want an UnsupportedError", err)
	}
	for _, s := range []string{"task 1", "thread 1", "seccomp filter 0", "listener"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Errorf("the failed dump left %v in %s", ents, parent)
	}
	n := len(waitLines(t, p, "out.log", 1))
	waitLines(t, p, "out.log", n+5)
	noCorrupt(t, p, []string{"out.log"})
}
