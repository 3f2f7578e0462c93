package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Severity grades a lint finding.
type Severity string

// Severities.
const (
	// SeverityError is a policy the broker refuses to load.
	SeverityError Severity = "error"
	// SeverityWarning is a loadable policy that is probably wrong or too
	// broad.
	SeverityWarning Severity = "warning"
)

// Finding codes.
const (
	// FindingInvalid is a validation problem (unknown role or account,
	// missing audience, bad field …): the broker would refuse the policy.
	FindingInvalid = "invalid"
	// FindingBroadSubject is a `sub` condition whose wildcard covers more
	// than one repository or namespace.
	FindingBroadSubject = "broad-subject"
	// FindingGenericAudience is an audience shared with other relying
	// parties (AWS's own OIDC federation), so tokens minted for them work
	// here.
	FindingGenericAudience = "generic-audience"
	// FindingMutableName is a rule binding a renameable name (repository,
	// owner, project path) where the issuer also offers an immutable id.
	FindingMutableName = "mutable-name"
	// FindingUnreachable is an allow rule that can never grant anything.
	FindingUnreachable = "unreachable-rule"
	// FindingSiblingGlob is a wildcard inside a name segment of sub,
	// repository, ref or environment (repo:acme/app*), which also
	// matches sibling names (repo:acme/app-evil) that anyone able to
	// create a repository, branch or environment can choose.
	FindingSiblingGlob = "sibling-glob"
)

// Finding is one lint result.
type Finding struct {
	// Severity grades it.
	Severity Severity
	// Code classifies it (Finding* constants).
	Code string
	// Line is the 1-based line (0 when unknown).
	Line int
	// Field is the field path ("rules[2].claims.sub").
	Field string
	// Message says what is wrong and how to fix it.
	Message string
}

// format renders "file:line: severity: field: message [code]".
func (f Finding) format(file string) string {
	var b strings.Builder
	b.WriteString(file)
	if f.Line > 0 {
		fmt.Fprintf(&b, ":%d", f.Line)
	}
	fmt.Fprintf(&b, ": %s: ", f.Severity)
	if f.Field != "" {
		b.WriteString(f.Field + ": ")
	}
	fmt.Fprintf(&b, "%s [%s]", f.Message, f.Code)
	return b.String()
}

// FormatFindings renders findings one per line, prefixed with file.
func FormatFindings(file string, fs []Finding) string {
	lines := make([]string, len(fs))
	for i, f := range fs {
		lines[i] = f.format(file)
	}
	return strings.Join(lines, "\n")
}

// mutableClaims maps a renameable claim to the immutable claim the same
// issuer offers (GitHub Actions and GitLab CI conventions).
var mutableClaims = map[string]string{
	"repository":       "repository_id",
	"repository_owner": "repository_owner_id",
	"project_path":     "project_id",
	"namespace_path":   "namespace_id",
}

// genericAudiences are audiences other relying parties use.
var genericAudiences = map[string]bool{"sts.amazonaws.com": true}

// Lint parses a policy document and reports validation problems and
// risky or dead constructs. A document that fails to parse gives only
// FindingInvalid errors.
func Lint(name string, data []byte) []Finding {
	p, err := Parse(name, data)
	var pe *ParseError
	if errors.As(err, &pe) {
		out := make([]Finding, len(pe.Problems))
		for i, pr := range pe.Problems {
			out[i] = Finding{Severity: SeverityError, Code: FindingInvalid, Line: pr.Line, Field: pr.Field, Message: pr.Message}
		}
		return out
	}
	if err != nil {
		return []Finding{{Severity: SeverityError, Code: FindingInvalid, Message: err.Error()}}
	}
	var out []Finding
	add := func(code, field, format string, args ...any) {
		out = append(out, Finding{Severity: SeverityWarning, Code: code, Line: p.lines.line(field), Field: field, Message: fmt.Sprintf(format, args...)})
	}
	for i, is := range p.issuers {
		for j, a := range is.Audiences {
			if genericAudiences[a] {
				add(FindingGenericAudience, fmt.Sprintf("issuers[%d].audiences[%d]", i, j),
					"%q is also the audience of AWS's own OIDC federation: use an audience only credmatrix accepts (e.g. credmatrix)", a)
			}
		}
	}
	for i, r := range p.rules {
		f := fmt.Sprintf("rules[%d]", i)
		for _, c := range r.claims {
			broad := c.claim == "sub" && broadSubject(c.match)
			if broad {
				add(FindingBroadSubject, f+".claims.sub", "%s matches subjects of any repository or namespace: pin the owner and repository (repo:acme/app:*)", c.match.String())
			}
			if sep, ok := siblingClaims[c.claim]; ok && r.effect == EffectAllow && !broad {
				for _, g := range globsOf(c.match) {
					if example, fix := siblingMatch(g.pattern, sep); example != "" {
						add(FindingSiblingGlob, f+".claims."+c.claim, "glob %s also matches sibling names such as %s: %s", g.pattern, example, fix)
					}
				}
			}
			if id, ok := mutableClaims[c.claim]; ok && r.effect == EffectAllow && !slices.ContainsFunc(r.claims, func(o claimCondition) bool { return o.claim == id }) {
				add(FindingMutableName, f+".claims."+c.claim, "%s can be renamed and then re-created by someone else: also bind the immutable %s", c.claim, id)
			}
		}
		if r.effect != EffectAllow {
			continue
		}
		if why := p.unreachable(i, r); why != "" {
			add(FindingUnreachable, f, "%s", why)
		}
	}
	return out
}

// siblingClaims are the claims whose values are names people choose
// (repositories, branches, environments), with the characters that
// separate the segments of such a name.
var siblingClaims = map[string]string{
	"sub":         ":/",
	"repository":  "/",
	"ref":         "/",
	"environment": "",
}

// globsOf lists the globs an allow condition matches with (negations
// only narrow, so they are not listed).
func globsOf(m matcher) []glob {
	switch x := m.(type) {
	case glob:
		return []glob{x}
	case anyOf:
		var out []glob
		for _, e := range x {
			out = append(out, globsOf(e)...)
		}
		return out
	default:
		return nil
	}
}

// siblingMatch finds a wildcard that shares a name segment with literal
// characters (app*, *-prod, app?): it returns a value the pattern also
// matches, made by completing that segment differently, and how to fix
// it; "" when every wildcard spans whole segments (acme/*, refs/heads/*).
func siblingMatch(pattern, seps string) (example, fix string) {
	isSep := func(c byte) bool { return strings.IndexByte(seps, c) >= 0 }
	for i := 0; i < len(pattern); i++ {
		c := pattern[i]
		if c != '*' && c != '?' {
			continue
		}
		j := i
		for j < len(pattern) && (pattern[j] == '*' || pattern[j] == '?') {
			j++
		}
		before := i > 0 && !isSep(pattern[i-1])
		after := j < len(pattern) && !isSep(pattern[j])
		if !before && !after {
			i = j - 1
			continue
		}
		run := pattern[i:j]
		q := strings.Count(run, "?")
		fill := strings.Repeat("x", q) // ? matches exactly one character
		if strings.Contains(run, "*") {
			fill = "-evil"
			if !before {
				fill = "evil-"
			}
			if len(fill) < q {
				fill += strings.Repeat("x", q-len(fill))
			}
		}
		wild := strings.NewReplacer("*", "x", "?", "x")
		example = wild.Replace(pattern[:i]) + fill + wild.Replace(pattern[j:])
		fix = "list the exact names"
		if seps != "" {
			fix = fmt.Sprintf("end the wildcard at a separator (%s) or list the exact names", strings.Join(strings.Split(seps, ""), " or "))
		}
		return example, fix
	}
	return "", ""
}

// broadSubject reports whether a sub condition's wildcard comes before
// the repository or namespace is pinned (no '/' before the first '*').
func broadSubject(m matcher) bool {
	switch x := m.(type) {
	case glob:
		i := strings.IndexAny(x.pattern, "*?")
		return !strings.Contains(x.pattern[:i], "/")
	case anyOf:
		return slices.ContainsFunc(x, broadSubject)
	case not:
		return true
	default:
		return false
	}
}

// unreachable says why allow rule i can never grant, or "".
func (p *Policy) unreachable(i int, r *rule) string {
	var targets []Role
	for _, role := range p.roles {
		acct, _ := p.Account(role.AccountID)
		inAcct := slices.Contains(r.accounts, acct.ID) || slices.ContainsFunc(r.ous, func(ou string) bool { return underOU(acct.OU, ou) })
		if slices.Contains(r.roles, role.Name) && inAcct {
			targets = append(targets, role)
		}
	}
	if len(targets) == 0 {
		return "none of its roles is declared in any of its accounts"
	}
	// Every target blocked by an unconditional guardrail?
	blocked := 0
	for _, role := range targets {
		acct, _ := p.Account(role.AccountID)
		if slices.ContainsFunc(p.rules, func(d *rule) bool { return d.effect == EffectDeny && d.unconditionalFor(r, role, acct) }) {
			blocked++
		}
	}
	if blocked == len(targets) {
		return "every role it grants is denied by an unconditional deny rule"
	}
	for _, earlier := range p.rules[:i] {
		if earlier.effect == EffectAllow && earlier.covers(r) {
			return fmt.Sprintf("rule %q grants everything it does, with no more conditions", earlier.name)
		}
	}
	return ""
}

// unconditionalFor reports whether deny rule d refuses role in acct for
// every token allow rule a could admit.
func (d *rule) unconditionalFor(a *rule, role Role, acct Account) bool {
	if len(d.claims) > 0 || d.condition != nil {
		return false
	}
	if d.issuer != nil && (a.issuer == nil || d.issuer.URL != a.issuer.URL) {
		return false
	}
	if len(d.roles) > 0 && !slices.Contains(d.roles, role.Name) {
		return false
	}
	if (len(d.accounts) > 0 || len(d.ous) > 0) && !slices.Contains(d.accounts, acct.ID) &&
		!slices.ContainsFunc(d.ous, func(ou string) bool { return underOU(acct.OU, ou) }) {
		return false
	}
	return len(d.residency) == 0 || slices.Contains(d.residency, acct.Residency)
}

// covers reports whether allow rule e matches whenever allow rule r does
// and grants at least as long: same issuer, a superset of roles and
// accounts, and a subset of r's conditions.
func (e *rule) covers(r *rule) bool {
	if e.issuer == nil || r.issuer == nil || e.issuer.URL != r.issuer.URL || e.condition != nil {
		return false
	}
	if len(e.ous) > 0 || len(r.ous) > 0 || e.maxDuration != r.maxDuration {
		return false
	}
	for _, x := range r.roles {
		if !slices.Contains(e.roles, x) {
			return false
		}
	}
	for _, x := range r.accounts {
		if !slices.Contains(e.accounts, x) {
			return false
		}
	}
	for _, c := range e.claims {
		if r.claimText[c.claim] != e.claimText[c.claim] {
			return false
		}
	}
	return true
}
