package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

var procfdsLogs = map[string]check.Next{"out-parent.log": check.Counter, "out-child.log": check.Counter}

// procfdsFiles are the files of procfds's /proc/PID, by path, with the
// task each is of.
var procfdsFiles = map[string]int{"/proc/1/status": 1, "/proc/1/cmdline": 1, "/proc/1/fd": 1,
	"/proc/2/status": 2, "/proc/2/stat": 2, "/proc/2/fd": 2}

// startHere starts bin with args as a session leader in a directory of
// its own, in our pid namespace (not a new one, as workloads start), with
// fds 0-2 on /dev/null. It returns the process and its directory; the
// test kills and reaps what is left of its process group.
func startHere(t *testing.T, bin string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// its group: the process and the children it forked; the
		// children come to us (cli.Subreaper) or to init
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		for {
			if _, err := syscall.Wait4(-cmd.Process.Pid, nil, syscall.WALL, nil); err != syscall.EINTR && err != nil {
				break
			}
		}
	})
	return cmd, dir
}

// childOf returns the one child of pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		t.Fatalf("children of %d: %q, want one", pid, b)
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// TestRestoreProcFiles restores procfds, whose init and child hold files
// of their /proc/PID directories, from crest dump's images: in pid and
// mount namespaces of its own with its own proc (as every workload; the
// files opened through the tree's proc), and in our pid namespace with
// our /proc (opened through the tasks' pids there, the images'). Planning
// finds each file's task; the engine opens the files after FORKING; the
// restored tasks find them describing the right process, every tick.
func TestRestoreProcFiles(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) (imgs, dir string)
		mnt   bool
	}{
		{"own namespaces and proc", func(t *testing.T) (string, string) {
			p, imgs := dumpedWorkload(t, "procfds", procfdsLogs, 3, dump.Options{})
			return imgs, p.Dir
		}, true},
		{"our pid namespace and proc", func(t *testing.T) (string, string) {
			cli.Subreaper(t) // the child comes to us when the dump kills its parent
			cmd, dir := startHere(t, workloads.Build(t, "procfds"), "-n")
			p := workloads.Adopt(cmd.Process.Pid, dir)
			for l := range procfdsLogs {
				if out := waitLog(t, dir, l, 0, lines(3)); strings.Contains(out, "CORRUPT") {
					t.Fatalf("%s: %s", l, out)
				}
			}
			child := childOf(t, p.Pid)
			imgs := filepath.Join(t.TempDir(), "images")
			if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: imgs}); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()
			syscall.Wait4(child, nil, syscall.WALL, nil)
			if !workloads.WaitGone(child, 10*time.Second) {
				t.Fatalf("the dumped child %d still exists", child)
			}
			return imgs, dir
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imgs, dir := tc.start(t)
			p := planDir(t, imgs)
			if (p.Mnt != nil) != tc.mnt {
				t.Fatalf("the plan has a mount namespace: %v, want %v", p.Mnt != nil, tc.mnt)
			}
			got := map[string]int{}
			for _, f := range p.Files {
				if f.Proc != nil {
					got[f.Path] = f.Proc.Task.PID
				}
			}
			// procfds's init is 1 and its child 2 in the tree's pid
			// namespace; the images name the tasks by their pids
			want := map[string]int{}
			for path, pid := range procfdsFiles {
				task := p.Tasks[pid-1]
				want[strings.Replace(path, "/"+strconv.Itoa(pid)+"/", "/"+strconv.Itoa(task.PID)+"/", 1)] = task.PID
			}
			for path, pid := range want {
				if got[path] != pid {
					t.Errorf("%s: planned as a file of task %d, want %d (all: %v)", path, got[path], pid, got)
				}
			}
			if len(got) != len(procfdsFiles) {
				t.Errorf("files of /proc/PID: %v, want %d", got, len(procfdsFiles))
			}
			from := map[string]int{}
			for l := range procfdsLogs {
				from[l] = logSize(dir, l)
			}
			r, err := Start(context.Background(), p, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var hosts []int
			for _, task := range p.Tasks {
				hosts = append(hosts, r.HostPID(task.PID))
			}
			r.Detach()
			// every task, as the root is not its pid namespace's init
			// in our pid namespace; they come to us (cli.Subreaper)
			t.Cleanup(func() {
				for _, h := range hosts {
					syscall.Kill(h, syscall.SIGKILL)
				}
				for _, h := range hosts {
					syscall.Wait4(h, nil, syscall.WALL, nil)
				}
				if !workloads.WaitGone(hosts[0], 10*time.Second) || !workloads.WaitGone(hosts[1], 10*time.Second) {
					t.Errorf("the restored tree %v is still there", hosts)
				}
			})
			for l := range procfdsLogs {
				if out := waitLog(t, dir, l, from[l], lines(5)); strings.Contains(out, "CORRUPT") {
					t.Fatalf("the restored procfds wrote to %s:\n%s", l, out)
				}
			}
			// Each fd is a file of the tree's proc, by the name the
			// images have, in the task it names.
			for i, task := range p.Tasks {
				for _, fd := range task.FDs {
					if fd.File.Proc == nil {
						continue
					}
					link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", hosts[i], fd.FD))
					if err != nil || link != fd.File.Path {
						t.Errorf("task %d fd %d: %q (%v), the images have %q", task.PID, fd.FD, link, err, fd.File.Path)
					}
				}
			}
		})
	}
}

// procRefusals is a program of the shapes of /proc files a restore could
// not open, in our pid namespace (argv[1] says which): a file of a thread
// that is not its task's leader, and one of a child gone since.
const procRefusals = `#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile pid_t tid;

static void *thread(void *arg)
{
	(void)arg;
	tid = gettid();
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	char path[64];
	pthread_t th;
	int log = open("out.log", O_WRONLY | O_APPEND | O_CREAT, 0644);

	if (argc < 2 || log != 3)
		return 2;
	if (!strcmp(argv[1], "thread")) {
		if (pthread_create(&th, NULL, thread, NULL))
			return 2;
		while (!tid)
			usleep(1000);
		snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
	} else {
		pid_t c = fork();

		if (c == 0)
			_exit(0);
		snprintf(path, sizeof path, "/proc/%d/status", (int)c);
		if (open(path, O_RDONLY) != 4 || waitpid(c, NULL, 0) != c)
			return 2;
		path[0] = 0;
	}
	if (path[0] && open(path, O_RDONLY) != 4)
		return 2;
	for (unsigned long n = 1;; n++) {
		dprintf(log, "tick %lu\n", n);
		usleep(1000);
	}
}
`

// TestProcFilesRefused: files of /proc/PID that a restore could not open
// again are refused by crest dump, naming the task, the fd, the file and
// why, and by planning when an image set has them (edited from crest
// dump's images of procfds and counter).
func TestProcFilesRefused(t *testing.T) {
	needRoot(t)
	t.Run("dump", func(t *testing.T) {
		bin, err := workloads.BuildSource("procrefusals", "procrefusals.c", []byte(procRefusals), []string{"-static", "-O2"})
		if err != nil {
			t.Fatal(err)
		}
		host := workloads.StartTicking(t, "proc", "hostproc", workloads.TickSource{Setup: `if (open("/proc/self/status", O_RDONLY) != 4)
		return 5;`})
		for _, tc := range []struct {
			name, log string
			pid       func(t *testing.T) (int, string)
			want      string
		}{
			{"crest's proc in a pid namespace", "out-proc.log", func(t *testing.T) (int, string) { return host.Pid, host.Dir },
				"in a proc of another pid namespace than the tree's"},
			{"thread", "out.log", func(t *testing.T) (int, string) {
				cmd, dir := startHere(t, bin, "thread")
				return cmd.Process.Pid, dir
			}, "a file of thread "},
			{"gone", "out.log", func(t *testing.T) (int, string) {
				cmd, dir := startHere(t, bin, "gone")
				return cmd.Process.Pid, dir
			}, "which is gone (CRIU's dead process remaps are not supported)"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				pid, dir := tc.pid(t)
				p := workloads.Adopt(pid, dir)
				waitLogLines(t, p, tc.log, 3)
				parent := t.TempDir()
				_, err := dump.Dump(context.Background(), dump.Options{Pid: pid, Dir: filepath.Join(parent, "images")})
				var ue *dump.UnsupportedError
				if !errors.As(err, &ue) {
					t.Fatalf("dump: %v, want an UnsupportedError", err)
				}
				for _, want := range []string{"fd 4", "/status", tc.want} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not say %q", err, want)
					}
				}
				if ents, _ := os.ReadDir(parent); len(ents) != 0 {
					t.Errorf("the failed dump left %v in %s", ents, parent)
				}
				if !workloads.Alive(pid) {
					t.Errorf("tree %d died after the failed dump", pid)
				}
			})
		}
	})

	t.Run("plan", func(t *testing.T) {
		_, procfds := dumpedWorkload(t, "procfds", procfdsLogs, 3, dump.Options{})
		_, counter := dumpedWorkload(t, "counter", map[string]check.Next{"out.log": check.Counter}, 3, dump.Options{})
		rename := func(from, to string) func(img *images.Image) {
			return func(img *images.Image) {
				for _, e := range img.Entries {
					if r := e.Message.(*fdinfo.FileEntry).GetReg(); r != nil && (r.GetName() == from || strings.HasSuffix(r.GetName(), from)) {
						r.Name = proto.String(to)
					}
				}
			}
		}
		for _, tc := range []struct {
			name, imgs string
			edit       func(img *images.Image)
			want       string
		}{
			{"no such pid", procfds, rename("/proc/2/stat", "/proc/7/stat"), "file 6 (/proc/7/stat): no process 7 in the tree's pid namespace"},
			{"thread", procfds, rename("/proc/2/stat", "/proc/2/task/9/stat"), "(/proc/2/task/9/stat): a file of thread 9 of task 2"},
			{"crest's proc in a pid namespace", counter, rename("/out.log", "/proc/1/status"),
				"(/proc/1/status): in crest's /proc, but the tree has a pid namespace of its own and no mount namespace"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				dir := fixture.CopyDir(t, tc.imgs)
				editImage(t, dir, "files.img", tc.edit)
				_, err := openPlan(t, dir)
				var pe *PlanError
				if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("plan: %v, want a PlanError saying %q", err, tc.want)
				}
			})
		}
	})
}
