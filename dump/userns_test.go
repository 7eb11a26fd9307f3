package dump_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	ipc_desc "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-desc"
	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/userns"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// usernsLogs and userns2Logs are the logs of the userns and userns2
// workloads (test/workloads/src/userns.c, userns2.c).
var (
	usernsLogs  = map[string]check.Next{"out-userns.log": check.Counter, "out-child.log": check.Counter}
	userns2Logs = map[string]check.Next{"out-userns2.log": check.Counter, "out-child.log": check.Counter}
)

// usernsState is what the round trip keeps of the userns workload, read
// from outside: the maps of its root's user namespace, whether every task
// is in it (and it is not ours), and each task's ids, groups and
// capabilities as /proc shows them to us (host ids: the maps' lower side).
func usernsState(t *testing.T, tree map[int]*check.Task) []string {
	t.Helper()
	ours, err := os.Readlink("/proc/self/ns/user")
	if err != nil {
		t.Fatal(err)
	}
	root := tree[1].Host
	rootNS, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", root))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range []string{"uid_map", "gid_map", "setgroups"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", root, f))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f+": "+strings.Join(strings.Fields(string(b)), " "))
	}
	out = append(out, fmt.Sprintf("the root's user namespace is ours: %v", rootNS == ours))
	pids := make([]int, 0, len(tree))
	for pid := range tree {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	for _, pid := range pids {
		lt := tree[pid]
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", lt.Host))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("task %d in the root's user namespace: %v", pid, ns == rootNS))
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", lt.Host))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			for _, k := range []string{"Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"} {
				if strings.HasPrefix(l, k) {
					out = append(out, fmt.Sprintf("task %d %s", pid, strings.Join(strings.Fields(l), " ")))
				}
			}
		}
	}
	return out
}

// TestDumpUserNS dumps the userns workload (left running) and checks what
// CRIU 4.2 writes for such a tree: userns-ID.img with the root's maps as
// we read them, ID the user_ns_id of every task's ids-N.img and not the
// inventory's, and the cores' credentials as the namespace sees them.
func TestDumpUserNS(t *testing.T) {
	p := workloads.Start(t, "userns")
	waitLines(t, p, "out-userns.log", 3)
	waitLines(t, p, "out-child.log", 3)
	imgs := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: imgs, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	rootIDs, err := d.IDs(1)
	if err != nil {
		t.Fatal(err)
	}
	id := rootIDs.GetUserNsId()
	if id == d.Inventory.GetRootIds().GetUserNsId() {
		t.Fatalf("ids-1.img: user_ns_id %d, the inventory's own", id)
	}
	img, err := images.ReadKindFile(filepath.Join(imgs, fmt.Sprintf("userns-%d.img", id)), images.KindUserNS)
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Entries) != 1 {
		t.Fatalf("userns-%d.img: %d entries", id, len(img.Entries))
	}
	e := img.Entries[0].Message.(*userns.UsernsEntry)
	for _, m := range []struct {
		file string
		got  []*userns.UidGidExtent
	}{{"uid_map", e.GetUidMap()}, {"gid_map", e.GetGidMap()}} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", p.Pid, m.file))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, x := range m.got {
			got = append(got, fmt.Sprintf("%d %d %d", x.GetFirst(), x.GetLowerFirst(), x.GetCount()))
		}
		var want []string
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			want = append(want, strings.Join(strings.Fields(l), " "))
		}
		if !slices.Equal(got, want) || len(want) < 3 {
			t.Errorf("userns-%d.img %s: %q, /proc/%d/%s: %q (several extents)", id, m.file, got, p.Pid, m.file, want)
		}
	}
	matches, _ := filepath.Glob(filepath.Join(imgs, "userns-*.img"))
	if len(matches) != 1 {
		t.Errorf("user namespace images %v, want only the root's", matches)
	}
	// The ids the workload gives itself (userns.c), inside.
	want := map[uint32]string{1: "uid 1000 0 1001 0 gid 500 501 502 501 groups [3 501 550]",
		2: "uid 2000 2001 2002 2001 gid 510 511 512 511 groups [2]"}
	for _, pe := range d.Pstree {
		pid := pe.GetPid()
		ids, err := d.IDs(pid)
		if err != nil {
			t.Fatal(err)
		}
		if ids.GetUserNsId() != id {
			t.Errorf("ids-%d.img: user_ns_id %d, want %d", pid, ids.GetUserNsId(), id)
		}
		core, err := d.Core(pid)
		if err != nil {
			t.Fatal(err)
		}
		c := core.GetThreadCore().GetCreds()
		got := fmt.Sprintf("uid %d %d %d %d gid %d %d %d %d groups %v", c.GetUid(), c.GetEuid(), c.GetSuid(), c.GetFsuid(),
			c.GetGid(), c.GetEgid(), c.GetSgid(), c.GetFsgid(), c.GetGroups())
		if got != want[pid] {
			t.Errorf("core-%d.img credentials: %s, want %s", pid, got, want[pid])
		}
	}
}

// TestDumpUserNSRefused: trees crest can not restore are refused, naming
// the task and why, and run on: a task in a user namespace nested in the
// root's own, or in crest's, or further down; a root whose own pid namespace its user
// namespace does not own (made before it); a user namespace whose maps
// were never written.
func TestDumpUserNSRefused(t *testing.T) {
	// ROLE: "nested" forks a child that unshares a user namespace (in
	// the root's), "nested2" one nested in that one; "late" unshares one itself, after its pid namespace
	// was made, and waits for a file "mapped" before it ticks (the test
	// writes the maps, or not: "unmapped").
	src := []byte(`#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include "workload.h"
static int write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY);
	int ok = fd >= 0 && write(fd, s, strlen(s)) == (ssize_t)strlen(s);

	close(fd);
	return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
	int fd = open_log("parent");
	const char *role = argc > 1 ? argv[1] : "nested";
	if (strncmp(role, "nested", 6) == 0) {
		if (fork() == 0) {
			if (unshare(CLONE_NEWUSER))
				_exit(5);
			/* mapped (its own ids only, as it may) to nest another */
			if (strcmp(role, "nested2") == 0 &&
			    (write_file("/proc/self/setgroups", "deny") || write_file("/proc/self/uid_map", "0 0 1") ||
			     write_file("/proc/self/gid_map", "0 0 1") || unshare(CLONE_NEWUSER)))
				_exit(5);
			say(fd, "nested\n");
			for (;;)
				pause();
		}
	} else {
		struct stat st;
		if (unshare(CLONE_NEWUSER))
			_exit(5);
		say(fd, "unshared\n");
		if (strcmp(role, "late") == 0)
			while (stat("mapped", &st))
				usleep(1000);
	}
	for (unsigned long n = 1;; n++) {
		char line[32];
		snprintf(line, sizeof line, "tick %lu\n", n);
		say(fd, line);
		usleep(10000);
	}
}
`)
	bin, err := workloads.BuildSource("usernsrefused", "usernsrefused.c", src, []string{"-static", "-O2"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, role string
		launch     []string // launch's options
		want       func(root, child int) string
	}{
		{"nested in the root's own", "nested", []string{"-U"}, func(_, child int) string {
			return fmt.Sprintf("task %d: user namespace: a nested user namespace is not supported", child)
		}},
		{"nested in crest's", "nested", nil, func(_, child int) string {
			return fmt.Sprintf("task %d: user namespace: a nested user namespace is not supported", child)
		}},
		{"two levels down", "nested2", nil, func(_, child int) string {
			return fmt.Sprintf("task %d: user namespace: a task in a user namespace other than the root's is not supported", child)
		}},
		{"pid namespace not its", "late", nil, func(root, _ int) string {
			return fmt.Sprintf("task %d: pid namespace: of the tree's own but not owned by its user namespace", root)
		}},
		{"maps never written", "unmapped", []string{"-U"}, func(root, _ int) string {
			return fmt.Sprintf("task %d: user namespace: its uid_map or gid_map was never written", root)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := startLaunched(t, dir, append(tc.launch, dir, bin, tc.role)...)
			if !strings.HasPrefix(tc.role, "nested") {
				waitLines(t, p, "out-parent.log", 1)
			}
			if tc.role == "late" {
				for _, f := range []string{"uid_map", "gid_map"} {
					if err := os.WriteFile(fmt.Sprintf("/proc/%d/%s", p.Pid, f), []byte("0 0 1\n"), 0); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.WriteFile(filepath.Join(dir, "mapped"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for strings.HasPrefix(tc.role, "nested") && !slices.Contains(waitLines(t, p, "out-parent.log", 1), "nested") {
				time.Sleep(time.Millisecond) // the child is in its namespace
			}
			dumpRefusedWithChild(t, p, "out-parent.log", func(child int) string { return tc.want(p.Pid, child) })
		})
	}
}

// startLaunched runs test/workloads/src/launch.c with args (its options,
// the directory, the program and its arguments) and kills the tree when
// the test ends, as workloads.Start does for the registered workloads.
func startLaunched(t *testing.T, dir string, args ...string) *workloads.Process {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(workloads.Build(t, "launch"), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("launch %v: %v\n%s", args, err, stderr.Bytes())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(stdout.String()))
	if err != nil {
		t.Fatalf("launch %v: bad pid %q", args, stdout.String())
	}
	p := workloads.Adopt(pid, dir)
	t.Cleanup(func() { p.Kill(t) })
	return p
}

// TestDumpUserNSOwners dumps the userns and userns2 workloads and checks
// that the images hold the owners of the tree's objects as its user
// namespace sees them, the values CRIU 4.2 writes for the same trees
// (criu dump of them, by hand): the uid and euid of the owners for SIGIO,
// the owners of a memfd, of SysV IPC objects (and their creators), of a
// bound unix socket's file, of a pty's ends, of ghost files, of a tmpfs's
// files (in its tarball) and the uid= and gid= options of its mount, and
// net/ipv4/ping_group_range; an owner the namespace does not map as -1
// (a file the test made, which userns2's init holds deleted); and every
// image readable by all (CRIU's restore reads them inside the namespace,
// whose root is not the dumper). Then userns2 is restored and runs on:
// the ghost of the unmapped file is left to the engine, whom the
// namespace does not map either.
func TestDumpUserNSOwners(t *testing.T) {
	bin := cli.Binary(t)
	cli.Subreaper(t)
	for _, tc := range []struct {
		name string
		logs map[string]check.Next
		want []string
	}{
		{"userns", usernsLogs, []string{
			"fown pid 1 uid 1000 euid 0", "fown pid 2 uid 2000 euid 2001",
			"ipc msg uid 5 gid 599 cuid 0 cgid 501", "ipc sem uid 2001 gid 511 cuid 2001 cgid 511",
			"ipc shm uid 1000 gid 500 cuid 0 cgid 501", "memfd owned 2001:511",
			"mount tmpfs size=1024k,mode=751,uid=1000,gid=500", `ping_group_range "500\t510\n"`,
			"tar ./ 1000:500", "tar ./a 1000:500", "tar ./b 5:1", "tar ./link 1001:501", "tar ./root 0:0",
			"tar ./sub/ 2000:502", "tar ./sub/c 2004:550",
		}},
		{"userns2", userns2Logs, []string{
			"fown pid 1 uid 1000 euid 0", "fown pid 2 uid 2000 euid 2001",
			"ghost 0:501 mode 100640", "ghost 2001:511 mode 100604", "ghost 4294967295:4294967295 mode 100644",
			// the master is /dev/ptmx, host root's
			"tty master 4294967295:4294967295", "tty slave 2001:511", "unix g/sock 2001:511",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			// a file of ours: its owner is not mapped in the namespace
			if err := os.WriteFile(filepath.Join(dir, "unmapped"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			opts := []string{"-U"}
			if tc.name == "userns" {
				opts = append(opts, "-n", "-N", "-m")
			}
			p := startLaunched(t, dir, append(opts, dir, workloads.Build(t, tc.name))...)
			for l := range tc.logs {
				waitLines(t, p, l, 3)
			}
			live, err := check.Live(p.Pid)
			if err != nil {
				t.Fatal(err)
			}
			imgs := dumpKilled(t, bin, p, live)
			before := check.Snapshot(t, p.Dir, tc.logs)
			got := imageOwners(t, imgs)
			if !slices.Equal(got, tc.want) {
				t.Errorf("owners in the images:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			ents, err := os.ReadDir(imgs)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if fi, err := e.Info(); err != nil || fi.Mode().Perm() != 0o644 {
					t.Errorf("%s: mode %v (%v), want 0644 as CRIU's", e.Name(), fi.Mode(), err)
				}
			}
			if tc.name != "userns2" {
				return
			}
			d, err := images.Open(imgs)
			if err != nil {
				t.Fatal(err)
			}
			restoreTree(t, bin, imgs, d, p.Dir)
			check.Logs(t, p.Dir, before, tc.logs, time.Second)
		})
	}
}

// imageOwners lists the owners the images in dir hold, sorted.
func imageOwners(t *testing.T, dir string) []string {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	files, err := d.Files()
	if err != nil {
		t.Fatal(err)
	}
	for _, fe := range files {
		if p, _ := images.FileFown(fe); p != nil && (*p).GetPid() != 0 {
			out = append(out, fmt.Sprintf("fown pid %d uid %d euid %d", (*p).GetPid(), (*p).GetUid(), (*p).GetEuid()))
		}
		if fp := fe.GetUsk().GetFilePerms(); fp != nil {
			out = append(out, fmt.Sprintf("unix %s %d:%d", strings.TrimRight(string(fe.GetUsk().GetName()), "\x00"), fp.GetUid(), fp.GetGid()))
		}
	}
	names, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b := filepath.Base(n)
		kinds := map[string]*images.Kind{"ghost-file-": images.KindGhostFile, "ipcns-shm-": images.KindIPCNSShm,
			"ipcns-msg-": images.KindIPCNSMsg, "ipcns-sem-": images.KindIPCNSSem, "memfd.img": images.KindMemfdInode,
			"mountpoints-": images.KindMnts, "netns-": images.KindNetNS, "tty-info.img": images.KindTTYInfo}
		var k *images.Kind
		for prefix, kind := range kinds {
			if strings.HasPrefix(b, prefix) && !strings.HasPrefix(b, "netns-ct") {
				k = kind
			}
		}
		if strings.HasPrefix(b, "tmpfs-dev-") {
			out = append(out, tarOwners(t, n)...)
			continue
		}
		if k == nil {
			continue
		}
		img, err := images.ReadKindFile(n, k)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range img.Entries {
			ipc := func(what string, x *ipc_desc.IpcDescEntry) {
				out = append(out, fmt.Sprintf("ipc %s uid %d gid %d cuid %d cgid %d", what, x.GetUid(), x.GetGid(), x.GetCuid(), x.GetCgid()))
			}
			switch m := e.Message.(type) {
			case *ghost_file.GhostFileEntry:
				out = append(out, fmt.Sprintf("ghost %d:%d mode %o", m.GetUid(), m.GetGid(), m.GetMode()))
			case *ipc_shm.IpcShmEntry:
				ipc("shm", m.GetDesc())
			case *ipc_msg.IpcMsgEntry:
				ipc("msg", m.GetDesc())
			case *ipc_sem.IpcSemEntry:
				ipc("sem", m.GetDesc())
			case *memfd.MemfdInodeEntry:
				out = append(out, fmt.Sprintf("memfd %s %d:%d", m.GetName(), m.GetUid(), m.GetGid()))
			case *mnt.MntEntry:
				if m.GetFstype() == uint32(mnt.Fstype_TMPFS) {
					out = append(out, "mount tmpfs "+m.GetOptions())
				}
			case *netdev.NetnsEntry:
				for _, s := range m.GetIpv4Sysctl() {
					out = append(out, fmt.Sprintf("ping_group_range %q", s.GetSarg()))
				}
			case *tty.TtyInfoEntry:
				end := map[bool]string{true: "master", false: "slave"}[m.GetId()&1 == 1]
				out = append(out, fmt.Sprintf("tty %s %d:%d", end, m.GetUid(), m.GetGid()))
			}
		}
	}
	slices.Sort(out)
	return out
}

// tarOwners lists the owners of the files of a tmpfs tarball.
func tarOwners(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	r := tar.NewReader(z)
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, fmt.Sprintf("tar %s %d:%d", h.Name, h.Uid, h.Gid))
	}
}
