// Package oidc verifies the OpenID Connect ID tokens that callers swap for
// AWS sessions: GitHub Actions, GitLab CI, Kubernetes service accounts or
// any issuer with discovery and a JWKS.
//
// Every token is checked against the issuer it claims, but that claim is
// only used to pick one of the configured issuers: an unknown issuer is
// refused before any network call, and the signature, algorithm, audience
// and times are checked against what is configured for that issuer alone.
// Discovery comes from github.com/coreos/go-oidc/v3; the JWKS is cached
// here, parsed once, and has a lifetime (KeyLifetime): it is refetched
// when its refresh time passes (the issuer's Cache-Control max-age within
// configured bounds), so a withdrawn key stops verifying within the
// bounded interval; a token naming an unknown kid, or a known kid whose
// signature fails (a key replaced under the same kid), causes one early
// refresh at most once per cooldown (a forged token cannot make the
// broker hammer the issuer). When the issuer cannot be reached the last
// keys fetched keep verifying for a bounded grace, then tokens are
// refused with ErrIssuerUnavailable. Key changes and outages are
// reported to OnKeyEvent, for the audit log.
//
// Every verification failure is an error that wraps ErrUnauthenticated.
// Its Error text carries the cause, for logs; callers are told only
// PublicMessage, so a probing caller learns nothing about why.
package oidc

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// PublicMessage is the only thing a caller is told when its token fails.
const PublicMessage = "token verification failed"

// MaxTokenBytes bounds the size of a raw token, before any parsing.
const MaxTokenBytes = 16 << 10

// DefaultLeeway is the clock skew tolerated on exp, nbf and iat when an
// IssuerConfig sets none.
const DefaultLeeway = time.Minute

// MaxLeeway is the largest leeway an IssuerConfig may set.
const MaxLeeway = 5 * time.Minute

// DefaultAlgorithms are the signing algorithms accepted when an
// IssuerConfig lists none.
var DefaultAlgorithms = []string{"RS256", "ES256"}

// Errors wrapped by Verify. Test with errors.Is.
var (
	// ErrUnauthenticated means the token did not verify. Its message is
	// PublicMessage.
	ErrUnauthenticated = errors.New(PublicMessage)
	// ErrIssuerUnavailable means the token names a configured issuer whose
	// discovery document or signing keys could not be fetched (past the
	// grace of the cached keys): the token may be fine, so this is a
	// retryable condition, not an authentication failure.
	ErrIssuerUnavailable = errors.New("token issuer unavailable")
)

// VerificationError is a failed verification. It wraps ErrUnauthenticated
// and the cause; Error includes the cause and is meant for logs only.
type VerificationError struct {
	// Cause says what failed. It may quote parts of the (untrusted) token
	// but never the token itself.
	Cause error
}

// Error returns PublicMessage and the cause, for logs.
func (e *VerificationError) Error() string { return PublicMessage + ": " + e.Cause.Error() }

// Unwrap exposes ErrUnauthenticated and the cause to errors.Is and errors.As.
func (e *VerificationError) Unwrap() []error { return []error{ErrUnauthenticated, e.Cause} }

func failf(format string, args ...any) error {
	return &VerificationError{Cause: fmt.Errorf(format, args...)}
}

// Claims are the verified claims of a token.
type Claims struct {
	// Issuer is the `iss` claim, equal to a configured issuer URL.
	Issuer string
	// Subject is the `sub` claim.
	Subject string
	// Audience is the `aud` claim, as a list.
	Audience []string
	// Expiry is the `exp` claim.
	Expiry time.Time
	// IssuedAt is the `iat` claim (zero when absent).
	IssuedAt time.Time
	// Raw holds every claim as decoded JSON; numbers are json.Number so
	// that large ids (run ids, account ids) keep every digit.
	Raw map[string]any
}

// String returns a scalar claim as a string: strings as they are, numbers
// in their JSON form, booleans as "true" or "false". It reports false for
// a missing claim, null, an object or an array, so policy never matches
// on a structure's Go formatting.
func (c *Claims) String(name string) (string, bool) {
	if c == nil {
		return "", false
	}
	switch v := c.Raw[name].(type) {
	case string:
		return v, true
	case json.Number:
		return v.String(), true
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(v), true
	default:
		return "", false
	}
}
