// Package grpcapi serves the broker over gRPC: it translates
// credmatrix.broker.v1 messages to domain calls and back, and maps domain
// errors to statuses through the mapping every service shares
// (grpcserver.ToStatus), adding the denial detail of a refused request.
//
// Handlers do nothing else. Authentication of the connection, logging,
// metrics, tracing and panic recovery are interceptors of the shared
// server plumbing; this package only learns the peer's identity through
// WithIdentity.
package grpcapi

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Broker is what the server needs from the domain; *broker.Service
// implements it.
type Broker interface {
	IssueSession(ctx context.Context, req broker.IssueRequest) ([]broker.Session, error)
	ListRoles(ctx context.Context, token string) ([]policy.Grant, error)
	ExplainDecision(ctx context.Context, req broker.ExplainRequest) (broker.Explanation, error)
	GetSession(ctx context.Context, accessKeyID, sessionToken string) (*broker.SessionInfo, error)
	RevokeSessions(ctx context.Context, peer string, req broker.RevokeRequest) (broker.RevokeResult, error)
	FreezeAccount(ctx context.Context, peer string, req broker.FreezeRequest) (broker.FreezeResult, error)
	UnfreezeAccount(ctx context.Context, peer string, req broker.FreezeRequest) (broker.FreezeResult, error)
	ReloadPolicy(ctx context.Context, peer string, dryRun bool) (broker.ReloadResult, error)
	ListRevocations(ctx context.Context, peer string) ([]broker.Revocation, []string, error)
}

var _ Broker = (*broker.Service)(nil)

// Option configures a Server.
type Option func(*Server)

// WithIdentity sets how the caller's mTLS identity (its SPIFFE URI SAN)
// is read from a request context; it is recorded as the peer in audit
// events.
func WithIdentity(f func(ctx context.Context) (string, bool)) Option {
	return func(s *Server) { s.identity = f }
}

// WithLogger sets where the causes of failed requests are logged, once,
// by the rule every service shares (grpcserver.Fail); statuses carry only
// safe messages. The default discards them.
func WithLogger(l hclog.Logger) Option {
	return func(s *Server) { s.log = l }
}

// Server implements brokerv1.BrokerServiceServer.
type Server struct {
	brokerv1.UnimplementedBrokerServiceServer
	b        Broker
	identity func(context.Context) (string, bool)
	log      hclog.Logger
}

var _ brokerv1.BrokerServiceServer = (*Server)(nil)

// New returns a Server for b.
func New(b Broker, opts ...Option) *Server {
	s := &Server{b: b, log: hclog.NewNullLogger()}
	for _, opt := range opts {
		opt(s)
	}
	return s
}

// fail logs the cause of err once and returns its status: the shared
// mapping (grpcserver.Fail), plus the DenialDetail of a policy denial.
func (s *Server) fail(ctx context.Context, err error) error {
	st := grpcserver.Fail(ctx, s.log, err)
	if e, ok := errors.AsType[*domainerr.Error](err); ok && st.Code() == codes.PermissionDenied {
		if d, ok := e.Detail.(*broker.Denial); ok {
			st = withDenial(st, d)
		}
	}
	return st.Err()
}

// IssueSession implements brokerv1.BrokerServiceServer.
func (s *Server) IssueSession(ctx context.Context, req *brokerv1.IssueSessionRequest) (*brokerv1.IssueSessionResponse, error) {
	in := broker.IssueRequest{Token: req.GetToken(), Reason: req.GetReason()}
	for i, t := range req.GetTargets() {
		target, err := targetFromProto("targets["+strconv.Itoa(i)+"]", t)
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		in.Targets = append(in.Targets, target)
	}
	in.Peer = s.peer(ctx)
	sessions, err := s.b.IssueSession(ctx, in)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &brokerv1.IssueSessionResponse{Sessions: make([]*brokerv1.Session, 0, len(sessions))}
	for _, ss := range sessions {
		resp.Sessions = append(resp.Sessions, sessionToProto(ss))
	}
	return resp, nil
}

// ListRoles implements brokerv1.BrokerServiceServer.
func (s *Server) ListRoles(ctx context.Context, req *brokerv1.ListRolesRequest) (*brokerv1.ListRolesResponse, error) {
	grants, err := s.b.ListRoles(ctx, req.GetToken())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &brokerv1.ListRolesResponse{Roles: make([]*brokerv1.RoleSummary, 0, len(grants))}
	for _, g := range grants {
		resp.Roles = append(resp.Roles, &brokerv1.RoleSummary{
			AccountId:   g.Account.ID,
			AccountName: g.Account.Name,
			Role:        g.Role.Name,
			RoleArn:     g.Role.ARN,
			Region:      g.Account.Region,
			MaxDuration: durationpb.New(g.MaxDuration),
			Rule:        g.Rule,
		})
	}
	return resp, nil
}

// ExplainDecision implements brokerv1.BrokerServiceServer.
func (s *Server) ExplainDecision(ctx context.Context, req *brokerv1.ExplainDecisionRequest) (*brokerv1.ExplainDecisionResponse, error) {
	target, err := targetFromProto("target", req.GetTarget())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	ex, err := s.b.ExplainDecision(ctx, broker.ExplainRequest{Token: req.GetToken(), Target: target, Peer: s.peer(ctx)})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	d := ex.Decision
	resp := &brokerv1.ExplainDecisionResponse{
		Allowed:      d.Allowed,
		DecidingRule: d.Rule,
		Reason:       d.Reason,
		Evaluations:  make([]*brokerv1.RuleEvaluation, 0, len(d.Evaluations)),
		AuditEventId: ex.AuditEventID,
	}
	for _, ev := range d.Evaluations {
		resp.Evaluations = append(resp.Evaluations, &brokerv1.RuleEvaluation{
			Rule:    ev.Rule,
			Effect:  brokerv1.Effect(ev.Effect),
			Matched: ev.Matched,
			Reason:  ev.Reason,
		})
	}
	if ex.Duration > 0 {
		resp.EffectiveDuration = durationpb.New(ex.Duration)
	}
	return resp, nil
}

// GetSession implements brokerv1.BrokerServiceServer.
func (s *Server) GetSession(ctx context.Context, req *brokerv1.GetSessionRequest) (*brokerv1.GetSessionResponse, error) {
	info, err := s.b.GetSession(ctx, req.GetAccessKeyId(), req.GetSessionToken())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &brokerv1.GetSessionResponse{
		SessionId:     info.SessionID,
		Subject:       info.Subject,
		AccountId:     info.AccountID,
		Role:          info.RoleName,
		RoleArn:       info.RoleARN,
		Region:        info.Region,
		IssueTime:     timestamppb.New(info.IssuedAt),
		Expiration:    timestamppb.New(info.Expiration),
		Revoked:       info.Revoked,
		SessionTags:   info.Tags,
		SessionPolicy: info.SessionPolicy,
	}, nil
}

// peer returns the caller's mTLS identity, "" when unknown.
func (s *Server) peer(ctx context.Context) string {
	if s.identity == nil {
		return ""
	}
	id, _ := s.identity(ctx)
	return id
}

// RevokeSessions implements brokerv1.BrokerServiceServer.
func (s *Server) RevokeSessions(ctx context.Context, req *brokerv1.RevokeSessionsRequest) (*brokerv1.RevokeSessionsResponse, error) {
	in := broker.RevokeRequest{
		Subject: req.GetSubject(), Issuer: req.GetIssuer(), Role: req.GetRole(), AccountID: req.GetAccountId(),
		SessionID: req.GetSessionId(), Claims: req.GetClaims(), Reason: req.GetReason(), DryRun: req.GetDryRun(),
	}
	if ts := req.GetIssuedBefore(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return nil, s.fail(ctx, &domainerr.Error{Code: domainerr.Invalid, Message: "issued_before: invalid"})
		}
		in.IssuedBefore = ts.AsTime()
	}
	if d := req.GetBlockFor(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() == 0 {
			return nil, s.fail(ctx, &domainerr.Error{Code: domainerr.Invalid, Message: "block_for: invalid"})
		}
		in.BlockFor = d.AsDuration()
	}
	res, err := s.b.RevokeSessions(ctx, s.peer(ctx), in)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &brokerv1.RevokeSessionsResponse{
		RevocationId: res.ID, RolesUpdated: uint32(res.RolesUpdated), AuditSequence: res.AuditSequence,
		AuditEventId: res.AuditEventID, DryRun: res.DryRun, IssuedBefore: timestamppb.New(res.IssuedBefore),
	}
	if !res.BlockUntil.IsZero() {
		out.BlockUntil = timestamppb.New(res.BlockUntil)
	}
	for _, rr := range res.Roles {
		pr := &brokerv1.RoleRevocation{
			AccountId: rr.Role.AccountID, Role: rr.Role.Name, RoleArn: rr.Role.ARN, Reason: rr.Reason, PolicyDocument: rr.Policy,
			Enforcement: brokerv1.RevocationEnforcement_REVOCATION_ENFORCEMENT_ISSUANCE_ONLY,
		}
		if rr.Enforcement == broker.EnforcedInIAM {
			pr.Enforcement = brokerv1.RevocationEnforcement_REVOCATION_ENFORCEMENT_IAM
		}
		if !rr.CompactedBefore.IsZero() {
			pr.CompactedBefore = timestamppb.New(rr.CompactedBefore)
		}
		out.Roles = append(out.Roles, pr)
	}
	return out, nil
}

// FreezeAccount implements brokerv1.BrokerServiceServer.
func (s *Server) FreezeAccount(ctx context.Context, req *brokerv1.FreezeAccountRequest) (*brokerv1.FreezeAccountResponse, error) {
	res, err := s.b.FreezeAccount(ctx, s.peer(ctx), broker.FreezeRequest{Account: req.GetAccount(), OU: req.GetOuPath(), Reason: req.GetReason(), DryRun: req.GetDryRun()})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &brokerv1.FreezeAccountResponse{AccountIds: res.AccountIDs, AuditSequence: res.AuditSequence, AuditEventId: res.AuditEventID, DryRun: res.DryRun, RoleArns: res.RoleARNs}, nil
}

// UnfreezeAccount implements brokerv1.BrokerServiceServer.
func (s *Server) UnfreezeAccount(ctx context.Context, req *brokerv1.UnfreezeAccountRequest) (*brokerv1.UnfreezeAccountResponse, error) {
	res, err := s.b.UnfreezeAccount(ctx, s.peer(ctx), broker.FreezeRequest{Account: req.GetAccount(), OU: req.GetOuPath(), Reason: req.GetReason(), DryRun: req.GetDryRun()})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &brokerv1.UnfreezeAccountResponse{AccountIds: res.AccountIDs, AuditSequence: res.AuditSequence, AuditEventId: res.AuditEventID, DryRun: res.DryRun, RoleArns: res.RoleARNs}, nil
}

// ReloadPolicy implements brokerv1.BrokerServiceServer.
func (s *Server) ReloadPolicy(ctx context.Context, req *brokerv1.ReloadPolicyRequest) (*brokerv1.ReloadPolicyResponse, error) {
	res, err := s.b.ReloadPolicy(ctx, s.peer(ctx), req.GetDryRun())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &brokerv1.ReloadPolicyResponse{Sha256: res.SHA256, RuleCount: uint32(res.Rules), AuditSequence: res.AuditSequence,
		Changed: res.Changed, AuditEventId: res.AuditEventID, DryRun: res.DryRun, KeysRefreshed: res.KeysRefreshed}, nil
}

// ListRevocations implements brokerv1.BrokerServiceServer.
func (s *Server) ListRevocations(ctx context.Context, _ *brokerv1.ListRevocationsRequest) (*brokerv1.ListRevocationsResponse, error) {
	revs, frozen, err := s.b.ListRevocations(ctx, s.peer(ctx))
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &brokerv1.ListRevocationsResponse{FrozenScopes: frozen}
	for _, r := range revs {
		pr := &brokerv1.Revocation{
			RevocationId: r.ID, Subject: r.Subject, Issuer: r.Issuer, Role: r.Role, AccountId: r.AccountID, SessionId: r.SessionID,
			Claims: r.Claims, IssuedBefore: timestamppb.New(r.IssuedBefore), CreatedAt: timestamppb.New(r.CreatedAt), Reason: r.Reason,
		}
		if !r.BlockUntil.IsZero() {
			pr.BlockUntil = timestamppb.New(r.BlockUntil)
		}
		out.Revocations = append(out.Revocations, pr)
	}
	return out, nil
}

func targetFromProto(field string, t *brokerv1.SessionTarget) (broker.Target, error) {
	out := broker.Target{Role: t.GetRole(), Account: t.GetAccount(), Region: t.GetRegion(), Policy: t.GetPolicy()}
	if d := t.GetDuration(); d != nil {
		if err := d.CheckValid(); err != nil {
			return broker.Target{}, &domainerr.Error{Code: domainerr.Invalid, Message: field + ".duration: invalid"}
		}
		out.Duration = d.AsDuration()
	}
	return out, nil
}

func sessionToProto(s broker.Session) *brokerv1.Session {
	return &brokerv1.Session{
		SessionId: s.ID,
		Credentials: &brokerv1.Credentials{
			AccessKeyId:     s.Credentials.AccessKeyID,
			SecretAccessKey: s.Credentials.SecretAccessKey,
			SessionToken:    s.Credentials.SessionToken,
			Expiration:      timestamppb.New(s.Credentials.Expiration),
		},
		AccountId:      s.AccountID,
		AccountName:    s.AccountName,
		Role:           s.Role,
		RoleArn:        s.RoleARN,
		Region:         s.Region,
		StsEndpoint:    s.STSEndpoint,
		SessionName:    s.SessionName,
		SourceIdentity: s.SourceIdentity,
		Rule:           s.Rule,
		AuditEventId:   s.AuditEventID,
		AuditSequence:  s.AuditSequence,
		Duration:       durationpb.New(s.Duration),
	}
}

var shellSafeRE = regexp.MustCompile(`^[A-Za-z0-9_.@=+,/:-]+$`)

// shellQuote quotes a caller-supplied word for the hint's command line.
func shellQuote(s string) string {
	if shellSafeRE.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
