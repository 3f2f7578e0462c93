package grpcclient_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
)

// backend is a gRPC server that counts the calls it receives and reports
// the health the test sets.
type backend struct {
	addr   string
	health *health.Server
	hits   atomic.Int64
}

func startBackend(t *testing.T) *backend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: lis.Addr().String(), health: health.NewServer()}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
		b.hits.Add(1)
		return status.Error(codes.Unimplemented, "counted")
	}))
	healthpb.RegisterHealthServer(srv, b.health)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return b
}

func call(t *testing.T, conn *grpc.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := conn.Invoke(ctx, "/test.Counter/Count", &emptypb.Empty{}, &emptypb.Empty{}, grpc.WaitForReady(true))
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("call: %v, want the backend's answer", err)
	}
}

// TestHealthRouting: with a fixed list and HealthService, calls go only to
// the address reporting the service SERVING, and follow it when it moves
// (an audit sequencer failing over).
func TestHealthRouting(t *testing.T) {
	a, b := startBackend(t), startBackend(t)
	const svc = "credmatrix.test.Leader"
	a.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	b.health.SetServingStatus(svc, healthpb.HealthCheckResponse_NOT_SERVING)
	conn, err := grpcclient.Dial(grpcclient.Config{Target: a.addr + "," + b.addr, DevPlaintext: true, HealthService: svc})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for range 20 {
		call(t, conn)
	}
	if a.hits.Load() != 20 || b.hits.Load() != 0 {
		t.Fatalf("hits a=%d b=%d, want all 20 at the serving address", a.hits.Load(), b.hits.Load())
	}

	a.health.SetServingStatus(svc, healthpb.HealthCheckResponse_NOT_SERVING)
	b.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	deadline := time.Now().Add(10 * time.Second)
	for b.hits.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("calls did not move to the newly serving address within 10s")
		}
		call(t, conn)
	}
	before := a.hits.Load()
	for range 20 {
		call(t, conn)
	}
	if a.hits.Load() != before {
		t.Errorf("%d calls went to the address that stopped serving", a.hits.Load()-before)
	}
}

// TestListRoundRobin: without HealthService, a fixed list spreads calls
// over every address.
func TestListRoundRobin(t *testing.T) {
	a, b := startBackend(t), startBackend(t)
	conn, err := grpcclient.Dial(grpcclient.Config{Target: a.addr + "," + b.addr, DevPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Round robin starts once both connections are ready; call until
	// both have been used, then check an even spread.
	deadline := time.Now().Add(10 * time.Second)
	for a.hits.Load() == 0 || b.hits.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("hits a=%d b=%d after 10s, want both used", a.hits.Load(), b.hits.Load())
		}
		call(t, conn)
	}
	a0, b0 := a.hits.Load(), b.hits.Load()
	for range 20 {
		call(t, conn)
	}
	if da, db := a.hits.Load()-a0, b.hits.Load()-b0; da != 10 || db != 10 {
		t.Errorf("20 calls: a=%d b=%d, want 10 each", da, db)
	}
}
