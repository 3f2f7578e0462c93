package server

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/pkitest"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
)

const (
	keyguardID = "spiffe://credmatrix.dev/keyguard"
	auditID    = "spiffe://credmatrix.dev/audit"
	adminID    = "spiffe://credmatrix.dev/cli"
	audience   = "credmatrix-keyguard"
)

// recordingAudit is the audit service as keyguard sees it over gRPC.
type recordingAudit struct {
	auditv1.UnimplementedAuditServiceServer
	mu     sync.Mutex
	events []*auditv1.Event
}

func (a *recordingAudit) Append(ctx context.Context, req *auditv1.AppendRequest) (*auditv1.AppendResponse, error) {
	if id, _ := grpcserver.PeerIdentity(ctx); id != keyguardID {
		return nil, status.Error(codes.PermissionDenied, "not keyguard")
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

// issuer is an OIDC issuer with a real RSA key over httptest.
type issuer struct {
	srv *httptest.Server
	key *rsa.PrivateKey
}

func startIssuer(t *testing.T) *issuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &issuer{key: key}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"issuer": is.srv.URL, "jwks_uri": is.srv.URL + "/jwks"})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	})
	is.srv = httptest.NewServer(mux)
	t.Cleanup(is.srv.Close)
	return is
}

// token mints a token for sub with the given audience.
func (is *issuer) token(t *testing.T, sub, aud string) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: is.key}, (&jose.SignerOptions{}).WithHeader("kid", "k1").WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	b, _ := json.Marshal(map[string]any{"iss": is.srv.URL, "sub": sub, "aud": aud, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()})
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := jws.CompactSerialize()
	return out
}

type keyguardFixture struct {
	srv    *Server
	ca     *pkitest.CA
	issuer *issuer
	audit  *recordingAudit
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

// keyguardConfig starts the issuer and the audit service and returns
// keyguard's configuration: local backend, one ring, a grant for the
// issuer's subject "app" and one for the certificate identity of "app",
// an mTLS service port and a public listener.
func keyguardConfig(t *testing.T) (*keyguardFixture, Config) {
	t.Helper()
	dir := t.TempDir()
	f := &keyguardFixture{ca: pkitest.New(t), issuer: startIssuer(t), audit: &recordingAudit{}}
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

	keyring := filepath.Join(dir, "keyring.yaml")
	body := fmt.Sprintf(`rings:
  - {data_class: confidential, region: eu-west-1}
grants:
  - {id: app-token, principal: "%s#app", data_class: confidential, operations: [encrypt, decrypt], regions: [eu-west-1]}
  - {id: app-cert, principal: "spiffe://credmatrix.dev/app", data_class: confidential, operations: [encrypt, decrypt], regions: [eu-west-1]}
`, f.issuer.srv.URL)
	if err := os.WriteFile(keyring, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	rootKey := filepath.Join(dir, "root.key")
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	if err := os.WriteFile(rootKey, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	leaf := f.ca.Issue(t, "keyguard", keyguardID)
	cfg := DefaultConfig()
	cfg.Server.ListenAddr = "127.0.0.1:0"
	cfg.Server.TLS = grpcserver.TLSFiles{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile, ClientCAFile: f.ca.File}
	cfg.Public = grpcserver.PublicConfig{ListenAddr: "127.0.0.1:0", TLS: grpcserver.PublicTLSFiles{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}}
	cfg.Audit = grpcclient.Config{Target: gs.Addr().String(), CAFile: f.ca.File, CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}
	cfg.KeyringFile = keyring
	cfg.State.SQLitePath = filepath.Join(dir, "state.db")
	cfg.AuditHMACKeyFile = hmacKeyFile(t)
	cfg.Local = LocalConfig{KeystoreFile: filepath.Join(dir, "keystore"), RootKeyFile: rootKey}
	cfg.OIDC = OIDCConfig{Issuers: []string{f.issuer.srv.URL}, Audience: audience}
	cfg.Admins = []string{adminID}
	return f, cfg
}

func startKeyguard(t *testing.T) *keyguardFixture {
	t.Helper()
	f, cfg := keyguardConfig(t)
	var err error
	f.srv, err = New(context.Background(), cfg, hclog.New(&hclog.LoggerOptions{Output: io.Discard}))
	if err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, f.srv.Serve)
	return f
}

func (f *keyguardFixture) client(t *testing.T, addr string, leaf pkitest.Leaf) keyguardv1.KeyguardServiceClient {
	t.Helper()
	conn, err := grpcclient.Dial(grpcclient.Config{Target: addr, CAFile: f.ca.File, CertFile: leaf.CertFile, KeyFile: leaf.KeyFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return keyguardv1.NewKeyguardServiceClient(conn)
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func bearer(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

var encryptReq = &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("card 4111")}

// TestIdentityThroughServer presents, on keyguard's mTLS port, client
// certificates from keyguard's own CA whose URI SANs are not exactly one
// SPIFFE ID — including ones holding the granted or the administrator's ID
// beside another. Data and admin RPCs are refused Unauthenticated before
// keyguard sees them; the proper certificates work.
func TestIdentityThroughServer(t *testing.T) {
	f := startKeyguard(t)
	addr := f.srv.Addr().String()

	t.Run("accept/granted-certificate", func(t *testing.T) {
		if _, err := f.client(t, addr, f.ca.Issue(t, "app", "spiffe://credmatrix.dev/app")).Encrypt(callCtx(t), encryptReq); err != nil {
			t.Fatalf("Encrypt: %v", err)
		}
	})
	t.Run("accept/administrator", func(t *testing.T) {
		if _, err := f.client(t, addr, f.ca.Issue(t, "admin", adminID)).ListGrants(callCtx(t), &keyguardv1.ListGrantsRequest{}); err != nil {
			t.Fatalf("ListGrants: %v", err)
		}
	})
	for _, good := range []string{"spiffe://credmatrix.dev/app", adminID} {
		for _, bad := range pkitest.BadIdentities(good) {
			t.Run("refuse/"+strings.TrimPrefix(good, "spiffe://credmatrix.dev/")+"/"+bad.Name, func(t *testing.T) {
				before := f.audit.count()
				c := f.client(t, addr, f.ca.Issue(t, "bad", bad.URIs...))
				ctx := callCtx(t)
				_, eerr := c.Encrypt(ctx, encryptReq)
				_, lerr := c.ListGrants(ctx, &keyguardv1.ListGrantsRequest{})
				_, rerr := c.RotateKey(ctx, &keyguardv1.RotateKeyRequest{DataClass: "confidential", Region: "eu-west-1"})
				for name, err := range map[string]error{"Encrypt": eerr, "ListGrants": lerr, "RotateKey": rerr} {
					if status.Code(err) != codes.Unauthenticated {
						t.Errorf("%s = %v, want Unauthenticated", name, err)
					}
				}
				if n := f.audit.count() - before; n != 0 {
					t.Errorf("%d events audited: keyguard handled a request from a peer without an identity", n)
				}
			})
		}
	}
}

// TestPublicListenerThroughServer checks keyguard's public listener as New
// wires it: a caller with only the CA bundle and a bearer OIDC token
// encrypts and decrypts under its grant; without a token, with a token for
// another audience or with a forged one it is refused; admin RPCs are
// refused there even with a token or the administrator's certificate;
// plaintext is refused.
func TestPublicListenerThroughServer(t *testing.T) {
	f := startKeyguard(t)
	public := f.client(t, f.srv.PublicAddr().String(), pkitest.Leaf{})
	token := f.issuer.token(t, "app", audience)

	t.Run("encrypt-decrypt-with-token", func(t *testing.T) {
		ctx := bearer(callCtx(t), token)
		enc, err := public.Encrypt(ctx, encryptReq)
		if err != nil {
			t.Fatalf("Encrypt: %v", err)
		}
		dec, err := public.Decrypt(ctx, &keyguardv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
		if err != nil || string(dec.GetPlaintext()) != "card 4111" {
			t.Fatalf("Decrypt = %v, %v", dec, err)
		}
	})
	refusals := []struct {
		name    string
		ctx     func(context.Context) context.Context
		wantMsg string
		want    codes.Code
	}{
		{"no-token", func(ctx context.Context) context.Context { return ctx }, "caller identity required", codes.Unauthenticated},
		{"other-audience", func(ctx context.Context) context.Context { return bearer(ctx, f.issuer.token(t, "app", "credmatrix")) }, "invalid bearer token", codes.Unauthenticated},
		{"forged", func(ctx context.Context) context.Context { return bearer(ctx, token[:len(token)-4]+"AAAA") }, "invalid bearer token", codes.Unauthenticated},
		{"token-without-grant", func(ctx context.Context) context.Context { return bearer(ctx, f.issuer.token(t, "other", audience)) }, "", codes.PermissionDenied},
	}
	for _, tc := range refusals {
		t.Run("refuse/"+tc.name, func(t *testing.T) {
			_, err := public.Encrypt(tc.ctx(callCtx(t)), encryptReq)
			st := status.Convert(err)
			if st.Code() != tc.want || (tc.wantMsg != "" && st.Message() != tc.wantMsg) {
				t.Errorf("Encrypt = %v, want %v %q", err, tc.want, tc.wantMsg)
			}
		})
	}

	adminOnPublic := f.client(t, f.srv.PublicAddr().String(), f.ca.Issue(t, "admin", adminID))
	admin := []struct {
		name string
		call func(context.Context, keyguardv1.KeyguardServiceClient) error
	}{
		{"RotateKey", func(ctx context.Context, c keyguardv1.KeyguardServiceClient) error {
			_, err := c.RotateKey(ctx, &keyguardv1.RotateKeyRequest{DataClass: "confidential", Region: "eu-west-1"})
			return err
		}},
		{"CreateGrant", func(ctx context.Context, c keyguardv1.KeyguardServiceClient) error {
			_, err := c.CreateGrant(ctx, &keyguardv1.CreateGrantRequest{})
			return err
		}},
		{"RevokeGrant", func(ctx context.Context, c keyguardv1.KeyguardServiceClient) error {
			_, err := c.RevokeGrant(ctx, &keyguardv1.RevokeGrantRequest{})
			return err
		}},
		{"ListGrants", func(ctx context.Context, c keyguardv1.KeyguardServiceClient) error {
			_, err := c.ListGrants(ctx, &keyguardv1.ListGrantsRequest{})
			return err
		}},
		{"SetMinDecryptVersion", func(ctx context.Context, c keyguardv1.KeyguardServiceClient) error {
			_, err := c.SetMinDecryptVersion(ctx, &keyguardv1.SetMinDecryptVersionRequest{})
			return err
		}},
	}
	for _, tc := range admin {
		for _, who := range []struct {
			name string
			c    keyguardv1.KeyguardServiceClient
		}{{"token", public}, {"administrator-certificate", adminOnPublic}} {
			t.Run("refuse/"+tc.name+"/"+who.name, func(t *testing.T) {
				before := f.audit.count()
				st := status.Convert(tc.call(bearer(callCtx(t), token), who.c))
				want := []any{codes.PermissionDenied, "/credmatrix.keyguard.v1.KeyguardService/" + tc.name + " is not served on the public listener: it requires mutual TLS on the service port"}
				if diff := cmp.Diff([]any{st.Code(), st.Message()}, want); diff != "" {
					t.Errorf("status mismatch (-got +want):\n%s", diff)
				}
				if f.audit.count() != before {
					t.Error("a refused admin RPC reached keyguard (it was audited)")
				}
			})
		}
	}
	t.Run("refuse/plaintext", func(t *testing.T) {
		conn, err := grpcclient.Dial(grpcclient.Config{Target: f.srv.PublicAddr().String(), DevPlaintext: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = keyguardv1.NewKeyguardServiceClient(conn).Encrypt(bearer(callCtx(t), token), encryptReq)
		if status.Code(err) != codes.Unavailable {
			t.Errorf("plaintext Encrypt = %v, want Unavailable", err)
		}
	})
}

// TestPublicListenerNeedsIssuers: a public listener without OIDC issuers
// would let nobody in; keyguard refuses the configuration, naming it.
func TestPublicListenerNeedsIssuers(t *testing.T) {
	_, cfg := keyguardConfig(t)
	cfg.OIDC = OIDCConfig{}
	_, err := New(context.Background(), cfg, hclog.NewNullLogger())
	if err == nil || !strings.Contains(err.Error(), "public.listen_addr: needs oidc.issuers") {
		t.Errorf("New = %v, want the public.listen_addr refusal", err)
	}
}

var _ grpc.ServiceRegistrar = (*grpcserver.Server)(nil)
