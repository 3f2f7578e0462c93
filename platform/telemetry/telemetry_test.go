package telemetry

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func envFunc(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

func TestExporterProtocol(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    string
		wantErr string
	}{
		{name: "no-env/no-exporter", env: nil, want: ""},
		{name: "exporter-otlp/grpc-default", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, want: "grpc"},
		{name: "endpoint/grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, want: "grpc"},
		{name: "traces-endpoint/grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, want: "grpc"},
		{name: "endpoint/http", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, want: "http/protobuf"},
		{name: "traces-protocol-beats-generic", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, want: "http/protobuf"},
		{name: "none-beats-endpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, want: ""},
		{name: "sdk-disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, want: ""},
		{name: "protocol-alone/no-exporter", env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, want: ""},
		{name: "unsupported-exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, wantErr: `telemetry: OTEL_TRACES_EXPORTER="zipkin" is not supported (want otlp or none)`},
		{name: "unsupported-protocol", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, wantErr: `telemetry: OTEL_EXPORTER_OTLP_PROTOCOL="http/json" is not supported (want grpc or http/protobuf)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := exporterProtocol(envFunc(tc.env))
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if diff := cmp.Diff(gotErr, tc.wantErr); diff != "" {
				t.Fatalf("error mismatch (-got +want):\n%s", diff)
			}
			if got != tc.want {
				t.Errorf("protocol = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestEndpointURL(t *testing.T) {
	tests := []struct {
		name     string
		protocol string
		env      map[string]string
		want     string
		wantErr  string
	}{
		{name: "unset", protocol: "grpc", want: ""},
		{name: "grpc/generic-as-is", protocol: "grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317"}, want: "https://c:4317"},
		{name: "http/generic-gets-signal-path", protocol: "http/protobuf", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/otlp/"}, want: "http://c:4318/otlp/v1/traces"},
		{name: "http/traces-as-is", protocol: "http/protobuf", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"}, want: "http://c:4318/custom"},
		{name: "no-scheme", protocol: "grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, wantErr: `telemetry: OTEL_EXPORTER_OTLP_ENDPOINT="collector:4317": want a URL such as http://collector:4317`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := endpointURL(tc.protocol, envFunc(tc.env))
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if diff := cmp.Diff(gotErr, tc.wantErr); diff != "" {
				t.Fatalf("error mismatch (-got +want):\n%s", diff)
			}
			if got != tc.want {
				t.Errorf("endpoint = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestSetupExporterCreation runs Setup with a recording exporter factory to
// check that an exporter is created only when the environment asks for one.
func TestSetupExporterCreation(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want []string // protocols the factory was called with
	}{
		{name: "no-env/no-exporter", env: nil, want: nil},
		{name: "none/no-exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, want: nil},
		{name: "endpoint/grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, want: []string{"grpc"}},
		{name: "otlp/http", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, want: []string{"http/protobuf"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			record := func(s *settings) {
				s.newExporter = func(_ context.Context, protocol string, _ func(string) string) (sdktrace.SpanExporter, error) {
					got = append(got, protocol)
					return tracetest.NewInMemoryExporter(), nil
				}
			}
			shutdown, err := Setup(context.Background(), "test", envFunc(tc.env), record)
			if err != nil {
				t.Fatalf("Setup: %v", err)
			}
			if err := shutdown(context.Background()); err != nil {
				t.Errorf("shutdown: %v", err)
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("exporters created mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

// TestSetupRealExporters builds the real OTLP exporters; neither connects
// before the first export, so no collector is needed.
func TestSetupRealExporters(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
	}{
		{name: "grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}},
		{name: "http", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			shutdown, err := Setup(context.Background(), "test", envFunc(tc.env))
			if err != nil {
				t.Fatalf("Setup: %v", err)
			}
			if err := shutdown(context.Background()); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		})
	}
}

func TestSetupErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{name: "bad-exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "jaeger"}, want: `telemetry: OTEL_TRACES_EXPORTER="jaeger" is not supported (want otlp or none)`},
		{name: "bad-endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "::nope"}, want: `telemetry: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="::nope": want a URL such as http://collector:4317`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			shutdown, err := Setup(context.Background(), "test", envFunc(tc.env))
			if err == nil {
				t.Fatal("Setup succeeded, want error")
			}
			if diff := cmp.Diff(err.Error(), tc.want); diff != "" {
				t.Errorf("error mismatch (-got +want):\n%s", diff)
			}
			if shutdown == nil {
				t.Fatal("shutdown is nil")
			}
			if err := shutdown(context.Background()); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		})
	}
}

func TestSetupInMemorySpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	shutdown, err := Setup(context.Background(), "audit", nil, WithSpanProcessor(sdktrace.NewSimpleSpanProcessor(exp)))
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() { _ = shutdown(context.Background()) })

	ctx, parent := otel.Tracer("test").Start(context.Background(), "parent")
	_, child := otel.Tracer("test").Start(ctx, "child")
	child.End()
	parent.End()

	spans := exp.GetSpans()
	var names []string
	for _, s := range spans {
		names = append(names, s.Name)
		if got := s.SpanContext.TraceID(); got != parent.SpanContext().TraceID() {
			t.Errorf("span %s trace id = %s, want %s", s.Name, got, parent.SpanContext().TraceID())
		}
		svc, ok := s.Resource.Set().Value("service.name")
		if !ok || svc.AsString() != "audit" {
			t.Errorf("span %s service.name = %v, want audit", s.Name, svc)
		}
	}
	if diff := cmp.Diff(names, []string{"child", "parent"}); diff != "" {
		t.Errorf("span names mismatch (-got +want):\n%s", diff)
	}
	if fields := otel.GetTextMapPropagator().Fields(); !slices.Contains(fields, "traceparent") {
		t.Errorf("propagator fields = %v, want traceparent (W3C trace context)", fields)
	}
	if err := shutdown(context.Background()); err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("shutdown: %v", err)
	}
}

// TestNewProviderLeavesGlobals checks that NewProvider (the CLI's way)
// records spans for its own provider and changes no OpenTelemetry global.
func TestNewProviderLeavesGlobals(t *testing.T) {
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	exp := tracetest.NewInMemoryExporter()
	tp, err := NewProvider(context.Background(), "credmatrix-cli", nil, WithSpanProcessor(sdktrace.NewSimpleSpanProcessor(exp)))
	if err != nil {
		t.Fatalf("NewProvider: %v", err)
	}
	_, span := tp.Tracer("test").Start(context.Background(), "credmatrix creds")
	span.End()
	var names []string
	for _, s := range exp.GetSpans() {
		names = append(names, s.Name)
	}
	if err := tp.Shutdown(context.Background()); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	got := []any{names, otel.GetTracerProvider() == prevTP, otel.GetTextMapPropagator() == prevProp}
	if diff := cmp.Diff(got, []any{[]string{"credmatrix creds"}, true, true}); diff != "" {
		t.Errorf("(spans, global provider kept, global propagator kept) (-got +want):\n%s", diff)
	}
	if _, err := NewProvider(context.Background(), "x", func(k string) string {
		return map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}[k]
	}); err == nil {
		t.Errorf("NewProvider with OTEL_TRACES_EXPORTER=zipkin: no error")
	}
}

// TestPropagatorIsTraceContextOnly checks that no baggage (caller-chosen
// key/values) is propagated into the services.
func TestPropagatorIsTraceContextOnly(t *testing.T) {
	if diff := cmp.Diff(Propagator().Fields(), []string{"traceparent", "tracestate"}); diff != "" {
		t.Errorf("propagated fields (-got +want):\n%s", diff)
	}
}
