package trace

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// otlpConfig is where and how an OTLP export goes: the target, and the
// OTEL_EXPORTER_OTLP_* variables as the OTLP exporter specification
// defines them.
type otlpConfig struct {
	grpc    bool
	url     string      // the request's: .../v1/traces, or .../TraceService/Export for gRPC
	header  http.Header // OTEL_EXPORTER_OTLP_HEADERS
	gzip    bool        // OTEL_EXPORTER_OTLP_COMPRESSION=gzip
	timeout time.Duration
	tls     *tls.Config // nil for plain text
}

// grpcExportPath is the gRPC method of the OTLP trace service.
const grpcExportPath = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// otlpEnv reads one exporter variable: OTEL_EXPORTER_OTLP_TRACES_name
// wins over OTEL_EXPORTER_OTLP_name, and empty counts as unset. It
// returns the variable it read, for messages.
func otlpEnv(name string) (variable, value string) {
	for _, v := range []string{"OTEL_EXPORTER_OTLP_TRACES_" + name, "OTEL_EXPORTER_OTLP_" + name} {
		if s := strings.TrimSpace(os.Getenv(v)); s != "" {
			return v, s
		}
	}
	return "OTEL_EXPORTER_OTLP_" + name, ""
}

// exportConfig resolves target and the environment. A target with an
// Endpoint (a --trace value) wins over the endpoint variables, the others
// (headers, compression, timeout, certificates) apply to every export.
// timeout is the caller's (--trace-timeout); zero leaves the choice to
// OTEL_EXPORTER_OTLP_TIMEOUT, then DefaultTimeout.
func exportConfig(target Target, timeout time.Duration) (*otlpConfig, error) {
	c := &otlpConfig{grpc: target.Sink == SinkGRPC}
	var secure bool
	var err error
	switch target.Sink {
	case SinkGRPC:
		c.url, secure, err = grpcURL(target)
	case SinkHTTP:
		c.url, secure, err = httpURL(target)
	default:
		err = fmt.Errorf("no OTLP exporter for %v", target.Sink)
	}
	if err != nil {
		return nil, err
	}
	if c.header, err = envHeaders(); err != nil {
		return nil, err
	}
	switch v, s := otlpEnv("COMPRESSION"); s {
	case "", "none":
	case "gzip":
		c.gzip = true
	default:
		return nil, fmt.Errorf("%s=%q: want gzip or none", v, s)
	}
	c.timeout = timeout
	if v, s := otlpEnv("TIMEOUT"); s != "" {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil || ms <= 0 || ms > math.MaxInt64/int64(time.Millisecond) {
			return nil, fmt.Errorf("%s=%q: want a positive number of milliseconds", v, s)
		}
		if timeout == 0 {
			c.timeout = time.Duration(ms) * time.Millisecond
		}
	}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	if secure {
		if c.tls, err = envTLS(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// httpURL is the URL to POST spans to: the target's, else
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else
// OTEL_EXPORTER_OTLP_ENDPOINT with /v1/traces appended to its path, else
// the specification's default. https means TLS.
func httpURL(target Target) (string, bool, error) {
	raw, from := target.Endpoint, ""
	if raw == "" {
		if v, s := otlpEnv("ENDPOINT"); s != "" {
			raw, from = s, v
		} else {
			raw = "http://localhost:4318/v1/traces"
		}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		if from != "" {
			return "", false, fmt.Errorf("%s=%q: want an http:// or https:// URL", from, raw)
		}
		return "", false, fmt.Errorf("endpoint %q: want an http:// or https:// URL", raw)
	}
	if from == "OTEL_EXPORTER_OTLP_ENDPOINT" {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
		u.RawPath = ""
	}
	return u.String(), u.Scheme == "https", nil
}

// grpcURL is the URL of the Export method at the target, else at
// OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else at the specification's
// default (http://localhost:4317). An endpoint's http or https scheme
// says whether to use TLS; without a scheme, OTEL_EXPORTER_OTLP_INSECURE
// does (TLS unless it is true). A path in the endpoint means nothing to
// gRPC and is left out.
func grpcURL(target Target) (string, bool, error) {
	host, secure := target.Endpoint, !target.Insecure
	if host == "" {
		v, s := otlpEnv("ENDPOINT")
		switch {
		case s == "":
			host, secure = "localhost:4317", false
		case strings.HasPrefix(s, "http://"), strings.HasPrefix(s, "https://"):
			u, err := url.Parse(s)
			if err != nil || u.Host == "" {
				return "", false, fmt.Errorf("%s=%q: want [http[s]://]HOST:PORT", v, s)
			}
			host, secure = withPort(u.Host, "4317"), u.Scheme == "https"
		default:
			insecure, err := envBool("INSECURE")
			if err != nil {
				return "", false, err
			}
			host, secure = withPort(strings.TrimSuffix(s, "/"), "4317"), !insecure
			if _, _, err := net.SplitHostPort(host); err != nil || strings.ContainsAny(host, "/?#@") {
				return "", false, fmt.Errorf("%s=%q: want [http[s]://]HOST:PORT", v, s)
			}
		}
	}
	scheme := "http"
	if secure {
		scheme = "https"
	}
	return scheme + "://" + host + grpcExportPath, secure, nil
}

// envBool reads a boolean variable: true or false, in any case.
func envBool(name string) (bool, error) {
	v, s := otlpEnv(name)
	switch strings.ToLower(s) {
	case "", "false":
		return false, nil
	case "true":
		return true, nil
	}
	return false, fmt.Errorf("%s=%q: want true or false", v, s)
}

// envHeaders reads OTEL_EXPORTER_OTLP_(TRACES_)HEADERS: key=value pairs
// separated by commas, values percent-encoded, as W3C baggage writes
// them (without baggage's ;properties).
func envHeaders() (http.Header, error) {
	v, s := otlpEnv("HEADERS")
	h := http.Header{}
	for pair := range strings.SplitSeq(s, ",") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		key, val, ok := strings.Cut(pair, "=")
		key = strings.TrimSpace(key)
		if !ok || !isToken(key) {
			return nil, fmt.Errorf("%s: %q is not key=value with a header name for key", v, pair)
		}
		dec, err := url.PathUnescape(strings.TrimSpace(val))
		if err != nil {
			return nil, fmt.Errorf("%s: the value of %s: %w", v, key, err)
		}
		if strings.ContainsAny(dec, "\r\n\x00") {
			return nil, fmt.Errorf("%s: the value of %s holds a line break or NUL", v, key)
		}
		h.Add(key, dec)
	}
	return h, nil
}

// isToken reports whether s is an HTTP field name (RFC 9110 token).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// envTLS is the TLS of a secure export: the system's roots unless
// OTEL_EXPORTER_OTLP_CERTIFICATE names a PEM file of CA certificates, and
// a client certificate when OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and
// _CLIENT_KEY name one and its key.
func envTLS() (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if v, file := otlpEnv("CERTIFICATE"); file != "" {
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", v, err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: %s holds no PEM certificate", v, file)
		}
	}
	cv, cert := otlpEnv("CLIENT_CERTIFICATE")
	kv, key := otlpEnv("CLIENT_KEY")
	switch {
	case cert != "" && key != "":
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("%s, %s: %w", cv, kv, err)
			}
			return nil, fmt.Errorf("%s=%s, %s=%s: %w", cv, cert, kv, key, err)
		}
		c.Certificates = []tls.Certificate{pair}
	case cert != "":
		return nil, fmt.Errorf("%s without %s", cv, kv)
	case key != "":
		return nil, fmt.Errorf("%s without %s", kv, cv)
	}
	return c, nil
}
