// Package broker is the domain of the credmatrix broker: it swaps a
// verified OIDC token for short-lived AWS sessions as the trust policy
// allows, recording every decision in the audit log before any credential
// leaves.
//
// The package owns the small interfaces it needs (TokenVerifier,
// Provider, Auditor, SecretHasher) and the types that cross them; the
// implementations live beside it (oidc, localsts, later awssts and the
// audit client) and the gRPC translation lives in grpcapi. It never
// imports gRPC: failures are *Error values with a Code.
package broker

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

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

// Config holds a Service's dependencies. Every field but Clock is required.
type Config struct {
	// Policy is the trust policy in force at start; see Service.SetPolicy.
	Policy *policy.Policy
	// Verifier verifies callers' tokens.
	Verifier TokenVerifier
	// Provider mints credentials. If it also implements Introspector,
	// GetSession works.
	Provider Provider
	// Auditor records every decision, before credentials are returned.
	Auditor Auditor
	// Hasher names secrets in audit events.
	Hasher SecretHasher
	// Clock replaces time.Now.
	Clock func() time.Time
}

// Service issues sessions. It is safe for concurrent use.
type Service struct {
	policy   atomic.Pointer[policy.Policy]
	verifier TokenVerifier
	provider Provider
	auditor  Auditor
	hasher   SecretHasher
	now      func() time.Time
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
	}
	s := &Service{verifier: cfg.Verifier, provider: cfg.Provider, auditor: cfg.Auditor, hasher: cfg.Hasher, now: cfg.Clock}
	if s.now == nil {
		s.now = time.Now
	}
	s.policy.Store(cfg.Policy)
	return s, nil
}

// Policy returns the trust policy in force.
func (s *Service) Policy() *policy.Policy { return s.policy.Load() }

// SetPolicy atomically replaces the trust policy; requests already
// evaluating keep the policy they started with. A nil policy is ignored,
// so a failed reload can never leave the service without one.
func (s *Service) SetPolicy(p *policy.Policy) {
	if p != nil {
		s.policy.Store(p)
	}
}

// identity is the policy's view of verified claims.
func identity(c *oidc.Claims) policy.Identity {
	return policy.Identity{Issuer: c.Issuer, Subject: c.Subject, Claim: c.String}
}
