package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong with a policy document.
type Problem struct {
	// Line is the 1-based line of the offending field (0 when unknown).
	Line int
	// Field is the path of the field, e.g. "rules[0].roles[1]".
	Field string
	// Message says what is wrong.
	Message string
}

// ParseError lists every problem found in a policy document.
type ParseError struct {
	// File is the name the document was parsed under.
	File string
	// Problems are in document order.
	Problems []Problem
}

// Error renders one problem per line as "file:line: field: message".
func (e *ParseError) Error() string {
	lines := make([]string, 0, len(e.Problems))
	for _, p := range e.Problems {
		var b strings.Builder
		b.WriteString(e.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
		if p.Field != "" {
			b.WriteString(p.Field + ": ")
		}
		b.WriteString(p.Message)
		lines = append(lines, b.String())
	}
	return strings.Join(lines, "\n")
}

// Load reads and parses the policy file at path.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return Parse(path, data)
}

// The YAML document, as written. Strings stay strings so that validation
// can say what is wrong with them instead of the decoder.
type document struct {
	Version  int          `yaml:"version"`
	Issuers  []issuerDoc  `yaml:"issuers"`
	Zones    []zoneDoc    `yaml:"zones"`
	OUs      []ouDoc      `yaml:"ous"`
	Accounts []accountDoc `yaml:"accounts"`
	Roles    []roleDoc    `yaml:"roles"`
	Rules    []ruleDoc    `yaml:"rules"`
}

type issuerDoc struct {
	Name           string   `yaml:"name"`
	URL            string   `yaml:"url"`
	Audiences      []string `yaml:"audiences"`
	StrictAudience bool     `yaml:"strict_audience"`
	Algorithms     []string `yaml:"algorithms"`
	Leeway         string   `yaml:"leeway"`
	SingleUse      bool     `yaml:"single_use"`
}

type zoneDoc struct {
	Name    string   `yaml:"name"`
	Regions []string `yaml:"regions"`
}

type ouDoc struct {
	Path        string `yaml:"path"`
	MaxDuration string `yaml:"max_duration"`
}

type accountDoc struct {
	ID        string `yaml:"id"`
	Name      string `yaml:"name"`
	OU        string `yaml:"ou"`
	Region    string `yaml:"region"`
	Residency string `yaml:"residency"`
}

type roleDoc struct {
	Name              string            `yaml:"name"`
	Account           string            `yaml:"account"`
	ARN               string            `yaml:"arn"`
	MaxDuration       string            `yaml:"max_duration"`
	SessionPolicy     string            `yaml:"session_policy"`
	PolicyARNs        []string          `yaml:"policy_arns"`
	SessionTags       map[string]string `yaml:"session_tags"`
	TransitiveTagKeys []string          `yaml:"transitive_tag_keys"`
	ExternalID        string            `yaml:"external_id"`
}

type ruleDoc struct {
	Name        string               `yaml:"name"`
	Effect      string               `yaml:"effect"`
	Issuer      string               `yaml:"issuer"`
	Roles       []string             `yaml:"roles"`
	Accounts    []string             `yaml:"accounts"`
	OUs         []string             `yaml:"ous"`
	Residency   []string             `yaml:"residency"`
	Claims      map[string]yaml.Node `yaml:"claims"`
	Condition   string               `yaml:"condition"`
	MaxDuration string               `yaml:"max_duration"`
	Reason      string               `yaml:"reason"`
}

// Parse parses and validates a policy document; name (usually the file
// path) prefixes every error.
func Parse(name string, data []byte) (*Policy, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &ParseError{File: name, Problems: []Problem{syntaxProblem(err)}}
	}
	if len(root.Content) == 0 {
		return nil, &ParseError{File: name, Problems: []Problem{{Message: "empty document"}}}
	}
	lines := newLineIndex(&root)

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc document
	if err := dec.Decode(&doc); err != nil {
		return nil, &ParseError{File: name, Problems: decodeProblems(err, lines)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &ParseError{File: name, Problems: []Problem{{Line: extra.Line, Message: "only one YAML document is allowed"}}}
	}

	v := &validator{lines: lines}
	p := v.build(&doc)
	if len(v.problems) > 0 {
		return nil, &ParseError{File: name, Problems: v.problems}
	}
	p.source = name
	p.sha256 = digest(data)
	p.lines = lines
	return p, nil
}

var (
	nameRE       = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	accountIDRE  = lazyRegexp(`^[0-9]{12}$`)
	regionRE     = lazyRegexp(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	residencyRE  = lazyRegexp(`^[a-z][a-z0-9]*$`)
	roleNameRE   = lazyRegexp(`^[\w+=,.@-]{1,64}$`)
	roleARNRE    = lazyRegexp(`^arn:aws(-[a-z]+)*:iam::([0-9]{12}):role/([\w+=,.@/-]+)$`)
	ouRE         = lazyRegexp(`^(/[\w.-]+)+$`)
	regionGlobRE = lazyRegexp(`^[a-z0-9*?-]{1,32}$`)
	policyARNRE  = lazyRegexp(`^arn:aws(-[a-z]+)*:iam::(aws|[0-9]{12}):policy/[\w+=,.@/-]+$`)
	tagKeyRE     = lazyRegexp(`^[\w .:/=+@-]{1,128}$`)
	tagValueRE   = lazyRegexp(`^[\w .:/=+@-]{0,256}$`)
	externalIDRE = lazyRegexp(`^[\w+=,.@:/-]{2,1000}$`)
	safeTextRE   = lazyRegexp(`^[[:print:]]{1,200}$`)
)

// lazyRE compiles its expression on first use: the CLI links this package,
// and compiling every pattern at start-up cost milliseconds on every
// credential_process call that never parses a policy.
type lazyRE struct{ re func() *regexp.Regexp }

func lazyRegexp(expr string) lazyRE {
	return lazyRE{re: sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })}
}

// MatchString reports whether s matches.
func (l lazyRE) MatchString(s string) bool { return l.re().MatchString(s) }

// FindStringSubmatch is regexp.Regexp.FindStringSubmatch.
func (l lazyRE) FindStringSubmatch(s string) []string { return l.re().FindStringSubmatch(s) }

// MaxLeeway is the largest clock-skew leeway an issuer may declare.
const MaxLeeway = 5 * time.Minute

var allowedAlgorithms = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"EdDSA": true,
}

// validator turns a document into a Policy, collecting every problem.
type validator struct {
	lines    lineIndex
	problems []Problem
	cel      *celEnv
}

func (v *validator) addf(field, format string, args ...any) {
	v.problems = append(v.problems, Problem{Line: v.lines.line(field), Field: field, Message: fmt.Sprintf(format, args...)})
}

// unique records name at field and reports a duplicate.
func (v *validator) unique(seen map[string]string, name, field string) {
	if first, dup := seen[name]; dup {
		v.addf(field, "duplicate %q (first at line %d)", name, v.lines.line(first))
		return
	}
	seen[name] = field
}

func (v *validator) build(doc *document) *Policy {
	p := &Policy{zones: map[string][]string{}, templates: map[string]*template{}}
	if doc.Version != 1 {
		v.addf("version", "must be 1")
	}
	v.issuers(p, doc.Issuers)
	v.zones(p, doc.Zones)
	v.ous(p, doc.OUs)
	v.accounts(p, doc.Accounts)
	v.roles(p, doc.Roles)
	v.rules(p, doc.Rules)
	return p
}

func (v *validator) issuers(p *Policy, docs []issuerDoc) {
	if len(docs) == 0 {
		v.addf("issuers", "at least one is required")
	}
	names, urls := map[string]string{}, map[string]string{}
	for i, d := range docs {
		f := fmt.Sprintf("issuers[%d]", i)
		if v.checkName(f+".name", d.Name) {
			v.unique(names, d.Name, f+".name")
		}
		if err := checkIssuerURL(d.URL); err != nil {
			v.addf(f+".url", "%v", err)
		} else {
			v.unique(urls, d.URL, f+".url")
		}
		if len(d.Audiences) == 0 {
			v.addf(f+".audiences", "at least one is required: the audience is what says a token was minted for credmatrix")
		}
		for j, a := range d.Audiences {
			if a == "" {
				v.addf(fmt.Sprintf("%s.audiences[%d]", f, j), "required")
			}
		}
		for j, a := range d.Algorithms {
			if !allowedAlgorithms[a] {
				v.addf(fmt.Sprintf("%s.algorithms[%d]", f, j), "%q not allowed (asymmetric JWS algorithms only: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA)", a)
			}
		}
		is := Issuer{Name: d.Name, URL: d.URL, Audiences: d.Audiences, StrictAudience: d.StrictAudience, Algorithms: d.Algorithms, SingleUse: d.SingleUse}
		if d.Leeway != "" {
			l, err := time.ParseDuration(d.Leeway)
			if err != nil || l < 0 || l > MaxLeeway {
				v.addf(f+".leeway", "must be a duration between 0s and %s", MaxLeeway)
			}
			is.Leeway = l
		}
		p.issuers = append(p.issuers, is)
	}
}

func (v *validator) zones(p *Policy, docs []zoneDoc) {
	for i, d := range docs {
		f := fmt.Sprintf("zones[%d]", i)
		if !residencyRE.MatchString(d.Name) {
			v.addf(f+".name", "must be a lowercase zone name such as eu")
		} else if _, dup := p.zones[d.Name]; dup {
			v.addf(f+".name", "duplicate zone %q", d.Name)
		}
		if len(d.Regions) == 0 {
			v.addf(f+".regions", "at least one is required")
		}
		for j, r := range d.Regions {
			if !regionGlobRE.MatchString(r) {
				v.addf(fmt.Sprintf("%s.regions[%d]", f, j), "%q: must be a region or a region pattern such as eu-*", r)
			}
		}
		p.zones[d.Name] = slices.Clone(d.Regions)
	}
}

func (v *validator) ous(p *Policy, docs []ouDoc) {
	seen := map[string]string{}
	for i, d := range docs {
		f := fmt.Sprintf("ous[%d]", i)
		if !ouRE.MatchString(d.Path) {
			v.addf(f+".path", "must be a path such as /root/prod")
		} else {
			v.unique(seen, d.Path, f+".path")
		}
		cap, err := time.ParseDuration(d.MaxDuration)
		if err != nil || cap < MinDuration || cap > MaxDuration {
			v.addf(f+".max_duration", "must be a duration between %s and %s", shortDuration(MinDuration), shortDuration(MaxDuration))
		}
		p.ous = append(p.ous, OU{Path: d.Path, MaxDuration: cap})
	}
}

func (v *validator) accounts(p *Policy, docs []accountDoc) {
	if len(docs) == 0 {
		v.addf("accounts", "at least one is required")
	}
	ids, names := map[string]string{}, map[string]string{}
	for i, d := range docs {
		f := fmt.Sprintf("accounts[%d]", i)
		if !accountIDRE.MatchString(d.ID) {
			v.addf(f+".id", "must be 12 digits (quote it to keep leading zeros)")
		} else {
			v.unique(ids, d.ID, f+".id")
		}
		switch {
		case !v.checkName(f+".name", d.Name):
		case accountIDRE.MatchString(d.Name):
			v.addf(f+".name", "must not look like an account id")
		default:
			v.unique(names, d.Name, f+".name")
		}
		if d.OU != "" && !ouRE.MatchString(d.OU) {
			v.addf(f+".ou", "must be a path such as /root/dev")
		}
		if !regionRE.MatchString(d.Region) {
			v.addf(f+".region", "must be an AWS region such as eu-west-1")
		}
		if d.Residency != "" && !residencyRE.MatchString(d.Residency) {
			v.addf(f+".residency", "must be a lowercase zone name such as eu")
		} else if d.Residency != "" && regionRE.MatchString(d.Region) && !p.inZone(d.Residency, d.Region) {
			v.addf(f+".region", "%s is outside the account's residency zone %q", d.Region, d.Residency)
		}
		p.accounts = append(p.accounts, Account(d))
	}
}

func (v *validator) roles(p *Policy, docs []roleDoc) {
	if len(docs) == 0 {
		v.addf("roles", "at least one is required")
	}
	seen := map[string]string{}
	for i, d := range docs {
		f := fmt.Sprintf("roles[%d]", i)
		if !roleNameRE.MatchString(d.Name) {
			v.addf(f+".name", "must be an IAM role name (1 to 64 of letters, digits and +=,.@_-)")
		}
		acct, ok := p.Account(d.Account)
		switch {
		case d.Account == "":
			v.addf(f+".account", "required")
		case !ok:
			v.addf(f+".account", "unknown account %q", d.Account)
		default:
			key := d.Name + "@" + acct.ID
			if first, dup := seen[key]; dup {
				v.addf(f+".name", "duplicate role %q in account %q (first at line %d)", d.Name, acct.Name, v.lines.line(first))
			} else {
				seen[key] = f + ".name"
			}
		}
		r := Role{Name: d.Name, AccountID: acct.ID, ARN: d.ARN, MaxDuration: DefaultDuration,
			PolicyARNs: d.PolicyARNs, SessionTags: d.SessionTags, TransitiveTagKeys: d.TransitiveTagKeys, ExternalID: d.ExternalID}
		if d.ARN == "" {
			r.ARN = fmt.Sprintf("arn:aws:iam::%s:role/%s", acct.ID, d.Name)
		} else if m := roleARNRE.FindStringSubmatch(d.ARN); m == nil {
			v.addf(f+".arn", "must be an IAM role ARN such as arn:aws:iam::111111111111:role/deploy")
		} else if ok && m[2] != acct.ID {
			v.addf(f+".arn", "account %s does not match account %q (%s)", m[2], acct.Name, acct.ID)
		}
		if d.MaxDuration != "" {
			dur, err := time.ParseDuration(d.MaxDuration)
			if err != nil || dur < MinDuration || dur > MaxDuration {
				v.addf(f+".max_duration", "must be a duration between %s and %s", shortDuration(MinDuration), shortDuration(MaxDuration))
			}
			r.MaxDuration = dur
		}
		if d.SessionPolicy != "" {
			tmpl, err := parseTemplate(d.SessionPolicy)
			if err != nil {
				v.addf(f+".session_policy", "%v", err)
			}
			r.SessionPolicy = d.SessionPolicy
			p.templates[roleKey(r.Name, r.AccountID)] = tmpl
		}
		for j, arn := range d.PolicyARNs {
			if !policyARNRE.MatchString(arn) {
				v.addf(fmt.Sprintf("%s.policy_arns[%d]", f, j), "must be a managed policy ARN such as arn:aws:iam::aws:policy/ReadOnlyAccess")
			}
		}
		if len(d.PolicyARNs) > 10 {
			v.addf(f+".policy_arns", "at most 10 (the STS limit)")
		}
		for k, val := range d.SessionTags {
			if !tagKeyRE.MatchString(k) || !tagValueRE.MatchString(val) {
				v.addf(f+".session_tags."+k, "tag keys are 1 to 128 and values 0 to 256 of letters, digits, spaces and _.:/=+-@")
			}
		}
		for j, k := range d.TransitiveTagKeys {
			if !tagKeyRE.MatchString(k) {
				v.addf(fmt.Sprintf("%s.transitive_tag_keys[%d]", f, j), "not a tag key")
			}
		}
		if d.ExternalID != "" && !externalIDRE.MatchString(d.ExternalID) {
			v.addf(f+".external_id", "must be 2 to 1000 of letters, digits and +=,.@:/-")
		}
		p.roles = append(p.roles, r)
	}
}

func (v *validator) rules(p *Policy, docs []ruleDoc) {
	if len(docs) == 0 {
		v.addf("rules", "at least one is required")
	}
	seen := map[string]string{}
	for i, d := range docs {
		f := fmt.Sprintf("rules[%d]", i)
		if v.checkName(f+".name", d.Name) {
			v.unique(seen, d.Name, f+".name")
		}
		r := &rule{name: d.Name, roles: d.Roles, reason: d.Reason, ous: d.OUs, residency: d.Residency, claimText: map[string]string{}}
		switch d.Effect {
		case "", "allow":
			r.effect = EffectAllow
		case "deny":
			r.effect = EffectDeny
		default:
			v.addf(f+".effect", "must be allow or deny")
		}
		allow := r.effect != EffectDeny
		switch idx := issuerIndex(p.issuers, d.Issuer); {
		case d.Issuer == "" && allow:
			v.addf(f+".issuer", "required")
		case d.Issuer == "":
		case idx < 0:
			v.addf(f+".issuer", "unknown issuer %q", d.Issuer)
		default:
			r.issuer = &p.issuers[idx]
		}
		if len(d.Roles) == 0 && allow {
			v.addf(f+".roles", "at least one is required")
		}
		for j, name := range d.Roles {
			if !p.hasRole(name) {
				v.addf(fmt.Sprintf("%s.roles[%d]", f, j), "unknown role %q", name)
			}
		}
		if len(d.Accounts) == 0 && len(d.OUs) == 0 && allow {
			v.addf(f+".accounts", "at least one account (or ous) is required")
		}
		for j, ref := range d.Accounts {
			acct, ok := p.Account(ref)
			if !ok {
				v.addf(fmt.Sprintf("%s.accounts[%d]", f, j), "unknown account %q", ref)
			}
			r.accounts = append(r.accounts, acct.ID)
		}
		for j, ou := range d.OUs {
			if !ouRE.MatchString(ou) {
				v.addf(fmt.Sprintf("%s.ous[%d]", f, j), "must be a path such as /root/prod")
			} else if !slices.ContainsFunc(p.accounts, func(a Account) bool { return underOU(a.OU, ou) }) {
				v.addf(fmt.Sprintf("%s.ous[%d]", f, j), "no account is under OU %q", ou)
			}
		}
		for j, z := range d.Residency {
			if !residencyRE.MatchString(z) {
				v.addf(fmt.Sprintf("%s.residency[%d]", f, j), "must be a lowercase zone name such as eu")
			}
		}
		// A rule without claim conditions would let anyone with a token
		// from the issuer (for GitHub, anyone on GitHub) in.
		if len(d.Claims) == 0 && d.Condition == "" && allow {
			v.addf(f+".claims", "at least one claim condition (or a condition) is required")
		}
		names := make([]string, 0, len(d.Claims))
		for k := range d.Claims {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			node := d.Claims[k]
			if k == "" {
				v.addf(f+".claims", "claim name is required")
				continue
			}
			m, text, err := parseCondition(&node)
			if err != nil {
				v.problems = append(v.problems, Problem{Line: node.Line, Field: f + ".claims." + k, Message: err.Error()})
				continue
			}
			r.claims = append(r.claims, claimCondition{claim: k, match: m})
			r.claimText[k] = text
		}
		if d.Condition != "" {
			prg, err := v.compileCEL(d.Condition)
			if err != nil {
				v.addf(f+".condition", "%v", err)
			}
			r.condition, r.conditionText = prg, d.Condition
		}
		if d.MaxDuration != "" {
			if !allow {
				v.addf(f+".max_duration", "only allow rules cap durations")
			}
			dur, err := time.ParseDuration(d.MaxDuration)
			if err != nil || dur < MinDuration || dur > MaxDuration {
				v.addf(f+".max_duration", "must be a duration between %s and %s", shortDuration(MinDuration), shortDuration(MaxDuration))
			}
			r.maxDuration = dur
		}
		if d.Reason != "" && !safeTextRE.MatchString(d.Reason) {
			v.addf(f+".reason", "at most 200 printable characters")
		}
		p.rules = append(p.rules, r)
	}
}

func (v *validator) checkName(field, name string) bool {
	switch {
	case name == "":
		v.addf(field, "required")
	case !nameRE.MatchString(name):
		v.addf(field, "%q: use 1 to 64 letters, digits, '_', '.' or '-'", name)
	default:
		return true
	}
	return false
}

func issuerIndex(issuers []Issuer, name string) int {
	for i, is := range issuers {
		if is.Name == name {
			return i
		}
	}
	return -1
}

// checkIssuerURL accepts https URLs, and http on loopback for the
// development issuer.
func checkIssuerURL(raw string) error {
	u, err := url.Parse(raw)
	if raw == "" {
		return errors.New("required")
	}
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q is not an absolute issuer URL", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
		return fmt.Errorf("%q: http is only allowed on loopback", raw)
	default:
		return fmt.Errorf("%q: scheme must be https", raw)
	}
}

// shortDuration formats 15m0s as 15m and 12h0m0s as 12h.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// lineIndex maps field paths ("rules[0].roles[1]") to source lines.
type lineIndex struct {
	values map[string]int    // path → line of the value
	tags   map[string]string // path → tag of the value ("!!seq")
	keys   map[string]int    // path → line of the mapping key
}

func newLineIndex(root *yaml.Node) lineIndex {
	idx := lineIndex{values: map[string]int{}, tags: map[string]string{}, keys: map[string]int{}}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		idx.values[path] = n.Line
		idx.tags[path] = n.ShortTag()
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i))
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := n.Content[i].Value
				if path != "" {
					p = path + "." + p
				}
				idx.keys[p] = n.Content[i].Line
				walk(n.Content[i+1], p)
			}
		}
	}
	walk(root, "")
	return idx
}

// line returns the line of path, or of its nearest parent present in the
// document (a missing field is reported at its parent).
func (l lineIndex) line(path string) int {
	for {
		if n, ok := l.keys[path]; ok {
			return n
		}
		if n, ok := l.values[path]; ok && path != "" {
			return n
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return l.values[""]
		}
		path = path[:i]
	}
}

var (
	yamlLineRE     = lazyRegexp(`^(?:yaml: )?line (\d+): (.*)$`)
	unknownFieldRE = lazyRegexp(`^field (\S+) not found in type \S+$`)
	cannotRE       = lazyRegexp("^cannot unmarshal (!!\\w+)(?: `[^`]*`)? into (\\S+)$")
)

func syntaxProblem(err error) Problem {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		// yaml.v3 reports parser (not scanner) errors with a 0-based line.
		if strings.HasPrefix(m[2], "did not find expected") || strings.HasPrefix(m[2], "found undefined tag handle") ||
			strings.HasPrefix(m[2], "found duplicate %") || strings.HasPrefix(m[2], "found incompatible YAML document") {
			n++
		}
		return Problem{Line: n, Message: m[2]}
	}
	return Problem{Message: strings.TrimPrefix(msg, "yaml: ")}
}

// decodeProblems rewrites the strict decoder's errors in terms of field
// paths instead of Go types.
func decodeProblems(err error, lines lineIndex) []Problem {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return []Problem{syntaxProblem(err)}
	}
	out := make([]Problem, 0, len(te.Errors))
	for _, e := range te.Errors {
		m := yamlLineRE.FindStringSubmatch(e)
		if m == nil {
			out = append(out, Problem{Message: e})
			continue
		}
		n, _ := strconv.Atoi(m[1])
		p := Problem{Line: n, Message: m[2]}
		if f := unknownFieldRE.FindStringSubmatch(m[2]); f != nil {
			p.Field, p.Message = lines.keyAt(n, f[1]), "unknown field"
		} else if c := cannotRE.FindStringSubmatch(m[2]); c != nil {
			p.Field, p.Message = lines.valueAt(n, c[1]), fmt.Sprintf("want %s, got %s", goKind(c[2]), yamlKind(c[1]))
		}
		out = append(out, p)
	}
	return out
}

// keyAt finds the path of the mapping key name on line n.
func (l lineIndex) keyAt(n int, name string) string {
	best := ""
	for p, ln := range l.keys {
		if ln == n && (p == name || strings.HasSuffix(p, "."+name)) && (best == "" || p < best) {
			best = p
		}
	}
	return best
}

// valueAt finds the deepest path whose value, tagged tag, starts on line n.
func (l lineIndex) valueAt(n int, tag string) string {
	best := ""
	for p, ln := range l.values {
		if ln == n && l.tags[p] == tag && (len(p) > len(best) || (len(p) == len(best) && p < best)) {
			best = p
		}
	}
	return best
}

func yamlKind(tag string) string {
	switch tag {
	case "!!seq":
		return "a list"
	case "!!map":
		return "a mapping"
	case "!!str":
		return "a string"
	case "!!int":
		return "an integer"
	case "!!bool":
		return "a boolean"
	case "!!float":
		return "a number"
	case "!!null":
		return "null"
	default:
		return tag
	}
}

func goKind(t string) string {
	switch {
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "an integer"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["), strings.HasPrefix(t, "policy."):
		return "a mapping"
	default:
		return t
	}
}
