package metrics_test

import (
	"context"
	"testing"

	"github.com/credmatrix/credmatrix/platform/benchload"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

var grpcserverInfo = grpc.UnaryServerInfo{FullMethod: "/credmatrix.broker.v1.BrokerService/IssueSession"}

// BenchmarkHealthCheck measures a loopback gRPC round trip (health Check,
// 8 concurrent callers) without and with the request metrics
// interceptors, to show what metrics cost a real RPC.
//
//	go test -run '^$' -bench HealthCheck ./platform/metrics/
func BenchmarkHealthCheck(b *testing.B) {
	for _, tc := range []struct {
		name    string
		metrics bool
	}{
		{"metrics-off", false},
		{"metrics-on", true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cfg := grpcserver.DefaultConfig()
			cfg.ListenAddr, cfg.DevPlaintext = "127.0.0.1:0", true
			var opts []grpcserver.Option
			if tc.metrics {
				opts = append(opts, grpcserver.WithMetrics(prometheus.NewRegistry()))
			}
			gs, err := grpcserver.New(cfg, nil, opts...)
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- gs.Serve(ctx) }()
			conn, err := grpcclient.Dial(grpcclient.Config{Target: gs.Addr().String(), DevPlaintext: true})
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			client := healthpb.NewHealthClient(conn)
			benchload.Run(b, 8, "rpcs", func(int) error {
				_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
				return err
			})
			cancel()
			<-done
		})
	}
}

// BenchmarkObserve measures the interceptor alone around a no-op handler.
//
//	go test -run '^$' -bench Observe ./platform/metrics/
func BenchmarkObserve(b *testing.B) {
	m := metrics.NewGRPCServer(prometheus.NewRegistry())
	unary := m.Unary()
	info := &grpcserverInfo
	handler := func(context.Context, any) (any, error) { return nil, nil }
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, _ = unary(context.Background(), nil, info, handler)
		}
	})
}
