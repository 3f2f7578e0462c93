package oidcauth_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/credmatrix/credmatrix/services/keyguard/oidcauth"
)

// testIssuer is an OIDC issuer with real RSA keys over httptest. Its key
// set, discovery document and availability can be changed while it runs.
type testIssuer struct {
	srv        *httptest.Server
	mu         sync.Mutex
	keys       map[string]*rsa.PrivateKey // published, by kid
	jwksURI    string                     // "" means srv.URL + "/jwks"
	discIssuer string                     // "" means srv.URL
	down       bool                       // answer 503
	jwksHits   atomic.Int32
}

func newKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func newIssuer(t *testing.T) *testIssuer {
	t.Helper()
	is := &testIssuer{keys: map[string]*rsa.PrivateKey{"k1": newKey(t)}}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		is.mu.Lock()
		defer is.mu.Unlock()
		if is.down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		iss, jwks := is.discIssuer, is.jwksURI
		if iss == "" {
			iss = is.srv.URL
		}
		if jwks == "" {
			jwks = is.srv.URL + "/jwks"
		}
		json.NewEncoder(w).Encode(map[string]any{"issuer": iss, "jwks_uri": jwks})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		is.jwksHits.Add(1)
		is.mu.Lock()
		defer is.mu.Unlock()
		if is.down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		var set jose.JSONWebKeySet
		for kid, k := range is.keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.PublicKey, KeyID: kid, Algorithm: "RS256", Use: "sig"})
		}
		json.NewEncoder(w).Encode(set)
	})
	is.srv = httptest.NewServer(mux)
	t.Cleanup(is.srv.Close)
	return is
}

func (is *testIssuer) set(f func(is *testIssuer)) {
	is.mu.Lock()
	defer is.mu.Unlock()
	f(is)
}

func (is *testIssuer) key(kid string) *rsa.PrivateKey {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.keys[kid]
}

func sign(t *testing.T, key any, kid string, alg jose.SignatureAlgorithm, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", kid).WithType("JWT"))
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

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const sub = "system:serviceaccount:billing:api"

func claimsAt(iss string, now time.Time, mut func(c map[string]any)) map[string]any {
	c := map[string]any{"iss": iss, "sub": sub, "aud": "keyguard", "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()}
	if mut != nil {
		mut(c)
	}
	return c
}

func TestVerify(t *testing.T) {
	is := newIssuer(t)
	other := newKey(t)
	now := time.Now()
	v, err := oidcauth.New([]string{is.srv.URL}, "keyguard", oidcauth.WithHTTPClient(is.srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	claims := func(mut func(c map[string]any)) map[string]any { return claimsAt(is.srv.URL, now, mut) }
	unsigned := func(c map[string]any) string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
		b, _ := json.Marshal(c)
		return h + "." + base64.RawURLEncoding.EncodeToString(b) + "."
	}
	k1 := is.key("k1")
	tests := []struct {
		name  string
		token string
		want  string
	}{
		{"allow/valid", sign(t, k1, "k1", jose.RS256, claims(nil)), is.srv.URL + "#" + sub},
		{"allow/audience-list", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { c["aud"] = []string{"broker", "keyguard"} })), is.srv.URL + "#" + sub},
		{"allow/no-kid", sign(t, k1, "", jose.RS256, claims(nil)), is.srv.URL + "#" + sub},
		{"deny/wrong-audience", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { c["aud"] = "broker" })), ""},
		{"deny/expired", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { c["exp"] = now.Add(-2 * time.Minute).Unix() })), ""},
		{"deny/no-exp", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { delete(c, "exp") })), ""},
		{"deny/not-yet-valid", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { c["nbf"] = now.Add(10 * time.Minute).Unix() })), ""},
		{"deny/issued-in-future", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { c["iat"] = now.Add(10 * time.Minute).Unix() })), ""},
		{"deny/untrusted-issuer", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { c["iss"] = "https://evil.example" })), ""},
		{"deny/issuer-prefix", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { c["iss"] = is.srv.URL + ".evil.example" })), ""},
		{"deny/issuer-trailing-slash", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { c["iss"] = is.srv.URL + "/" })), ""},
		{"deny/other-key", sign(t, other, "k1", jose.RS256, claims(nil)), ""},
		{"deny/alg-none", unsigned(claims(nil)), ""},
		{"deny/hmac-with-public-key", sign(t, []byte("public key bytes as an HMAC secret, 32+"), "k1", jose.HS256, claims(nil)), ""},
		{"deny/no-sub", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { delete(c, "sub") })), ""},
		{"deny/sub-control-characters", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { c["sub"] = "app\nforged log line" })), ""},
		{"deny/sub-too-long", sign(t, k1, "k1", jose.RS256, claims(func(c map[string]any) { c["sub"] = strings.Repeat("a", oidcauth.MaxSubjectBytes+1) })), ""},
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
		{"http-loopback-prefix-of-other-host", []string{"http://127.0.0.1.evil.example"}, "keyguard"},
		{"http-loopback-prefix-with-port", []string{"http://127.0.0.1.evil.example:8080/x"}, "keyguard"},
		{"http-localhost-prefix", []string{"http://localhost.evil.example"}, "keyguard"},
		{"http-user-info-loopback", []string{"http://127.0.0.1@evil.example"}, "keyguard"},
		{"user-info", []string{"https://user@issuer.example"}, "keyguard"},
		{"query", []string{"https://issuer.example/?tenant=x"}, "keyguard"},
		{"fragment", []string{"https://issuer.example/#x"}, "keyguard"},
		{"not-canonical", []string{"HTTPS://issuer.example"}, "keyguard"},
		{"relative", []string{"issuer.example"}, "keyguard"},
		{"other-scheme", []string{"ftp://issuer.example"}, "keyguard"},
		{"twice", []string{"https://issuer.example", "https://issuer.example"}, "keyguard"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := oidcauth.New(tc.issuers, tc.audience); err == nil {
				t.Fatal("New succeeded")
			}
		})
	}
	for _, ok := range []string{"https://token.actions.githubusercontent.com", "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC", "http://127.0.0.1:8080", "http://127.0.0.2", "http://[::1]:9000", "http://localhost:5556/dex"} {
		t.Run("accept/"+ok, func(t *testing.T) {
			if _, err := oidcauth.New([]string{ok}, "keyguard"); err != nil {
				t.Fatalf("New: %v", err)
			}
		})
	}
}

// TestIssuerOrigins checks what the verifier fetches: the discovery
// document must name the issuer exactly, the JWKS must be https or on the
// issuer's own origin, and redirects are not followed. Each refusal is
// ErrIssuerUnavailable: the token may be fine, the issuer is not.
func TestIssuerOrigins(t *testing.T) {
	elsewhere := newIssuer(t) // another origin over plain http
	tests := []struct {
		name string
		mut  func(is *testIssuer)
	}{
		{"issuer-mismatch", func(is *testIssuer) { is.discIssuer = is.srv.URL + "/other" }},
		{"jwks-on-other-http-origin", func(is *testIssuer) { is.jwksURI = elsewhere.srv.URL + "/jwks" }},
		{"jwks-relative", func(is *testIssuer) { is.jwksURI = "/jwks" }},
		{"jwks-user-info", func(is *testIssuer) { is.jwksURI = strings.Replace(is.srv.URL, "http://", "http://u:p@", 1) + "/jwks" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			is := newIssuer(t)
			is.set(tc.mut)
			v, err := oidcauth.New([]string{is.srv.URL}, "keyguard", oidcauth.WithHTTPClient(is.srv.Client()))
			if err != nil {
				t.Fatal(err)
			}
			_, err = v.Verify(context.Background(), sign(t, is.key("k1"), "k1", jose.RS256, claimsAt(is.srv.URL, time.Now(), nil)))
			if !errors.Is(err, oidcauth.ErrIssuerUnavailable) {
				t.Fatalf("Verify = %v, want ErrIssuerUnavailable", err)
			}
		})
	}

	t.Run("redirect-not-followed", func(t *testing.T) {
		target := newIssuer(t)
		redirect := httptest.NewServer(http.RedirectHandler(target.srv.URL+"/.well-known/openid-configuration", http.StatusFound))
		t.Cleanup(redirect.Close)
		target.set(func(is *testIssuer) { is.discIssuer = redirect.URL })
		v, err := oidcauth.New([]string{redirect.URL}, "keyguard") // the default client
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Verify(context.Background(), sign(t, target.key("k1"), "k1", jose.RS256, claimsAt(redirect.URL, time.Now(), nil)))
		if !errors.Is(err, oidcauth.ErrIssuerUnavailable) {
			t.Fatalf("Verify = %v, want ErrIssuerUnavailable", err)
		}
	})

	t.Run("jwks-on-https-elsewhere-is-fine", func(t *testing.T) {
		is := newIssuer(t)
		tlsJWKS := httptest.NewTLSServer(is.srv.Config.Handler)
		t.Cleanup(tlsJWKS.Close)
		is.set(func(x *testIssuer) { x.jwksURI = tlsJWKS.URL + "/jwks" })
		// The TLS server's client trusts it and speaks plain http too.
		v, err := oidcauth.New([]string{is.srv.URL}, "keyguard", oidcauth.WithHTTPClient(tlsJWKS.Client()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(context.Background(), sign(t, is.key("k1"), "k1", jose.RS256, claimsAt(is.srv.URL, time.Now(), nil))); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	})
}

// TestFetchesAreBounded checks that a hanging or flooding issuer cannot
// hold or exhaust keyguard: the fetch ends at its timeout, a cancelled
// request returns at once, and oversized documents are refused.
func TestFetchesAreBounded(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); hang.Close() })
	key := newKey(t)
	token := func(iss string) string { return sign(t, key, "k1", jose.RS256, claimsAt(iss, time.Now(), nil)) }

	t.Run("hanging-issuer-times-out", func(t *testing.T) {
		v, err := oidcauth.New([]string{hang.URL}, "keyguard", oidcauth.WithFetchTimeout(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(context.Background(), token(hang.URL)); !errors.Is(err, oidcauth.ErrIssuerUnavailable) {
			t.Fatalf("Verify = %v, want ErrIssuerUnavailable", err)
		}
	})
	t.Run("cancelled-request-returns", func(t *testing.T) {
		v, err := oidcauth.New([]string{hang.URL}, "keyguard", oidcauth.WithFetchTimeout(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { _, err := v.Verify(ctx, token(hang.URL)); errc <- err }()
		cancel()
		if err := <-errc; !errors.Is(err, oidcauth.ErrIssuerUnavailable) {
			t.Fatalf("Verify = %v, want ErrIssuerUnavailable", err)
		}
	})
	t.Run("oversized-jwks", func(t *testing.T) {
		var srv *httptest.Server
		srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/jwks" {
				w.Write([]byte(`{"keys":[`))
				w.Write([]byte(strings.Repeat(" ", 1<<20)))
				w.Write([]byte(`]}`))
				return
			}
			json.NewEncoder(w).Encode(map[string]any{"issuer": srv.URL, "jwks_uri": srv.URL + "/jwks"})
		}))
		t.Cleanup(srv.Close)
		v, err := oidcauth.New([]string{srv.URL}, "keyguard")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(context.Background(), token(srv.URL)); !errors.Is(err, oidcauth.ErrIssuerUnavailable) {
			t.Fatalf("Verify = %v, want ErrIssuerUnavailable", err)
		}
	})
}

// TestKeyLifetime checks key rotation and outages with an injected clock:
// a new key id is fetched when a token names it, and then a withdrawn key
// stops verifying; unknown key ids cause at most one fetch per minimum
// interval; a key replaced under the same id verifies after one refresh;
// keys older than their maximum age are fetched again; an unreachable
// issuer's last keys verify within the grace and not after it.
func TestKeyLifetime(t *testing.T) {
	const maxAge, grace, minRefresh = 10 * time.Minute, 30 * time.Minute, time.Minute
	is := newIssuer(t)
	clk := &clock{t: time.Now()}
	v, err := oidcauth.New([]string{is.srv.URL}, "keyguard", oidcauth.WithHTTPClient(is.srv.Client()),
		oidcauth.WithClock(clk.now), oidcauth.WithKeyLifetime(maxAge, grace, minRefresh))
	if err != nil {
		t.Fatal(err)
	}
	verify := func(key *rsa.PrivateKey, kid string) error {
		_, err := v.Verify(context.Background(), sign(t, key, kid, jose.RS256, claimsAt(is.srv.URL, clk.now(), nil)))
		return err
	}
	k1 := is.key("k1")
	if err := verify(k1, "k1"); err != nil {
		t.Fatalf("k1: %v", err)
	}

	// Rotation: k2 appears and k1 is withdrawn.
	k2 := newKey(t)
	is.set(func(is *testIssuer) { is.keys = map[string]*rsa.PrivateKey{"k2": k2} })
	clk.advance(minRefresh)
	if err := verify(k2, "k2"); err != nil {
		t.Fatalf("new kid k2 right after rotation: %v", err)
	}
	if err := verify(k1, "k1"); !errors.Is(err, oidcauth.ErrInvalidToken) {
		t.Fatalf("withdrawn k1 after a refresh: %v, want ErrInvalidToken", err)
	}

	// Unknown kids: the fetch above is recent, so none of these fetches.
	hits := is.jwksHits.Load()
	stranger := newKey(t)
	for i := range 50 {
		if err := verify(stranger, fmt.Sprintf("random-%d", i)); !errors.Is(err, oidcauth.ErrInvalidToken) {
			t.Fatalf("unknown kid: %v, want ErrInvalidToken", err)
		}
	}
	if got := is.jwksHits.Load() - hits; got != 0 {
		t.Errorf("unknown kids caused %d fetches within the minimum refresh interval, want 0", got)
	}
	clk.advance(minRefresh)
	_ = verify(stranger, "random-a")
	_ = verify(stranger, "random-b")
	if got := is.jwksHits.Load() - hits; got != 1 {
		t.Errorf("unknown kids after the interval caused %d fetches, want 1", got)
	}

	// Same-kid rotation: k2's key material changes under the same kid;
	// the first token that k2's cached key does not verify refreshes.
	k2b := newKey(t)
	is.set(func(is *testIssuer) { is.keys = map[string]*rsa.PrivateKey{"k2": k2b} })
	clk.advance(minRefresh)
	if err := verify(k2b, "k2"); err != nil {
		t.Fatalf("same-kid rotation: %v", err)
	}
	if err := verify(k2, "k2"); !errors.Is(err, oidcauth.ErrInvalidToken) {
		t.Fatalf("replaced key under the same kid: %v, want ErrInvalidToken", err)
	}

	// Age: keys older than the maximum age are fetched again even when
	// every token verifies with them.
	hits = is.jwksHits.Load()
	clk.advance(maxAge)
	if err := verify(k2b, "k2"); err != nil {
		t.Fatalf("after max age: %v", err)
	}
	if got := is.jwksHits.Load() - hits; got != 1 {
		t.Errorf("%d fetches once the keys passed their maximum age, want 1", got)
	}

	// Outage: within the grace the last keys verify, after it nothing does.
	is.set(func(is *testIssuer) { is.down = true })
	clk.advance(maxAge + grace/2)
	if err := verify(k2b, "k2"); err != nil {
		t.Fatalf("issuer down, keys within grace: %v", err)
	}
	clk.advance(grace)
	if err := verify(k2b, "k2"); !errors.Is(err, oidcauth.ErrIssuerUnavailable) {
		t.Fatalf("issuer down past the grace: %v, want ErrIssuerUnavailable", err)
	}
	// Back up: verifies again once the next fetch is allowed.
	is.set(func(is *testIssuer) { is.down = false })
	clk.advance(minRefresh)
	if err := verify(k2b, "k2"); err != nil {
		t.Fatalf("issuer back: %v", err)
	}
}

// TestConcurrentFirstUse checks many first verifications share one fetch.
func TestConcurrentFirstUse(t *testing.T) {
	is := newIssuer(t)
	v, err := oidcauth.New([]string{is.srv.URL}, "keyguard", oidcauth.WithHTTPClient(is.srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, is.key("k1"), "k1", jose.RS256, claimsAt(is.srv.URL, time.Now(), nil))
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			_, err := v.Verify(context.Background(), tok)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	if got := is.jwksHits.Load(); got != 1 {
		t.Errorf("%d JWKS fetches for 32 concurrent first uses, want 1", got)
	}
}
