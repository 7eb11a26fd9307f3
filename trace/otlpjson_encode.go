package trace

import (
	"encoding/hex"
	"math"
	"strconv"
	"unicode/utf8"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// appendRequest encodes req as OTLP/JSON without reflection: protojson
// took four fifths of the time of a trace file. It writes the fields
// crest's requests use, in the protobuf mapping's form (lowerCamelCase
// names, 64-bit integers as strings, enums as numbers, zero values
// left out) except for the ids, which OTLP/JSON writes in hex.
// TestJSONFileRoundTrip checks it against the protobuf decoder.
func appendRequest(b []byte, req *tracepb.TracesData) []byte {
	b = append(b, `{"resourceSpans":[`...)
	for i, rs := range req.ResourceSpans {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		o := obj{b: b}
		if rs.Resource != nil {
			o.key("resource")
			o.b = append(o.b, '{')
			ro := obj{b: o.b}
			ro.attrs("attributes", rs.Resource.Attributes)
			ro.uint("droppedAttributesCount", uint64(rs.Resource.DroppedAttributesCount))
			o.b = append(ro.b, '}')
		}
		if len(rs.ScopeSpans) > 0 {
			o.key("scopeSpans")
			o.b = append(o.b, '[')
			for j, ss := range rs.ScopeSpans {
				if j > 0 {
					o.b = append(o.b, ',')
				}
				o.b = appendScopeSpans(o.b, ss)
			}
			o.b = append(o.b, ']')
		}
		o.str("schemaUrl", rs.SchemaUrl)
		b = append(o.b, '}')
	}
	return append(b, "]}\n"...)
}

func appendScopeSpans(b []byte, ss *tracepb.ScopeSpans) []byte {
	b = append(b, '{')
	o := obj{b: b}
	if ss.Scope != nil {
		o.key("scope")
		o.b = append(o.b, '{')
		so := obj{b: o.b}
		so.str("name", ss.Scope.Name)
		so.str("version", ss.Scope.Version)
		so.attrs("attributes", ss.Scope.Attributes)
		so.uint("droppedAttributesCount", uint64(ss.Scope.DroppedAttributesCount))
		o.b = append(so.b, '}')
	}
	if len(ss.Spans) > 0 {
		o.key("spans")
		o.b = append(o.b, '[')
		for i, s := range ss.Spans {
			if i > 0 {
				o.b = append(o.b, ',')
			}
			o.b = appendSpan(o.b, s)
		}
		o.b = append(o.b, ']')
	}
	o.str("schemaUrl", ss.SchemaUrl)
	return append(o.b, '}')
}

func appendSpan(b []byte, s *tracepb.Span) []byte {
	b = append(b, '{')
	o := obj{b: b}
	o.id("traceId", s.TraceId)
	o.id("spanId", s.SpanId)
	o.str("traceState", s.TraceState)
	o.id("parentSpanId", s.ParentSpanId)
	o.uint("flags", uint64(s.Flags))
	o.str("name", s.Name)
	o.uint("kind", uint64(s.Kind))
	o.quotedUint("startTimeUnixNano", s.StartTimeUnixNano)
	o.quotedUint("endTimeUnixNano", s.EndTimeUnixNano)
	o.attrs("attributes", s.Attributes)
	o.uint("droppedAttributesCount", uint64(s.DroppedAttributesCount))
	if len(s.Events) > 0 {
		o.key("events")
		o.b = append(o.b, '[')
		for i, e := range s.Events {
			if i > 0 {
				o.b = append(o.b, ',')
			}
			o.b = append(o.b, '{')
			eo := obj{b: o.b}
			eo.quotedUint("timeUnixNano", e.TimeUnixNano)
			eo.str("name", e.Name)
			eo.attrs("attributes", e.Attributes)
			eo.uint("droppedAttributesCount", uint64(e.DroppedAttributesCount))
			o.b = append(eo.b, '}')
		}
		o.b = append(o.b, ']')
	}
	o.uint("droppedEventsCount", uint64(s.DroppedEventsCount))
	o.uint("droppedLinksCount", uint64(s.DroppedLinksCount))
	if s.Status != nil {
		o.key("status")
		o.b = append(o.b, '{')
		so := obj{b: o.b}
		so.str("message", s.Status.Message)
		so.uint("code", uint64(s.Status.Code))
		o.b = append(so.b, '}')
	}
	return append(o.b, '}')
}

// obj writes the members of one JSON object, leaving zero values out as
// the protobuf JSON mapping does.
type obj struct {
	b    []byte
	more bool
}

func (o *obj) key(k string) {
	if o.more {
		o.b = append(o.b, ',')
	}
	o.more = true
	o.b = append(o.b, '"')
	o.b = append(o.b, k...)
	o.b = append(o.b, `":`...)
}

func (o *obj) str(k, v string) {
	if v != "" {
		o.key(k)
		o.b = appendString(o.b, v)
	}
}

func (o *obj) uint(k string, v uint64) {
	if v != 0 {
		o.key(k)
		o.b = strconv.AppendUint(o.b, v, 10)
	}
}

func (o *obj) quotedUint(k string, v uint64) {
	if v != 0 {
		o.key(k)
		o.b = append(o.b, '"')
		o.b = strconv.AppendUint(o.b, v, 10)
		o.b = append(o.b, '"')
	}
}

func (o *obj) id(k string, v []byte) {
	if len(v) > 0 {
		o.key(k)
		o.b = append(o.b, '"')
		o.b = hex.AppendEncode(o.b, v)
		o.b = append(o.b, '"')
	}
}

func (o *obj) attrs(k string, kvs []*commonpb.KeyValue) {
	if len(kvs) == 0 {
		return
	}
	o.key(k)
	o.b = append(o.b, '[')
	for i, kv := range kvs {
		if i > 0 {
			o.b = append(o.b, ',')
		}
		o.b = append(o.b, '{')
		ko := obj{b: o.b}
		ko.str("key", kv.Key)
		if kv.Value != nil {
			ko.key("value")
			ko.b = appendValue(ko.b, kv.Value)
		}
		o.b = append(ko.b, '}')
	}
	o.b = append(o.b, ']')
}

func appendValue(b []byte, v *commonpb.AnyValue) []byte {
	switch x := v.Value.(type) {
	case *commonpb.AnyValue_StringValue:
		b = append(b, `{"stringValue":`...)
		b = appendString(b, x.StringValue)
	case *commonpb.AnyValue_BoolValue:
		b = append(b, `{"boolValue":`...)
		b = strconv.AppendBool(b, x.BoolValue)
	case *commonpb.AnyValue_IntValue:
		b = append(b, `{"intValue":"`...)
		b = strconv.AppendInt(b, x.IntValue, 10)
		b = append(b, '"')
	case *commonpb.AnyValue_DoubleValue:
		b = append(b, `{"doubleValue":`...)
		switch f := x.DoubleValue; {
		case math.IsNaN(f):
			b = append(b, `"NaN"`...)
		case math.IsInf(f, 1):
			b = append(b, `"Infinity"`...)
		case math.IsInf(f, -1):
			b = append(b, `"-Infinity"`...)
		default:
			b = strconv.AppendFloat(b, f, 'g', -1, 64)
		}
	case *commonpb.AnyValue_ArrayValue:
		b = append(b, `{"arrayValue":{`...)
		if x.ArrayValue != nil && len(x.ArrayValue.Values) > 0 {
			b = append(b, `"values":[`...)
			for i, e := range x.ArrayValue.Values {
				if i > 0 {
					b = append(b, ',')
				}
				b = appendValue(b, e)
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	default:
		// crest makes no other kinds of values
		return append(b, "{}"...)
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}
