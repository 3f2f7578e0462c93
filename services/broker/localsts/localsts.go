// Package localsts is the `local` credential provider: it mints
// AWS-format temporary credentials (an "ASIA…" access key id, a secret
// key and a session token) without AWS, for development, tests and
// air-gapped demos.
//
// The credentials grant nothing anywhere. Their session token is signed
// with HMAC-SHA256 under the provider's key, so GetSession can prove that
// a token was issued here and describe its session without any storage.
package localsts

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
)

// Name is the provider's name in audit events.
const Name = "local"

// KeySize is the size of the signing key.
const KeySize = 32

// MaxDuration is the longest session the provider mints, as AWS STS.
const MaxDuration = 12 * time.Hour

// tokenContext separates these MACs from any other use of the key.
const tokenContext = "credmatrix-localsts-v1."

var _ broker.Provider = (*Provider)(nil)
var _ broker.Introspector = (*Provider)(nil)

// Option configures a Provider.
type Option func(*Provider)

// WithClock replaces time.Now for issue and expiry times.
func WithClock(now func() time.Time) Option { return func(p *Provider) { p.now = now } }

// Provider mints and introspects local sessions. It is safe for
// concurrent use.
type Provider struct {
	key []byte
	now func() time.Time
}

// New returns a provider signing with key, which must be KeySize random
// bytes. Sessions minted under one key can be introspected only under
// the same key.
func New(key []byte, opts ...Option) (*Provider, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("localsts: signing key must be %d bytes, got %d", KeySize, len(key))
	}
	p := &Provider{key: append([]byte(nil), key...), now: time.Now}
	for _, opt := range opts {
		opt(p)
	}
	return p, nil
}

// Name returns "local".
func (p *Provider) Name() string { return Name }

// payload is the signed body of a session token.
type payload struct {
	SessionID   string            `json:"sid"`
	AccessKeyID string            `json:"akid"`
	AccountID   string            `json:"acct"`
	RoleARN     string            `json:"role"`
	RoleName    string            `json:"rname,omitempty"`
	Region      string            `json:"region"`
	Subject     string            `json:"sub"`
	Issuer      string            `json:"iss,omitempty"`
	Policy      string            `json:"pol,omitempty"`
	IssuedAt    int64             `json:"iat"`
	Expiration  int64             `json:"exp"`
	Tags        map[string]string `json:"tags,omitempty"`
}

var accessKeyEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Issue mints credentials for spec: an access key id "ASIA" + 16 chars of
// [A-Z2-7] (the shape of an AWS temporary key id), a 40-character secret
// and a signed session token.
func (p *Provider) Issue(ctx context.Context, spec broker.SessionSpec) (broker.Credentials, error) {
	if err := ctx.Err(); err != nil {
		return broker.Credentials{}, err
	}
	switch {
	case spec.SessionID == "":
		return broker.Credentials{}, errors.New("localsts: session id required")
	case spec.AccountID == "" || spec.RoleARN == "":
		return broker.Credentials{}, errors.New("localsts: account and role required")
	case spec.Duration <= 0 || spec.Duration > MaxDuration:
		return broker.Credentials{}, fmt.Errorf("localsts: duration %s outside (0, %s]", spec.Duration, MaxDuration)
	}
	var keyID [10]byte
	var secret [30]byte
	_, _ = rand.Read(keyID[:]) // crypto/rand.Read never fails
	_, _ = rand.Read(secret[:])
	now := p.now().Truncate(time.Second)
	exp := now.Add(spec.Duration)
	pl := payload{
		SessionID:   spec.SessionID,
		AccessKeyID: "ASIA" + accessKeyEncoding.EncodeToString(keyID[:]),
		AccountID:   spec.AccountID,
		RoleARN:     spec.RoleARN,
		RoleName:    spec.RoleName,
		Region:      spec.Region,
		Subject:     spec.Subject,
		Issuer:      spec.Issuer,
		Policy:      spec.Policy,
		IssuedAt:    now.Unix(),
		Expiration:  exp.Unix(),
		Tags:        spec.Tags,
	}
	body, err := json.Marshal(pl)
	if err != nil {
		return broker.Credentials{}, fmt.Errorf("localsts: encode session: %w", err)
	}
	enc := base64.RawURLEncoding.EncodeToString(body)
	return broker.Credentials{
		AccessKeyID:     pl.AccessKeyID,
		SecretAccessKey: base64.StdEncoding.EncodeToString(secret[:]),
		SessionToken:    enc + "." + base64.RawURLEncoding.EncodeToString(p.mac(enc)),
		Expiration:      exp,
	}, nil
}

func (p *Provider) mac(encodedPayload string) []byte {
	m := hmac.New(sha256.New, p.key)
	m.Write([]byte(tokenContext))
	m.Write([]byte(encodedPayload))
	return m.Sum(nil)
}

// Introspect verifies sessionToken and describes its session. The token
// must carry a valid MAC under this provider's key and name accessKeyID;
// otherwise the error wraps broker.ErrSessionNotFound, whatever was
// wrong. Expired sessions are described, with Expired set.
func (p *Provider) Introspect(accessKeyID, sessionToken string) (*broker.SessionInfo, error) {
	enc, sig, ok := strings.Cut(sessionToken, ".")
	if !ok {
		return nil, fmt.Errorf("%w: malformed session token", broker.ErrSessionNotFound)
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, p.mac(enc)) {
		return nil, fmt.Errorf("%w: bad session token signature", broker.ErrSessionNotFound)
	}
	body, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed session token payload", broker.ErrSessionNotFound)
	}
	var pl payload
	if err := json.Unmarshal(body, &pl); err != nil {
		return nil, fmt.Errorf("%w: malformed session token payload", broker.ErrSessionNotFound)
	}
	if !hmac.Equal([]byte(pl.AccessKeyID), []byte(accessKeyID)) {
		return nil, fmt.Errorf("%w: session token belongs to another access key", broker.ErrSessionNotFound)
	}
	exp := time.Unix(pl.Expiration, 0)
	return &broker.SessionInfo{
		SessionID:     pl.SessionID,
		AccessKeyID:   pl.AccessKeyID,
		AccountID:     pl.AccountID,
		RoleARN:       pl.RoleARN,
		RoleName:      pl.RoleName,
		Region:        pl.Region,
		Subject:       pl.Subject,
		Issuer:        pl.Issuer,
		IssuedAt:      time.Unix(pl.IssuedAt, 0),
		Expiration:    exp,
		Expired:       !p.now().Before(exp),
		Tags:          pl.Tags,
		SessionPolicy: pl.Policy,
	}, nil
}
