package oidcauth_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/credmatrix/credmatrix/services/keyguard/oidcauth"
)

// testIssuer is an OIDC issuer with a fresh RSA key, over httptest.
type testIssuer struct {
	srv *httptest.Server
	key *rsa.PrivateKey
}

func newIssuer(t *testing.T) *testIssuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &testIssuer{key: key}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{
			"issuer": is.srv.URL, "jwks_uri": is.srv.URL + "/jwks", "authorization_endpoint": is.srv.URL + "/auth",
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	})
	is.srv = httptest.NewServer(mux)
	t.Cleanup(is.srv.Close)
	return is
}

func sign(t *testing.T, key any, alg jose.SignatureAlgorithm, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k1").WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVerify(t *testing.T) {
	is := newIssuer(t)
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	now := time.Now()
	v, err := oidcauth.New([]string{is.srv.URL}, "keyguard", oidcauth.WithHTTPClient(is.srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	claims := func(mut func(c map[string]any)) map[string]any {
		c := map[string]any{"iss": is.srv.URL, "sub": "system:serviceaccount:billing:api", "aud": "keyguard", "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()}
		if mut != nil {
			mut(c)
		}
		return c
	}
	unsigned := func(c map[string]any) string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
		b, _ := json.Marshal(c)
		return h + "." + base64.RawURLEncoding.EncodeToString(b) + "."
	}
	tests := []struct {
		name  string
		token string
		want  string
	}{
		{"allow/valid", sign(t, is.key, jose.RS256, claims(nil)), is.srv.URL + "#system:serviceaccount:billing:api"},
		{"deny/wrong-audience", sign(t, is.key, jose.RS256, claims(func(c map[string]any) { c["aud"] = "broker" })), ""},
		{"deny/expired", sign(t, is.key, jose.RS256, claims(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() })), ""},
		{"deny/untrusted-issuer", sign(t, is.key, jose.RS256, claims(func(c map[string]any) { c["iss"] = "https://evil.example" })), ""},
		{"deny/other-key", sign(t, other, jose.RS256, claims(nil)), ""},
		{"deny/alg-none", unsigned(claims(nil)), ""},
		{"deny/hmac-with-public-key", sign(t, []byte("public key bytes as an HMAC secret, 32+"), jose.HS256, claims(nil)), ""},
		{"deny/no-sub", sign(t, is.key, jose.RS256, claims(func(c map[string]any) { delete(c, "sub") })), ""},
		{"deny/garbage", "not.a.token", ""},
		{"deny/oversized", strings.Repeat("a", oidcauth.MaxTokenBytes+1), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Verify(context.Background(), tc.token)
			if tc.want == "" {
				if !errors.Is(err, oidcauth.ErrInvalidToken) || got != "" {
					t.Fatalf("Verify = %q, %v; want ErrInvalidToken", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Verify = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name     string
		issuers  []string
		audience string
	}{
		{"no-audience", []string{"https://issuer.example"}, ""},
		{"plain-http", []string{"http://issuer.example"}, "keyguard"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := oidcauth.New(tc.issuers, tc.audience); err == nil {
				t.Fatal("New succeeded")
			}
		})
	}
}
