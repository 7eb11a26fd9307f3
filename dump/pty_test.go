package dump_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/workloads"
)

// TestDumpPTYPair dumps ptypair with --leave-running: tty-info.img has
// the master (id index<<1|1: locked, packet mode, the child's session,
// the grandchild's group) and the slave (index<<1), files.img a TTY
// entry with a REG entry of /dev/ptmx and of /dev/pts/N, tty-data.img
// whole messages queued both ways, the master's after its packet header
// as in CRIU's images; and the tree, which checks the
// sequence of its messages, runs on without losing any.
func TestDumpPTYPair(t *testing.T) {
	p := workloads.Start(t, "ptypair")
	logs := map[string]check.Next{"out-parent.log": check.Counter, "out-child.log": check.Counter, "out-fg.log": check.Counter}
	for l := range logs {
		waitLines(t, p, l, 5)
	}
	imgs := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: imgs, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	before := check.Snapshot(t, p.Dir, logs)
	check.Logs(t, p.Dir, before, logs, time.Second)

	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := d.TTYInfo()
	if err != nil {
		t.Fatal(err)
	}
	byID := map[uint32]*tty.TtyInfoEntry{}
	for _, e := range infos {
		byID[e.GetId()] = e
	}
	var master *tty.TtyInfoEntry
	for id, e := range byID {
		if id&1 == 1 {
			master = e
		}
	}
	if master == nil || len(byID) != 2 || byID[master.GetId()&^1] == nil {
		t.Fatalf("tty-info.img: %v; want a master and its slave", infos)
	}
	index := master.GetPty().GetIndex()
	if master.GetId() != index<<1|1 || !master.GetLocked() || !master.GetPacketMode() || master.GetSid() != 2 || master.GetPgrp() != 3 {
		t.Errorf("master %v: want id %d, locked, packet mode, session 2 (the child), group 3 (the grandchild)", master, index<<1|1)
	}
	if ws := master.GetWinsize(); ws.GetWsRow() != 37 || ws.GetWsCol() != 111 {
		t.Errorf("window size %v, want 37x111", ws)
	}
	names := map[string]bool{}
	files, err := d.Files()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f.GetType() == fdinfo.FdTypes_TTY {
			reg, err := d.File(f.GetTty().GetRegfId())
			if err != nil {
				t.Fatal(err)
			}
			names[reg.GetReg().GetName()] = true
		}
	}
	if !names["/dev/ptmx"] || len(names) != 2 {
		t.Errorf("TTY files at %v; want /dev/ptmx and the slave", names)
	}
	data, err := d.TTYData()
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint32]string{}
	for _, e := range data {
		got[e.GetTtyId()] = string(e.GetData())
	}
	// the master is in packet mode: its entry is what its read gave, as
	// CRIU writes it, the packet header (TIOCPKT_DATA) before the data
	if m, s := got[index<<1|1], got[index<<1]; !strings.HasPrefix(m, "\x00c") || !strings.HasPrefix(s, "p") || len(m)%16 != 1 || len(s)%16 != 0 {
		t.Errorf("tty-data.img: master %q, slave %q; want a packet header and echoes queued in the master, messages in the slave, whole", m, s)
	}
}
