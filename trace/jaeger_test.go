package trace

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// jaeger is a Jaeger all-in-one started for one test, on free loopback
// ports, with in-memory storage.
type jaeger struct {
	grpc, http, query string // host:port
}

// jaegerBinary returns the pinned Jaeger: $CREST_JAEGER when it exists,
// else what tools/jaeger/jaeger.sh build makes (a cold build takes some
// minutes; the Go build cache makes later ones quick). A failed build
// fails the test: the end-to-end tests must not skip in CI.
func jaegerBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CREST_JAEGER"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	script, err := filepath.Abs("../tools/jaeger/jaeger.sh")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", script, "build")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("building Jaeger with %s build: %v\n%s", script, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

func startJaeger(t *testing.T) *jaeger {
	t.Helper()
	bin := jaegerBinary(t)
	config, err := filepath.Abs("../tools/jaeger/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ports := map[string]string{}
	for _, k := range []string{"OTLP_GRPC", "OTLP_HTTP", "QUERY", "QUERY_GRPC", "HEALTH"} {
		ports[k] = freePort(t)
	}
	cmd := exec.Command(bin, "--config", "file:"+config)
	cmd.Env = os.Environ()
	for k, p := range ports {
		cmd.Env = append(cmd.Env, "CREST_JAEGER_"+k+"_PORT="+p)
	}
	log := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		// Once it received traces, Jaeger's shutdown may hang for seconds
		// on a gRPC client of its own that dials localhost:4317; its
		// storage is memory, nothing is lost by killing it.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	health := "http://127.0.0.1:" + ports["HEALTH"] + "/status"
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("jaeger exited: %v\n%s", err, log.String())
		default:
		}
		if r, err := http.Get(health); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("jaeger not ready after 30 s\n%s", log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &jaeger{grpc: "127.0.0.1:" + ports["OTLP_GRPC"], http: "127.0.0.1:" + ports["OTLP_HTTP"],
		query: "127.0.0.1:" + ports["QUERY"]}
}

// fetch gets trace id back through the v3 query API (OTLP JSON), waiting
// for the collector's batch to reach storage.
func (j *jaeger) fetch(t *testing.T, id string) *coltracepb.ExportTraceServiceRequest {
	t.Helper()
	url := fmt.Sprintf("http://%s/api/v3/traces/%s", j.query, id)
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				var wrap struct {
					Result json.RawMessage `json:"result"`
				}
				if err := json.Unmarshal(b, &wrap); err != nil {
					t.Fatalf("GET %s: %v", url, err)
				}
				req, err := UnmarshalOTLPJSON(wrap.Result)
				if err != nil {
					t.Fatalf("GET %s: %v", url, err)
				}
				return req
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: trace not there after 15 s (last: %v)", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Jaeger's v1 JSON API must show the same tree; the UI reads it.
func (j *jaeger) fetchV1(t *testing.T, id string) (spans, roots int, ops map[string]int) {
	t.Helper()
	url := fmt.Sprintf("http://%s/api/traces/%s", j.query, id)
	r, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var body struct {
		Data []struct {
			Spans []struct {
				OperationName string `json:"operationName"`
				References    []struct {
					RefType string `json:"refType"`
				} `json:"references"`
			} `json:"spans"`
		} `json:"data"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Data) != 1 {
		t.Fatalf("GET %s: %v, %d traces", url, err, len(body.Data))
	}
	ops = map[string]int{}
	for _, s := range body.Data[0].Spans {
		ops[s.OperationName]++
		if len(s.References) == 0 {
			roots++
		}
	}
	return len(body.Data[0].Spans), roots, ops
}

func TestJaegerEndToEnd(t *testing.T) {
	j := startJaeger(t)
	cases := []struct {
		name    string
		target  func() string
		env     map[string]string
		service string
	}{
		{name: "grpc", target: func() string { return "grpc://" + j.grpc }, service: "crest"},
		{name: "http", target: func() string { return "http://" + j.http }, service: "crest"},
		{name: "env-http", target: func() string { return "otlp" }, service: "crest-e2e",
			env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + j.http, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
				"OTEL_SERVICE_NAME": "crest-e2e", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=ci,host.name=test"}},
		{name: "env-grpc", target: func() string { return "otlp" }, service: "crest-e2e-grpc",
			env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + j.grpc, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
				"OTEL_SERVICE_NAME": "crest-e2e-grpc"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			tr := Build(syntheticRecord())
			target, err := ParseTarget(c.target())
			if err != nil {
				t.Fatal(err)
			}
			if err := Emit(context.Background(), tr, target, Options{Timeout: 5 * time.Second}); err != nil {
				t.Fatalf("export: %v", err)
			}
			got := j.fetch(t, tr.ID().String())
			checkOTLP(t, tr, got)
			res := got.ResourceSpans[0].Resource.Attributes
			if v := anyString(res, "service.name"); v != c.service {
				t.Errorf("service.name %q, want %q", v, c.service)
			}
			if c.env["OTEL_RESOURCE_ATTRIBUTES"] != "" && anyString(res, "deployment.environment.name") != "ci" {
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

func anyString(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

func anyInt(kvs []*commonpb.KeyValue, key string) (int64, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value.GetIntValue(), true
		}
	}
	return 0, false
}

// checkOTLP checks a trace as a reader gets it back (from a collector or
// a file) against the model: the same spans, one root, parents that
// exist and contain their children, stages in order under the root, task
// spans with the semantic-convention attributes, the root's attributes.
func checkOTLP(t *testing.T, tr *Trace, req *coltracepb.ExportTraceServiceRequest) {
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
		if len(p.ParentSpanId) == 0 && anyString(s.Attributes, string(keyStage)) != "" {
			stages = append(stages, s)
		}
		if strings.HasPrefix(s.Name, "task ") {
			if _, ok := anyInt(s.Attributes, "process.vpid"); !ok {
				t.Errorf("%s without process.vpid", s.Name)
			}
			if _, ok := anyInt(s.Attributes, "process.pid"); !ok {
				t.Errorf("%s without process.pid", s.Name)
			}
		}
	}
	if root == nil {
		t.Fatal("no root span")
	}
	if root.Name != "crest restore" || anyString(root.Attributes, "crest.verification.verdict") != "ok" ||
		anyString(root.Attributes, "crest.images_dir") != "/images/tree" {
		t.Errorf("root %s attributes %v", root.Name, root.Attributes)
	}
	if n, _ := anyInt(root.Attributes, "crest.tasks"); n != 3 {
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
