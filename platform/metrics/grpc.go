package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Names of the gRPC server metrics.
const (
	GRPCRequestsTotal   = "credmatrix_grpc_server_requests_total"
	GRPCRequestDuration = "credmatrix_grpc_server_request_duration_seconds"
)

// GRPCServer counts and times the RPCs a server handles, by service,
// method and status code. The labels come from the registered method
// names, so they are bounded; requests and responses are never looked at.
type GRPCServer struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewGRPCServer creates the gRPC server metrics and registers them with
// reg (nil: not registered).
func NewGRPCServer(reg prometheus.Registerer) *GRPCServer {
	m := &GRPCServer{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: GRPCRequestsTotal,
			Help: "gRPC requests handled, by service, method and status code.",
		}, []string{"grpc_service", "grpc_method", "grpc_code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    GRPCRequestDuration,
			Help:    "Time to handle a gRPC request (a stream: its whole life), by service and method.",
			Buckets: LatencyBuckets,
		}, []string{"grpc_service", "grpc_method"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration)
	}
	return m
}

// Unary is the unary server interceptor.
func (m *GRPCServer) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.observe(info.FullMethod, start, err)
		return resp, err
	}
}

// Stream is the stream server interceptor.
func (m *GRPCServer) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		m.observe(info.FullMethod, start, err)
		return err
	}
}

func (m *GRPCServer) observe(fullMethod string, start time.Time, err error) {
	svc, method := splitMethod(fullMethod)
	m.requests.WithLabelValues(svc, method, status.Code(err).String()).Inc()
	m.duration.WithLabelValues(svc, method).Observe(time.Since(start).Seconds())
}

// splitMethod splits "/pkg.Service/Method".
func splitMethod(full string) (string, string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", "unknown"
}
