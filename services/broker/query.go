package broker

import (
	"context"
	"errors"
	"time"

	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
)

// Explanation is a dry-run decision.
type Explanation struct {
	// Decision is what the policy decided, with every rule's evaluation.
	Decision policy.Decision
	// Duration is the duration that would be granted (0 when denied).
	Duration time.Duration
}

// ListRoles lists the roles token may assume, in policy order. It issues
// nothing and is not audited.
func (s *Service) ListRoles(ctx context.Context, token string) ([]policy.Grant, error) {
	ctx, err := s.syncState(ctx, s.now())
	if err != nil {
		return nil, err
	}
	snap := s.snap.Load()
	claims, err := s.verifyOnly(ctx, snap, token)
	if err != nil {
		return nil, err
	}
	now := s.now()
	id := identity(claims)
	var out []policy.Grant
	for _, g := range snap.policy.RolesFor(id, now) {
		// The broker's state (freezes, revocations) can still refuse.
		d, err := s.decide(ctx, snap.policy, id, Target{Role: g.Role.Name, Account: g.Account.ID}, now)
		if err != nil {
			return nil, err
		}
		if d.Allowed {
			out = append(out, g)
		}
	}
	return out, nil
}

// ExplainDecision evaluates the policy for token and target without
// issuing anything. A denial is a result here, not an error.
func (s *Service) ExplainDecision(ctx context.Context, token string, target Target) (Explanation, error) {
	if err := validateToken(token); err != nil {
		return Explanation{}, err
	}
	if err := validateTarget("target", target); err != nil {
		return Explanation{}, err
	}
	ctx, err := s.syncState(ctx, s.now())
	if err != nil {
		return Explanation{}, err
	}
	snap := s.snap.Load()
	claims, err := s.verifyOnly(ctx, snap, token)
	if err != nil {
		return Explanation{}, err
	}
	d, err := s.decide(ctx, snap.policy, identity(claims), target, s.now())
	if err != nil {
		return Explanation{}, err
	}
	ex := Explanation{Decision: d}
	if d.Allowed {
		ex.Duration = grantedDuration(target, d)
	}
	return ex, nil
}

// GetSession describes a session minted by a provider that implements
// Introspector. The session token proves the caller holds the session.
func (s *Service) GetSession(ctx context.Context, accessKeyID, sessionToken string) (*SessionInfo, error) {
	if err := validateGetSession(accessKeyID, sessionToken); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	in, ok := s.provider.(Introspector)
	if !ok {
		return nil, &Error{Code: NotFound, Message: "session introspection is only available with the local provider"}
	}
	info, err := in.Introspect(accessKeyID, sessionToken)
	switch {
	case errors.Is(err, ErrSessionNotFound):
		return nil, &Error{Code: NotFound, Message: "session not found", Err: err}
	case err != nil:
		return nil, &Error{Code: Internal, Message: msgInternal, Err: err}
	}
	// A revocation covers a session it names, or one of the callers,
	// roles and accounts it names issued before its time.
	_, revs, err := s.state(ctx, s.now())
	if err != nil {
		return nil, s.stateUnavailable(ctx, err)
	}
	t := RevocationTarget{SessionID: info.SessionID, Subject: info.Subject, Issuer: info.Issuer, Role: info.RoleName, AccountID: info.AccountID, IssuedAt: info.IssuedAt,
		Claims: func(name string) (string, bool) { v, ok := info.Tags[name]; return v, ok }, ClaimsAreTags: true}
	for _, r := range revs {
		if r.Revokes(t) {
			info.Revoked = true
			break
		}
	}
	return info, nil
}

// verifyOnly verifies a token for the read-only calls, which are not
// audited.
func (s *Service) verifyOnly(ctx context.Context, snap *snapshot, token string) (*oidc.Claims, error) {
	if err := validateToken(token); err != nil {
		return nil, err
	}
	claims, err := snap.verifier.Verify(ctx, token)
	switch {
	case err == nil:
		return claims, nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return nil, err
	case errors.Is(err, oidc.ErrIssuerUnavailable):
		return nil, &Error{Code: Unavailable, Message: "token issuer unavailable", Err: err}
	default:
		return nil, &Error{Code: Unauthenticated, Message: msgUnauthenticated, Err: err}
	}
}
