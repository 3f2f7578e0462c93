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
// Evaluation order: the target must resolve (account, role, residency
// zone), then deny rules (guardrails) are evaluated before allow rules and
// a matching deny rule always wins; the first matching allow rule grants
// the session. Claim conditions are exact values, globs ("refs/heads/*"),
// lists of alternatives, negations ({not: ...}) and, for the rare complex
// case, CEL expressions over the claims, the target and the time. A
// missing claim never satisfies an allow rule and always satisfies a deny
// rule's condition: guardrails fail closed.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"strings"
	"sync"
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
	// StrictAudience requires `aud` to hold exactly one value.
	StrictAudience bool
	// Algorithms are the accepted JWS algorithms; empty means the
	// verifier's defaults.
	Algorithms []string
	// Leeway is the tolerated clock skew; 0 means the verifier's default.
	Leeway time.Duration
	// SingleUse makes every token usable for one issuance only (by `jti`,
	// which becomes required), across broker replicas.
	SingleUse bool
}

// OU caps the session duration of every account under an OU path.
type OU struct {
	// Path is the OU path ("/root/prod"); it covers its sub-OUs.
	Path string
	// MaxDuration caps sessions in accounts under Path.
	MaxDuration time.Duration
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
	// SessionPolicy is the session policy template (JSON with
	// ${claim:NAME}, ${account_id}, ${account}, ${region}, ${role},
	// ${session_id} placeholders inside strings), empty for none.
	SessionPolicy string
	// PolicyARNs are managed policies passed as session policies.
	PolicyARNs []string
	// SessionTags are static session tags added to the claim-derived ones.
	SessionTags map[string]string
	// TransitiveTagKeys are the session tags that survive role chaining.
	TransitiveTagKeys []string
	// ExternalID is passed to AssumeRole when the role's trust policy
	// requires one.
	ExternalID string
}

// Effect is what a rule does when it matches. The values are those of
// credmatrix.broker.v1.Effect.
type Effect int

const (
	// EffectAllow rules grant a session when they match.
	EffectAllow Effect = 1
	// EffectDeny rules (guardrails) refuse a session when they match;
	// they are evaluated before allow rules and beat them.
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
	// Issuer is the name of the issuer the token must come from (empty:
	// any, deny rules only).
	Issuer string
	// Roles are the role names the rule covers (empty: all, deny rules
	// only).
	Roles []string
	// Accounts are the account ids the rule covers.
	Accounts []string
	// OUs are the OU paths whose accounts the rule covers.
	OUs []string
	// Residency are the residency zones whose accounts the rule covers.
	Residency []string
	// Claims describes each claim condition ("acme/app",
	// "glob refs/heads/*", "any of [a b]", "not ...").
	Claims map[string]string
	// Condition is the CEL condition, if any.
	Condition string
	// MaxDuration caps sessions the rule grants (0: no cap of its own).
	MaxDuration time.Duration
}

// Policy is a parsed, validated trust policy.
type Policy struct {
	source   string
	sha256   string
	issuers  []Issuer
	zones    map[string][]string
	ous      []OU
	accounts []Account
	roles    []Role
	rules    []*rule
	// templates holds the compiled session policy of each role that has
	// one, by roleKey.
	templates map[string]*template
	// lines maps field paths to source lines, for lint findings.
	lines lineIndex
	// residency caches the canonical residency statement of each zone.
	residency sync.Map
}

func roleKey(name, accountID string) string { return name + "@" + accountID }

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
			Name:        r.name,
			Effect:      r.effect,
			Roles:       slices.Clone(r.roles),
			Accounts:    slices.Clone(r.accounts),
			OUs:         slices.Clone(r.ous),
			Residency:   slices.Clone(r.residency),
			Claims:      maps.Clone(r.claimText),
			Condition:   r.conditionText,
			MaxDuration: r.maxDuration,
		}
		if r.issuer != nil {
			out[i].Issuer = r.issuer.Name
		}
	}
	return out
}

// OUs returns the OU duration caps, in document order.
func (p *Policy) OUs() []OU { return slices.Clone(p.ous) }

// ZoneRegions returns the region patterns of a residency zone: as
// declared under zones, or "<zone>-*" for an undeclared zone.
func (p *Policy) ZoneRegions(zone string) []string {
	if r, ok := p.zones[zone]; ok {
		return slices.Clone(r)
	}
	return []string{zone + "-*"}
}

// inZone reports whether region is in the residency zone.
func (p *Policy) inZone(zone, region string) bool {
	for _, pat := range p.ZoneRegions(zone) {
		if globMatch(pat, region) {
			return true
		}
	}
	return false
}

// underOU reports whether an account OU path lies at or under ou.
func underOU(accountOU, ou string) bool {
	return accountOU == ou || strings.HasPrefix(accountOU, ou+"/")
}

// IssuerByURL finds a trusted issuer by its URL.
func (p *Policy) IssuerByURL(url string) (Issuer, bool) {
	for _, is := range p.issuers {
		if is.URL == url {
			is.Audiences = slices.Clone(is.Audiences)
			return is, true
		}
	}
	return Issuer{}, false
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
