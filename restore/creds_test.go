package restore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	criu_creds "github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// Capabilities the cases take away or give.
const (
	capNetBindService = 10
	capNetRaw         = 13
	capSysPtrace      = 19
)

// TestRestoreCredsDiffer restores edited copies of the threads fixture
// whose credentials differ from the agent's in one part each, and checks
// through /proc that every thread of the restored task has the image's.
// The agent skips each part of the creds step that equals what it already
// has (creds.c): the base of every case is the engine's own credentials,
// which the agent keeps across its exec as root, so each case tells
// whether that one part still gets restored.
func TestRestoreCredsDiffer(t *testing.T) {
	needRoot(t)
	base := ownCreds(t)
	tests := []struct {
		name        string
		edit        func(c *Creds)
		notDumpable bool // the mm's dumpable flag is 0 in the image
	}{
		{"as the agent", func(c *Creds) {}, false},
		{"groups", func(c *Creds) { c.Groups = []uint32{1000, 1002} }, false},
		{"ids", func(c *Creds) { setIDs(c) }, false},
		{"ids, not dumpable", func(c *Creds) { setIDs(c) }, true},
		{"gids", func(c *Creds) { c.GID, c.EGID, c.SGID, c.FSGID = 1000, 1000, 1001, 1000 }, false},
		{"fsuid and fsgid", func(c *Creds) { c.FSUID, c.FSGID = 1000, 1000 }, false},
		{"saved uid", func(c *Creds) { c.SUID = 1000 }, false},
		// Not visible in /proc: the restore must just go through.
		{"securebits", func(c *Creds) { c.Secbits = 1 << 4 /* SECBIT_KEEP_CAPS */ }, false},
		{"effective", func(c *Creds) { c.CapEff &^= 1 << capSysAdmin }, false},
		{"permitted", func(c *Creds) { c.CapPrm &^= 1<<capSysAdmin | 1<<capNetRaw; c.CapEff = c.CapPrm }, false},
		{"inheritable", func(c *Creds) { c.CapInh = 1 << capNetBindService }, false},
		{"ambient", func(c *Creds) { c.CapInh, c.CapAmb = 1<<capNetBindService, 1<<capNetBindService }, false},
		{"bounding set", func(c *Creds) { c.CapBnd = base.CapBnd &^ (1<<capSysPtrace | 1<<capNetRaw) }, false},
		{"no_new_privs", func(c *Creds) { c.NoNewPrivs = true }, false},
		{"ids and capabilities", func(c *Creds) {
			setIDs(c)
			c.Groups = []uint32{1000}
			c.CapInh, c.CapPrm, c.CapEff, c.CapAmb = 1<<capNetBindService, 1<<capNetBindService, 1<<capNetBindService, 1<<capNetBindService
			c.CapBnd = 1<<capNetBindService | 1<<capNetRaw
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := base
			want.Groups = append([]uint32(nil), base.Groups...)
			tt.edit(&want)
			imgs := fixture.CopyImages(t, "threads")
			writeCreds(t, imgs, want, !tt.notDumpable)
			dir := installFixture(t, "threads")
			p := planDir(t, imgs)
			if !reflect.DeepEqual(p.Tasks[0].Creds, want) {
				t.Fatalf("planned creds %+v, want %+v", p.Tasks[0].Creds, want)
			}
			r, err := Start(context.Background(), p, Options{})
			if err != nil {
				t.Fatal(err)
			}
			host := abortAtCleanup(t, r, p)[0]
			checkThreadCreds(t, host, want, len(p.Tasks[0].Threads))
			// /proc/PID/environ is the task's euid's while it is
			// dumpable, root's when not (/proc/PID itself is always
			// the euid's): a new euid resets the flag, and the
			// image's must be set again after it.
			var st syscall.Stat_t
			environ := fmt.Sprintf("/proc/%d/environ", host)
			if err := syscall.Stat(environ, &st); err != nil {
				t.Fatal(err)
			}
			if owner := map[bool]uint32{true: want.EUID, false: 0}[!tt.notDumpable]; st.Uid != owner {
				t.Errorf("%s owned by uid %d, want %d (dumpable %v)", environ, st.Uid, owner, !tt.notDumpable)
			}
			checkThreadLogs(t, dir, 20)
		})
	}
}

func setIDs(c *Creds) {
	c.UID, c.EUID, c.SUID, c.FSUID = 1000, 1000, 1000, 1000
	c.GID, c.EGID, c.SGID, c.FSGID = 1000, 1000, 1001, 1000
}

// ownCreds reads the test process's credentials, the engine's.
func ownCreds(t *testing.T) Creds {
	t.Helper()
	st := procStatus(t, os.Getpid())
	ids := func(k string) []uint32 {
		var v []uint32
		for _, f := range st[k] {
			n, err := strconv.ParseUint(f, 10, 32)
			if err != nil {
				t.Fatalf("/proc/self/status: %s %v: %v", k, st[k], err)
			}
			v = append(v, uint32(n))
		}
		return v
	}
	hex := func(k string) uint64 {
		n, err := strconv.ParseUint(strings.Join(st[k], ""), 16, 64)
		if err != nil {
			t.Fatalf("/proc/self/status: %s %v: %v", k, st[k], err)
		}
		return n
	}
	u, g := ids("Uid"), ids("Gid")
	secbits, err := unix.PrctlRetInt(unix.PR_GET_SECUREBITS, 0, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return Creds{
		UID: u[0], EUID: u[1], SUID: u[2], FSUID: u[3],
		GID: g[0], EGID: g[1], SGID: g[2], FSGID: g[3],
		CapInh: hex("CapInh"), CapPrm: hex("CapPrm"), CapEff: hex("CapEff"), CapBnd: hex("CapBnd"), CapAmb: hex("CapAmb"),
		Secbits: uint32(secbits), Groups: ids("Groups"), NoNewPrivs: st["NoNewPrivs"][0] == "1",
	}
}

// writeCreds puts c into the thread_core of every core-TID.img of imgs (CRIU
// dumps them per thread), and the dumpable flag into mm-1.img.
func writeCreds(t *testing.T, imgs string, c Creds, dumpable bool) {
	t.Helper()
	words := func(v uint64) []uint32 { return []uint32{uint32(v), uint32(v >> 32)} }
	cores, err := filepath.Glob(filepath.Join(imgs, "core-*.img"))
	if err != nil || len(cores) == 0 {
		t.Fatalf("no core images in %s (%v)", imgs, err)
	}
	nnp := uint32(0)
	if c.NoNewPrivs {
		nnp = 1
	}
	for _, path := range cores {
		editImage(t, imgs, filepath.Base(path), func(img *images.Image) {
			e := img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore.Creds
			*e = criu_creds.CredsEntry{
				Uid: proto.Uint32(c.UID), Euid: proto.Uint32(c.EUID), Suid: proto.Uint32(c.SUID), Fsuid: proto.Uint32(c.FSUID),
				Gid: proto.Uint32(c.GID), Egid: proto.Uint32(c.EGID), Sgid: proto.Uint32(c.SGID), Fsgid: proto.Uint32(c.FSGID),
				CapInh: words(c.CapInh), CapPrm: words(c.CapPrm), CapEff: words(c.CapEff), CapBnd: words(c.CapBnd), CapAmb: words(c.CapAmb),
				Secbits: proto.Uint32(c.Secbits), Groups: c.Groups, NoNewPrivs: proto.Uint32(nnp),
				LsmProfile: e.LsmProfile, LsmSockcreate: e.LsmSockcreate, ApparmorData: e.ApparmorData,
			}
		})
	}
	editImage(t, imgs, "mm-1.img", func(img *images.Image) {
		v := int32(0)
		if dumpable {
			v = 1
		}
		img.Entries[0].Message.(*mm.MmEntry).Dumpable = proto.Int32(v)
	})
}

// checkThreadCreds compares the credentials of every thread of host with c.
func checkThreadCreds(t *testing.T, host int, c Creds, nrThreads int) {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", host))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != nrThreads {
		t.Errorf("%d threads, want %d", len(ents), nrThreads)
	}
	want := credsStatus(c)
	for _, e := range ents {
		f, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", host, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		st := map[string][]string{}
		for _, l := range strings.Split(string(f), "\n") {
			k, v, _ := strings.Cut(l, ":")
			st[k] = strings.Fields(v)
		}
		for k, w := range want {
			if got := strings.Join(st[k], " "); got != w {
				t.Errorf("thread %s: %s %q, want %q", e.Name(), k, got, w)
			}
		}
	}
}
