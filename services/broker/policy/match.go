package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
	"gopkg.in/yaml.v3"
)

// matcher tests one claim value.
type matcher interface {
	// match reports whether value (present is false for a missing claim)
	// satisfies the condition and, when it does not, why.
	match(value string, present bool) (bool, string)
	// String describes the condition.
	String() string
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

func (e exact) String() string { return string(e) }

// glob matches a pattern where * is any run of characters (including
// '/') and ? is one character.
type glob struct {
	pattern string
	re      *regexp.Regexp
}

func newGlob(pattern string) glob {
	return glob{pattern: pattern, re: regexp.MustCompile(globRegexp(pattern))}
}

func globRegexp(pattern string) string {
	var b strings.Builder
	b.WriteString(`^`)
	for _, r := range pattern {
		switch r {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString(`$`)
	return "(?s)" + b.String()
}

// globMatch matches one glob pattern, for the few region patterns of a
// zone: exact and prefix ("eu-*") patterns, the usual ones, compile
// nothing.
func globMatch(pattern, s string) bool {
	i := strings.IndexAny(pattern, "*?")
	switch {
	case i < 0:
		return pattern == s
	case i == len(pattern)-1 && pattern[i] == '*':
		return strings.HasPrefix(s, pattern[:i])
	default:
		return newGlob(pattern).re.MatchString(s)
	}
}

func (g glob) match(value string, present bool) (bool, string) {
	switch {
	case !present:
		return false, fmt.Sprintf("want %s, claim missing", g.pattern)
	case !g.re.MatchString(value):
		return false, fmt.Sprintf("want %s, got %s", g.pattern, value)
	default:
		return true, ""
	}
}

func (g glob) String() string { return "glob " + g.pattern }

// anyOf matches when one alternative does.
type anyOf []matcher

func (a anyOf) match(value string, present bool) (bool, string) {
	if !present {
		return false, fmt.Sprintf("want one of %s, claim missing", a.list())
	}
	for _, m := range a {
		if ok, _ := m.match(value, true); ok {
			return true, ""
		}
	}
	return false, fmt.Sprintf("want one of %s, got %s", a.list(), value)
}

func (a anyOf) list() string {
	parts := make([]string, len(a))
	for i, m := range a {
		parts[i] = m.String()
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func (a anyOf) String() string { return "any of " + a.list() }

// not negates a condition. A missing claim does not satisfy it (the
// rule's kind decides what a missing claim means).
type not struct{ m matcher }

func (n not) match(value string, present bool) (bool, string) {
	if !present {
		return false, fmt.Sprintf("want not %s, claim missing", n.m.String())
	}
	if ok, _ := n.m.match(value, true); ok {
		return false, fmt.Sprintf("want not %s, got %s", n.m.String(), value)
	}
	return true, ""
}

func (n not) String() string { return "not " + n.m.String() }

const maxAlternatives = 256

// parseCondition reads a claim condition: a string (exact, or a glob when
// it holds * or ?), a list of alternatives, or a mapping with one of
// not, glob, equals, any_of.
func parseCondition(n *yaml.Node) (matcher, string, error) {
	m, err := parseMatcher(n, 0)
	if err != nil {
		return nil, "", err
	}
	return m, m.String(), nil
}

func parseMatcher(n *yaml.Node, depth int) (matcher, error) {
	if depth > 2 {
		return nil, errors.New("conditions nest at most two deep")
	}
	switch n.Kind {
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" || n.Value == "" {
			return nil, errors.New("a claim value is required")
		}
		return scalarMatcher(n.Value), nil
	case yaml.SequenceNode:
		if len(n.Content) == 0 || len(n.Content) > maxAlternatives {
			return nil, fmt.Errorf("a list needs 1 to %d values", maxAlternatives)
		}
		out := make(anyOf, 0, len(n.Content))
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode || c.Value == "" {
				return nil, errors.New("list values must be non-empty strings")
			}
			out = append(out, scalarMatcher(c.Value))
		}
		return out, nil
	case yaml.MappingNode:
		if len(n.Content) != 2 {
			return nil, errors.New("a condition mapping has exactly one of not, glob, equals, any_of")
		}
		key, val := n.Content[0].Value, n.Content[1]
		switch key {
		case "not":
			m, err := parseMatcher(val, depth+1)
			if err != nil {
				return nil, err
			}
			return not{m}, nil
		case "glob":
			if val.Kind != yaml.ScalarNode || val.Value == "" {
				return nil, errors.New("glob: want a non-empty string")
			}
			return newGlob(val.Value), nil
		case "equals":
			if val.Kind != yaml.ScalarNode || val.Value == "" {
				return nil, errors.New("equals: want a non-empty string")
			}
			return exact(val.Value), nil
		case "any_of":
			if val.Kind != yaml.SequenceNode {
				return nil, errors.New("any_of: want a list")
			}
			return parseMatcher(val, depth+1)
		default:
			return nil, fmt.Errorf("unknown condition %q (want not, glob, equals or any_of)", key)
		}
	default:
		return nil, errors.New("want a string, a list or a condition mapping")
	}
}

func scalarMatcher(v string) matcher {
	if strings.ContainsAny(v, "*?") {
		return newGlob(v)
	}
	return exact(v)
}

// celEnv compiles rule conditions. Variables: claims (map of every
// claim), target (account_id, account, role, region, ou, residency as
// strings) and now (a timestamp), so time windows are
// `now.getHours("Europe/Paris") < 18`.
type celEnv struct{ env *cel.Env }

const celCostLimit = 10_000

func (v *validator) compileCEL(expr string) (cel.Program, error) {
	if v.cel == nil {
		env, err := cel.NewEnv(
			cel.Variable("claims", cel.MapType(cel.StringType, cel.DynType)),
			cel.Variable("target", cel.MapType(cel.StringType, cel.StringType)),
			cel.Variable("now", cel.TimestampType),
		)
		if err != nil {
			return nil, fmt.Errorf("CEL environment: %w", err)
		}
		v.cel = &celEnv{env: env}
	}
	if len(expr) > 4096 {
		return nil, errors.New("at most 4096 bytes")
	}
	ast, iss := v.cel.env.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("CEL: %s", strings.ReplaceAll(iss.Err().Error(), "\n", " "))
	}
	if ast.OutputType() != cel.BoolType {
		return nil, fmt.Errorf("CEL: must be a bool expression, is %s", ast.OutputType())
	}
	return v.cel.env.Program(ast, cel.CostLimit(celCostLimit), cel.EvalOptions(cel.OptOptimize))
}

// evalCEL runs a compiled condition. An evaluation error (a missing
// claim, a type mismatch, the cost limit) is reported as not matching
// with the reason; the rule kind decides what that means.
func evalCEL(prg cel.Program, id Identity, t celTarget, now time.Time) (bool, error) {
	out, _, err := prg.Eval(map[string]any{
		"claims": id.celClaims(),
		"target": map[string]string{
			"account_id": t.acct.ID, "account": t.acct.Name, "role": t.role.Name,
			"region": t.region, "ou": t.acct.OU, "residency": t.acct.Residency,
		},
		"now": now,
	})
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, errors.New("not a bool")
	}
	return b, nil
}

type celTarget struct {
	acct   Account
	role   Role
	region string
}

// celClaims converts the raw claims for CEL: JSON numbers become int64
// or float64, nested values are converted recursively.
func (id Identity) celClaims() map[string]any {
	out := make(map[string]any, len(id.Raw)+2)
	for k, v := range id.Raw {
		out[k] = celValue(v)
	}
	out["iss"], out["sub"] = id.Issuer, id.Subject
	return out
}

func celValue(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = celValue(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = celValue(e)
		}
		return l
	case nil:
		return nil
	default:
		return x
	}
}
