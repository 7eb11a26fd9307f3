package main

import (
	"bytes"
	"cmp"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
	"github.com/crest-restore/crest/trace"
	"github.com/crest-restore/crest/trace/tracetest"
)

// restoreStages are a restore's stages, in order.
var restoreStages = []string{"ROOT_TASK", "PREPARE_NAMESPACES", "FORKING", "RESTORE", "RESTORE_SIGCHLD", "RESTORE_CREDS", "COMPLETE"}

// tracedRestore is `crest restore -D IMAGES -d --pidfile F ARGS...` of a
// freshly installed fixture, run in this process; the restored tree is
// removed when the test ends.
type tracedRestore struct {
	code           int
	stdout, stderr string
	took           time.Duration // the whole command, as this test saw it
}

func restoreTraced(t *testing.T, name string, args ...string) tracedRestore {
	t.Helper()
	fixture.Install(t, name)
	pidfile := filepath.Join(t.TempDir(), "pid")
	var out, errb bytes.Buffer
	begin := time.Now()
	code := run(append([]string{"restore", "-D", fixture.Images(t, name), "-d", "--pidfile", pidfile}, args...), &out, &errb)
	r := tracedRestore{code: code, stdout: out.String(), stderr: errb.String(), took: time.Since(begin)}
	if b, err := os.ReadFile(pidfile); err == nil {
		root, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		removeTree(t, root) // the restore is done; the tree's part in the test too
	}
	if code != 0 {
		t.Fatalf("crest restore %s %q: exit %d\n%s", name, args, code, r.stderr)
	}
	return r
}

// otlpSpans flattens an OTLP request.
func otlpSpans(req *tracepb.TracesData) []*tracepb.Span {
	var out []*tracepb.Span
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			out = append(out, ss.Spans...)
		}
	}
	return out
}

// otlpTree is a trace as a reader gets it back, with its links checked.
type otlpTree struct {
	id       string
	root     *tracepb.Span
	parent   map[*tracepb.Span]*tracepb.Span
	children map[*tracepb.Span][]*tracepb.Span // by start
}

// readTree checks what every trace must be: one trace id, exactly one
// root, every parent present, every child inside its parent's time.
func readTree(t *testing.T, req *tracepb.TracesData) *otlpTree {
	t.Helper()
	spans := otlpSpans(req)
	if len(spans) == 0 {
		t.Fatal("no spans")
	}
	tr := &otlpTree{id: hex.EncodeToString(spans[0].TraceId), parent: map[*tracepb.Span]*tracepb.Span{},
		children: map[*tracepb.Span][]*tracepb.Span{}}
	byID := map[string]*tracepb.Span{}
	for _, s := range spans {
		byID[string(s.SpanId)] = s
	}
	roots := 0
	for _, s := range spans {
		if id := hex.EncodeToString(s.TraceId); id != tr.id {
			t.Errorf("%s: trace %s, want %s", s.Name, id, tr.id)
		}
		if len(s.ParentSpanId) == 0 {
			roots++
			tr.root = s
			continue
		}
		p := byID[string(s.ParentSpanId)]
		if p == nil {
			t.Errorf("%s: parent %x not in the trace", s.Name, s.ParentSpanId)
			continue
		}
		if s.StartTimeUnixNano < p.StartTimeUnixNano || s.EndTimeUnixNano > p.EndTimeUnixNano || s.EndTimeUnixNano < s.StartTimeUnixNano {
			t.Errorf("%s [%d,%d] not inside its parent %s [%d,%d]", s.Name, s.StartTimeUnixNano, s.EndTimeUnixNano,
				p.Name, p.StartTimeUnixNano, p.EndTimeUnixNano)
		}
		tr.parent[s] = p
		tr.children[p] = append(tr.children[p], s)
	}
	if roots != 1 {
		t.Fatalf("%d roots, want exactly one", roots)
	}
	for _, c := range tr.children {
		slices.SortStableFunc(c, func(x, y *tracepb.Span) int { return cmp.Compare(x.StartTimeUnixNano, y.StartTimeUnixNano) })
	}
	return tr
}

// stages returns the root's children that are stages, in time order.
func (tr *otlpTree) stages() []*tracepb.Span {
	var out []*tracepb.Span
	for _, c := range tr.children[tr.root] {
		if tracetest.String(c.Attributes, string(trace.AttrStage)) != "" {
			out = append(out, c)
		}
	}
	return out
}

func dur(s *tracepb.Span) uint64 { return s.EndTimeUnixNano - s.StartTimeUnixNano }

// participant is one arrival a stage expects: a task's leader (tid ==
// pid) or one of its threads.
type participant struct{ pid, tid int }

// expectedParticipants reads the image set's process tree: the root in
// ROOT_TASK and PREPARE_NAMESPACES, every task in FORKING, every thread
// from RESTORE on (CRIU's stage_participants).
func expectedParticipants(t *testing.T, dir string) (map[string][]participant, int, int) {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]participant{}
	threads := 0
	for i, e := range d.Pstree {
		pid := int(e.GetPid())
		if i == 0 {
			out["ROOT_TASK"] = []participant{{pid, pid}}
			out["PREPARE_NAMESPACES"] = []participant{{pid, pid}}
		}
		out["FORKING"] = append(out["FORKING"], participant{pid, pid})
		for _, tid := range e.Threads {
			threads++
			for _, st := range restoreStages[3:] {
				out[st] = append(out[st], participant{pid, int(tid)})
			}
		}
	}
	return out, len(d.Pstree), threads
}

// checkRestoreTrace checks the trace of a restore of fixture name as
// issue 7 states it: one root, one span per stage in stage order, one
// span per task (or thread) in every stage it takes part in, steps inside
// their task's span, every child inside its parent (readTree), and stage
// spans that add up to the restore's measured duration within 1 ms.
//
// The measured duration is the engine's: from its first stage switch to
// the last arrival at a barrier, both read on CLOCK_BOOTTIME by the engine
// and the agent (restore.Timeline), which the root carries as
// crest.stages.measured_ns.
func checkRestoreTrace(t *testing.T, name string, req *tracepb.TracesData, took time.Duration) *otlpTree {
	t.Helper()
	tr := readTree(t, req)
	dir := fixture.Images(t, name)
	want, nTasks, nThreads := expectedParticipants(t, dir)
	root := tr.root
	if root.Name != "crest restore" || tracetest.String(root.Attributes, "crest.images_dir") != dir {
		t.Errorf("root %q images_dir %q", root.Name, tracetest.String(root.Attributes, "crest.images_dir"))
	}
	if n, _ := tracetest.Int(root.Attributes, "crest.tasks"); n != int64(nTasks) {
		t.Errorf("root crest.tasks %d, want %d", n, nTasks)
	}
	if n, _ := tracetest.Int(root.Attributes, "crest.threads"); n != int64(nThreads) {
		t.Errorf("root crest.threads %d, want %d", n, nThreads)
	}
	if tracetest.String(root.Attributes, "service.name") != "" {
		t.Error("service.name on a span, want it on the resource")
	}
	if svc := tracetest.String(req.ResourceSpans[0].Resource.GetAttributes(), "service.name"); svc == "" {
		t.Error("no service.name on the resource")
	}

	stages := tr.stages()
	var names []string
	var sum uint64
	for _, st := range stages {
		names = append(names, st.Name)
		sum += dur(st)
	}
	if !slices.Equal(names, restoreStages) {
		t.Fatalf("stages %v, want %v", names, restoreStages)
	}
	for i, st := range stages {
		if n, _ := tracetest.Int(st.Attributes, "crest.stage.number"); n != int64(i) {
			t.Errorf("%s: crest.stage.number %d, want %d", st.Name, n, i)
		}
		if i > 0 && st.StartTimeUnixNano < stages[i-1].EndTimeUnixNano {
			t.Errorf("%s starts before %s ends", st.Name, stages[i-1].Name)
		}
		got := map[participant]int{}
		for _, c := range tr.children[st] {
			if !strings.HasPrefix(c.Name, "task ") {
				continue
			}
			pid, ok1 := tracetest.Int(c.Attributes, "process.vpid")
			tid, ok2 := tracetest.Int(c.Attributes, "crest.image_tid")
			if !ok2 {
				tid = pid
			}
			if !ok1 {
				t.Errorf("%s/%s: no process.vpid", st.Name, c.Name)
			}
			if _, ok := tracetest.Int(c.Attributes, "process.pid"); !ok {
				t.Errorf("%s/%s: no process.pid", st.Name, c.Name)
			}
			if tracetest.String(c.Attributes, "process.command") == "" {
				t.Errorf("%s/%s: no process.command", st.Name, c.Name)
			}
			got[participant{int(pid), int(tid)}]++
			for _, s := range tr.children[c] {
				if tracetest.String(s.Attributes, string(trace.AttrStep)) == "" {
					continue
				}
				if v, _ := tracetest.Int(s.Attributes, "process.vpid"); v != pid {
					t.Errorf("%s/%s: step %s of task %d", st.Name, c.Name, s.Name, v)
				}
			}
		}
		for _, p := range want[st.Name] {
			if got[p] != 1 {
				t.Errorf("%s: %d spans of task %d thread %d, want 1", st.Name, got[p], p.pid, p.tid)
			}
			delete(got, p)
		}
		if len(got) > 0 {
			t.Errorf("%s: spans of tasks that take no part in it: %v", st.Name, got)
		}
	}
	// every step is inside the span of its task, or the engine's
	// preparation of it
	for s, p := range tr.parent {
		if tracetest.String(s.Attributes, string(trace.AttrStep)) == "" {
			continue
		}
		if tracetest.String(s.Attributes, "crest.phase") == "prepare" {
			if p.Name != "prepare" || tr.parent[p] != root {
				t.Errorf("preparation step %s under %s, want under the root's prepare", s.Name, p.Name)
			}
			continue
		}
		if !strings.HasPrefix(p.Name, "task ") || tr.parent[p] == nil || tracetest.String(tr.parent[p].Attributes, string(trace.AttrStage)) == "" {
			t.Errorf("step %s under %s, want under a task span of a stage", s.Name, p.Name)
		}
	}
	measured, ok := tracetest.Int(root.Attributes, string(trace.AttrMeasured))
	if !ok || measured <= 0 {
		t.Fatalf("root has no %s", trace.AttrMeasured)
	}
	if d := int64(sum) - measured; d > 1e6 || d < -1e6 {
		t.Errorf("stage spans add up to %d ns, the engine measured %d ns", sum, measured)
	}
	// The stages ran inside the command: their time can not exceed it.
	if took > 0 && sum > uint64(took) {
		t.Errorf("stage spans add up to %d ns, more than the whole command's %v", sum, took)
	}
	return tr
}

// TestTraceRestoreFile restores fixtures with --trace FILE.json and reads
// the file back with the OTLP protobuf JSON decoder.
func TestTraceRestoreFile(t *testing.T) {
	needRoot(t)
	for _, name := range []string{"counter", "tree", "threads"} {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "out.json")
			r := restoreTraced(t, name, "--trace", file)
			if r.stdout != "" || r.stderr != "" {
				t.Errorf("crest restore --trace FILE printed %q and %q, want nothing", r.stdout, r.stderr)
			}
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			req, err := trace.UnmarshalOTLPJSON(raw)
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			checkRestoreTrace(t, name, req, r.took)
			// OTLP/JSON ids are hex, not protobuf JSON's base64.
			if !regexp.MustCompile(`"traceId":"[0-9a-f]{32}"`).Match(raw) {
				t.Errorf("%s: no hex traceId", file)
			}
			// Round trip: what the decoder read, encoded again, decodes to
			// the same request.
			again, err := trace.MarshalOTLPJSON(req)
			if err != nil {
				t.Fatal(err)
			}
			req2, err := trace.UnmarshalOTLPJSON(again)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(req, req2) {
				t.Error("the trace file does not round-trip through the OTLP JSON decoder")
			}
		})
	}
}

// TestTraceRestoreJaeger restores a fixture with --trace to a real
// Jaeger's OTLP gRPC and HTTP ports (and to a file, for the trace id),
// and fetches the trace back from Jaeger's query APIs.
func TestTraceRestoreJaeger(t *testing.T) {
	needRoot(t)
	j := tracetest.Start(t)
	for _, c := range []struct{ name, target string }{
		{"grpc", "grpc://" + j.GRPC},
		{"http", "http://" + j.HTTP},
	} {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "out.json")
			r := restoreTraced(t, "tree", "--trace", c.target, "--trace", file, "--trace-timeout", "10s")
			if r.stderr != "" {
				t.Errorf("stderr %q, want nothing", r.stderr)
			}
			local, err := trace.ReadJSON(file)
			if err != nil {
				t.Fatal(err)
			}
			id := hex.EncodeToString(otlpSpans(local)[0].TraceId)
			got, err := trace.UnmarshalOTLPJSON(j.Fetch(t, id))
			if err != nil {
				t.Fatalf("trace %s from Jaeger: %v", id, err)
			}
			if n, want := len(otlpSpans(got)), len(otlpSpans(local)); n != want {
				t.Errorf("Jaeger has %d spans, the file %d", n, want)
			}
			tr := checkRestoreTrace(t, "tree", got, r.took)
			if svc := tracetest.String(got.ResourceSpans[0].Resource.GetAttributes(), "service.name"); svc != "crest" {
				t.Errorf("service.name %q, want crest", svc)
			}
			if v := tracetest.String(tr.root.Attributes, string(trace.AttrOp)); v != "restore" {
				t.Errorf("root crest.op %q", v)
			}
			// The v1 API, which Jaeger's UI reads, shows the same tree.
			v1 := j.FetchV1(t, id)
			roots, ops := 0, map[string]int{}
			for _, s := range v1 {
				ops[s.OperationName]++
				if len(s.References) == 0 {
					roots++
				}
			}
			if len(v1) != len(otlpSpans(local)) || roots != 1 || ops["crest restore"] != 1 {
				t.Errorf("v1 API: %d spans, %d roots, ops %v", len(v1), roots, ops)
			}
			for _, st := range restoreStages {
				if ops[st] != 1 {
					t.Errorf("v1 API: %d spans of %s, want 1", ops[st], st)
				}
			}
		})
	}
}

// TestTraceCollectorDown: a collector that is not there, or does not
// answer, costs the restore one warning and at most the export timeout,
// never its success.
func TestTraceCollectorDown(t *testing.T) {
	needRoot(t)
	const timeout = 300 * time.Millisecond
	// The margin covers what the export itself does besides waiting
	// (making the spans, dialing); it is not a speed claim.
	const margin = 700 * time.Millisecond
	base := restoreTraced(t, "counter").took
	silent := tracetest.HungCollector(t)
	closed := "127.0.0.1:" + tracetest.FreePort(t)
	for _, c := range []struct{ name, target string }{
		{"grpc closed port", "grpc://" + closed},
		{"http closed port", "http://" + closed},
		{"grpc silent", "grpc://" + silent},
		{"http silent", "http://" + silent},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := restoreTraced(t, "counter", "--trace", c.target, "--trace-timeout", timeout.String())
			warnings := strings.Count(r.stderr, "level=WARN")
			if warnings != 1 || !strings.Contains(r.stderr, "trace not exported") {
				t.Errorf("stderr %q: want exactly one warning that the trace was not exported", r.stderr)
			}
			if extra := r.took - base; extra > timeout+margin {
				t.Errorf("the dead collector added %v (restore %v, without tracing %v), more than the %v timeout and %v margin",
					extra, r.took, base, timeout, margin)
			}
		})
	}
}

// TestTraceTimeoutFromEnv: without --trace-timeout the export waits as
// long as OTEL_EXPORTER_OTLP_TIMEOUT says (ms); --trace-timeout wins over
// it. The warning names the timeout that ended the export.
func TestTraceTimeoutFromEnv(t *testing.T) {
	needRoot(t)
	silent := tracetest.HungCollector(t)
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "250")
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"env", nil, "no answer within 250ms"},
		{"flag wins", []string{"--trace-timeout", "150ms"}, "no answer within 150ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := restoreTraced(t, "counter", append([]string{"--trace", "http://" + silent}, c.args...)...)
			if !strings.Contains(r.stderr, "trace not exported") || !strings.Contains(r.stderr, c.want) {
				t.Errorf("stderr %q: want the warning %q", r.stderr, c.want)
			}
		})
	}
}

// dumpStages are a dump's stages, in order.
var dumpStages = []string{"freeze", "collect", "dump tasks", "memfds", "write images", "release"}

// TestTraceDump dumps workloads with --trace FILE.json: one root, the
// dump's stages in order, one span per task in the stage that dumps the
// tasks, with its steps inside.
func TestTraceDump(t *testing.T) {
	needRoot(t)
	for _, c := range []struct{ name, ready string }{
		{"counter", "out.log"},
		{"tree", "out-child3.log"}, // written once every task runs
	} {
		t.Run(c.name, func(t *testing.T) {
			p := workloads.Start(t, c.name)
			p.WaitFile(t, c.ready)
			dir := filepath.Join(t.TempDir(), "images")
			file := filepath.Join(t.TempDir(), "dump.json")
			code, _, errOut := runDump(t, "-t", strconv.Itoa(p.Pid), "-D", dir, "--trace", file)
			if code != 0 {
				t.Fatalf("crest dump --trace: exit %d: %s", code, errOut)
			}
			if errOut != "" {
				t.Errorf("stderr %q, want nothing", errOut)
			}
			req, err := trace.ReadJSON(file)
			if err != nil {
				t.Fatal(err)
			}
			tr := readTree(t, req)
			if tr.root.Name != "crest dump" || tracetest.String(tr.root.Attributes, string(trace.AttrOp)) != "dump" ||
				tracetest.String(tr.root.Attributes, "crest.images_dir") != dir {
				t.Errorf("root %q attributes %v", tr.root.Name, tr.root.Attributes)
			}
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := tracetest.Int(tr.root.Attributes, "crest.tasks"); n != int64(len(d.Pstree)) {
				t.Errorf("root crest.tasks %d, the images have %d", n, len(d.Pstree))
			}
			stages := tr.stages()
			var names []string
			for _, st := range stages {
				names = append(names, st.Name)
			}
			if !slices.Equal(names, dumpStages) {
				t.Fatalf("stages %v, want %v", names, dumpStages)
			}
			for i := 1; i < len(stages); i++ {
				if stages[i].StartTimeUnixNano < stages[i-1].EndTimeUnixNano {
					t.Errorf("%s starts before %s ends", stages[i].Name, stages[i-1].Name)
				}
			}
			wantSteps := []string{"core", "ids", "memory map", "pages", "files"}
			for _, st := range stages {
				var pids []int
				for _, c := range tr.children[st] {
					pid, _ := tracetest.Int(c.Attributes, "process.vpid")
					pids = append(pids, int(pid))
					if st.Name != "dump tasks" {
						continue
					}
					var steps []string
					for _, s := range tr.children[c] {
						steps = append(steps, s.Name)
					}
					if !slices.Equal(steps, wantSteps) {
						t.Errorf("%s/%s: steps %v, want %v", st.Name, c.Name, steps, wantSteps)
					}
				}
				slices.Sort(pids)
				var want []int
				switch st.Name {
				case "freeze", "dump tasks":
					for _, e := range d.Pstree {
						want = append(want, int(e.GetPid()))
					}
				case "release":
					want = []int{int(d.Pstree[0].GetPid())}
				}
				slices.Sort(want)
				if !slices.Equal(pids, want) {
					t.Errorf("%s: task spans of %v, want one for each of %v", st.Name, pids, want)
				}
			}
			if !workloads.WaitGone(p.Pid, 10*time.Second) {
				t.Errorf("pid %d still there after the dump", p.Pid)
			}
		})
	}
}

func TestTraceDumpUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--trace", "nowhere"}, fmt.Sprintf("trace target %q", "nowhere")},
		{[]string{"--trace", "-", "--trace-timeout", "0s"}, "--trace-timeout 0s: want a positive duration"},
		{[]string{"--trace", "-", "--trace-timeout", "-1s"}, "--trace-timeout -1s: want a positive duration"},
	} {
		code, _, errOut := runDump(t, append([]string{"-t", "1", "-D", "x"}, c.args...)...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("crest dump %q: exit %d: %s; want exit 2 and %q", c.args, code, errOut, c.want)
		}
	}
}

// TestTraceTimeoutHelp: the help names where the timeout comes from when
// the flag is not given, not a default that the environment overrides.
func TestTraceTimeoutHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"restore", "-h"}, &out, &errb); code != 0 {
		t.Fatalf("crest restore -h: exit %d: %s", code, errb.String())
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if !strings.Contains(line, "--trace-timeout") {
			continue
		}
		if !strings.Contains(line, "(default: OTEL_EXPORTER_OTLP_TIMEOUT in ms, else 2s)") || strings.Contains(line, "(default 2s)") {
			t.Errorf("help line %q", line)
		}
		return
	}
	t.Errorf("no --trace-timeout in the help:\n%s", out.String())
}

// BenchmarkRestoreTraceOverhead is restore's wall time (the whole
// `crest restore -d` command, in this process) with --trace to a JSON file
// and without, median of 20 of each, interleaved; numbers for the notes,
// never asserted.
//
//	go test ./cmd/crest -run '^$' -bench RestoreTraceOverhead -benchtime 1x
func BenchmarkRestoreTraceOverhead(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("restoring a tree needs root")
	}
	const n = 20
	for _, name := range []string{"counter", "tree"} {
		b.Run(name, func(b *testing.B) {
			fixture.Install(b, name)
			dir := fixture.Images(b, name)
			tmp := b.TempDir()
			once := func(args ...string) time.Duration {
				pidfile := filepath.Join(tmp, "pid")
				os.Remove(pidfile)
				var out, errb bytes.Buffer
				begin := time.Now()
				code := run(append([]string{"restore", "-D", dir, "-d", "--pidfile", pidfile}, args...), &out, &errb)
				took := time.Since(begin)
				if pb, err := os.ReadFile(pidfile); err == nil {
					root, _ := strconv.Atoi(strings.TrimSpace(string(pb)))
					removeTree(b, root)
				}
				if code != 0 {
					b.Fatalf("crest restore %q: exit %d: %s", args, code, errb.String())
				}
				// the fixture's files as they were at the dump, for the next one
				fixture.Install(b, name)
				return took
			}
			for b.Loop() {
				var plain, traced []time.Duration
				file := filepath.Join(tmp, "trace.json")
				for range n {
					plain = append(plain, once())
					traced = append(traced, once("--trace", file))
				}
				slices.Sort(plain)
				slices.Sort(traced)
				mp, mt := plain[n/2], traced[n/2]
				b.ReportMetric(float64(mp.Microseconds())/1e3, "ms-plain")
				b.ReportMetric(float64(mt.Microseconds())/1e3, "ms-traced")
				b.ReportMetric(float64(mt-mp)/float64(mp)*100, "%-overhead")
			}
		})
	}
}
