// Package grpcserver is the one gRPC server bootstrap that broker, keyguard
// and audit share, so that TLS/mTLS, caller identity, tracing, panic
// recovery, request logging, health, reflection and graceful shutdown are
// written (and reviewed) once. Services only register their handlers and
// add their own interceptors (authorisation) after the shared ones.
//
// A Server has one or two listeners:
//   - the service port, mutual TLS: every caller presents a certificate
//     from the configured CA carrying exactly one SPIFFE ID (checked by one
//     interceptor before any handler; PeerIdentity reads it). Service to
//     service and administrative RPCs live here.
//   - optionally, a public port (WithPublic): server-authenticated TLS
//     without client certificates, serving only the methods a service
//     declares public, whose credential is a token in the request.
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
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
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

// StreamWorkers is the number of goroutines per listener that run RPC
// handlers (see grpc.NumStreamWorkers): about the calls a service has in
// flight at once under load. Handlers mostly wait (for audit, a store),
// so this is well above the CPU count.
const StreamWorkers = 32

// TLSFiles names the PEM files of a server's TLS identity. ClientCAFile is
// required: the service port is mutual TLS, every client presents a
// certificate signed by that CA. Callers without a certificate use the
// public listener (PublicConfig).
type TLSFiles struct {
	CertFile     string `cfg:"cert_file" help:"PEM certificate chain the server presents"`
	KeyFile      string `cfg:"key_file" help:"PEM private key of cert_file"`
	ClientCAFile string `cfg:"client_ca_file" help:"PEM CA bundle that signs client certificates; every client must present one (mTLS)"`
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
		if c.TLS.ClientCAFile == "" {
			add("tls.client_ca_file", "required unless dev_plaintext is set: the service port is mutual TLS (callers without a certificate use the public listener)")
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

// TLSConfig builds the service port's TLS configuration: TLS 1.3 only, and
// mutual TLS (tls.RequireAndVerifyClientCert against ClientCAFile).
// Without ClientCAFile (refused by Validate) no client certificate is
// asked for.
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
	public     *publicOptions
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
// it (it is a grpc.ServiceRegistrar), then call Serve.
type Server struct {
	cfg    Config
	log    hclog.Logger
	health *health.Server
	main   listener
	public *listener // nil without a public listener
	// publicMethods are the methods the public listener answers.
	publicMethods map[string]bool
}

// listener is one port and the gRPC server behind it.
type listener struct {
	name string // "service" or "public", in logs
	lis  net.Listener
	grpc *grpc.Server
}

var _ grpc.ServiceRegistrar = (*Server)(nil)

// New validates cfg, loads the TLS files and starts listening, so that the
// address (and a port chosen for ":0") is known before Serve and a busy port
// fails start-up rather than the first request. log nil discards logs.
func New(cfg Config, log hclog.Logger, opts ...Option) (*Server, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	verr := cfg.Validate()
	if o.public != nil {
		verr = errors.Join(verr, prefixFields("public", o.public.cfg.Validate()))
	}
	if verr != nil {
		return nil, verr
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
	var publicCreds credentials.TransportCredentials
	public := o.public != nil && o.public.cfg.Enabled()
	s := &Server{cfg: cfg, log: log, health: health.NewServer()}
	if public {
		if len(o.public.methods) == 0 {
			return nil, errors.New("grpcserver: a public listener is configured but the service declares no public methods")
		}
		s.publicMethods = map[string]bool{HealthCheckMethod: true}
		for _, m := range o.public.methods {
			if err := checkMethodName(m); err != nil {
				return nil, err
			}
			s.publicMethods[m] = true
		}
		if o.public.cfg.DevPlaintext {
			publicCreds = insecure.NewCredentials()
		} else {
			tlsCfg, err := PublicTLSConfig(o.public.cfg.TLS)
			if err != nil {
				return nil, err
			}
			publicCreds = credentials.NewTLS(tlsCfg)
		}
	}

	// The identity check runs on the service port before any service
	// interceptor; the public port instead refuses every method the
	// service did not declare public.
	idUnary, idStream := s.identityInterceptors(!cfg.DevPlaintext)
	lis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("grpcserver: listen on %s: %w", cfg.ListenAddr, err)
	}
	s.main = listener{name: "service", lis: lis}
	s.main.grpc = s.newGRPC(&o, s.main.name, creds, idUnary, idStream)
	if public {
		plis, err := net.Listen("tcp", o.public.cfg.ListenAddr)
		if err != nil {
			_ = lis.Close()
			return nil, fmt.Errorf("grpcserver: public listener: listen on %s: %w", o.public.cfg.ListenAddr, err)
		}
		pu, ps := publicOnly(s.publicMethods)
		s.public = &listener{name: "public", lis: plis}
		s.public.grpc = s.newGRPC(&o, s.public.name, publicCreds, pu, ps, grpc.MaxHeaderListSize(DefaultPublicMaxHeaderBytes))
	}

	// Not ready until Serve runs.
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s.main.grpc, s.health)
	reflection.Register(s.main.grpc)
	if s.public != nil {
		healthpb.RegisterHealthServer(s.public.grpc, s.health)
	}
	return s, nil
}

// newGRPC builds the gRPC server of one listener: metrics, panic recovery
// and request logging first, then the answer to a request that did not
// decode (malformed.go), then the listener's access check (identity or
// public allow-list), then the service's interceptors.
func (s *Server) newGRPC(o *options, name string, creds credentials.TransportCredentials, access grpc.UnaryServerInterceptor, accessStream grpc.StreamServerInterceptor, extra ...grpc.ServerOption) *grpc.Server {
	logUnary, logStream := s.logInterceptors(name)
	codec := newDecodeCodec()
	unary := []grpc.UnaryServerInterceptor{s.recoverUnary, logUnary, codec.unary, access}
	stream := []grpc.StreamServerInterceptor{s.recoverStream, logStream, codec.stream, accessStream}
	if o.metrics != nil {
		unary = append([]grpc.UnaryServerInterceptor{o.metrics.Unary()}, unary...)
		stream = append([]grpc.StreamServerInterceptor{o.metrics.Stream()}, stream...)
	}
	serverOpts := []grpc.ServerOption{
		// Handlers run on long-lived workers whose stacks have already
		// grown to what a handler needs, instead of a fresh goroutine
		// per RPC that grows its stack (copying it) several times on
		// every call; when every worker is busy gRPC starts a goroutine
		// as before, so this never queues a call.
		grpc.NumStreamWorkers(StreamWorkers),
		grpc.Creds(creds),
		grpc.ForceServerCodecV2(codec),
		grpc.StatsHandler(otelgrpc.NewServerHandler(o.otelOpts...)),
		grpc.MaxRecvMsgSize(s.cfg.MaxRecvMsgBytes),
		grpc.ChainUnaryInterceptor(append(unary, o.unary...)...),
		grpc.ChainStreamInterceptor(append(stream, o.stream...)...),
	}
	serverOpts = append(serverOpts, extra...)
	return grpc.NewServer(append(serverOpts, o.serverOpts...)...)
}

// prefixFields puts prefix before the Field of every *config.FieldError in
// err, as config.Load does for nested structs.
func prefixFields(prefix string, err error) error {
	for _, fe := range config.FieldErrors(err) {
		fe.Field = prefix + "." + fe.Field
	}
	return err
}

// RegisterService registers a service implementation on every listener;
// the public listener still answers only its declared methods. It
// implements grpc.ServiceRegistrar, so generated RegisterXServer functions
// take the Server itself. Register before Serve.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.main.grpc.RegisterService(desc, impl)
	if s.public != nil {
		s.public.grpc.RegisterService(desc, impl)
	}
}

// Health returns the health service. Serve marks the server ("") and every
// registered service SERVING when it starts; a service may later report
// NOT_SERVING for itself (for example while its store is unreachable).
func (s *Server) Health() *health.Server { return s.health }

// Addr returns the address of the service (mTLS) port.
func (s *Server) Addr() net.Addr { return s.main.lis.Addr() }

// PublicAddr returns the address of the public listener, nil without one.
func (s *Server) PublicAddr() net.Addr {
	if s.public == nil {
		return nil
	}
	return s.public.lis.Addr()
}

// listeners returns the server's listeners, the service port first.
func (s *Server) listeners() []*listener {
	if s.public == nil {
		return []*listener{&s.main}
	}
	return []*listener{&s.main, s.public}
}

// Serve serves until ctx is cancelled, then shuts down gracefully: health
// turns NOT_SERVING, new RPCs are refused, and in-flight RPCs get up to
// DrainTimeout to finish before the remaining connections are closed (their
// handlers' contexts are cancelled). It returns nil after a clean shutdown
// or after Stop. Call it once.
//
// Every method the public listener allows must be registered by then: a
// misspelt public method fails Serve instead of silently staying refused.
func (s *Server) Serve(ctx context.Context) error {
	if s.public != nil {
		registered := map[string]bool{}
		for svc, info := range s.public.grpc.GetServiceInfo() {
			for _, m := range info.Methods {
				registered["/"+svc+"/"+m.Name] = true
			}
		}
		for m := range s.publicMethods {
			if !registered[m] {
				s.Stop()
				return fmt.Errorf("grpcserver: public method %s is not registered", m)
			}
		}
	}
	for name := range s.main.grpc.GetServiceInfo() {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)

	ls := s.listeners()
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() {
			err := l.grpc.Serve(l.lis)
			if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				err = fmt.Errorf("grpcserver: serve %s listener on %s: %w", l.name, l.lis.Addr(), err)
			} else {
				err = nil
			}
			errc <- err
		}()
	}
	s.log.Info("serving gRPC", "addr", s.Addr().String(), "tls", !s.cfg.DevPlaintext, "mtls", !s.cfg.DevPlaintext)
	if s.cfg.DevPlaintext {
		s.log.Warn("serving plaintext gRPC (dev_plaintext); for development on loopback only")
	}
	if s.public != nil {
		s.log.Info("serving public gRPC (no client certificates; token-authenticated methods only)", "addr", s.PublicAddr().String(), "methods", len(s.publicMethods))
	}

	var first error
	select {
	case first = <-errc:
		// One listener stopped by itself (Stop, or a failure): stop the rest.
		s.health.Shutdown()
		for _, l := range ls {
			l.grpc.Stop()
		}
		errs := []error{first}
		for range len(ls) - 1 {
			errs = append(errs, <-errc)
		}
		return errors.Join(errs...)
	case <-ctx.Done():
	}

	s.log.Info("shutting down, draining in-flight RPCs", "drain_timeout", s.cfg.DrainTimeout.String())
	s.health.Shutdown()
	drained := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, l := range ls {
			wg.Go(l.grpc.GracefulStop)
		}
		wg.Wait()
		close(drained)
	}()
	timer := time.NewTimer(s.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
		s.log.Warn("drain timeout reached, closing remaining connections", "drain_timeout", s.cfg.DrainTimeout.String())
		for _, l := range ls {
			l.grpc.Stop()
		}
		<-drained
	}
	var errs []error
	for range ls {
		errs = append(errs, <-errc)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.log.Info("stopped")
	return nil
}

// Stop closes the listeners and every connection at once, cancelling
// in-flight RPCs. Tests use it; services cancel Serve's context instead.
func (s *Server) Stop() {
	s.health.Shutdown()
	for _, l := range s.listeners() {
		l.grpc.Stop()
		_ = l.lis.Close() // already closed if Serve ran
	}
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

// logInterceptors log one line per RPC: listener, method, code, duration,
// peer and trace — never request or response messages, which may hold
// tokens or plaintext.
func (s *Server) logInterceptors(listener string) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		s.logRPC(ctx, listener, info.FullMethod, start, err)
		return resp, err
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		s.logRPC(ss.Context(), listener, info.FullMethod, start, err)
		return err
	}
	return unary, stream
}

func (s *Server) logRPC(ctx context.Context, listener, method string, start time.Time, err error) {
	st := status.Convert(err)
	args := []any{
		"method", method,
		"code", st.Code().String(),
		"duration_ms", float64(time.Since(start).Microseconds()) / 1000,
		"listener", listener,
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
