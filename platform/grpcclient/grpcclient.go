// Package grpcclient dials credmatrix services the one way they expect: TLS
// 1.3 (mutual when a client certificate is configured), OpenTelemetry trace
// propagation on every call, and plaintext only to loopback in development.
package grpcclient

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/internal/loopback"
	"github.com/credmatrix/credmatrix/platform/internal/pemfile"
)

// Config says how to reach one service. Embed it in a caller's configuration
// (e.g. under "audit") and config.Load validates it with full field paths.
type Config struct {
	Target       string `cfg:"target" help:"gRPC target, e.g. audit.credmatrix.svc:8443 or dns:///audit:8443"`
	CAFile       string `cfg:"ca_file" help:"PEM CA bundle that signs the server certificate (default: system roots)"`
	CertFile     string `cfg:"cert_file" help:"PEM client certificate for mutual TLS"`
	KeyFile      string `cfg:"key_file" help:"PEM private key of cert_file"`
	ServerName   string `cfg:"server_name" help:"name to verify in the server certificate (default: the target host)"`
	DevPlaintext bool   `cfg:"dev_plaintext" help:"connect without TLS; refused unless the target host is loopback"`
}

// Validate checks c and returns every problem as a *config.FieldError whose
// Field is relative to c, for config.Load to prefix and attribute.
func (c Config) Validate() error {
	var errs []error
	add := func(field, msg string) {
		errs = append(errs, &config.FieldError{Field: field, Msg: msg})
	}
	if c.Target == "" {
		add("target", "required")
	}
	if c.DevPlaintext {
		if host, ok := targetHost(c.Target); c.Target != "" && (!ok || !loopback.Host(host)) {
			add("dev_plaintext", fmt.Sprintf("refused: target %q is not a loopback host:port (use 127.0.0.1, ::1 or localhost)", c.Target))
		}
		if c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" || c.ServerName != "" {
			add("dev_plaintext", "conflicts with TLS settings; set one or the other")
		}
		return errors.Join(errs...)
	}
	if c.CertFile != "" && c.KeyFile == "" {
		add("key_file", "required when cert_file is set")
	}
	if c.KeyFile != "" && c.CertFile == "" {
		add("cert_file", "required when key_file is set")
	}
	return errors.Join(errs...)
}

// targetHost extracts the host from a gRPC target: "host:port",
// "dns:///host:port" or "passthrough:///host:port". ok is false when there is
// no host:port to judge (unix sockets, unknown schemes).
func targetHost(target string) (host string, ok bool) {
	hostPort := target
	if strings.Contains(target, "://") {
		u, err := url.Parse(target)
		if err != nil || (u.Scheme != "dns" && u.Scheme != "passthrough") {
			return "", false
		}
		hostPort = strings.TrimPrefix(u.Path, "/")
	}
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return "", false
	}
	return host, true
}

// TLSConfig builds the client TLS configuration: TLS 1.3 only, roots from
// CAFile (system roots when empty), and a client certificate when CertFile
// and KeyFile are set.
func TLSConfig(c Config) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: c.ServerName}
	if c.CAFile != "" {
		pool, err := pemfile.CertPool(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("grpcclient: server CA: %w", err)
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" || c.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("grpcclient: load client key pair (%s, %s): %w", c.CertFile, c.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Dial validates cfg and returns a client connection (grpc.NewClient: no I/O
// happens until the first call). opts are appended after the defaults, so a
// caller may add interceptors or per-call credentials.
func Dial(cfg Config, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return dial(cfg, nil, opts)
}

// DialWithTracing is Dial with the client spans made by tp and the trace
// context injected by prop, instead of the OpenTelemetry globals: the
// credmatrix CLI keeps its tracer provider out of the globals (see
// telemetry.NewProvider).
func DialWithTracing(cfg Config, tp trace.TracerProvider, prop propagation.TextMapPropagator, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return dial(cfg, []otelgrpc.Option{otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(prop)}, opts)
}

func dial(cfg Config, otelOpts []otelgrpc.Option, opts []grpc.DialOption) (*grpc.ClientConn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if !cfg.DevPlaintext {
		tlsCfg, err := TLSConfig(cfg)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(tlsCfg)
	}
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelOpts...)),
	}, opts...)
	conn, err := grpc.NewClient(cfg.Target, all...)
	if err != nil {
		return nil, fmt.Errorf("grpcclient: dial %s: %w", cfg.Target, err)
	}
	return conn, nil
}
