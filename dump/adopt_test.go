package dump

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/test/workloads"
)

// adoptSrc is a tree of three: the init, its child, and the child's
// child, which counts in out.log.
const adoptSrc = `#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	struct timespec tick = { 0, 10 * 1000 * 1000 };

	if (fork() == 0) {
		if (fork() == 0) {
			int fd = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
			char line[32];

			for (unsigned long n = 1;; n++) {
				snprintf(line, sizeof line, "%lu\n", n);
				if (write(fd, line, strlen(line)) < 0)
					return 4;
				nanosleep(&tick, NULL);
			}
		}
		for (;;)
			pause();
	}
	for (;;)
		pause();
}
`

// TestFreezeAdoptions: a task that dies while the tree is being frozen,
// after its parent's children were listed, becomes a zombie (its parent
// is frozen) and gives its own children to the pid namespace's init, the
// root, listed already. The freeze finds them there all the same.
func TestFreezeAdoptions(t *testing.T) {
	bin, err := workloads.BuildSource("adopt", "adopt.c", []byte(adoptSrc), []string{"-static", "-O2"})
	if err != nil {
		t.Fatal(err)
	}
	p := workloads.StartIn(t, bin, t.TempDir())
	var child, grandchild int
	deadline := time.Now().Add(10 * time.Second)
	for grandchild == 0 {
		if kids := childrenOf(t, p.Pid); len(kids) == 1 {
			child = kids[0]
			if g := childrenOf(t, child); len(g) == 1 {
				grandchild = g[0]
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the workload did not start its two children in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	testChildrenListed = func(tk *task) {
		if tk.pid != p.Pid {
			return
		}
		// the root's children are listed: the child dies now, and
		// the grandchild goes to the root
		syscall.Kill(child, syscall.SIGKILL)
		for !slices.Contains(childrenOf(t, p.Pid), grandchild) {
			time.Sleep(time.Millisecond)
		}
	}
	defer func() { testChildrenListed = nil }()
	// ptrace requests come from the thread that seized
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tr, err := freeze(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.thaw()
	var got []string
	for _, tk := range tr.tasks {
		parent := 0
		if tk.parent != nil {
			parent = tk.parent.pid
		}
		got = append(got, fmt.Sprintf("%d<-%d dead=%v", tk.pid, parent, tk.dead != nil))
	}
	want := []string{fmt.Sprintf("%d<-0 dead=false", p.Pid), fmt.Sprintf("%d<-%d dead=true", child, p.Pid),
		fmt.Sprintf("%d<-%d dead=false", grandchild, p.Pid)}
	if !slices.Equal(got, want) {
		t.Errorf("frozen tree %v, want %v", got, want)
	}
}

// childrenOf lists the children of pid's main thread.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}
