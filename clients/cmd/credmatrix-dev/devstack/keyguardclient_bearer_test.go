package devstack_test

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/keyfile"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// TestBearerIdentity: with a bearer token the caller is the token's
// principal, not the connection's certificate; a token for another
// audience is refused outright.
func TestBearerIdentity(t *testing.T) {
	dir := t.TempDir()
	stack, err := devstack.Start(context.Background(), devstack.Config{StateDir: dir, Ports: devstack.EphemeralPorts(), Log: os.Stderr, LogLevel: "error"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	_, _, addr := stack.Addrs()
	conn, err := grpcclient.Dial(stack.PKI().Client("cli", addr)) // the cli certificate could encrypt
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	mint := func(aud string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) {
			return stack.Issuer().Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "1", aud), time.Minute)
		}
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		aud      string
		wantCode codes.Code
		wantMsg  string
	}{
		{"deny/token-principal-has-no-grant", devstack.KeyguardAudience, codes.PermissionDenied, "no grant allows " + stack.IssuerURL() + "#repo:acme/app:ref:refs/heads/main to encrypt"},
		{"deny/broker-audience", "credmatrix", codes.Unauthenticated, "invalid bearer token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := keyguardclient.New(conn, keyguardclient.WithBearerToken(mint(tc.aud)))
			_, _, err := c.Encrypt(ctx, "confidential", "eu-west-1", []byte("x"), nil)
			st := status.Convert(err)
			if st.Code() != tc.wantCode || !strings.HasPrefix(st.Message(), tc.wantMsg) {
				t.Fatalf("Encrypt: %v %q, want %v %q...", st.Code(), st.Message(), tc.wantCode, tc.wantMsg)
			}
		})
	}
}

// TestBearerRefusalAudited: a bearer token keyguard refuses — on the
// public listener (no client certificate) and on the mTLS port — is
// recorded as a denial of the attempted operation, by the token's HMAC
// only; with audit down the caller gets UNAVAILABLE, not the refusal
// (fail closed: no refusal goes unrecorded).
func TestBearerRefusalAudited(t *testing.T) {
	dir := t.TempDir()
	stack, err := devstack.Start(context.Background(), devstack.Config{StateDir: dir, Ports: devstack.EphemeralPorts(), Log: os.Stderr, LogLevel: "error"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	auditAddr, _, mtlsAddr := stack.Addrs()
	_, publicAddr := stack.PublicAddrs()
	dial := func(cfg grpcclient.Config) *grpc.ClientConn {
		conn, err := grpcclient.Dial(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	public := dial(grpcclient.Config{Target: publicAddr, CAFile: stack.PKI().CAFile})
	mtls := dial(stack.PKI().Client("cli", mtlsAddr))
	audit := auditv1.NewAuditServiceClient(dial(stack.PKI().Client("cli", auditAddr)))
	key, err := keyfile.Read(stack.AuditHMACKeyFile(), auditevent.MinKeyBytes)
	if err != nil {
		t.Fatal(err)
	}
	hasher, err := auditevent.NewHasher(key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	wrongAudience, err := stack.Issuer().Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "7", "credmatrix"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tampered := wrongAudience[:len(wrongAudience)-4] + "AAAA"
	for _, tc := range []struct {
		name  string
		conn  *grpc.ClientConn
		token string
		call  func(context.Context, keyguardv1.KeyguardServiceClient) error
		kind  auditv1.Kind
	}{
		{"public/encrypt/wrong-audience", public, wrongAudience, func(ctx context.Context, c keyguardv1.KeyguardServiceClient) error {
			_, err := c.Encrypt(ctx, &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("x")})
			return err
		}, auditv1.Kind_KIND_KEY_ENCRYPT},
		{"public/decrypt/tampered", public, tampered, func(ctx context.Context, c keyguardv1.KeyguardServiceClient) error {
			_, err := c.Decrypt(ctx, &keyguardv1.DecryptRequest{Ciphertext: []byte("not an envelope")})
			return err
		}, auditv1.Kind_KIND_KEY_DECRYPT},
		{"mtls/create-grant/garbage", mtls, "not-a-jwt", func(ctx context.Context, c keyguardv1.KeyguardServiceClient) error {
			_, err := c.CreateGrant(ctx, &keyguardv1.CreateGrantRequest{})
			return err
		}, auditv1.Kind_KIND_GRANT_CREATE},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tc.token)
			err := tc.call(ctx, keyguardv1.NewKeyguardServiceClient(tc.conn))
			if st := status.Convert(err); st.Code() != codes.Unauthenticated || st.Message() != "invalid bearer token" {
				t.Fatalf("answer %v %q, want Unauthenticated \"invalid bearer token\"", st.Code(), st.Message())
			}
			resp, err := audit.Query(ctx, &auditv1.QueryRequest{PageSize: 1000})
			if err != nil {
				t.Fatal(err)
			}
			want := hasher.Ref("oidc_token", []byte(tc.token)).GetHmacSha256()
			var found []*auditv1.Event
			for _, e := range resp.GetEvents() {
				if slices.ContainsFunc(e.GetSecretRefs(), func(r *auditv1.SecretRef) bool { return bytes.Equal(r.GetHmacSha256(), want) }) {
					found = append(found, e)
				}
				if strings.Contains(prototext.Format(e), tc.token) {
					t.Errorf("event %d holds the raw token", e.GetSequence())
				}
			}
			if len(found) != 1 {
				t.Fatalf("%d events name the token's HMAC, want 1", len(found))
			}
			if e := found[0]; e.GetKind() != tc.kind || e.GetDecision() != auditv1.Decision_DECISION_DENY || e.GetReason() != "invalid bearer token" {
				t.Errorf("event = %v %v %q, want %v DENY \"invalid bearer token\"", e.GetKind(), e.GetDecision(), e.GetReason(), tc.kind)
			}
		})
	}

	// Audit down: the refusal cannot be recorded, so the caller is told
	// keyguard is unavailable.
	stack.StopAudit()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tampered)
	_, err = keyguardv1.NewKeyguardServiceClient(public).Encrypt(ctx, &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("x")})
	if st := status.Convert(err); st.Code() != codes.Unavailable {
		t.Fatalf("with audit down: %v %q, want Unavailable", st.Code(), st.Message())
	}
}
