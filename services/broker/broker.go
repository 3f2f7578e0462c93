// Package broker is the domain of the credmatrix broker: it swaps a
// verified OIDC token for short-lived AWS sessions as the trust policy
// allows, recording every decision in the audit log before any credential
// leaves.
//
// The package owns the small interfaces it needs (TokenVerifier,
// Provider, Auditor, SecretHasher) and the types that cross them; the
// implementations live beside it (oidc, localsts, later awssts and the
// audit client) and the gRPC translation lives in grpcapi. It never
// imports gRPC: failures are *domainerr.Error values with a Code.
package broker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/credmatrix/credmatrix/platform/coalesce"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
)

// TokenVerifier verifies a caller's raw OIDC token. *oidc.Verifier
// implements it. Failures wrap oidc.ErrUnauthenticated, or
// oidc.ErrIssuerUnavailable when the issuer cannot be reached.
type TokenVerifier interface {
	Verify(ctx context.Context, rawToken string) (*oidc.Claims, error)
}

// Auditor appends one event to the audit log and returns once it is
// durable. The audit service client implements it.
type Auditor interface {
	Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error)
}

// SecretHasher names a secret by a keyed HMAC of it, so an audit event can
// identify a token without holding it.
type SecretHasher interface {
	Ref(name string, secret []byte) *auditv1.SecretRef
}

// SecretHasherFunc adapts a function to SecretHasher.
type SecretHasherFunc func(name string, secret []byte) *auditv1.SecretRef

// Ref calls f.
func (f SecretHasherFunc) Ref(name string, secret []byte) *auditv1.SecretRef { return f(name, secret) }

// Config holds a Service's dependencies. Policy, Verifier, Provider,
// Auditor, Hasher and Store are required.
type Config struct {
	// Policy is the trust policy in force at start; see Service.Reload.
	Policy *policy.Policy
	// Verifier verifies callers' tokens for Policy's issuers.
	Verifier TokenVerifier
	// Provider mints credentials. If it also implements Introspector,
	// GetSession works; if it implements SessionRevoker, revocations
	// reach sessions already issued.
	Provider Provider
	// Auditor records every decision, before credentials are returned.
	Auditor Auditor
	// Hasher names secrets in audit events.
	Hasher SecretHasher
	// Store keeps single-use token ids, revocations and freezes.
	Store Store
	// Admins are the mTLS identities (SPIFFE URI SANs) allowed to call
	// the operator RPCs. Empty: nobody.
	Admins []string
	// Reload loads the trust policy afresh and builds the verifier for
	// its issuers; nil disables reloading.
	Reload func(ctx context.Context) (*policy.Policy, TokenVerifier, error)
	// Limits are the rate limits; the zero value disables them.
	Limits Limits
	// ReloadGeneration is the policy reload request generation Policy
	// already reflects: read it (Store.LoadState) before loading the
	// policy, so that a reload requested meanwhile is not missed. Zero
	// makes the first decision perform the latest request, if any.
	ReloadGeneration uint64
	// StateTimeout bounds one read of the shared state's version; zero
	// means coalesce.DefaultTimeout.
	StateTimeout time.Duration
	// Clock replaces time.Now.
	Clock func() time.Time
	// KeyEventLog, when set, is told about every change in issuers'
	// keys (rotations, withdrawals, outages, with their causes) and
	// whether recording it in the audit log failed: for the operator's
	// log.
	KeyEventLog func(ev oidc.KeyEvent, auditErr error)
}

// snapshot is the policy in force and the verifier of its issuers; a
// reload swaps both at once.
type snapshot struct {
	policy   *policy.Policy
	verifier TokenVerifier
}

// Service issues sessions. It is safe for concurrent use.
type Service struct {
	snap     atomic.Pointer[snapshot]
	provider Provider
	auditor  Auditor
	hasher   SecretHasher
	store    Store
	admins   map[string]bool
	reload   func(ctx context.Context) (*policy.Policy, TokenVerifier, error)
	reloadMu sync.Mutex
	limiter  *limiter
	cache    stateCache
	versions *coalesce.Fresh[uint64]
	now      func() time.Time
	keyLog   func(oidc.KeyEvent, error)

	// reloadDone is the reload request generation this replica has
	// performed (see applyReloadRequest).
	reloadDone      atomic.Uint64
	replicaReloadMu sync.Mutex
}

// New checks cfg and returns a Service.
func New(cfg Config) (*Service, error) {
	switch {
	case cfg.Policy == nil:
		return nil, errors.New("broker: config: Policy is required")
	case cfg.Verifier == nil:
		return nil, errors.New("broker: config: Verifier is required")
	case cfg.Provider == nil:
		return nil, errors.New("broker: config: Provider is required")
	case cfg.Auditor == nil:
		return nil, errors.New("broker: config: Auditor is required")
	case cfg.Hasher == nil:
		return nil, errors.New("broker: config: Hasher is required")
	case cfg.Store == nil:
		return nil, errors.New("broker: config: Store is required")
	}
	s := &Service{
		provider: cfg.Provider, auditor: cfg.Auditor, hasher: cfg.Hasher, store: cfg.Store,
		admins: map[string]bool{}, reload: cfg.Reload, now: cfg.Clock,
		keyLog: cfg.KeyEventLog,
	}
	s.versions = coalesce.New(s.store.StateVersion, cfg.StateTimeout)
	s.reloadDone.Store(cfg.ReloadGeneration)
	if s.now == nil {
		s.now = time.Now
	}
	for _, a := range cfg.Admins {
		s.admins[a] = true
	}
	s.limiter = newLimiter(cfg.Limits, s.now)
	s.watchKeys(cfg.Verifier)
	s.snap.Store(&snapshot{policy: cfg.Policy, verifier: cfg.Verifier})
	return s, nil
}

// Policy returns the trust policy in force.
func (s *Service) Policy() *policy.Policy { return s.snap.Load().policy }

// SetPolicy atomically replaces the trust policy, keeping the verifier;
// requests already evaluating keep the policy they started with. A nil
// policy is ignored, so a failed reload can never leave the service
// without one.
func (s *Service) SetPolicy(p *policy.Policy) {
	if p != nil {
		s.snap.Store(&snapshot{policy: p, verifier: s.snap.Load().verifier})
	}
}

// identity is the policy's view of verified claims.
func identity(c *oidc.Claims) policy.Identity {
	return policy.Identity{Issuer: c.Issuer, Subject: c.Subject, Claim: c.String, Raw: c.Raw}
}

// NewVerifier builds the token verifier for the issuers of pol, with
// their audiences, algorithms, leeway and strict-audience settings.
func NewVerifier(ctx context.Context, pol *policy.Policy, opts ...oidc.Option) (*oidc.Verifier, error) {
	var issuers []oidc.IssuerConfig
	for _, is := range pol.Issuers() {
		issuers = append(issuers, oidc.IssuerConfig{
			URL: is.URL, Audiences: is.Audiences, Algorithms: is.Algorithms, Leeway: is.Leeway, StrictAudience: is.StrictAudience,
		})
	}
	return oidc.NewVerifier(ctx, issuers, opts...)
}
