package trace

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/trace/tracetest"
)

// otlpVars are the exporter's variables, generic and for traces.
var otlpVars = []string{"ENDPOINT", "HEADERS", "COMPRESSION", "TIMEOUT", "INSECURE", "CERTIFICATE",
	"CLIENT_CERTIFICATE", "CLIENT_KEY", "PROTOCOL"}

// setOTLPEnv clears every OTEL_EXPORTER_OTLP_* variable for the test,
// then sets env.
func setOTLPEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, v := range otlpVars {
		t.Setenv("OTEL_EXPORTER_OTLP_"+v, "")
		t.Setenv("OTEL_EXPORTER_OTLP_TRACES_"+v, "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
}

// emitTo emits a synthetic trace to a --trace value.
func emitTo(t *testing.T, target string, timeout time.Duration) (*Trace, error) {
	t.Helper()
	tg, err := ParseTarget(target)
	if err != nil {
		t.Fatal(err)
	}
	tr := Build(syntheticRecord())
	err = Emit(t.Context(), tr, tg, Options{Timeout: timeout})
	var ee *ExportError
	if err != nil && (!errors.As(err, &ee) || ee.Target != tg) {
		t.Errorf("Emit: %v, want an *ExportError for %v", err, tg)
	}
	return tr, err
}

// Every way of reaching a collector: the spans arrive whole, with the
// headers, compression and TLS the environment asks for, and the
// exporter's connections are gone when Emit returns.
func TestOTLPExport(t *testing.T) {
	pki := newPKI(t)
	tlsEnv := func(more ...string) map[string]string {
		env := map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": pki.caFile}
		for i := 0; i < len(more); i += 2 {
			env[more[i]] = more[i+1]
		}
		return env
	}
	mtlsEnv := tlsEnv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pki.clientCert, "OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.clientKey)
	for _, c := range []struct {
		name       string
		tls        *tlsSetup
		target     string            // ADDR stands for the stand-in's host:port
		env        map[string]string // ADDR too
		proto      string
		grpc, gzip bool
		path       string
		headers    map[string]string // must arrive
		absent     []string          // must not
		clientCert string
	}{
		{name: "http", target: "http://ADDR", proto: "HTTP/1.1", path: "/v1/traces"},
		{name: "http gzip", target: "http://ADDR", env: map[string]string{"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"},
			proto: "HTTP/1.1", path: "/v1/traces", gzip: true},
		{name: "http headers", target: "http://ADDR",
			env: map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "x-generic=1",
				"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Api-Key=se%20cret%2C1, x-tenant = a ,"},
			proto: "HTTP/1.1", path: "/v1/traces", headers: map[string]string{"Api-Key": "se cret,1", "X-Tenant": "a"}, absent: []string{"X-Generic"}},
		{name: "http env endpoint", target: "otlp", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://ADDR/base/"},
			proto: "HTTP/1.1", path: "/base/v1/traces"},
		{name: "http env traces endpoint", target: "otlp",
			env:   map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://ADDR/custom/path"},
			proto: "HTTP/1.1", path: "/custom/path"},
		{name: "http target wins", target: "http://ADDR",
			env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces",
				"OTEL_EXPORTER_OTLP_HEADERS": "x-from-env=yes", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"},
			proto: "HTTP/1.1", path: "/v1/traces", gzip: true, headers: map[string]string{"X-From-Env": "yes"}},
		{name: "https", tls: &tlsSetup{pki: pki}, target: "https://ADDR", env: tlsEnv(), proto: "HTTP/2.0", path: "/v1/traces"},
		{name: "https client certificate", tls: &tlsSetup{pki: pki, clientCert: true}, target: "https://ADDR", env: mtlsEnv,
			proto: "HTTP/2.0", path: "/v1/traces", clientCert: "crest-test-client"},

		{name: "grpc", target: "grpc://ADDR", proto: "HTTP/2.0", grpc: true},
		{name: "grpc gzip", target: "grpc://ADDR", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip"},
			proto: "HTTP/2.0", grpc: true, gzip: true},
		{name: "grpc headers", target: "grpc://ADDR", env: map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0ken"},
			proto: "HTTP/2.0", grpc: true, headers: map[string]string{"Authorization": "Bearer t0ken"}},
		{name: "grpc env http", target: "otlp", env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ADDR/ignored"},
			proto: "HTTP/2.0", grpc: true},
		{name: "grpc env insecure", target: "otlp", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ADDR", "OTEL_EXPORTER_OTLP_INSECURE": "True"},
			proto: "HTTP/2.0", grpc: true},
		{name: "grpcs", tls: &tlsSetup{pki: pki}, target: "grpcs://ADDR", env: tlsEnv(), proto: "HTTP/2.0", grpc: true},
		{name: "grpc env without scheme is TLS", tls: &tlsSetup{pki: pki}, target: "otlp",
			env: tlsEnv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT", "ADDR"), proto: "HTTP/2.0", grpc: true},
		{name: "grpc env https wins over insecure", tls: &tlsSetup{pki: pki}, target: "otlp",
			env:   tlsEnv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT", "https://ADDR", "OTEL_EXPORTER_OTLP_INSECURE", "true"),
			proto: "HTTP/2.0", grpc: true},
		{name: "grpcs client certificate", tls: &tlsSetup{pki: pki, clientCert: true}, target: "grpcs://ADDR", env: mtlsEnv,
			proto: "HTTP/2.0", grpc: true, clientCert: "crest-test-client"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStandIn(t, c.tls)
			env := map[string]string{}
			for k, v := range c.env {
				env[k] = strings.ReplaceAll(v, "ADDR", s.addr)
			}
			setOTLPEnv(t, env)
			tr, err := emitTo(t, strings.ReplaceAll(c.target, "ADDR", s.addr), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			got := s.arrivals()
			if len(got) != 1 {
				t.Fatalf("%d requests, want 1", len(got))
			}
			a := got[0]
			want, _ := tr.Request()
			if !proto.Equal(a.data, want) {
				t.Error("the collector got other spans than the trace's")
			}
			if a.proto != c.proto || a.grpc != c.grpc || a.gzip != c.gzip || a.clientCert != c.clientCert {
				t.Errorf("%s gRPC %v gzip %v client certificate %q, want %s %v %v %q",
					a.proto, a.grpc, a.gzip, a.clientCert, c.proto, c.grpc, c.gzip, c.clientCert)
			}
			if !c.grpc && a.path != c.path {
				t.Errorf("path %s, want %s", a.path, c.path)
			}
			for k, v := range c.headers {
				if got := a.header.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("header %s: %q, want %q", k, got, v)
				}
			}
			for _, k := range c.absent {
				if v := a.header.Get(k); v != "" {
					t.Errorf("header %s: %q, want none", k, v)
				}
			}
			s.waitClosed(t)
			clientConnsGone(t)
		})
	}
}

// What a collector answers: failures named, transient ones tried again
// (and only those), partial successes read.
func TestOTLPAnswers(t *testing.T) {
	unavailable := func(n int, a answer) []answer {
		out := make([]answer, n)
		for i := range out {
			out[i] = a
		}
		return out
	}
	text := map[string]string{"Content-Type": "text/plain"}
	for _, c := range []struct {
		name     string
		grpc     bool
		answers  []answer
		timeout  time.Duration // 5 s when 0
		wantErr  []string      // nil: success
		requests int           // exactly; at least -requests when negative
	}{
		{name: "http 202", answers: []answer{{status: 202}}, requests: 1},
		{name: "http 400 status", answers: []answer{{status: 400, body: rpcStatus(3, "bad spans")}},
			wantErr: []string{"collector answered 400 Bad Request: bad spans"}, requests: 1},
		{name: "http 500 text", answers: []answer{{status: 500, header: text, body: []byte("boom\n")}},
			wantErr: []string{`collector answered 500 Internal Server Error: "boom\n"`}, requests: 1},
		{name: "http 413 long text", answers: []answer{{status: 413, header: text, body: bytes.Repeat([]byte("x"), 300)}},
			wantErr: []string{`413 Request Entity Too Large: "xxxxx`, `xx"...`}, requests: 1},
		{name: "http 404 empty", answers: []answer{{status: 404}}, wantErr: []string{"collector answered 404 Not Found"}, requests: 1},
		{name: "http 503 tried again", answers: []answer{{status: 503}, {status: 503}}, requests: 3},
		{name: "http 502 504 429 tried again", answers: []answer{{status: 502}, {status: 504}, {status: 429}}, requests: 4},
		{name: "http retry-after past the timeout", timeout: 2 * time.Second, answers: []answer{{status: 429, header: map[string]string{"Retry-After": "30"}}},
			wantErr: []string{"429 Too Many Requests", "gave up at try 1: the next, in 30s, would be past the 2s timeout"}, requests: 1},
		{name: "http retry-after date past the timeout", timeout: 2 * time.Second,
			answers: []answer{{status: 503, header: map[string]string{"Retry-After": time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)}}},
			wantErr: []string{"503 Service Unavailable", "would be past the 2s timeout"}, requests: 1},
		{name: "http retry-after nonsense", answers: []answer{{status: 503, header: map[string]string{"Retry-After": "soon"}}}, requests: 2},
		{name: "http 503 until the timeout", timeout: 500 * time.Millisecond, answers: unavailable(100, answer{status: 503}),
			wantErr: []string{"503 Service Unavailable", "would be past the 500ms timeout"}, requests: -2},
		{name: "http rejected spans", answers: []answer{{body: partialAnswer(3, "too old")}},
			wantErr: []string{"collector rejected 3 of", "spans: too old"}, requests: 1},
		{name: "http partial success warning", answers: []answer{{body: partialAnswer(0, "clock skew")}}, requests: 1},
		{name: "http not a response", answers: []answer{{body: []byte{0xff, 0xff, 0xff}}},
			wantErr: []string{"something other than an ExportTraceServiceResponse"}, requests: 1},
		{name: "http group", answers: []answer{{body: protowireGroup()}},
			wantErr: []string{"something other than an ExportTraceServiceResponse", "wire type"}, requests: 1},
		{name: "http answer too large", answers: []answer{{body: make([]byte, 100<<10)}},
			wantErr: []string{"collector answered 200 OK with more than 65536 bytes"}, requests: 1},
		{name: "http connection broken", answers: []answer{{abort: true}}, requests: 2},
		{name: "http answer cut", answers: []answer{{cut: true}}, requests: 2},

		{name: "grpc unavailable tried again", grpc: true, answers: []answer{{grpcStatus: "14", grpcMessage: "busy"}, {grpcStatus: "14"}}, requests: 3},
		{name: "grpc transient codes", grpc: true, answers: []answer{{grpcStatus: "1"}, {grpcStatus: "4"}, {grpcStatus: "8"},
			{grpcStatus: "10"}, {grpcStatus: "11"}, {grpcStatus: "15"}}, requests: 7},
		{name: "grpc invalid argument", grpc: true, answers: []answer{{grpcStatus: "3", grpcMessage: "bad%20span%3A%20%25x"}},
			wantErr: []string{"collector answered INVALID_ARGUMENT: bad span: %x"}, requests: 1},
		{name: "grpc trailers-only failure", grpc: true, answers: []answer{{trailersOnly: true, grpcStatus: "16", grpcMessage: "no token"}},
			wantErr: []string{"collector answered UNAUTHENTICATED: no token"}, requests: 1},
		{name: "grpc trailers-only success", grpc: true, answers: []answer{{trailersOnly: true}}, requests: 1},
		{name: "grpc unknown code", grpc: true, answers: []answer{{grpcStatus: "99"}}, wantErr: []string{"collector answered code 99"}, requests: 1},
		{name: "grpc no status", grpc: true, answers: []answer{{grpcStatus: "-"}}, wantErr: []string{"without a grpc-status"}, requests: 1},
		{name: "grpc bad status", grpc: true, answers: []answer{{grpcStatus: "abc"}}, wantErr: []string{`grpc-status "abc"`}, requests: 1},
		{name: "grpc rejected spans", grpc: true, answers: []answer{{body: partialAnswer(2, "bad ids")}},
			wantErr: []string{"collector rejected 2 of", "spans: bad ids"}, requests: 1},
		{name: "grpc rejected spans gzip", grpc: true, answers: []answer{{body: partialAnswer(2, "bad ids"), gzip: true}},
			wantErr: []string{"collector rejected 2 of", "spans: bad ids"}, requests: 1},
		{name: "grpc partial success warning", grpc: true, answers: []answer{{body: partialAnswer(0, "clock skew")}}, requests: 1},
		{name: "grpc not a response", grpc: true, answers: []answer{{body: []byte{0xff}}},
			wantErr: []string{"something other than an ExportTraceServiceResponse"}, requests: 1},
		{name: "grpc compressed without encoding", grpc: true, answers: []answer{{raw: true, body: grpcFrame(partialAnswer(1, ""), true)}},
			wantErr: []string{`compressed gRPC message with grpc-encoding ""`}, requests: 1},
		{name: "grpc bad gzip", grpc: true, answers: []answer{{raw: true, header: map[string]string{"Grpc-Encoding": "gzip"}, body: []byte{1, 0, 0, 0, 3, 1, 2, 3}}},
			wantErr: []string{"bad gzip message"}, requests: 1},
		{name: "grpc gzip truncated", grpc: true, answers: []answer{{raw: true, header: map[string]string{"Grpc-Encoding": "gzip"},
			body: truncatedGzipFrame()}}, wantErr: []string{"bad gzip message"}, requests: 1},
		{name: "grpc gzip too large", grpc: true, answers: []answer{{body: make([]byte, 100<<10), gzip: true}},
			wantErr: []string{"gzip message of more than 65536 bytes"}, requests: 1},
		{name: "grpc compressed flag 2", grpc: true, answers: []answer{{raw: true, body: []byte{2, 0, 0, 0, 0}}},
			wantErr: []string{"compressed flag 2"}, requests: 1},
		{name: "grpc truncated message", grpc: true, answers: []answer{{raw: true, body: []byte{0, 0, 0}}},
			wantErr: []string{"truncated gRPC message: 3 bytes"}, requests: 1},
		{name: "grpc message length", grpc: true, answers: []answer{{raw: true, body: []byte{0, 0, 0, 0, 9, 1}}},
			wantErr: []string{"gRPC message of 9 bytes in 1"}, requests: 1},
		{name: "grpc answer too large", grpc: true, answers: []answer{{raw: true, body: make([]byte, 100<<10)}},
			wantErr: []string{"with more than 65536 bytes"}, requests: 1},
		{name: "grpc not grpc", grpc: true, answers: []answer{{header: text}},
			wantErr: []string{`collector answered content-type "text/plain", not a gRPC answer`}, requests: 1},
		{name: "grpc http 400", grpc: true, answers: []answer{{status: 400}}, wantErr: []string{"400 Bad Request (INTERNAL)"}, requests: 1},
		{name: "grpc http 401", grpc: true, answers: []answer{{status: 401}}, wantErr: []string{"401 Unauthorized (UNAUTHENTICATED)"}, requests: 1},
		{name: "grpc http 403", grpc: true, answers: []answer{{status: 403}}, wantErr: []string{"403 Forbidden (PERMISSION_DENIED)"}, requests: 1},
		{name: "grpc http 404", grpc: true, answers: []answer{{status: 404}}, wantErr: []string{"404 Not Found (UNIMPLEMENTED)"}, requests: 1},
		{name: "grpc http 500", grpc: true, answers: []answer{{status: 500}}, wantErr: []string{"500 Internal Server Error (UNKNOWN)"}, requests: 1},
		{name: "grpc http 503 tried again", grpc: true, answers: []answer{{status: 503}, {status: 429}}, requests: 3},
		{name: "grpc stream broken", grpc: true, answers: []answer{{abort: true}}, requests: 2},
		{name: "grpc answer cut", grpc: true, answers: []answer{{cut: true}}, requests: 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			setOTLPEnv(t, nil)
			s := newStandIn(t, nil, c.answers...)
			target := "http://" + s.addr
			if c.grpc {
				target = "grpc://" + s.addr
			}
			_, err := emitTo(t, target, cmp.Or(c.timeout, 5*time.Second))
			switch {
			case c.wantErr == nil && err != nil:
				t.Errorf("Emit: %v", err)
			case c.wantErr != nil && err == nil:
				t.Errorf("Emit succeeded, want %q", c.wantErr)
			}
			for _, w := range c.wantErr {
				if err != nil && !strings.Contains(err.Error(), w) {
					t.Errorf("Emit: %v\nwant %q in it", err, w)
				}
			}
			if err != nil && strings.Contains(err.Error(), "no answer within") {
				t.Errorf("Emit: %v: the collector answered", err)
			}
			n := len(s.arrivals())
			if c.requests >= 0 && n != c.requests || c.requests < 0 && n < -c.requests {
				t.Errorf("%d requests, want %d (negative: at least)", n, c.requests)
			}
			t.Logf("%v after %d requests", err, n)
			s.waitClosed(t)
			clientConnsGone(t)
		})
	}
}

// protowireGroup is a message holding a group, which OTLP never has.
func protowireGroup() []byte { return []byte{0x0b, 0x0c} } // start and end of group 1

// truncatedGzipFrame is a gzip stream cut in its middle, framed as gRPC.
func truncatedGzipFrame() []byte {
	f := grpcFrame(bytes.Repeat([]byte("span "), 100), true)
	f = f[:len(f)-8]
	f[1], f[2], f[3], f[4] = 0, 0, 0, byte(len(f)-5)
	return f
}

// A collector's Retry-After holds the next try back that long.
func TestOTLPRetryAfter(t *testing.T) {
	setOTLPEnv(t, nil)
	s := newStandIn(t, nil, answer{status: 429, header: map[string]string{"Retry-After": "1"}})
	if _, err := emitTo(t, "http://"+s.addr, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	got := s.arrivals()
	if len(got) != 2 {
		t.Fatalf("%d requests, want 2", len(got))
	}
	if gap := got[1].at.Sub(got[0].at); gap < time.Second {
		t.Errorf("tried again after %v, the collector said 1 s", gap)
	}
}

// TLS that does not check fails at once, with the reason; nothing
// reaches the collector.
func TestOTLPTLSFailures(t *testing.T) {
	pki := newPKI(t)
	for _, c := range []struct {
		name    string
		tls     *tlsSetup
		target  string
		env     map[string]string
		wantErr string
	}{
		{"https other CA", &tlsSetup{pki: pki}, "https://ADDR", map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": pki.otherCAFile},
			"certificate signed by unknown authority"},
		{"https system roots", &tlsSetup{pki: pki}, "https://ADDR", nil, "certificate signed by unknown authority"},
		{"grpcs other CA", &tlsSetup{pki: pki}, "grpcs://ADDR", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": pki.otherCAFile},
			"certificate signed by unknown authority"},
		{"https without a client certificate", &tlsSetup{pki: pki, clientCert: true}, "https://ADDR",
			map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": pki.caFile}, "certificate required"},
		{"grpcs without a client certificate", &tlsSetup{pki: pki, clientCert: true}, "grpcs://ADDR",
			map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": pki.caFile}, "certificate required"},
		{"https to plain text", nil, "https://ADDR", nil, "does not look like a TLS handshake"},
		{"grpcs without ALPN", &tlsSetup{pki: pki, noALPN: true}, "grpcs://ADDR", map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": pki.caFile},
			`does not speak HTTP/2 over TLS (ALPN ""): no gRPC there`},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStandIn(t, c.tls)
			setOTLPEnv(t, c.env)
			_, err := emitTo(t, strings.ReplaceAll(c.target, "ADDR", s.addr), 5*time.Second)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) || strings.Contains(err.Error(), "no answer within") {
				t.Errorf("Emit: %v, want %q at once", err, c.wantErr)
			}
			if n := len(s.arrivals()); n != 0 {
				t.Errorf("%d requests reached the collector", n)
			}
			t.Log(err)
			s.waitClosed(t)
			clientConnsGone(t)
		})
	}
}

// Bad settings are errors that name the variable (and the file), before
// anything is sent.
func TestOTLPConfigErrors(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	const closed = "127.0.0.1:1"
	for _, c := range []struct {
		name    string
		target  string
		env     map[string]string
		wantErr []string
	}{
		{"compression", "http://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"},
			[]string{`OTEL_EXPORTER_OTLP_COMPRESSION="zstd": want gzip or none`}},
		{"traces compression wins", "grpc://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "lz4"},
			[]string{`OTEL_EXPORTER_OTLP_TRACES_COMPRESSION="lz4"`}},
		{"timeout not a number", "otlp", map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "2s"},
			[]string{`OTEL_EXPORTER_OTLP_TIMEOUT="2s": want a positive number of milliseconds`}},
		{"timeout negative", "otlp", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "-5"},
			[]string{`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="-5"`}},
		{"header without value", "http://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "a=1,novalue"},
			[]string{"OTEL_EXPORTER_OTLP_HEADERS", `"novalue" is not key=value`}},
		{"header without name", "http://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "=1"},
			[]string{"OTEL_EXPORTER_OTLP_HEADERS", `"=1" is not key=value`}},
		{"header name", "http://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "bad key=1"},
			[]string{"OTEL_EXPORTER_OTLP_TRACES_HEADERS", `"bad key=1"`}},
		{"header escape", "grpc://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "k=%zz"},
			[]string{"OTEL_EXPORTER_OTLP_HEADERS: the value of k", "invalid URL escape"}},
		{"header line break", "http://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "k=a%0D%0Ab"},
			[]string{"OTEL_EXPORTER_OTLP_HEADERS: the value of k holds a line break"}},
		{"http endpoint without scheme", "otlp", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"},
			[]string{`OTEL_EXPORTER_OTLP_ENDPOINT="localhost:4318": want an http:// or https:// URL`}},
		{"http traces endpoint scheme", "otlp", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://c/v1/traces"},
			[]string{`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="ftp://c/v1/traces"`}},
		{"grpc endpoint path without scheme", "otlp", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317/x"},
			[]string{`OTEL_EXPORTER_OTLP_ENDPOINT="c:4317/x": want [http[s]://]HOST:PORT`}},
		{"grpc endpoint without host", "otlp", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http:///x"},
			[]string{`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http:///x"`}},
		{"insecure", "otlp", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": closed, "OTEL_EXPORTER_OTLP_INSECURE": "maybe"},
			[]string{`OTEL_EXPORTER_OTLP_INSECURE="maybe": want true or false`}},
		{"certificate missing", "https://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": missing},
			[]string{"OTEL_EXPORTER_OTLP_CERTIFICATE: open " + missing + ": no such file"}},
		{"certificate junk", "grpcs://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": junk},
			[]string{"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: " + junk + " holds no PEM certificate"}},
		{"client certificate without key", "https://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": junk},
			[]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE without OTEL_EXPORTER_OTLP_CLIENT_KEY"}},
		{"client key without certificate", "grpcs://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": junk},
			[]string{"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY without OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"}},
		{"client certificate junk", "https://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": junk, "OTEL_EXPORTER_OTLP_CLIENT_KEY": junk},
			[]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=" + junk + ", OTEL_EXPORTER_OTLP_CLIENT_KEY=" + junk}},
		{"client key missing", "https://" + closed, map[string]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": junk, "OTEL_EXPORTER_OTLP_CLIENT_KEY": missing},
			[]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_KEY: open " + missing}},
	} {
		t.Run(c.name, func(t *testing.T) {
			setOTLPEnv(t, c.env)
			_, err := emitTo(t, c.target, 5*time.Second)
			for _, w := range c.wantErr {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("Emit: %v\nwant %q in it", err, w)
				}
			}
			t.Log(err)
		})
	}
}

// How a target and the environment resolve, without a collector.
func TestExportConfig(t *testing.T) {
	for _, c := range []struct {
		name    string
		target  Target
		timeout time.Duration
		env     map[string]string
		url     string
		tls     bool
		gzip    bool
		wantTO  time.Duration
	}{
		{name: "http default", target: Target{Sink: SinkHTTP}, url: "http://localhost:4318/v1/traces", wantTO: DefaultTimeout},
		{name: "grpc default", target: Target{Sink: SinkGRPC}, url: "http://localhost:4317" + grpcExportPath, wantTO: DefaultTimeout},
		{name: "http endpoint", target: Target{Sink: SinkHTTP}, env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example:443"},
			url: "https://c.example:443/v1/traces", tls: true, wantTO: DefaultTimeout},
		{name: "http endpoint with path", target: Target{Sink: SinkHTTP}, env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/otlp"},
			url: "http://c:4318/otlp/v1/traces", wantTO: DefaultTimeout},
		{name: "http traces endpoint as is", target: Target{Sink: SinkHTTP}, env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"},
			url: "http://c:4318", wantTO: DefaultTimeout},
		{name: "grpc endpoint", target: Target{Sink: SinkGRPC}, env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c/prefix"},
			url: "https://c:4317" + grpcExportPath, tls: true, wantTO: DefaultTimeout},
		{name: "grpc endpoint without scheme", target: Target{Sink: SinkGRPC}, env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4000"},
			url: "https://c:4000" + grpcExportPath, tls: true, wantTO: DefaultTimeout},
		{name: "grpc insecure", target: Target{Sink: SinkGRPC}, env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "c", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "TRUE"},
			url: "http://c:4317" + grpcExportPath, wantTO: DefaultTimeout},
		{name: "insecure is for gRPC only", target: Target{Sink: SinkHTTP}, env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
			url: "https://c/v1/traces", tls: true, wantTO: DefaultTimeout},
		{name: "target wins", target: Target{Sink: SinkGRPC, Endpoint: "t:1234", Insecure: true}, timeout: time.Second,
			env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_TIMEOUT": "9000"},
			url: "http://t:1234" + grpcExportPath, gzip: true, wantTO: time.Second},
		{name: "timeout from the environment", target: Target{Sink: SinkHTTP, Endpoint: "http://t/v1/traces"},
			env: map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "9000", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "250"},
			url: "http://t/v1/traces", wantTO: 250 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			setOTLPEnv(t, c.env)
			cfg, err := exportConfig(c.target, c.timeout)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.url != c.url || (cfg.tls != nil) != c.tls || cfg.gzip != c.gzip || cfg.timeout != c.wantTO {
				t.Errorf("url %s tls %v gzip %v timeout %v, want %s %v %v %v", cfg.url, cfg.tls != nil, cfg.gzip, cfg.timeout,
					c.url, c.tls, c.gzip, c.wantTO)
			}
		})
	}
	for _, bad := range []Target{
		{Sink: SinkFile, Path: "x.json"},
		{Sink: SinkHTTP, Endpoint: "c:4318"},
	} {
		setOTLPEnv(t, nil)
		if cfg, err := exportConfig(bad, 0); err == nil {
			t.Errorf("exportConfig(%+v) = %+v", bad, cfg)
		}
	}
}

// OTEL_EXPORTER_OTLP_TIMEOUT bounds an export when the caller gives no
// timeout; a caller's timeout wins over it.
func TestOTLPTimeout(t *testing.T) {
	hung := tracetest.HungCollector(t)
	for _, c := range []struct {
		name    string
		timeout time.Duration
		env     map[string]string
		want    string
	}{
		{"env", 0, map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "200"}, "no answer within 200ms"},
		{"traces env", 0, map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "60000", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "250"}, "no answer within 250ms"},
		{"caller", 300 * time.Millisecond, map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "60000"}, "no answer within 300ms"},
	} {
		for _, scheme := range []string{"http", "grpc"} {
			t.Run(c.name+" "+scheme, func(t *testing.T) {
				setOTLPEnv(t, c.env)
				start := time.Now()
				_, err := emitTo(t, scheme+"://"+hung, c.timeout)
				took := time.Since(start)
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Errorf("Emit: %v, want %q", err, c.want)
				}
				// A ceiling that proves it returned, not a benchmark.
				if took > 10*time.Second {
					t.Errorf("Emit took %v", took)
				}
				clientConnsGone(t)
			})
		}
	}
}

// A cancelled caller ends the wait for the next try, and says so.
func TestOTLPCancelledWhileWaiting(t *testing.T) {
	setOTLPEnv(t, nil)
	s := newStandIn(t, nil, answer{status: 503, header: map[string]string{"Retry-After": "3"}})
	tg, _ := ParseTarget("http://" + s.addr)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		for len(s.arrivals()) == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	err := Emit(ctx, Build(syntheticRecord()), tg, Options{Timeout: 10 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "503 Service Unavailable (waiting to try again: context canceled)") {
		t.Errorf("Emit: %v, want the 503 and the cancel", err)
	}
	if n := len(s.arrivals()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
	s.waitClosed(t)
	clientConnsGone(t)
}

// A dial the transport finishes after the export returned is closed at
// once: nothing is left running.
func TestOTLPDialAfterClose(t *testing.T) {
	setOTLPEnv(t, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e, err := newExporter(Target{Sink: SinkHTTP, Endpoint: "http://" + l.Addr().String() + "/v1/traces"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e.close()
	c, err := e.dial(t.Context(), "tcp", l.Addr().String())
	var de *dialError
	if c != nil || !errors.As(err, &de) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("dial after close: %v, %v", c, err)
	}
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := sc.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the collector's end read %d bytes, %v; want EOF", n, err)
	}
}

// Strings that are not UTF-8 (a comm, a path) do not stop an export:
// protobuf wants UTF-8, the collector gets U+FFFD in their place.
func TestOTLPInvalidUTF8(t *testing.T) {
	setOTLPEnv(t, nil)
	for _, scheme := range []string{"http", "grpc"} {
		t.Run(scheme, func(t *testing.T) {
			s := newStandIn(t, nil)
			rec := syntheticRecord()
			rec.ImagesDir = "/images/\xff\xfe/tree"
			tg, _ := ParseTarget(scheme + "://" + s.addr)
			if err := Emit(t.Context(), Build(rec), tg, Options{Timeout: 5 * time.Second}); err != nil {
				t.Fatal(err)
			}
			got := s.arrivals()
			if len(got) != 1 {
				t.Fatalf("%d requests", len(got))
			}
			root := got[0].data.ResourceSpans[0].ScopeSpans[0].Spans[0]
			if v := tracetest.String(root.Attributes, "crest.images_dir"); v != "/images/\uFFFD/tree" {
				t.Errorf("crest.images_dir %q", v)
			}
		})
	}
}

// Spans protobuf cannot carry are an error, not a panic.
func TestOTLPEncodeError(t *testing.T) {
	setOTLPEnv(t, nil)
	e, err := newExporter(Target{Sink: SinkGRPC, Endpoint: "127.0.0.1:1", Insecure: true}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	bad := &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{SchemaUrl: "\xff"}}}
	if err := e.export(t.Context(), bad); err == nil || !strings.Contains(err.Error(), "encoding the spans") {
		t.Errorf("export: %v", err)
	}
}

// The answer decoders skip what they do not know and refuse what is cut.
func TestOTLPAnswerDecoding(t *testing.T) {
	unknown := protowire.AppendTag(nil, 7, protowire.Fixed32Type)
	unknown = protowire.AppendFixed32(unknown, 1)
	unknown = protowire.AppendTag(unknown, 8, protowire.Fixed64Type)
	unknown = protowire.AppendFixed64(unknown, 1)
	unknown = protowire.AppendTag(unknown, 9, protowire.VarintType)
	unknown = protowire.AppendVarint(unknown, 300)
	inner := append(append([]byte(nil), unknown...), partialAnswer(0, "")...) // field 1 as an empty message: unknown
	inner = protowire.AppendTag(inner, 1, protowire.VarintType)
	inner = protowire.AppendVarint(inner, 4)
	for _, c := range []struct {
		name    string
		answer  []byte
		wantErr string
	}{
		{"empty", nil, ""},
		{"unknown fields", unknown, ""},
		{"rejected among unknown fields", append(append([]byte(nil), unknown...), protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), inner)...),
			"collector rejected 4 of 10 spans"},
		{"partial success as a varint", protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 5), ""},
		{"cut fixed64", protowire.AppendTag(nil, 8, protowire.Fixed64Type), "field 8: unexpected EOF"},
		{"cut length", []byte{0x0a, 0x05, 1}, "field 1: unexpected EOF"},
		{"cut inside", protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte{0x08}), "field 1: unexpected EOF"},
		{"cut tag", []byte{0x80}, "unexpected EOF"},
	} {
		err := partialSuccess(c.answer, 10)
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.wantErr)
		}
	}
	if msg, err := rpcStatusMessage(append(append([]byte(nil), unknown...), rpcStatus(5, "gone")...)); msg != "gone" || err != nil {
		t.Errorf("rpcStatusMessage: %q, %v", msg, err)
	}
}

func TestGRPCTimeout(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "1n"},
		{-time.Second, "1n"},
		{99999999, "99999999n"},
		{100000000, "100000u"},
		{1500 * time.Millisecond, "1500000u"},
		{3 * time.Hour, "10800000m"},
		{30 * time.Hour, "108000S"},
		{math.MaxInt64, "2562048H"},
	} {
		if got := grpcTimeout(c.d); got != c.want || !grpcTimeoutRE.MatchString(got) {
			t.Errorf("grpcTimeout(%v) = %q, want %q", c.d, got, c.want)
		}
	}
}

// The decoders of a collector's answer take any bytes without panicking
// and agree on what they read.
func FuzzOTLPAnswer(f *testing.F) {
	f.Add(partialAnswer(3, "too old"))
	f.Add(rpcStatus(3, "bad"))
	f.Add(grpcFrame(partialAnswer(1, "x"), true))
	f.Add(grpcFrame(partialAnswer(1, "x"), false))
	f.Add([]byte{0x0b, 0x0c})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = partialSuccess(b, 1)
		_, _ = rpcStatusMessage(b)
		for _, enc := range []string{"", "gzip"} {
			msg, err := grpcMessage(b, enc)
			if err == nil && len(b) > 0 && b[0] == 0 && !bytes.Equal(msg, b[5:]) {
				t.Fatalf("grpcMessage(%x) = %x", b, msg)
			}
		}
	})
}
