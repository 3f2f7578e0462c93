// Package telemetry installs the process-wide OpenTelemetry tracer provider
// and W3C trace-context propagation that otelgrpc uses on every client and
// server, so a request keeps one trace id from the CLI through broker and
// keyguard to audit, and log lines can carry it.
//
// Spans are exported over OTLP only when the standard OTEL_* variables ask
// for it; otherwise spans are still created (and have trace ids for logs and
// audit events) but go nowhere.
package telemetry

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Exporter protocols, as spelled in OTEL_EXPORTER_OTLP_PROTOCOL.
const (
	protocolGRPC = "grpc"
	protocolHTTP = "http/protobuf"
)

// Option adjusts Setup.
type Option func(*settings)

type settings struct {
	processors  []sdktrace.SpanProcessor
	logger      hclog.Logger
	newExporter func(ctx context.Context, protocol string, getenv func(string) string) (sdktrace.SpanExporter, error)
	wrap        func(sdktrace.SpanExporter) sdktrace.SpanExporter
}

// WithSpanProcessor adds a span processor next to the exporter (if any);
// tests use it with an in-memory exporter from sdk/trace/tracetest.
func WithSpanProcessor(sp sdktrace.SpanProcessor) Option {
	return func(s *settings) { s.processors = append(s.processors, sp) }
}

// WrapExporter wraps the OTLP exporter (when there is one) in w: a process
// that runs several services (credmatrix-dev) uses it to give each span the
// resource of the service that made it.
func WrapExporter(w func(sdktrace.SpanExporter) sdktrace.SpanExporter) Option {
	return func(s *settings) { s.wrap = w }
}

// WithLogger routes OpenTelemetry's internal errors (for example a collector
// that cannot be reached) to l instead of the standard library logger.
func WithLogger(l hclog.Logger) Option {
	return func(s *settings) { s.logger = l }
}

// Setup installs, as the OpenTelemetry globals, the W3C trace-context
// propagator and the tracer provider NewProvider builds for service. The
// services call it once at start-up (platform/daemon).
//
// shutdown flushes pending spans and stops the provider; call it on exit. It
// is never nil, even when err is not.
func Setup(ctx context.Context, service string, getenv func(string) string, opts ...Option) (shutdown func(context.Context) error, err error) {
	s := newSettings(opts)
	// Without a propagator, client and server spans land in separate traces.
	otel.SetTextMapPropagator(Propagator())
	if s.logger != nil {
		l := s.logger
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			l.Warn("opentelemetry error", "error", err)
		}))
	}
	tp, err := newProvider(ctx, service, getenv, s)
	if err != nil {
		return func(context.Context) error { return nil }, err
	}
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}

// Propagator is the context propagation every credmatrix process uses: W3C
// trace context (traceparent, tracestate), nothing else — no baggage, so no
// caller-chosen data rides along into the services.
func Propagator() propagation.TextMapPropagator { return propagation.TraceContext{} }

// NewProvider builds an SDK tracer provider whose resource names service,
// without touching the OpenTelemetry globals: the CLI uses it so that a
// command's spans (and their export) stay its own, and tests can run many
// in one process.
//
// getenv supplies the OTEL_* variables that pick the exporter (nil means an
// empty environment): an OTLP exporter is created when OTEL_TRACES_EXPORTER
// is "otlp" or OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
// is set, unless OTEL_TRACES_EXPORTER is "none" or OTEL_SDK_DISABLED is
// "true". It speaks gRPC, or HTTP when OTEL_EXPORTER_OTLP_TRACES_PROTOCOL (or
// OTEL_EXPORTER_OTLP_PROTOCOL) is "http/protobuf". The exporter and the SDK
// read their remaining settings (headers, certificates, timeouts, sampler,
// OTEL_BSP_* batching) from the process environment themselves. Without an
// exporter, spans are still created, so trace ids reach logs and audit
// events.
//
// Call Shutdown on the provider on exit to flush pending spans.
func NewProvider(ctx context.Context, service string, getenv func(string) string, opts ...Option) (*sdktrace.TracerProvider, error) {
	return newProvider(ctx, service, getenv, newSettings(opts))
}

func newSettings(opts []Option) settings {
	s := settings{newExporter: newExporter}
	for _, o := range opts {
		o(&s)
	}
	return s
}

func newProvider(ctx context.Context, service string, getenv func(string) string, s settings) (*sdktrace.TracerProvider, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	protocol, err := exporterProtocol(getenv)
	if err != nil {
		return nil, err
	}
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(semconv.ServiceName(service)),
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry: build resource: %w", err)
	}
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if protocol != "" {
		exp, err := s.newExporter(ctx, protocol, getenv)
		if err != nil {
			return nil, err
		}
		if s.wrap != nil {
			exp = s.wrap(exp)
		}
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	}
	for _, sp := range s.processors {
		tpOpts = append(tpOpts, sdktrace.WithSpanProcessor(sp))
	}
	return sdktrace.NewTracerProvider(tpOpts...), nil
}

// exporterProtocol decides from the environment whether to export and how;
// "" means no exporter.
func exporterProtocol(getenv func(string) string) (string, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return "", nil
	}
	kind := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER"))
	switch kind {
	case "none":
		return "", nil
	case "":
		if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return "", nil
		}
	case "otlp":
	default:
		return "", fmt.Errorf("telemetry: OTEL_TRACES_EXPORTER=%q is not supported (want otlp or none)", kind)
	}
	name := "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	protocol := strings.TrimSpace(getenv(name))
	if protocol == "" {
		name = "OTEL_EXPORTER_OTLP_PROTOCOL"
		protocol = strings.TrimSpace(getenv(name))
	}
	switch protocol {
	case "", protocolGRPC:
		return protocolGRPC, nil
	case protocolHTTP:
		return protocolHTTP, nil
	}
	return "", fmt.Errorf("telemetry: %s=%q is not supported (want grpc or http/protobuf)", name, protocol)
}

// endpointURL returns the traces endpoint URL from the environment, or ""
// for the exporter's default (localhost:4317 or localhost:4318). The generic
// endpoint is a base URL to which HTTP appends the signal path, as the
// OpenTelemetry specification says.
func endpointURL(protocol string, getenv func(string) string) (string, error) {
	name, raw := "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	generic := false
	if raw == "" {
		name, raw, generic = "OTEL_EXPORTER_OTLP_ENDPOINT", getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), true
	}
	if raw == "" {
		return "", nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("telemetry: %s=%q: want a URL such as http://collector:4317", name, raw)
	}
	if generic && protocol == protocolHTTP {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
	}
	return u.String(), nil
}

// newExporter creates an OTLP trace exporter. Neither kind connects until
// the first export, so a missing collector does not block start-up.
func newExporter(ctx context.Context, protocol string, getenv func(string) string) (sdktrace.SpanExporter, error) {
	endpoint, err := endpointURL(protocol, getenv)
	if err != nil {
		return nil, err
	}
	switch protocol {
	case protocolGRPC:
		var opts []otlptracegrpc.Option
		if endpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(endpoint))
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("telemetry: create OTLP/gRPC exporter: %w", err)
		}
		return exp, nil
	case protocolHTTP:
		var opts []otlptracehttp.Option
		if endpoint != "" {
			opts = append(opts, otlptracehttp.WithEndpointURL(endpoint))
		}
		exp, err := otlptracehttp.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("telemetry: create OTLP/HTTP exporter: %w", err)
		}
		return exp, nil
	}
	return nil, fmt.Errorf("telemetry: unknown exporter protocol %q", protocol)
}
