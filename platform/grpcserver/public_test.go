package grpcserver_test

import (
	"context"
	"crypto/tls"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/logging"
	"github.com/credmatrix/credmatrix/platform/pkitest"
)

const publicMethod = "/grpc.testing.TestService/UnaryCall"

func TestPublicConfigValidate(t *testing.T) {
	files := grpcserver.PublicTLSFiles{CertFile: "c.pem", KeyFile: "k.pem"}
	tests := []struct {
		name string
		cfg  grpcserver.PublicConfig
		want []string
	}{
		{name: "ok/off", cfg: grpcserver.PublicConfig{}},
		{name: "ok/tls", cfg: grpcserver.PublicConfig{ListenAddr: "0.0.0.0:8444", TLS: files}},
		{name: "ok/plaintext-loopback", cfg: grpcserver.PublicConfig{ListenAddr: "127.0.0.1:0", DevPlaintext: true}},
		{
			name: "refuse/tls-without-address",
			cfg:  grpcserver.PublicConfig{TLS: files},
			want: []string{"config: listen_addr: required when tls or dev_plaintext is set (empty turns the public listener off)"},
		},
		{
			name: "refuse/without-tls",
			cfg:  grpcserver.PublicConfig{ListenAddr: "0.0.0.0:8444"},
			want: []string{
				"config: tls.cert_file: required unless dev_plaintext is set",
				"config: tls.key_file: required unless dev_plaintext is set",
			},
		},
		{
			name: "refuse/plaintext-off-loopback",
			cfg:  grpcserver.PublicConfig{ListenAddr: "0.0.0.0:8444", DevPlaintext: true},
			want: []string{`config: dev_plaintext: refused: listen_addr host "0.0.0.0" is not loopback (use 127.0.0.1, ::1 or localhost)`},
		},
		{
			name: "refuse/plaintext-name-not-resolved",
			cfg:  grpcserver.PublicConfig{ListenAddr: "broker.example.com:8444", DevPlaintext: true},
			want: []string{`config: dev_plaintext: refused: listen_addr host "broker.example.com" is not loopback (use 127.0.0.1, ::1 or localhost)`},
		},
		{
			name: "refuse/plaintext-with-tls",
			cfg:  grpcserver.PublicConfig{ListenAddr: "127.0.0.1:0", DevPlaintext: true, TLS: files},
			want: []string{"config: dev_plaintext: conflicts with tls files; set one or the other"},
		},
		{
			name: "refuse/bad-address",
			cfg:  grpcserver.PublicConfig{ListenAddr: "0.0.0.0", TLS: files},
			want: []string{"config: listen_addr: must be host:port"},
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

// publicStack is a server with an mTLS service port and a public listener
// on which only UnaryCall is public.
type publicStack struct {
	r             *running
	ca            *pkitest.CA
	client        pkitest.Leaf // a valid client certificate of the server's CA
	handled       *atomic.Int32
	publicHandled *atomic.Int32 // handler runs whose connection had no client certificate
}

func startPublic(t *testing.T) publicStack {
	t.Helper()
	ca := pkitest.New(t)
	server := ca.Issue(t, "server", "spiffe://credmatrix.dev/broker")
	ps := publicStack{ca: ca, client: ca.Issue(t, "cli", "spiffe://credmatrix.dev/cli"), handled: new(atomic.Int32), publicHandled: new(atomic.Int32)}
	svc := &testService{
		unary: func(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
			ps.handled.Add(1)
			id, ok := grpcserver.PeerIdentity(ctx)
			if !ok {
				ps.publicHandled.Add(1)
			}
			md, _ := metadata.FromIncomingContext(ctx)
			return &testgrpc.SimpleResponse{Username: id, OauthScope: strings.Join(md.Get("authorization"), ",")}, nil
		},
		stream: func(*testgrpc.StreamingOutputCallRequest, grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
			ps.handled.Add(1)
			return nil
		},
	}
	ps.r = startServer(t, grpcserver.Config{
		ListenAddr: "127.0.0.1:0",
		TLS:        grpcserver.TLSFiles{CertFile: server.CertFile, KeyFile: server.KeyFile, ClientCAFile: ca.File},
	}, svc, grpcserver.WithPublic(grpcserver.PublicConfig{
		ListenAddr: "127.0.0.1:0",
		TLS:        grpcserver.PublicTLSFiles{CertFile: server.CertFile, KeyFile: server.KeyFile},
	}, publicMethod))
	return ps
}

// TestPublicListener checks the public listener end to end: a caller with
// only the CA bundle reaches the public method (its token travels in the
// request, the handler sees no peer identity) and the health check; every
// other method, health Watch and reflection are refused before a handler
// runs; plaintext is refused; the service port still demands mTLS.
func TestPublicListener(t *testing.T) {
	ps := startPublic(t)
	publicAddr := ps.r.srv.PublicAddr().String()
	caOnly := dial(t, grpcclient.Config{Target: publicAddr, CAFile: ps.ca.File})

	t.Run("public-method/ca-bundle-only", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(callCtx(t), "authorization", "Bearer token-is-the-credential")
		resp, err := testgrpc.NewTestServiceClient(caOnly).UnaryCall(ctx, &testgrpc.SimpleRequest{})
		if err != nil {
			t.Fatalf("UnaryCall over the public listener: %v", err)
		}
		got := []string{resp.GetUsername(), resp.GetOauthScope()}
		if diff := cmp.Diff(got, []string{"", "Bearer token-is-the-credential"}); diff != "" {
			t.Errorf("handler saw (identity, authorization) (-got +want):\n%s", diff)
		}
	})
	t.Run("public-method/client-certificate-is-never-an-identity", func(t *testing.T) {
		conn := dial(t, grpcclient.Config{Target: publicAddr, CAFile: ps.ca.File, CertFile: ps.client.CertFile, KeyFile: ps.client.KeyFile})
		resp, err := testgrpc.NewTestServiceClient(conn).UnaryCall(callCtx(t), &testgrpc.SimpleRequest{})
		if err != nil {
			t.Fatalf("UnaryCall: %v", err)
		}
		if resp.GetUsername() != "" {
			t.Errorf("public listener gave the caller the identity %q", resp.GetUsername())
		}
	})
	t.Run("health-check", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(caOnly).Check(callCtx(t), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health Check = %v, %v; want SERVING", resp, err)
		}
	})

	refusals := []struct {
		name string
		call func(ctx context.Context) error
		want codes.Code
	}{
		{name: "refuse/non-public-method", want: codes.PermissionDenied, call: func(ctx context.Context) error {
			stream, err := testgrpc.NewTestServiceClient(caOnly).StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}},
		{name: "refuse/non-public-method-with-client-certificate", want: codes.PermissionDenied, call: func(ctx context.Context) error {
			conn := dial(t, grpcclient.Config{Target: publicAddr, CAFile: ps.ca.File, CertFile: ps.client.CertFile, KeyFile: ps.client.KeyFile})
			_, err := testgrpc.NewTestServiceClient(conn).EmptyCall(ctx, &testgrpc.Empty{})
			return err
		}},
		{name: "refuse/health-watch", want: codes.PermissionDenied, call: func(ctx context.Context) error {
			w, err := healthpb.NewHealthClient(caOnly).Watch(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return err
			}
			_, err = w.Recv()
			return err
		}},
		{name: "refuse/reflection", want: codes.Unimplemented, call: func(ctx context.Context) error {
			s, err := reflectionpb.NewServerReflectionClient(caOnly).ServerReflectionInfo(ctx)
			if err != nil {
				return err
			}
			// Send may fail with io.EOF when the server has already ended
			// the stream; Recv then reports the status.
			_ = s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
			_, err = s.Recv()
			return err
		}},
		{name: "refuse/plaintext-client", want: codes.Unavailable, call: func(ctx context.Context) error {
			conn := dial(t, grpcclient.Config{Target: publicAddr, DevPlaintext: true})
			_, err := testgrpc.NewTestServiceClient(conn).UnaryCall(ctx, &testgrpc.SimpleRequest{})
			return err
		}},
		{name: "refuse/service-port-without-client-certificate", want: codes.Unavailable, call: func(ctx context.Context) error {
			conn := dial(t, grpcclient.Config{Target: ps.r.srv.Addr().String(), CAFile: ps.ca.File})
			_, err := testgrpc.NewTestServiceClient(conn).UnaryCall(ctx, &testgrpc.SimpleRequest{})
			return err
		}},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			before := ps.handled.Load()
			if err := tc.call(callCtx(t)); status.Code(err) != tc.want {
				t.Errorf("error = %v, want code %v", err, tc.want)
			}
			if n := ps.handled.Load() - before; n != 0 {
				t.Errorf("a handler ran %d times for a refused call", n)
			}
		})
	}

	t.Run("log-names-the-listener", func(t *testing.T) {
		var public, service int
		for _, l := range ps.r.logs.lines(t) {
			if l["@message"] != "rpc" || l["method"] != publicMethod {
				continue
			}
			switch l["listener"] {
			case "public":
				public++
			case "service":
				service++
			}
		}
		if public == 0 {
			t.Errorf("no request log line with listener=public; logs:\n%s", ps.r.logs.String())
		}
	})
}

// TestPublicListenerTLS checks the public listener speaks TLS 1.3 only and
// never asks for a client certificate.
func TestPublicListenerTLS(t *testing.T) {
	ps := startPublic(t)
	tests := []struct {
		name       string
		maxVersion uint16
		wantErr    bool
	}{
		{name: "tls1.2-refused", maxVersion: tls.VersionTLS12, wantErr: true},
		{name: "tls1.3-accepted", maxVersion: tls.VersionTLS13},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			asked := false
			cfg, err := grpcclient.TLSConfig(grpcclient.Config{CAFile: ps.ca.File})
			if err != nil {
				t.Fatal(err)
			}
			cfg.ServerName, cfg.NextProtos = "localhost", []string{"h2"}
			cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tc.maxVersion
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				asked = true
				return &tls.Certificate{}, nil
			}
			conn, err := tls.Dial("tcp", ps.r.srv.PublicAddr().String(), cfg)
			if err == nil {
				_ = conn.Close()
			}
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Errorf("handshake error = %v, want error: %v", err, tc.wantErr)
			}
			if asked {
				t.Error("the public listener asked for a client certificate")
			}
		})
	}
}

func TestPublicListenerRefusedAtStart(t *testing.T) {
	ca := pkitest.New(t)
	server := ca.Issue(t, "server", "spiffe://credmatrix.dev/broker")
	base := grpcserver.Config{ListenAddr: "127.0.0.1:0", TLS: grpcserver.TLSFiles{CertFile: server.CertFile, KeyFile: server.KeyFile, ClientCAFile: ca.File}}
	public := grpcserver.PublicConfig{ListenAddr: "127.0.0.1:0", TLS: grpcserver.PublicTLSFiles{CertFile: server.CertFile, KeyFile: server.KeyFile}}
	tests := []struct {
		name   string
		public grpcserver.PublicConfig
		method []string
		want   string
	}{
		{name: "no-public-methods", public: public, want: "grpcserver: a public listener is configured but the service declares no public methods"},
		{name: "bad-method-name", public: public, method: []string{"UnaryCall"}, want: `grpcserver: public method "UnaryCall": want a full method name /package.Service/Method`},
		{
			name: "plaintext-off-loopback", method: []string{publicMethod},
			public: grpcserver.PublicConfig{ListenAddr: "0.0.0.0:0", DevPlaintext: true},
			want:   `config: public.dev_plaintext: refused: listen_addr host "0.0.0.0" is not loopback (use 127.0.0.1, ::1 or localhost)`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := grpcserver.New(base, nil, grpcserver.WithPublic(tc.public, tc.method...))
			if err == nil {
				srv.Stop()
				t.Fatal("New succeeded, want error")
			}
			if diff := cmp.Diff(err.Error(), tc.want); diff != "" {
				t.Errorf("error mismatch (-got +want):\n%s", diff)
			}
		})
	}

	t.Run("unregistered-public-method-fails-serve", func(t *testing.T) {
		srv, err := grpcserver.New(base, logging.New(&syncBuffer{}, "test", "info"), grpcserver.WithPublic(public, "/grpc.testing.TestService/UnaryCal"))
		if err != nil {
			t.Fatal(err)
		}
		testgrpc.RegisterTestServiceServer(srv, &testService{})
		err = srv.Serve(context.Background())
		if diff := cmp.Diff(errString(err), "grpcserver: public method /grpc.testing.TestService/UnaryCal is not registered"); diff != "" {
			t.Errorf("Serve error mismatch (-got +want):\n%s", diff)
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
