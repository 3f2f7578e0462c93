package broker

import (
	"context"
	"errors"
	"time"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
)

// Explanation is a dry-run decision.
type Explanation struct {
	// Decision is what the one decision function decided, with the
	// rules considered: every rule for an administrator, only the rules
	// about the target asked (and the broker's state) for anyone else.
	Decision policy.Decision
	// Duration is the duration that would be granted (0 when denied).
	Duration time.Duration
	// AuditEventID names the audit event recording the explanation.
	AuditEventID string
}

// ExplainRequest asks why a token would be allowed or refused a target.
type ExplainRequest struct {
	// Token is the caller's raw OIDC token. Secret.
	Token string
	// Target is the session that would be asked for.
	Target Target
	// Peer is the mTLS identity of the connection; an administrator's
	// sees every rule.
	Peer string
}

// ListRoles lists the roles token may assume, in policy order, as
// IssueSession would decide for each in its account's home region. It
// issues nothing and is not audited.
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
	for _, r := range snap.policy.Roles() {
		o, err := s.decide(ctx, snap.policy, id, Target{Role: r.Name, Account: r.AccountID}, now, "")
		if err != nil {
			return nil, err
		}
		if o.Allowed {
			out = append(out, policy.Grant{Account: o.Account, Role: o.Role, Rule: o.Rule, MaxDuration: o.Duration})
		}
	}
	return out, nil
}

// ExplainDecision runs the decision IssueSession would make for the
// token and target, issuing nothing; a denial is a result here, not an
// error. Because it reveals policy, it is audited (fail closed) and rate
// limited per caller like a request, and a caller who is not an
// administrator sees only the rules about the target asked.
func (s *Service) ExplainDecision(ctx context.Context, req ExplainRequest) (Explanation, error) {
	now := s.now()
	ireq := IssueRequest{Token: req.Token, Peer: req.Peer, kind: auditv1.Kind_KIND_DECISION_EXPLAIN}
	if err := validateToken(req.Token); err != nil {
		if req.Token != "" {
			var e *domainerr.Error
			errors.As(err, &e)
			if aerr := s.auditTokenRefusal(ctx, ireq, now, auditv1.Decision_DECISION_DENY, e.Message); aerr != nil {
				return Explanation{}, aerr
			}
		}
		return Explanation{}, err
	}
	if err := validateTarget("target", req.Target); err != nil {
		return Explanation{}, err
	}
	ctx, err := s.syncState(ctx, s.now())
	if err != nil {
		return Explanation{}, err
	}
	snap := s.snap.Load()
	claims, err := snap.verifier.Verify(ctx, req.Token)
	if err != nil {
		return Explanation{}, s.verifyFailed(ctx, ireq, now, err)
	}
	p := plan{target: req.Target}
	if ok, wait := s.limiter.allowExplain(claims.Issuer + "#" + claims.Subject); !ok {
		p.decision = policy.Decision{Rule: RuleRateLimited, Reason: "explain rate limit exceeded; retry later"}
		ev := s.sessionEvent(ctx, now, auditv1.Decision_DECISION_DENY, ireq, claims, p)
		ev.Kind = auditv1.Kind_KIND_DECISION_EXPLAIN
		if _, err := s.append(ctx, ev); err != nil {
			return Explanation{}, err
		}
		return Explanation{}, &domainerr.Error{Code: domainerr.ResourceExhausted, Message: "explain rate limit exceeded; retry later", RetryAfter: wait}
	}
	o, err := s.decide(ctx, snap.policy, identity(claims), req.Target, now, "")
	if err != nil {
		return Explanation{}, err
	}
	if o.Invalid != nil {
		return Explanation{}, invalidf("target."+o.Invalid.Field, o.Invalid.Msg)
	}
	p.decision = o.Decision
	ev := s.sessionEvent(ctx, now, auditv1.Decision_DECISION_ALLOW, ireq, claims, p)
	ev.Kind = auditv1.Kind_KIND_DECISION_EXPLAIN
	verdict := "would deny"
	if o.Allowed {
		verdict = "would allow"
	}
	ev.Reason = truncate("explained: "+verdict+": "+o.Reason, 1024)
	if _, err := s.append(ctx, ev); err != nil {
		return Explanation{}, err
	}
	d := o.Decision
	if !s.admins[req.Peer] || req.Peer == "" {
		var about []policy.RuleEvaluation
		for _, e := range d.Evaluations {
			if e.AboutTarget {
				about = append(about, e)
			}
		}
		d.Evaluations = about
	}
	return Explanation{Decision: d, Duration: o.Duration, AuditEventID: ev.GetId()}, nil
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
		return nil, &domainerr.Error{Code: domainerr.NotFound, Message: "session introspection is only available with the local provider"}
	}
	info, err := in.Introspect(accessKeyID, sessionToken)
	switch {
	case errors.Is(err, ErrSessionNotFound):
		return nil, &domainerr.Error{Code: domainerr.NotFound, Message: "session not found", Err: err}
	case err != nil:
		return nil, &domainerr.Error{Code: domainerr.Internal, Message: msgInternal, Err: err}
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
		return nil, &domainerr.Error{Code: domainerr.Unavailable, Message: "token issuer unavailable", Err: err}
	default:
		return nil, &domainerr.Error{Code: domainerr.Unauthenticated, Message: msgUnauthenticated, Err: err}
	}
}
