package trace

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// crest's own OTLP exporter: one POST of the spans with net/http, as
// OTLP/HTTP (protobuf) or as a unary gRPC call over HTTP/2. The SDK's
// exporters link grpc-go, grpc-gateway, genproto and x/net, 8 MB of
// crest's binary and most of a millisecond at the start of every
// command, for one request at the end of a restore.

const (
	// The retry backoff of the OTLP specification's transient failures:
	// doubling from retryFirst up to retryMax, within the timeout.
	retryFirst = 50 * time.Millisecond
	retryMax   = 500 * time.Millisecond
	// maxAnswer bounds what is read of a collector's answer: an OTLP
	// answer is a partial success or a status, a few hundred bytes.
	maxAnswer = 64 << 10
	userAgent = "crest OTLP exporter"
)

// otlpExporter sends one trace to one collector, then closes its
// connections.
type otlpExporter struct {
	cfg       *otlpConfig
	transport *http.Transport
	client    *http.Client
	dialer    net.Dialer

	mu     sync.Mutex
	conns  []net.Conn // every connection made, for close
	closed bool
}

func newExporter(target Target, timeout time.Duration) (*otlpExporter, error) {
	cfg, err := exportConfig(target, timeout)
	if err != nil {
		return nil, err
	}
	e := &otlpExporter{cfg: cfg, dialer: net.Dialer{Timeout: cfg.timeout}}
	var protocols http.Protocols
	e.transport = &http.Transport{
		DialContext:            e.dial,
		DialTLSContext:         e.dialTLS,
		TLSClientConfig:        cfg.tls,
		MaxResponseHeaderBytes: maxAnswer,
		Protocols:              &protocols,
	}
	switch {
	case !cfg.grpc:
		// An OTLP/HTTP collector speaks HTTP/1.1; h2 when TLS offers it.
		protocols.SetHTTP1(true)
		protocols.SetHTTP2(true)
		e.transport.Proxy = http.ProxyFromEnvironment
	case cfg.tls != nil:
		protocols.SetHTTP2(true) // ALPN h2, nothing else
	default:
		// gRPC without TLS is HTTP/2 with prior knowledge (h2c), which
		// an HTTP proxy would turn into HTTP/1.1: no proxy for gRPC.
		protocols.SetUnencryptedHTTP2(true)
	}
	e.client = &http.Client{Transport: e.transport}
	return e, nil
}

// dialError is a connection to the collector that could not be made.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// dial connects to the collector and keeps the connection for close.
func (e *otlpExporter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := e.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, &dialError{err}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		// a dial the transport went on with after the export returned
		c.Close()
		return nil, &dialError{net.ErrClosed}
	}
	e.conns = append(e.conns, c)
	return c, nil
}

// dialTLS connects with TLS (not through a proxy: then the transport
// does TLS itself), so that a handshake that fails is a dialError too.
func (e *otlpExporter) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := e.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cfg := e.cfg.tls.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	cfg.NextProtos = []string{"h2", "http/1.1"}
	if e.cfg.grpc {
		cfg.NextProtos = []string{"h2"}
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, &dialError{err}
	}
	if p := tc.ConnectionState().NegotiatedProtocol; e.cfg.grpc && p != "h2" {
		c.Close()
		return nil, &dialError{fmt.Errorf("collector %s does not speak HTTP/2 over TLS (ALPN %q): no gRPC there", addr, p)}
	}
	return tc, nil
}

// close closes the exporter's connections, idle or not (an HTTP/2
// connection whose stream was cancelled waits for the collector's
// answer to a PING): after an export nothing of it keeps running.
func (e *otlpExporter) close() {
	e.transport.CloseIdleConnections()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for _, c := range e.conns {
		c.Close()
	}
}

// export sends data, trying again after transient failures, and returns
// within the timeout whatever the collector does.
func (e *otlpExporter) export(parent context.Context, data *tracepb.TracesData) error {
	ctx, cancel := context.WithTimeout(parent, e.cfg.timeout)
	defer cancel()
	body, err := e.encode(data)
	if err != nil {
		return err
	}
	spans := 0
	for _, rs := range data.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			spans += len(ss.Spans)
		}
	}
	err = e.tries(ctx, body, spans)
	if err != nil && ctx.Err() == context.DeadlineExceeded && parent.Err() == nil {
		return fmt.Errorf("no answer within %v: %w", e.cfg.timeout, err)
	}
	return err
}

// tries sends body until the collector takes it, fails in a way that
// will not pass, or the next try would come too late.
func (e *otlpExporter) tries(ctx context.Context, body []byte, spans int) error {
	wait := retryFirst
	for try := 1; ; try++ {
		err := e.send(ctx, body, spans)
		r, ok := err.(*retryable)
		if !ok {
			return err
		}
		// Jitter, between half the backoff and all of it: crest
		// commands that end together do not come back in step.
		next := wait/2 + rand.N(wait/2+1)
		if r.after > 0 {
			next = r.after
		}
		if d, ok := ctx.Deadline(); ok && time.Until(d) < next {
			return fmt.Errorf("%w; gave up at try %d: the next, in %v, would be past the %v timeout",
				r.err, try, next.Round(time.Millisecond), e.cfg.timeout)
		}
		t := time.NewTimer(next)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (waiting to try again: %w)", r.err, ctx.Err())
		}
		wait = min(2*wait, retryMax)
	}
}

// encode marshals data, gzipped if asked; for gRPC into the one
// length-prefixed message of a unary call (compressed flag, big-endian
// length, message).
func (e *otlpExporter) encode(data *tracepb.TracesData) ([]byte, error) {
	prefix := 0
	if e.cfg.grpc {
		prefix = 5
	}
	msg, err := proto.MarshalOptions{}.MarshalAppend(make([]byte, prefix, prefix+proto.Size(data)), data)
	if err != nil {
		return nil, fmt.Errorf("encoding the spans: %w", err)
	}
	if e.cfg.gzip {
		var b bytes.Buffer
		b.Write(msg[:prefix])
		zw, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
		zw.Write(msg[prefix:]) // into memory: no error
		zw.Close()
		msg = b.Bytes()
	}
	if e.cfg.grpc {
		if e.cfg.gzip {
			msg[0] = 1
		}
		binary.BigEndian.PutUint32(msg[1:5], uint32(len(msg)-5))
	}
	return msg, nil
}

// retryable is a failure the OTLP specification lets an exporter try
// again: after, when the collector said when (Retry-After).
type retryable struct {
	err   error
	after time.Duration
}

func (r *retryable) Error() string { return r.err.Error() }

// send makes one request. The error is a *retryable for what may pass.
func (e *otlpExporter) send(ctx context.Context, body []byte, spans int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.cfg.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", userAgent)
	for k, v := range e.cfg.header {
		req.Header[k] = v
	}
	if e.cfg.grpc {
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("TE", "trailers")
		if e.cfg.gzip {
			req.Header.Set("Grpc-Encoding", "gzip")
		}
		if d, ok := ctx.Deadline(); ok {
			req.Header.Set("Grpc-Timeout", grpcTimeout(time.Until(d)))
		}
	} else {
		req.Header.Set("Content-Type", "application/x-protobuf")
		if e.cfg.gzip {
			req.Header.Set("Content-Encoding", "gzip")
		}
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return transportError(ctx, err)
	}
	defer resp.Body.Close()
	// Read to the end: a gRPC answer's status comes in the trailers,
	// after the body.
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return transportError(ctx, fmt.Errorf("%s %s: reading the answer: %w", req.Method, e.cfg.url, err))
	}
	if len(answer) > maxAnswer {
		return fmt.Errorf("collector answered %s with more than %d bytes", resp.Status, maxAnswer)
	}
	if e.cfg.grpc {
		return grpcResult(resp, answer, spans)
	}
	return httpResult(resp, answer, spans)
}

// transportError sorts a failed request. A collector that is not there
// (the dial fails) or whose TLS does not check (the handshake fails, or
// the collector sends an alert) will not be better in 50 ms: that fails
// at once. What breaks after the connection was made (a reset, an EOF, a
// GOAWAY) is transient. Nothing is once ctx is done.
func transportError(ctx context.Context, err error) error {
	var dial *dialError
	var op *net.OpError
	if ctx.Err() != nil || errors.As(err, &dial) ||
		errors.As(err, &op) && (op.Op == "remote error" || op.Op == "local error") {
		return err
	}
	return &retryable{err: err}
}

// httpResult reads an OTLP/HTTP answer: 2xx is success unless its
// partial_success rejected spans; 429, 502, 503 and 504 may pass (the
// OTLP specification's list); anything else fails.
func httpResult(resp *http.Response, answer []byte, spans int) error {
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return partialSuccess(answer, spans)
	case code == http.StatusTooManyRequests, code == http.StatusBadGateway,
		code == http.StatusServiceUnavailable, code == http.StatusGatewayTimeout:
		return &retryable{err: statusError(resp, answer), after: retryAfter(resp.Header.Get("Retry-After"))}
	}
	return statusError(resp, answer)
}

// statusError names an HTTP failure: the status, and the message of the
// google.rpc.Status an OTLP collector answers with, else the start of
// whatever else it answered.
func statusError(resp *http.Response, answer []byte) error {
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-protobuf") {
		if msg, err := rpcStatusMessage(answer); err == nil && msg != "" {
			return fmt.Errorf("collector answered %s: %s", resp.Status, msg)
		}
	}
	if len(answer) == 0 {
		return fmt.Errorf("collector answered %s", resp.Status)
	}
	const show = 200
	if len(answer) > show {
		return fmt.Errorf("collector answered %s: %q...", resp.Status, answer[:show])
	}
	return fmt.Errorf("collector answered %s: %q", resp.Status, answer)
}

// retryAfter reads a Retry-After header: seconds or an HTTP date; 0 when
// there is none or it makes no sense.
func retryAfter(s string) time.Duration {
	if s == "" {
		return 0
	}
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(s); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// grpcCodes are the gRPC status codes by number.
var grpcCodes = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
	"OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

func grpcCodeName(code int) string {
	if code >= 0 && code < len(grpcCodes) {
		return grpcCodes[code]
	}
	return "code " + strconv.Itoa(code)
}

// grpcRetryable are the codes the OTLP specification calls transient.
// RESOURCE_EXHAUSTED is, there, only with RetryInfo in the status
// details; crest tries again anyway, within the same timeout.
var grpcRetryable = map[int]bool{1: true, 4: true, 8: true, 10: true, 11: true, 14: true, 15: true}

// grpcResult reads a unary gRPC answer: an HTTP/2 200 with content-type
// application/grpc, grpc-status in the trailers (or in the headers of an
// answer without a body), and on success one message.
func grpcResult(resp *http.Response, answer []byte, spans int) error {
	if resp.StatusCode != http.StatusOK {
		// A proxy's answer: the gRPC over HTTP/2 specification maps it
		// to a code.
		code := 2 // UNKNOWN
		switch resp.StatusCode {
		case http.StatusBadRequest:
			code = 13 // INTERNAL
		case http.StatusUnauthorized:
			code = 16 // UNAUTHENTICATED
		case http.StatusForbidden:
			code = 7 // PERMISSION_DENIED
		case http.StatusNotFound:
			code = 12 // UNIMPLEMENTED
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			code = 14 // UNAVAILABLE
		}
		err := fmt.Errorf("collector answered %s (%s)", resp.Status, grpcCodeName(code))
		if grpcRetryable[code] {
			return &retryable{err: err}
		}
		return err
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/grpc") {
		return fmt.Errorf("collector answered content-type %q, not a gRPC answer", ct)
	}
	status, message := resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message")
	if status == "" {
		status, message = resp.Trailer.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message")
	}
	if status == "" {
		return errors.New("collector answered without a grpc-status")
	}
	code, err := strconv.Atoi(status)
	if err != nil {
		return fmt.Errorf("collector answered grpc-status %q", status)
	}
	if code != 0 {
		if m, err := url.PathUnescape(message); err == nil {
			message = m
		}
		err := fmt.Errorf("collector answered %s: %s", grpcCodeName(code), message)
		if grpcRetryable[code] {
			return &retryable{err: err}
		}
		return err
	}
	msg, err := grpcMessage(answer, resp.Header.Get("Grpc-Encoding"))
	if err != nil {
		return err
	}
	return partialSuccess(msg, spans)
}

// grpcMessage is the one message of a unary gRPC answer: a compressed
// flag, a 4-byte big-endian length and that many bytes, nothing after.
// An answer with no message at all reads as an empty one.
func grpcMessage(b []byte, encoding string) ([]byte, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < 5 {
		return nil, fmt.Errorf("collector answered a truncated gRPC message: %d bytes", len(b))
	}
	n := binary.BigEndian.Uint32(b[1:5])
	if uint64(n) != uint64(len(b)-5) {
		return nil, fmt.Errorf("collector answered a gRPC message of %d bytes in %d", n, len(b)-5)
	}
	switch b[0] {
	case 0:
		return b[5:], nil
	case 1:
		if encoding != "gzip" {
			return nil, fmt.Errorf("collector answered a compressed gRPC message with grpc-encoding %q", encoding)
		}
		zr, err := gzip.NewReader(bytes.NewReader(b[5:]))
		if err != nil {
			return nil, fmt.Errorf("collector answered a bad gzip message: %w", err)
		}
		msg, err := io.ReadAll(io.LimitReader(zr, maxAnswer+1))
		if err != nil {
			return nil, fmt.Errorf("collector answered a bad gzip message: %w", err)
		}
		if len(msg) > maxAnswer {
			return nil, fmt.Errorf("collector answered a gzip message of more than %d bytes", maxAnswer)
		}
		return msg, nil
	}
	return nil, fmt.Errorf("collector answered a gRPC message with compressed flag %d", b[0])
}

// partialSuccess reads an ExportTraceServiceResponse: a collector that
// took the request but rejected spans says how many in partial_success
// (field 1: rejected_spans 1, error_message 2). Rejected spans are a
// failure; a message alone is a warning and the export succeeded.
func partialSuccess(b []byte, spans int) error {
	var rejected int64
	var message string
	var inner error
	err := protoFields(b, func(num protowire.Number, _ uint64, v []byte) {
		if num != 1 || v == nil {
			return
		}
		inner = cmp.Or(inner, protoFields(v, func(num protowire.Number, n uint64, v []byte) {
			switch {
			case num == 1 && v == nil:
				rejected = int64(n)
			case num == 2 && v != nil:
				message = string(v)
			}
		}))
	})
	err = cmp.Or(err, inner)
	if err != nil {
		return fmt.Errorf("collector answered something other than an ExportTraceServiceResponse: %w", err)
	}
	if rejected != 0 {
		return fmt.Errorf("collector rejected %d of %d spans: %s", rejected, spans, message)
	}
	return nil
}

// rpcStatusMessage is the message (field 2) of a google.rpc.Status.
func rpcStatusMessage(b []byte) (string, error) {
	var message string
	err := protoFields(b, func(num protowire.Number, _ uint64, v []byte) {
		if num == 2 && v != nil {
			message = string(v)
		}
	})
	return message, err
}

// protoFields calls fn with each field of the protobuf message b: its
// number and its value, a varint in n or length-delimited bytes in v
// (never nil then); fixed-size fields are skipped, groups are an error.
// Two small messages do not need the generated collector package, whose
// .pb.gw.go links grpc and grpc-gateway.
func protoFields(b []byte, fn func(num protowire.Number, n uint64, v []byte)) error {
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
		var n uint64
		var v []byte
		switch typ {
		case protowire.VarintType:
			n, l = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			v, l = protowire.ConsumeBytes(b) // never nil: a slice of b
		case protowire.Fixed32Type:
			_, l = protowire.ConsumeFixed32(b)
		case protowire.Fixed64Type:
			_, l = protowire.ConsumeFixed64(b)
		default:
			return fmt.Errorf("field %d: unexpected wire type %d", num, typ)
		}
		if l < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(l))
		}
		b = b[l:]
		if typ == protowire.VarintType || typ == protowire.BytesType {
			fn(num, n, v)
		}
	}
	return nil
}

// grpcTimeout writes d as a grpc-timeout header: at most 8 digits and a
// unit.
func grpcTimeout(d time.Duration) string {
	if d <= 0 {
		return "1n"
	}
	for _, u := range []struct {
		unit string
		d    time.Duration
	}{{"n", time.Nanosecond}, {"u", time.Microsecond}, {"m", time.Millisecond}, {"S", time.Second}, {"M", time.Minute}} {
		n := d / u.d
		if d%u.d != 0 {
			n++
		}
		if n < 1e8 {
			return strconv.FormatInt(int64(n), 10) + u.unit
		}
	}
	return strconv.FormatInt(int64(d/time.Hour)+1, 10) + "H"
}
