// Package oidcauth verifies the OIDC bearer tokens keyguard callers may
// present instead of a client certificate identity (a Kubernetes service
// account token, a CI job's token): signature by the issuer's published
// keys (discovery and JWKS through github.com/coreos/go-oidc), issuer in the
// configured list, audience, expiry. The verified caller is
// "<issuer>#<sub>", the principal grants name.
package oidcauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

// MaxTokenBytes bounds the tokens Verify looks at.
const MaxTokenBytes = 16 << 10

// ErrInvalidToken is every verification failure; the cause is wrapped for
// the log, never shown to the caller.
var ErrInvalidToken = errors.New("invalid bearer token")

// Verifier verifies tokens of a fixed set of issuers for one audience. It
// is safe for concurrent use. Each issuer's discovery document is fetched
// on its first token (and retried on the next token if that failed), so
// keyguard starts while an issuer is down.
type Verifier struct {
	audience string
	client   *http.Client
	issuers  map[string]*issuer
	now      func() time.Time
}

type issuer struct {
	url string
	mu  sync.Mutex
	v   *oidc.IDTokenVerifier
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithHTTPClient sets the client for discovery and JWKS (tests pass the
// httptest server's client).
func WithHTTPClient(c *http.Client) Option { return func(v *Verifier) { v.client = c } }

// WithClock sets the clock for expiry checks.
func WithClock(now func() time.Time) Option { return func(v *Verifier) { v.now = now } }

// New returns a verifier accepting tokens from issuers (exact issuer URLs)
// for audience.
func New(issuers []string, audience string, opts ...Option) (*Verifier, error) {
	if audience == "" {
		return nil, errors.New("oidcauth: audience required")
	}
	v := &Verifier{audience: audience, client: http.DefaultClient, issuers: map[string]*issuer{}, now: time.Now}
	for i, u := range issuers {
		if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://127.0.0.1") && !strings.HasPrefix(u, "http://localhost") {
			return nil, fmt.Errorf("oidcauth: issuers[%d] %q: must be https (or http on loopback for development)", i, u)
		}
		v.issuers[u] = &issuer{url: u}
	}
	for _, o := range opts {
		o(v)
	}
	return v, nil
}

// unverifiedIssuer reads the iss claim without checking anything, only to
// pick the issuer whose keys then verify the token.
func unverifiedIssuer(raw string) (string, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return "", errors.New("not a JWS compact token")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", fmt.Errorf("payload: %w", err)
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return "", fmt.Errorf("payload: %w", err)
	}
	return c.Iss, nil
}

func (v *Verifier) verifier(ctx context.Context, is *issuer) (*oidc.IDTokenVerifier, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.v != nil {
		return is.v, nil
	}
	// The provider's key set outlives this request: give it a context that
	// is not cancelled with it, carrying only the HTTP client.
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, v.client), is.url)
	if err != nil {
		return nil, fmt.Errorf("discovery of %s: %w", is.url, err)
	}
	var claims struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := p.Claims(&claims); err != nil || claims.JWKSURI == "" {
		return nil, fmt.Errorf("discovery of %s: no jwks_uri", is.url)
	}
	keyCtx := oidc.ClientContext(context.Background(), v.client)
	// Asymmetric algorithms only: never "none", never HMAC with a public key.
	is.v = oidc.NewVerifier(is.url, oidc.NewRemoteKeySet(keyCtx, claims.JWKSURI), &oidc.Config{
		ClientID: v.audience, Now: v.now,
		SupportedSigningAlgs: []string{oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512, oidc.PS256, oidc.EdDSA},
	})
	return is.v, nil
}

// Verify checks raw and returns the caller's principal "<issuer>#<sub>".
// Every failure wraps ErrInvalidToken.
func (v *Verifier) Verify(ctx context.Context, raw string) (string, error) {
	if len(raw) > MaxTokenBytes {
		return "", fmt.Errorf("%w: larger than %d bytes", ErrInvalidToken, MaxTokenBytes)
	}
	iss, err := unverifiedIssuer(raw)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	is := v.issuers[iss]
	if is == nil {
		return "", fmt.Errorf("%w: issuer not trusted", ErrInvalidToken)
	}
	iv, err := v.verifier(ctx, is)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	tok, err := iv.Verify(oidc.ClientContext(ctx, v.client), raw)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if tok.Subject == "" {
		return "", fmt.Errorf("%w: no sub claim", ErrInvalidToken)
	}
	return tok.Issuer + "#" + tok.Subject, nil
}
