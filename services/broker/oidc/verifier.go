package oidc

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
)

// IssuerConfig is one trusted token issuer.
type IssuerConfig struct {
	// URL is the issuer URL, exactly as it appears in `iss` (for GitHub
	// Actions "https://token.actions.githubusercontent.com"). It must be
	// https, or http on a loopback host (the development issuer).
	URL string
	// Audiences accepted in `aud`; at least one must be present in the
	// token. Required: an issuer such as GitHub mints tokens for anyone,
	// and the audience is what says the token was meant for us.
	Audiences []string
	// Algorithms accepted for the signature; empty means
	// DefaultAlgorithms. "none" and the HMAC algorithms are refused: the
	// keys come from a public JWKS.
	Algorithms []string
	// Leeway is the clock skew tolerated on exp, nbf and iat; 0 means
	// DefaultLeeway, at most MaxLeeway.
	Leeway time.Duration
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithHTTPClient sets the client used for discovery and JWKS requests.
// The default has a 10 second timeout.
func WithHTTPClient(c *http.Client) Option { return func(v *Verifier) { v.client = c } }

// WithClock replaces time.Now for the exp, nbf and iat checks.
func WithClock(now func() time.Time) Option { return func(v *Verifier) { v.now = now } }

// WithDiscoveryRetry sets how long after a failed discovery the issuer is
// reported unavailable without trying again (default 5 seconds), so that
// a burst of requests does not hammer an issuer that is down.
func WithDiscoveryRetry(d time.Duration) Option { return func(v *Verifier) { v.retry = d } }

// Verifier verifies ID tokens from a fixed set of issuers. Providers are
// discovered lazily, on the first token from each issuer, so the broker
// can start before its issuers are reachable. It is safe for concurrent
// use.
type Verifier struct {
	client  *http.Client
	now     func() time.Time
	retry   time.Duration
	base    context.Context
	issuers map[string]*issuer
}

// issuer is a configured issuer and its lazily discovered verifier.
type issuer struct {
	cfg       IssuerConfig
	algs      []string
	mu        sync.Mutex
	verifier  *gooidc.IDTokenVerifier
	lastError time.Time
}

var allowedAlgorithms = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"EdDSA": true,
}

// NewVerifier checks the issuer configurations and returns a Verifier.
// It makes no network call; ctx only carries values (not cancellation)
// into the background JWKS fetches.
func NewVerifier(ctx context.Context, issuers []IssuerConfig, opts ...Option) (*Verifier, error) {
	v := &Verifier{
		client:  &http.Client{Timeout: 10 * time.Second},
		now:     time.Now,
		retry:   5 * time.Second,
		issuers: make(map[string]*issuer, len(issuers)),
	}
	for _, opt := range opts {
		opt(v)
	}
	v.base = gooidc.ClientContext(context.WithoutCancel(ctx), v.client)
	if len(issuers) == 0 {
		return nil, errors.New("oidc: at least one issuer is required")
	}
	for i, cfg := range issuers {
		iss, err := newIssuer(cfg)
		if err != nil {
			return nil, fmt.Errorf("oidc: issuers[%d]: %w", i, err)
		}
		if _, dup := v.issuers[cfg.URL]; dup {
			return nil, fmt.Errorf("oidc: issuers[%d]: duplicate issuer %q", i, cfg.URL)
		}
		v.issuers[cfg.URL] = iss
	}
	return v, nil
}

func newIssuer(cfg IssuerConfig) (*issuer, error) {
	if err := checkIssuerURL(cfg.URL); err != nil {
		return nil, err
	}
	if len(cfg.Audiences) == 0 {
		return nil, errors.New("audiences: at least one is required")
	}
	for j, a := range cfg.Audiences {
		if a == "" {
			return nil, fmt.Errorf("audiences[%d]: empty", j)
		}
	}
	algs := cfg.Algorithms
	if len(algs) == 0 {
		algs = DefaultAlgorithms
	}
	for j, a := range algs {
		if !allowedAlgorithms[a] {
			return nil, fmt.Errorf("algorithms[%d]: %q not allowed (asymmetric JWS algorithms only)", j, a)
		}
	}
	switch {
	case cfg.Leeway < 0 || cfg.Leeway > MaxLeeway:
		return nil, fmt.Errorf("leeway: must be between 0 and %s", MaxLeeway)
	case cfg.Leeway == 0:
		cfg.Leeway = DefaultLeeway
	}
	cfg.Audiences = slices.Clone(cfg.Audiences)
	return &issuer{cfg: cfg, algs: slices.Clone(algs)}, nil
}

func checkIssuerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("url: %q is not an absolute issuer URL", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
		return fmt.Errorf("url: %q: http is only allowed on loopback", raw)
	default:
		return fmt.Errorf("url: %q: scheme must be https", raw)
	}
}

// Verify checks rawToken and returns its claims. Failures wrap
// ErrUnauthenticated; a configured issuer that cannot be discovered
// gives ErrIssuerUnavailable; a cancelled ctx gives ctx.Err().
func (v *Verifier) Verify(ctx context.Context, rawToken string) (*Claims, error) {
	if len(rawToken) > MaxTokenBytes {
		return nil, failf("token exceeds %d bytes", MaxTokenBytes)
	}
	iss, err := unverifiedIssuer(rawToken)
	if err != nil {
		return nil, err
	}
	is, ok := v.issuers[iss]
	if !ok {
		return nil, failf("unknown issuer %q", truncate(iss, 200))
	}
	verifier, err := v.verifierFor(ctx, is)
	if err != nil {
		return nil, err
	}
	tok, err := verifier.Verify(ctx, rawToken)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &VerificationError{Cause: err}
	}
	var payload json.RawMessage
	if err := tok.Claims(&payload); err != nil {
		return nil, failf("claims: %v", err)
	}
	raw, err := decodeObject(payload)
	if err != nil {
		return nil, failf("claims: %v", err)
	}
	c := &Claims{Issuer: tok.Issuer, Subject: tok.Subject, Audience: tok.Audience, Raw: raw}
	if err := v.checkClaims(is.cfg, c); err != nil {
		return nil, err
	}
	return c, nil
}

// checkClaims checks what go-oidc is told to skip: the audience against a
// list, and the times with our leeway and clock.
func (v *Verifier) checkClaims(cfg IssuerConfig, c *Claims) error {
	if c.Subject == "" {
		return failf("sub: missing")
	}
	if !slices.ContainsFunc(c.Audience, func(a string) bool { return slices.Contains(cfg.Audiences, a) }) {
		return failf("aud: %q not among the accepted audiences", truncate(strings.Join(c.Audience, ","), 200))
	}
	now := v.now()
	exp, ok, err := numericDate(c.Raw, "exp")
	switch {
	case err != nil:
		return failf("exp: %v", err)
	case !ok:
		return failf("exp: missing")
	case !now.Before(exp.Add(cfg.Leeway)):
		return failf("exp: token expired at %s", exp.UTC().Format(time.RFC3339))
	}
	c.Expiry = exp
	nbf, ok, err := numericDate(c.Raw, "nbf")
	switch {
	case err != nil:
		return failf("nbf: %v", err)
	case ok && now.Add(cfg.Leeway).Before(nbf):
		return failf("nbf: token not valid before %s", nbf.UTC().Format(time.RFC3339))
	}
	iat, ok, err := numericDate(c.Raw, "iat")
	switch {
	case err != nil:
		return failf("iat: %v", err)
	case ok && now.Add(cfg.Leeway).Before(iat):
		return failf("iat: token issued in the future (%s)", iat.UTC().Format(time.RFC3339))
	}
	c.IssuedAt = iat
	return nil
}

// verifierFor returns the issuer's go-oidc verifier, discovering the
// provider on first use.
func (v *Verifier) verifierFor(ctx context.Context, is *issuer) (*gooidc.IDTokenVerifier, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.verifier != nil {
		return is.verifier, nil
	}
	if !is.lastError.IsZero() && v.now().Sub(is.lastError) < v.retry {
		return nil, fmt.Errorf("%w: %s: discovery failed recently", ErrIssuerUnavailable, is.cfg.URL)
	}
	p, err := gooidc.NewProvider(gooidc.ClientContext(ctx, v.client), is.cfg.URL)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		is.lastError = v.now()
		return nil, fmt.Errorf("%w: %s: %w", ErrIssuerUnavailable, is.cfg.URL, err)
	}
	is.verifier = p.VerifierContext(v.base, &gooidc.Config{
		SupportedSigningAlgs: is.algs,
		// Audience (a list) and times (our leeway and clock) are checked
		// in checkClaims.
		SkipClientIDCheck: true,
		SkipExpiryCheck:   true,
	})
	return is.verifier, nil
}

// unverifiedIssuer reads `iss` from a compact JWS without trusting it; it
// only selects which configured issuer verifies the token.
func unverifiedIssuer(raw string) (string, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return "", failf("malformed token: want 3 dot-separated parts, got %d", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", failf("malformed token payload: %v", err)
	}
	var body struct {
		Iss any `json:"iss"`
	}
	if err := json.Unmarshal(payload, &body); err != nil {
		return "", failf("malformed token payload: %v", err)
	}
	iss, ok := body.Iss.(string)
	if !ok || iss == "" {
		return "", failf("iss: missing or not a string")
	}
	return iss, nil
}

func decodeObject(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("not a JSON object")
	}
	return m, nil
}

// numericDate reads a JWT NumericDate claim (seconds, possibly fractional).
func numericDate(raw map[string]any, name string) (time.Time, bool, error) {
	v, ok := raw[name]
	if !ok || v == nil {
		return time.Time{}, false, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false, errors.New("not a number")
	}
	f, err := n.Float64()
	if err != nil {
		return time.Time{}, false, errors.New("not a number")
	}
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9)), true, nil
}

// truncate shortens untrusted text quoted in error causes.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
