package trace

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// Request returns the trace as the OTLP exporters send it and the JSON
// file holds it: one resource, one scope, every span. TracesData is the
// export request's content: its resource_spans is field 1 in both, the
// same on the wire and in JSON, and it lives in a package that does not
// link grpc.
func (t *Trace) Request() (*tracepb.TracesData, error) {
	spans, _, _ := t.Spans()
	if len(spans) == 0 {
		return nil, errNoSpans
	}
	res := spans[0].Resource()
	scope := spans[0].InstrumentationScope()
	ss := &tracepb.ScopeSpans{Scope: &commonpb.InstrumentationScope{Name: validUTF8(scope.Name), Version: validUTF8(scope.Version)}}
	for _, s := range spans {
		ss.Spans = append(ss.Spans, spanProto(s))
	}
	rs := &tracepb.ResourceSpans{
		Resource:   &resourcepb.Resource{Attributes: attrsProto(res.Attributes())},
		ScopeSpans: []*tracepb.ScopeSpans{ss},
		SchemaUrl:  validUTF8(res.SchemaURL()),
	}
	return &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{rs}}, nil
}

func spanProto(s sdktrace.ReadOnlySpan) *tracepb.Span {
	sc := s.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	p := &tracepb.Span{
		TraceId:           tid[:],
		SpanId:            sid[:],
		Name:              validUTF8(s.Name()),
		Kind:              tracepb.Span_SPAN_KIND_INTERNAL,
		StartTimeUnixNano: uint64(s.StartTime().UnixNano()),
		EndTimeUnixNano:   uint64(s.EndTime().UnixNano()),
		Attributes:        attrsProto(s.Attributes()),
		Flags:             uint32(sc.TraceFlags()) | 0x100, // SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
	}
	if s.Parent().IsValid() {
		psid := s.Parent().SpanID()
		p.ParentSpanId = psid[:]
	}
	for _, e := range s.Events() {
		p.Events = append(p.Events, &tracepb.Span_Event{
			TimeUnixNano: uint64(e.Time.UnixNano()),
			Name:         validUTF8(e.Name),
			Attributes:   attrsProto(e.Attributes),
		})
	}
	switch s.Status().Code {
	case codes.Error:
		p.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: validUTF8(s.Status().Description)}
	case codes.Ok:
		p.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_OK}
	}
	return p
}

func attrsProto(attrs []attribute.KeyValue) []*commonpb.KeyValue {
	out := make([]*commonpb.KeyValue, 0, len(attrs))
	for _, a := range attrs {
		out = append(out, &commonpb.KeyValue{Key: validUTF8(string(a.Key)), Value: valueProto(a.Value)})
	}
	return out
}

func valueProto(v attribute.Value) *commonpb.AnyValue {
	switch v.Type() {
	case attribute.BOOL:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: v.AsBool()}}
	case attribute.INT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v.AsInt64()}}
	case attribute.FLOAT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: v.AsFloat64()}}
	case attribute.STRING:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: validUTF8(v.AsString())}}
	}
	var elems []*commonpb.AnyValue
	switch v.Type() {
	case attribute.BOOLSLICE:
		for _, x := range v.AsBoolSlice() {
			elems = append(elems, valueProto(attribute.BoolValue(x)))
		}
	case attribute.INT64SLICE:
		for _, x := range v.AsInt64Slice() {
			elems = append(elems, valueProto(attribute.Int64Value(x)))
		}
	case attribute.FLOAT64SLICE:
		for _, x := range v.AsFloat64Slice() {
			elems = append(elems, valueProto(attribute.Float64Value(x)))
		}
	case attribute.STRINGSLICE:
		for _, x := range v.AsStringSlice() {
			elems = append(elems, valueProto(attribute.StringValue(x)))
		}
	default:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: validUTF8(v.String())}}
	}
	return &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: elems}}}
}

// validUTF8 replaces what is not UTF-8 in s (a comm, a path: bytes from
// the kernel) with U+FFFD: protobuf strings must be UTF-8, and
// proto.Marshal refuses a request that holds one that is not. Collectors
// and the JSON file get the same text.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// OTLP/JSON differs from the standard protobuf JSON mapping in one place:
// trace and span ids are hex strings, not base64 (the OTLP specification,
// "JSON Protobuf Encoding"). Enums are numbers and field names lowerCamelCase.
var idFields = map[string]bool{"traceId": true, "spanId": true, "parentSpanId": true}

// MarshalOTLPJSON encodes req as OTLP/JSON.
func MarshalOTLPJSON(req *tracepb.TracesData) ([]byte, error) {
	b, err := protojson.MarshalOptions{UseEnumNumbers: true}.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("trace: encoding OTLP JSON: %w", err)
	}
	return idsToHex(b)
}

// idsToHex rewrites the base64 ids of protojson's output as hex. It works
// on the bytes: a key in quotes followed by a colon cannot occur inside a
// JSON string (its quotes would be escaped), and base64 has no quote, so
// a scan is exact, and much cheaper than a decode and re-encode.
func idsToHex(b []byte) ([]byte, error) {
	out := make([]byte, 0, len(b)+len(b)/16)
	for {
		i, key := nextIDKey(b)
		if i < 0 {
			return append(out, b...), nil
		}
		out = append(out, b[:i+len(key)]...)
		b = b[i+len(key):]
		j := 0
		for j < len(b) && (b[j] == ' ' || b[j] == '\n' || b[j] == '\t' || b[j] == '\r') {
			j++
		}
		if j == len(b) || b[j] != '"' {
			return nil, fmt.Errorf("trace: OTLP JSON: %s without a string", key)
		}
		end := bytes.IndexByte(b[j+1:], '"')
		if end < 0 {
			return nil, fmt.Errorf("trace: OTLP JSON: unterminated %s", key)
		}
		raw, err := base64.StdEncoding.DecodeString(string(b[j+1 : j+1+end]))
		if err != nil {
			return nil, fmt.Errorf("trace: OTLP JSON: %s: %w", key, err)
		}
		out = append(out, b[:j+1]...)
		out = hex.AppendEncode(out, raw)
		out = append(out, '"')
		b = b[j+1+end+1:]
	}
}

var idKeys = [][]byte{[]byte(`"traceId":`), []byte(`"spanId":`), []byte(`"parentSpanId":`)}

// nextIDKey finds the first id key in b.
func nextIDKey(b []byte) (int, []byte) {
	at, key := -1, []byte(nil)
	for _, k := range idKeys {
		if i := bytes.Index(b, k); i >= 0 && (at < 0 || i < at) {
			at, key = i, k
		}
	}
	return at, key
}

// UnmarshalOTLPJSON decodes OTLP/JSON (as MarshalOTLPJSON, a collector's
// file exporter or Jaeger's /api/v3 write it) with the OTLP protobuf JSON
// decoder.
func UnmarshalOTLPJSON(b []byte) (*tracepb.TracesData, error) {
	b, err := recodeIDs(b, func(s string) (string, error) {
		raw, err := hex.DecodeString(s)
		return base64.StdEncoding.EncodeToString(raw), err
	})
	if err != nil {
		return nil, err
	}
	req := &tracepb.TracesData{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, req); err != nil {
		return nil, fmt.Errorf("trace: decoding OTLP JSON: %w", err)
	}
	return req, nil
}

// recodeIDs rewrites the string values of the id fields through fn.
func recodeIDs(b []byte, fn func(string) (string, error)) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("trace: reading OTLP JSON: %w", err)
	}
	var walk func(v any) error
	walk = func(v any) error {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && idFields[k] {
					r, err := fn(s)
					if err != nil {
						return fmt.Errorf("trace: OTLP JSON %s %q: %w", k, s, err)
					}
					v[k] = r
					continue
				}
				if err := walk(x); err != nil {
					return err
				}
			}
		case []any:
			for _, x := range v {
				if err := walk(x); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(v); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// WriteJSON writes the trace to path as one OTLP/JSON TracesData (an
// ExportTraceServiceRequest reads the same).
func (t *Trace) WriteJSON(path string) error {
	req, err := t.Request()
	if err != nil {
		return err
	}
	// About 1 KiB a span: one allocation instead of a dozen doublings.
	n := 0
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			n += len(ss.Spans)
		}
	}
	if err := os.WriteFile(path, appendRequest(make([]byte, 0, 1024*(n+1)), req), 0o644); err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	return nil
}

// ReadJSON reads an OTLP/JSON trace file.
func ReadJSON(path string) (*tracepb.TracesData, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	req, err := UnmarshalOTLPJSON(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return req, nil
}
