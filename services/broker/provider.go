package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Sentinels that providers wrap so the broker can classify their errors
// without knowing the provider.
var (
	// ErrSessionNotFound means a session does not exist or its token does
	// not prove possession of it.
	ErrSessionNotFound = errors.New("session not found")
	// ErrProviderUnavailable marks a retryable provider failure
	// (throttling, an unreachable STS endpoint).
	ErrProviderUnavailable = errors.New("credential provider unavailable")
	// ErrProviderRefused marks an upstream refusal that retrying will not
	// change (the role does not trust the broker, the policy is too
	// large): a configuration problem on the AWS side.
	ErrProviderRefused = errors.New("credential provider refused")
)

// DurationLimiter is implemented by providers that cannot mint sessions
// as long as MaxSessionDuration (role chaining caps sessions at 1h).
type DurationLimiter interface {
	// MaxDuration is the longest session the provider mints.
	MaxDuration() time.Duration
}

// Provider mints the credentials of one session: the local issuer in
// development, AWS STS in production.
type Provider interface {
	// Name identifies the provider in audit events ("local", "aws").
	Name() string
	// Issue mints credentials for spec, valid for spec.Duration. Errors
	// wrap ErrProviderUnavailable when a retry may succeed.
	Issue(ctx context.Context, spec SessionSpec) (Credentials, error)
}

// Introspector is implemented by providers that can describe the sessions
// they issued (the local provider), for GetSession.
type Introspector interface {
	// Introspect verifies sessionToken, which must belong to accessKeyID,
	// and describes its session. Expired sessions are described too, with
	// Expired set. A token that does not verify wraps ErrSessionNotFound.
	Introspect(accessKeyID, sessionToken string) (*SessionInfo, error)
}

// SessionSpec is everything a provider needs to mint one session, decided
// by the broker from the token, the policy and the request.
type SessionSpec struct {
	// SessionID is the credmatrix session id.
	SessionID string
	// AccountID is the 12-digit target account.
	AccountID string
	// RoleARN is the role to assume.
	RoleARN string
	// RoleName is the role's name in the trust policy.
	RoleName string
	// Region is the region the session is for.
	Region string
	// SessionName is the RoleSessionName, already sanitised.
	SessionName string
	// SourceIdentity is unique per session, so a targeted deny can revoke
	// exactly this session.
	SourceIdentity string
	// Subject is the OIDC subject the session is issued to.
	Subject string
	// Issuer is the OIDC issuer of that subject.
	Issuer string
	// Duration is the granted duration.
	Duration time.Duration
	// Tags are the session tags, already sanitised.
	Tags map[string]string
	// TransitiveTagKeys are the tags that survive role chaining.
	TransitiveTagKeys []string
	// Policy is the rendered session policy (JSON), empty for none.
	Policy string
	// PolicyARNs are managed policies passed as session policies.
	PolicyARNs []string
	// ExternalID is passed to AssumeRole when set.
	ExternalID string
	// WebIdentityToken is the caller's OIDC token, for providers that
	// pass it through (AssumeRoleWithWebIdentity). Secret: never logged;
	// String redacts it.
	WebIdentityToken string
}

// String describes the spec with the token redacted.
func (s SessionSpec) String() string {
	s.WebIdentityToken = redacted
	type plain SessionSpec
	return fmt.Sprintf("%+v", plain(s))
}

// GoString is String, so that %#v redacts too.
func (s SessionSpec) GoString() string { return s.String() }

// SessionRevoker is implemented by providers that can make sessions they
// already issued stop working (the aws provider, through an inline deny
// policy on the role).
type SessionRevoker interface {
	// RevocationSupport says which of the broker's session properties
	// the provider's sessions carry, so that a deny can match them.
	RevocationSupport() RevocationSupport
	// PutRevocations makes the role's sessions matching any of matches
	// stop working, replacing whatever it put on the role before (no
	// match removes it). With dryRun it only builds what it would put.
	PutRevocations(ctx context.Context, role RoleRef, matches []SessionMatch, dryRun bool) (RevocationPolicy, error)
}

// RevocationSupport says what a provider's sessions carry from the
// broker's SessionSpec.
type RevocationSupport struct {
	// Tags: the session tags (AssumeRole); not with the caller's token
	// passed through (AssumeRoleWithWebIdentity takes the token's tags).
	Tags bool
	// SourceIdentity: the per-session SourceIdentity.
	SourceIdentity bool
}

// SessionMatch is what one revocation denies, in terms of what a session
// carries in AWS: every set field must match.
type SessionMatch struct {
	// RevocationID names the revocation.
	RevocationID string
	// SourceIdentity matches one session ("" for any).
	SourceIdentity string
	// Tags are session tag values, exactly as the broker sets them
	// (TagValue of the selectors).
	Tags map[string]string
	// IssuedBefore: sessions issued before it.
	IssuedBefore time.Time
}

// RevocationPolicy is what a SessionRevoker put on a role.
type RevocationPolicy struct {
	// Document is the policy put, "" when the role has none left.
	Document string
	// CompactedBefore is set when the matches did not fit the provider's
	// size limit and the oldest were replaced by a deny of every session
	// issued before it.
	CompactedBefore time.Time
}

// RoleRef names a role for SessionRevoker.
type RoleRef struct {
	// AccountID is the role's account.
	AccountID string
	// Name is the role's name in the trust policy.
	Name string
	// ARN is the role's ARN.
	ARN string
}

// Credentials are AWS temporary credentials. SecretAccessKey and
// SessionToken are secrets: the String, GoString and LogValue methods
// redact them, so printing or logging Credentials cannot leak them.
type Credentials struct {
	// AccessKeyID is the access key id ("ASIA..."). Not secret.
	AccessKeyID string
	// SecretAccessKey is the secret key. Secret.
	SecretAccessKey string
	// SessionToken is the session token. Secret.
	SessionToken string
	// Expiration is when the credentials stop working.
	Expiration time.Time
	// Endpoint is the STS endpoint that issued them ("" for the local
	// provider).
	Endpoint string
	// SourceIdentity is the SourceIdentity STS recorded, when it differs
	// from the spec's (a coalesced request shares another's session).
	SourceIdentity string
}

const redacted = "[redacted]"

// String describes the credentials with the secrets redacted.
func (c Credentials) String() string {
	return fmt.Sprintf("Credentials{AccessKeyID: %s, SecretAccessKey: %s, SessionToken: %s, Expiration: %s}",
		c.AccessKeyID, redacted, redacted, c.Expiration.UTC().Format(time.RFC3339))
}

// GoString is String, so that %#v redacts too.
func (c Credentials) GoString() string { return c.String() }

// LogValue implements slog.LogValuer with the secrets redacted.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("access_key_id", c.AccessKeyID),
		slog.String("secret_access_key", redacted),
		slog.String("session_token", redacted),
		slog.Time("expiration", c.Expiration),
	)
}

// SessionInfo describes an issued session.
type SessionInfo struct {
	// SessionID is the credmatrix session id.
	SessionID string
	// AccessKeyID is the session's access key id.
	AccessKeyID string
	// AccountID is the account the session is in.
	AccountID string
	// RoleARN is the assumed role.
	RoleARN string
	// RoleName is the role's name in the trust policy.
	RoleName string
	// Region is the session's region.
	Region string
	// Subject is the OIDC subject it was issued to.
	Subject string
	// Issuer is the OIDC issuer of that subject.
	Issuer string
	// IssuedAt is when it was issued.
	IssuedAt time.Time
	// Expiration is when it expires.
	Expiration time.Time
	// Expired reports whether Expiration has passed.
	Expired bool
	// Revoked reports whether the session was revoked.
	Revoked bool
	// Tags are the session tags.
	Tags map[string]string
	// SessionPolicy is the session policy it was scoped down with.
	SessionPolicy string
}
