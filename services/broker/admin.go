package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"time"
	"unicode/utf8"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// Revocation limits.
const (
	// DefaultBlockFor is how long a revocation blocks further issuance
	// when the operator does not say: the longest session.
	DefaultBlockFor = MaxSessionDuration
	// MaxBlockFor bounds a revocation's block.
	MaxBlockFor = 30 * 24 * time.Hour
	// MinBlockFor is the shortest block.
	MinBlockFor = time.Minute
	// MaxRevocationClaims bounds the claim selectors of a revocation.
	MaxRevocationClaims = 16
	// MaxSelectorBytes bounds a subject, issuer or claim value selector:
	// enough for any value a token can carry that is worth naming.
	MaxSelectorBytes = 2048
)

var (
	sessionIDRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	ouPathRE    = regexp.MustCompile(`^(/[\w.-]+)+$`)
	accountRE   = regexp.MustCompile(`^[0-9]{12}$`)
)

// RevokeRequest selects sessions to revoke; every set selector must
// match and at least one is required.
type RevokeRequest struct {
	// Subject, Issuer, Role, AccountID and SessionID select sessions.
	Subject, Issuer, Role, AccountID, SessionID string
	// Claims are claim values the callers' tokens carried.
	Claims map[string]string
	// IssuedBefore: sessions issued before it are revoked; zero means now.
	IssuedBefore time.Time
	// BlockFor is how long further issuance stays blocked; 0 means
	// DefaultBlockFor.
	BlockFor time.Duration
	// Reason is required.
	Reason string
	// DryRun reports what the revocation would match and the IAM
	// policies it would put, recording and enforcing nothing.
	DryRun bool
}

// RevokeResult reports a revocation.
type RevokeResult struct {
	// ID identifies the revocation.
	ID string
	// RolesUpdated counts the IAM roles given a deny policy (aws provider).
	RolesUpdated int
	// Roles reports, for every role the revocation covers, whether it
	// reaches sessions already issued (IAM) or only blocks issuance, and
	// why.
	Roles []RoleRevocation
	// IssuedBefore: sessions issued before it are revoked.
	IssuedBefore time.Time
	// BlockUntil: further issuance is refused until then (zero: none).
	BlockUntil time.Time
	// AuditEventID and AuditSequence name the audit event ("" and 0 in a
	// dry run).
	AuditEventID  string
	AuditSequence uint64
	// DryRun reports that nothing was recorded or enforced.
	DryRun bool
}

// FreezeRequest names what to freeze or unfreeze: exactly one of an
// account (id or name) and an OU path.
type FreezeRequest struct {
	Account, OU string
	// Reason is required, except in a dry run.
	Reason string
	// DryRun reports what would be covered, changing nothing.
	DryRun bool
}

// FreezeResult reports a freeze or unfreeze.
type FreezeResult struct {
	// AccountIDs are the accounts covered.
	AccountIDs []string
	// RoleARNs are the roles in those accounts.
	RoleARNs []string
	// AuditEventID and AuditSequence name the audit event ("" and 0 in a
	// dry run).
	AuditEventID  string
	AuditSequence uint64
	// DryRun reports that nothing was changed.
	DryRun bool
}

// ReloadResult describes the policy in force after a reload.
type ReloadResult struct {
	// SHA256 is the policy document's digest.
	SHA256 string
	// Rules is the number of rules.
	Rules int
	// Changed reports whether a different policy is now in force.
	Changed bool
	// KeysRefreshed reports whether every issuer's signing keys in use
	// were refetched (false: some could not be; their cached keys stay
	// within the grace).
	KeysRefreshed bool
	// AuditEventID names the audit event ("" in a dry run).
	AuditEventID string
	// DryRun reports that nothing was changed.
	DryRun bool
	// AuditSequence is the audit event's sequence number.
	AuditSequence uint64
}

// requireAdmin refuses, and audits, callers whose mTLS identity is not an
// administrator's.
func (s *Service) requireAdmin(ctx context.Context, peer string, kind auditv1.Kind, action string) error {
	if peer != "" && s.admins[peer] {
		return nil
	}
	ev := s.newEvent(ctx, s.now(), auditv1.Decision_DECISION_DENY)
	ev.Kind = kind
	ev.Reason = "caller is not an administrator"
	ev.Actor = &auditv1.Actor{Principal: peer, Peer: peer}
	ev.Detail = &auditv1.Event_Admin{Admin: &auditv1.AdminDetail{Action: action}}
	if _, err := s.append(ctx, ev); err != nil {
		return err
	}
	return &domainerr.Error{Code: domainerr.PermissionDenied, Message: "operator RPCs need an administrator's mTLS identity"}
}

func validateReason(reason string) error {
	switch {
	case reason == "":
		return invalidf("reason", "required: say why, for the audit log")
	case len(reason) > MaxReasonBytes || !utf8.ValidString(reason):
		return invalidf("reason", fmt.Sprintf("at most %d bytes of UTF-8", MaxReasonBytes))
	}
	return nil
}

func validateRevoke(r RevokeRequest) error {
	if r.Subject == "" && r.Issuer == "" && r.Role == "" && r.AccountID == "" && r.SessionID == "" && len(r.Claims) == 0 {
		return invalidf("subject", "at least one selector (subject, issuer, role, account_id, session_id, claims) is required")
	}
	for _, f := range []struct {
		name, val string
		max       int
	}{{"subject", r.Subject, MaxSelectorBytes}, {"issuer", r.Issuer, MaxSelectorBytes}, {"role", r.Role, maxFieldBytes}} {
		if len(f.val) > f.max || !utf8.ValidString(f.val) {
			return invalidf(f.name, fmt.Sprintf("at most %d bytes of UTF-8", f.max))
		}
	}
	switch {
	case r.AccountID != "" && !accountRE.MatchString(r.AccountID):
		return invalidf("account_id", "must be 12 digits")
	case r.SessionID != "" && !sessionIDRE.MatchString(r.SessionID):
		return invalidf("session_id", "not a session id")
	case len(r.Claims) > MaxRevocationClaims:
		return invalidf("claims", fmt.Sprintf("at most %d", MaxRevocationClaims))
	case r.BlockFor != 0 && (r.BlockFor < MinBlockFor || r.BlockFor > MaxBlockFor):
		return invalidf("block_for", "must be between 1m and 720h")
	}
	for k, v := range r.Claims {
		if k == "" || len(k) > maxFieldBytes || len(v) > MaxSelectorBytes || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return invalidf("claims", fmt.Sprintf("names are 1 to %d and values at most %d bytes of UTF-8", maxFieldBytes, MaxSelectorBytes))
		}
	}
	if r.DryRun && r.Reason == "" {
		return nil
	}
	return validateReason(r.Reason)
}

// RevokeSessions records a revocation: further issuance for the match is
// refused for BlockFor, sessions issued before IssuedBefore are reported
// revoked by GetSession and, with a provider that implements
// SessionRevoker, stop working wherever every selector can be expressed
// in IAM for the role; the result says, role by role, which. The
// revocation is audited before it takes effect. Administrators only.
func (s *Service) RevokeSessions(ctx context.Context, peer string, req RevokeRequest) (RevokeResult, error) {
	if err := s.requireAdmin(ctx, peer, auditv1.Kind_KIND_SESSION_REVOKE, "revoke sessions"); err != nil {
		return RevokeResult{}, err
	}
	if err := validateRevoke(req); err != nil {
		return RevokeResult{}, err
	}
	now := s.now()
	r := Revocation{
		ID: newUUID(), Subject: req.Subject, Issuer: req.Issuer, Role: req.Role, AccountID: req.AccountID,
		SessionID: req.SessionID, Claims: maps.Clone(req.Claims), IssuedBefore: req.IssuedBefore,
		CreatedAt: now, Reason: req.Reason,
	}
	if r.Claims == nil {
		r.Claims = map[string]string{}
	}
	if r.IssuedBefore.IsZero() || r.IssuedBefore.After(now) {
		r.IssuedBefore = now
	}
	if r.SessionID == "" {
		block := req.BlockFor
		if block == 0 {
			block = DefaultBlockFor
		}
		r.BlockUntil = now.Add(block)
	}
	roles := s.matchingRoles(r)
	out := RevokeResult{ID: r.ID, IssuedBefore: r.IssuedBefore, BlockUntil: r.BlockUntil, DryRun: req.DryRun}
	if req.DryRun {
		var err error
		if out.Roles, _, err = s.enforce(ctx, r, roles, now, true); err != nil {
			return out, s.stateUnavailable(ctx, err)
		}
		return out, nil
	}
	ev := s.newEvent(ctx, now, auditv1.Decision_DECISION_ALLOW)
	ev.Kind = auditv1.Kind_KIND_SESSION_REVOKE
	ev.Reason = req.Reason
	ev.Actor = &auditv1.Actor{Principal: peer, Peer: peer, RequestReason: req.Reason}
	detail := &auditv1.AdminDetail{
		Action: "revoke sessions", RevocationId: r.ID, Subject: r.Subject, Issuer: r.Issuer, RoleName: r.Role,
		AccountId: r.AccountID, SessionId: r.SessionID, Claims: r.Claims, IssuedBefore: timestamppb.New(r.IssuedBefore),
	}
	if !r.BlockUntil.IsZero() {
		detail.BlockUntil = timestamppb.New(r.BlockUntil)
	}
	ev.Detail = &auditv1.Event_Admin{Admin: detail}
	res, err := s.append(ctx, ev)
	if err != nil {
		return RevokeResult{}, err
	}
	out.AuditEventID, out.AuditSequence = ev.GetId(), res.GetSequence()
	err = s.store.AddRevocation(ctx, r)
	if err != nil {
		return RevokeResult{}, s.stateUnavailable(ctx, err)
	}
	out.Roles, out.RolesUpdated, err = s.enforce(ctx, r, roles, now, false)
	if err != nil {
		// Issuance is blocked already; the IAM update is what failed.
		// Say so, without upstream text.
		enforceable := 0
		for _, rr := range out.Roles {
			if rr.Enforcement == EnforcedInIAM {
				enforceable++
			}
		}
		return out, &domainerr.Error{Code: domainerr.Unavailable, Message: fmt.Sprintf("revocation %s recorded and new sessions are blocked, but updating IAM roles failed (%d of %d updated); retry", r.ID, out.RolesUpdated, enforceable), Err: err}
	}
	return out, nil
}

// freezeScopes resolves an account (id or name) or OU path to freeze
// scopes and the account ids they cover.
func (s *Service) freezeScopes(account, ou string) ([]string, []string, error) {
	pol := s.Policy()
	switch {
	case (account == "") == (ou == ""):
		return nil, nil, invalidf("account", "exactly one of account and ou_path is required")
	case account != "":
		a, ok := pol.Account(account)
		if !ok {
			return nil, nil, invalidf("account", "not in the account matrix")
		}
		return []string{FreezeScope("account", a.ID)}, []string{a.ID}, nil
	case !ouPathRE.MatchString(ou):
		return nil, nil, invalidf("ou_path", "must be a path such as /root/prod")
	}
	var ids []string
	for _, a := range pol.Accounts() {
		if a.OU == ou || len(a.OU) > len(ou) && a.OU[:len(ou)+1] == ou+"/" {
			ids = append(ids, a.ID)
		}
	}
	sort.Strings(ids)
	return []string{FreezeScope("ou", ou)}, ids, nil
}

// FreezeAccount is the incident kill switch: no session is issued for the
// account, or any account under the OU (including accounts added to it
// later), until UnfreezeAccount. Audited before it takes effect.
// Administrators only.
func (s *Service) FreezeAccount(ctx context.Context, peer string, req FreezeRequest) (FreezeResult, error) {
	return s.setFrozen(ctx, peer, req, true)
}

// UnfreezeAccount lifts a freeze. Administrators only.
func (s *Service) UnfreezeAccount(ctx context.Context, peer string, req FreezeRequest) (FreezeResult, error) {
	return s.setFrozen(ctx, peer, req, false)
}

func (s *Service) setFrozen(ctx context.Context, peer string, req FreezeRequest, freeze bool) (FreezeResult, error) {
	account, ou, reason := req.Account, req.OU, req.Reason
	kind, action := auditv1.Kind_KIND_ACCOUNT_FREEZE, "freeze"
	if !freeze {
		kind, action = auditv1.Kind_KIND_ACCOUNT_UNFREEZE, "unfreeze"
	}
	if err := s.requireAdmin(ctx, peer, kind, action); err != nil {
		return FreezeResult{}, err
	}
	if len(account) > maxFieldBytes || len(ou) > maxFieldBytes {
		return FreezeResult{}, invalidf("account", "too long")
	}
	scopes, ids, err := s.freezeScopes(account, ou)
	if err != nil {
		return FreezeResult{}, err
	}
	var arns []string
	for _, role := range s.Policy().Roles() {
		if slices.Contains(ids, role.AccountID) {
			arns = append(arns, role.ARN)
		}
	}
	if req.DryRun {
		return FreezeResult{AccountIDs: ids, RoleARNs: arns, DryRun: true}, nil
	}
	if err := validateReason(reason); err != nil {
		return FreezeResult{}, err
	}
	now := s.now()
	ev := s.newEvent(ctx, now, auditv1.Decision_DECISION_ALLOW)
	ev.Kind = kind
	ev.Reason = reason
	ev.Actor = &auditv1.Actor{Principal: peer, Peer: peer, RequestReason: reason}
	detail := &auditv1.AdminDetail{Action: action, OuPath: ou, AccountIds: ids}
	if account != "" {
		detail.AccountId = ids[0]
	}
	ev.Detail = &auditv1.Event_Admin{Admin: detail}
	res, err := s.append(ctx, ev)
	if err != nil {
		return FreezeResult{}, err
	}
	if freeze {
		_, err = s.store.Freeze(ctx, scopes, reason, now)
	} else {
		_, err = s.store.Unfreeze(ctx, scopes)
	}
	if err != nil {
		return FreezeResult{}, s.stateUnavailable(ctx, err)
	}
	return FreezeResult{AccountIDs: ids, RoleARNs: arns, AuditEventID: ev.GetId(), AuditSequence: res.GetSequence()}, nil
}

// ReloadPolicy reloads the trust policy at an administrator's request:
// this replica's at once, then every other replica's, each before its
// next decision (see applyReloadRequest); if this replica refuses the new
// policy, nothing is requested of the others. A dry run reads and
// validates it and says whether it differs, changing nothing.
func (s *Service) ReloadPolicy(ctx context.Context, peer string, dryRun bool) (ReloadResult, error) {
	if err := s.requireAdmin(ctx, peer, auditv1.Kind_KIND_POLICY_RELOAD, "reload policy"); err != nil {
		return ReloadResult{}, err
	}
	if dryRun {
		if s.reload == nil {
			return ReloadResult{}, &domainerr.Error{Code: domainerr.FailedPrecondition, Message: ErrReloadDisabled.Error()}
		}
		pol, _, err := s.reload(ctx)
		if err != nil {
			var pe *policy.ParseError
			msg := "policy could not be read"
			if errors.As(err, &pe) {
				msg = truncate(pe.Error(), 4096)
			}
			return ReloadResult{}, &domainerr.Error{Code: domainerr.FailedPrecondition, Message: "the policy source would be refused: " + msg, Err: err}
		}
		return ReloadResult{SHA256: pol.SHA256(), Rules: len(pol.Rules()), Changed: pol.SHA256() != s.Policy().SHA256(), DryRun: true}, nil
	}
	res, err := s.Reload(ctx, "rpc:"+peer)
	if err != nil {
		return res, err
	}
	gen, err := s.store.RequestReload(ctx, "rpc:"+peer)
	if err != nil {
		return res, &domainerr.Error{Code: domainerr.Unavailable, Message: "policy reloaded at this replica, but the request could not be passed to the others; retry", Err: err}
	}
	s.markReloaded(gen)
	return res, nil
}

// ErrReloadDisabled is returned by Reload when the Service has no Reload
// function.
var ErrReloadDisabled = errors.New("policy reload is not configured")

// Reload loads the trust policy afresh (trigger says why: "rpc:<peer>",
// "file", "signal") and swaps it in atomically with the verifier of its
// issuers. A policy that fails to load is refused, the current one stays
// and the refusal is audited with the validation errors (file, line,
// field); the error says the same. A successful reload is audited before
// it takes effect.
func (s *Service) Reload(ctx context.Context, trigger string) (ReloadResult, error) {
	if s.reload == nil {
		return ReloadResult{}, &domainerr.Error{Code: domainerr.FailedPrecondition, Message: ErrReloadDisabled.Error()}
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cur := s.snap.Load()
	pol, verifier, err := s.reload(ctx)
	now := s.now()
	ev := s.newEvent(ctx, now, auditv1.Decision_DECISION_ALLOW)
	ev.Kind = auditv1.Kind_KIND_POLICY_RELOAD
	ev.Actor = &auditv1.Actor{Principal: trigger}
	if err != nil {
		var pe *policy.ParseError
		msg := "policy could not be read"
		if errors.As(err, &pe) {
			msg = truncate(pe.Error(), 4096)
		}
		ev.Decision = auditv1.Decision_DECISION_DENY
		ev.Reason = "new trust policy refused; the policy in force stays"
		ev.Detail = &auditv1.Event_Policy{Policy: &auditv1.PolicyDetail{Sha256: cur.policy.SHA256(), Source: cur.policy.Source(), RuleCount: uint32(len(cur.policy.Rules())), Error: msg}}
		if _, aerr := s.append(ctx, ev); aerr != nil {
			return ReloadResult{}, aerr
		}
		return ReloadResult{}, &domainerr.Error{Code: domainerr.FailedPrecondition, Message: "new trust policy refused; the policy in force stays: " + msg, Err: err}
	}
	changed := pol.SHA256() != cur.policy.SHA256()
	ev.Reason = "trust policy reloaded"
	if !changed {
		ev.Reason = "trust policy unchanged"
		verifier = cur.verifier
	} else {
		adoptKeys(verifier, cur.verifier)
		s.watchKeys(verifier)
	}
	// A reload refetches issuers' keys even when the file did not change,
	// so an operator can drop a withdrawn key at once.
	keyErr := refreshKeys(ctx, verifier)
	if ctx.Err() != nil {
		return ReloadResult{}, ctx.Err()
	}
	if keyErr != nil {
		ev.Reason += "; some issuers' signing keys could not be refetched (cached keys kept within their grace)"
	} else {
		ev.Reason += "; signing keys refetched"
	}
	ev.Detail = &auditv1.Event_Policy{Policy: &auditv1.PolicyDetail{Sha256: pol.SHA256(), Source: pol.Source(), RuleCount: uint32(len(pol.Rules()))}}
	res, err := s.append(ctx, ev)
	if err != nil {
		return ReloadResult{}, err
	}
	if changed {
		s.snap.Store(&snapshot{policy: pol, verifier: verifier})
	}
	return ReloadResult{SHA256: pol.SHA256(), Rules: len(pol.Rules()), Changed: changed, KeysRefreshed: keyErr == nil, AuditEventID: ev.GetId(), AuditSequence: res.GetSequence()}, nil
}
