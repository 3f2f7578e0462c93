package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// MaxSessionPolicyBytes is the STS limit on a session policy's packed
// size; a rendered policy above it is refused rather than truncated.
const MaxSessionPolicyBytes = 2048

// template is a compiled session policy template: JSON text with
// {{name}} placeholders that are only allowed inside JSON strings.
type template struct {
	parts []templatePart
}

type templatePart struct {
	literal string
	name    string // placeholder when literal is ""
}

// Placeholder names a template may use besides claim.NAME.
var templateNames = map[string]bool{
	"account_id": true, "account": true, "region": true, "role": true, "session_id": true, "subject": true,
}

// parseTemplate compiles a session policy template and checks that it is
// a JSON object once filled in, and that every placeholder sits inside a
// JSON string, where its JSON-escaped value can never become structure.
func parseTemplate(text string) (*template, error) {
	t := &template{}
	inString, escaped := false, false
	lit := strings.Builder{}
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c == '{' && i+1 < len(text) && text[i+1] == '{' {
			end := strings.Index(text[i+2:], "}}")
			if end < 0 {
				return nil, errors.New("unterminated {{ placeholder")
			}
			name := strings.TrimSpace(text[i+2 : i+2+end])
			if !templateNames[name] && !(strings.HasPrefix(name, "claim.") && len(name) > len("claim.")) {
				return nil, fmt.Errorf("unknown placeholder {{%s}} (want claim.NAME, account_id, account, region, role, session_id or subject)", name)
			}
			if !inString {
				return nil, fmt.Errorf("placeholder {{%s}} must be inside a JSON string", name)
			}
			if lit.Len() > 0 {
				t.parts = append(t.parts, templatePart{literal: lit.String()})
				lit.Reset()
			}
			t.parts = append(t.parts, templatePart{name: name})
			i += 2 + end + 1
			continue
		}
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		}
		lit.WriteByte(c)
	}
	if lit.Len() > 0 {
		t.parts = append(t.parts, templatePart{literal: lit.String()})
	}
	probe, err := t.render(func(string) (string, bool) { return "x", true })
	if err != nil {
		return nil, err
	}
	if _, err := parsePolicyDoc([]byte(probe)); err != nil {
		return nil, err
	}
	return t, nil
}

// render fills the placeholders with JSON-escaped, IAM-escaped values. A
// missing value is an error: a policy with a hole is never issued.
func (t *template) render(value func(name string) (string, bool)) (string, error) {
	var b strings.Builder
	for _, p := range t.parts {
		if p.name == "" {
			b.WriteString(p.literal)
			continue
		}
		v, ok := value(p.name)
		if !ok {
			return "", fmt.Errorf("session policy: {{%s}} has no value for this token", p.name)
		}
		b.WriteString(escapeValue(v))
	}
	out := b.String()
	if !json.Valid([]byte(out)) {
		return "", errors.New("session policy: rendered text is not JSON")
	}
	return out, nil
}

// escapeValue makes v safe inside a JSON string of an IAM policy: JSON
// escaping keeps quotes, backslashes and control characters from ending
// the string, and IAM escaping keeps '*', '?' and '$' from acting as
// wildcards or policy variables (${*}, ${?}, ${$}).
func escapeValue(v string) string {
	b, _ := json.Marshal(v) // marshalling a string cannot fail
	s := string(b[1 : len(b)-1])
	return iamEscaper.Replace(s)
}

var iamEscaper = strings.NewReplacer("$", "${$}", "*", "${*}", "?", "${?}")

// RenderValues are the values a session policy template is filled with.
type RenderValues struct {
	// Claim returns a scalar claim.
	Claim func(name string) (string, bool)
	// Subject is the token's subject.
	Subject string
	// SessionID is the credmatrix session id.
	SessionID string
}

// SessionPolicy renders the session policy of an allowed decision: the
// role's template (or allow-all when it has none), the residency
// scope-down denying aws:RequestedRegion outside the account's zone, and
// the Deny statements of the caller's extra scope-down policy (its Allow
// statements are accepted only for roles without a template, whose
// permissions they then narrow). It returns "" when there is nothing to
// scope down.
func (p *Policy) SessionPolicy(d Decision, vals RenderValues, extra string) (string, error) {
	var stmts []map[string]any
	if t, ok := p.templates[roleKey(d.Role.Name, d.Role.AccountID)]; ok {
		text, err := t.render(func(name string) (string, bool) {
			switch name {
			case "account_id":
				return d.Account.ID, true
			case "account":
				return d.Account.Name, true
			case "region":
				return d.Region, true
			case "role":
				return d.Role.Name, true
			case "session_id":
				return vals.SessionID, vals.SessionID != ""
			case "subject":
				return vals.Subject, vals.Subject != ""
			}
			if vals.Claim == nil {
				return "", false
			}
			return vals.Claim(strings.TrimPrefix(name, "claim."))
		})
		if err != nil {
			return "", err
		}
		doc, err := parsePolicyDoc([]byte(text))
		if err != nil {
			return "", fmt.Errorf("session policy: %w", err)
		}
		stmts = doc.statements
	}
	var extraAllow, extraDeny []map[string]any
	if extra != "" {
		doc, err := parsePolicyDoc([]byte(extra))
		if err != nil {
			return "", &ExtraPolicyError{Msg: err.Error()}
		}
		for _, st := range doc.statements {
			if st["Effect"] == "Deny" {
				extraDeny = append(extraDeny, st)
			} else {
				extraAllow = append(extraAllow, st)
			}
		}
	}
	switch {
	case len(extraAllow) > 0 && len(stmts) > 0:
		return "", &ExtraPolicyError{Msg: errExtraAllow}
	case len(extraAllow) > 0:
		stmts = extraAllow
	}
	residency := d.Account.Residency != ""
	if len(stmts) == 0 && !residency && len(extraDeny) == 0 {
		return "", nil
	}
	if len(stmts) == 0 {
		stmts = []map[string]any{{"Sid": "CredmatrixRole", "Effect": "Allow", "Action": "*", "Resource": "*"}}
	}
	if residency {
		regions := []any{}
		for _, r := range p.ZoneRegions(d.Account.Residency) {
			regions = append(regions, r)
		}
		stmts = append(stmts, map[string]any{
			"Sid": "CredmatrixResidency", "Effect": "Deny", "NotAction": globalActions(), "Resource": "*",
			"Condition": map[string]any{"StringNotLike": map[string]any{"aws:RequestedRegion": regions}},
		})
	}
	stmts = append(stmts, extraDeny...)
	out := canonicalJSON((&policyDoc{statements: stmts}).document())
	if len(out) > MaxSessionPolicyBytes {
		return "", &ExtraPolicyError{Msg: fmt.Sprintf("the session policy would exceed %d bytes", MaxSessionPolicyBytes)}
	}
	return string(out), nil
}

// checkMerge says whether a caller's scope-down policy can be merged
// into role's session policy: its Allow statements are accepted only for
// roles without a template.
func (p *Policy) checkMerge(role Role, extra string) *ExtraPolicyError {
	doc, err := parsePolicyDoc([]byte(extra))
	if err != nil {
		return &ExtraPolicyError{Msg: err.Error()}
	}
	if _, templated := p.templates[roleKey(role.Name, role.AccountID)]; !templated {
		return nil
	}
	for _, st := range doc.statements {
		if st["Effect"] == "Allow" {
			return &ExtraPolicyError{Msg: errExtraAllow}
		}
	}
	return nil
}

const errExtraAllow = "Allow statements are only accepted for roles without a session_policy; scope down with Deny statements"

// globalActions are the global services whose calls carry
// aws:RequestedRegion us-east-1 whatever the caller's region; the
// residency deny exempts them so that a session stays usable.
func globalActions() []any {
	return []any{"iam:*", "sts:*", "organizations:*", "route53:*", "cloudfront:*", "support:*", "health:*", "account:*"}
}

// ExtraPolicyError is a caller's scope-down policy that cannot be merged.
type ExtraPolicyError struct {
	// Msg says why, safe to show the caller.
	Msg string
}

// Error returns Msg.
func (e *ExtraPolicyError) Error() string { return e.Msg }
