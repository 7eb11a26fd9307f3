package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore/agent"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

// setSeccomp gives thread tid of the image directory dir the seccomp
// mode, and in filter mode the chain of progs (install order) with flags,
// appended to seccomp.img in CRIU's layout: the thread core names the
// first filter, each filter's prev the one after it.
func setSeccomp(t *testing.T, dir string, tid int, mode criu_core.SeccompMode, flags uint32, progs ...[]byte) {
	t.Helper()
	var first uint32
	editImage(t, dir, "seccomp.img", func(img *images.Image) {
		se := img.Entries[0].Message.(*seccomp.SeccompEntry)
		first = uint32(len(se.SeccompFilters))
		for i, prog := range progs {
			f := &seccomp.SeccompFilter{Filter: prog, Flags: proto.Uint32(flags)}
			if i < len(progs)-1 {
				f.Prev = proto.Uint32(first + uint32(i) + 1)
			}
			se.SeccompFilters = append(se.SeccompFilters, f)
		}
	})
	editImage(t, dir, fmt.Sprintf("core-%d.img", tid), func(img *images.Image) {
		c := img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore
		c.SeccompMode = mode.Enum()
		if mode == criu_core.SeccompMode_filter {
			c.SeccompFilter = proto.Uint32(first)
		}
	})
}

// TestPlanSeccomp checks the filter chains the plan reads, in install
// order, and what it refuses, naming the image.
func TestPlanSeccomp(t *testing.T) {
	a, b := workloads.DenyFilter(63, 1), workloads.DenyFilter(111, 13) // uname EPERM, getpgrp EACCES
	dir := fixture.CopyImages(t, "threads")
	setSeccomp(t, dir, 1, criu_core.SeccompMode_filter, 0, a, b)
	setSeccomp(t, dir, 2, criu_core.SeccompMode_strict, 0)
	p := planDir(t, dir)
	th := p.Tasks[0].Threads
	if s := th[0].Seccomp; s.Mode != agent.SeccompModeFilter || len(s.Filters) != 2 ||
		!bytes.Equal(s.Filters[0].Prog, a) || !bytes.Equal(s.Filters[1].Prog, b) {
		t.Errorf("thread 1: %+v, want filter mode with uname's filter, then getpgrp's", s)
	}
	if s := th[1].Seccomp; s.Mode != agent.SeccompModeStrict || len(s.Filters) != 0 {
		t.Errorf("thread 2: %+v, want strict mode", s)
	}
	if s := th[2].Seccomp; s.Mode != agent.SeccompModeDisabled {
		t.Errorf("thread 3: %+v, want none", s)
	}

	// old images: the task core's mode and filter, for the leader, with TSYNC
	dir = fixture.CopyImages(t, "threads")
	setSeccomp(t, dir, 2, criu_core.SeccompMode_disabled, 2, a, b)
	editImage(t, dir, "core-1.img", func(img *images.Image) {
		tc := img.Entries[0].Message.(*criu_core.CoreEntry).Tc
		tc.OldSeccompMode, tc.OldSeccompFilter = criu_core.SeccompMode_filter.Enum(), proto.Uint32(0)
	})
	p = planDir(t, dir)
	if s := p.Tasks[0].Threads[0].Seccomp; len(s.Filters) != 2 || s.Filters[0].Flags != 2|seccompFlagTSYNC || s.Filters[1].Flags != 2|seccompFlagTSYNC {
		t.Errorf("old_seccomp_mode: %+v, want both filters with LOG and TSYNC", s)
	}

	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"filter past the end", func(t *testing.T, dir string) {
			setSeccomp(t, dir, 1, criu_core.SeccompMode_filter, 0, a)
			editImage(t, dir, "core-1.img", func(img *images.Image) {
				img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore.SeccompFilter = proto.Uint32(7)
			})
		}, "task 1: seccomp.img: thread 1: filter 7 of 1"},
		{"a chain in a loop", func(t *testing.T, dir string) {
			setSeccomp(t, dir, 1, criu_core.SeccompMode_filter, 0, a, b)
			editImage(t, dir, "seccomp.img", func(img *images.Image) {
				img.Entries[0].Message.(*seccomp.SeccompEntry).SeccompFilters[1].Prev = proto.Uint32(0)
			})
		}, "task 1: seccomp.img: thread 1: filter 0 comes twice in its chain"},
		{"not whole instructions", func(t *testing.T, dir string) {
			setSeccomp(t, dir, 1, criu_core.SeccompMode_filter, 0, a[:20])
		}, "task 1: seccomp.img: filter 0: 20 bytes, not 1 to 4096 instructions of 8"},
		{"a listener", func(t *testing.T, dir string) {
			setSeccomp(t, dir, 1, criu_core.SeccompMode_filter, seccompFlagListener, a)
		}, "filter 0: flags 0x8 (a user notification listener, or unknown) are not supported"},
		{"filter mode without a filter", func(t *testing.T, dir string) {
			setSeccomp(t, dir, 3, criu_core.SeccompMode_filter, 0)
			editImage(t, dir, "core-3.img", func(img *images.Image) {
				img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore.SeccompFilter = nil
			})
		}, "task 1: core-3.img: thread 3: seccomp filter mode without a filter"},
		{"neither no_new_privs nor CAP_SYS_ADMIN", func(t *testing.T, dir string) {
			setSeccomp(t, dir, 1, criu_core.SeccompMode_filter, 0, a)
			editImage(t, dir, "core-1.img", func(img *images.Image) {
				cr := img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore.Creds
				cr.CapEff[0] &^= 1 << capSysAdmin
				cr.NoNewPrivs = proto.Uint32(0)
			})
		}, "task 1: core-1.img: thread 1: seccomp filters on a task without no_new_privs or CAP_SYS_ADMIN are not restored yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyImages(t, "threads")
			tc.edit(t, dir)
			_, err := openPlan(t, dir)
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a PlanError with %q", err, tc.want)
			}
		})
	}
}

// TestRestoreSeccomp restores CRIU 4.2's threads fixture with seccomp
// state put into its images: thread 1 two filters (one with the LOG
// flag), thread 2 one of its own, thread 3 none. Each thread comes back
// with its filters, in their order, as PTRACE_SECCOMP_GET_FILTER reads
// them, and runs on (its log grows). Then the tree fixture with task 3
// in strict mode: it is restored, and its first call that strict mode
// does not allow (nanosleep) kills it, as its parent's log tells.
func TestRestoreSeccomp(t *testing.T) {
	needRoot(t)
	a, b, c := workloads.DenyFilter(63, 1), workloads.DenyFilter(111, 13), workloads.DenyFilter(63, 18)
	dir := fixture.CopyImages(t, "threads")
	// thread 1: a, then b (with the LOG flag); thread 2: c. The chains
	// interleave in seccomp.img, as nothing says they may not.
	editImage(t, dir, "seccomp.img", func(img *images.Image) {
		img.Entries[0].Message.(*seccomp.SeccompEntry).SeccompFilters = []*seccomp.SeccompFilter{
			{Filter: a, Prev: proto.Uint32(2), Flags: proto.Uint32(0)},
			{Filter: c},
			{Filter: b, Flags: proto.Uint32(seccompFlagLog)},
		}
	})
	for tid, first := range map[int]uint32{1: 0, 2: 1} {
		editImage(t, dir, fmt.Sprintf("core-%d.img", tid), func(img *images.Image) {
			tc := img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore
			tc.SeccompMode, tc.SeccompFilter = criu_core.SeccompMode_filter.Enum(), proto.Uint32(first)
		})
	}
	logs := installFixture(t, "threads")
	p := planDir(t, dir)
	_, hosts := startChecked(t, p)
	want := map[int][][]byte{1: {a, b}, 2: {c}, 3: nil}
	for tid, progs := range want {
		host := hostTID(t, hosts[0], p.Tasks[0], tid)
		st := procStatus(t, host)
		mode := "0"
		if len(progs) > 0 {
			mode = "2"
		}
		if got := st["Seccomp"]; len(got) != 1 || got[0] != mode {
			t.Errorf("thread %d: Seccomp %v, want %s", tid, got, mode)
		}
		if got := st["Seccomp_filters"]; len(got) != 1 || got[0] != fmt.Sprint(len(progs)) {
			t.Errorf("thread %d: Seccomp_filters %v, want %d", tid, got, len(progs))
		}
		got := readFilters(t, host)
		if len(got) != len(progs) {
			t.Errorf("thread %d: %d filters, want %d", tid, len(got), len(progs))
			continue
		}
		for i := range progs {
			if !bytes.Equal(got[i], progs[i]) {
				t.Errorf("thread %d: filter %d is %x, want %x", tid, i, got[i], progs[i])
			}
		}
	}
	for _, l := range []string{"out-0.log", "out-1.log", "out-2.log"} {
		waitLinesOf(t, logs+"/"+l, 3)
	}

	dir = fixture.CopyImages(t, "tree")
	setSeccomp(t, dir, 3, criu_core.SeccompMode_strict, 0)
	logs = installFixture(t, "tree")
	p = planDir(t, dir)
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	hosts = abortAtCleanup(t, r, p)
	init := logOf(t, hosts[0], logs)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(init)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "init reaped 3 status 9\n") { // SIGKILL
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task 3 in strict mode was not killed in 10s: %s", b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hostTID is the host tid of thread tid (image) of task t, whose leader
// is host pid pid: the restored threads keep their image tids in the
// restored pid namespace, which NSpid lists last.
func hostTID(t *testing.T, pid int, task *Task, tid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		host := atoi(t, e.Name())
		st := procStatus(t, host)
		ns := st["NSpid"]
		if len(ns) > 0 && ns[len(ns)-1] == fmt.Sprint(tid) {
			return host
		}
	}
	t.Fatalf("task %d: no thread %d among %v", task.PID, tid, ents)
	return 0
}

// readFilters reads the seccomp filters of thread tid, oldest first,
// through PTRACE_SECCOMP_GET_FILTER, and lets the thread go on.
func readFilters(t *testing.T, tid int) [][]byte {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := ptrace(ptraceSeizeReq, tid, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer ptrace(syscall.PTRACE_DETACH, tid, 0, 0)
	if err := ptrace(ptraceInterruptReq, tid, 0, 0); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(tid, &ws, syscall.WALL, nil); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for i := 0; ; i++ {
		buf := make([]byte, 8*4096)
		n, _, errno := syscall.Syscall6(syscall.SYS_PTRACE, 0x420c, uintptr(tid), uintptr(i), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
		if errno == syscall.ENOENT || errno == syscall.EINVAL && i == 0 {
			break // no more (EINVAL: the thread has no filter at all)
		}
		if errno != 0 {
			t.Fatalf("PTRACE_SECCOMP_GET_FILTER %d of thread %d: %v", i, tid, errno)
		}
		out = append(out, buf[:8*n])
	}
	return out
}
