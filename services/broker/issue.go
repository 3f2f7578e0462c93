package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
)

// IssueRequest asks for one or more sessions, all or none.
type IssueRequest struct {
	// Token is the caller's raw OIDC token. Secret.
	Token string
	// Targets are the sessions asked for, 1 to MaxTargets.
	Targets []Target
	// Reason is the caller's free-text reason, recorded in the audit log.
	Reason string
	// Peer is the mTLS identity of the connection, when known.
	Peer string
}

// Target is one session asked for.
type Target struct {
	// Role is a role name from the trust policy.
	Role string
	// Account is an account id or name.
	Account string
	// Region is the session's region; empty means the account's home region.
	Region string
	// Duration is the requested duration; 0 means the role's maximum.
	Duration time.Duration
	// Policy is an optional scope-down session policy (JSON).
	Policy string
}

// Session is one issued session.
type Session struct {
	// ID is the credmatrix session id.
	ID string
	// Credentials are the session's credentials (secrets redacted when
	// printed).
	Credentials Credentials
	// AccountID is the target account id.
	AccountID string
	// AccountName is the account's name in the account matrix.
	AccountName string
	// Role is the role name.
	Role string
	// RoleARN is the role ARN.
	RoleARN string
	// Region is the session's region.
	Region string
	// STSEndpoint is the regional STS endpoint that issued it (empty for
	// the local provider).
	STSEndpoint string
	// SessionName is the RoleSessionName.
	SessionName string
	// SourceIdentity is the SourceIdentity.
	SourceIdentity string
	// Rule is the allow rule that granted it.
	Rule string
	// Duration is the granted duration.
	Duration time.Duration
	// AuditEventID identifies the audit event recording the issuance.
	AuditEventID string
	// AuditSequence is that event's sequence number in the log.
	AuditSequence uint64
}

// plan is one target on its way to becoming a session.
type plan struct {
	target   Target
	decision policy.Decision
	spec     SessionSpec
	creds    Credentials
}

// IssueSession verifies req.Token, evaluates the policy for every target
// and, only when every target is allowed, mints the sessions and records
// one audit event for each. Credentials are returned only when every event
// is durable: an audit failure at any step is an Unavailable error and no
// credentials. Denials and failed verifications are audited too.
func (s *Service) IssueSession(ctx context.Context, req IssueRequest) ([]Session, error) {
	if err := validateIssue(req); err != nil {
		return nil, err
	}
	now := s.now()
	claims, err := s.verifier.Verify(ctx, req.Token)
	if err != nil {
		return nil, s.verifyFailed(ctx, req, now, err)
	}

	pol := s.policy.Load()
	id := identity(claims)
	plans := make([]plan, len(req.Targets))
	denied := false
	for i, t := range req.Targets {
		plans[i] = plan{target: t, decision: pol.Evaluate(id, policy.Target{Role: t.Role, Account: t.Account, Region: t.Region})}
		denied = denied || !plans[i].decision.Allowed
	}
	if denied {
		return nil, s.denied(ctx, req, claims, plans, now)
	}

	for i := range plans {
		p := &plans[i]
		p.spec = buildSpec(claims, p.target, p.decision)
		p.creds, err = s.provider.Issue(ctx, p.spec)
		if err != nil {
			return nil, s.providerFailed(ctx, req, claims, p, now, err)
		}
	}

	sessions := make([]Session, len(plans))
	for i, p := range plans {
		ev := s.sessionEvent(ctx, now, auditv1.Decision_DECISION_ALLOW, req, claims, p)
		res, err := s.append(ctx, ev)
		if err != nil {
			return nil, err
		}
		sessions[i] = Session{
			ID:             p.spec.SessionID,
			Credentials:    p.creds,
			AccountID:      p.decision.Account.ID,
			AccountName:    p.decision.Account.Name,
			Role:           p.decision.Role.Name,
			RoleARN:        p.decision.Role.ARN,
			Region:         p.spec.Region,
			SessionName:    p.spec.SessionName,
			SourceIdentity: p.spec.SourceIdentity,
			Rule:           p.decision.Rule,
			Duration:       p.spec.Duration,
			AuditEventID:   ev.GetId(),
			AuditSequence:  res.GetSequence(),
		}
	}
	return sessions, nil
}

// verifyFailed audits a failed verification and returns the error for the
// caller.
func (s *Service) verifyFailed(ctx context.Context, req IssueRequest, now time.Time, err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, oidc.ErrIssuerUnavailable):
		return &Error{Code: Unavailable, Message: msgIssuerUnavailable, Err: err}
	}
	ev := s.newEvent(ctx, now, auditv1.Decision_DECISION_DENY)
	ev.Reason = msgUnauthenticated
	ev.Actor = &auditv1.Actor{Peer: req.Peer, RequestReason: req.Reason}
	ev.SecretRefs = []*auditv1.SecretRef{s.hasher.Ref("oidc_token", []byte(req.Token))}
	if _, aerr := s.append(ctx, ev); aerr != nil {
		return aerr
	}
	return &Error{Code: Unauthenticated, Message: msgUnauthenticated, Err: err}
}

// denied audits every refused target and returns a PermissionDenied error
// describing the first.
func (s *Service) denied(ctx context.Context, req IssueRequest, claims *oidc.Claims, plans []plan, now time.Time) error {
	var first *Denial
	for i, p := range plans {
		if p.decision.Allowed {
			continue
		}
		ev := s.sessionEvent(ctx, now, auditv1.Decision_DECISION_DENY, req, claims, p)
		if _, err := s.append(ctx, ev); err != nil {
			return err
		}
		if first == nil {
			first = &Denial{
				Target:       i,
				Role:         p.target.Role,
				Account:      p.target.Account,
				Rule:         p.decision.Rule,
				Reason:       p.decision.Reason,
				AuditEventID: ev.GetId(),
			}
		}
	}
	return &Error{
		Code:    PermissionDenied,
		Message: fmt.Sprintf("targets[%d]: %s", first.Target, first.Reason),
		Denial:  first,
	}
}

// providerFailed audits a provider failure and classifies it. Upstream
// error text stays in the cause, never in the message.
func (s *Service) providerFailed(ctx context.Context, req IssueRequest, claims *oidc.Claims, p *plan, now time.Time, err error) error {
	ev := s.sessionEvent(ctx, now, auditv1.Decision_DECISION_ERROR, req, claims, *p)
	ev.Reason = "credential provider failed"
	if _, aerr := s.append(ctx, ev); aerr != nil {
		return aerr
	}
	if errors.Is(err, ErrProviderUnavailable) {
		return &Error{Code: Unavailable, Message: msgProviderUnavailable, Err: err}
	}
	return &Error{Code: Internal, Message: msgInternal, Err: fmt.Errorf("provider %s: %w", s.provider.Name(), err)}
}

// buildSpec turns an allowed target into what the provider needs.
func buildSpec(c *oidc.Claims, t Target, d policy.Decision) SessionSpec {
	id := newUUID()
	return SessionSpec{
		SessionID:      id,
		AccountID:      d.Account.ID,
		RoleARN:        d.Role.ARN,
		RoleName:       d.Role.Name,
		Region:         d.Region,
		SessionName:    sessionName(c),
		SourceIdentity: "cm-" + id,
		Subject:        c.Subject,
		Duration:       grantedDuration(t, d),
		Tags:           sessionTags(c),
		Policy:         t.Policy,
	}
}

// grantedDuration is min(requested, role maximum); 0 asks for the maximum.
func grantedDuration(t Target, d policy.Decision) time.Duration {
	if t.Duration > 0 && t.Duration < d.Role.MaxDuration {
		return t.Duration
	}
	return d.Role.MaxDuration
}

func policyDigest(doc string) string {
	if doc == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(doc))
	return hex.EncodeToString(sum[:])
}
