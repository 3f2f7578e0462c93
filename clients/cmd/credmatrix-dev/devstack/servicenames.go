package devstack

import (
	"context"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	sdkresource "go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// ServiceNames gives each service of the one-process stack its own
// service.name in exported traces (credmatrix-broker, credmatrix-keyguard,
// credmatrix-audit), as if each ran as its own binary, although they share
// the process's one tracer provider. Install it both as a span processor
// (it decides each span's service when the span starts) and around the
// exporter (it gives each exported span its service's resource):
//
//	names := devstack.NewServiceNames()
//	telemetry.Setup(ctx, "credmatrix-dev", getenv,
//		telemetry.WithSpanProcessor(names), telemetry.WrapExporter(names.Wrap))
//
// A span's service is, in order: the service whose gRPC method a server
// span serves; else its parent's, when the parent started in this process
// (a domain span, a client call to audit, an audit batch); else the one
// whose package made it; else the process's own (credmatrix-dev).
type ServiceNames struct {
	mu    sync.Mutex
	owner map[trace.SpanID]string // spans running now -> service
}

// serviceKey carries a span's service from start to export; the exporter
// wrapper removes it again.
const serviceKey = attribute.Key("credmatrix.dev.service")

var _ sdktrace.SpanProcessor = (*ServiceNames)(nil)

// NewServiceNames returns an empty ServiceNames.
func NewServiceNames() *ServiceNames {
	return &ServiceNames{owner: map[trace.SpanID]string{}}
}

// services maps gRPC service and package prefixes to service names.
var services = []struct{ grpc, pkg, name string }{
	{"credmatrix.broker.", "github.com/credmatrix/credmatrix/services/broker", "credmatrix-broker"},
	{"credmatrix.keyguard.", "github.com/credmatrix/credmatrix/services/keyguard", "credmatrix-keyguard"},
	{"credmatrix.audit.", "github.com/credmatrix/credmatrix/services/audit", "credmatrix-audit"},
}

// OnStart decides s's service.
func (n *ServiceNames) OnStart(_ context.Context, s sdktrace.ReadWriteSpan) {
	svc := ""
	if s.SpanKind() == trace.SpanKindServer {
		for _, x := range services {
			if strings.HasPrefix(s.Name(), x.grpc) {
				svc = x.name
			}
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := s.Parent(); svc == "" && p.IsValid() {
		svc = n.owner[p.SpanID()]
	}
	if svc == "" {
		for _, x := range services {
			if strings.HasPrefix(s.InstrumentationScope().Name, x.pkg) {
				svc = x.name
			}
		}
	}
	if svc == "" {
		return
	}
	n.owner[s.SpanContext().SpanID()] = svc
	s.SetAttributes(serviceKey.String(svc))
}

// OnEnd forgets s: its children have started by now (a child outliving its
// parent's start is named by its package).
func (n *ServiceNames) OnEnd(s sdktrace.ReadOnlySpan) {
	n.mu.Lock()
	delete(n.owner, s.SpanContext().SpanID())
	n.mu.Unlock()
}

// Shutdown implements sdktrace.SpanProcessor.
func (n *ServiceNames) Shutdown(context.Context) error { return nil }

// ForceFlush implements sdktrace.SpanProcessor.
func (n *ServiceNames) ForceFlush(context.Context) error { return nil }

// Wrap returns exp with each span given its service's resource.
func (n *ServiceNames) Wrap(exp sdktrace.SpanExporter) sdktrace.SpanExporter {
	return &namedExporter{SpanExporter: exp, res: map[string]*sdkresource.Resource{}}
}

type namedExporter struct {
	sdktrace.SpanExporter
	mu  sync.Mutex
	res map[string]*sdkresource.Resource // service -> resource, derived from the process's
}

func (e *namedExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	out := make([]sdktrace.ReadOnlySpan, len(spans))
	for i, s := range spans {
		out[i] = e.named(s)
	}
	return e.SpanExporter.ExportSpans(ctx, out)
}

func (e *namedExporter) named(s sdktrace.ReadOnlySpan) sdktrace.ReadOnlySpan {
	attrs := s.Attributes()
	svc := ""
	kept := make([]attribute.KeyValue, 0, len(attrs))
	for _, kv := range attrs {
		if kv.Key == serviceKey {
			svc = kv.Value.AsString()
			continue
		}
		kept = append(kept, kv)
	}
	if svc == "" {
		return s
	}
	e.mu.Lock()
	res, ok := e.res[svc]
	if !ok {
		var err error
		res, err = sdkresource.Merge(s.Resource(), sdkresource.NewWithAttributes(s.Resource().SchemaURL(), semconv.ServiceName(svc)))
		if err != nil {
			res = sdkresource.NewWithAttributes(s.Resource().SchemaURL(), semconv.ServiceName(svc))
		}
		e.res[svc] = res
	}
	e.mu.Unlock()
	return namedSpan{ReadOnlySpan: s, res: res, attrs: kept}
}

// namedSpan is a span with its service's resource.
type namedSpan struct {
	sdktrace.ReadOnlySpan
	res   *sdkresource.Resource
	attrs []attribute.KeyValue
}

func (s namedSpan) Resource() *sdkresource.Resource  { return s.res }
func (s namedSpan) Attributes() []attribute.KeyValue { return s.attrs }
