package oidc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
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
	// StrictAudience requires `aud` to hold exactly one value: a token
	// minted for several relying parties is refused.
	StrictAudience bool
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

// WithKeyRefreshCooldown sets the least time between two JWKS fetches of
// one issuer that the refresh schedule did not ask for (default
// DefaultKeyRefreshCooldown); see KeyLifetime.Cooldown.
func WithKeyRefreshCooldown(d time.Duration) Option {
	return func(v *Verifier) { v.lifetime.Cooldown = d }
}

// WithKeyLifetime sets how long issuers' keys are trusted (default
// DefaultKeyLifetime).
func WithKeyLifetime(l KeyLifetime) Option { return func(v *Verifier) { v.lifetime = l } }

// Verifier verifies ID tokens from a fixed set of issuers. Providers are
// discovered lazily, on the first token from each issuer, so the broker
// can start before its issuers are reachable. It is safe for concurrent
// use.
type Verifier struct {
	client   *http.Client
	now      func() time.Time
	retry    time.Duration
	lifetime KeyLifetime
	issuers  map[string]*issuer
	observe  atomic.Pointer[func(context.Context, KeyEvent)]
}

// issuer is a configured issuer and its lazily discovered verifier.
type issuer struct {
	cfg       IssuerConfig
	algs      []string
	mu        sync.Mutex
	keys      *keySet
	lastError time.Time
}

var allowedAlgorithms = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"EdDSA": true,
}

// NewVerifier checks the issuer configurations and returns a Verifier.
// It makes no network call; ctx is unused and kept for symmetry with the
// other constructors.
func NewVerifier(ctx context.Context, issuers []IssuerConfig, opts ...Option) (*Verifier, error) {
	v := &Verifier{
		client:   &http.Client{Timeout: 10 * time.Second},
		now:      time.Now,
		retry:    5 * time.Second,
		lifetime: DefaultKeyLifetime,
		issuers:  make(map[string]*issuer, len(issuers)),
	}
	for _, opt := range opts {
		opt(v)
	}
	if err := v.lifetime.Validate(); err != nil {
		return nil, fmt.Errorf("oidc: %w", err)
	}
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

// OnKeyEvent sets the function told about changes in issuers' keys
// (rotations, withdrawals, outages), for the audit log. It is called on
// the goroutine of the request that noticed, or of the fetch; a nil f
// stops the reports.
func (v *Verifier) OnKeyEvent(f func(ctx context.Context, ev KeyEvent)) {
	var fp *func(context.Context, KeyEvent)
	if f != nil {
		fp = &f
	}
	v.observe.Store(fp)
	for _, is := range v.issuers {
		is.mu.Lock()
		if is.keys != nil {
			is.keys.observe.Store(fp)
		}
		is.mu.Unlock()
	}
}

// RefreshKeys refetches now, whatever the schedule, the keys of every
// issuer already in use (the others are fetched on their first token),
// so that a reload drops withdrawn keys at once. A failure keeps the
// cached keys (within the grace) and is returned, joined per issuer.
func (v *Verifier) RefreshKeys(ctx context.Context) error {
	var errs []error
	for _, url := range slices.Sorted(maps.Keys(v.issuers)) {
		is := v.issuers[url]
		is.mu.Lock()
		ks := is.keys
		is.mu.Unlock()
		if ks == nil {
			continue
		}
		if _, err := ks.refresh(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// AdoptKeys makes v share old's discovered key sets for the issuers both
// trust, so a policy reload keeps the cached keys (and their grace)
// instead of starting empty. Call it before v verifies anything.
func (v *Verifier) AdoptKeys(old *Verifier) {
	if old == nil || old == v {
		return
	}
	for url, is := range v.issuers {
		o, ok := old.issuers[url]
		if !ok {
			continue
		}
		o.mu.Lock()
		ks := o.keys
		o.mu.Unlock()
		if ks == nil || ks.lifetime != v.lifetime {
			continue
		}
		is.mu.Lock()
		if is.keys == nil {
			ks.observe.Store(v.observe.Load())
			is.keys = ks
		}
		is.mu.Unlock()
	}
}

// Verify checks rawToken and returns its claims. Failures wrap
// ErrUnauthenticated; a configured issuer whose discovery document or
// keys cannot be fetched (past the grace of the cached keys) gives
// ErrIssuerUnavailable; a cancelled ctx gives ctx.Err().
//
// The token is parsed once: the compact JWS, then its payload (which
// only selects the configured issuer until the signature is checked),
// then the signature with the issuer's keys and algorithms.
func (v *Verifier) Verify(ctx context.Context, rawToken string) (*Claims, error) {
	if len(rawToken) > MaxTokenBytes {
		return nil, failf("token exceeds %d bytes", MaxTokenBytes)
	}
	jws, raw, iss, err := parseUnverified(rawToken)
	if err != nil {
		return nil, err
	}
	is, ok := v.issuers[iss]
	if !ok {
		return nil, failf("unknown issuer %q", truncate(iss, 200))
	}
	alg := jws.Signatures[0].Header.Algorithm
	if !slices.Contains(is.algs, alg) {
		return nil, failf("alg: %q not accepted from this issuer", truncate(alg, 20))
	}
	keys, err := v.keysFor(ctx, is)
	if err != nil {
		return nil, err
	}
	if err := keys.verify(ctx, jws); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, ErrIssuerUnavailable) {
			return nil, err
		}
		return nil, &VerificationError{Cause: err}
	}
	c := &Claims{Issuer: iss, Raw: raw}
	c.Subject, _ = raw["sub"].(string)
	switch aud := raw["aud"].(type) {
	case string:
		c.Audience = []string{aud}
	case []any:
		for _, a := range aud {
			s, ok := a.(string)
			if !ok {
				return nil, failf("aud: not a string or a list of strings")
			}
			c.Audience = append(c.Audience, s)
		}
	case nil:
	default:
		return nil, failf("aud: not a string or a list of strings")
	}
	if err := v.checkClaims(is.cfg, c); err != nil {
		return nil, err
	}
	return c, nil
}

// allAlgorithms are the algorithms the parser accepts at all; each issuer
// narrows them.
var allAlgorithms = func() []jose.SignatureAlgorithm {
	var out []jose.SignatureAlgorithm
	for a := range allowedAlgorithms {
		out = append(out, jose.SignatureAlgorithm(a))
	}
	slices.Sort(out)
	return out
}()

// checkClaims checks what go-oidc is told to skip: the audience against a
// list, and the times with our leeway and clock.
func (v *Verifier) checkClaims(cfg IssuerConfig, c *Claims) error {
	if c.Subject == "" {
		return failf("sub: missing")
	}
	if !slices.ContainsFunc(c.Audience, func(a string) bool { return slices.Contains(cfg.Audiences, a) }) {
		return failf("aud: %q not among the accepted audiences", truncate(strings.Join(c.Audience, ","), 200))
	}
	if cfg.StrictAudience && len(c.Audience) != 1 {
		return failf("aud: %d audiences, strict mode accepts exactly one", len(c.Audience))
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

// keysFor returns the issuer's key set, discovering the provider (for
// its jwks_uri) on first use.
func (v *Verifier) keysFor(ctx context.Context, is *issuer) (*keySet, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.keys != nil {
		return is.keys, nil
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
	var meta struct {
		JWKSURL string `json:"jwks_uri"`
	}
	if err := p.Claims(&meta); err != nil || meta.JWKSURL == "" {
		is.lastError = v.now()
		return nil, fmt.Errorf("%w: %s: discovery document has no jwks_uri", ErrIssuerUnavailable, is.cfg.URL)
	}
	is.keys = &keySet{issuer: is.cfg.URL, url: meta.JWKSURL, client: v.client, lifetime: v.lifetime, now: v.now}
	is.keys.observe.Store(v.observe.Load())
	return is.keys, nil
}

// parseUnverified parses a compact JWS and its payload without trusting
// either: the payload's `iss` only selects which configured issuer
// verifies the token.
func parseUnverified(rawToken string) (*jose.JSONWebSignature, map[string]any, string, error) {
	if n := strings.Count(rawToken, "."); n != 2 {
		return nil, nil, "", failf("malformed token: want 3 dot-separated parts, got %d", n+1)
	}
	jws, err := jose.ParseSignedCompact(rawToken, allAlgorithms)
	if err != nil {
		return nil, nil, "", failf("malformed token: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, nil, "", failf("malformed token: want one signature")
	}
	raw, err := decodeObject(jws.UnsafePayloadWithoutVerification())
	if err != nil {
		return nil, nil, "", failf("malformed token payload: %v", err)
	}
	iss, ok := raw["iss"].(string)
	if !ok || iss == "" {
		return nil, nil, "", failf("iss: missing or not a string")
	}
	return jws, raw, iss, nil
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
