package oidc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
)

// FuzzVerify feeds arbitrary tokens to a verifier trusting a live
// development issuer: it must never panic, and anything but a token the
// issuer signed must fail with ErrUnauthenticated.
func FuzzVerify(f *testing.F) {
	iss, err := devissuer.New()
	if err != nil {
		f.Fatal(err)
	}
	if _, err := iss.Start("127.0.0.1:0"); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = iss.Close() })
	v, err := oidc.NewVerifier(context.Background(), []oidc.IssuerConfig{{URL: iss.URL(), Audiences: []string{audience}}})
	if err != nil {
		f.Fatal(err)
	}
	good, err := iss.Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "1", audience), time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	claims := devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "1", audience)
	claims["iss"] = iss.URL()
	for _, seed := range []string{
		good, brokertest.TamperSignature(good), brokertest.AlgNoneToken(claims),
		brokertest.PublicKeyHS256Token(iss.PublicKey(), iss.KeyID(), claims),
		good[:strings.LastIndexByte(good, '.')+1], "a.b.c", "", "....", "eyJ9.eyJ9.",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(context.Background(), token)
		switch {
		case err == nil:
			if token != good && !strings.HasPrefix(token, good) {
				// A different serialisation of a validly signed token
				// could verify; it must carry the issuer's claims.
				if c.Issuer != iss.URL() || c.Subject == "" {
					t.Fatalf("accepted a token with claims %+v", c)
				}
			}
		case !errors.Is(err, oidc.ErrUnauthenticated) && !errors.Is(err, oidc.ErrIssuerUnavailable):
			t.Fatalf("error %v wraps neither ErrUnauthenticated nor ErrIssuerUnavailable", err)
		}
	})
}
