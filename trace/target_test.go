package trace

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/trace/tracetest"
)

func TestParseTarget(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Target
		bad  bool
	}{
		{in: "-", want: Target{Sink: SinkWaterfall}},
		{in: "out/trace.json", want: Target{Sink: SinkFile, Path: "out/trace.json"}},
		{in: "grpc://127.0.0.1:4317", want: Target{Sink: SinkGRPC, Endpoint: "127.0.0.1:4317", Insecure: true}},
		{in: "otlp://localhost:4317", want: Target{Sink: SinkGRPC, Endpoint: "localhost:4317", Insecure: true}},
		{in: "grpc://collector", want: Target{Sink: SinkGRPC, Endpoint: "collector:4317", Insecure: true}},
		{in: "grpcs://collector:443", want: Target{Sink: SinkGRPC, Endpoint: "collector:443"}},
		{in: "localhost:4317", want: Target{Sink: SinkGRPC, Endpoint: "localhost:4317", Insecure: true}},
		{in: "http://127.0.0.1:4318", want: Target{Sink: SinkHTTP, Endpoint: "http://127.0.0.1:4318/v1/traces"}},
		{in: "https://c.example/otlp/v1/traces", want: Target{Sink: SinkHTTP, Endpoint: "https://c.example/otlp/v1/traces"}},
		{in: "otlp", want: Target{Sink: SinkHTTP}},
		{in: "trace.txt", bad: true},
		{in: "localhost:9999", bad: true},
		{in: "grpc://", bad: true},
	} {
		got, err := ParseTarget(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("ParseTarget(%q) = %+v, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestEnvTarget(t *testing.T) {
	for _, c := range []struct {
		protocol, tracesProtocol string
		want                     Sink
	}{
		{"", "", SinkHTTP},
		{"grpc", "", SinkGRPC},
		{"http/protobuf", "", SinkHTTP},
		{"http/protobuf", "grpc", SinkGRPC},
	} {
		t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", c.protocol)
		t.Setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", c.tracesProtocol)
		if got := EnvTarget(); got.Sink != c.want || got.Endpoint != "" {
			t.Errorf("protocol %q traces %q: %+v, want %v", c.protocol, c.tracesProtocol, got, c.want)
		}
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	if _, ok := FromEnv(); ok {
		t.Error("FromEnv without an endpoint")
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
	if _, ok := FromEnv(); !ok {
		t.Error("FromEnv ignores OTEL_EXPORTER_OTLP_ENDPOINT")
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// captureStderr runs fn with fd 2 going to a file and returns what was
// written there: gRPC and the SDK write their complaints to fd 2.
func captureStderr(t *testing.T, fn func()) string {
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Loggers keep the *os.File they got at init: move fd 2 itself.
	saved, err := unix.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Dup2(int(f.Fd()), 2); err != nil {
		t.Fatal(err)
	}
	fn()
	if err := unix.Dup2(saved, 2); err != nil {
		t.Fatal(err)
	}
	unix.Close(saved)
	if _, err := f.Seek(0, 0); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// A collector that is down costs at most the export timeout, and gives
// one error for the caller's one warning, nothing else on the terminal.
func TestCollectorDown(t *testing.T) {
	var handled []error
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { handled = append(handled, err) }))
	const timeout = 300 * time.Millisecond
	hung := tracetest.HungCollector(t)
	for _, c := range []struct{ name, target string }{
		{"grpc-closed", "grpc://" + closedPort(t)},
		{"http-closed", "http://" + closedPort(t)},
		{"grpcs-closed", "grpcs://" + closedPort(t)},
		{"https-closed", "https://" + closedPort(t)},
		{"grpc-hung", "grpc://" + hung},
		{"http-hung", "http://" + hung},
	} {
		target := c.target
		t.Run(c.name, func(t *testing.T) {
			tr := Build(syntheticRecord())
			tg, err := ParseTarget(target)
			if err != nil {
				t.Fatal(err)
			}
			var emitErr error
			var took time.Duration
			out := captureStderr(t, func() {
				start := time.Now()
				emitErr = Emit(context.Background(), tr, tg, Options{Timeout: timeout})
				took = time.Since(start)
			})
			var ee *ExportError
			if !errors.As(emitErr, &ee) || ee.Target != tg {
				t.Fatalf("Emit to a closed port: %v, want an *ExportError for %v", emitErr, tg)
			}
			// A bound, not a benchmark: the export gave up at its timeout
			// rather than after the SDK's default retries (a minute).
			if took > timeout+2*time.Second {
				t.Errorf("Emit took %v with a timeout of %v", took, timeout)
			}
			// Nobody listens: that is clear at once, no use trying again
			// until the timeout. A hung collector takes the timeout.
			closed, timedOut := strings.HasSuffix(c.name, "closed"), strings.Contains(emitErr.Error(), "no answer within 300ms")
			if closed && (timedOut || !strings.Contains(emitErr.Error(), "connection refused")) || !closed && !timedOut {
				t.Errorf("Emit: %v", emitErr)
			}
			clientConnsGone(t)
			if out != "" {
				t.Errorf("the exporter wrote to stderr: %q", out)
			}
			t.Logf("%v after %v", emitErr, took)
		})
	}
	if len(handled) != 0 {
		t.Errorf("the SDK's error handler got %v", handled)
	}
}

// A cancelled restore context does not hold the export up either.
func TestEmitCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tg, _ := ParseTarget("grpc://" + closedPort(t))
	if err := Emit(ctx, Build(syntheticRecord()), tg, Options{Timeout: time.Minute}); err == nil {
		t.Fatal("Emit with a cancelled context succeeded")
	}
}

// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES reach the spans; a
// malformed OTEL_RESOURCE_ATTRIBUTES is reported and the trace still
// exports.
func TestResourceFromEnv(t *testing.T) {
	t.Setenv("OTEL_SERVICE_NAME", "crest-ci")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=box,deployment.environment.name=ci")
	spans, _, err := Build(syntheticRecord()).Spans()
	if err != nil {
		t.Fatal(err)
	}
	res := map[string]string{}
	for _, kv := range spans[0].Resource().Attributes() {
		res[string(kv.Key)] = kv.Value.String()
	}
	if res["service.name"] != "crest-ci" || res["host.name"] != "box" || res["telemetry.sdk.name"] != "opentelemetry" {
		t.Errorf("resource %v", res)
	}

	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "no-equals-sign")
	tr := Build(syntheticRecord())
	spans, _, err = tr.Spans()
	if err == nil || len(spans) == 0 {
		t.Fatalf("malformed OTEL_RESOURCE_ATTRIBUTES: %d spans, error %v", len(spans), err)
	}
	for _, kv := range spans[0].Resource().Attributes() {
		if kv.Key == "service.name" && kv.Value.AsString() != "crest" {
			t.Errorf("service.name %q, want crest", kv.Value.AsString())
		}
	}
	if err := Emit(t.Context(), tr, Target{Sink: SinkFile, Path: t.TempDir() + "/t.json"}, Options{}); err != nil {
		t.Errorf("Emit with a malformed resource: %v", err)
	}
}
