// Package testissuer is an OIDC issuer for the deploy module's tests,
// written with the standard library only: an httptest server with the
// discovery document and a JWKS holding a fresh RSA key, and RS256 tokens
// shaped like GitHub Actions ID tokens. The services verify them exactly
// as they verify a real issuer's.
package testissuer

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// Subject is the sub claim of Token: acme/app on main.
const Subject = "repo:acme/app:ref:refs/heads/main"

// Issuer is a running issuer.
type Issuer struct {
	srv *httptest.Server
	key *rsa.PrivateKey
}

// Start starts an issuer that stops with the test.
func Start(t testing.TB) *Issuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &Issuer{key: key}
	b64 := base64.RawURLEncoding.EncodeToString
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"issuer": is.srv.URL, "jwks_uri": is.srv.URL + "/jwks", "id_token_signing_alg_values_supported": []string{"RS256"}})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]any{{
			"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
			"n": b64(key.N.Bytes()), "e": b64(big.NewInt(int64(key.E)).Bytes()),
		}}})
	})
	is.srv = httptest.NewServer(mux)
	t.Cleanup(is.srv.Close)
	return is
}

// URL is the issuer URL (the iss claim).
func (is *Issuer) URL() string { return is.srv.URL }

// Token mints a GitHub Actions-style token of acme/app on main for aud,
// valid for five minutes; mut may change its claims.
func (is *Issuer) Token(t testing.TB, aud string, mut func(map[string]any)) string {
	t.Helper()
	now := time.Now()
	jti := make([]byte, 8)
	_, _ = rand.Read(jti)
	c := map[string]any{
		"iss": is.srv.URL, "sub": Subject, "aud": aud, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		"jti": hex.EncodeToString(jti), "repository": "acme/app", "repository_owner": "acme", "ref": "refs/heads/main",
		"ref_type": "branch", "event_name": "push", "run_id": "4242", "actor": "octocat",
	}
	if mut != nil {
		mut(c)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	hdr, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "k1", "typ": "JWT"})
	body, _ := json.Marshal(c)
	signing := b64(hdr) + "." + b64(body)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, is.key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + b64(sig)
}
