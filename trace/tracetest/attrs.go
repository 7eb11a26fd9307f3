package tracetest

import commonpb "go.opentelemetry.io/proto/otlp/common/v1"

// String is the string value of the attribute key in kvs, "" when there
// is none.
func String(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

// Int is the integer value of the attribute key in kvs, and whether kvs
// has it.
func Int(kvs []*commonpb.KeyValue, key string) (int64, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value.GetIntValue(), true
		}
	}
	return 0, false
}
