// Package devissuer is a development OpenID Connect issuer: it generates a
// fresh signing key, serves discovery and a JWKS over loopback HTTP and
// mints tokens that look like the ones CI systems (GitHub Actions) present.
//
// It exists so that broker tests, the `credmatrix dev` stack and the demo
// exercise the real verification path (discovery, remote JWKS, signature,
// audience, expiry) instead of a fake verifier. It is not meant for
// production: keys live in memory and anyone who can reach it can mint.
package devissuer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Signing algorithms the issuer can use.
const (
	// RS256 is RSASSA-PKCS1-v1_5 with SHA-256 over an RSA-2048 key, the
	// algorithm GitHub Actions and most issuers use; the default.
	RS256 = "RS256"
	// ES256 is ECDSA P-256 with SHA-256.
	ES256 = "ES256"
)

// Paths served by Handler.
const (
	// DiscoveryPath is the OpenID Connect discovery document.
	DiscoveryPath = "/.well-known/openid-configuration"
	// JWKSPath is the JSON Web Key Set of the issuer's public keys.
	JWKSPath = "/jwks"
)

// Option configures an Issuer.
type Option func(*options)

type options struct {
	alg string
	url string
	now func() time.Time
}

// WithAlgorithm selects the signing algorithm: RS256 (default) or ES256.
func WithAlgorithm(alg string) Option { return func(o *options) { o.alg = alg } }

// WithURL fixes the issuer URL up front, for callers that serve Handler
// on a server of their own instead of calling Start.
func WithURL(url string) Option { return func(o *options) { o.url = strings.TrimSuffix(url, "/") } }

// WithClock replaces time.Now for the iat, nbf and exp of minted tokens.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// signingKey is one generated key pair.
type signingKey struct {
	kid    string
	alg    string
	signer crypto.Signer
}

// Issuer is a development OIDC issuer. It is safe for concurrent use.
type Issuer struct {
	alg string
	now func() time.Time

	mu           sync.RWMutex
	url          string
	keys         []signingKey // last one signs; all are published
	server       *http.Server
	down         bool   // answer 503 to everything (an outage)
	cacheControl string // Cache-Control of the JWKS
}

// New generates a fresh key and returns an issuer that is not yet serving.
func New(opts ...Option) (*Issuer, error) {
	o := options{alg: RS256, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.alg != RS256 && o.alg != ES256 {
		return nil, fmt.Errorf("devissuer: unsupported algorithm %q (want %s or %s)", o.alg, RS256, ES256)
	}
	iss := &Issuer{alg: o.alg, now: o.now, url: o.url, cacheControl: "max-age=60"}
	if err := iss.RotateKey(); err != nil {
		return nil, err
	}
	return iss, nil
}

// RotateKey generates a new signing key. Later tokens are signed with it;
// the old keys stay in the JWKS so tokens already minted still verify,
// which is what lets tests exercise a verifier's refresh on an unknown kid.
func (i *Issuer) RotateKey() error {
	k, err := i.newKey()
	if err != nil {
		return err
	}
	i.mu.Lock()
	i.keys = append(i.keys, k)
	i.mu.Unlock()
	return nil
}

// ReplaceKey generates new key material under the current signing key's
// kid and stops publishing the old material: a same-kid rotation, which
// some issuers do. Tokens minted before no longer verify.
func (i *Issuer) ReplaceKey() error {
	k, err := i.newKey()
	if err != nil {
		return err
	}
	i.mu.Lock()
	k.kid = i.keys[len(i.keys)-1].kid
	i.keys[len(i.keys)-1] = k
	i.mu.Unlock()
	return nil
}

// WithdrawKey stops publishing the key kid, as an issuer does after a
// compromise. The current signing key cannot be withdrawn (rotate first).
func (i *Issuer) WithdrawKey(kid string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	for j, k := range i.keys {
		if k.kid != kid {
			continue
		}
		if j == len(i.keys)-1 {
			return errors.New("devissuer: the current signing key cannot be withdrawn; rotate first")
		}
		i.keys = append(i.keys[:j:j], i.keys[j+1:]...)
		return nil
	}
	return fmt.Errorf("devissuer: no key %q", kid)
}

// SetAvailable makes the issuer answer every request with 503 Service
// Unavailable (false), as during an outage, or normally again (true).
func (i *Issuer) SetAvailable(up bool) {
	i.mu.Lock()
	i.down = !up
	i.mu.Unlock()
}

// SetCacheControl sets the Cache-Control header of the JWKS response
// (default "max-age=60"; "" sends none).
func (i *Issuer) SetCacheControl(v string) {
	i.mu.Lock()
	i.cacheControl = v
	i.mu.Unlock()
}

func (i *Issuer) newKey() (signingKey, error) {
	var (
		signer crypto.Signer
		err    error
	)
	switch i.alg {
	case ES256:
		signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		signer, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		return signingKey{}, fmt.Errorf("devissuer: generate %s key: %w", i.alg, err)
	}
	jwk := jose.JSONWebKey{Key: signer.Public(), Algorithm: i.alg, Use: "sig"}
	thumb, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return signingKey{}, fmt.Errorf("devissuer: key thumbprint: %w", err)
	}
	return signingKey{kid: hex.EncodeToString(thumb[:16]), alg: i.alg, signer: signer}, nil
}

// KeyID returns the kid of the current signing key.
func (i *Issuer) KeyID() string {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.keys[len(i.keys)-1].kid
}

// PublicKey returns the current signing key's public half, for tests that
// forge tokens with it (for example HS256 keyed with the public key).
func (i *Issuer) PublicKey() crypto.PublicKey {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.keys[len(i.keys)-1].signer.Public()
}

// URL returns the issuer URL (the `iss` of minted tokens), or "" when the
// issuer was neither started nor given WithURL.
func (i *Issuer) URL() string {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.url
}

// Handler serves the discovery document and the JWKS. When no issuer URL
// is known yet, discovery derives it from the request's Host.
func (i *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+DiscoveryPath, i.serveDiscovery)
	mux.HandleFunc("GET "+JWKSPath, i.serveJWKS)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i.mu.RLock()
		down := i.down
		i.mu.RUnlock()
		if down {
			http.Error(w, "issuer unavailable", http.StatusServiceUnavailable)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (i *Issuer) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	base := i.URL()
	if base == "" {
		base = "http://" + r.Host
	}
	writeJSON(w, "max-age=60", map[string]any{
		"issuer":                                base,
		"jwks_uri":                              base + JWKSPath,
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public", "pairwise"},
		"id_token_signing_alg_values_supported": []string{i.alg},
		"scopes_supported":                      []string{"openid"},
		"claims_supported": []string{
			"sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "sha",
			"repository", "repository_id", "repository_owner", "repository_owner_id",
			"run_id", "run_number", "run_attempt", "actor", "actor_id", "workflow",
			"workflow_ref", "event_name", "ref_type", "job_workflow_ref", "environment",
		},
	})
}

func (i *Issuer) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	i.mu.RLock()
	set := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(i.keys))}
	for _, k := range i.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.signer.Public(), KeyID: k.kid, Algorithm: k.alg, Use: "sig"})
	}
	cc := i.cacheControl
	i.mu.RUnlock()
	writeJSON(w, cc, set)
}

func writeJSON(w http.ResponseWriter, cacheControl string, v any) {
	w.Header().Set("Content-Type", "application/json")
	if cacheControl != "" {
		w.Header().Set("Cache-Control", cacheControl)
	}
	_ = json.NewEncoder(w).Encode(v) // a failed write means the client went away
}

// Start serves Handler on addr, which must be a loopback address such as
// "127.0.0.1:0", and returns the issuer URL ("http://127.0.0.1:PORT").
// A development issuer lets anyone who reaches it mint trusted tokens, so
// it refuses to listen anywhere else.
func (i *Issuer) Start(addr string) (string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("devissuer: listen address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return "", fmt.Errorf("devissuer: listen address %q: not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("devissuer: listen on %s: %w", addr, err)
	}
	i.mu.Lock()
	if i.server != nil {
		i.mu.Unlock()
		_ = ln.Close()
		return "", errors.New("devissuer: already started")
	}
	if i.url == "" {
		i.url = "http://" + ln.Addr().String()
	}
	srv := &http.Server{Handler: i.Handler(), ReadHeaderTimeout: 5 * time.Second}
	i.server = srv
	url := i.url
	i.mu.Unlock()
	go func() { _ = srv.Serve(ln) }() // returns http.ErrServerClosed on Close
	return url, nil
}

// Close stops the server started by Start. It is safe to call more than
// once and on an issuer that was never started.
func (i *Issuer) Close() error {
	i.mu.Lock()
	srv := i.server
	i.server = nil
	i.mu.Unlock()
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(ctx)
}

// Mint signs a JWT with the current key. It sets iss, iat, nbf, exp
// (now + ttl) and a random jti, then copies claims over them, so a test
// can mint a token with a foreign issuer or an iat in the future on
// purpose; a nil value removes the claim. A negative ttl mints an already
// expired token.
func (i *Issuer) Mint(claims map[string]any, ttl time.Duration) (string, error) {
	i.mu.RLock()
	url := i.url
	key := i.keys[len(i.keys)-1]
	i.mu.RUnlock()
	if url == "" {
		return "", errors.New("devissuer: issuer URL unknown: call Start or use WithURL")
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", fmt.Errorf("devissuer: jti: %w", err)
	}
	now := i.now()
	body := map[string]any{
		"iss": url,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(ttl).Unix(),
		"jti": hex.EncodeToString(jti),
	}
	for k, v := range claims {
		if v == nil {
			delete(body, k)
		} else {
			body[k] = v
		}
	}
	payload, err := json.Marshal(body)
	if err != nil {
		return "", fmt.Errorf("devissuer: encode claims: %w", err)
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.SignatureAlgorithm(key.alg), Key: jose.JSONWebKey{Key: key.signer, KeyID: key.kid}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		return "", fmt.Errorf("devissuer: signer: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("devissuer: sign: %w", err)
	}
	return jws.CompactSerialize()
}
