package trace

import (
	"context"
	"errors"
	"sync"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	oteltrace "go.opentelemetry.io/otel/trace"
)

// instrumentation names crest's tracer in every exported span.
const instrumentation = "github.com/crest-restore/crest/trace"

// sdkSpans are the trace's spans made through the OpenTelemetry SDK once,
// so that every exporter sends the same ids.
type sdkSpans struct {
	once  sync.Once
	spans []sdktrace.ReadOnlySpan
	id    oteltrace.TraceID
	err   error // from the resource: the spans are still usable
}

// Resource describes this process: service.name crest unless
// OTEL_SERVICE_NAME says otherwise, OTEL_RESOURCE_ATTRIBUTES, and the
// SDK's own attributes. A malformed OTEL_RESOURCE_ATTRIBUTES gives an
// error along with the resource of what could be read.
func Resource(ctx context.Context) (*resource.Resource, error) {
	// Later detectors override earlier ones: the environment wins over
	// crest's default name.
	return resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName("crest")),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
}

// collector keeps every ended span; exporters get them all in one call.
type collector struct{ spans []sdktrace.ReadOnlySpan }

func (c *collector) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (c *collector) OnEnd(s sdktrace.ReadOnlySpan)                   { c.spans = append(c.spans, s) }
func (c *collector) Shutdown(context.Context) error                  { return nil }
func (c *collector) ForceFlush(context.Context) error                { return nil }

// Spans returns the trace's spans as the SDK made them (root first, then
// parents before children), its trace id, and an error about the resource
// if OTEL_RESOURCE_ATTRIBUTES could not be read in full.
func (t *Trace) Spans() ([]sdktrace.ReadOnlySpan, oteltrace.TraceID, error) {
	t.sdk.once.Do(func() {
		res, err := Resource(context.Background())
		if res == nil {
			res = resource.Default()
		}
		t.sdk.err = err
		col := &collector{}
		limits := sdktrace.NewSpanLimits()
		limits.EventCountLimit = 4096
		limits.AttributeCountLimit = 256
		tp := sdktrace.NewTracerProvider(
			sdktrace.WithResource(res),
			sdktrace.WithSampler(sdktrace.AlwaysSample()),
			sdktrace.WithRawSpanLimits(limits),
			sdktrace.WithSpanProcessor(col),
		)
		tracer := tp.Tracer(instrumentation)
		t.emit(context.Background(), tracer, t.Root)
		_ = tp.Shutdown(context.Background())
		// The SDK hands spans over as they end, children first; exporters
		// and readers like parents first.
		t.sdk.spans = preorder(col.spans)
		if len(t.sdk.spans) > 0 {
			t.sdk.id = t.sdk.spans[0].SpanContext().TraceID()
		}
	})
	return t.sdk.spans, t.sdk.id, t.sdk.err
}

// ID returns the trace's id as exporters send it.
func (t *Trace) ID() oteltrace.TraceID {
	_, id, _ := t.Spans()
	return id
}

func (t *Trace) emit(ctx context.Context, tracer oteltrace.Tracer, s *Span) {
	ctx, span := tracer.Start(ctx, s.Name,
		oteltrace.WithTimestamp(t.Clock.Wall(s.Start)),
		oteltrace.WithSpanKind(oteltrace.SpanKindInternal),
		oteltrace.WithAttributes(s.Attrs...))
	for _, e := range s.Events {
		span.AddEvent(e.Name, oteltrace.WithTimestamp(t.Clock.Wall(e.At)), oteltrace.WithAttributes(e.Attrs...))
	}
	for _, c := range s.Children {
		t.emit(ctx, tracer, c)
	}
	if s.Err != "" {
		span.SetStatus(codes.Error, s.Err)
	}
	span.End(oteltrace.WithTimestamp(t.Clock.Wall(s.End)))
}

// preorder sorts spans so that every parent comes before its children,
// siblings in the order they ended.
func preorder(spans []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	children := map[oteltrace.SpanID][]sdktrace.ReadOnlySpan{}
	var roots []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Parent().IsValid() {
			children[s.Parent().SpanID()] = append(children[s.Parent().SpanID()], s)
		} else {
			roots = append(roots, s)
		}
	}
	out := make([]sdktrace.ReadOnlySpan, 0, len(spans))
	var walk func(s sdktrace.ReadOnlySpan)
	walk = func(s sdktrace.ReadOnlySpan) {
		out = append(out, s)
		for _, c := range children[s.SpanContext().SpanID()] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	return out
}

var errNoSpans = errors.New("trace: the trace has no spans")
