// Package tracetest starts the pinned Jaeger of tools/jaeger for tests
// that send spans to a real collector and read them back.
//
// It does not import trace, so that trace's own tests can use it; callers
// decode what Fetch returns with trace.UnmarshalOTLPJSON.
package tracetest

import (
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
)

// Jaeger is a Jaeger all-in-one started for one test, on free loopback
// ports, with in-memory storage. The fields are host:port.
type Jaeger struct {
	GRPC, HTTP, Query string
}

// repoFile finds rel (a path from the repository root) from the test's
// working directory upwards.
func repoFile(t testing.TB, rel string) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		p := filepath.Join(d, rel)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		if filepath.Dir(d) == d {
			t.Fatalf("%s not found above %s", rel, wd)
		}
	}
}

// Binary returns the pinned Jaeger: $CREST_JAEGER when it exists, else
// what tools/jaeger/jaeger.sh build makes (a cold build takes some
// minutes; the Go build cache makes later ones quick). A failed build
// fails the test: the end-to-end tests must not skip in CI.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("CREST_JAEGER"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	script := repoFile(t, "tools/jaeger/jaeger.sh")
	cmd := exec.Command("bash", script, "build")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("building Jaeger with %s build: %v\n%s", script, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// FreePort returns a loopback port nobody listens on (at the time of the
// call).
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// Start starts Jaeger and waits until it is ready; the test's cleanup
// stops it and waits until it is gone.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin := Binary(t)
	config := repoFile(t, "tools/jaeger/config.yaml")
	ports := map[string]string{}
	for _, k := range []string{"OTLP_GRPC", "OTLP_HTTP", "QUERY", "QUERY_GRPC", "HEALTH"} {
		ports[k] = FreePort(t)
	}
	cmd := exec.Command(bin, "--config", "file:"+config)
	cmd.Env = os.Environ()
	for k, p := range ports {
		cmd.Env = append(cmd.Env, "CREST_JAEGER_"+k+"_PORT="+p)
	}
	// One writer for both: exec then copies from a single pipe.
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
	return &Jaeger{GRPC: "127.0.0.1:" + ports["OTLP_GRPC"], HTTP: "127.0.0.1:" + ports["OTLP_HTTP"],
		Query: "127.0.0.1:" + ports["QUERY"]}
}

// Fetch gets trace id (hex) back through the v3 query API, waiting for
// the collector's batch to reach storage, and returns the OTLP JSON of
// its "result".
func (j *Jaeger) Fetch(t testing.TB, id string) []byte {
	t.Helper()
	url := fmt.Sprintf("http://%s/api/v3/traces/%s", j.Query, id)
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
				return wrap.Result
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: trace not there after 15 s (last: %v)", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// V1Span is a span as Jaeger's v1 JSON API (the UI's) shows it.
type V1Span struct {
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	StartTime int64 `json:"startTime"` // µs
	Duration  int64 `json:"duration"`  // µs
	Tags      []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
}

// FetchV1 gets trace id through the v1 API (/api/traces/ID).
func (j *Jaeger) FetchV1(t testing.TB, id string) []V1Span {
	t.Helper()
	url := fmt.Sprintf("http://%s/api/traces/%s", j.Query, id)
	r, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var body struct {
		Data []struct {
			Spans []V1Span `json:"spans"`
		} `json:"data"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Data) != 1 {
		t.Fatalf("GET %s: %v, %d traces", url, err, len(body.Data))
	}
	return body.Data[0].Spans
}
