package trace

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/crest-restore/crest/trace/tracetest"
)

// jaeger wraps the shared Jaeger starter with the decoding of this
// package.
type jaeger struct{ *tracetest.Jaeger }

func startJaeger(t *testing.T) *jaeger { return &jaeger{tracetest.Start(t)} }

// fetch gets trace id back through the v3 query API (OTLP JSON).
func (j *jaeger) fetch(t *testing.T, id string) *tracepb.TracesData {
	t.Helper()
	req, err := UnmarshalOTLPJSON(j.Fetch(t, id))
	if err != nil {
		t.Fatalf("trace %s from Jaeger: %v", id, err)
	}
	return req
}

// Jaeger's v1 JSON API must show the same tree; the UI reads it.
func (j *jaeger) fetchV1(t *testing.T, id string) (spans, roots int, ops map[string]int) {
	t.Helper()
	ops = map[string]int{}
	all := j.FetchV1(t, id)
	for _, s := range all {
		ops[s.OperationName]++
		if len(s.References) == 0 {
			roots++
		}
	}
	return len(all), roots, ops
}

func TestJaegerEndToEnd(t *testing.T) {
	j := startJaeger(t)
	cases := []struct {
		name    string
		target  func() string
		env     map[string]string
		service string
	}{
		{name: "grpc", target: func() string { return "grpc://" + j.GRPC }, service: "crest"},
		{name: "http", target: func() string { return "http://" + j.HTTP }, service: "crest"},
		{name: "env-http", target: func() string { return "otlp" }, service: "crest-e2e",
			env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + j.HTTP, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
				"OTEL_SERVICE_NAME": "crest-e2e", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=ci,host.name=test"}},
		{name: "env-grpc", target: func() string { return "otlp" }, service: "crest-e2e-grpc",
			env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + j.GRPC, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
				"OTEL_SERVICE_NAME": "crest-e2e-grpc"}},
		{name: "grpc-gzip", target: func() string { return "grpc://" + j.GRPC }, service: "crest",
			env: map[string]string{"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}},
		{name: "http-gzip", target: func() string { return "http://" + j.HTTP }, service: "crest",
			env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip"}},
		{name: "env-traces-grpc-gzip", target: func() string { return "otlp" }, service: "crest",
			env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": j.GRPC, "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
				"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
				"OTEL_EXPORTER_OTLP_HEADERS": "x-crest-test=1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			setOTLPEnv(t, c.env)
			t.Setenv("OTEL_SERVICE_NAME", c.env["OTEL_SERVICE_NAME"])
			t.Setenv("OTEL_RESOURCE_ATTRIBUTES", c.env["OTEL_RESOURCE_ATTRIBUTES"])
			tr := Build(syntheticRecord())
			target, err := ParseTarget(c.target())
			if err != nil {
				t.Fatal(err)
			}
			if err := Emit(context.Background(), tr, target, Options{Timeout: 5 * time.Second}); err != nil {
				t.Fatalf("export: %v", err)
			}
			clientConnsGone(t)
			got := j.fetch(t, tr.ID().String())
			checkOTLP(t, tr, got)
			res := got.ResourceSpans[0].Resource.Attributes
			if v := tracetest.String(res, "service.name"); v != c.service {
				t.Errorf("service.name %q, want %q", v, c.service)
			}
			if c.env["OTEL_RESOURCE_ATTRIBUTES"] != "" && tracetest.String(res, "deployment.environment.name") != "ci" {
				t.Errorf("OTEL_RESOURCE_ATTRIBUTES not on the resource: %v", res)
			}
			n, roots, ops := j.fetchV1(t, tr.ID().String())
			if n != countSpans(tr.Root) || roots != 1 || ops["crest restore"] != 1 || ops["FORKING"] != 1 || ops["task 3"] != 5 || ops["task 3 thread 4"] != 4 {
				t.Errorf("v1 API: %d spans, %d roots, ops %v", n, roots, ops)
			}
		})
	}
}

func countSpans(root *Span) int {
	n := 0
	root.Walk(func(*Span, *Span) { n++ })
	return n
}

// checkOTLP checks a trace as a reader gets it back (from a collector or
// a file) against the model: the same spans, one root, parents that
// exist and contain their children, stages in order under the root, task
// spans with the semantic-convention attributes, the root's attributes.
func checkOTLP(t *testing.T, tr *Trace, req *tracepb.TracesData) {
	t.Helper()
	var spans []*tracepb.Span
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			spans = append(spans, ss.Spans...)
		}
	}
	if want := countSpans(tr.Root); len(spans) != want {
		t.Fatalf("%d spans, want %d", len(spans), want)
	}
	byID := map[string]*tracepb.Span{}
	for _, s := range spans {
		byID[string(s.SpanId)] = s
	}
	var root *tracepb.Span
	var stages []*tracepb.Span
	for _, s := range spans {
		if fmt.Sprintf("%x", s.TraceId) != tr.ID().String() {
			t.Errorf("%s: trace id %x, want %s", s.Name, s.TraceId, tr.ID())
		}
		if len(s.ParentSpanId) == 0 {
			if root != nil {
				t.Errorf("two roots: %s and %s", root.Name, s.Name)
			}
			root = s
			continue
		}
		p := byID[string(s.ParentSpanId)]
		if p == nil {
			t.Errorf("%s: parent %x missing", s.Name, s.ParentSpanId)
			continue
		}
		if s.StartTimeUnixNano < p.StartTimeUnixNano || s.EndTimeUnixNano > p.EndTimeUnixNano {
			t.Errorf("%s outside its parent %s", s.Name, p.Name)
		}
		if len(p.ParentSpanId) == 0 && tracetest.String(s.Attributes, string(keyStage)) != "" {
			stages = append(stages, s)
		}
		if strings.HasPrefix(s.Name, "task ") {
			if _, ok := tracetest.Int(s.Attributes, "process.vpid"); !ok {
				t.Errorf("%s without process.vpid", s.Name)
			}
			if _, ok := tracetest.Int(s.Attributes, "process.pid"); !ok {
				t.Errorf("%s without process.pid", s.Name)
			}
		}
	}
	if root == nil {
		t.Fatal("no root span")
	}
	if root.Name != "crest restore" || tracetest.String(root.Attributes, "crest.verification.verdict") != "ok" ||
		tracetest.String(root.Attributes, "crest.images_dir") != "/images/tree" {
		t.Errorf("root %s attributes %v", root.Name, root.Attributes)
	}
	if n, _ := tracetest.Int(root.Attributes, "crest.tasks"); n != 3 {
		t.Errorf("root crest.tasks %d", n)
	}
	// in the order a reader sorts them: by start
	var names []string
	for _, s := range stages {
		names = append(names, s.Name)
	}
	want := []string{}
	for _, s := range stageTable {
		want = append(want, s.name)
	}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("stages %v, want %v", names, want)
	}
	if wall := tr.Clock.Wall(tr.Root.Start).UnixNano(); root.StartTimeUnixNano != uint64(wall) {
		t.Errorf("root starts at %d, want %d", root.StartTimeUnixNano, wall)
	}
}
