// Command credmatrix-probe is the health check of the credmatrix images: it
// calls grpc.health.v1.Health/Check over mutual TLS and exits 0 only when the
// answer is SERVING.
//
// It exists because every credmatrix service port requires a client
// certificate and the kubelet's native grpc probe cannot present one (nor
// verify the server). The Helm chart runs it as an exec probe with the pod's
// own certificate, so the check goes through the same TLS stack as real
// callers. It is static and needs no shell, so it works in a distroless
// image.
//
// Exit status: 0 SERVING, 1 anything else (not serving, unreachable, TLS
// failure, timeout), 2 bad usage.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// options are the probe's flags.
type options struct {
	addr, serverName, service string
	caFile, certFile, keyFile string
	timeout                   time.Duration
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("credmatrix-probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.addr, "addr", "", "host:port of the gRPC server (required)")
	fs.StringVar(&o.serverName, "server-name", "", "name to verify in the server certificate (required)")
	fs.StringVar(&o.service, "service", "", "health service name to check (empty: the whole server)")
	fs.StringVar(&o.caFile, "ca-file", "", "PEM CA bundle that signs the server certificate (required)")
	fs.StringVar(&o.certFile, "cert-file", "", "PEM client certificate (required: the servers require mTLS)")
	fs.StringVar(&o.keyFile, "key-file", "", "PEM private key of cert-file (required)")
	fs.DurationVar(&o.timeout, "timeout", 4*time.Second, "deadline of the whole check")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: credmatrix-probe --addr host:port --server-name name --ca-file ca.crt --cert-file tls.crt --key-file tls.key")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var missing []error
	for _, f := range []struct{ name, val string }{
		{"addr", o.addr}, {"server-name", o.serverName}, {"ca-file", o.caFile}, {"cert-file", o.certFile}, {"key-file", o.keyFile},
	} {
		if f.val == "" {
			missing = append(missing, fmt.Errorf("--%s is required", f.name))
		}
	}
	if o.timeout <= 0 {
		missing = append(missing, errors.New("--timeout must be positive"))
	}
	return o, errors.Join(missing...)
}

// tlsConfig is the client side of the services' mTLS: TLS 1.3, the server
// verified against caFile under serverName, our certificate presented.
func tlsConfig(o options) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
	if err != nil {
		return nil, fmt.Errorf("load client key pair: %w", err)
	}
	pem, err := os.ReadFile(o.caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate", o.caFile)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      pool,
		ServerName:   o.serverName,
		Certificates: []tls.Certificate{cert},
	}, nil
}

func check(ctx context.Context, o options) (healthpb.HealthCheckResponse_ServingStatus, error) {
	cfg, err := tlsConfig(o)
	if err != nil {
		return 0, err
	}
	conn, err := grpc.NewClient("passthrough:///"+o.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: o.service}, grpc.WaitForReady(false))
	if err != nil {
		return 0, err
	}
	return resp.GetStatus(), nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "credmatrix-probe:", err)
		return 2
	}
	st, err := check(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "credmatrix-probe: %s: %v\n", o.addr, err)
		return 1
	}
	if st != healthpb.HealthCheckResponse_SERVING {
		fmt.Fprintf(stderr, "credmatrix-probe: %s: %s\n", o.addr, st)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s\n", o.addr, st)
	return 0
}
