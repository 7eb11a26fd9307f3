package trace

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// standIn is a stand-in OTLP collector on loopback, for what Jaeger
// cannot show (headers, failures, retries, TLS): OTLP/HTTP at any path
// but the gRPC method's, OTLP/gRPC at TraceService/Export, over HTTP/1.1
// and h2c, or over TLS with h2. It checks every request as a collector
// does, keeps what arrived and gives the n-th request answers[n] (success
// past the end).
type standIn struct {
	t       *testing.T
	srv     *httptest.Server
	addr    string // 127.0.0.1:PORT
	answers []answer

	mu    sync.Mutex
	got   []arrival
	conns map[net.Conn]http.ConnState
}

// arrival is one request as the stand-in read it.
type arrival struct {
	at         time.Time
	proto      string // HTTP/1.1 or HTTP/2.0
	path       string
	grpc       bool
	gzip       bool // the body was compressed (Content-Encoding, or the gRPC flag)
	header     http.Header
	clientCert string // the client certificate's common name
	data       *tracepb.TracesData
}

// answer is what the stand-in answers one request. The zero answer is a
// success with an empty ExportTraceServiceResponse.
type answer struct {
	status int               // HTTP status, 200 when 0
	header map[string]string // more headers
	body   []byte            // HTTP: the body; gRPC: the message, which the stand-in frames
	// gRPC only
	grpcStatus   string // "0" when empty, none at all when "-"
	grpcMessage  string
	trailersOnly bool // the status in the headers, no body
	gzip         bool // compress the message (grpc-encoding gzip)
	raw          bool // body as it is, not framed
	abort        bool // break the connection (HTTP/1.1) or stream (HTTP/2) without an answer
	cut          bool // break it in the middle of the answer's body
}

// tlsSetup is the TLS side of a stand-in: its certificate, and whether
// it wants a client certificate from pki's CA.
type tlsSetup struct {
	pki        *testPKI
	clientCert bool
	noALPN     bool // no ALPN at all: HTTP/1.1 only
}

func newStandIn(t *testing.T, ts *tlsSetup, answers ...answer) *standIn {
	t.Helper()
	s := &standIn{t: t, answers: answers, conns: map[net.Conn]http.ConnState{}}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		s.mu.Lock()
		s.conns[c] = st
		s.mu.Unlock()
	}
	// TLS handshakes that fail on purpose are no news.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if ts == nil {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		s.srv.Config.Protocols = &p
		s.srv.Start()
	} else {
		s.srv.EnableHTTP2 = true
		s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ts.pki.server}}
		if ts.noALPN {
			s.srv.TLS.NextProtos = []string{}
		}
		if ts.clientCert {
			s.srv.TLS.ClientAuth = tls.RequireAndVerifyClientCert
			s.srv.TLS.ClientCAs = ts.pki.pool
		}
		s.srv.StartTLS()
	}
	t.Cleanup(s.srv.Close)
	s.addr = s.srv.Listener.Addr().String()
	return s
}

// arrivals returns what arrived so far.
func (s *standIn) arrivals() []arrival {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]arrival(nil), s.got...)
}

var grpcTimeoutRE = regexp.MustCompile(`^[0-9]{1,8}[HMSmun]$`)

func (s *standIn) serve(w http.ResponseWriter, r *http.Request) {
	a := arrival{at: time.Now(), proto: r.Proto, path: r.URL.Path, grpc: r.URL.Path == grpcExportPath, header: r.Header.Clone()}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		a.clientCert = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	s.mu.Lock()
	n := len(s.got)
	s.got = append(s.got, a)
	s.mu.Unlock()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		s.t.Errorf("stand-in: request %d: reading the body: %v", n, err)
		return
	}
	msg, err := s.check(r, &a, body)
	if err != nil {
		s.t.Errorf("stand-in: request %d (%s %s %s): %v", n, r.Proto, r.Method, r.URL.Path, err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.data = &tracepb.TracesData{}
	if err := proto.Unmarshal(msg, a.data); err != nil {
		s.t.Errorf("stand-in: request %d: not a TracesData: %v", n, err)
	}
	s.mu.Lock()
	s.got[n] = a
	s.mu.Unlock()

	var ans answer
	if n < len(s.answers) {
		ans = s.answers[n]
	}
	if ans.abort {
		panic(http.ErrAbortHandler)
	}
	if ans.cut {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		w.Write(make([]byte, 10))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	for k, v := range ans.header {
		w.Header().Set(k, v)
	}
	if !a.grpc {
		if w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", "application/x-protobuf")
		}
		w.WriteHeader(cmp.Or(ans.status, http.StatusOK))
		w.Write(ans.body)
		return
	}
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/grpc")
	}
	if ans.status != 0 && ans.status != http.StatusOK {
		w.WriteHeader(ans.status)
		w.Write(ans.body)
		return
	}
	status := cmp.Or(ans.grpcStatus, "0")
	if ans.trailersOnly {
		w.Header().Set("Grpc-Status", status)
		if ans.grpcMessage != "" {
			w.Header().Set("Grpc-Message", ans.grpcMessage)
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	out := ans.body
	if !ans.raw {
		out = grpcFrame(ans.body, ans.gzip)
		if ans.gzip {
			w.Header().Set("Grpc-Encoding", "gzip")
		}
	}
	w.WriteHeader(http.StatusOK)
	w.Write(out)
	if status != "-" {
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", status)
	}
	if ans.grpcMessage != "" {
		w.Header().Set(http.TrailerPrefix+"Grpc-Message", ans.grpcMessage)
	}
}

// check reads a request as a collector does, and returns its message.
func (s *standIn) check(r *http.Request, a *arrival, body []byte) ([]byte, error) {
	if r.Method != http.MethodPost {
		return nil, fmt.Errorf("method %s", r.Method)
	}
	if ua := r.Header.Get("User-Agent"); ua != userAgent {
		return nil, fmt.Errorf("user-agent %q", ua)
	}
	if !a.grpc {
		if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
			return nil, fmt.Errorf("content-type %q", ct)
		}
		switch ce := r.Header.Get("Content-Encoding"); ce {
		case "":
			return body, nil
		case "gzip":
			a.gzip = true
			return gunzip(body)
		default:
			return nil, fmt.Errorf("content-encoding %q", ce)
		}
	}
	if r.ProtoMajor != 2 {
		return nil, fmt.Errorf("gRPC over %s", r.Proto)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/grpc" {
		return nil, fmt.Errorf("content-type %q", ct)
	}
	if te := r.Header.Get("TE"); te != "trailers" {
		return nil, fmt.Errorf("te %q", te)
	}
	if gt := r.Header.Get("Grpc-Timeout"); !grpcTimeoutRE.MatchString(gt) {
		return nil, fmt.Errorf("grpc-timeout %q", gt)
	}
	if len(body) < 5 {
		return nil, fmt.Errorf("a gRPC frame of %d bytes", len(body))
	}
	if n := binary.BigEndian.Uint32(body[1:5]); int(n) != len(body)-5 {
		return nil, fmt.Errorf("a gRPC frame that says %d bytes and holds %d", n, len(body)-5)
	}
	enc := r.Header.Get("Grpc-Encoding")
	switch {
	case body[0] == 0 && enc == "", body[0] == 0 && enc == "gzip":
		return body[5:], nil
	case body[0] == 1 && enc == "gzip":
		a.gzip = true
		return gunzip(body[5:])
	}
	return nil, fmt.Errorf("compressed flag %d with grpc-encoding %q", body[0], enc)
}

func gunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

// grpcFrame frames msg as the one message of a gRPC answer.
func grpcFrame(msg []byte, compress bool) []byte {
	flag := byte(0)
	if compress {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write(msg)
		zw.Close()
		msg, flag = b.Bytes(), 1
	}
	return append(binary.BigEndian.AppendUint32([]byte{flag}, uint32(len(msg))), msg...)
}

// partialAnswer is an ExportTraceServiceResponse with partial_success
// {rejected_spans, error_message}.
func partialAnswer(rejected int64, message string) []byte {
	var ps []byte
	if rejected != 0 {
		ps = protowire.AppendTag(ps, 1, protowire.VarintType)
		ps = protowire.AppendVarint(ps, uint64(rejected))
	}
	if message != "" {
		ps = protowire.AppendTag(ps, 2, protowire.BytesType)
		ps = protowire.AppendString(ps, message)
	}
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	return protowire.AppendBytes(b, ps)
}

// rpcStatus is a google.rpc.Status {code, message}.
func rpcStatus(code int, message string) []byte {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(code))
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendString(b, message)
}

// waitClosed waits until every connection the stand-in saw is closed:
// the exporter closes its connections when the export returns.
func (s *standIn) waitClosed(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		open := 0
		s.mu.Lock()
		for _, st := range s.conns {
			if st != http.StateClosed && st != http.StateHijacked {
				open++
			}
		}
		s.mu.Unlock()
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d connections to the stand-in still open 5 s after the export returned", open)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// clientConnsGone waits until no HTTP client connection runs in this
// process: after an export nothing of it is left running. Other tests'
// idle connections of http.DefaultTransport (tracetest's) are closed
// first.
func clientConnsGone(t *testing.T) {
	t.Helper()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 1<<20)
	for {
		stacks := string(buf[:runtime.Stack(buf, true)])
		var running []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "net/http.(*persistConn)") || strings.Contains(g, "net/http.(*http2clientConnReadLoop)") ||
				strings.Contains(g, "net/http.(*http2ClientConn)") {
				running = append(running, g)
			}
		}
		if len(running) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("HTTP client goroutines still running 5 s after the export returned:\n%s", strings.Join(running, "\n\n"))
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testPKI is a CA, a server certificate for 127.0.0.1 and localhost, a
// client certificate, all from the CA, and a second CA that signed
// nothing; the PEM files are in a test directory.
type testPKI struct {
	pool                  *x509.CertPool
	server                tls.Certificate
	caFile, otherCAFile   string
	clientCert, clientKey string
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	p := &testPKI{pool: x509.NewCertPool()}
	serial := int64(1)
	issue := func(tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(time.Hour)
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key, der
	}
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	caTmpl := func(cn string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	}
	ca, caKey, caDER := issue(caTmpl("crest test CA"), nil, nil)
	p.pool.AddCert(ca)
	p.caFile = write("ca.pem", "CERTIFICATE", caDER)
	_, _, otherDER := issue(caTmpl("another CA"), nil, nil)
	p.otherCAFile = write("other-ca.pem", "CERTIFICATE", otherDER)

	_, srvKey, srvDER := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "collector"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, caKey)
	p.server = tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}

	_, cliKey, cliDER := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "crest-test-client"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)
	p.clientCert = write("client.pem", "CERTIFICATE", cliDER)
	keyDER, err := x509.MarshalECPrivateKey(cliKey)
	if err != nil {
		t.Fatal(err)
	}
	p.clientKey = write("client-key.pem", "EC PRIVATE KEY", keyDER)
	return p
}
