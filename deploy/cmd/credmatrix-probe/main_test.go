package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/deploy/internal/testpki"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// startServer serves gRPC health over mTLS as the services do (TLS 1.3,
// client certificate required) and returns its address.
func startServer(t testing.TB, ca *testpki.CA, certFile, keyFile string) (string, *health.Server) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert())
	creds := credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(creds))
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("credmatrix.audit.v1.AuditService", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("draining", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String(), hs
}

func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func TestRun(t *testing.T) {
	ca := testpki.New(t, "cluster")
	other := testpki.New(t, "other")
	const host = "audit.credmatrix.svc"
	srvCert, srvKey := ca.Issue("audit", "spiffe://cluster.local/ns/credmatrix/sa/audit", host)
	cliCert, cliKey := ca.Issue("broker", "spiffe://cluster.local/ns/credmatrix/sa/broker", "broker.credmatrix.svc")
	strangerCert, strangerKey := other.Issue("stranger", "spiffe://evil.example/stranger", "stranger.example")
	addr, _ := startServer(t, ca, srvCert, srvKey)
	down := freeAddr(t)

	flags := func(extra ...string) []string {
		base := []string{"--addr=" + addr, "--server-name=" + host, "--ca-file=" + ca.File, "--cert-file=" + cliCert, "--key-file=" + cliKey, "--timeout=3s"}
		return append(base, extra...)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{"ok/whole-server", flags(), 0, ""},
		{"ok/named-service", flags("--service=credmatrix.audit.v1.AuditService"), 0, ""},
		{"ok/help", []string{"--help"}, 0, "Usage: credmatrix-probe"},
		{"fail/not-serving", flags("--service=draining"), 1, "NOT_SERVING"},
		{"fail/unknown-service", flags("--service=nope"), 1, "NotFound"},
		{"fail/server-down", flags("--addr=" + down), 1, down},
		{"attack/wrong-server-name", flags("--server-name=evil.example"), 1, "certificate"},
		{"attack/server-from-untrusted-ca", flags("--ca-file=" + other.File), 1, "certificate"},
		{"attack/client-cert-from-other-ca", flags("--cert-file="+strangerCert, "--key-file="+strangerKey), 1, ""},
		{"fail/key-does-not-match-cert", flags("--key-file=" + strangerKey), 1, "load client key pair"},
		{"fail/ca-file-not-pem", flags("--ca-file=" + cliKey), 1, "no PEM certificate"},
		{"fail/ca-file-missing", flags("--ca-file=" + filepath.Join(t.TempDir(), "none")), 1, "read CA"},
		{"usage/no-flags", nil, 2, "--addr is required"},
		{"usage/missing-cert", []string{"--addr=" + addr, "--server-name=" + host, "--ca-file=" + ca.File}, 2, "--cert-file is required"},
		{"usage/zero-timeout", flags("--timeout=0s"), 2, "--timeout must be positive"},
		{"usage/extra-argument", flags("extra"), 2, `unexpected argument "extra"`},
		{"usage/unknown-flag", flags("--insecure"), 2, "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			got := run(context.Background(), tc.args, &stdout, &stderr)
			if diff := cmp.Diff(got, tc.wantCode); diff != "" {
				t.Errorf("exit code (-got +want):\n%s\nstderr: %s", diff, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tc.wantStderr)
			}
			if tc.wantCode == 0 && len(tc.args) > 1 && !strings.Contains(stdout.String(), "SERVING") {
				t.Errorf("stdout %q does not report SERVING", stdout.String())
			}
		})
	}
}

// BenchmarkCheck measures one probe run minus process start: TLS 1.3
// handshake with client certificate, then Health/Check, as every exec probe
// does. Reports checks/s and p50/p99 latency, so probe timeouts can be set
// with margin.
func BenchmarkCheck(b *testing.B) {
	ca := testpki.New(b, "cluster")
	const host = "audit.credmatrix.svc"
	srvCert, srvKey := ca.Issue("audit", "spiffe://cluster.local/ns/credmatrix/sa/audit", host)
	cliCert, cliKey := ca.Issue("broker", "spiffe://cluster.local/ns/credmatrix/sa/broker", "broker.credmatrix.svc")
	addr, _ := startServer(b, ca, srvCert, srvKey)
	o := options{addr: addr, serverName: host, caFile: ca.File, certFile: cliCert, keyFile: cliKey, timeout: 5 * time.Second}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		st, err := check(context.Background(), o)
		if err != nil || st != healthpb.HealthCheckResponse_SERVING {
			b.Fatalf("check: %v %v", st, err)
		}
		lat = append(lat, time.Since(t0))
	}
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "checks/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
