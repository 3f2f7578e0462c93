package policy

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// The one decision. IssueSession, ExplainDecision, ListRoles, `credmatrix
// policy test` and the hint of a denial all call Decide, so they cannot
// disagree on anything it decides: the target and its residency, the
// broker's freezes and revocations (when given), the guardrails and
// allow rules, the granted duration and the session policy (a template
// that cannot be rendered for the token refuses it).

// Request is everything one decision depends on.
type Request struct {
	// Identity is the verified caller (or, offline, the claims to test).
	Identity Identity
	// Target is the role, account, region and time asked for.
	Target Target
	// Duration is the session length asked for; 0 asks for the longest
	// allowed.
	Duration time.Duration
	// ScopeDown is the caller's extra session policy (JSON), "" for none.
	ScopeDown string
	// SessionID fills the templates' {{session_id}}; "" uses
	// PlaceholderSessionID, which renders to the same length, so a dry
	// run meets the same size limit as the issuance.
	SessionID string
	// ProviderMax is the longest session the credential provider mints
	// (1h with role chaining); 0 means no cap of its own.
	ProviderMax time.Duration
	// State is the broker's state (freezes, revocations); nil offline,
	// where the decision cannot know it.
	State State
}

// PlaceholderSessionID stands for a session id not yet chosen.
const PlaceholderSessionID = "00000000-0000-0000-0000-000000000000"

// State is what the broker's own state says about a resolved target: a
// refusal beats every rule of the policy document.
type State interface {
	// Check returns the state rules considered, in order; the first
	// one that Matched refuses.
	Check(id Identity, acct Account, role Role, now time.Time) []StateRule
}

// StateRule is one rule of the broker's state (a freeze, a revocation).
type StateRule struct {
	// Rule names it ("account-frozen", "revoked").
	Rule string
	// Matched reports that it refuses the target.
	Matched bool
	// Reason says why, for the caller.
	Reason string
	// Evaluation says why it matched or not, for the explanation.
	Evaluation string
}

// SessionPolicyRule is the rule named when a role's session policy
// template cannot be rendered for the token (a claim it needs is
// missing).
const SessionPolicyRule = "session-policy"

// Outcome is one decision.
type Outcome struct {
	// Decision is who decided and why, with every rule considered.
	Decision
	// Duration is the session length that would be granted (0 when
	// refused): min(asked, the decision's maximum, the provider's).
	Duration time.Duration
	// SessionPolicy is the rendered session policy (canonical JSON),
	// "" for none.
	SessionPolicy string
	// Invalid is set when the request itself is wrong (a scope-down
	// policy that cannot be merged, a bad duration): the caller's
	// mistake, not a refusal.
	Invalid *FieldError
}

// FieldError is a request field in error.
type FieldError struct {
	// Field names it ("policy", "duration").
	Field string
	// Msg says what is wrong.
	Msg string
}

// Error returns "field: msg".
func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Session length bounds a request may ask for (STS's).
const (
	MinRequestDuration = 15 * time.Minute
	MaxRequestDuration = 12 * time.Hour
)

// CheckRequest checks the parts of a request that do not depend on the
// policy: the duration asked for and the scope-down policy's JSON. The
// broker runs it before verifying the token; Decide runs it again.
func CheckRequest(duration time.Duration, scopeDown string) *FieldError {
	switch {
	case duration != 0 && (duration < MinRequestDuration || duration > MaxRequestDuration):
		return &FieldError{Field: "duration", Msg: "must be between 15m and 12h"}
	case len(scopeDown) > MaxSessionPolicyBytes:
		return &FieldError{Field: "policy", Msg: fmt.Sprintf("at most %d bytes", MaxSessionPolicyBytes)}
	case !utf8.ValidString(scopeDown):
		return &FieldError{Field: "policy", Msg: "must be UTF-8"}
	}
	if scopeDown != "" {
		if err := CheckPolicyJSON(scopeDown); err != nil {
			return &FieldError{Field: "policy", Msg: err.Error()}
		}
	}
	return nil
}

// Decide makes the decision for req.
func (p *Policy) Decide(req Request) Outcome {
	if fe := CheckRequest(req.Duration, req.ScopeDown); fe != nil {
		return Outcome{Decision: deny("invalid request: " + fe.Error()), Invalid: fe}
	}
	now := req.Target.Time
	if now.IsZero() {
		now = time.Now()
		req.Target.Time = now
	}
	out := Outcome{Decision: p.Evaluate(req.Identity, req.Target)}
	d := &out.Decision
	if d.Role.Name != "" && req.ScopeDown != "" {
		// Whether a scope-down policy can be merged depends on the role
		// alone: say so whatever the caller and the broker's state.
		if err := p.checkMerge(d.Role, req.ScopeDown); err != nil {
			d.Allowed, d.Reason, d.MaxDuration = false, "invalid request: policy: "+err.Msg, 0
			out.Invalid = &FieldError{Field: "policy", Msg: err.Msg}
			return out
		}
	}
	if d.Account.ID != "" && d.Role.Name != "" && req.State != nil {
		var evs []RuleEvaluation
		refused := false
		for _, sr := range req.State.Check(req.Identity, d.Account, d.Role, now) {
			evs = append(evs, RuleEvaluation{Rule: sr.Rule, Effect: EffectDeny, Matched: sr.Matched, Reason: sr.Evaluation, AboutTarget: true})
			if sr.Matched && !refused {
				refused = true
				d.Allowed, d.Rule, d.Reason, d.MaxDuration = false, sr.Rule, sr.Reason, 0
			}
		}
		d.Evaluations = append(evs, d.Evaluations...)
	}
	if !d.Allowed {
		return out
	}
	out.Duration = d.MaxDuration
	if out.Duration == 0 {
		out.Duration = d.Role.MaxDuration
	}
	if req.Duration > 0 && req.Duration < out.Duration {
		out.Duration = req.Duration
	}
	if req.ProviderMax > 0 && out.Duration > req.ProviderMax {
		out.Duration = req.ProviderMax
	}
	sid := req.SessionID
	if sid == "" {
		sid = PlaceholderSessionID
	}
	doc, err := p.SessionPolicy(*d, RenderValues{Claim: req.Identity.Claim, Subject: req.Identity.Subject, SessionID: sid}, req.ScopeDown)
	var extra *ExtraPolicyError
	switch {
	case errors.As(err, &extra):
		d.Allowed, d.Reason = false, "invalid request: policy: "+extra.Msg
		out.Duration, out.Invalid = 0, &FieldError{Field: "policy", Msg: extra.Msg}
	case err != nil:
		// The role's template needs a claim this token lacks: a
		// refusal, explained.
		d.Allowed, d.Rule, d.Reason = false, SessionPolicyRule, err.Error()
		out.Duration = 0
	default:
		out.SessionPolicy = doc
	}
	return out
}
