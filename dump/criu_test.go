package dump_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

// Structural agreement with CRIU 4.2: each fixture program is built from
// its source with the fixture's build line, run from /opt/crest-fixtures
// exactly as the fixture was, dumped by crest, and the images compared with
// CRIU's images of the same program. Every difference is reported; the
// ones that are expected are explained in explained() below and the test
// fails on any other.

// criuFixtures are the fixtures compared: all of the set.
var criuFixtures = []string{"counter", "tree", "threads", "dynamic", "signals", "pipe", "files", "shmem"}

var buildLine = regexp.MustCompile("Build: `gcc ([^`]*)`")

// runFixture installs fixture name, replaces its prog by one built from
// src/ with the README's build line and starts it as the fixture was.
func runFixture(t *testing.T, name string) *workloads.Process {
	t.Helper()
	readme, err := os.ReadFile(fixture.Path(t, name, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := buildLine.FindSubmatch(readme)
	if m == nil {
		t.Fatalf("%s/README.md: no build line", name)
	}
	var flags []string
	args := strings.Fields(string(m[1]))
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "-o":
			i++
		case strings.HasSuffix(args[i], ".c"):
		default:
			flags = append(flags, args[i])
		}
	}
	src, err := os.ReadFile(fixture.Path(t, name, "src", "prog.c"))
	if err != nil {
		t.Fatal(err)
	}
	bin, err := workloads.BuildSource("fixture-"+name, "prog.c", src, flags)
	if err != nil {
		t.Fatal(err)
	}
	dir := fixture.Install(t, name)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prog"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	p := workloads.StartIn(t, "./prog", dir)
	t.Cleanup(func() {
		p.Kill(t)
		fixture.Install(t, name)
	})
	return p
}

// waitRunning waits until every out*.log of the fixture has a few lines.
func waitRunning(t *testing.T, name string, p *workloads.Process) {
	t.Helper()
	logs, _ := filepath.Glob(fixture.Path(t, name, "files", "out*.log"))
	for _, l := range logs {
		base := filepath.Base(l)
		deadline := time.Now().Add(10 * time.Second)
		for {
			// install.sh put the at-dump content there; wait for more.
			orig, _ := os.ReadFile(l)
			cur, _ := os.ReadFile(filepath.Join(p.Dir, base))
			if len(cur) > len(orig)+64 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s does not grow", name, base)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// fieldCounts flattens the messages of an image into "path" -> number of
// times it is set, repeated fields counted by their length.
func fieldCounts(img *images.Image) map[string]int {
	out := map[string]int{}
	var walk func(prefix string, m protoreflect.Message)
	walk = func(prefix string, m protoreflect.Message) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			p := prefix + string(fd.Name())
			switch {
			case fd.IsList():
				l := v.List()
				out[p+"[]"] += l.Len()
				if fd.Kind() == protoreflect.MessageKind {
					for i := 0; i < l.Len(); i++ {
						walk(p+"[].", l.Get(i).Message())
					}
				}
			case fd.Kind() == protoreflect.MessageKind:
				out[p]++
				walk(p+".", v.Message())
			default:
				out[p]++
			}
			return true
		})
	}
	for i, e := range img.Entries {
		prefix := ""
		if i == 0 && img.Kind.Head != nil {
			prefix = "head."
		}
		walk(prefix, e.Message.ProtoReflect())
	}
	return out
}

// explained says why an image field may differ between crest's and CRIU's
// images of the same program, or "" when it must not.
func explained(file, field string) string {
	switch {
	case strings.HasPrefix(file, "pagemap-") && !strings.HasPrefix(field, "head."):
		return "CRIU splits page runs at its page-pipe buffer boundaries and its parasite leaves one dirty page in the executable's text; crest writes one entry per run of pages"
	case strings.HasPrefix(file, "core-") && strings.Contains(field, "signals_") && strings.Contains(field, "signals[]"):
		return "pending signals depend on the moment of the dump (an ITIMER_REAL SIGALRM may be queued)"
	case file == "pipes-data.img":
		return "the bytes in the pipe depend on the moment of the dump"
	}
	return ""
}

// explainedValue says why a value may differ.
func explainedValue(what string) string {
	switch {
	case strings.HasSuffix(what, ".pos"):
		return "file offsets move on as the program runs"
	case strings.HasPrefix(what, "rlimit"):
		return "rlimits are inherited from the environment that started the program"
	case strings.HasSuffix(what, "timers.real.value"):
		return "the time left on the itimer depends on the moment of the dump"
	case strings.HasSuffix(what, "pipe_id"):
		return "pipe ids are inode numbers"
	}
	return ""
}

var threadLog = regexp.MustCompile(`^/opt/crest-fixtures/threads/out-[0-9]\.log$`)

// explainedName says why two file entries at the same place name different
// files.
func explainedName(a, b string) string {
	if threadLog.MatchString(a) && threadLog.MatchString(b) {
		return "the threads open their logs at once: which gets which fd (and file id) is a race"
	}
	return ""
}

type differ struct {
	t     *testing.T
	name  string
	fails int
}

func (d *differ) diff(what string, crest, criu any, reason string) {
	d.t.Helper()
	if fmt.Sprint(crest) == fmt.Sprint(criu) {
		return
	}
	if reason != "" {
		d.t.Logf("%s: %s: crest %v, CRIU %v (explained: %s)", d.name, what, crest, criu, reason)
		return
	}
	d.fails++
	d.t.Errorf("%s: %s: crest %v, CRIU %v", d.name, what, crest, criu)
}

var shmemFile = regexp.MustCompile(`^pagemap-shmem-[0-9]+\.img$`)

func shmemNames(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = shmemFile.ReplaceAllString(n, "pagemap-shmem-SHMID.img")
	}
	return out
}

func imageNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() != "dump.log" {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// aslr reports whether a mapping's address is chosen at random: anything
// above the fixed addresses of the non-PIE static executables.
func aslr(start uint64) bool { return start >= 1<<32 }

func TestCRIUFixtures(t *testing.T) {
	fixture.Lock(t)
	for _, name := range criuFixtures {
		t.Run(name, func(t *testing.T) {
			p := runFixture(t, name)
			waitRunning(t, name, p)
			theirs := fixture.Images(t, name)
			out := dumpLikeCRIU(t, p, theirs)
			compareWithCRIU(t, name, out, theirs)
		})
	}
}

// dumpLikeCRIU dumps p and returns the image directory. The pipe
// fixture's child empties the pipe every 50 ms and its parent writes into
// it every 10 ms: a freeze right after a read finds it empty, and then no
// pipes-data.img is written, rightly (CRIU would not write one either).
// When CRIU's images have pipe data, the tree is dumped again, left
// running, until a dump meets data in the pipe too (at most 20 times; the
// last dump is compared in any case).
func dumpLikeCRIU(t *testing.T, p *workloads.Process, theirs string) string {
	t.Helper()
	_, err := os.Stat(filepath.Join(theirs, "pipes-data.img"))
	wantData := err == nil
	for try := 1; ; try++ {
		out := filepath.Join(t.TempDir(), "images")
		again := wantData && try < 20
		if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: out, LeaveRunning: again}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(out, "pipes-data.img")); !again || err == nil {
			return out
		}
		t.Logf("dump %d: the pipe was empty at the freeze; again", try)
		time.Sleep(3 * time.Millisecond)
	}
}

func compareWithCRIU(t *testing.T, name, ours, theirs string) {
	d := &differ{t: t, name: name}
	// pagemap-shmem-SHMID.img is named for the memfd's inode number,
	// which differs from run to run.
	d.diff("image files", shmemNames(imageNames(t, ours)), shmemNames(imageNames(t, theirs)), "")

	// Every image both have: the same fields set, as often.
	for _, f := range imageNames(t, theirs) {
		if strings.HasPrefix(f, "pages-") {
			continue
		}
		a, errA := images.ReadFile(filepath.Join(ours, f))
		b, errB := images.ReadFile(filepath.Join(theirs, f))
		if errA != nil || errB != nil {
			if !errors.Is(errA, os.ErrNotExist) {
				t.Errorf("%s: %v / %v", f, errA, errB)
			}
			continue
		}
		ca, cb := fieldCounts(a), fieldCounts(b)
		for k := range cb {
			if _, ok := ca[k]; !ok {
				ca[k] = 0
			}
		}
		keys := make([]string, 0, len(ca))
		for k := range ca {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			d.diff(f+": "+k, ca[k], cb[k], explained(f, k))
		}
	}

	da, err := images.Open(ours)
	if err != nil {
		t.Fatal(err)
	}
	db, err := images.Open(theirs)
	if err != nil {
		t.Fatal(err)
	}
	d.diff("inventory (without the run id)", invString(da), invString(db), "")
	if len(da.Pstree) != len(db.Pstree) {
		t.Fatalf("%d tasks, CRIU %d", len(da.Pstree), len(db.Pstree))
	}
	filesA, err := da.Files()
	if err != nil {
		t.Fatal(err)
	}
	filesB, err := db.Files()
	if err != nil {
		t.Fatal(err)
	}
	d.diff("files.img entries", len(filesA), len(filesB), "")
	for i := range min(len(filesA), len(filesB)) {
		fa, fb := proto.Clone(filesA[i]).(interface{ String() string }), filesB[i]
		_ = fa
		what := fmt.Sprintf("files.img[%d] (%s)", i, fb.GetType())
		ra, rb := filesA[i].GetReg(), fb.GetReg()
		d.diff(what+" type/id", fmt.Sprint(filesA[i].GetType(), filesA[i].GetId()), fmt.Sprint(fb.GetType(), fb.GetId()), "")
		if rb != nil {
			d.diff(what+" name", ra.GetName(), rb.GetName(), explainedName(ra.GetName(), rb.GetName()))
			d.diff(what+" flags", ra.GetFlags(), rb.GetFlags(), "")
			d.diff(what+" mode", ra.GetMode(), rb.GetMode(), "")
			d.diff(what+" size", ra.GetSize(), rb.GetSize(), "")
			d.diff(what+" build_id", ra.GetBuildId(), rb.GetBuildId(), "")
			d.diff(what+".pos", ra.GetPos(), rb.GetPos(), explainedValue(".pos"))
		}
		if mb := fb.GetMemfd(); mb != nil {
			ma := filesA[i].GetMemfd()
			d.diff(what+" flags/inode_id", fmt.Sprint(ma.GetFlags(), ma.GetInodeId()), fmt.Sprint(mb.GetFlags(), mb.GetInodeId()), "")
			d.diff(what+".pos", ma.GetPos(), mb.GetPos(), explainedValue(".pos"))
		}
		if pb := fb.GetPipe(); pb != nil {
			pa := filesA[i].GetPipe()
			d.diff(what+" flags", pa.GetFlags(), pb.GetFlags(), "")
			d.diff(what+".pipe_id", pa.GetPipeId(), pb.GetPipeId(), explainedValue("pipe_id"))
		}
	}

	ia, err1 := da.MemfdInodes()
	ib, err2 := db.MemfdInodes()
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	d.diff("memfd.img entries", len(ia), len(ib), "")
	for i := range min(len(ia), len(ib)) {
		a, b := ia[i], ib[i]
		d.diff(fmt.Sprintf("memfd.img[%d]", i),
			fmt.Sprint(a.GetName(), a.GetUid(), a.GetGid(), a.GetSize(), a.GetSeals(), a.GetInodeId(), a.GetMode()),
			fmt.Sprint(b.GetName(), b.GetUid(), b.GetGid(), b.GetSize(), b.GetSeals(), b.GetInodeId(), b.GetMode()), "")
	}

	for i, pb := range db.Pstree {
		pa := da.Pstree[i]
		d.diff(fmt.Sprintf("pstree[%d]", i), fmt.Sprint(pa.GetPid(), pa.GetPpid(), pa.GetPgid(), pa.GetSid(), pa.GetThreads()),
			fmt.Sprint(pb.GetPid(), pb.GetPpid(), pb.GetPgid(), pb.GetSid(), pb.GetThreads()), "")
		pid := pb.GetPid()
		idsA, err1 := da.IDs(pid)
		idsB, err2 := db.IDs(pid)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		d.diff(fmt.Sprintf("ids-%d", pid), idsA.String(), idsB.String(), "")
		fsA, err1 := da.FS(pid)
		fsB, err2 := db.FS(pid)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		d.diff(fmt.Sprintf("fs-%d", pid), fsA.String(), fsB.String(), "")
		fdA, err1 := da.Fdinfo(idsA.GetFilesId())
		fdB, err2 := db.Fdinfo(idsB.GetFilesId())
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		d.diff(fmt.Sprintf("fdinfo-%d", idsB.GetFilesId()), fdString(fdA), fdString(fdB), "")
		compareMM(t, d, da, db, pid)
		for _, tid := range pb.GetThreads() {
			compareCore(t, d, da, db, tid)
		}
	}
	if d.fails > 0 {
		t.Logf("%s: %d unexplained differences", name, d.fails)
	}
}

func invString(d *images.Dir) string {
	inv := proto.Clone(d.Inventory)
	inv.ProtoReflect().Clear(inv.ProtoReflect().Descriptor().Fields().ByName("dump_criu_run_id"))
	return fmt.Sprint(inv)
}

func fdString[T interface{ String() string }](l []T) string {
	var s []string
	for _, e := range l {
		s = append(s, e.String())
	}
	return strings.Join(s, "; ")
}

func compareMM(t *testing.T, d *differ, da, db *images.Dir, pid uint32) {
	t.Helper()
	ma, err1 := da.MM(pid)
	mb, err2 := db.MM(pid)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	d.diff(fmt.Sprintf("mm-%d exe_file_id", pid), ma.GetExeFileId(), mb.GetExeFileId(), "")
	d.diff(fmt.Sprintf("mm-%d dumpable", pid), ma.GetDumpable(), mb.GetDumpable(), "")
	d.diff(fmt.Sprintf("mm-%d number of VMAs", pid), len(ma.GetVmas()), len(mb.GetVmas()), "")
	for i := range min(len(ma.GetVmas()), len(mb.GetVmas())) {
		va, vb := ma.GetVmas()[i], mb.GetVmas()[i]
		what := fmt.Sprintf("mm-%d vma[%d]", pid, i)
		d.diff(what+" prot/flags/status/madv/fdflags/shmid/pgoff",
			fmt.Sprint(va.GetProt(), va.GetFlags(), images.VMAStatus(va.GetStatus()), va.GetMadv(), va.GetFdflags(), va.GetShmid(), va.GetPgoff()),
			fmt.Sprint(vb.GetProt(), vb.GetFlags(), images.VMAStatus(vb.GetStatus()), vb.GetMadv(), vb.GetFdflags(), vb.GetShmid(), vb.GetPgoff()), "")
		if !aslr(vb.GetStart()) && images.VMAStatus(vb.GetStatus())&images.VMAAreaHeap == 0 {
			d.diff(what+" range", fmt.Sprintf("%x-%x", va.GetStart(), va.GetEnd()), fmt.Sprintf("%x-%x", vb.GetStart(), vb.GetEnd()), "")
		} else {
			reason := "ASLR moves it"
			if images.VMAStatus(vb.GetStatus())&images.VMAAreaHeap != 0 || vb.GetFlags()&0x100 != 0 {
				// brk and the stack grow with what the program did
				// before the dump; the same program does the same.
				reason = ""
			}
			d.diff(what+" size", va.GetEnd()-va.GetStart(), vb.GetEnd()-vb.GetStart(), reason)
		}
	}
}

func compareCore(t *testing.T, d *differ, da, db *images.Dir, tid uint32) {
	t.Helper()
	ca, err1 := da.Core(tid)
	cb, err2 := db.Core(tid)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	what := fmt.Sprintf("core-%d", tid)
	if tb := cb.GetTc(); tb != nil {
		ta := ca.GetTc()
		d.diff(what+" tc", fmt.Sprint(ta.GetTaskState(), ta.GetPersonality(), ta.GetFlags(), ta.GetBlkSigset(), ta.GetComm(),
			ta.GetLoginuid(), ta.GetOomScoreAdj(), ta.GetChildSubreaper()),
			fmt.Sprint(tb.GetTaskState(), tb.GetPersonality(), tb.GetFlags(), tb.GetBlkSigset(), tb.GetComm(),
				tb.GetLoginuid(), tb.GetOomScoreAdj(), tb.GetChildSubreaper()), "")
		d.diff(what+" number of sigactions", len(ta.GetSigactions()), len(tb.GetSigactions()), "")
		for i := range min(len(ta.GetSigactions()), len(tb.GetSigactions())) {
			sa, sb := ta.GetSigactions()[i], tb.GetSigactions()[i]
			d.diff(fmt.Sprintf("%s sigactions[%d]", what, i), sa.String(), sb.String(), "")
		}
		ra, rb := ta.GetTimers().GetReal(), tb.GetTimers().GetReal()
		d.diff(what+" timers.real.interval", fmt.Sprint(ra.GetIsec(), ra.GetIusec()), fmt.Sprint(rb.GetIsec(), rb.GetIusec()), "")
		d.diff(what+" timers.real.value", fmt.Sprint(ra.GetVsec(), ra.GetVusec()), fmt.Sprint(rb.GetVsec(), rb.GetVusec()),
			explainedValue("timers.real.value"))
		for i, r := range tb.GetRlimits().GetRlimits() {
			if i < len(ta.GetRlimits().GetRlimits()) {
				d.diff(fmt.Sprintf("rlimit %d", i), ta.GetRlimits().GetRlimits()[i].String(), r.String(), explainedValue("rlimit"))
			}
		}
	}
	ha, hb := ca.GetThreadCore(), cb.GetThreadCore()
	d.diff(what+" thread_core", fmt.Sprint(ha.GetFutexRlaLen(), ha.GetSchedNice(), ha.GetSchedPolicy(), ha.GetBlkSigset(),
		ha.GetSas().GetSsSize(), ha.GetSas().GetSsFlags(), ha.GetCreds(), ha.GetComm(), ha.GetRseqEntry().GetRseqAbiSize(),
		ha.GetRseqEntry().GetSignature(), ha.GetCgSet()),
		fmt.Sprint(hb.GetFutexRlaLen(), hb.GetSchedNice(), hb.GetSchedPolicy(), hb.GetBlkSigset(),
			hb.GetSas().GetSsSize(), hb.GetSas().GetSsFlags(), hb.GetCreds(), hb.GetComm(), hb.GetRseqEntry().GetRseqAbiSize(),
			hb.GetRseqEntry().GetSignature(), hb.GetCgSet()), "")
	if !aslr(hb.GetSas().GetSsSp()) {
		d.diff(what+" sigaltstack", ha.GetSas().GetSsSp(), hb.GetSas().GetSsSp(), "")
	}
	d.diff(what+" number of pending signals",
		len(ha.GetSignalsP().GetSignals()), len(hb.GetSignalsP().GetSignals()), "")
	xa, xb := ca.GetThreadInfo().GetFpregs().GetXsave(), cb.GetThreadInfo().GetFpregs().GetXsave()
	d.diff(what+" xsave layout", fmt.Sprint(len(xa.GetYmmhSpace()), len(xa.GetOpmaskReg()), len(xa.GetZmmUpper()), len(xa.GetHi16Zmm()), len(xa.GetPkru())),
		fmt.Sprint(len(xb.GetYmmhSpace()), len(xb.GetOpmaskReg()), len(xb.GetZmmUpper()), len(xb.GetHi16Zmm()), len(xb.GetPkru())), "")
	ga, gb := ca.GetThreadInfo().GetGpregs(), cb.GetThreadInfo().GetGpregs()
	d.diff(what+" segments", fmt.Sprint(ga.GetCs(), ga.GetSs()), fmt.Sprint(gb.GetCs(), gb.GetSs()), "")
	d.diff(what+" syscall", int64(ga.GetOrigAx()), int64(gb.GetOrigAx()),
		"the call the freeze caught the program in: it sleeps most of the time, but the freeze can land in another call of its loop (a write)")
	d.diff(what+" ax", int64(ga.GetAx()), int64(gb.GetAx()),
		"the result of the interrupted syscall depends on where the freeze caught it: -EINTR in a nanosleep (as CRIU turns ERESTART_RESTARTBLOCK), 0 just after one")
}
