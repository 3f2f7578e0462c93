// Package policy is the broker's trust policy: which issuers are trusted,
// the account matrix, the roles in each account and the rules that let a
// verified token assume a role.
//
// The policy is one YAML document kept in Git. Parsing is strict (unknown
// fields are errors) and every problem is reported with the file, line and
// field, so that `credmatrix policy lint` and a refused reload point at
// the line to fix. A parsed Policy is immutable and safe for concurrent
// use; a reload builds a new one and swaps it in.
//
// Only allow rules with exact claim matches exist for now. Rule keeps its
// matchers behind an interface so glob, list and CEL matchers and deny
// guardrails can be added without changing Evaluate's callers.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"time"
)

// Duration bounds of a role's max_duration, which are also the bounds of
// an AWS role session.
const (
	// MinDuration is the shortest max_duration a role may declare.
	MinDuration = 15 * time.Minute
	// MaxDuration is the longest max_duration a role may declare.
	MaxDuration = 12 * time.Hour
	// DefaultDuration is a role's max_duration when it declares none
	// (the AWS default for a role).
	DefaultDuration = time.Hour
)

// DefaultDeny is the rule named in a Decision when no allow rule matched.
const DefaultDeny = "default-deny"

// Issuer is a trusted OIDC issuer.
type Issuer struct {
	// Name is how rules refer to the issuer ("github").
	Name string
	// URL is the issuer URL, as in the tokens' `iss`.
	URL string
	// Audiences are the `aud` values accepted from this issuer.
	Audiences []string
}

// Account is one account of the account matrix.
type Account struct {
	// ID is the 12-digit AWS account id.
	ID string
	// Name is the account's short name ("dev").
	Name string
	// OU is the organisational unit path ("/root/dev"), if any.
	OU string
	// Region is the account's home region.
	Region string
	// Residency is the data-residency zone ("eu"), if any.
	Residency string
}

// Role is an IAM role declared in one account.
type Role struct {
	// Name is the role name rules refer to ("deploy").
	Name string
	// AccountID is the id of the account the role lives in.
	AccountID string
	// ARN is the role's ARN.
	ARN string
	// MaxDuration is the longest session the role may be given.
	MaxDuration time.Duration
}

// Effect is what a rule does when it matches. The values are those of
// credmatrix.broker.v1.Effect.
type Effect int

const (
	// EffectAllow rules grant a session when they match.
	EffectAllow Effect = 1
	// EffectDeny rules refuse a session when they match; they are
	// evaluated before allow rules. Reserved: no deny rule exists yet.
	EffectDeny Effect = 2
)

// String returns "allow" or "deny".
func (e Effect) String() string {
	switch e {
	case EffectAllow:
		return "allow"
	case EffectDeny:
		return "deny"
	default:
		return "unspecified"
	}
}

// Rule is a rule as written in the policy.
type Rule struct {
	// Name identifies the rule in decisions and audit events.
	Name string
	// Effect is what the rule does when it matches.
	Effect Effect
	// Issuer is the name of the issuer the token must come from.
	Issuer string
	// Roles are the role names the rule covers.
	Roles []string
	// Accounts are the account ids the rule covers.
	Accounts []string
	// Claims are the claims the token must carry, with their exact values.
	Claims map[string]string
}

// Policy is a parsed, validated trust policy.
type Policy struct {
	source   string
	sha256   string
	issuers  []Issuer
	accounts []Account
	roles    []Role
	rules    []*rule
}

// Source returns the name the policy was parsed under (its file path).
func (p *Policy) Source() string { return p.source }

// SHA256 returns the hex SHA-256 of the policy document, to record which
// policy decided.
func (p *Policy) SHA256() string { return p.sha256 }

// Issuers returns the trusted issuers, in document order.
func (p *Policy) Issuers() []Issuer {
	out := make([]Issuer, len(p.issuers))
	for i, is := range p.issuers {
		is.Audiences = slices.Clone(is.Audiences)
		out[i] = is
	}
	return out
}

// Accounts returns the account matrix, in document order.
func (p *Policy) Accounts() []Account { return slices.Clone(p.accounts) }

// Roles returns the declared roles, in document order.
func (p *Policy) Roles() []Role { return slices.Clone(p.roles) }

// Rules returns the rules, in evaluation order.
func (p *Policy) Rules() []Rule {
	out := make([]Rule, len(p.rules))
	for i, r := range p.rules {
		out[i] = Rule{
			Name:     r.name,
			Effect:   r.effect,
			Issuer:   r.issuer.Name,
			Roles:    slices.Clone(r.roles),
			Accounts: slices.Clone(r.accounts),
			Claims:   maps.Clone(r.claimValues),
		}
	}
	return out
}

// Account finds an account by id or name.
func (p *Policy) Account(ref string) (Account, bool) {
	for _, a := range p.accounts {
		if a.ID == ref || a.Name == ref {
			return a, true
		}
	}
	return Account{}, false
}

func (p *Policy) role(name, accountID string) (Role, bool) {
	for _, r := range p.roles {
		if r.Name == name && r.AccountID == accountID {
			return r, true
		}
	}
	return Role{}, false
}

func (p *Policy) hasRole(name string) bool {
	return slices.ContainsFunc(p.roles, func(r Role) bool { return r.Name == name })
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
