package oidc_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/google/go-cmp/cmp"
)

const audience = "credmatrix"

type env struct {
	rsa, ec, stranger *devissuer.Issuer
	verifier          *oidc.Verifier
	now               time.Time
}

func startIssuer(t *testing.T, opts ...devissuer.Option) *devissuer.Issuer {
	t.Helper()
	iss, err := devissuer.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iss.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = iss.Close() })
	return iss
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{now: time.Now().Truncate(time.Second)}
	clock := func() time.Time { return e.now }
	e.rsa = startIssuer(t, devissuer.WithClock(clock))
	e.ec = startIssuer(t, devissuer.WithAlgorithm(devissuer.ES256), devissuer.WithClock(clock))
	e.stranger = startIssuer(t, devissuer.WithClock(clock))
	v, err := oidc.NewVerifier(context.Background(), []oidc.IssuerConfig{
		{URL: e.rsa.URL(), Audiences: []string{audience}, Leeway: 30 * time.Second},
		{URL: e.ec.URL(), Audiences: []string{"other", audience}},
	}, oidc.WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	e.verifier = v
	return e
}

func mint(t *testing.T, iss *devissuer.Issuer, ttl time.Duration, override map[string]any) string {
	t.Helper()
	claims := devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "1234567890123", audience)
	for k, v := range override {
		claims[k] = v
	}
	tok, err := iss.Mint(claims, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestVerify(t *testing.T) {
	e := newEnv(t)
	now := e.now
	forged := func() map[string]any {
		c := devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "1", audience)
		c["iss"], c["iat"], c["exp"] = e.rsa.URL(), now.Unix(), now.Add(time.Hour).Unix()
		return c
	}
	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"allow/rs256", mint(t, e.rsa, time.Hour, nil), true},
		{"allow/es256-second-audience", mint(t, e.ec, time.Hour, nil), true},
		{"allow/audience-list", mint(t, e.rsa, time.Hour, map[string]any{"aud": []string{"x", audience}}), true},
		{"allow/expired-within-leeway", mint(t, e.rsa, -20*time.Second, nil), true},
		{"allow/iat-future-within-leeway", mint(t, e.rsa, time.Hour, map[string]any{"iat": now.Add(20 * time.Second).Unix()}), true},
		{"deny/expired", mint(t, e.rsa, -time.Minute, nil), false},
		{"deny/nbf-future", mint(t, e.rsa, time.Hour, map[string]any{"nbf": now.Add(time.Minute).Unix()}), false},
		{"deny/iat-future", mint(t, e.rsa, time.Hour, map[string]any{"iat": now.Add(time.Minute).Unix()}), false},
		{"deny/no-exp", mint(t, e.rsa, time.Hour, map[string]any{"exp": nil}), false},
		{"deny/exp-not-number", mint(t, e.rsa, time.Hour, map[string]any{"exp": "soon"}), false},
		{"deny/no-sub", mint(t, e.rsa, time.Hour, map[string]any{"sub": ""}), false},
		{"deny/wrong-audience", mint(t, e.rsa, time.Hour, map[string]any{"aud": "someone-else"}), false},
		{"deny/no-audience", mint(t, e.rsa, time.Hour, map[string]any{"aud": nil}), false},
		{"deny/unknown-issuer", mint(t, e.stranger, time.Hour, nil), false},
		{"deny/issuer-claim-lies", mint(t, e.stranger, time.Hour, map[string]any{"iss": e.rsa.URL()}), false},
		{"deny/alg-none", brokertest.AlgNoneToken(forged()), false},
		{"deny/hs256-with-public-key", brokertest.PublicKeyHS256Token(e.rsa.PublicKey(), e.rsa.KeyID(), forged()), false},
		{"deny/tampered-signature", brokertest.TamperSignature(mint(t, e.rsa, time.Hour, nil)), false},
		{"deny/tampered-payload", brokertest.TamperPayload(mint(t, e.rsa, time.Hour, nil), map[string]any{"iss": e.rsa.URL(), "sub": "admin", "aud": audience, "exp": now.Add(time.Hour).Unix()}), false},
		{"deny/oversized", mint(t, e.rsa, time.Hour, map[string]any{"pad": strings.Repeat("a", oidc.MaxTokenBytes)}), false},
		{"deny/not-a-jwt", "not.a.jwt", false},
		{"deny/two-parts", "a.b", false},
		{"deny/empty", "", false},
		{"deny/jwe-shaped", "a.b.c.d.e", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			claims, err := e.verifier.Verify(context.Background(), tc.token)
			if got := err == nil; got != tc.ok {
				t.Fatalf("Verify ok = %v, want %v (err: %v)", got, tc.ok, err)
			}
			if err != nil {
				t.Logf("error: %v", err)
				if !errors.Is(err, oidc.ErrUnauthenticated) {
					t.Errorf("error %v does not wrap ErrUnauthenticated", err)
				}
				if tc.token != "" && strings.Contains(err.Error(), tc.token) {
					t.Errorf("error quotes the token")
				}
				return
			}
			if claims.Subject != "repo:acme/app:ref:refs/heads/main" {
				t.Errorf("Subject = %q", claims.Subject)
			}
		})
	}
}

func TestClaims(t *testing.T) {
	e := newEnv(t)
	tok := mint(t, e.rsa, time.Hour, map[string]any{
		"big": 12345678901234567, "flag": true, "ratio": 1.5, "nested": map[string]any{"a": 1}, "nothing": nil,
	})
	c, err := e.verifier.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]any{}
	for _, name := range []string{"repository", "run_id", "big", "flag", "ratio", "nested", "nothing", "absent"} {
		v, ok := c.String(name)
		got[name] = []any{v, ok}
	}
	want := map[string]any{
		"repository": []any{"acme/app", true},
		"run_id":     []any{"1234567890123", true},
		"big":        []any{"12345678901234567", true},
		"flag":       []any{"true", true},
		"ratio":      []any{"1.5", true},
		"nested":     []any{"", false},
		"nothing":    []any{"", false},
		"absent":     []any{"", false},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("String (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff([]any{c.Issuer, c.Audience, c.Expiry, c.IssuedAt}, []any{e.rsa.URL(), []string{audience}, e.now.Add(time.Hour), e.now}); diff != "" {
		t.Errorf("claims (-got +want):\n%s", diff)
	}
}

func TestVerifyRefreshesKeysOnUnknownKidAfterCooldown(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	clock := func() time.Time { return now }
	iss := startIssuer(t, devissuer.WithClock(clock))
	ct := &countingTransport{}
	v, err := oidc.NewVerifier(context.Background(), []oidc.IssuerConfig{{URL: iss.URL(), Audiences: []string{audience}}},
		oidc.WithHTTPClient(&http.Client{Transport: ct}), oidc.WithClock(clock), oidc.WithKeyRefreshCooldown(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), mint(t, iss, time.Hour, nil)); err != nil {
		t.Fatal(err)
	}
	fetches := ct.n.Load() // discovery + JWKS
	// Tokens with unknown kids and bad signatures cost no request.
	forged := brokertest.TamperSignature(mint(t, iss, time.Hour, nil))
	if err := iss.RotateKey(); err != nil {
		t.Fatal(err)
	}
	rotated := mint(t, iss, time.Hour, nil)
	for range 50 {
		if _, err := v.Verify(context.Background(), forged); !errors.Is(err, oidc.ErrUnauthenticated) {
			t.Fatalf("forged token: %v", err)
		}
	}
	// The first unknown kid after the cooldown refreshes; the cooldown
	// has not passed since the first fetch, so it is refused for now.
	if _, err := v.Verify(context.Background(), rotated); !errors.Is(err, oidc.ErrUnauthenticated) {
		t.Fatalf("rotated key within the cooldown: %v", err)
	}
	if n := ct.n.Load(); n != fetches {
		t.Errorf("%d requests within the cooldown, want none", n-fetches)
	}
	now = now.Add(11 * time.Second)
	if _, err := v.Verify(context.Background(), rotated); err != nil {
		t.Fatalf("token signed with a rotated key after the cooldown: %v", err)
	}
	if n := ct.n.Load(); n != fetches+1 {
		t.Errorf("%d requests to refresh, want 1", n-fetches)
	}
}

// countingTransport counts requests, to show discovery is lazy and that a
// down issuer is not retried on every token.
type countingTransport struct{ n atomic.Int32 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

func TestIssuerUnavailable(t *testing.T) {
	iss := startIssuer(t)
	tok := mint(t, iss, time.Hour, nil)
	_ = iss.Close()
	now := time.Now()
	ct := &countingTransport{}
	v, err := oidc.NewVerifier(context.Background(), []oidc.IssuerConfig{{URL: iss.URL(), Audiences: []string{audience}}},
		oidc.WithHTTPClient(&http.Client{Transport: ct}), oidc.WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	if n := ct.n.Load(); n != 0 {
		t.Fatalf("NewVerifier made %d requests, want none", n)
	}
	for range 3 {
		_, err = v.Verify(context.Background(), tok)
		if !errors.Is(err, oidc.ErrIssuerUnavailable) || errors.Is(err, oidc.ErrUnauthenticated) {
			t.Fatalf("Verify error = %v, want ErrIssuerUnavailable only", err)
		}
	}
	if n := ct.n.Load(); n != 1 {
		t.Errorf("discovery attempted %d times within the retry interval, want 1", n)
	}
}

func TestVerifyCancelled(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.verifier.Verify(ctx, mint(t, e.rsa, time.Hour, nil)); !errors.Is(err, context.Canceled) {
		t.Errorf("Verify error = %v, want context.Canceled", err)
	}
}

func TestNewVerifierRejectsBadConfig(t *testing.T) {
	good := oidc.IssuerConfig{URL: "https://token.actions.githubusercontent.com", Audiences: []string{audience}}
	tests := []struct {
		name    string
		issuers []oidc.IssuerConfig
	}{
		{"none", nil},
		{"alg-none", []oidc.IssuerConfig{{URL: good.URL, Audiences: good.Audiences, Algorithms: []string{"none"}}}},
		{"alg-hs256", []oidc.IssuerConfig{{URL: good.URL, Audiences: good.Audiences, Algorithms: []string{"RS256", "HS256"}}}},
		{"no-audience", []oidc.IssuerConfig{{URL: good.URL}}},
		{"empty-audience", []oidc.IssuerConfig{{URL: good.URL, Audiences: []string{""}}}},
		{"http-remote", []oidc.IssuerConfig{{URL: "http://issuer.example.com", Audiences: good.Audiences}}},
		{"relative-url", []oidc.IssuerConfig{{URL: "issuer", Audiences: good.Audiences}}},
		{"leeway-too-large", []oidc.IssuerConfig{{URL: good.URL, Audiences: good.Audiences, Leeway: time.Hour}}},
		{"duplicate", []oidc.IssuerConfig{good, good}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := oidc.NewVerifier(context.Background(), tc.issuers); err == nil {
				t.Error("NewVerifier accepted the config")
			}
		})
	}
}

func TestVerificationErrorMessage(t *testing.T) {
	err := &oidc.VerificationError{Cause: errors.New("exp: token expired")}
	if got, want := err.Error(), "token verification failed: exp: token expired"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, oidc.ErrUnauthenticated) {
		t.Error("VerificationError does not wrap ErrUnauthenticated")
	}
}
