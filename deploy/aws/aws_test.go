package aws

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/deploy/internal/svcproc"
)

// policy is an IAM policy document; unknown fields are errors.
type policy struct {
	Version   string      `json:"Version"`
	Statement []statement `json:"Statement"`
}

type statement struct {
	Sid       string                     `json:"Sid"`
	Effect    string                     `json:"Effect"`
	Principal map[string]json.RawMessage `json:"Principal"`
	Action    stringList                 `json:"Action"`
	Resource  stringList                 `json:"Resource"`
	Condition map[string]map[string]any  `json:"Condition"`
}

// stringList is a policy element that is a string or a list of strings.
type stringList []string

func (l *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*l = stringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*l = many
	return nil
}

var placeholderRE = regexp.MustCompile(`\$\{([A-Z0-9_]+)\}`)

// readme returns the README's file table (file names) and placeholder
// table (name → example).
func readme(t *testing.T) (files []string, examples map[string]string) {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	examples = map[string]string{}
	fileRow := regexp.MustCompile("(?m)^\\| `([a-z0-9-]+\\.json)` \\|")
	for _, m := range fileRow.FindAllStringSubmatch(string(b), -1) {
		files = append(files, m[1])
	}
	phRow := regexp.MustCompile("(?m)^\\| `([A-Z0-9_]+)` \\| `([^`]*)` \\|")
	for _, m := range phRow.FindAllStringSubmatch(string(b), -1) {
		examples[m[1]] = m[2]
	}
	return files, examples
}

// loadPolicies renders every JSON file's placeholders with the README's
// examples and parses it strictly.
func loadPolicies(t *testing.T) map[string]policy {
	t.Helper()
	listed, examples := readme(t)
	paths, err := filepath.Glob("*.json")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	used := map[string]bool{}
	out := map[string]policy{}
	for _, p := range paths {
		found = append(found, p)
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range placeholderRE.FindAllStringSubmatch(string(raw), -1) {
			used[m[1]] = true
			if _, ok := examples[m[1]]; !ok {
				t.Errorf("%s: placeholder ${%s} is not documented in README.md", p, m[1])
			}
		}
		rendered := placeholderRE.ReplaceAllStringFunc(string(raw), func(s string) string {
			return examples[placeholderRE.FindStringSubmatch(s)[1]]
		})
		if strings.Contains(rendered, "${") || strings.Contains(rendered, "$") {
			t.Errorf("%s: a placeholder is left after rendering", p)
		}
		dec := json.NewDecoder(bytes.NewReader([]byte(rendered)))
		dec.DisallowUnknownFields()
		var pol policy
		if err := dec.Decode(&pol); err != nil {
			t.Errorf("%s: not a policy document after rendering: %v", p, err)
			continue
		}
		out[p] = pol
	}
	sort.Strings(found)
	sort.Strings(listed)
	if diff := cmp.Diff(listed, found); diff != "" {
		t.Errorf("README file table vs files (-README +files):\n%s", diff)
	}
	for name := range examples {
		if !used[name] {
			t.Errorf("README documents placeholder %s that no file uses", name)
		}
	}
	return out
}

// TestPoliciesParse checks every file renders to a well-formed policy:
// version, unique Sids, Allow statements with explicit actions (no
// wildcards but in key administration), identity policies with resources
// and no principal, trust and key policies with principals, and ARNs of the
// right shape once placeholders are filled.
func TestPoliciesParse(t *testing.T) {
	arnRE := regexp.MustCompile(`^arn:aws:(iam::(\d{12}|\*):(role/[\w+=,.@/*-]+|oidc-provider/[\w./-]+)|kms:(\*|[a-z0-9-]+):\d{12}:key/\*)$`)
	for file, pol := range loadPolicies(t) {
		t.Run(file, func(t *testing.T) {
			if pol.Version != "2012-10-17" || len(pol.Statement) == 0 {
				t.Fatalf("Version %q with %d statements", pol.Version, len(pol.Statement))
			}
			trust := strings.Contains(file, "trust") || file == "kms-key-policy.json"
			sids := map[string]bool{}
			for _, st := range pol.Statement {
				if st.Sid == "" || sids[st.Sid] {
					t.Errorf("missing or repeated Sid %q", st.Sid)
				}
				sids[st.Sid] = true
				if st.Effect != "Allow" || len(st.Action) == 0 {
					t.Errorf("%s: Effect %q, actions %v", st.Sid, st.Effect, st.Action)
				}
				for _, a := range st.Action {
					if strings.Contains(a, "*") {
						t.Errorf("%s: wildcard action %q", st.Sid, a)
					}
				}
				switch {
				case trust && len(st.Principal) == 0:
					t.Errorf("%s: trust or key policy statement without Principal", st.Sid)
				case !trust && (len(st.Principal) != 0 || len(st.Resource) == 0):
					t.Errorf("%s: identity policy statement needs Resource and no Principal", st.Sid)
				case !trust && slices.Contains(st.Resource, "*"):
					t.Errorf("%s: identity policy on every resource", st.Sid)
				}
				for _, r := range st.Resource {
					if r != "*" && !arnRE.MatchString(r) {
						t.Errorf("%s: resource %q is not a role, OIDC provider or KMS key ARN", st.Sid, r)
					}
				}
				for kind, v := range st.Principal {
					var s string
					if err := json.Unmarshal(v, &s); err != nil || !arnRE.MatchString(s) {
						t.Errorf("%s: principal %s %s is not one role or OIDC provider ARN", st.Sid, kind, v)
					}
				}
			}
		})
	}
}

// codeCalls is what the Go code calls in AWS, derived from its source.
type codeCalls struct {
	// actions are IAM actions "service:Operation": every method of an SDK
	// client interface the packages declare (Method(ctx, *svc.MethodInput,
	// ...)), plus sts:TagSession when an AssumeRoleInput carries Tags or
	// TransitiveTagKeys, sts:SetSourceIdentity when it carries
	// SourceIdentity, and sts:AssumeRole for stscreds.NewAssumeRoleProvider.
	actions map[string]bool
	// contextKeys are the encryption-context keys awskms sends to KMS (the
	// string constants named Context*).
	contextKeys []string
	// defaultChain is whether the server packages load the SDK's default
	// credential chain (IRSA's web identity in a pod).
	defaultChain map[string]bool
}

func parseDir(t *testing.T, dir string) []*ast.File {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	fset := token.NewFileSet()
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		t.Fatalf("no Go files in %s", dir)
	}
	return files
}

// sdkServices maps a file's import names to AWS SDK service packages.
func sdkServices(f *ast.File) map[string]string {
	out := map[string]string{}
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		svc, ok := strings.CutPrefix(path, "github.com/aws/aws-sdk-go-v2/service/")
		if !ok || strings.Contains(svc, "/") {
			continue
		}
		name := svc
		if imp.Name != nil {
			name = imp.Name.Name
		}
		out[name] = svc
	}
	return out
}

func deriveCalls(t *testing.T) codeCalls {
	t.Helper()
	root := svcproc.RepoRoot(t)
	c := codeCalls{actions: map[string]bool{}, defaultChain: map[string]bool{}}
	for _, dir := range []string{"services/broker/awssts", "services/keyguard/awskms"} {
		for _, f := range parseDir(t, filepath.Join(root, dir)) {
			svcs := sdkServices(f)
			ast.Inspect(f, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.InterfaceType:
					for _, m := range n.Methods.List {
						ft, ok := m.Type.(*ast.FuncType)
						if !ok || len(m.Names) != 1 || len(ft.Params.List) < 2 {
							continue
						}
						star, ok := ft.Params.List[1].Type.(*ast.StarExpr)
						if !ok {
							continue
						}
						sel, ok := star.X.(*ast.SelectorExpr)
						if !ok {
							continue
						}
						pkg, ok := sel.X.(*ast.Ident)
						svc := svcs[pkg.Name]
						if ok && svc != "" && sel.Sel.Name == m.Names[0].Name+"Input" {
							c.actions[svc+":"+m.Names[0].Name] = true
						}
					}
				case *ast.CompositeLit:
					sel, ok := n.Type.(*ast.SelectorExpr)
					if !ok || sel.Sel.Name != "AssumeRoleInput" {
						break
					}
					if pkg, ok := sel.X.(*ast.Ident); !ok || svcs[pkg.Name] != "sts" {
						break
					}
					for _, e := range n.Elts {
						kv, ok := e.(*ast.KeyValueExpr)
						if !ok {
							continue
						}
						switch kv.Key.(*ast.Ident).Name {
						case "Tags", "TransitiveTagKeys":
							c.actions["sts:TagSession"] = true
						case "SourceIdentity":
							c.actions["sts:SetSourceIdentity"] = true
						}
					}
				case *ast.CallExpr:
					if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "NewAssumeRoleProvider" {
						c.actions["sts:AssumeRole"] = true
					}
				case *ast.ValueSpec:
					for i, name := range n.Names {
						if !strings.HasPrefix(name.Name, "Context") || i >= len(n.Values) {
							continue
						}
						if lit, ok := n.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							v, _ := strconv.Unquote(lit.Value)
							c.contextKeys = append(c.contextKeys, v)
						}
					}
				}
				return true
			})
		}
	}
	for _, svc := range []string{"broker", "keyguard"} {
		for _, f := range parseDir(t, filepath.Join(root, "services", svc, "server")) {
			ast.Inspect(f, func(n ast.Node) bool {
				if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "LoadDefaultConfig" {
					c.defaultChain[svc] = true
				}
				return true
			})
		}
	}
	sort.Strings(c.contextKeys)
	return c
}

func set(actions ...string) []string {
	sort.Strings(actions)
	return slices.Compact(actions)
}

func only(actions map[string]bool, keep func(string) bool) []string {
	var out []string
	for a := range actions {
		if keep(a) {
			out = append(out, a)
		}
	}
	return set(out...)
}

// granted returns the actions the statements of pol grant, leaving out
// those for which skip is true.
func granted(pol policy, skip func(statement) bool) []string {
	var out []string
	for _, st := range pol.Statement {
		if !skip(st) {
			out = append(out, st.Action...)
		}
	}
	return set(out...)
}

// TestGrantsAreExactlyTheCalls checks each file grants exactly the AWS
// actions the code needs from the identity the file is for, so a new call
// in the code fails here until the policy that must allow it does, and a
// policy cannot quietly grant more.
func TestGrantsAreExactlyTheCalls(t *testing.T) {
	pols := loadPolicies(t)
	code := deriveCalls(t)
	for _, want := range []string{"sts:AssumeRole", "sts:AssumeRoleWithWebIdentity", "kms:Encrypt", "kms:Decrypt"} {
		if !code.actions[want] {
			t.Fatalf("the code no longer calls %s (derived: %v): update this test and the policies", want, code.actions)
		}
	}
	if !code.defaultChain["broker"] || !code.defaultChain["keyguard"] {
		t.Fatalf("broker and keyguard must load the SDK's default credential chain (IRSA); derived %v", code.defaultChain)
	}
	// AssumeRoleWithWebIdentity carries its own credential (the token):
	// it is granted by the target role's trust policy, never by the
	// caller's identity policy.
	callerSTS := only(code.actions, func(a string) bool { return strings.HasPrefix(a, "sts:") && a != "sts:AssumeRoleWithWebIdentity" })
	keyguardPrincipal := func(st statement) bool {
		return strings.Contains(string(st.Principal["AWS"]), ":role/credmatrix-keyguard")
	}
	none := func(statement) bool { return false }
	tests := []struct {
		file string
		skip func(statement) bool
		want []string
	}{
		{"broker-policy.json", none, callerSTS},
		{"member-role-trust-policy.json", none, callerSTS},
		{"member-role-web-identity-trust-policy.json", none, set("sts:AssumeRoleWithWebIdentity")},
		{"revoker-role-trust-policy.json", none, set("sts:AssumeRole")},
		{"revoker-role-policy.json", none, only(code.actions, func(a string) bool { return strings.HasPrefix(a, "iam:") })},
		{"broker-irsa-trust-policy.json", none, set("sts:AssumeRoleWithWebIdentity")},
		{"keyguard-irsa-trust-policy.json", none, set("sts:AssumeRoleWithWebIdentity")},
		{"keyguard-policy.json", none, only(code.actions, func(a string) bool { return strings.HasPrefix(a, "kms:") })},
		{"kms-key-policy.json", func(st statement) bool { return !keyguardPrincipal(st) }, only(code.actions, func(a string) bool { return strings.HasPrefix(a, "kms:") })},
	}
	all := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			pol, ok := pols[tc.file]
			if !ok {
				t.Fatalf("%s missing", tc.file)
			}
			got := granted(pol, tc.skip)
			for _, a := range got {
				all[a] = true
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("granted actions (-file +code):\n%s", diff)
			}
		})
	}
	t.Run("every-call-is-granted-somewhere", func(t *testing.T) {
		for a := range code.actions {
			if !all[a] {
				t.Errorf("the code calls %s and no policy grants it", a)
			}
		}
	})
	t.Run("key-administrators-never-use-keys", func(t *testing.T) {
		for _, st := range pols["kms-key-policy.json"].Statement {
			if keyguardPrincipal(st) {
				continue
			}
			for _, a := range st.Action {
				if strings.HasPrefix(a, "kms:Encrypt") || strings.HasPrefix(a, "kms:Decrypt") || strings.HasPrefix(a, "kms:ReEncrypt") || strings.HasPrefix(a, "kms:GenerateDataKey") || code.actions[a] && a != "kms:DescribeKey" {
					t.Errorf("%s grants %s", st.Sid, a)
				}
			}
		}
	})
	t.Run("encryption-context-keys-are-keyguards", func(t *testing.T) {
		if len(code.contextKeys) == 0 {
			t.Fatal("no Context* constants derived from awskms")
		}
		for _, file := range []string{"keyguard-policy.json", "kms-key-policy.json"} {
			n := 0
			for _, st := range pols[file].Statement {
				if !slices.Contains(st.Action, "kms:Encrypt") {
					continue
				}
				n++
				raw, _ := json.Marshal(st.Condition["ForAllValues:StringEquals"]["kms:EncryptionContextKeys"])
				var keys []string
				_ = json.Unmarshal(raw, &keys)
				sort.Strings(keys)
				if diff := cmp.Diff(keys, code.contextKeys); diff != "" {
					t.Errorf("%s %s: kms:EncryptionContextKeys (-policy +code):\n%s", file, st.Sid, diff)
				}
				for k := range st.Condition["StringEquals"] {
					ctxKey, ok := strings.CutPrefix(k, "kms:EncryptionContext:")
					if ok && !slices.Contains(code.contextKeys, ctxKey) {
						t.Errorf("%s %s: condition on context key %q that keyguard never sends", file, st.Sid, ctxKey)
					}
				}
			}
			if n == 0 {
				t.Errorf("%s: no statement grants kms:Encrypt", file)
			}
		}
	})
}
