package grpcclient_test

import (
	"context"
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/telemetry"
)

// TestDialWithTracing checks that a connection from DialWithTracing makes
// its client spans with the given provider (not the globals) and carries
// the trace to the server.
func TestDialWithTracing(t *testing.T) {
	serverRec := tracetest.NewSpanRecorder()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(serverRec))),
		otelgrpc.WithPropagators(telemetry.Propagator()))))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	clientRec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(clientRec))
	conn, err := grpcclient.DialWithTracing(grpcclient.Config{Target: lis.Addr().String(), DevPlaintext: true}, tp, telemetry.Propagator())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	ctx, root := tp.Tracer("test").Start(context.Background(), "credmatrix creds")
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	root.End()
	srv.GracefulStop()

	type rel struct{ Name, Parent string }
	names := map[trace.SpanID]string{}
	var got []rel
	for _, rec := range []*tracetest.SpanRecorder{clientRec, serverRec} {
		for _, s := range rec.Ended() {
			names[s.SpanContext().SpanID()] = s.Name()
		}
	}
	for _, rec := range []*tracetest.SpanRecorder{clientRec, serverRec} {
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID() != root.SpanContext().TraceID() {
				t.Errorf("span %s is in another trace", s.Name())
			}
			got = append(got, rel{s.Name() + "/" + s.SpanKind().String(), names[s.Parent().SpanID()]})
		}
	}
	want := []rel{
		{"grpc.health.v1.Health/Check/client", "credmatrix creds"},
		{"credmatrix creds/internal", ""},
		{"grpc.health.v1.Health/Check/server", "grpc.health.v1.Health/Check"},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("spans (name/kind, parent) (-got +want):\n%s", diff)
	}
}
