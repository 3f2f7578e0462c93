// Package grpcclient dials credmatrix services the one way they expect: TLS
// 1.3 (mutual when a client certificate is configured), OpenTelemetry trace
// propagation on every call, and plaintext only to loopback in development.
package grpcclient

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // client-side health checking (HealthService)
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/internal/loopback"
	"github.com/credmatrix/credmatrix/platform/internal/pemfile"
)

// Config says how to reach one service. Embed it in a caller's configuration
// (e.g. under "audit") and config.Load validates it with full field paths.
type Config struct {
	Target       string `cfg:"target" help:"gRPC target, e.g. audit.credmatrix.svc:8443, dns:///audit-headless:8443 (every address the name resolves to), or host:port,host:port (a fixed list); several addresses are used round robin"`
	CAFile       string `cfg:"ca_file" help:"PEM CA bundle that signs the server certificate (default: system roots)"`
	CertFile     string `cfg:"cert_file" help:"PEM client certificate for mutual TLS"`
	KeyFile      string `cfg:"key_file" help:"PEM private key of cert_file"`
	ServerName   string `cfg:"server_name" help:"name to verify in the server certificate (default: the target host)"`
	DevPlaintext bool   `cfg:"dev_plaintext" help:"connect without TLS; refused unless the target host is loopback"`
	// HealthService routes calls only to the target's addresses whose gRPC
	// health service reports this service name SERVING (client-side
	// health checking): with audit replicas, only the sequencer appends.
	HealthService string `cfg:"health_service" help:"send calls only to addresses whose gRPC health check reports this service SERVING (empty: to every address)"`
}

// listSeparator separates the addresses of a fixed-list target.
const listSeparator = ","

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
	if addrs, ok := listAddrs(c.Target); ok {
		for _, a := range addrs {
			if _, _, err := net.SplitHostPort(a); err != nil || strings.Contains(a, "://") {
				add("target", fmt.Sprintf("list entry %q: want host:port", a))
			}
		}
	}
	if c.DevPlaintext {
		for _, t := range targets(c.Target) {
			if host, ok := targetHost(t); t != "" && (!ok || !loopback.Host(host)) {
				add("dev_plaintext", fmt.Sprintf("refused: target %q is not a loopback host:port (use 127.0.0.1, ::1 or localhost)", t))
			}
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

// listAddrs splits a fixed-list target ("host:port,host:port").
func listAddrs(target string) ([]string, bool) {
	if !strings.Contains(target, listSeparator) {
		return nil, false
	}
	addrs := strings.Split(target, listSeparator)
	for i := range addrs {
		addrs[i] = strings.TrimSpace(addrs[i])
	}
	return addrs, true
}

// targets is the target's addresses: the list, or the target alone.
func targets(target string) []string {
	if addrs, ok := listAddrs(target); ok {
		return addrs
	}
	return []string{target}
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

// reconnectBackoff paces reconnection to a service that is down. gRPC's
// default lets the wait grow to 120 s, so a producer whose audit service
// was down for a few minutes went on failing closed for up to two more
// minutes after audit came back; capped at 2 s, a service that returns is
// used again within about 2 s, for the cost of one connection attempt per
// client every 2 s while it is down.
var reconnectBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second}

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
	all := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelOpts...)),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnectBackoff, MinConnectTimeout: 20 * time.Second}),
	}
	target := cfg.Target
	if addrs, ok := listAddrs(cfg.Target); ok {
		// A resolver of this connection's own (nothing registered
		// globally) hands gRPC the fixed list; the first address names
		// the target (the TLS server name unless ServerName is set).
		r := manual.NewBuilderWithScheme("credmatrix-list")
		state := resolver.State{}
		for _, a := range addrs {
			state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
		}
		r.InitialState(state)
		all = append(all, grpc.WithResolvers(r))
		target = "credmatrix-list:///" + addrs[0]
	}
	if sc := serviceConfig(cfg); sc != "" {
		all = append(all, grpc.WithDefaultServiceConfig(sc))
	}
	all = append(all, opts...)
	conn, err := grpc.NewClient(target, all...)
	if err != nil {
		return nil, fmt.Errorf("grpcclient: dial %s: %w", cfg.Target, err)
	}
	return conn, nil
}

// serviceConfig spreads calls round robin over several addresses (a list,
// or a name that resolves to several) and, with HealthService, over those
// that report it SERVING only.
func serviceConfig(cfg Config) string {
	if cfg.HealthService == "" && !strings.Contains(cfg.Target, listSeparator) && !strings.HasPrefix(cfg.Target, "dns:") {
		return ""
	}
	sc := map[string]any{"loadBalancingConfig": []any{map[string]any{"round_robin": map[string]any{}}}}
	if cfg.HealthService != "" {
		sc["healthCheckConfig"] = map[string]any{"serviceName": cfg.HealthService}
	}
	b, _ := json.Marshal(sc) // maps of strings: cannot fail
	return string(b)
}
