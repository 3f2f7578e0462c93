package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
)

// Identity is a verified caller as the policy sees it: the token's issuer
// URL, subject and a lookup of its scalar claims (oidc.Claims.String fits).
type Identity struct {
	// Issuer is the verified `iss`.
	Issuer string
	// Subject is the verified `sub`.
	Subject string
	// Claim returns a scalar claim; nil means the token has no other claims.
	Claim func(name string) (string, bool)
	// Raw holds every claim as decoded JSON, for CEL conditions.
	Raw map[string]any
}

func (id Identity) claim(name string) (string, bool) {
	switch {
	case name == "sub":
		return id.Subject, id.Subject != ""
	case name == "iss":
		return id.Issuer, id.Issuer != ""
	case id.Claim == nil:
		return "", false
	default:
		return id.Claim(name)
	}
}

// Target is the session asked for.
type Target struct {
	// Role is a role name.
	Role string
	// Account is an account id or name.
	Account string
	// Region is the region asked for; empty means the account's home region.
	Region string
	// Time is when the decision is made, for CEL time windows; zero means
	// now.
	Time time.Time
}

// RuleEvaluation is one rule's outcome in a Decision.
type RuleEvaluation struct {
	// Rule is the rule's name.
	Rule string
	// Effect is what the rule does when it matches.
	Effect Effect
	// Matched reports whether the rule matched.
	Matched bool
	// Reason says why it matched or not, e.g.
	// "claim ref: want refs/heads/main, got refs/heads/dev".
	Reason string
	// AboutTarget reports that the rule's scope (issuer, roles,
	// accounts, OUs, residency) covers the caller's issuer and the
	// target: its conditions are what decide. A caller who is not an
	// administrator is shown only these rules.
	AboutTarget bool
}

// Decision is the outcome of evaluating the policy for one identity and
// target.
type Decision struct {
	// Allowed reports whether a session may be issued.
	Allowed bool
	// Rule is the rule that decided, DefaultDeny when none did.
	Rule string
	// Reason says why, in words safe to show the caller.
	Reason string
	// Account is the resolved target account (zero when unknown).
	Account Account
	// Role is the resolved role (zero when unknown).
	Role Role
	// Region is the region the session would be for.
	Region string
	// Evaluations lists every rule considered, in evaluation order (deny
	// rules first).
	Evaluations []RuleEvaluation
	// MaxDuration is the longest session an allowed decision grants:
	// min(role maximum, the allow rule's cap, every cap of the account's
	// OUs).
	MaxDuration time.Duration
}

// Evaluate decides whether id may assume target. It never fails: an
// unknown role or account, or a region outside the account's residency
// zone, is a denial with a reason, not an error. Deny rules are evaluated
// first and win; then the first matching allow rule grants. Every rule is
// evaluated so that the decision can explain why each did not match.
func (p *Policy) Evaluate(id Identity, target Target) Decision {
	acct, ok := p.Account(target.Account)
	if !ok {
		return deny(fmt.Sprintf("account %q is not in the account matrix", target.Account))
	}
	d := Decision{Rule: DefaultDeny, Account: acct, Region: target.Region}
	if d.Region == "" {
		d.Region = acct.Region
	}
	role, ok := p.role(target.Role, acct.ID)
	switch {
	case !ok && !p.hasRole(target.Role):
		d.Reason = fmt.Sprintf("role %q is not declared in the trust policy", target.Role)
		return d
	case !ok:
		d.Reason = fmt.Sprintf("role %q is not declared in account %q", target.Role, acct.Name)
		return d
	}
	d.Role = role
	if acct.Residency != "" && !p.inZone(acct.Residency, d.Region) {
		d.Rule = ResidencyRule
		d.Reason = fmt.Sprintf("region %q is outside residency zone %q of account %q", d.Region, acct.Residency, acct.Name)
		return d
	}
	now := target.Time
	if now.IsZero() {
		now = time.Now()
	}
	ct := celTarget{acct: acct, role: role, region: d.Region}
	var denyRule, allowRule *rule
	for _, r := range p.rules {
		if r.effect != EffectDeny {
			continue
		}
		ev := r.evaluate(id, ct, now)
		d.Evaluations = append(d.Evaluations, ev)
		if ev.Matched && denyRule == nil {
			denyRule = r
		}
	}
	for _, r := range p.rules {
		if r.effect == EffectDeny {
			continue
		}
		ev := r.evaluate(id, ct, now)
		d.Evaluations = append(d.Evaluations, ev)
		if ev.Matched && allowRule == nil {
			allowRule = r
		}
	}
	switch {
	case denyRule != nil:
		d.Rule = denyRule.name
		d.Reason = fmt.Sprintf("denied by guardrail %q", denyRule.name)
		if denyRule.reason != "" {
			d.Reason += ": " + denyRule.reason
		}
	case allowRule != nil:
		d.Allowed, d.Rule = true, allowRule.name
		d.Reason = fmt.Sprintf("allowed by rule %q", allowRule.name)
		d.MaxDuration = p.maxDuration(role, acct, allowRule)
	default:
		d.Reason = fmt.Sprintf("no allow rule matches role %q in account %q for this token", role.Name, acct.Name)
	}
	return d
}

// ResidencyRule is the rule named in a Decision that refuses a region
// outside the account's residency zone.
const ResidencyRule = "residency"

// maxDuration is min(role maximum, rule cap, OU caps).
func (p *Policy) maxDuration(role Role, acct Account, r *rule) time.Duration {
	m := role.MaxDuration
	if r.maxDuration > 0 && r.maxDuration < m {
		m = r.maxDuration
	}
	for _, ou := range p.ous {
		if underOU(acct.OU, ou.Path) && ou.MaxDuration < m {
			m = ou.MaxDuration
		}
	}
	return m
}

func deny(reason string) Decision {
	return Decision{Rule: DefaultDeny, Reason: reason}
}

// Grant is a role an identity may assume.
type Grant struct {
	// Account is the role's account.
	Account Account
	// Role is the role.
	Role Role
	// Rule is the allow rule that grants it.
	Rule string
	// MaxDuration is the longest session the identity would get.
	MaxDuration time.Duration
}

// RolesFor lists every declared role id may assume in its account's home
// region, in document order, as Decide decides (with the broker's state
// and the provider's cap when given in base).
func (p *Policy) RolesFor(id Identity, now time.Time, base Request) []Grant {
	var out []Grant
	for _, r := range p.roles {
		req := base
		req.Identity, req.Target = id, Target{Role: r.Name, Account: r.AccountID, Time: now}
		if o := p.Decide(req); o.Allowed {
			out = append(out, Grant{Account: o.Account, Role: o.Role, Rule: o.Rule, MaxDuration: o.Duration})
		}
	}
	return out
}

// rule is a validated rule with its matchers.
type rule struct {
	name          string
	effect        Effect
	issuer        *Issuer // nil: any issuer (deny rules only)
	roles         []string
	accounts      []string // account ids
	ous           []string
	residency     []string
	claims        []claimCondition // sorted by claim name
	claimText     map[string]string
	condition     cel.Program
	conditionText string
	maxDuration   time.Duration
	reason        string
}

// claimCondition is one condition on a claim.
type claimCondition struct {
	claim string
	match matcher
}

// evaluate matches one rule. Allow rules need every selector and
// condition to hold. Deny rules match when every scope selector (issuer,
// roles, accounts, OUs, residency) holds and every claim condition holds
// or cannot be decided (missing claim, CEL error): guardrails fail
// closed.
func (r *rule) evaluate(id Identity, t celTarget, now time.Time) RuleEvaluation {
	ev := RuleEvaluation{Rule: r.name, Effect: r.effect}
	isDeny := r.effect == EffectDeny
	var why []string
	if r.issuer != nil && id.Issuer != r.issuer.URL {
		why = append(why, fmt.Sprintf("issuer: want %s, got %s", r.issuer.URL, id.Issuer))
	}
	if len(r.roles) > 0 && !slices.Contains(r.roles, t.role.Name) {
		why = append(why, fmt.Sprintf("role %s: not covered by the rule", t.role.Name))
	}
	inAccounts := slices.Contains(r.accounts, t.acct.ID)
	inOUs := slices.ContainsFunc(r.ous, func(ou string) bool { return underOU(t.acct.OU, ou) })
	if (len(r.accounts) > 0 || len(r.ous) > 0) && !inAccounts && !inOUs {
		why = append(why, fmt.Sprintf("account %s: not covered by the rule", t.acct.Name))
	}
	if len(r.residency) > 0 && !slices.Contains(r.residency, t.acct.Residency) {
		why = append(why, fmt.Sprintf("residency %q: not covered by the rule", t.acct.Residency))
	}
	ev.AboutTarget = len(why) == 0
	for _, c := range r.claims {
		v, ok := id.claim(c.claim)
		if isDeny && !ok {
			continue // a missing claim satisfies a guardrail
		}
		if matched, reason := c.match.match(v, ok); !matched {
			why = append(why, fmt.Sprintf("claim %s: %s", c.claim, reason))
		}
	}
	if r.condition != nil {
		ok, err := evalCEL(r.condition, id, t, now)
		switch {
		case err != nil && isDeny:
			// undecidable: the guardrail holds
		case err != nil:
			why = append(why, fmt.Sprintf("condition: %s", truncateText(err.Error(), 200)))
		case !ok:
			why = append(why, "condition: false")
		}
	}
	if len(why) > 0 {
		ev.Reason = strings.Join(why, "; ")
		return ev
	}
	ev.Matched = true
	if isDeny {
		ev.Reason = "every selector and condition of the guardrail holds"
	} else {
		ev.Reason = "issuer, role, account and every condition match"
	}
	return ev
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
