package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/credmatrix/credmatrix/platform/auditevent"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// actorClaims are the non-secret claims copied into audit events: enough
// to tell which pipeline run asked, nothing that grants anything.
var actorClaims = []string{
	"repository", "ref", "sha", "run_id", "workflow", "event_name",
	"job_workflow_ref", "namespace", "environment",
}

// append records ev and fails closed: any error, or a missing result, is
// an Unavailable error. Every event passes through auditevent.Normalise
// first, so no text a caller put in it (a reason, a target, a claim) can
// make it unrecordable: secret-shaped values become SecretRefs, control
// characters are escaped and oversized text is cut with a marker.
func (s *Service) append(ctx context.Context, ev *auditv1.Event) (_ *auditv1.AppendResult, err error) {
	if ev.ResidencyZone == "" {
		ev.ResidencyZone = s.zoneOf(ev)
	}
	auditevent.Normalise(ev, s.hasher)
	ctx, span := startSpan(ctx, "broker.audit_append", eventAttrs(ev)...)
	defer func() { endSpan(span, err) }()
	res, err := s.auditor.Append(ctx, ev)
	if err == nil && res == nil {
		err = errors.New("audit append returned no result")
	}
	if err != nil {
		return nil, &domainerr.Error{Code: domainerr.Unavailable, Message: msgAuditUnavailable, Err: fmt.Errorf("append audit event %s: %w", ev.GetId(), err)}
	}
	return res, nil
}

// newEvent starts a session event with a fresh id, the decision time and
// the trace of the request.
func (s *Service) newEvent(ctx context.Context, now time.Time, d auditv1.Decision) *auditv1.Event {
	ev := &auditv1.Event{
		Id:       newUUID(),
		Time:     timestamppb.New(now),
		Kind:     auditv1.Kind_KIND_SESSION_ISSUE,
		Decision: d,
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		ev.TraceId = sc.TraceID().String()
		ev.SpanId = sc.SpanID().String()
	}
	return ev
}

// sessionEvent records one target's outcome. For an allowed target p
// carries the minted credentials; only their access key id and an HMAC of
// the session token are recorded.
func (s *Service) sessionEvent(ctx context.Context, now time.Time, d auditv1.Decision, req IssueRequest, c *oidc.Claims, p plan) *auditv1.Event {
	ev := s.newEvent(ctx, now, d)
	ev.Reason = p.decision.Reason
	ev.Rule = p.decision.Rule
	ev.Actor = actor(c, req)
	acct, role := p.decision.Account, p.decision.Role
	detail := &auditv1.SessionDetail{
		AccountId:   acct.ID,
		AccountName: acct.Name,
		RoleName:    role.Name,
		RoleArn:     role.ARN,
		Region:      p.decision.Region,
		Residency:   acct.Residency,
		OuPath:      acct.OU,
		Provider:    s.provider.Name(),
	}
	if acct.ID == "" { // unknown account: keep what the caller asked for
		detail.AccountName = p.target.Account
	}
	if role.Name == "" {
		detail.RoleName = p.target.Role
	}
	ev.SecretRefs = []*auditv1.SecretRef{s.hasher.Ref("oidc_token", []byte(req.Token))}
	if p.spec.SessionID != "" {
		detail.SessionName = p.spec.SessionName
		detail.SourceIdentity = p.spec.SourceIdentity
		detail.SessionId = p.spec.SessionID
		detail.Duration = durationpb.New(p.spec.Duration)
		detail.SessionTags = p.spec.Tags
		detail.SessionPolicySha256 = policyDigest(p.spec.Policy)
	}
	if p.creds.AccessKeyID != "" {
		detail.AccessKeyId = p.creds.AccessKeyID
		detail.Expiration = timestamppb.New(p.creds.Expiration)
		ev.SecretRefs = append(ev.SecretRefs, s.hasher.Ref("session_token", []byte(p.creds.SessionToken)))
	}
	ev.Detail = &auditv1.Event_Session{Session: detail}
	return ev
}

func actor(c *oidc.Claims, req IssueRequest) *auditv1.Actor {
	a := &auditv1.Actor{
		Principal:     c.Issuer + "#" + c.Subject,
		Issuer:        c.Issuer,
		Subject:       c.Subject,
		Peer:          req.Peer,
		RequestReason: req.Reason,
	}
	for _, name := range actorClaims {
		if v, ok := c.String(name); ok && v != "" {
			if a.Claims == nil {
				a.Claims = map[string]string{}
			}
			a.Claims[name] = v // bounded and normalised by append
		}
	}
	return a
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// zoneOf is the residency zone an event is about, which decides the audit
// log it goes to: the zone of the accounts it names (its target, or the
// accounts an administrator froze or revoked) when they are all in one
// zone; "" (the global log) when it names none, or accounts of several
// zones or of none.
func (s *Service) zoneOf(ev *auditv1.Event) string {
	ids := []string{ev.GetSession().GetAccountId(), ev.GetAdmin().GetAccountId()}
	ids = append(ids, ev.GetAdmin().GetAccountIds()...)
	pol := s.Policy()
	zone, seen := "", false
	for _, id := range ids {
		if id == "" {
			continue
		}
		z := ""
		if a, ok := pol.Account(id); ok {
			z = a.Residency
		}
		switch {
		case !seen:
			zone, seen = z, true
		case z != zone:
			return ""
		}
	}
	return zone
}
