package example_test

import (
	"testing"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/example"
)

// TestWriteOpen writes the example and reads every image of it back.
func TestWriteOpen(t *testing.T) {
	dir := t.TempDir()
	if err := example.Write(dir); err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Pstree) != len(example.Tree) {
		t.Fatalf("pstree has %d tasks, want %d", len(d.Pstree), len(example.Tree))
	}
	for i, want := range example.Tree {
		got := d.Pstree[i]
		if got.GetPid() != want.Pid || got.GetPpid() != want.Ppid || got.GetPgid() != want.Pgid || got.GetSid() != want.Sid {
			t.Errorf("task %d: got pid/ppid/pgid/sid %d/%d/%d/%d", want.Pid, got.GetPid(), got.GetPpid(), got.GetPgid(), got.GetSid())
		}
		for _, tid := range want.Threads {
			c, err := d.Core(tid)
			if err != nil {
				t.Fatal(err)
			}
			if c.GetThreadCore().GetComm() != want.Comm {
				t.Errorf("thread %d: comm %q, want %q", tid, c.GetThreadCore().GetComm(), want.Comm)
			}
		}
		m, err := d.MM(want.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.GetVmas()) != 3 {
			t.Errorf("task %d: %d VMAs, want 3", want.Pid, len(m.GetVmas()))
		}
		pm, err := d.Pagemap(want.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if pm == nil || len(pm.Entries) != 3 || pm.Entries[1].GetNrPages() != uint64(want.HeapPages) {
			t.Errorf("task %d: pagemap %+v", want.Pid, pm)
		}
		ids, err := d.IDs(want.Pid)
		if err != nil {
			t.Fatal(err)
		}
		fds, err := d.Fdinfo(ids.GetFilesId())
		if err != nil {
			t.Fatal(err)
		}
		if len(fds) != 4 {
			t.Errorf("task %d: %d fds, want 4", want.Pid, len(fds))
		}
		for _, fd := range fds {
			if _, err := d.File(fd.GetId()); err != nil {
				t.Errorf("task %d fd %d: %v", want.Pid, fd.GetFd(), err)
			}
		}
	}
}
