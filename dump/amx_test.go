package dump_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/test/workloads"
)

// TestDumpRefusesAMX: a process with data in an AMX tile can not be
// written as CRIU's images (they have no field for tiles, and the
// restored process would have no permission to use them): the dump
// fails naming the task, the thread and the components, leaves nothing,
// and the process runs on with its tile intact (it checks tmm0 every
// tick). On a CPU without AMX there is no such process to dump.
func TestDumpRefusesAMX(t *testing.T) {
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cpuinfo), " amx_tile") {
		t.Skip("this CPU has no AMX (amx_tile in /proc/cpuinfo)")
	}
	p := workloads.Start(t, "amx")
	if lines := waitLines(t, p, "out-amx.log", 3); strings.HasPrefix(lines[0], "setup") {
		t.Fatalf("amx: %s", lines[0])
	}
	parent := t.TempDir()
	_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
	refusedCleanly(t, err, p, parent, "out-amx.log", "task 1", "thread ", "xsave state", "amx_tilecfg amx_tiledata", "no field")
	b, err := os.ReadFile(filepath.Join(p.Dir, "out-amx.log"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "CORRUPT") {
		t.Errorf("after the failed dump amx wrote:\n%s", b)
	}
}
