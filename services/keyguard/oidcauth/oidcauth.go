// Package oidcauth verifies the OIDC bearer tokens keyguard callers present
// instead of a client certificate (a Kubernetes service-account token, a CI
// job's token): issuer in the configured list (exact string match, as
// OpenID Connect requires), signature by a key the issuer publishes
// (discovery, then its JWKS), asymmetric algorithms only, audience,
// expiry, not-before and issued-at within a small leeway. The verified
// caller is "<issuer>#<sub>", the principal grants name.
//
// Everything fetched from an issuer is bounded: every fetch runs under the
// requesting call's context (its values; not its cancellation, since other
// callers may wait on the same fetch) with a timeout, responses are size
// limited, redirects are not followed, and the JWKS must be served over
// https or from the issuer's own origin. Keys are refreshed when older than
// a maximum age, so a key the issuer withdrew stops verifying; a token
// naming an unknown key id triggers at most one refresh per interval; an
// issuer that cannot be reached makes Verify fail with ErrIssuerUnavailable
// once its last-known keys are past a bounded grace.
package oidcauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"
)

// Limits and defaults.
const (
	// MaxTokenBytes bounds the tokens Verify looks at.
	MaxTokenBytes = 16 << 10
	// MaxSubjectBytes bounds the sub claim that becomes part of a principal.
	MaxSubjectBytes = 512
	// DefaultFetchTimeout bounds one discovery plus JWKS fetch.
	DefaultFetchTimeout = 5 * time.Second
	// DefaultKeyMaxAge is how long fetched keys are used before they are
	// fetched again.
	DefaultKeyMaxAge = 15 * time.Minute
	// DefaultStaleGrace is how long past DefaultKeyMaxAge the last-known
	// keys still verify while the issuer cannot be reached.
	DefaultStaleGrace = time.Hour
	// DefaultMinRefresh is the least time between two fetches caused by
	// tokens naming unknown key ids.
	DefaultMinRefresh = 30 * time.Second
	// DefaultLeeway is the clock skew allowed on exp, nbf and iat.
	DefaultLeeway = time.Minute

	maxDiscoveryBytes = 64 << 10
	maxJWKSBytes      = 256 << 10
)

var (
	// ErrInvalidToken is every refusal of the token itself; the cause is
	// wrapped for the log, never shown to the caller.
	ErrInvalidToken = errors.New("invalid bearer token")
	// ErrIssuerUnavailable means the issuer's keys could not be fetched
	// (and no last-known keys within the grace period verify the token):
	// a retryable outage, not a verdict on the token.
	ErrIssuerUnavailable = errors.New("token issuer unavailable")
)

// allowedAlgs are the only signature algorithms accepted: asymmetric ones,
// never "none", never HMAC (which a public key would then sign).
var allowedAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// Verifier verifies tokens of a fixed set of issuers for one audience. It
// is safe for concurrent use. An issuer's keys are fetched on its first
// token (and again as described in the package comment), so keyguard
// starts while an issuer is down.
type Verifier struct {
	audience   string
	client     *http.Client
	timeout    time.Duration
	maxAge     time.Duration
	grace      time.Duration
	minRefresh time.Duration
	leeway     time.Duration
	now        func() time.Time
	issuers    map[string]*issuer
}

// issuer is one trusted issuer and its cached keys.
type issuer struct {
	url    string
	origin *url.URL

	mu        sync.Mutex
	keys      []jose.JSONWebKey
	fetched   time.Time // last successful fetch; zero: never
	attempted time.Time // last fetch started
	inflight  *fetchCall
}

// fetchCall is one fetch of an issuer's keys that several verifications
// may wait on.
type fetchCall struct {
	done chan struct{}
	keys []jose.JSONWebKey // set before done is closed
	err  error
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithHTTPClient sets the client for discovery and JWKS (tests pass the
// httptest server's client). Its redirect policy is replaced (redirects are
// never followed) and a missing timeout is set to the fetch timeout.
func WithHTTPClient(c *http.Client) Option { return func(v *Verifier) { v.client = c } }

// WithClock sets the clock for claim checks and key ages.
func WithClock(now func() time.Time) Option { return func(v *Verifier) { v.now = now } }

// WithFetchTimeout bounds one fetch of an issuer's discovery document and
// keys (DefaultFetchTimeout otherwise).
func WithFetchTimeout(d time.Duration) Option { return func(v *Verifier) { v.timeout = d } }

// WithKeyLifetime sets how long fetched keys are used before they are
// fetched again (maxAge), how long past that they still verify while the
// issuer is unreachable (grace), and the least time between fetches caused
// by unknown key ids (minRefresh).
func WithKeyLifetime(maxAge, grace, minRefresh time.Duration) Option {
	return func(v *Verifier) { v.maxAge, v.grace, v.minRefresh = maxAge, grace, minRefresh }
}

// New returns a verifier accepting tokens from issuers (exact issuer URLs:
// https, or http on a loopback host for development) for audience.
func New(issuers []string, audience string, opts ...Option) (*Verifier, error) {
	if audience == "" {
		return nil, errors.New("oidcauth: audience required")
	}
	v := &Verifier{
		audience: audience, issuers: map[string]*issuer{}, now: time.Now,
		timeout: DefaultFetchTimeout, maxAge: DefaultKeyMaxAge, grace: DefaultStaleGrace,
		minRefresh: DefaultMinRefresh, leeway: DefaultLeeway,
	}
	for _, o := range opts {
		o(v)
	}
	if v.timeout <= 0 || v.maxAge <= 0 || v.grace < 0 || v.minRefresh < 0 {
		return nil, errors.New("oidcauth: timeouts and key lifetimes must be positive")
	}
	for i, raw := range issuers {
		u, err := ParseIssuer(raw)
		if err != nil {
			return nil, fmt.Errorf("oidcauth: issuers[%d]: %w", i, err)
		}
		if v.issuers[raw] != nil {
			return nil, fmt.Errorf("oidcauth: issuers[%d] %q: listed twice", i, raw)
		}
		v.issuers[raw] = &issuer{url: raw, origin: u}
	}
	// Never http.DefaultClient: a copy with a timeout that follows no
	// redirect (a redirect could lead the fetch to another origin).
	var c http.Client
	if v.client != nil {
		c = *v.client
	}
	if c.Timeout == 0 {
		c.Timeout = v.timeout
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return errors.New("redirects are not followed") }
	v.client = &c
	return v, nil
}

// ParseIssuer parses an issuer URL and checks it is one keyguard may
// trust: https, or http only when the host is a loopback IP literal or
// "localhost" (compared on the parsed host, so http://127.0.0.1.evil.example
// is not loopback); no user info, query or fragment; written in canonical
// form, since tokens' iss claims are compared with it byte for byte.
func ParseIssuer(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q: not a URL", raw)
	}
	switch {
	case u.Opaque != "" || u.Host == "":
		return nil, fmt.Errorf("%q: not an absolute URL with a host", raw)
	case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("%q: must not carry user info, a query or a fragment", raw)
	case u.String() != raw:
		return nil, fmt.Errorf("%q: not in canonical form (want %q)", raw, u.String())
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !loopbackHost(u.Hostname()) {
			return nil, fmt.Errorf("%q: http is allowed only on a loopback host (127.0.0.1, ::1, localhost) for development; use https", raw)
		}
	default:
		return nil, fmt.Errorf("%q: scheme must be https", raw)
	}
	return u, nil
}

// loopbackHost reports whether host (without port or brackets) is a
// loopback IP literal or "localhost". Nothing is resolved.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// sameOrigin compares scheme, host and port, the port defaulted by scheme.
func sameOrigin(a, b *url.URL) bool {
	port := func(u *url.URL) string {
		if p := u.Port(); p != "" {
			return p
		}
		if u.Scheme == "https" {
			return "443"
		}
		return "80"
	}
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Hostname(), b.Hostname()) && port(a) == port(b)
}

// claims are the registered claims Verify checks.
type claims struct {
	Iss string       `json:"iss"`
	Sub string       `json:"sub"`
	Aud audience     `json:"aud"`
	Exp *numericDate `json:"exp"`
	Nbf *numericDate `json:"nbf"`
	Iat *numericDate `json:"iat"`
}

// audience is "aud": a string or an array of strings.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("aud: want a string or an array of strings")
	}
	*a = many
	return nil
}

// numericDate is a JWT NumericDate (seconds since the epoch, possibly
// fractional).
type numericDate struct{ time.Time }

func (d *numericDate) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return errors.New("want a number of seconds")
	}
	if f < 0 || f > 1<<40 {
		return errors.New("out of range")
	}
	d.Time = time.Unix(0, 0).Add(time.Duration(f * float64(time.Second)))
	return nil
}

// Verify checks raw and returns the caller's principal "<issuer>#<sub>".
// A refusal of the token wraps ErrInvalidToken; an issuer whose keys cannot
// be had wraps ErrIssuerUnavailable.
func (v *Verifier) Verify(ctx context.Context, raw string) (string, error) {
	if len(raw) > MaxTokenBytes {
		return "", fmt.Errorf("%w: larger than %d bytes", ErrInvalidToken, MaxTokenBytes)
	}
	jws, err := jose.ParseSignedCompact(raw, allowedAlgs) // a bearer JWT: compact serialisation only
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if len(jws.Signatures) != 1 {
		return "", fmt.Errorf("%w: want exactly one signature", ErrInvalidToken)
	}
	// The issuer named by the unverified payload only picks whose keys
	// verify it; the claims are trusted after the signature checks.
	var c claims
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &c); err != nil {
		return "", fmt.Errorf("%w: claims: %v", ErrInvalidToken, err)
	}
	is := v.issuers[c.Iss]
	if is == nil {
		return "", fmt.Errorf("%w: issuer not trusted", ErrInvalidToken)
	}
	if err := v.verifySignature(ctx, is, jws); err != nil {
		return "", err
	}
	if err := v.checkClaims(c); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	return c.Iss + "#" + c.Sub, nil
}

// checkClaims checks audience, times and subject of verified claims.
func (v *Verifier) checkClaims(c claims) error {
	now := v.now()
	switch {
	case !containsString(c.Aud, v.audience):
		return errors.New("audience not accepted")
	case c.Exp == nil:
		return errors.New("no exp claim")
	case now.After(c.Exp.Add(v.leeway)):
		return errors.New("expired")
	case c.Nbf != nil && now.Add(v.leeway).Before(c.Nbf.Time):
		return errors.New("not valid yet (nbf)")
	case c.Iat != nil && now.Add(v.leeway).Before(c.Iat.Time):
		return errors.New("issued in the future (iat)")
	case c.Sub == "":
		return errors.New("no sub claim")
	case len(c.Sub) > MaxSubjectBytes || !utf8.ValidString(c.Sub) || strings.ContainsFunc(c.Sub, unicode.IsControl):
		return fmt.Errorf("sub claim: at most %d bytes of printable UTF-8", MaxSubjectBytes)
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// verifySignature verifies jws with the issuer's keys, fetching them when
// they are missing, older than the maximum age, do not know the token's
// key id, or know it but do not verify (the issuer may have replaced a key
// under the same id). Fetches caused by tokens happen at most once per
// minimum refresh interval; while the issuer is unreachable, the
// last-known keys verify within the grace period, and past it Verify
// fails with ErrIssuerUnavailable.
func (v *Verifier) verifySignature(ctx context.Context, is *issuer, jws *jose.JSONWebSignature) error {
	kid := jws.Signatures[0].Header.KeyID
	now := v.now()
	is.mu.Lock()
	keys, fetched := is.keys, is.fetched
	usable := !fetched.IsZero() && now.Sub(fetched) < v.maxAge+v.grace
	needFetch := fetched.IsZero() || now.Sub(fetched) >= v.maxAge || !hasKey(keys, kid)
	recentlyTried := !is.attempted.IsZero() && now.Sub(is.attempted) < v.minRefresh
	inflight := is.inflight != nil
	is.mu.Unlock()

	switch {
	case inflight:
		// Wait for the fetch under way.
	case !needFetch:
		err := verifyWith(keys, jws)
		if err == nil || recentlyTried {
			return err
		}
	case recentlyTried:
		if !usable {
			return fmt.Errorf("%w: no current keys and the last fetch failed", ErrIssuerUnavailable)
		}
		return verifyWith(keys, jws)
	}
	call := v.startFetch(ctx, is, now)
	select {
	case <-ctx.Done():
		return fmt.Errorf("%w: waiting for the issuer's keys: %v", ErrIssuerUnavailable, ctx.Err())
	case <-call.done:
	}
	if call.err == nil {
		return verifyWith(call.keys, jws)
	}
	if usable {
		return verifyWith(keys, jws)
	}
	return fmt.Errorf("%w: %v", ErrIssuerUnavailable, call.err)
}

// startFetch returns the fetch of is's keys under way, starting one if
// there is none. The fetch may outlive the request that started it when
// others wait on it: it keeps the request's values (trace) but not its
// cancellation, and is bounded by the fetch timeout.
func (v *Verifier) startFetch(ctx context.Context, is *issuer, now time.Time) *fetchCall {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.inflight != nil {
		return is.inflight
	}
	call := &fetchCall{done: make(chan struct{})}
	is.inflight, is.attempted = call, now
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.timeout)
	go func() {
		defer cancel()
		keys, err := v.fetchKeys(fctx, is)
		is.mu.Lock()
		call.keys, call.err = keys, err
		if err == nil {
			is.keys, is.fetched = keys, v.now()
		}
		is.inflight = nil
		is.mu.Unlock()
		close(call.done)
	}()
	return call
}

func hasKey(keys []jose.JSONWebKey, kid string) bool {
	for _, k := range keys {
		if kid == "" || k.KeyID == kid {
			return true
		}
	}
	return false
}

// verifyWith verifies jws with the first key that matches its key id and
// algorithm and is meant for signatures.
func verifyWith(keys []jose.JSONWebKey, jws *jose.JSONWebSignature) error {
	hdr := jws.Signatures[0].Header
	for _, k := range keys {
		if (hdr.KeyID != "" && k.KeyID != hdr.KeyID) || (k.Use != "" && k.Use != "sig") || (k.Algorithm != "" && k.Algorithm != hdr.Algorithm) || !k.IsPublic() {
			continue
		}
		if _, err := jws.Verify(k); err == nil {
			return nil
		}
	}
	return fmt.Errorf("%w: signature not verified by any of the issuer's keys", ErrInvalidToken)
}

// fetchKeys reads the issuer's discovery document, checks it names the
// issuer exactly and a JWKS on https or the issuer's own origin, and reads
// the key set.
func (v *Verifier) fetchKeys(ctx context.Context, is *issuer) ([]jose.JSONWebKey, error) {
	var disc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := v.getJSON(ctx, strings.TrimSuffix(is.url, "/")+"/.well-known/openid-configuration", maxDiscoveryBytes, &disc); err != nil {
		return nil, fmt.Errorf("discovery of %s: %w", is.url, err)
	}
	if disc.Issuer != is.url {
		return nil, fmt.Errorf("discovery of %s: document names issuer %q", is.url, disc.Issuer)
	}
	ju, err := url.Parse(disc.JWKSURI)
	switch {
	case err != nil || ju.Host == "" || ju.User != nil:
		return nil, fmt.Errorf("discovery of %s: jwks_uri is not an absolute URL", is.url)
	case ju.Scheme != "https" && !sameOrigin(ju, is.origin):
		return nil, fmt.Errorf("discovery of %s: jwks_uri must be https or on the issuer's own origin", is.url)
	}
	var set jose.JSONWebKeySet
	if err := v.getJSON(ctx, ju.String(), maxJWKSBytes, &set); err != nil {
		return nil, fmt.Errorf("keys of %s: %w", is.url, err)
	}
	return set.Keys, nil
}

// getJSON GETs url under ctx and decodes at most limit bytes of JSON.
func (v *Verifier) getJSON(ctx context.Context, u string, limit int64, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	if int64(len(body)) > limit {
		return fmt.Errorf("GET %s: response larger than %d bytes", u, limit)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	return nil
}
