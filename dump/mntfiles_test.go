package dump_test

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/workloads"
)

// criuMntFilesDir is the workload directory CRIU 4.2's images of
// mntfiles were made in (images/testdata/criu-4.2-mntfiles).
const criuMntFilesDir = "/tmp/crest-criu-4.2-mntfiles"

// fifoRecord is what the workload mntfiles keeps in its FIFO.
var fifoRecord = regexp.MustCompile(`^fifo [0-9]{10}\n$`)

// mntFilesShapes are the FIFOs, unix sockets of the image set in dir
// and pty ends, as both dumpers of mntfiles (run in wdir) must write
// them: a pty end's path and the mount point of its mnt_id; a FIFO's
// path, flags, mode and the mount point of its mnt_id (the workload's
// directory as W), and what sat in it; a unix socket's type, state, name,
// directory, file mode, the mount point of its mnt_id, and whether it
// has a peer.
func mntFilesShapes(t *testing.T, dir, wdir string) []string {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	mps, _ := filepath.Glob(filepath.Join(dir, "mountpoints-*.img"))
	if len(mps) != 1 {
		t.Fatalf("mount images %v", mps)
	}
	img, err := images.ReadKindFile(mps[0], images.KindMnts)
	if err != nil {
		t.Fatal(err)
	}
	at := map[int32]string{}
	for _, e := range img.Entries {
		m := e.Message.(*mnt.MntEntry)
		at[int32(m.GetMntId())] = m.GetMountpoint()
	}
	w := func(s string) string {
		if s == wdir || strings.HasPrefix(s, wdir+"/") {
			return "W" + strings.TrimPrefix(s, wdir)
		}
		return s
	}
	mount := func(id *int32) string {
		if id == nil {
			return "no mnt_id"
		}
		if mp, ok := at[*id]; ok {
			return w(mp)
		}
		return fmt.Sprintf("mnt_id %d, not a mount of the namespace", *id)
	}
	data, err := d.FifoData()
	if err != nil {
		t.Fatal(err)
	}
	files, err := d.Files()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, fe := range files {
		if f := fe.GetFifo(); f != nil {
			re, err := d.File(f.GetRegfId())
			if err != nil || re.GetReg() == nil {
				t.Fatalf("FIFO %d: its REG entry %d: %v", f.GetId(), f.GetRegfId(), err)
			}
			r := re.GetReg()
			held := "nothing"
			for _, pd := range data {
				if pd.Entry.GetPipeId() == f.GetPipeId() {
					held = fmt.Sprintf("%d bytes, a record %v", len(pd.Data), fifoRecord.Match(pd.Data))
				}
			}
			out = append(out, fmt.Sprintf("FIFO %s on %s: flags %#o mode %#o holds %s",
				w(r.GetName()), mount(r.MntId), r.GetFlags(), r.GetMode(), held))
		}
		if tt := fe.GetTty(); tt != nil {
			re, err := d.File(tt.GetRegfId())
			if err != nil || re.GetReg() == nil {
				t.Fatalf("TTY %d: its REG entry %d: %v", tt.GetId(), tt.GetRegfId(), err)
			}
			r := re.GetReg()
			out = append(out, fmt.Sprintf("TTY %s on %s: tty_info %d flags %#o mode %#o", r.GetName(), mount(r.MntId), tt.GetTtyInfoId(), r.GetFlags(), r.GetMode()))
		}
		if u := fe.GetUsk(); u != nil {
			name := string(u.GetName())
			s := fmt.Sprintf("unix %s %s name %q dir %q peer %v", images.SockTypeName(u.GetType()), sockState(u.GetState()),
				w(strings.TrimRight(name, "\x00")), w(u.GetNameDir()), u.GetPeer() != 0)
			if len(name) > 0 && name[0] != 0 && (u.GetType() == 2 || u.GetState() != 1) {
				s += fmt.Sprintf(" mode %#o on %s", u.GetFilePerms().GetMode(), mount(u.MntId))
			}
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

func sockState(s uint32) string {
	switch s {
	case 1:
		return "ESTABLISHED"
	case 7:
		return "CLOSE"
	case 10:
		return "LISTEN"
	}
	return fmt.Sprint(s)
}

// TestDumpMntFiles dumps the workload mntfiles, whose FIFO and unix
// sockets bound to paths are on its tmpfs and whose pty is of its own
// devpts, and compares them with CRIU 4.2's images of the same workload:
// the FIFO with its path, mount and data, each socket with its name, mode
// and the mount its file is on, each pty end with its mount.
func TestDumpMntFiles(t *testing.T) {
	netnsRoot(t)
	p := workloads.Start(t, "mntfiles")
	waitLines(t, p, "out-mntfiles.log", 3)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	ours := mntFilesShapes(t, dir, p.Dir)
	theirs := mntFilesShapes(t, filepath.Join("..", "images", "testdata", "criu-4.2-mntfiles", "images"), criuMntFilesDir)
	t.Logf("crest's:\n%s", strings.Join(ours, "\n"))
	if len(ours) != 9 {
		t.Errorf("crest dumped %d FIFO files, unix sockets and pty ends, want 9: %q", len(ours), ours)
	}
	if fmt.Sprint(ours) != fmt.Sprint(theirs) {
		t.Errorf("crest's:\n%s\nCRIU's:\n%s", strings.Join(ours, "\n"), strings.Join(theirs, "\n"))
	}
}
