package dump_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/workloads"
)

// TestDumpSysVShm dumps nsuts, whose init keeps segment 7 attached twice
// (read-only, and read-write cut into three mappings by mprotect), and
// checks the mm image against what the process had: one entry per
// mapping, as CRIU 4.2 writes them (VMA_AREA_REGULAR|VMA_ANON_SHARED|
// VMA_AREA_SYSVIPC, MAP_SHARED|MAP_ANONYMOUS, shmid the segment's id,
// pgoff its offset in the segment, fdflags the attach's open mode), and
// none of their pages in the task's pagemap: the content is the
// segment's, dumped once with the IPC namespace.
func TestDumpSysVShm(t *testing.T) {
	p := workloads.Start(t, "nsuts")
	waitLines(t, p, "out-nsuts.log", 3)
	live := check.SysVMaps(t, p.Pid)
	if len(live) != 4 {
		t.Fatalf("nsuts's SysV mappings: %q, want 4", live)
	}
	imgs := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: imgs, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	for _, l := range waitLines(t, p, "out-nsuts.log", len(waitLines(t, p, "out-nsuts.log", 1))+3) {
		if strings.Contains(l, "CORRUPT") {
			t.Fatalf("after the dump, nsuts wrote %q", l)
		}
	}
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	mm, err := d.MM(1)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var sysv []*vma.VmaEntry
	for _, v := range mm.GetVmas() {
		if images.VMAStatus(v.GetStatus()).Has(images.VMAAreaSysVIPC) {
			sysv = append(sysv, v)
		}
	}
	want := make([]string, len(live))
	for i, l := range live {
		// from maps: range, perms, offset, inode (the id), link mode
		var rng, perms, inode, mode string
		var off uint64
		fmt.Sscanf(l, "%s %s %x %s %s", &rng, &perms, &off, &inode, &mode)
		fdflags := unix.O_RDONLY
		if mode == "600" {
			fdflags = unix.O_RDWR
		}
		prot := unix.PROT_READ
		if perms[1] == 'w' {
			prot |= unix.PROT_WRITE
		}
		want[i] = fmt.Sprintf("%s prot %d flags %#x status %#x shmid %s pgoff %#x fdflags %d", rng, prot,
			unix.MAP_SHARED|unix.MAP_ANONYMOUS, 0x501, inode, off, fdflags)
	}
	for _, v := range sysv {
		got = append(got, fmt.Sprintf("%x-%x prot %d flags %#x status %#x shmid %d pgoff %#x fdflags %d", v.GetStart(), v.GetEnd(),
			v.GetProt(), v.GetFlags(), v.GetStatus(), v.GetShmid(), v.GetPgoff(), v.GetFdflags()))
		if v.Fdflags == nil || v.GetFd() != -1 {
			t.Errorf("vma %#x: fdflags %v, fd %d: want fdflags set and fd -1 as CRIU writes them", v.GetStart(), v.Fdflags, v.GetFd())
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("SysV vmas of mm-1.img:\n%s\nwant (from the process):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	runs, err := d.PageRuns(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		for _, v := range sysv {
			if r.Vaddr < v.GetEnd() && v.GetStart() < r.End() {
				t.Errorf("pagemap-1.img: run %#x-%#x holds pages of the SysV mapping %#x-%#x", r.Vaddr, r.End(), v.GetStart(), v.GetEnd())
			}
		}
	}
}

// TestDumpSysVShmHostIPC: a task with a segment of the host's IPC
// namespace attached (the tree has none of its own) is refused, naming
// the task and the mapping, as CRIU refuses it; the tree runs on.
func TestDumpSysVShmHostIPC(t *testing.T) {
	src := []byte(`#include <stdio.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>
#include "workload.h"
int main(void)
{
	int fd = open_log("shm");
	int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
	char *p = id < 0 ? (void *)-1 : shmat(id, NULL, 0);
	if (p == (void *)-1)
		_exit(5);
	shmctl(id, IPC_RMID, NULL); /* gone with the process */
	for (unsigned long n = 1;; n++) {
		char line[32];
		p[0] = (char)n;
		snprintf(line, sizeof line, "tick %lu\n", n);
		say(fd, line);
		usleep(10000);
	}
}
`)
	bin, err := workloads.BuildSource("hostshm", "hostshm.c", src, []string{"-static", "-O2"})
	if err != nil {
		t.Fatal(err)
	}
	p := workloads.StartIn(t, bin, t.TempDir())
	waitLines(t, p, "out-shm.log", 3)
	maps := check.SysVMaps(t, p.Pid)
	if len(maps) != 1 {
		t.Fatalf("SysV mappings %q, want one", maps)
	}
	rng, _, _ := strings.Cut(maps[0], " ")
	parent := t.TempDir()
	_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
	refusedCleanly(t, err, p, parent, "out-shm.log", "task 1: mapping "+rng+" (/SYSV00000000 (deleted)): SysV shared memory attached in an IPC namespace that is not the tree's own")
}
