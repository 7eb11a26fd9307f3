package trace

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/protobuf/proto"
)

// The file holds OTLP/JSON (hex ids, numeric enums) that decodes back,
// through the OTLP protobuf types, into exactly the request exporters
// send, and into the same tree.
func TestJSONFileRoundTrip(t *testing.T) {
	tr := Build(syntheticRecord())
	path := filepath.Join(t.TempDir(), "trace.json")
	tg, err := ParseTarget(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Emit(t.Context(), tr, tg, Options{}); err != nil {
		t.Fatal(err)
	}
	got, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	want, err := tr.Request()
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Error("the file does not decode to the request it was made from")
	}
	checkOTLP(t, tr, got)

	// OTLP/JSON's own rules, which a reader such as a collector's
	// otlpjsonfile receiver relies on.
	raw, _ := os.ReadFile(path)
	var doc struct {
		ResourceSpans []struct {
			ScopeSpans []struct {
				Spans []struct {
					TraceID string `json:"traceId"`
					SpanID  string `json:"spanId"`
					Kind    any    `json:"kind"`
				} `json:"spans"`
			} `json:"scopeSpans"`
		} `json:"resourceSpans"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	s := doc.ResourceSpans[0].ScopeSpans[0].Spans[0]
	if s.TraceID != tr.ID().String() || len(s.SpanID) != 16 {
		t.Errorf("ids %q %q, want lowercase hex (trace %s)", s.TraceID, s.SpanID, tr.ID())
	}
	if _, ok := s.Kind.(float64); !ok {
		t.Errorf("kind %v (%T), want a number", s.Kind, s.Kind)
	}
	if !bytes.HasPrefix(raw, []byte(`{"resourceSpans":`)) {
		t.Errorf("file starts %.40q", raw)
	}
}

func TestUnmarshalOTLPJSONErrors(t *testing.T) {
	for _, in := range []string{
		``,
		`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}`,
		`{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":7}]}]}]}`,
	} {
		if _, err := UnmarshalOTLPJSON([]byte(in)); err == nil {
			t.Errorf("UnmarshalOTLPJSON(%q) succeeded", in)
		}
	}
}

func FuzzUnmarshalOTLPJSON(f *testing.F) {
	tr := Build(syntheticRecord())
	req, _ := tr.Request()
	b, _ := MarshalOTLPJSON(req)
	f.Add(b)
	f.Add([]byte(`{"resourceSpans":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := UnmarshalOTLPJSON(b)
		if err != nil {
			return
		}
		out, err := MarshalOTLPJSON(req)
		if err != nil {
			return // ids of odd lengths decode but are not OTLP ids
		}
		back, err := UnmarshalOTLPJSON(out)
		if err != nil || !proto.Equal(req, back) {
			t.Fatalf("re-encoding changed the request: %v", err)
		}
	})
}

// The file encoder writes what the protobuf JSON decoder reads back,
// whatever the strings hold.
func TestAppendRequestStrings(t *testing.T) {
	rec := syntheticRecord()
	rec.ImagesDir = "/tmp/\"quoted\"\\back\n\t\x01\x7f ünïcødé ☃ 𝄞"
	rec.Tasks[0].Comm = "<script>&"
	rec.Verdict.Detail = "line 1\r\nline 2"
	rec.Kernel = append(rec.Kernel, KernelEvent{Kind: "odd", PID: 1, TID: 1, At: us(1), Attrs: []attribute.KeyValue{
		attribute.Float64("f", 1.5e-300), attribute.Float64("nan", math.NaN()), attribute.Float64("inf", math.Inf(-1)),
		attribute.StringSlice("ss", []string{"a", "\"b\""}), attribute.BoolSlice("bs", []bool{true, false}),
		attribute.Float64Slice("fs", []float64{0.1, 2}), attribute.Int64Slice("is", nil),
	}})
	req, err := Build(rec).Request()
	if err != nil {
		t.Fatal(err)
	}
	b := appendRequest(nil, req)
	got, err := UnmarshalOTLPJSON(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if !proto.Equal(got, req) {
		t.Errorf("round trip changed the request")
	}
	// and the exported marshaller agrees
	m, err := MarshalOTLPJSON(req)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := UnmarshalOTLPJSON(m); err != nil || !proto.Equal(back, req) {
		t.Errorf("MarshalOTLPJSON round trip: %v", err)
	}
}
