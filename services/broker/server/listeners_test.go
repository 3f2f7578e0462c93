package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/pkitest"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Identities of the listener tests.
const (
	brokerID = "spiffe://credmatrix.dev/broker"
	auditID  = "spiffe://credmatrix.dev/audit"
	adminID  = "spiffe://credmatrix.dev/cli"
)

// recordingAudit is the audit service as the broker sees it over gRPC: it
// records what the broker appends and which identity appended it.
type recordingAudit struct {
	auditv1.UnimplementedAuditServiceServer
	mu     sync.Mutex
	events []*auditv1.Event
}

func (a *recordingAudit) Append(ctx context.Context, req *auditv1.AppendRequest) (*auditv1.AppendResponse, error) {
	if id, _ := grpcserver.PeerIdentity(ctx); id != brokerID {
		return nil, status.Error(codes.PermissionDenied, "not the broker")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	resp := &auditv1.AppendResponse{}
	for _, ev := range req.GetEvents() {
		resp.Results = append(resp.Results, &auditv1.AppendResult{Id: ev.GetId(), Sequence: uint64(len(a.events))})
		a.events = append(a.events, ev)
	}
	return resp, nil
}

func (a *recordingAudit) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.events)
}

func (a *recordingAudit) last() *auditv1.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.events) == 0 {
		return nil
	}
	return a.events[len(a.events)-1]
}

// brokerFixture is a broker built by New, the production wiring, with an
// mTLS service port and a public listener, in front of a recording audit
// service.
type brokerFixture struct {
	env   *brokertest.Env // the dev issuer and its tokens
	srv   *Server
	ca    *pkitest.CA
	audit *recordingAudit
}

func serveUntilCleanup(t *testing.T, serve func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

func writeKey(t *testing.T, path string) string {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	if err := os.WriteFile(path, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func startBroker(t *testing.T) *brokerFixture {
	t.Helper()
	f, cfg := brokerConfig(t)
	var err error
	f.srv, err = New(context.Background(), cfg, hclog.New(&hclog.LoggerOptions{Output: io.Discard}))
	if err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, f.srv.Serve)
	return f
}

// brokerConfig starts the issuer and the audit service and returns the
// broker's configuration.
func brokerConfig(t *testing.T) (*brokerFixture, Config) {
	t.Helper()
	dir := t.TempDir()
	f := &brokerFixture{env: brokertest.NewEnv(t, ""), ca: pkitest.New(t), audit: &recordingAudit{}}
	auditLeaf := f.ca.Issue(t, "audit", auditID)
	gs, err := grpcserver.New(grpcserver.Config{
		ListenAddr: "127.0.0.1:0",
		TLS:        grpcserver.TLSFiles{CertFile: auditLeaf.CertFile, KeyFile: auditLeaf.KeyFile, ClientCAFile: f.ca.File},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	auditv1.RegisterAuditServiceServer(gs, f.audit)
	serveUntilCleanup(t, gs.Serve)

	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(strings.ReplaceAll(brokertest.DefaultPolicy, brokertest.IssuerPlaceholder, f.env.Issuer.URL())), 0o600); err != nil {
		t.Fatal(err)
	}
	leaf := f.ca.Issue(t, "broker", brokerID)
	cfg := DefaultConfig()
	cfg.Server.ListenAddr = "127.0.0.1:0"
	cfg.Server.TLS = grpcserver.TLSFiles{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile, ClientCAFile: f.ca.File}
	cfg.Public = grpcserver.PublicConfig{ListenAddr: "127.0.0.1:0", TLS: grpcserver.PublicTLSFiles{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}}
	cfg.PolicyFile = policyFile
	cfg.PolicyReloadInterval = 0
	cfg.Audit = grpcclient.Config{Target: gs.Addr().String(), CAFile: f.ca.File, CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}
	cfg.AuditHMACKeyFile = writeKey(t, filepath.Join(dir, "hmac.key"))
	cfg.LocalSTS.SigningKeyFile = writeKey(t, filepath.Join(dir, "sts.key"))
	cfg.State.SQLitePath = filepath.Join(dir, "state.db")
	cfg.AdminPrincipals = []string{adminID}
	return f, cfg
}

// client dials addr trusting the fixture's CA, presenting leaf when it has
// a certificate.
func (f *brokerFixture) client(t *testing.T, addr string, leaf pkitest.Leaf) brokerv1.BrokerServiceClient {
	t.Helper()
	conn, err := grpcclient.Dial(grpcclient.Config{Target: addr, CAFile: f.ca.File, CertFile: leaf.CertFile, KeyFile: leaf.KeyFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return brokerv1.NewBrokerServiceClient(conn)
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestIdentityThroughServer presents, on the broker's mTLS port, client
// certificates from the broker's own CA whose URI SANs are not exactly one
// SPIFFE ID — including the administrator's ID beside another one. Every
// RPC is refused Unauthenticated before the broker sees it (nothing is
// audited, no policy is reloaded); the administrator's proper certificate
// reloads, and another valid identity is refused and audited.
func TestIdentityThroughServer(t *testing.T) {
	f := startBroker(t)
	addr := f.srv.Addr().String()

	t.Run("accept/administrator", func(t *testing.T) {
		resp, err := f.client(t, addr, f.ca.Issue(t, "admin", adminID)).ReloadPolicy(callCtx(t), &brokerv1.ReloadPolicyRequest{})
		if err != nil || resp.GetSha256() == "" {
			t.Fatalf("ReloadPolicy as administrator = %v, %v", resp, err)
		}
	})
	t.Run("deny/other-identity-audited", func(t *testing.T) {
		before := f.audit.count()
		_, err := f.client(t, addr, f.ca.Issue(t, "app", "spiffe://credmatrix.dev/app")).ReloadPolicy(callCtx(t), &brokerv1.ReloadPolicyRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("ReloadPolicy as a non-administrator: %v, want PermissionDenied", err)
		}
		if f.audit.count() != before+1 || f.audit.last().GetDecision() != auditv1.Decision_DECISION_DENY {
			t.Errorf("the refusal was not audited as a denial")
		}
	})
	for _, bad := range pkitest.BadIdentities(adminID) {
		t.Run("refuse/"+bad.Name, func(t *testing.T) {
			before := f.audit.count()
			c := f.client(t, addr, f.ca.Issue(t, "bad", bad.URIs...))
			ctx := callCtx(t)
			_, rerr := c.ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{})
			_, ferr := c.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{Account: "dev", Reason: "attack"})
			_, ierr := c.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: f.env.Token(t, "acme/app", "refs/heads/main", time.Minute),
				Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "dev"}}})
			for name, err := range map[string]error{"ReloadPolicy": rerr, "FreezeAccount": ferr, "IssueSession": ierr} {
				if status.Code(err) != codes.Unauthenticated {
					t.Errorf("%s = %v, want Unauthenticated", name, err)
				}
			}
			if n := f.audit.count() - before; n != 0 {
				t.Errorf("%d events audited: the broker handled a request from a peer without an identity", n)
			}
		})
	}
}

// TestPublicListenerThroughServer checks the broker's public listener as
// New wires it: a caller holding only the CA bundle and an OIDC token gets
// a session, its roles and an explanation; the administrative RPCs and
// session introspection are refused there before the broker sees them;
// without a token the broker refuses (and audits); plaintext and
// certificate-less mTLS are refused.
func TestPublicListenerThroughServer(t *testing.T) {
	f := startBroker(t)
	public := f.client(t, f.srv.PublicAddr().String(), pkitest.Leaf{})
	token := f.env.Token(t, "acme/app", "refs/heads/main", 5*time.Minute)
	target := &brokerv1.SessionTarget{Role: "deploy", Account: "dev"}

	t.Run("issue-session", func(t *testing.T) {
		resp, err := public.IssueSession(callCtx(t), &brokerv1.IssueSessionRequest{Token: token, Targets: []*brokerv1.SessionTarget{target}, Reason: "public path"})
		if err != nil {
			t.Fatalf("IssueSession: %v", err)
		}
		s := resp.GetSessions()[0]
		if !strings.HasPrefix(s.GetCredentials().GetAccessKeyId(), "ASIA") || s.GetAccountId() != "111111111111" {
			t.Errorf("session = %v", s)
		}
		ev := f.audit.last()
		if ev.GetKind() != auditv1.Kind_KIND_SESSION_ISSUE || ev.GetDecision() != auditv1.Decision_DECISION_ALLOW || ev.GetActor().GetPeer() != "" {
			t.Errorf("audit event = kind %v decision %v peer %q; want an allowed issuance without a peer identity", ev.GetKind(), ev.GetDecision(), ev.GetActor().GetPeer())
		}
	})
	t.Run("list-roles", func(t *testing.T) {
		resp, err := public.ListRoles(callCtx(t), &brokerv1.ListRolesRequest{Token: token})
		if err != nil || len(resp.GetRoles()) == 0 {
			t.Fatalf("ListRoles = %v, %v", resp, err)
		}
	})
	t.Run("explain-decision", func(t *testing.T) {
		resp, err := public.ExplainDecision(callCtx(t), &brokerv1.ExplainDecisionRequest{Token: token, Target: target})
		if err != nil || !resp.GetAllowed() {
			t.Fatalf("ExplainDecision = %v, %v", resp, err)
		}
	})

	// A client certificate changes nothing on the public listener: even
	// the administrator's is never asked for, so admin RPCs stay refused.
	adminOnPublic := f.client(t, f.srv.PublicAddr().String(), f.ca.Issue(t, "admin", adminID))
	refused := []struct {
		name string
		call func(ctx context.Context, c brokerv1.BrokerServiceClient) error
	}{
		{"RevokeSessions", func(ctx context.Context, c brokerv1.BrokerServiceClient) error {
			_, err := c.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{Subject: "x", Reason: "attack"})
			return err
		}},
		{"FreezeAccount", func(ctx context.Context, c brokerv1.BrokerServiceClient) error {
			_, err := c.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{Account: "dev", Reason: "attack"})
			return err
		}},
		{"UnfreezeAccount", func(ctx context.Context, c brokerv1.BrokerServiceClient) error {
			_, err := c.UnfreezeAccount(ctx, &brokerv1.UnfreezeAccountRequest{Account: "dev", Reason: "attack"})
			return err
		}},
		{"ReloadPolicy", func(ctx context.Context, c brokerv1.BrokerServiceClient) error {
			_, err := c.ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{})
			return err
		}},
		{"GetSession", func(ctx context.Context, c brokerv1.BrokerServiceClient) error {
			_, err := c.GetSession(ctx, &brokerv1.GetSessionRequest{AccessKeyId: "ASIAAAAAAAAAAAAAAAAA", SessionToken: "x"})
			return err
		}},
	}
	for _, tc := range refused {
		for _, who := range []struct {
			name string
			c    brokerv1.BrokerServiceClient
		}{{"ca-bundle-only", public}, {"administrator-certificate", adminOnPublic}} {
			t.Run("refuse/"+tc.name+"/"+who.name, func(t *testing.T) {
				before := f.audit.count()
				err := tc.call(callCtx(t), who.c)
				st := status.Convert(err)
				want := []any{codes.PermissionDenied, "/credmatrix.broker.v1.BrokerService/" + tc.name + " is not served on the public listener: it requires mutual TLS on the service port"}
				if diff := cmp.Diff([]any{st.Code(), st.Message()}, want); diff != "" {
					t.Errorf("status mismatch (-got +want):\n%s", diff)
				}
				if f.audit.count() != before {
					t.Error("a refused admin RPC reached the broker (it was audited)")
				}
			})
		}
	}

	t.Run("refuse/no-token", func(t *testing.T) {
		_, err := public.IssueSession(callCtx(t), &brokerv1.IssueSessionRequest{Targets: []*brokerv1.SessionTarget{target}})
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "token") {
			t.Fatalf("IssueSession without a token = %v, want InvalidArgument naming the token", err)
		}
	})
	t.Run("refuse/forged-token-audited", func(t *testing.T) {
		before := f.audit.count()
		_, err := public.IssueSession(callCtx(t), &brokerv1.IssueSessionRequest{Token: brokertest.TamperSignature(token), Targets: []*brokerv1.SessionTarget{target}})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("IssueSession with a forged token = %v, want Unauthenticated", err)
		}
		if f.audit.count() != before+1 || f.audit.last().GetDecision() != auditv1.Decision_DECISION_DENY {
			t.Error("the refusal was not audited as a denial")
		}
	})
	t.Run("refuse/plaintext", func(t *testing.T) {
		conn, err := grpcclient.Dial(grpcclient.Config{Target: f.srv.PublicAddr().String(), DevPlaintext: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = brokerv1.NewBrokerServiceClient(conn).IssueSession(callCtx(t), &brokerv1.IssueSessionRequest{Token: token, Targets: []*brokerv1.SessionTarget{target}})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("plaintext IssueSession = %v, want Unavailable", err)
		}
	})
	t.Run("refuse/service-port-without-certificate", func(t *testing.T) {
		_, err := f.client(t, f.srv.Addr().String(), pkitest.Leaf{}).IssueSession(callCtx(t), &brokerv1.IssueSessionRequest{Token: token, Targets: []*brokerv1.SessionTarget{target}})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("IssueSession on the service port without a certificate = %v, want Unavailable", err)
		}
	})
}

// TestPublicConfigRefused checks the broker refuses to start a public
// listener in plaintext off loopback, naming the field.
func TestPublicConfigRefused(t *testing.T) {
	_, cfg := brokerConfig(t)
	cfg.Public = grpcserver.PublicConfig{ListenAddr: "0.0.0.0:8444", DevPlaintext: true}
	_, err := New(context.Background(), cfg, hclog.NewNullLogger())
	if err == nil || !strings.Contains(err.Error(), `public.dev_plaintext: refused: listen_addr host "0.0.0.0" is not loopback`) {
		t.Errorf("New = %v, want the public plaintext refusal", err)
	}
}

var _ grpc.ServiceRegistrar = (*grpcserver.Server)(nil)
