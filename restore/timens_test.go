package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timens"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/kerndat"
	"github.com/crest-restore/crest/test/fixture"
)

// TestPlanClocks: the clocks a restored tree's time namespace goes on
// from. A tree in the dumping criu's namespace takes timens-0.img's (none
// without it); a tree with its own, its namespace's image, which must be
// there; nested time namespaces are refused.
func TestPlanClocks(t *testing.T) {
	p := loadPlan(t, "counter")
	want := 1242*time.Second + 449070898 // the fixture's timens-0.img
	if p.Clocks == nil || p.Clocks.Monotonic != want || p.OwnTimeNS {
		t.Errorf("counter: clocks %+v own %v, want monotonic %v, not own", p.Clocks, p.OwnTimeNS, want)
	}

	dir := fixture.CopyImages(t, "counter")
	if err := os.Remove(dir + "/timens-0.img"); err != nil {
		t.Fatal(err)
	}
	if p := planDir(t, dir); p.Clocks != nil {
		t.Errorf("no timens-0.img: clocks %+v, want none", p.Clocks)
	}

	own := func(t *testing.T, dir string) {
		editImage(t, dir, "ids-1.img", func(img *images.Image) {
			img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry).TimeNsId = proto.Uint32(77)
		})
	}
	dir = fixture.CopyImages(t, "counter")
	own(t, dir)
	_, err := openPlan(t, dir)
	var pe *PlanError
	if want := "timens-77.img: the tree's own time namespace 77 has no clocks image"; !errors.As(err, &pe) || !strings.Contains(err.Error(), want) {
		t.Errorf("own namespace without its image: %v, want %q", err, want)
	}
	img, err := images.ReadFile(dir + "/timens-0.img")
	if err != nil {
		t.Fatal(err)
	}
	img.Entries[0].Message.(*timens.TimensEntry).Monotonic.TvSec = proto.Uint64(100000)
	if err := images.WriteFile(dir+"/timens-77.img", img); err != nil {
		t.Fatal(err)
	}
	if p := planDir(t, dir); p.Clocks == nil || p.Clocks.Monotonic != 100000*time.Second+449070898 || !p.OwnTimeNS {
		t.Errorf("own namespace: clocks %+v own %v", p.Clocks, p.OwnTimeNS)
	}
	editImage(t, dir, "timens-77.img", func(img *images.Image) {
		img.Entries[0].Message.(*timens.TimensEntry).Boottime.TvNsec = proto.Uint64(1e9)
	})
	if _, err := openPlan(t, dir); err == nil || !strings.Contains(err.Error(), "timens-77.img: clocks") {
		t.Errorf("nanoseconds past a second: %v", err)
	}
}

// TestRestoreClocks restores the counter fixture into a time namespace of
// its own, as CRIU does, whose clocks go on from those of timens-0.img:
// the offsets make the dumped clocks the clocks of a moment between the
// start of the restore and its end. The tasks' step clock stays the
// engine's: every step and arrival lies within the restore.
func TestRestoreClocks(t *testing.T) {
	needRoot(t)
	if !kerndat.TimeNamespace().OK {
		t.Fatalf("this machine should have time namespaces: %v", kerndat.TimeNamespace())
	}
	installFixture(t, "counter")
	p := loadPlan(t, "counter")
	host := func(c int32) time.Duration {
		var ts unix.Timespec
		if err := unix.ClockGettime(c, &ts); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ts.Nano())
	}
	m0, b0 := host(unix.CLOCK_MONOTONIC), host(unix.CLOCK_BOOTTIME)
	rec := &recorder{}
	r, err := Start(context.Background(), p, Options{Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	m1, b1 := host(unix.CLOCK_MONOTONIC), host(unix.CLOCK_BOOTTIME)
	hosts := abortAtCleanup(t, r, p)
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/time", hosts[0]))
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Readlink("/proc/self/ns/time")
	if ns == self {
		t.Errorf("the restored task is in our time namespace %s", ns)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timens_offsets", hosts[0]))
	if err != nil {
		t.Fatal(err)
	}
	om, ob, err := kerndat.ParseTimensOffsets(string(b))
	if err != nil {
		t.Fatal(err)
	}
	// the host's clock when the offsets were taken: dumped - offset
	if at := p.Clocks.Monotonic - om; at < m0 || at > m1 {
		t.Errorf("monotonic: offset %v makes %v the dump's moment, not in [%v, %v]", om, at, m0, m1)
	}
	if at := p.Clocks.Boottime - ob; at < b0 || at > b1 {
		t.Errorf("boottime: offset %v makes %v the dump's moment, not in [%v, %v]", ob, at, b0, b1)
	}
	for _, s := range rec.Steps {
		if s.End != 0 && (time.Duration(s.Begin) < b0 || time.Duration(s.End) > b1) {
			t.Errorf("step %s of task %d at %d..%d, outside the restore [%d, %d]", s.Step, s.PID, s.Begin, s.End, b0, b1)
		}
	}
	for _, a := range rec.Arrivals {
		if time.Duration(a.At) < b0 || time.Duration(a.At) > b1 {
			t.Errorf("task %d arrived at %v at %d, outside the restore [%d, %d]", a.PID, a.Stage, a.At, b0, b1)
		}
	}
}
