package dump

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crest-restore/crest/test/workloads"
)

// TestCarriedXState: a thread's xsave state passes when every component
// in use has a field in CRIU's images (x87, SSE, AVX, MPX, AVX-512,
// PKRU) and is refused, naming the others, when AMX tiles or APX
// registers are in use.
func TestCarriedXState(t *testing.T) {
	for _, bv := range []uint64{0, 0x3, 0xe7, 0x2ff} {
		if err := carriedXState(bv); err != nil {
			t.Errorf("xstate_bv %#x: %v", bv, err)
		}
	}
	for bv, want := range map[uint64]string{
		0x200e7: "components 0x20000 (amx_tilecfg)",
		0x600e7: "components 0x60000 (amx_tilecfg amx_tiledata)",
		0x80003: "components 0x80000 (apx)",
		0x1e7:   "components 0x100 (bit8)",
	} {
		err := carriedXState(bv)
		var xe *xstateError
		if !errors.As(err, &xe) || !strings.Contains(err.Error(), want) {
			t.Errorf("xstate_bv %#x: %v, want an xstateError with %q", bv, err, want)
		}
	}
}

// TestDumpRefusesAMX: a process with data in an AMX tile can not be
// written as CRIU's images (they have no field for tiles; CRIU 4.2
// drops them and the restored process has no permission to use them):
// the dump fails naming the task, the thread and the components, leaves
// nothing and the process runs on. On a CPU without AMX there is no such
// process to dump.
func TestDumpRefusesAMX(t *testing.T) {
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cpuinfo), " amx_tile") {
		t.Skip("this CPU has no AMX (amx_tile in /proc/cpuinfo)")
	}
	p := workloads.Start(t, "amx")
	log := filepath.Join(p.Dir, "out-amx.log")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(log)
		if strings.Count(string(b), "\n") >= 3 {
			if strings.HasPrefix(string(b), "setup") {
				t.Fatalf("amx: %s", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("amx wrote %q in 10s", b)
		}
	}
	parent := t.TempDir()
	_, err = Dump(context.Background(), Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
	var ue *UnsupportedError
	if !errors.As(err, &ue) {
		t.Fatalf("dump: %v, want an UnsupportedError", err)
	}
	for _, w := range []string{"task 1", "thread ", "xsave state", "amx_tilecfg amx_tiledata", "no field"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Errorf("the failed dump left %v in %s", ents, parent)
	}
	before, _ := os.ReadFile(log)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(log)
		if strings.Contains(string(b), "CORRUPT") {
			t.Fatalf("after the failed dump amx wrote:\n%s", b[len(before):])
		}
		if strings.Count(string(b[len(before):]), "\n") >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("amx wrote %q in 10s after the failed dump", b[len(before):])
		}
	}
	if !workloads.Alive(p.Pid) {
		t.Errorf("amx %d died after the failed dump", p.Pid)
	}
}
