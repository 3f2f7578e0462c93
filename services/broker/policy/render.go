package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// MaxSessionPolicyBytes is the STS limit on a session policy's packed
// size; a rendered policy above it is refused rather than truncated.
const MaxSessionPolicyBytes = 2048

// template is a compiled session policy template: JSON text with
// {{name}} placeholders that are only allowed inside JSON strings. It is
// parsed once, strictly, into statements whose strings hold a marker
// ("\x00" index "\x00") for each placeholder, so a request only fills in
// values: no JSON is parsed per request.
type template struct {
	parts []templatePart
	// names are the placeholders, by marker index.
	names []string
	// statements are the parsed statements, with markers.
	statements []map[string]any
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
	// The probe gives each placeholder name a value of its own, so that
	// keys made of different placeholders do not collide in it.
	ids := map[string]int{}
	probe, err := t.render(func(name string) (string, bool) {
		if _, ok := ids[name]; !ok {
			ids[name] = len(ids)
		}
		return fmt.Sprintf("x%d", ids[name]), true
	})
	if err != nil {
		return nil, err
	}
	doc, err := parsePolicyDoc([]byte(probe))
	if err != nil {
		return nil, err
	}
	if hasNUL(doc.document()) {
		return nil, errors.New("NUL characters are not allowed")
	}
	// Parse again with a marker in place of each placeholder; the text
	// \u0000 is a valid JSON escape inside the string it stands in.
	var marked strings.Builder
	for _, p := range t.parts {
		if p.name == "" {
			marked.WriteString(p.literal)
			continue
		}
		fmt.Fprintf(&marked, `\u0000%d\u0000`, len(t.names))
		t.names = append(t.names, p.name)
	}
	mdoc, err := parsePolicyDoc([]byte(marked.String()))
	if err != nil {
		return nil, err
	}
	t.statements = mdoc.statements
	return t, nil
}

// hasNUL reports whether any string of v holds a NUL character.
func hasNUL(v any) bool {
	switch x := v.(type) {
	case string:
		return strings.IndexByte(x, 0) >= 0
	case map[string]any:
		for k, e := range x {
			if hasNUL(k) || hasNUL(e) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if hasNUL(e) {
				return true
			}
		}
	}
	return false
}

// fill renders the compiled statements: every marker becomes its value,
// IAM-escaped (the writer JSON-escapes it). A missing value is an error:
// a policy with a hole is never issued. Keys made of placeholders that
// collide once filled (a duplicate key) are refused too.
func (t *template) fill(value func(name string) (string, bool)) ([]map[string]any, error) {
	vals := make([]string, len(t.names))
	for i, name := range t.names {
		v, ok := value(name)
		if !ok {
			return nil, fmt.Errorf("session policy: {{%s}} has no value for this token", name)
		}
		vals[i] = iamEscaper.Replace(v)
	}
	out := make([]map[string]any, len(t.statements))
	for i, st := range t.statements {
		v, err := fillNode(st, vals)
		if err != nil {
			return nil, err
		}
		out[i] = v.(map[string]any)
	}
	return out, nil
}

func fillNode(v any, vals []string) (any, error) {
	switch x := v.(type) {
	case string:
		return fillString(x, vals), nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			f, err := fillNode(e, vals)
			if err != nil {
				return nil, err
			}
			out[i] = f
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(x))
		var seen map[string]bool
		for k, e := range x {
			f, err := fillNode(e, vals)
			if err != nil {
				return nil, err
			}
			if strings.IndexByte(k, 0) >= 0 {
				k = fillString(k, vals)
				if seen == nil {
					seen = map[string]bool{}
					for other := range x {
						if strings.IndexByte(other, 0) < 0 {
							seen[strings.ToLower(other)] = true
						}
					}
				}
				if seen[strings.ToLower(k)] {
					return nil, fmt.Errorf("session policy: key %q appears twice once filled in", truncateText(k, 64))
				}
				seen[strings.ToLower(k)] = true
			}
			out[k] = f
		}
		return out, nil
	default:
		return v, nil
	}
}

// fillString replaces the markers of s by their values.
func fillString(s string, vals []string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	var b strings.Builder
	for {
		i := strings.IndexByte(s, 0)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		j := strings.IndexByte(s[i+1:], 0)
		n := 0
		for _, c := range s[i+1 : i+1+j] {
			n = n*10 + int(c-'0')
		}
		b.WriteString(vals[n])
		s = s[i+1+j+1:]
	}
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
		var err error
		stmts, err = t.fill(func(name string) (string, bool) {
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
	var b bytes.Buffer
	b.Grow(512)
	b.WriteString(`{"Statement":[`)
	if len(stmts) == 0 {
		b.WriteString(allowAllStatement)
	}
	for i, st := range stmts {
		if i > 0 {
			b.WriteByte(',')
		}
		writeCanonical(&b, st)
	}
	if residency {
		b.WriteByte(',')
		b.Write(p.residencyStatement(d.Account.Residency))
	}
	for _, st := range extraDeny {
		b.WriteByte(',')
		writeCanonical(&b, st)
	}
	b.WriteString(`],"Version":"2012-10-17"}`)
	if b.Len() > MaxSessionPolicyBytes {
		return "", &ExtraPolicyError{Msg: fmt.Sprintf("the session policy would exceed %d bytes", MaxSessionPolicyBytes)}
	}
	return b.String(), nil
}

// allowAllStatement is the canonical statement of a role without a
// template, which the residency deny and a caller's denies narrow.
const allowAllStatement = `{"Action":"*","Effect":"Allow","Resource":"*","Sid":"CredmatrixRole"}`

// residencyStatement is the canonical statement denying
// aws:RequestedRegion outside zone, built once per zone.
func (p *Policy) residencyStatement(zone string) []byte {
	if b, ok := p.residency.Load(zone); ok {
		return b.([]byte)
	}
	regions := []any{}
	for _, r := range p.ZoneRegions(zone) {
		regions = append(regions, r)
	}
	b := canonicalJSON(map[string]any{
		"Sid": "CredmatrixResidency", "Effect": "Deny", "NotAction": globalActions(), "Resource": "*",
		"Condition": map[string]any{"StringNotLike": map[string]any{"aws:RequestedRegion": regions}},
	})
	p.residency.Store(zone, b)
	return b
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
