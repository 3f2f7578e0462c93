package grpcserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/internal/loopback"
)

// HealthCheckMethod is served on the public listener besides the service's
// public methods, so load balancers and ingress controllers can check it.
const HealthCheckMethod = "/grpc.health.v1.Health/Check"

// DefaultPublicMaxHeaderBytes bounds the request headers (metadata) a public
// caller may send: room for a bearer token (16 KiB at most) and trace
// context, far below gRPC's default of 16 MiB.
const DefaultPublicMaxHeaderBytes = 64 << 10

// PublicTLSFiles names the PEM files of the public listener's certificate.
// There is no client CA: the public listener never asks for a client
// certificate.
type PublicTLSFiles struct {
	CertFile string `cfg:"cert_file" help:"PEM certificate chain presented to public callers (it names the public host, e.g. broker.example.com)"`
	KeyFile  string `cfg:"key_file" help:"PEM private key of cert_file"`
}

// PublicConfig configures a service's optional public listener: a second
// port where callers whose credential is a token (CI runners with an OIDC
// token, apps with a projected service-account token) connect over
// server-authenticated TLS without a client certificate. Only the methods
// the service declares public (see WithPublic) and the health check are
// served there; everything else is refused before any handler runs, so an
// RPC added later stays off the public path until someone declares it.
// Embed it in a service's configuration under "public".
type PublicConfig struct {
	ListenAddr   string         `cfg:"listen_addr" help:"host:port of the public listener (TLS without client certificates; token-authenticated RPCs only); empty: no public listener"`
	TLS          PublicTLSFiles `cfg:"tls"`
	DevPlaintext bool           `cfg:"dev_plaintext" help:"serve the public listener without TLS; refused unless listen_addr is loopback"`
}

// Enabled reports whether a public listener is configured.
func (c PublicConfig) Enabled() bool { return c.ListenAddr != "" }

// Validate checks c and returns every problem as a *config.FieldError whose
// Field is relative to c. A disabled listener with settings is an error:
// an operator who set a certificate but no address meant to serve.
func (c PublicConfig) Validate() error {
	var errs []error
	add := func(field, msg string) {
		errs = append(errs, &config.FieldError{Field: field, Msg: msg})
	}
	if !c.Enabled() {
		if c.TLS != (PublicTLSFiles{}) || c.DevPlaintext {
			add("listen_addr", "required when tls or dev_plaintext is set (empty turns the public listener off)")
		}
		return errors.Join(errs...)
	}
	host, port, err := net.SplitHostPort(c.ListenAddr)
	if err != nil {
		add("listen_addr", "must be host:port")
	} else if _, perr := strconv.ParseUint(port, 10, 16); perr != nil {
		add("listen_addr", fmt.Sprintf("port %q must be a number from 0 to 65535", port))
	}
	if c.DevPlaintext {
		if err == nil && !loopback.Host(host) {
			add("dev_plaintext", fmt.Sprintf("refused: listen_addr host %q is not loopback (use 127.0.0.1, ::1 or localhost)", host))
		}
		if c.TLS != (PublicTLSFiles{}) {
			add("dev_plaintext", "conflicts with tls files; set one or the other")
		}
		return errors.Join(errs...)
	}
	if c.TLS.CertFile == "" {
		add("tls.cert_file", "required unless dev_plaintext is set")
	}
	if c.TLS.KeyFile == "" {
		add("tls.key_file", "required unless dev_plaintext is set")
	}
	return errors.Join(errs...)
}

// PublicTLSConfig builds the public listener's TLS configuration: TLS 1.3
// only, and no client certificate requested (tls.NoClientCert), so a
// caller's certificate can never be mistaken for an identity there.
func PublicTLSConfig(files PublicTLSFiles) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("grpcserver: load public TLS key pair (%s, %s): %w", files.CertFile, files.KeyFile, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.NoClientCert,
	}, nil
}

// WithPublic serves the public listener cfg describes (nothing when it is
// not enabled), answering only methods — full gRPC method names such as
// "/credmatrix.broker.v1.BrokerService/IssueSession" — and the health
// check. The service authenticates those methods by the token in the
// request; the listener only guarantees that nothing else is reachable.
func WithPublic(cfg PublicConfig, methods ...string) Option {
	return func(o *options) {
		o.public = &publicOptions{cfg: cfg, methods: methods}
	}
}

type publicOptions struct {
	cfg     PublicConfig
	methods []string
}

// checkMethodName refuses anything but "/package.Service/Method".
func checkMethodName(m string) error {
	svc, method, ok := strings.Cut(strings.TrimPrefix(m, "/"), "/")
	if !strings.HasPrefix(m, "/") || !ok || svc == "" || method == "" || strings.Contains(method, "/") {
		return fmt.Errorf("grpcserver: public method %q: want a full method name /package.Service/Method", m)
	}
	return nil
}

// publicOnly returns the interceptors that refuse, on the public listener,
// every method not in allowed.
func publicOnly(allowed map[string]bool) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	refuse := func(method string) error {
		return status.Errorf(codes.PermissionDenied, "%s is not served on the public listener: it requires mutual TLS on the service port", method)
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !allowed[info.FullMethod] {
			return nil, refuse(info.FullMethod)
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !allowed[info.FullMethod] {
			return refuse(info.FullMethod)
		}
		return handler(srv, ss)
	}
	return unary, stream
}
