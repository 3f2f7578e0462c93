package devstack_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
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
