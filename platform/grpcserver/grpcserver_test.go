package grpcserver_test

import (
	"context"
	"crypto/tls"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/devpki"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
)

func TestConfigValidate(t *testing.T) {
	files := grpcserver.TLSFiles{CertFile: "c.pem", KeyFile: "k.pem", ClientCAFile: "ca.pem"}
	tests := []struct {
		name string
		cfg  grpcserver.Config
		want []string
	}{
		{name: "ok/mtls", cfg: grpcserver.Config{ListenAddr: ":8443", TLS: files}},
		{
			name: "refuse/tls-without-client-ca",
			cfg:  grpcserver.Config{ListenAddr: "0.0.0.0:8443", TLS: grpcserver.TLSFiles{CertFile: "c.pem", KeyFile: "k.pem"}},
			want: []string{"config: tls.client_ca_file: required unless dev_plaintext is set: the service port is mutual TLS (callers without a certificate use the public listener)"},
		},
		{name: "ok/plaintext-ipv4-loopback", cfg: grpcserver.Config{ListenAddr: "127.0.0.1:0", DevPlaintext: true}},
		{name: "ok/plaintext-ipv6-loopback", cfg: grpcserver.Config{ListenAddr: "[::1]:0", DevPlaintext: true}},
		{name: "ok/plaintext-localhost", cfg: grpcserver.Config{ListenAddr: "localhost:8443", DevPlaintext: true}},
		{
			name: "refuse/tls-without-files",
			cfg:  grpcserver.Config{ListenAddr: "127.0.0.1:0"},
			want: []string{
				"config: tls.cert_file: required unless dev_plaintext is set",
				"config: tls.key_file: required unless dev_plaintext is set",
				"config: tls.client_ca_file: required unless dev_plaintext is set: the service port is mutual TLS (callers without a certificate use the public listener)",
			},
		},
		{
			name: "refuse/tls-without-key",
			cfg:  grpcserver.Config{ListenAddr: "127.0.0.1:0", TLS: grpcserver.TLSFiles{CertFile: "c.pem", ClientCAFile: "ca.pem"}},
			want: []string{"config: tls.key_file: required unless dev_plaintext is set"},
		},
		{
			name: "refuse/plaintext-all-interfaces",
			cfg:  grpcserver.Config{ListenAddr: "0.0.0.0:8443", DevPlaintext: true},
			want: []string{`config: dev_plaintext: refused: listen_addr host "0.0.0.0" is not loopback (use 127.0.0.1, ::1 or localhost)`},
		},
		{
			name: "refuse/plaintext-empty-host",
			cfg:  grpcserver.Config{ListenAddr: ":8443", DevPlaintext: true},
			want: []string{`config: dev_plaintext: refused: listen_addr host "" is not loopback (use 127.0.0.1, ::1 or localhost)`},
		},
		{
			name: "refuse/plaintext-hostname-not-resolved",
			cfg:  grpcserver.Config{ListenAddr: "broker.internal:8443", DevPlaintext: true},
			want: []string{`config: dev_plaintext: refused: listen_addr host "broker.internal" is not loopback (use 127.0.0.1, ::1 or localhost)`},
		},
		{
			name: "refuse/plaintext-with-tls-files",
			cfg:  grpcserver.Config{ListenAddr: "127.0.0.1:0", DevPlaintext: true, TLS: files},
			want: []string{"config: dev_plaintext: conflicts with tls files; set one or the other"},
		},
		{
			name: "refuse/listen-missing",
			cfg:  grpcserver.Config{TLS: files},
			want: []string{"config: listen_addr: required (host:port, e.g. 127.0.0.1:8443)"},
		},
		{
			name: "refuse/listen-no-port",
			cfg:  grpcserver.Config{ListenAddr: "127.0.0.1", TLS: files},
			want: []string{"config: listen_addr: must be host:port"},
		},
		{
			name: "refuse/listen-bad-port",
			cfg:  grpcserver.Config{ListenAddr: "127.0.0.1:https", TLS: files},
			want: []string{`config: listen_addr: port "https" must be a number from 0 to 65535`},
		},
		{
			name: "refuse/negative-limits",
			cfg:  grpcserver.Config{ListenAddr: "127.0.0.1:0", TLS: files, DrainTimeout: -time.Second, MaxRecvMsgBytes: -1},
			want: []string{
				"config: drain_timeout: must not be negative",
				"config: max_recv_msg_bytes: must not be negative",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, fe := range config.FieldErrors(tc.cfg.Validate()) {
				got = append(got, fe.Error())
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("Validate mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

// TestConfigLoadNested checks that a service config embedding
// grpcserver.Config gets its errors with full path and source.
func TestConfigLoadNested(t *testing.T) {
	type serviceConfig struct {
		Server grpcserver.Config `cfg:"server"`
	}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{
			name: "plaintext-on-all-interfaces-from-env",
			env:  map[string]string{"CREDMATRIX_AUDIT_SERVER_LISTEN_ADDR": "0.0.0.0:8443", "CREDMATRIX_AUDIT_SERVER_DEV_PLAINTEXT": "true"},
			want: []string{`config: server.dev_plaintext (from env CREDMATRIX_AUDIT_SERVER_DEV_PLAINTEXT): refused: listen_addr host "0.0.0.0" is not loopback (use 127.0.0.1, ::1 or localhost)`},
		},
		{
			name: "tls-files-missing",
			args: []string{"--server.listen-addr=127.0.0.1:8443"},
			want: []string{
				"config: server.tls.cert_file (from default): required unless dev_plaintext is set",
				"config: server.tls.key_file (from default): required unless dev_plaintext is set",
				"config: server.tls.client_ca_file (from default): required unless dev_plaintext is set: the service port is mutual TLS (callers without a certificate use the public listener)",
			},
		},
		{
			name: "ok/plaintext-loopback-from-flags",
			args: []string{"--server.listen-addr=127.0.0.1:8443", "--server.dev-plaintext"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := serviceConfig{Server: grpcserver.DefaultConfig()}
			err := config.Load(&cfg, config.Options{
				EnvPrefix: "CREDMATRIX_AUDIT",
				Args:      tc.args,
				Getenv:    func(k string) string { return tc.env[k] },
			})
			var got []string
			for _, fe := range config.FieldErrors(err) {
				got = append(got, fe.Error())
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("Load errors mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  grpcserver.Config
		want string
	}{
		{
			name: "plaintext-non-loopback",
			cfg:  grpcserver.Config{ListenAddr: "0.0.0.0:0", DevPlaintext: true},
			want: `config: dev_plaintext: refused: listen_addr host "0.0.0.0" is not loopback (use 127.0.0.1, ::1 or localhost)`,
		},
		{
			name: "tls-without-files",
			cfg:  grpcserver.Config{ListenAddr: "127.0.0.1:0"},
			want: "config: tls.cert_file: required unless dev_plaintext is set\nconfig: tls.key_file: required unless dev_plaintext is set\nconfig: tls.client_ca_file: required unless dev_plaintext is set: the service port is mutual TLS (callers without a certificate use the public listener)",
		},
		{
			name: "tls-files-unreadable",
			cfg:  grpcserver.Config{ListenAddr: "127.0.0.1:0", TLS: grpcserver.TLSFiles{CertFile: filepath.Join(dir, "c.pem"), KeyFile: filepath.Join(dir, "k.pem"), ClientCAFile: filepath.Join(dir, "ca.pem")}},
			want: "grpcserver: load TLS key pair (" + filepath.Join(dir, "c.pem") + ", " + filepath.Join(dir, "k.pem") + "): open " + filepath.Join(dir, "c.pem") + ": no such file or directory",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := grpcserver.New(tc.cfg, nil)
			if err == nil {
				srv.Stop()
				t.Fatal("New succeeded, want error")
			}
			if diff := cmp.Diff(err.Error(), tc.want); diff != "" {
				t.Errorf("error mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

// TestRoundTrip serves over each transport mode and checks health, a real
// RPC, the caller's identity as the handler and a caller interceptor see it,
// and the request log line.
func TestRoundTrip(t *testing.T) {
	pki, err := devpki.Generate(filepath.Join(t.TempDir(), "pki"), "audit", "broker")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name         string
		server       grpcserver.Config
		client       func(addr string) grpcclient.Config
		wantIdentity string
	}{
		{
			name:         "mtls",
			server:       grpcserver.Config{ListenAddr: "127.0.0.1:0", TLS: pki.Files("audit")},
			client:       func(addr string) grpcclient.Config { return pki.Client("broker", addr) },
			wantIdentity: "spiffe://credmatrix.dev/broker",
		},
		{
			name:   "dev-plaintext-loopback",
			server: grpcserver.Config{ListenAddr: "127.0.0.1:0", DevPlaintext: true},
			client: func(addr string) grpcclient.Config {
				return grpcclient.Config{Target: addr, DevPlaintext: true}
			},
		},
		{
			name:   "mtls-via-localhost-name",
			server: grpcserver.Config{ListenAddr: "localhost:0", TLS: pki.Files("audit")},
			client: func(addr string) grpcclient.Config {
				c := pki.Client("broker", addr)
				c.ServerName = "audit"
				return c
			},
			wantIdentity: "spiffe://credmatrix.dev/broker",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var seen []string
			record := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				id, _ := grpcserver.PeerIdentity(ctx)
				mu.Lock()
				seen = append(seen, info.FullMethod+" "+id)
				mu.Unlock()
				return handler(ctx, req)
			}
			r := startServer(t, tc.server, identityService(), grpcserver.WithUnaryInterceptors(record))
			conn := dial(t, tc.client(r.srv.Addr().String()))
			ctx := callCtx(t)

			for _, svc := range []string{"", "grpc.testing.TestService"} {
				resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
				if err != nil {
					t.Fatalf("health Check(%q): %v", svc, err)
				}
				if got := resp.GetStatus(); got != healthpb.HealthCheckResponse_SERVING {
					t.Errorf("health Check(%q) = %v, want SERVING", svc, got)
				}
			}

			resp, err := testgrpc.NewTestServiceClient(conn).UnaryCall(ctx, &testgrpc.SimpleRequest{
				Payload: &testgrpc.Payload{Body: []byte("request-body-must-not-be-logged")},
			})
			if err != nil {
				t.Fatalf("UnaryCall: %v", err)
			}
			if diff := cmp.Diff(resp.GetUsername(), tc.wantIdentity); diff != "" {
				t.Errorf("identity seen by handler (-got +want):\n%s", diff)
			}
			mu.Lock()
			gotSeen := append([]string(nil), seen...)
			mu.Unlock()
			wantSeen := []string{
				"/grpc.health.v1.Health/Check " + tc.wantIdentity,
				"/grpc.health.v1.Health/Check " + tc.wantIdentity,
				"/grpc.testing.TestService/UnaryCall " + tc.wantIdentity,
			}
			if diff := cmp.Diff(gotSeen, wantSeen); diff != "" {
				t.Errorf("caller interceptor saw (-got +want):\n%s", diff)
			}

			line := r.logs.find(t, "rpc", "/grpc.testing.TestService/UnaryCall")
			if line == nil {
				t.Fatalf("no request log line; logs:\n%s", r.logs.String())
			}
			if line["code"] != "OK" || line["@level"] != "info" || line["peer_addr"] == nil || line["duration_ms"] == nil {
				t.Errorf("request log line = %v, want code OK, level info, peer_addr and duration_ms", line)
			}
			if id, _ := line["peer_identity"].(string); id != tc.wantIdentity {
				t.Errorf("logged peer_identity = %q, want %q", id, tc.wantIdentity)
			}
			if strings.Contains(r.logs.String(), "request-body-must-not-be-logged") {
				t.Error("request body appears in the logs")
			}
		})
	}
}

// TestRejectedClients checks that TLS and mTLS are enforced.
func TestRejectedClients(t *testing.T) {
	dir := t.TempDir()
	pki, err := devpki.Generate(filepath.Join(dir, "pki"), "audit", "broker")
	if err != nil {
		t.Fatal(err)
	}
	other, err := devpki.Generate(filepath.Join(dir, "other"), "broker")
	if err != nil {
		t.Fatal(err)
	}
	r := startServer(t, grpcserver.Config{ListenAddr: "127.0.0.1:0", TLS: pki.Files("audit")}, identityService())
	addr := r.srv.Addr().String()
	tests := []struct {
		name   string
		client grpcclient.Config
	}{
		{name: "mtls/client-without-certificate", client: grpcclient.Config{Target: addr, CAFile: pki.CAFile}},
		{name: "mtls/client-certificate-from-other-ca", client: grpcclient.Config{
			Target: addr, CAFile: pki.CAFile, CertFile: other.Files("broker").CertFile, KeyFile: other.Files("broker").KeyFile,
		}},
		{name: "tls/client-does-not-trust-server", client: other.Client("broker", addr)},
		{name: "tls/plaintext-client", client: grpcclient.Config{Target: addr, DevPlaintext: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := dial(t, tc.client)
			_, err := healthpb.NewHealthClient(conn).Check(callCtx(t), &healthpb.HealthCheckRequest{})
			if got := status.Code(err); got != codes.Unavailable {
				t.Errorf("health Check error = %v (code %v), want Unavailable", err, got)
			}
		})
	}
}

func TestPanicRecovery(t *testing.T) {
	const secret = "panic-value-with-secret-token-xyz"
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	svc := &testService{
		unary: func(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
			panic(secret)
		},
		stream: func(*testgrpc.StreamingOutputCallRequest, grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
			panic(errors.New(secret))
		},
	}
	r := startServer(t, grpcserver.Config{ListenAddr: "127.0.0.1:0", DevPlaintext: true}, svc, grpcserver.WithTracerProvider(tp))
	client := testgrpc.NewTestServiceClient(dial(t, grpcclient.Config{Target: r.srv.Addr().String(), DevPlaintext: true}))

	tests := []struct {
		name   string
		method string
		call   func(ctx context.Context) error
	}{
		{
			name:   "unary",
			method: "/grpc.testing.TestService/UnaryCall",
			call: func(ctx context.Context) error {
				_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
				return err
			},
		},
		{
			name:   "stream",
			method: "/grpc.testing.TestService/StreamingOutputCall",
			call: func(ctx context.Context) error {
				stream, err := client.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{})
				if err != nil {
					return err
				}
				_, err = stream.Recv()
				return err
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(callCtx(t))
			st := status.Convert(err)
			if diff := cmp.Diff([]any{st.Code(), st.Message()}, []any{codes.Internal, "internal error"}); diff != "" {
				t.Errorf("status mismatch (-got +want):\n%s", diff)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("status %q reveals the panic value", err)
			}
			line := r.logs.find(t, "panic in gRPC handler", tc.method)
			if line == nil {
				t.Fatalf("panic not logged; logs:\n%s", r.logs.String())
			}
			if line["panic"] != secret || line["@level"] != "error" {
				t.Errorf("panic log line = %v, want panic %q at level error", line, secret)
			}
			if stack, _ := line["stack"].(string); !strings.Contains(stack, "grpcserver_test") {
				t.Errorf("panic log stack does not reach the handler:\n%s", stack)
			}
			if id, _ := line["trace_id"].(string); len(id) != 32 {
				t.Errorf("panic log trace_id = %q, want a 32-hex-digit trace id", id)
			}
		})
	}

	// The server survived both panics.
	if _, err := healthpb.NewHealthClient(dial(t, grpcclient.Config{Target: r.srv.Addr().String(), DevPlaintext: true})).Check(callCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health Check after panics: %v", err)
	}
}

// TestRequestLogTrace checks that request log lines carry the server span's
// trace id, and the grpc code and level of a failed call.
func TestRequestLogTrace(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	var mu sync.Mutex
	var traceIDs []string
	svc := &testService{unary: func(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
		sc := trace.SpanContextFromContext(ctx).TraceID().String()
		mu.Lock()
		traceIDs = append(traceIDs, sc)
		mu.Unlock()
		if req.GetFillUsername() {
			return nil, status.Error(codes.PermissionDenied, "not allowed")
		}
		return &testgrpc.SimpleResponse{}, nil
	}}
	r := startServer(t, grpcserver.Config{ListenAddr: "127.0.0.1:0", DevPlaintext: true}, svc, grpcserver.WithTracerProvider(tp))
	client := testgrpc.NewTestServiceClient(dial(t, grpcclient.Config{Target: r.srv.Addr().String(), DevPlaintext: true}))

	tests := []struct {
		name     string
		req      *testgrpc.SimpleRequest
		wantCode string
		wantErr  any
	}{
		{name: "ok", req: &testgrpc.SimpleRequest{}, wantCode: "OK", wantErr: nil},
		{name: "permission-denied", req: &testgrpc.SimpleRequest{FillUsername: true}, wantCode: "PermissionDenied", wantErr: "not allowed"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _ = client.UnaryCall(callCtx(t), tc.req)
			var lines []map[string]any
			for _, l := range r.logs.lines(t) {
				if l["@message"] == "rpc" && l["method"] == "/grpc.testing.TestService/UnaryCall" {
					lines = append(lines, l)
				}
			}
			if len(lines) != i+1 {
				t.Fatalf("got %d request log lines, want %d", len(lines), i+1)
			}
			line := lines[i]
			mu.Lock()
			wantTrace := traceIDs[i]
			mu.Unlock()
			got := []any{line["code"], line["error"], line["trace_id"], len(line["span_id"].(string))}
			want := []any{tc.wantCode, tc.wantErr, wantTrace, 16}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("log line (code, error, trace_id, len(span_id)) mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestGracefulShutdown(t *testing.T) {
	tests := []struct {
		name         string
		drain        time.Duration
		handlerWaits bool // true: handler runs until its context ends
		wantCode     codes.Code
		wantLog      string
	}{
		{name: "in-flight-shorter-than-drain-completes", drain: 20 * time.Second, wantCode: codes.OK, wantLog: "stopped"},
		{name: "in-flight-longer-than-drain-is-cut", drain: 100 * time.Millisecond, handlerWaits: true, wantCode: codes.Unavailable, wantLog: "drain timeout reached, closing remaining connections"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			started := make(chan struct{})
			release := make(chan struct{})
			svc := &testService{unary: func(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
				close(started)
				if tc.handlerWaits {
					<-ctx.Done()
					return nil, ctx.Err()
				}
				<-release
				return &testgrpc.SimpleResponse{Username: "done"}, nil
			}}
			r := startServer(t, grpcserver.Config{ListenAddr: "127.0.0.1:0", DevPlaintext: true, DrainTimeout: tc.drain}, svc)
			client := testgrpc.NewTestServiceClient(dial(t, grpcclient.Config{Target: r.srv.Addr().String(), DevPlaintext: true}))

			callErr := make(chan error, 1)
			ctx := callCtx(t)
			go func() {
				_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
				callErr <- err
			}()
			<-started
			r.cancel()
			poll(t, "health NOT_SERVING", func() bool {
				resp, err := r.srv.Health().Check(context.Background(), &healthpb.HealthCheckRequest{})
				return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING
			})
			if !tc.handlerWaits {
				select {
				case <-r.done:
					t.Fatalf("Serve returned %v before the in-flight RPC finished", r.err)
				default:
				}
				close(release)
			}
			if err := r.waitServe(t); err != nil {
				t.Errorf("Serve = %v, want nil", err)
			}
			if got := status.Code(<-callErr); got != tc.wantCode {
				t.Errorf("in-flight RPC code = %v, want %v", got, tc.wantCode)
			}
			if r.logs.find(t, tc.wantLog, "") == nil {
				t.Errorf("log lacks %q; logs:\n%s", tc.wantLog, r.logs.String())
			}
		})
	}
}

func TestServeStops(t *testing.T) {
	tests := []struct {
		name string
		stop func(r *running)
	}{
		{name: "cancel-idle", stop: func(r *running) { r.cancel() }},
		{name: "stop", stop: func(r *running) { r.srv.Stop() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := startServer(t, grpcserver.Config{ListenAddr: "127.0.0.1:0", DevPlaintext: true}, nil)
			conn := dial(t, grpcclient.Config{Target: r.srv.Addr().String(), DevPlaintext: true})
			if _, err := healthpb.NewHealthClient(conn).Check(callCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatalf("health Check: %v", err)
			}
			tc.stop(r)
			if err := r.waitServe(t); err != nil {
				t.Errorf("Serve = %v, want nil", err)
			}
		})
	}
}

// TestTLSVersion checks that the server speaks TLS 1.3 only.
func TestTLSVersion(t *testing.T) {
	pki, err := devpki.Generate(filepath.Join(t.TempDir(), "pki"), "audit", "broker")
	if err != nil {
		t.Fatal(err)
	}
	r := startServer(t, grpcserver.Config{ListenAddr: "127.0.0.1:0", TLS: pki.Files("audit")}, nil)
	clientTLS, err := grpcclient.TLSConfig(pki.Client("broker", ""))
	if err != nil {
		t.Fatal(err)
	}
	clientTLS.ServerName = "localhost"
	clientTLS.NextProtos = []string{"h2"}
	tests := []struct {
		name       string
		maxVersion uint16
		wantErr    bool
	}{
		{name: "tls1.2-refused", maxVersion: tls.VersionTLS12, wantErr: true},
		{name: "tls1.3-accepted", maxVersion: tls.VersionTLS13, wantErr: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := clientTLS.Clone()
			c.MinVersion = tls.VersionTLS12
			c.MaxVersion = tc.maxVersion
			conn, err := tls.Dial("tcp", r.srv.Addr().String(), c)
			if err == nil {
				_ = conn.Close()
			}
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Errorf("handshake error = %v, want error: %v", err, tc.wantErr)
			}
		})
	}
}
