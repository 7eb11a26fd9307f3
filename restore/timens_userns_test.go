package restore

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/kerndat"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
)

// TestTimeNSOffsetsByRoot: a tree with a user namespace of its own has its
// root make the time namespace and write the offsets, from the plan's text
// (launch sets none); a tree without has the launcher make it, and the
// plan carries no text.
func TestTimeNSOffsetsByRoot(t *testing.T) {
	p := loadPlan(t, "counter")
	for _, tt := range []struct {
		name string
		user *UserNamespace
	}{{"no user namespace", nil}, {"a user namespace", &UserNamespace{}}} {
		t.Run(tt.name, func(t *testing.T) {
			p.User = tt.user
			defer func() { p.User = nil }()
			o, err := timeNamespace(p)
			if err != nil || o == nil {
				t.Fatalf("timeNamespace: %v, %v", o, err)
			}
			text, err := o.planText()
			if err != nil {
				t.Fatal(err)
			}
			if o.byRoot != (tt.user != nil) {
				t.Errorf("byRoot %v, want %v", o.byRoot, tt.user != nil)
			}
			if tt.user == nil {
				if text != ([len(text)]byte{}) {
					t.Errorf("the plan's time offsets %q, want none", text)
				}
				return
			}
			s, _, _ := strings.Cut(string(text[:]), "\x00")
			if s != o.String() {
				t.Errorf("the plan's time offsets %q, want %q", s, o.String())
			}
			m, b, err := kerndat.ParseTimensOffsets(s)
			if err != nil || m != o.Monotonic || b != o.Boottime {
				t.Errorf("the plan's time offsets read %v %v (%v), want %v %v", m, b, err, o.Monotonic, o.Boottime)
			}
			// the launcher made no namespace: nothing to write, and
			// no write into ours (which would fail)
			if err := setTimeOffsets(os.Getpid(), *o); err != nil {
				t.Errorf("setTimeOffsets with byRoot: %v", err)
			}
		})
	}
}

// TestRestoreUserNSTimeNS restores the clocks workload, which runs in a
// user namespace of its own that owns its time namespace (launch -U -t -m),
// after crest dump: the root makes the time namespace inside the tree's
// user namespace, so that namespace owns it as it did at the dump (CRIU's
// dump refuses a tree with a namespace of another owner); the clocks go on
// from the dumped ones (the offsets put the dump's moment within the
// restore, and the workload checks its clocks every tick); the step
// clock stays the engine's; and `crest restore --verify=strict` of the
// same images finds nothing wrong.
func TestRestoreUserNSTimeNS(t *testing.T) {
	logs := map[string]check.Next{"out.log": check.Counter}
	wl, imgs := dumpedWorkload(t, "usernsclocks", logs, 3, dump.Options{})
	p := planDir(t, imgs)
	if p.User == nil || p.Clocks == nil || !p.OwnTimeNS {
		t.Fatalf("plan: user namespace %+v, clocks %+v, own time namespace %v: want all", p.User, p.Clocks, p.OwnTimeNS)
	}
	// launch -t: 100000 s monotonic and 200000 s boottime ahead of the host
	if p.Clocks.Monotonic < 100000*time.Second || p.Clocks.Boottime < 200000*time.Second {
		t.Fatalf("dumped clocks %+v: not the workload's namespace's", p.Clocks)
	}
	before := check.Snapshot(t, wl.Dir, logs)
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
	root := r.RootPID()
	r.Detach()
	defer killTree(t, root)

	checkTreeTimeNS(t, root)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timens_offsets", root))
	if err != nil {
		t.Fatal(err)
	}
	om, ob, err := kerndat.ParseTimensOffsets(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if at := p.Clocks.Monotonic - om; at < m0 || at > m1 {
		t.Errorf("monotonic: offset %v makes %v the dump's moment, not in [%v, %v]", om, at, m0, m1)
	}
	if at := p.Clocks.Boottime - ob; at < b0 || at > b1 {
		t.Errorf("boottime: offset %v makes %v the dump's moment, not in [%v, %v]", ob, at, b0, b1)
	}
	made := false
	for _, s := range rec.Steps {
		if s.Step == "time namespace" {
			made = s.PID == 1 && s.Stage == StagePrepareNamespaces && s.Succeeded && !s.Engine
		}
		if s.End != 0 && (time.Duration(s.Begin) < b0 || time.Duration(s.End) > b1) {
			t.Errorf("step %s of task %d at %d..%d, outside the restore [%d, %d]", s.Step, s.PID, s.Begin, s.End, b0, b1)
		}
	}
	if !made {
		t.Errorf("no step \"time namespace\" of the root's in PREPARE_NAMESPACES, done: %+v", rec.Steps)
	}
	check.Logs(t, wl.Dir, before, logs, time.Second)
	killTree(t, root)

	bin := cli.Binary(t)
	pidfile := filepath.Join(t.TempDir(), "pid")
	res := cli.Run(t, bin, "restore", "-D", imgs, "-d", "--pidfile", pidfile, "--verify=strict", "--json")
	if res.Code != 0 {
		t.Fatalf("crest restore --verify=strict: exit %d: %s%s", res.Code, res.Stdout, res.Stderr)
	}
	pb, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	var root2 int
	fmt.Sscan(string(pb), &root2)
	defer killTree(t, root2)
	var rep struct {
		OK       bool              `json:"ok"`
		Verdict  string            `json:"verdict"`
		Findings []json.RawMessage `json:"findings"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("report %q: %v", res.Stdout, err)
	}
	if !rep.OK || len(rep.Findings) != 0 || !strings.Contains(rep.Verdict, "namespaces ok") {
		t.Errorf("verification: %s", res.Stdout)
	}
	checkTreeTimeNS(t, root2)
}

// checkTreeTimeNS checks, from outside, that the tree of root lives in a
// time namespace of its own (not ours), which its user namespace owns
// (NS_GET_USERNS), every task in it, and its children born there too.
func checkTreeTimeNS(t *testing.T, root int) {
	t.Helper()
	userNS, err := nsIno(fmt.Sprintf("/proc/%d/ns/user", root))
	if err != nil {
		t.Fatal(err)
	}
	ourUser, _ := nsIno("/proc/self/ns/user")
	ourTime, _ := nsIno("/proc/self/ns/time")
	if userNS == ourUser {
		t.Fatalf("the root %d is in our user namespace", root)
	}
	timeNS, err := nsIno(fmt.Sprintf("/proc/%d/ns/time", root))
	if err != nil {
		t.Fatal(err)
	}
	if timeNS == ourTime {
		t.Errorf("the root %d is in our time namespace %d", root, timeNS)
	}
	if owner, err := nsOwnerIno(fmt.Sprintf("/proc/%d/ns/time", root)); err != nil || owner != userNS {
		t.Errorf("the root's time namespace %d is owned by user namespace %d (%v), want the tree's %d", timeNS, owner, err, userNS)
	}
	found, err := walkTree(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range slices.Sorted(maps.Keys(found)) {
		for _, kind := range []string{"time", "time_for_children"} {
			if ns, err := nsIno(fmt.Sprintf("/proc/%d/ns/%s", h, kind)); err != nil || ns != timeNS {
				t.Errorf("task %d: %s %d (%v), want the root's time namespace %d", h, kind, ns, err, timeNS)
			}
		}
	}
}
