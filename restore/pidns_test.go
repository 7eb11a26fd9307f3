package restore

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/procscan"
)

// Restoring into crest's own pid namespace: CRIU creates a pid namespace
// for the root exactly when the root's (ids-PID.img) differs from the
// dumping criu's (inventory.img root_ids); otherwise the tree takes the
// images' pids in the caller's namespace.

// freePID returns a pid that no process or thread of this pid namespace
// has, well above the last one handed out (pids below 300 are reserved
// after a wrap).
func freePID(t testing.TB) int {
	t.Helper()
	read := func(path string) int {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return n
	}
	last, max := read("/proc/sys/kernel/ns_last_pid"), read("/proc/sys/kernel/pid_max")
	pid := last
	for range max {
		pid += 997
		if pid >= max {
			pid = 300 + pid%max
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return pid
		}
	}
	t.Fatal("no free pid")
	return 0
}

// TestPlanPIDNamespace checks the decision both ways on counter: as
// dumped (root pid 1 in a namespace of its own: a new one), renumbered
// into the dumping criu's namespace (no new one, the root keeps its pid),
// and a root of its own namespace that is not its pid 1 (refused).
func TestPlanPIDNamespace(t *testing.T) {
	p := loadPlan(t, "counter")
	if !p.NewPIDNS || p.Root().PID != 1 {
		t.Errorf("counter as dumped: NewPIDNS %v, root %d; want a new pid namespace, root 1", p.NewPIDNS, p.Root().PID)
	}

	const pid = 4242
	t.Run("the dumping criu's namespace", func(t *testing.T) {
		dir := fixture.CopyImages(t, "counter")
		renumberRoot(t, dir, pid)
		p, err := openPlan(t, dir)
		if err != nil {
			t.Fatal(err)
		}
		if p.NewPIDNS || p.Root().PID != pid {
			t.Errorf("NewPIDNS %v, root %d; want crest's namespace, root %d", p.NewPIDNS, p.Root().PID, pid)
		}
	})
	t.Run("a namespace of its own, root not pid 1", func(t *testing.T) {
		dir := fixture.CopyImages(t, "counter")
		renumberRoot(t, dir, pid)
		editImage(t, dir, fmt.Sprintf("ids-%d.img", pid), func(img *images.Image) {
			img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry).PidNsId = proto.Uint32(9)
		})
		_, err := openPlan(t, dir)
		var pe *PlanError
		want := fmt.Sprintf("task %d: ids-%d.img: the root has its own pid namespace (9, the dump ran in 1) but is not its pid 1", pid, pid)
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v, want a PlanError with %q", err, want)
		}
	})
}

// TestRestoreCurrentPIDNS restores counter renumbered to a free pid of
// crest's pid namespace, through the CLI: the root runs with that pid in
// our namespace (no new one: NSpid has one level, its pid namespace is
// ours), and out.log continues from its dumped line.
func TestRestoreCurrentPIDNS(t *testing.T) {
	needRoot(t)
	bin := cli.Binary(t)
	cli.Subreaper(t)
	dir := fixture.Install(t, "counter")
	imgs := fixture.CopyImages(t, "counter")
	pid := freePID(t)
	renumberRoot(t, imgs, pid)
	root := cli.RestoreDetached(t, bin, imgs)
	defer func() {
		killTree(t, root)
		cli.NothingLeft(t, dir)
	}()
	if root != pid {
		t.Fatalf("restored root has pid %d, want %d", root, pid)
	}
	st := procStatus(t, root)
	if got := st["NSpid"]; len(got) != 1 || got[0] != strconv.Itoa(pid) {
		t.Errorf("NSpid %v, want [%d]", got, pid)
	}
	for _, f := range []string{"NSpgid", "NSsid"} {
		if got := st[f]; len(got) != 1 || got[0] != strconv.Itoa(pid) {
			t.Errorf("%s %v, want [%d]", f, got, pid)
		}
	}
	ours, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", root)); err != nil || ns != ours {
		t.Errorf("root's pid namespace %q (%v), want ours %q", ns, err, ours)
	}
	if s, err := procscan.Read(root); err != nil || s.PPID != os.Getpid() {
		t.Errorf("root %d: %+v (%v), want a child of the test (pid %d)", root, s, err, os.Getpid())
	}
	checkRunsOn(t, "counter", dir, time.Second)
}
