package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"
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
	// Evaluations lists every rule considered, in evaluation order.
	Evaluations []RuleEvaluation
}

// Evaluate decides whether id may assume target. It never fails: an
// unknown role or account, or a region outside the account's residency
// zone, is a denial with a reason, not an error.
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
	if !inResidency(acct, d.Region) {
		d.Reason = fmt.Sprintf("region %q is outside residency zone %q of account %q", d.Region, acct.Residency, acct.Name)
		return d
	}
	for _, r := range p.rules {
		ev := r.evaluate(id, role, acct)
		d.Evaluations = append(d.Evaluations, ev)
		if ev.Matched && !d.Allowed {
			d.Allowed, d.Rule = true, r.name
			d.Reason = fmt.Sprintf("allowed by rule %q", r.name)
		}
	}
	if !d.Allowed {
		d.Reason = fmt.Sprintf("no allow rule matches role %q in account %q for this token", role.Name, acct.Name)
	}
	return d
}

func deny(reason string) Decision {
	return Decision{Rule: DefaultDeny, Reason: reason}
}

// inResidency reports whether region lies in the account's residency zone:
// the home region always does, and a zone "eu" holds the "eu-*" regions.
// An account without a zone accepts any region. The full residency
// guardrails come with deny rules.
func inResidency(acct Account, region string) bool {
	return region == acct.Region || acct.Residency == "" || strings.HasPrefix(region, acct.Residency+"-")
}

// Grant is a role an identity may assume.
type Grant struct {
	// Account is the role's account.
	Account Account
	// Role is the role.
	Role Role
	// Rule is the allow rule that grants it.
	Rule string
}

// RolesFor lists every declared role id may assume in its account's home
// region, in document order.
func (p *Policy) RolesFor(id Identity) []Grant {
	var out []Grant
	for _, r := range p.roles {
		d := p.Evaluate(id, Target{Role: r.Name, Account: r.AccountID})
		if d.Allowed {
			out = append(out, Grant{Account: d.Account, Role: d.Role, Rule: d.Rule})
		}
	}
	return out
}

// rule is a validated rule with its matchers.
type rule struct {
	name        string
	effect      Effect
	issuer      Issuer
	roles       []string
	accounts    []string // account ids
	claimValues map[string]string
	claims      []claimCondition // sorted by claim name
}

// claimCondition is one condition on a claim.
type claimCondition struct {
	claim string
	match matcher
}

// matcher tests one claim value. Exact matching is the only kind for now;
// glob, list and CEL matchers will implement it too.
type matcher interface {
	// match reports whether value (present is false for a missing claim)
	// satisfies the condition and, when it does not, why.
	match(value string, present bool) (bool, string)
}

// exact matches one literal value.
type exact string

func (e exact) match(value string, present bool) (bool, string) {
	switch {
	case !present:
		return false, fmt.Sprintf("want %s, claim missing", string(e))
	case value != string(e):
		return false, fmt.Sprintf("want %s, got %s", string(e), value)
	default:
		return true, ""
	}
}

func newClaimConditions(claims map[string]string) []claimCondition {
	names := make([]string, 0, len(claims))
	for k := range claims {
		names = append(names, k)
	}
	sort.Strings(names)
	out := make([]claimCondition, 0, len(names))
	for _, k := range names {
		out = append(out, claimCondition{claim: k, match: exact(claims[k])})
	}
	return out
}

func (r *rule) evaluate(id Identity, role Role, acct Account) RuleEvaluation {
	ev := RuleEvaluation{Rule: r.name, Effect: r.effect}
	var why []string
	if id.Issuer != r.issuer.URL {
		why = append(why, fmt.Sprintf("issuer: want %s, got %s", r.issuer.URL, id.Issuer))
	}
	if !slices.Contains(r.roles, role.Name) {
		why = append(why, fmt.Sprintf("role %s: not covered by the rule", role.Name))
	}
	if !slices.Contains(r.accounts, acct.ID) {
		why = append(why, fmt.Sprintf("account %s: not covered by the rule", acct.Name))
	}
	for _, c := range r.claims {
		v, ok := id.claim(c.claim)
		if matched, reason := c.match.match(v, ok); !matched {
			why = append(why, fmt.Sprintf("claim %s: %s", c.claim, reason))
		}
	}
	if len(why) > 0 {
		ev.Reason = strings.Join(why, "; ")
		return ev
	}
	ev.Matched = true
	ev.Reason = "issuer, role, account and every claim match"
	return ev
}
