// Package grpcserver is the one gRPC server bootstrap that broker, keyguard
// and audit share, so that TLS/mTLS, tracing, panic recovery, request
// logging, health, reflection and graceful shutdown are written (and
// reviewed) once. Services only register their handlers and add their own
// interceptors (authentication, authorisation) after the shared ones.
package grpcserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/internal/loopback"
	"github.com/credmatrix/credmatrix/platform/internal/pemfile"
	"github.com/credmatrix/credmatrix/platform/logging"
	"github.com/credmatrix/credmatrix/platform/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults applied by DefaultConfig and, for zero values, by New.
const (
	DefaultDrainTimeout    = 10 * time.Second
	DefaultMaxRecvMsgBytes = 4 << 20
)

// TLSFiles names the PEM files of a server's TLS identity. Setting
// ClientCAFile turns on mutual TLS: every client must present a certificate
// signed by that CA.
type TLSFiles struct {
	CertFile     string `cfg:"cert_file" help:"PEM certificate chain the server presents"`
	KeyFile      string `cfg:"key_file" help:"PEM private key of cert_file"`
	ClientCAFile string `cfg:"client_ca_file" help:"PEM CA bundle; when set, clients must present a certificate it signed (mTLS)"`
}

// Config is the server part of every service's configuration; embed it under
// a "server" key and config.Load validates it with full field paths.
type Config struct {
	ListenAddr      string        `cfg:"listen_addr" help:"host:port to listen on (port 0 picks a free port)"`
	TLS             TLSFiles      `cfg:"tls"`
	DevPlaintext    bool          `cfg:"dev_plaintext" help:"serve without TLS; refused unless listen_addr is loopback"`
	DrainTimeout    time.Duration `cfg:"drain_timeout" help:"on shutdown, how long in-flight RPCs may run before connections are closed"`
	MaxRecvMsgBytes int           `cfg:"max_recv_msg_bytes" help:"largest request message accepted, in bytes"`
}

// DefaultConfig returns a Config holding the defaults, to be filled by
// config.Load.
func DefaultConfig() Config {
	return Config{DrainTimeout: DefaultDrainTimeout, MaxRecvMsgBytes: DefaultMaxRecvMsgBytes}
}

// Validate checks c and returns every problem as a *config.FieldError whose
// Field is relative to c ("tls.cert_file"); config.Load prefixes it with the
// enclosing path and fills in where the value came from.
//
// Plaintext is a development convenience that must never reach a network:
// it is refused unless the listen host is a loopback IP or "localhost"
// (nothing is resolved, so a name that happens to resolve to 127.0.0.1 does
// not count).
func (c Config) Validate() error {
	var errs []error
	add := func(field, msg string) {
		errs = append(errs, &config.FieldError{Field: field, Msg: msg})
	}
	host, port, err := net.SplitHostPort(c.ListenAddr)
	switch {
	case c.ListenAddr == "":
		add("listen_addr", "required (host:port, e.g. 127.0.0.1:8443)")
	case err != nil:
		add("listen_addr", "must be host:port")
	default:
		if _, perr := strconv.ParseUint(port, 10, 16); perr != nil {
			add("listen_addr", fmt.Sprintf("port %q must be a number from 0 to 65535", port))
		}
	}
	if c.DevPlaintext {
		if err == nil && !loopback.Host(host) {
			add("dev_plaintext", fmt.Sprintf("refused: listen_addr host %q is not loopback (use 127.0.0.1, ::1 or localhost)", host))
		}
		if c.TLS != (TLSFiles{}) {
			add("dev_plaintext", "conflicts with tls files; set one or the other")
		}
	} else {
		if c.TLS.CertFile == "" {
			add("tls.cert_file", "required unless dev_plaintext is set")
		}
		if c.TLS.KeyFile == "" {
			add("tls.key_file", "required unless dev_plaintext is set")
		}
	}
	if c.DrainTimeout < 0 {
		add("drain_timeout", "must not be negative")
	}
	if c.MaxRecvMsgBytes < 0 {
		add("max_recv_msg_bytes", "must not be negative")
	}
	return errors.Join(errs...)
}

// TLSConfig builds the server TLS configuration: TLS 1.3 only, and mutual
// TLS (tls.RequireAndVerifyClientCert against ClientCAFile) when
// ClientCAFile is set.
func TLSConfig(files TLSFiles) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("grpcserver: load TLS key pair (%s, %s): %w", files.CertFile, files.KeyFile, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
	}
	if files.ClientCAFile != "" {
		pool, err := pemfile.CertPool(files.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("grpcserver: client CA: %w", err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// Option adds to what New builds.
type Option func(*options)

type options struct {
	unary      []grpc.UnaryServerInterceptor
	stream     []grpc.StreamServerInterceptor
	serverOpts []grpc.ServerOption
	otelOpts   []otelgrpc.Option
	metrics    *metrics.GRPCServer
}

// WithUnaryInterceptors appends unary interceptors after the shared recovery
// and logging ones, so their failures are logged and their panics recovered.
func WithUnaryInterceptors(is ...grpc.UnaryServerInterceptor) Option {
	return func(o *options) { o.unary = append(o.unary, is...) }
}

// WithStreamInterceptors appends stream interceptors after the shared
// recovery and logging ones.
func WithStreamInterceptors(is ...grpc.StreamServerInterceptor) Option {
	return func(o *options) { o.stream = append(o.stream, is...) }
}

// WithServerOptions passes extra options (keepalive policy, stream limits …)
// to grpc.NewServer.
func WithServerOptions(opts ...grpc.ServerOption) Option {
	return func(o *options) { o.serverOpts = append(o.serverOpts, opts...) }
}

// WithTracerProvider makes the otelgrpc stats handler use tp instead of the
// global tracer provider installed by telemetry.Setup; tests use it to avoid
// global state.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.otelOpts = append(o.otelOpts, otelgrpc.WithTracerProvider(tp)) }
}

// WithMetrics counts and times every RPC (metrics.GRPCRequestsTotal and
// metrics.GRPCRequestDuration) in reg. Its interceptors run first, so
// recovered panics and authentication refusals are counted too.
func WithMetrics(reg prometheus.Registerer) Option {
	return func(o *options) { o.metrics = metrics.NewGRPCServer(reg) }
}

// Server is a gRPC server that is already listening. Register services on
// GRPC(), then call Serve.
type Server struct {
	cfg    Config
	log    hclog.Logger
	lis    net.Listener
	grpc   *grpc.Server
	health *health.Server
}

// New validates cfg, loads the TLS files and starts listening, so that the
// address (and a port chosen for ":0") is known before Serve and a busy port
// fails start-up rather than the first request. log nil discards logs.
func New(cfg Config, log hclog.Logger, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.MaxRecvMsgBytes == 0 {
		cfg.MaxRecvMsgBytes = DefaultMaxRecvMsgBytes
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}

	var creds credentials.TransportCredentials
	if cfg.DevPlaintext {
		creds = insecure.NewCredentials()
	} else {
		tlsCfg, err := TLSConfig(cfg.TLS)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(tlsCfg)
	}

	lis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("grpcserver: listen on %s: %w", cfg.ListenAddr, err)
	}
	s := &Server{cfg: cfg, log: log, lis: lis, health: health.NewServer()}
	unary := []grpc.UnaryServerInterceptor{s.recoverUnary, s.logUnary}
	stream := []grpc.StreamServerInterceptor{s.recoverStream, s.logStream}
	if o.metrics != nil {
		unary = append([]grpc.UnaryServerInterceptor{o.metrics.Unary()}, unary...)
		stream = append([]grpc.StreamServerInterceptor{o.metrics.Stream()}, stream...)
	}
	serverOpts := []grpc.ServerOption{
		grpc.Creds(creds),
		grpc.StatsHandler(otelgrpc.NewServerHandler(o.otelOpts...)),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgBytes),
		grpc.ChainUnaryInterceptor(append(unary, o.unary...)...),
		grpc.ChainStreamInterceptor(append(stream, o.stream...)...),
	}
	s.grpc = grpc.NewServer(append(serverOpts, o.serverOpts...)...)
	// Not ready until Serve runs.
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthgrpc.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return s, nil
}

// GRPC returns the underlying server for registering services. Register
// before Serve.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Health returns the health service. Serve marks the server ("") and every
// registered service SERVING when it starts; a service may later report
// NOT_SERVING for itself (for example while its store is unreachable).
func (s *Server) Health() *health.Server { return s.health }

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Serve serves until ctx is cancelled, then shuts down gracefully: health
// turns NOT_SERVING, new RPCs are refused, and in-flight RPCs get up to
// DrainTimeout to finish before the remaining connections are closed (their
// handlers' contexts are cancelled). It returns nil after a clean shutdown
// or after Stop. Call it once.
func (s *Server) Serve(ctx context.Context) error {
	for name := range s.grpc.GetServiceInfo() {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)

	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.lis) }()
	s.log.Info("serving gRPC", "addr", s.Addr().String(), "tls", !s.cfg.DevPlaintext, "mtls", s.cfg.TLS.ClientCAFile != "")
	if s.cfg.DevPlaintext {
		s.log.Warn("serving plaintext gRPC (dev_plaintext); for development on loopback only")
	}

	select {
	case err := <-errc:
		s.health.Shutdown()
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpcserver: serve on %s: %w", s.Addr(), err)
		}
		return nil
	case <-ctx.Done():
	}

	s.log.Info("shutting down, draining in-flight RPCs", "drain_timeout", s.cfg.DrainTimeout.String())
	s.health.Shutdown()
	drained := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(drained)
	}()
	timer := time.NewTimer(s.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
		s.log.Warn("drain timeout reached, closing remaining connections", "drain_timeout", s.cfg.DrainTimeout.String())
		s.grpc.Stop()
		<-drained
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("grpcserver: serve on %s: %w", s.Addr(), err)
	}
	s.log.Info("stopped")
	return nil
}

// Stop closes the listener and every connection at once, cancelling
// in-flight RPCs. Tests use it; services cancel Serve's context instead.
func (s *Server) Stop() {
	s.health.Shutdown()
	s.grpc.Stop()
	_ = s.lis.Close() // already closed if Serve ran
}

// PeerIdentity returns, inside a server handler or interceptor, the first URI
// SAN (e.g. spiffe://credmatrix.dev/broker) of the client certificate that
// mutual TLS verified. It reports false without mTLS or without a URI SAN.
func PeerIdentity(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return "", false
	}
	leaf := info.State.VerifiedChains[0][0]
	if len(leaf.URIs) == 0 {
		return "", false
	}
	return leaf.URIs[0].String(), true
}

// recoverUnary turns a handler panic into codes.Internal "internal error"
// (the panic value may hold anything, so it is logged, never returned) and
// keeps the process alive.
func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.logPanic(ctx, info.FullMethod, r)
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
	}()
	return handler(ctx, req)
}

func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.logPanic(ss.Context(), info.FullMethod, r)
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	return handler(srv, ss)
}

func (s *Server) logPanic(ctx context.Context, method string, r any) {
	logging.WithTrace(ctx, s.log).Error("panic in gRPC handler",
		"method", method,
		"panic", fmt.Sprint(r),
		"stack", string(debug.Stack()),
	)
}

// logUnary logs one line per RPC: method, code, duration, peer and trace —
// never request or response messages, which may hold tokens or plaintext.
func (s *Server) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	s.logRPC(ctx, info.FullMethod, start, err)
	return resp, err
}

func (s *Server) logStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	s.logRPC(ss.Context(), info.FullMethod, start, err)
	return err
}

func (s *Server) logRPC(ctx context.Context, method string, start time.Time, err error) {
	st := status.Convert(err)
	args := []any{
		"method", method,
		"code", st.Code().String(),
		"duration_ms", float64(time.Since(start).Microseconds()) / 1000,
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		args = append(args, "peer_addr", p.Addr.String())
	}
	if id, ok := PeerIdentity(ctx); ok {
		args = append(args, "peer_identity", id)
	}
	if err != nil {
		args = append(args, "error", st.Message())
	}
	logging.WithTrace(ctx, s.log).Log(levelFor(method, st.Code()), "rpc", args...)
}

// levelFor keeps probes quiet and flags what an operator must look at:
// server faults are errors, overload and timeouts warnings, client mistakes
// plain information.
func levelFor(method string, code codes.Code) hclog.Level {
	switch code {
	case codes.OK:
		if strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.") {
			return hclog.Debug
		}
		return hclog.Info
	case codes.DeadlineExceeded, codes.ResourceExhausted, codes.Unavailable:
		return hclog.Warn
	case codes.Unknown, codes.Internal, codes.DataLoss:
		return hclog.Error
	default:
		return hclog.Info
	}
}
