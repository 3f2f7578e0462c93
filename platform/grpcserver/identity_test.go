package grpcserver_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/pkitest"
)

func TestCheckSPIFFEID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		ok   bool
	}{
		{name: "ok/simple", id: "spiffe://credmatrix.dev/broker", ok: true},
		{name: "ok/kubernetes", id: "spiffe://prod.example.com/ns/credmatrix/sa/credmatrix-broker", ok: true},
		{name: "ok/path-chars", id: "spiffe://td_1.example-x/A.b-c_D/9", ok: true},
		{name: "bad/empty", id: ""},
		{name: "bad/https", id: "https://credmatrix.dev/broker"},
		{name: "bad/upper-scheme", id: "SPIFFE://credmatrix.dev/broker"},
		{name: "bad/no-trust-domain", id: "spiffe:///broker"},
		{name: "bad/upper-trust-domain", id: "spiffe://Credmatrix.dev/broker"},
		{name: "bad/port", id: "spiffe://credmatrix.dev:443/broker"},
		{name: "bad/user-info", id: "spiffe://u@credmatrix.dev/broker"},
		{name: "bad/no-path", id: "spiffe://credmatrix.dev"},
		{name: "bad/root-path", id: "spiffe://credmatrix.dev/"},
		{name: "bad/trailing-slash", id: "spiffe://credmatrix.dev/broker/"},
		{name: "bad/empty-segment", id: "spiffe://credmatrix.dev/a//b"},
		{name: "bad/dot", id: "spiffe://credmatrix.dev/a/./b"},
		{name: "bad/dot-dot", id: "spiffe://credmatrix.dev/a/../b"},
		{name: "bad/query", id: "spiffe://credmatrix.dev/broker?x=1"},
		{name: "bad/fragment", id: "spiffe://credmatrix.dev/broker#x"},
		{name: "bad/percent", id: "spiffe://credmatrix.dev/bro%6Bker"},
		{name: "bad/space", id: "spiffe://credmatrix.dev/bro ker"},
		{name: "bad/unicode", id: "spiffe://credmatrix.dev/brökér"},
		{name: "bad/too-long", id: "spiffe://credmatrix.dev/" + strings.Repeat("a", grpcserver.MaxSPIFFEIDBytes)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := grpcserver.CheckSPIFFEID(tc.id)
			if (err == nil) != tc.ok {
				t.Errorf("CheckSPIFFEID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
			}
		})
	}
}

// TestIdentityInterceptor presents client certificates from the server's
// own CA whose URI SANs are not exactly one SPIFFE ID: every RPC (unary,
// stream, health) is refused Unauthenticated before any handler or service
// interceptor runs, and PeerIdentity never reports one of several SANs.
func TestIdentityInterceptor(t *testing.T) {
	ca := pkitest.New(t)
	server := ca.Issue(t, "server", "spiffe://credmatrix.dev/audit")
	var handled, intercepted atomic.Int32
	svc := &testService{
		unary: func(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
			handled.Add(1)
			id, _ := grpcserver.PeerIdentity(ctx)
			return &testgrpc.SimpleResponse{Username: id}, nil
		},
		stream: func(*testgrpc.StreamingOutputCallRequest, grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
			handled.Add(1)
			return nil
		},
	}
	count := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		intercepted.Add(1)
		return h(ctx, req)
	}
	r := startServer(t, grpcserver.Config{
		ListenAddr: "127.0.0.1:0",
		TLS:        grpcserver.TLSFiles{CertFile: server.CertFile, KeyFile: server.KeyFile, ClientCAFile: ca.File},
	}, svc, grpcserver.WithUnaryInterceptors(count))
	addr := r.srv.Addr().String()
	client := func(l pkitest.Leaf) *grpc.ClientConn {
		return dial(t, grpcclient.Config{Target: addr, CAFile: ca.File, CertFile: l.CertFile, KeyFile: l.KeyFile})
	}

	const good = "spiffe://credmatrix.dev/cli"
	t.Run("accept/one-spiffe-id", func(t *testing.T) {
		resp, err := testgrpc.NewTestServiceClient(client(ca.Issue(t, "good", good))).UnaryCall(callCtx(t), &testgrpc.SimpleRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetUsername(); got != good {
			t.Errorf("identity = %q, want %q", got, good)
		}
	})

	for _, bad := range pkitest.BadIdentities(good) {
		t.Run("refuse/"+bad.Name, func(t *testing.T) {
			handled.Store(0)
			intercepted.Store(0)
			conn := client(ca.Issue(t, "bad", bad.URIs...))
			ctx := callCtx(t)
			_, uerr := testgrpc.NewTestServiceClient(conn).UnaryCall(ctx, &testgrpc.SimpleRequest{})
			var serr error
			if stream, err := testgrpc.NewTestServiceClient(conn).StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{}); err != nil {
				serr = err
			} else {
				_, serr = stream.Recv()
			}
			_, herr := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			for _, call := range []struct {
				name string
				err  error
			}{{"unary", uerr}, {"stream", serr}, {"health", herr}} {
				st := status.Convert(call.err)
				want := []any{codes.Unauthenticated, "client certificate must carry exactly one SPIFFE ID (one URI SAN spiffe://<trust-domain>/<path>)"}
				if diff := cmp.Diff([]any{st.Code(), st.Message()}, want); diff != "" {
					t.Errorf("%s: status mismatch (-got +want):\n%s", call.name, diff)
				}
			}
			if n := handled.Load() + intercepted.Load(); n != 0 {
				t.Errorf("handlers or service interceptors ran %d times for a refused peer", n)
			}
		})
	}
}

// TestPeerIdentity checks what PeerIdentity reads from a request context:
// only a verified chain's leaf with exactly one strict SPIFFE ID counts.
func TestPeerIdentity(t *testing.T) {
	const app, intruder = "spiffe://credmatrix.dev/app", "spiffe://credmatrix.dev/intruder"
	cert := func(uris ...string) *x509.Certificate {
		c := &x509.Certificate{}
		for _, u := range uris {
			parsed, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, parsed)
		}
		return c
	}
	withPeer := func(auth credentials.AuthInfo) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: auth})
	}
	verified := func(c *x509.Certificate) credentials.AuthInfo {
		return credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}}
	}
	tests := []struct {
		name   string
		ctx    context.Context
		want   string
		wantOK bool
	}{
		{"ok/spiffe", withPeer(verified(cert(app))), app, true},
		{"none/no-peer", context.Background(), "", false},
		{"none/no-tls", withPeer(nil), "", false},
		{"none/unverified", withPeer(credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert(app)}}}), "", false},
		{"none/no-uri", withPeer(verified(cert())), "", false},
		{"none/two-uris", withPeer(verified(cert(app, intruder))), "", false},
		{"none/not-spiffe", withPeer(verified(cert("https://credmatrix.dev/app"))), "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := grpcserver.PeerIdentity(tc.ctx)
			if got != tc.want || ok != tc.wantOK {
				t.Fatalf("PeerIdentity = %q, %v; want %q, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}
