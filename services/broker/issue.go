package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"go.opentelemetry.io/otel/trace"
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

	// kind is the audit kind of refusals (ExplainDecision's are its own).
	kind auditv1.Kind
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
	outcome  policy.Outcome
	spec     SessionSpec
	creds    Credentials
}

// IssueSession verifies req.Token, evaluates the policy for every target
// and, only when every target is allowed, mints the sessions and records
// one audit event for each. Credentials are returned only when every event
// is durable: an audit failure at any step is an Unavailable error and no
// credentials. Denials and failed verifications are audited too.
func (s *Service) IssueSession(ctx context.Context, req IssueRequest) ([]Session, error) {
	now := s.now()
	if err := validateToken(req.Token); err != nil && req.Token != "" {
		// An oversized token is a probe: record it (by HMAC) too.
		var e *domainerr.Error
		errors.As(err, &e)
		if aerr := s.auditTokenRefusal(ctx, req, now, auditv1.Decision_DECISION_DENY, e.Message); aerr != nil {
			return nil, aerr
		}
		return nil, err
	}
	if err := validateIssue(req); err != nil {
		return nil, err
	}
	ctx, err := s.syncState(ctx, now)
	if err != nil {
		return nil, err
	}
	snap := s.snap.Load()
	claims, err := snap.verifier.Verify(ctx, req.Token)
	if err != nil {
		return nil, s.verifyFailed(ctx, req, now, err)
	}
	hold, err := s.reserveOnce(ctx, req, snap.policy, claims, now)
	if err != nil {
		return nil, err
	}
	// Whatever happens from here, a token that issued nothing is given
	// back.
	defer hold.release(ctx)

	id := identity(claims)
	plans := make([]plan, len(req.Targets))
	denied := false
	for i, t := range req.Targets {
		sid := newUUID()
		o, err := s.decide(ctx, snap.policy, id, t, now, sid)
		if err != nil {
			return nil, err
		}
		if o.Invalid != nil {
			return nil, invalidf(fmt.Sprintf("targets[%d].%s", i, o.Invalid.Field), o.Invalid.Msg)
		}
		plans[i] = plan{target: t, decision: o.Decision, outcome: o}
		if o.Allowed {
			plans[i].spec = buildSpec(claims, t, o, sid)
			plans[i].spec.WebIdentityToken = req.Token
		}
		if i == 0 || (!denied && !o.Allowed) {
			// The request span shows the first target, or the first denied.
			annotateRequest(ctx, t, o.Decision)
		}
		denied = denied || !o.Allowed
	}
	if !denied {
		roles := make([]string, len(plans))
		for i, p := range plans {
			roles[i] = p.decision.Role.ARN
		}
		if ok, wait := s.limiter.allow(claims.Issuer+"#"+claims.Subject, roles); !ok {
			return nil, s.rateLimited(ctx, req, claims, plans, now, wait)
		}
	}
	if denied {
		return nil, s.denied(ctx, req, claims, plans, now, snap.policy)
	}

	for i := range plans {
		p := &plans[i]
		p.creds, err = s.issueCreds(ctx, p)
		if err != nil {
			return nil, s.providerFailed(ctx, req, claims, p, now, err)
		}
		if si := p.creds.SourceIdentity; si != "" && si != p.spec.SourceIdentity {
			// Coalesced with an identical request: record the session
			// the caller really holds.
			p.spec.SourceIdentity, p.spec.SessionID = si, strings.TrimPrefix(si, "cm-")
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
			STSEndpoint:    p.creds.Endpoint,
			SessionName:    p.spec.SessionName,
			SourceIdentity: p.spec.SourceIdentity,
			Rule:           p.decision.Rule,
			Duration:       p.spec.Duration,
			AuditEventID:   ev.GetId(),
			AuditSequence:  res.GetSequence(),
		}
	}
	// Issued and audited: only now is a single-use token consumed.
	if err := hold.commit(ctx); err != nil {
		return nil, s.commitFailed(ctx, req, claims, plans, now, err)
	}
	return sessions, nil
}

// commitFailed withholds credentials already issued and audited because
// the token's single use could not be recorded, and audits that.
func (s *Service) commitFailed(ctx context.Context, req IssueRequest, claims *oidc.Claims, plans []plan, now time.Time, err error) error {
	reason := "single use could not be recorded; credentials withheld"
	if errors.Is(err, ErrJTILost) {
		reason = "single-use reservation lapsed before the issuance completed; credentials withheld"
	}
	for _, p := range plans {
		ev := s.sessionEvent(ctx, now, auditv1.Decision_DECISION_ERROR, req, claims, p)
		ev.Reason = reason
		if _, aerr := s.append(ctx, ev); aerr != nil {
			return aerr
		}
	}
	if errors.Is(err, ErrJTILost) {
		return &domainerr.Error{Code: domainerr.Unavailable, Message: "single-use token: the request took too long and its reservation lapsed; no credentials issued", Err: err}
	}
	return s.stateUnavailable(ctx, err)
}

// issueCreds calls the credential provider for one planned session in a
// span of its own.
func (s *Service) issueCreds(ctx context.Context, p *plan) (Credentials, error) {
	ctx, span := startSpan(ctx, "broker.provider_issue",
		AttrProvider.String(s.provider.Name()),
		AttrRole.String(p.decision.Role.Name),
		AttrAccount.String(p.decision.Account.Name),
		AttrRegion.String(p.spec.Region))
	creds, err := s.provider.Issue(ctx, p.spec)
	endSpan(span, err)
	return creds, err
}

// Rules named in decisions made by the broker's state rather than the
// policy document.
const (
	// RuleAccountFrozen refuses every session in a frozen account or OU.
	RuleAccountFrozen = "account-frozen"
	// RuleRevoked refuses sessions matching a revocation.
	RuleRevoked = "revoked"
	// RuleRateLimited refuses requests over a rate limit.
	RuleRateLimited = "rate-limited"
)

// decide is the broker's one call of the one decision, policy.Decide,
// for IssueSession, ExplainDecision and ListRoles: the policy with the
// broker's freezes and revocations (which beat any allow rule) and the
// provider's duration cap. sessionID fills the session policy; "" gives a
// placeholder of the same length.
func (s *Service) decide(ctx context.Context, pol *policy.Policy, id policy.Identity, t Target, now time.Time, sessionID string) (o policy.Outcome, err error) {
	ctx, span := startSpan(ctx, "broker.evaluate_policy")
	defer func() {
		span.SetAttributes(targetAttrs(t, o.Decision)...)
		span.SetAttributes(decisionAttrs(o.Decision)...)
		endSpan(span, err)
	}()
	st := &stateCheck{s: s, ctx: ctx}
	req := policy.Request{
		Identity: id, Target: policy.Target{Role: t.Role, Account: t.Account, Region: t.Region, Time: now},
		Duration: t.Duration, ScopeDown: t.Policy, SessionID: sessionID, State: st,
	}
	if dl, ok := s.provider.(DurationLimiter); ok {
		req.ProviderMax = dl.MaxDuration()
	}
	o = pol.Decide(req)
	if st.err != nil {
		return o, s.stateUnavailable(ctx, st.err)
	}
	return o, nil
}

// stateCheck is the broker's state as policy.Decide asks it, read (from
// the cache) only for a target that resolved. A store that cannot be
// read refuses, and decide reports it unavailable.
type stateCheck struct {
	s   *Service
	ctx context.Context
	err error
}

var _ policy.State = (*stateCheck)(nil)

// Check implements policy.State.
func (c *stateCheck) Check(id policy.Identity, acct policy.Account, role policy.Role, now time.Time) []policy.StateRule {
	frozenSet, revs, err := c.s.state(c.ctx, now)
	if err != nil {
		c.err = err
		return []policy.StateRule{{Rule: "state-unavailable", Matched: true, Reason: msgStateUnavailable, Evaluation: "the state store cannot be read"}}
	}
	frozen := ""
	for _, sc := range freezeScopes(acct) {
		if frozenSet[sc] {
			frozen = sc
			break
		}
	}
	target := RevocationTarget{Subject: id.Subject, Issuer: id.Issuer, Role: role.Name, AccountID: acct.ID, Claims: id.Claim}
	var blocking *Revocation
	for i := range revs {
		if revs[i].Blocks(target, now) {
			blocking = &revs[i]
			break
		}
	}
	out := []policy.StateRule{
		{Rule: RuleAccountFrozen, Evaluation: "account and its OUs are not frozen"},
		{Rule: RuleRevoked, Evaluation: "no revocation matches"},
	}
	if frozen != "" {
		out[0].Matched, out[0].Evaluation = true, "frozen: "+frozen
		out[0].Reason = fmt.Sprintf("account %q is frozen (%s) for incident response", acct.Name, frozen)
	}
	if blocking != nil {
		out[1].Matched, out[1].Evaluation = true, "revocation "+blocking.ID
		out[1].Reason = fmt.Sprintf("sessions for this caller in role %q of account %q are revoked until %s (revocation %s)",
			role.Name, acct.Name, blocking.BlockUntil.UTC().Format(time.RFC3339), blocking.ID)
	}
	return out
}

// freezeScopes are the scopes whose freeze covers an account: the
// account and every OU above it.
func freezeScopes(a policy.Account) []string {
	scopes := []string{FreezeScope("account", a.ID)}
	for ou := a.OU; ou != ""; ou = ou[:strings.LastIndexByte(ou, '/')] {
		scopes = append(scopes, FreezeScope("ou", ou))
	}
	return scopes
}

func (s *Service) stateUnavailable(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return &domainerr.Error{Code: domainerr.Unavailable, Message: msgStateUnavailable, Err: err}
}

// Single-use reservations last as long as the request may, and a little
// more; a reservation whose replica died lapses after at most
// maxJTILease and the token may be used again.
const (
	defaultJTILease = 2 * time.Minute
	maxJTILease     = 10 * time.Minute
	jtiLeaseMargin  = 30 * time.Second
	releaseTimeout  = 5 * time.Second
)

// jtiHold is a request's reservation of its single-use token id: it is
// committed only once credentials were issued and audited, and
// released on every other outcome, so a denial or a failure never burns
// a token that issued nothing.
type jtiHold struct {
	s         *Service
	r         JTIReservation
	committed bool
}

// reserveOnce reserves the token's jti for issuers that ask for single
// use (nil hold otherwise): a missing jti, a replay or a use concurrent
// with another request holding the jti is an audited authentication
// failure.
func (s *Service) reserveOnce(ctx context.Context, req IssueRequest, pol *policy.Policy, c *oidc.Claims, now time.Time) (*jtiHold, error) {
	is, ok := pol.IssuerByURL(c.Issuer)
	if !ok || !is.SingleUse {
		return nil, nil
	}
	jti, ok := c.String("jti")
	if !ok || jti == "" || len(jti) > maxFieldBytes {
		return nil, s.verifyFailed(ctx, req, now, errors.New("single-use issuer: jti missing or too long"))
	}
	lease := now.Add(defaultJTILease)
	if dl, ok := ctx.Deadline(); ok {
		lease = now.Add(min(time.Until(dl)+jtiLeaseMargin, maxJTILease))
	}
	h := &jtiHold{s: s, r: JTIReservation{Issuer: c.Issuer, JTI: jti, Holder: newUUID(), Expires: c.Expiry.Add(oidc.MaxLeeway), LeaseUntil: lease}}
	switch err := s.store.ReserveJTI(ctx, h.r, now); {
	case errors.Is(err, ErrJTIUsed):
		return nil, s.verifyFailed(ctx, req, now, errReplayed)
	case errors.Is(err, ErrJTIInUse):
		return nil, s.verifyFailed(ctx, req, now, errJTIInUse)
	case err != nil:
		return nil, s.stateUnavailable(ctx, err)
	}
	return h, nil
}

// commit consumes the reservation. It fails when the reservation was
// lost (it lapsed and another request took the token over): then the
// credentials must not be returned.
func (h *jtiHold) commit(ctx context.Context) error {
	if h == nil {
		return nil
	}
	if err := h.s.store.CommitJTI(ctx, h.r); err != nil {
		return err
	}
	h.committed = true
	return nil
}

// release gives the token back unless it was committed; it runs even
// for a cancelled caller. A failed release only delays the token's
// reuse until the lease lapses.
func (h *jtiHold) release(ctx context.Context) {
	if h == nil || h.committed {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	_ = h.s.store.ReleaseJTI(rctx, h.r)
}

// errReplayed is the cause recorded when a single-use token comes back.
var errReplayed = errors.New("token replayed: its jti was already used")

// errJTIInUse is the cause recorded when a single-use token is used by
// two requests at once.
var errJTIInUse = errors.New("token in use: another request holds its jti")

// rateLimited audits a refusal by rate limit.
func (s *Service) rateLimited(ctx context.Context, req IssueRequest, claims *oidc.Claims, plans []plan, now time.Time, wait time.Duration) error {
	for _, p := range plans {
		p.decision.Allowed, p.decision.Rule = false, RuleRateLimited
		p.decision.Reason = "rate limit exceeded; retry later"
		ev := s.sessionEvent(ctx, now, auditv1.Decision_DECISION_DENY, req, claims, p)
		if _, err := s.append(ctx, ev); err != nil {
			return err
		}
	}
	return &domainerr.Error{Code: domainerr.ResourceExhausted, Message: "rate limit exceeded; retry later", RetryAfter: wait}
}

// verifyFailed audits a failed verification and returns the error for the
// caller.
func (s *Service) verifyFailed(ctx context.Context, req IssueRequest, now time.Time, err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, oidc.ErrIssuerUnavailable):
		// The token may be fine: an issuer outage is an error, not a
		// denial, and is audited like one.
		if aerr := s.auditTokenRefusal(ctx, req, now, auditv1.Decision_DECISION_ERROR, msgIssuerUnavailable); aerr != nil {
			return aerr
		}
		return &domainerr.Error{Code: domainerr.Unavailable, Message: msgIssuerUnavailable, Err: err}
	}
	reason := msgUnauthenticated
	switch {
	case errors.Is(err, errReplayed):
		reason = "token verification failed: replayed single-use token"
	case errors.Is(err, errJTIInUse):
		reason = "token verification failed: single-use token used by two requests at once"
	}
	if aerr := s.auditTokenRefusal(ctx, req, now, auditv1.Decision_DECISION_DENY, reason); aerr != nil {
		return aerr
	}
	return &domainerr.Error{Code: domainerr.Unauthenticated, Message: msgUnauthenticated, Err: err}
}

// auditTokenRefusal records a refused token, named by its HMAC only.
func (s *Service) auditTokenRefusal(ctx context.Context, req IssueRequest, now time.Time, d auditv1.Decision, reason string) error {
	ev := s.newEvent(ctx, now, d)
	if req.kind != 0 {
		ev.Kind = req.kind
	}
	ev.Reason = reason
	ev.Actor = &auditv1.Actor{Peer: req.Peer, RequestReason: req.Reason} // not validated yet: append normalises it
	ev.SecretRefs = []*auditv1.SecretRef{s.hasher.Ref("oidc_token", []byte(req.Token))}
	trace.SpanFromContext(ctx).SetAttributes(AttrDecision.String("deny"))
	_, err := s.append(ctx, ev)
	return err
}

// denied audits every refused target and returns a PermissionDenied error
// describing the first.
func (s *Service) denied(ctx context.Context, req IssueRequest, claims *oidc.Claims, plans []plan, now time.Time, pol *policy.Policy) error {
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
				Region:       p.decision.Region,
				Duration:     p.target.Duration,
				ScopeDown:    p.target.Policy != "",
				PolicySHA256: pol.SHA256(),
				PolicySource: pol.Source(),
				DecidedAt:    now,
			}
		}
	}
	return &domainerr.Error{
		Code:    domainerr.PermissionDenied,
		Message: fmt.Sprintf("targets[%d]: %s", first.Target, first.Reason),
		Detail:  first,
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
	switch {
	case errors.Is(err, ErrProviderUnavailable):
		return &domainerr.Error{Code: domainerr.Unavailable, Message: msgProviderUnavailable, Err: err}
	case errors.Is(err, ErrProviderRefused):
		return &domainerr.Error{Code: domainerr.FailedPrecondition, Message: fmt.Sprintf("AWS refused to issue role %q in account %q (check the role's trust policy); no credentials issued",
			p.decision.Role.Name, p.decision.Account.Name), Err: err}
	}
	return &domainerr.Error{Code: domainerr.Internal, Message: msgInternal, Err: fmt.Errorf("provider %s: %w", s.provider.Name(), err)}
}

// buildSpec turns an allowed decision into what the provider needs.
func buildSpec(c *oidc.Claims, t Target, o policy.Outcome, id string) SessionSpec {
	d := o.Decision
	tags := sessionTags(c)
	for k, v := range d.Role.SessionTags {
		tags[k] = v
	}
	return SessionSpec{
		SessionID:         id,
		AccountID:         d.Account.ID,
		RoleARN:           d.Role.ARN,
		RoleName:          d.Role.Name,
		Region:            d.Region,
		SessionName:       sessionName(c),
		SourceIdentity:    "cm-" + id,
		Subject:           c.Subject,
		Issuer:            c.Issuer,
		Duration:          o.Duration,
		Policy:            o.SessionPolicy,
		Tags:              tags,
		TransitiveTagKeys: slices.Clone(d.Role.TransitiveTagKeys),
		PolicyARNs:        slices.Clone(d.Role.PolicyARNs),
		ExternalID:        d.Role.ExternalID,
	}
}

func policyDigest(doc string) string {
	if doc == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(doc))
	return hex.EncodeToString(sum[:])
}
