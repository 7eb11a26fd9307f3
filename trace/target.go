package trace

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Sink is where a trace goes.
type Sink int

const (
	SinkWaterfall Sink = iota // the terminal
	SinkFile                  // an OTLP/JSON file
	SinkGRPC                  // OTLP over gRPC
	SinkHTTP                  // OTLP over HTTP (protobuf)
)

func (s Sink) String() string {
	return [...]string{"waterfall", "file", "otlp/grpc", "otlp/http"}[s]
}

// Target is a parsed --trace value.
type Target struct {
	Sink Sink
	// Path of a file; Endpoint of a collector: host:port for gRPC, a URL
	// for HTTP, empty to take OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT.
	Path     string
	Endpoint string
	Insecure bool // gRPC without TLS
}

func (t Target) String() string {
	switch t.Sink {
	case SinkWaterfall:
		return "the terminal"
	case SinkFile:
		return t.Path
	}
	if t.Endpoint == "" {
		return t.Sink.String() + " (OTEL_EXPORTER_OTLP_ENDPOINT)"
	}
	return t.Sink.String() + " " + t.Endpoint
}

// ParseTarget reads a --trace value:
//
//   - the waterfall in the terminal
//     FILE.json                       an OTLP/JSON file
//     grpc://HOST:PORT, otlp://HOST:PORT, HOST:4317   OTLP over gRPC
//     grpcs://HOST:PORT               OTLP over gRPC with TLS
//     http://HOST:PORT[/PATH], https://...            OTLP over HTTP (PATH defaults to /v1/traces)
//     otlp                            OTLP as OTEL_EXPORTER_OTLP_ENDPOINT and _PROTOCOL say
func ParseTarget(s string) (Target, error) {
	switch {
	case s == "-":
		return Target{Sink: SinkWaterfall}, nil
	case s == "otlp":
		return EnvTarget(), nil
	case strings.HasPrefix(s, "grpc://"), strings.HasPrefix(s, "otlp://"):
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return Target{}, fmt.Errorf("trace target %q: want grpc://HOST:PORT", s)
		}
		return Target{Sink: SinkGRPC, Endpoint: withPort(u.Host, "4317"), Insecure: true}, nil
	case strings.HasPrefix(s, "grpcs://"):
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return Target{}, fmt.Errorf("trace target %q: want grpcs://HOST:PORT", s)
		}
		return Target{Sink: SinkGRPC, Endpoint: withPort(u.Host, "4317")}, nil
	case strings.HasPrefix(s, "http://"), strings.HasPrefix(s, "https://"):
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return Target{}, fmt.Errorf("trace target %q: want http(s)://HOST:PORT[/PATH]", s)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/traces"
		}
		return Target{Sink: SinkHTTP, Endpoint: u.String()}, nil
	case strings.HasSuffix(s, ".json"):
		return Target{Sink: SinkFile, Path: s}, nil
	}
	if host, port, err := net.SplitHostPort(s); err == nil && host != "" && port == "4317" {
		return Target{Sink: SinkGRPC, Endpoint: s, Insecure: true}, nil
	}
	return Target{}, fmt.Errorf("trace target %q: want -, FILE.json, grpc://HOST:PORT, HOST:4317, http(s)://HOST:PORT or otlp", s)
}

func withPort(host, port string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	return net.JoinHostPort(host, port)
}

// EnvTarget is OTLP as the environment says: gRPC when
// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL is
// "grpc", else HTTP (the specification's default, http/protobuf). The
// exporter reads the endpoint, headers, TLS and timeout variables itself.
func EnvTarget() Target {
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if proto == "grpc" {
		return Target{Sink: SinkGRPC}
	}
	return Target{Sink: SinkHTTP}
}

// FromEnv reports whether the environment asks for OTLP export
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set),
// for a command that got no --trace.
func FromEnv() (Target, bool) {
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return Target{}, false
	}
	return EnvTarget(), true
}

// DefaultTimeout bounds one export to a collector.
const DefaultTimeout = 2 * time.Second

// Options tune Emit.
type Options struct {
	// Timeout bounds an export to a collector, connection and retries
	// included. When zero, OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT does
	// (milliseconds), else DefaultTimeout.
	Timeout time.Duration
	// Out receives the waterfall.
	Out io.Writer
	// Width of the waterfall in columns (100 when zero).
	Width int
}

// ExportError is a failed export: where to and why. A caller warns and
// goes on; the restore it describes is not affected.
type ExportError struct {
	Target Target
	Err    error
}

func (e *ExportError) Error() string {
	return fmt.Sprintf("trace: exporting to %v: %v", e.Target, e.Err)
}

func (e *ExportError) Unwrap() error { return e.Err }

// Emit sends t to target. It returns within the timeout for a collector,
// whatever the collector does, with an *ExportError on failure, and
// leaves no connection open behind it.
func Emit(ctx context.Context, t *Trace, target Target, o Options) error {
	var err error
	switch target.Sink {
	case SinkWaterfall:
		out := o.Out
		if out == nil {
			out = os.Stdout
		}
		err = t.WriteWaterfall(out, o.Width)
	case SinkFile:
		err = t.WriteJSON(target.Path)
	default:
		err = export(ctx, t, target, o.Timeout)
	}
	if err != nil {
		return &ExportError{Target: target, Err: err}
	}
	return nil
}

func export(ctx context.Context, t *Trace, target Target, timeout time.Duration) error {
	data, err := t.Request()
	if err != nil {
		return err
	}
	exp, err := newExporter(target, timeout)
	if err != nil {
		return err
	}
	defer exp.close()
	return exp.export(ctx, data)
}
