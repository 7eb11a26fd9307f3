package dump_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	ipc_var "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-var"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/utsns"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/workloads"
)

// TestDumpNamespaces dumps nsuts (test/workloads/src/nsuts.c), in UTS and
// IPC namespaces of its own, leaving it running: the images hold its
// names, IPC sysctls and SysV objects with their ids as CRIU 4.2 writes
// them (ids-1.img's namespace ids, not the inventory's), the segments'
// contents among them, and the dump changed nothing the workload checks
// (it goes on, and its segments still hold what it wrote).
func TestDumpNamespaces(t *testing.T) {
	p := workloads.Start(t, "nsuts")
	waitLines(t, p, "out-nsuts.log", 3)
	imgs := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: imgs, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	n := len(waitLines(t, p, "out-nsuts.log", 1))
	if err := os.WriteFile(filepath.Join(p.Dir, "check-shm"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitLines(t, p, "out-shm.log", 1)
	for _, l := range append(waitLines(t, p, "out-nsuts.log", n+5), waitLines(t, p, "out-shm.log", 1)...) {
		if strings.Contains(l, "CORRUPT") {
			t.Fatalf("after the dump, nsuts wrote %q", l)
		}
	}

	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := d.IDs(1)
	if err != nil {
		t.Fatal(err)
	}
	own := d.Inventory.GetRootIds()
	if ids.GetUtsNsId() != 11 || ids.GetIpcNsId() != 10 || own.GetUtsNsId() != 4 || own.GetIpcNsId() != 3 {
		t.Errorf("uts, ipc namespace ids: tree %d, %d; crest's %d, %d; want 11, 10 and 4, 3 as CRIU numbers them",
			ids.GetUtsNsId(), ids.GetIpcNsId(), own.GetUtsNsId(), own.GetIpcNsId())
	}
	img, err := images.ReadKindFile(filepath.Join(imgs, "utsns-11.img"), images.KindUTSNS)
	if err != nil {
		t.Fatal(err)
	}
	if u := img.Entries[0].Message.(*utsns.UtsnsEntry); u.GetNodename() != "crest-nsuts" || u.GetDomainname() != "nsuts.crest" {
		t.Errorf("utsns-11.img: %v", u)
	}
	img, err = images.ReadKindFile(filepath.Join(imgs, "ipcns-var-10.img"), images.KindIPCVar)
	if err != nil {
		t.Fatal(err)
	}
	v := img.Entries[0].Message.(*ipc_var.IpcVarEntry)
	if got := fmt.Sprint(v.GetSemCtls(), v.GetMsgCtlmax(), v.GetMsgCtlmnb(), v.GetMsgCtlmni(), v.GetShmCtlmax(), v.GetShmCtlall(),
		v.GetShmCtlmni(), v.GetMqQueuesMax(), v.GetMqMsgMax(), v.GetMqMsgsizeMax(), v.GetMqMsgDefault(), v.GetMqMsgsizeDefault(),
		v.ShmNextId, v.SemNextId, v.MsgNextId); got != "[300 40000 64 200] 4000 20000 1000 1073741824 2097152 2048 77 12 9000 9 7000 <nil> <nil> <nil>" {
		t.Errorf("ipcns-var-10.img: %s", got)
	}

	// The objects as the restore reads them.
	pl, err := restore.NewPlan(d)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range pl.IPC.Shm {
		runs := ""
		for _, r := range s.Runs {
			runs += fmt.Sprintf(" %#x-%#x", r.Vaddr, r.End())
		}
		got = append(got, fmt.Sprintf("shm %d %#x %d:%d %o %d%s", s.ID, uint32(s.Key), s.UID, s.GID, s.Mode&0o777, s.Size, runs))
		pages, err := images.OpenPages(s.Runs)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4096)
		if _, err := pages.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		pages.Close()
		// nsuts's pattern(seg, off): seg*37 + off*7 + off/4096
		seg := map[int]int{0: 1, 7: 0}[s.ID]
		for off, c := range b {
			if want := byte(seg*37 + off*7); c != want {
				t.Errorf("shm %d: byte %d is %#x, want %#x", s.ID, off, c, want)
				break
			}
		}
	}
	for _, s := range pl.IPC.Sem {
		got = append(got, fmt.Sprintf("sem %d %#x %d:%d %o %v", s.ID, uint32(s.Key), s.UID, s.GID, s.Mode&0o777, s.Values))
	}
	for _, q := range pl.IPC.Msg {
		got = append(got, fmt.Sprintf("msg %d %#x %d:%d %o", q.ID, uint32(q.Key), q.UID, q.GID, q.Mode&0o777))
		for _, m := range q.Messages {
			got = append(got, fmt.Sprintf("%d:%d", m.Type, len(m.Text)))
		}
	}
	want := "shm 0 0x0 0:0 600 8192 0x0-0x1000|shm 7 0x4e535531 1000:1001 640 12388 0x0-0x1000 0x2000-0x4000|" +
		"sem 3 0x4e535532 1002:1003 660 [1 2 3 40 500]|msg 5 0x4e535533 1004:1005 620|1:5|2:5|1:7|3:300|4:0"
	if strings.Join(got, "|") != want {
		t.Errorf("SysV objects:\n%s\nwant\n%s", strings.Join(got, "|"), want)
	}
}

// TestDumpNestedUTS: a task in a UTS namespace other than the root's is
// refused, naming it, whether the root has one of its own or not, and the
// tree runs on.
func TestDumpNestedUTS(t *testing.T) {
	src := []byte(`#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <unistd.h>
#include "workload.h"
int main(void)
{
	int fd = open_log("parent");
	if (fork() == 0) {
		if (unshare(CLONE_NEWUTS))
			_exit(5);
		for (;;)
			pause();
	}
	for (unsigned long n = 1;; n++) {
		char line[32];
		snprintf(line, sizeof line, "tick %lu\n", n);
		say(fd, line);
		usleep(10000);
	}
}
`)
	bin, err := workloads.BuildSource("nesteduts", "nesteduts.c", src, []string{"-static", "-O2"})
	if err != nil {
		t.Fatal(err)
	}
	p := workloads.StartIn(t, bin, t.TempDir())
	dumpRefusedWithChild(t, p, "out-parent.log", func(child int) string {
		return fmt.Sprintf("task %d: uts namespace: a nested uts namespace is not supported", child)
	})
}

// nsutsState is what the roundtrip keeps of nsuts: the names, IPC
// sysctls and SysV objects of its root's namespaces (ipcs from inside
// them) and the contents of its segments (hashed), read from outside the
// tree, which may be stopped.
func nsutsState(t *testing.T, tree map[int]*check.Task) []string {
	t.Helper()
	root := tree[1].Host
	script := "hostname; domainname; cat /proc/sys/kernel/sem /proc/sys/kernel/msg* /proc/sys/kernel/shm* /proc/sys/fs/mqueue/*; " +
		"ipcs -m | awk '{print $1, $2, $3, $4, $5}'; ipcs -s; ipcs -q"
	out, err := exec.Command("nsenter", "-t", fmt.Sprint(root), "-u", "-i", "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter %d: %v\n%s", root, err, out)
	}
	state := strings.Split(strings.TrimSpace(string(out)), "\n")
	shm, err := shmContents(root)
	if err != nil {
		t.Fatal(err)
	}
	return append(state, shm...)
}

// shmContents hashes every segment of pid's IPC namespace: on a locked
// thread in that namespace, each attached read-only for the read; the
// thread goes back to ours before it is let go.
func shmContents(pid int) ([]string, error) {
	type result struct {
		out []string
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		back, err := os.Open("/proc/thread-self/ns/ipc")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer back.Close()
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer unix.Close(pidfd)
		var r result
		if r.err = unix.Setns(pidfd, unix.CLONE_NEWIPC); r.err == nil {
			r.out, r.err = hashSegments()
		}
		if err := unix.Setns(int(back.Fd()), unix.CLONE_NEWIPC); err != nil {
			r.err = errors.Join(r.err, err) // stays locked: the thread ends
		} else {
			runtime.UnlockOSThread()
		}
		done <- r
	}()
	r := <-done
	return r.out, r.err
}

func hashSegments() ([]string, error) {
	b, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
		var key, id int
		if _, err := fmt.Sscan(l, &key, &id); err != nil {
			return nil, fmt.Errorf("/proc/sysvipc/shm: %q: %w", l, err)
		}
		mem, err := unix.SysvShmAttach(id, 0, unix.SHM_RDONLY)
		if err != nil {
			return nil, fmt.Errorf("shmat %d: %w", id, err)
		}
		out = append(out, fmt.Sprintf("shm %d: %x", id, sha256.Sum256(mem)))
		unix.SysvShmDetach(mem)
	}
	return out, nil
}

// TestNsutsStateSees checks that nsutsState tells two states of nsuts
// apart: before and after a semaphore set was added to its namespace.
func TestNsutsStateSees(t *testing.T) {
	p := workloads.Start(t, "nsuts")
	waitLines(t, p, "out-nsuts.log", 3)
	tree := map[int]*check.Task{1: {Host: p.Pid, PID: 1}}
	was := nsutsState(t, tree)
	if len(was) < 20 || !strings.Contains(strings.Join(was, "\n"), "crest-nsuts") {
		t.Fatalf("state of nsuts: %q", was)
	}
	out, err := exec.Command("nsenter", "-t", fmt.Sprint(p.Pid), "-i", "ipcmk", "-S", "1").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if now := nsutsState(t, tree); strings.Join(now, "\n") == strings.Join(was, "\n") {
		t.Errorf("one more semaphore set, the same state: %q", now)
	}
}
