package policy_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/google/go-cmp/cmp"
)

const githubURL = "https://token.actions.githubusercontent.com"

func load(t *testing.T) *policy.Policy {
	t.Helper()
	p, err := policy.Load("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	p := load(t)
	if diff := cmp.Diff(p.Accounts(), []policy.Account{
		{ID: "111111111111", Name: "dev", OU: "/root/dev", Region: "eu-west-1", Residency: "eu"},
		{ID: "222222222222", Name: "prod", OU: "/root/prod", Region: "us-east-1"},
	}); diff != "" {
		t.Errorf("Accounts (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(p.Roles(), []policy.Role{
		{Name: "deploy", AccountID: "111111111111", ARN: "arn:aws:iam::111111111111:role/deploy", MaxDuration: time.Hour},
		{Name: "deploy", AccountID: "222222222222", ARN: "arn:aws:iam::222222222222:role/deploy", MaxDuration: 15 * time.Minute},
		{Name: "readonly", AccountID: "222222222222", ARN: "arn:aws:iam::222222222222:role/readonly", MaxDuration: policy.DefaultDuration},
	}); diff != "" {
		t.Errorf("Roles (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(p.Rules()[0], policy.Rule{
		Name: "main-branch-deploys-dev", Effect: policy.EffectAllow, Issuer: "github",
		Roles: []string{"deploy"}, Accounts: []string{"111111111111"},
		Claims: map[string]string{"repository": "acme/app", "ref": "refs/heads/main"},
	}); diff != "" {
		t.Errorf("Rules()[0] (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(p.Issuers(), []policy.Issuer{{Name: "github", URL: githubURL, Audiences: []string{"credmatrix"}}}); diff != "" {
		t.Errorf("Issuers (-got +want):\n%s", diff)
	}
	if len(p.SHA256()) != 64 || p.Source() != "testdata/policy.yaml" {
		t.Errorf("SHA256 = %q, Source = %q", p.SHA256(), p.Source())
	}
}

// base is a valid policy that the error cases edit; line numbers in the
// expected errors refer to the edited text.
const base = `version: 1
issuers:
  - name: github
    url: https://token.actions.githubusercontent.com
    audiences: [credmatrix]
accounts:
  - id: "111111111111"
    name: dev
    region: eu-west-1
roles:
  - name: deploy
    account: dev
    max_duration: 1h
rules:
  - name: main
    issuer: github
    roles: [deploy]
    accounts: [dev]
    claims:
      repository: acme/app
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		old  string // replaced in base by new
		new  string
		want string
	}{
		{"unknown-role", "roles: [deploy]", "roles: [deploy, deplyo]", `policy.yaml:17: rules[0].roles[1]: unknown role "deplyo"`},
		{"unknown-account-in-rule", "accounts: [dev]", "accounts: [stage]", `policy.yaml:18: rules[0].accounts[0]: unknown account "stage"`},
		{"unknown-issuer", "issuer: github", "issuer: gitlab", `policy.yaml:16: rules[0].issuer: unknown issuer "gitlab"`},
		{"unknown-field", "    region: eu-west-1\n", "    region: eu-west-1\n    regoin: eu-west-2\n", `policy.yaml:10: accounts[0].regoin: unknown field`},
		{"unknown-top-level-field", "version: 1\n", "version: 1\ndefaults: {}\n", `policy.yaml:2: defaults: unknown field`},
		{"wrong-type", "roles: [deploy]", "roles: deploy", `policy.yaml:17: rules[0].roles: want a list, got a string`},
		{"claim-unknown-condition", "repository: acme/app", "repository: {regex: x}", `policy.yaml:20: rules[0].claims.repository: unknown condition "regex" (want not, glob, equals or any_of)`},
		{"claim-empty-list", "repository: acme/app", "repository: []", `policy.yaml:20: rules[0].claims.repository: a list needs 1 to 256 values`},
		{"cel-not-bool", "      repository: acme/app\n", "      repository: acme/app\n    condition: claims.run_id\n", `policy.yaml:21: rules[0].condition: CEL: must be a bool expression, is dyn`},
		{"cel-syntax", "      repository: acme/app\n", "      repository: acme/app\n    condition: 'claims.ref =='\n", "policy.yaml:21: rules[0].condition: CEL: ERROR: <input>:1:14: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}  | claims.ref ==  | .............^"},
		{"deny-with-cap", "rules:\n", "rules:\n  - name: g\n    effect: deny\n    max_duration: 1h\n", `policy.yaml:17: rules[0].max_duration: only allow rules cap durations`},
		{"bad-effect", "    issuer: github\n", "    issuer: github\n    effect: maybe\n", `policy.yaml:17: rules[0].effect: must be allow or deny`},
		{"template-outside-string", "    max_duration: 1h\n", "    max_duration: 1h\n    session_policy: '{\"Statement\": {{claim.repository}}}'\n", `policy.yaml:14: roles[0].session_policy: placeholder {{claim.repository}} must be inside a JSON string`},
		{"template-unknown", "    max_duration: 1h\n", "    max_duration: 1h\n    session_policy: '{\"Statement\": \"{{secret}}\"}'\n", `policy.yaml:14: roles[0].session_policy: unknown placeholder {{secret}} (want claim.NAME, account_id, account, region, role, session_id or subject)`},
		{"ou-cap", "accounts:\n", "ous:\n  - path: /root/prod\n    max_duration: 1m\naccounts:\n", `policy.yaml:8: ous[0].max_duration: must be a duration between 15m and 12h`},
		{"hmac-alg", "audiences: [credmatrix]", "audiences: [credmatrix]\n    algorithms: [HS256]", `policy.yaml:6: issuers[0].algorithms[0]: "HS256" not allowed (asymmetric JWS algorithms only: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA)`},
		{"account-id-short", `id: "111111111111"`, `id: "11111"`, `policy.yaml:7: accounts[0].id: must be 12 digits (quote it to keep leading zeros)`},
		{"duration-too-long", "max_duration: 1h", "max_duration: 13h", `policy.yaml:13: roles[0].max_duration: must be a duration between 15m and 12h`},
		{"duration-too-short", "max_duration: 1h", "max_duration: 5m", `policy.yaml:13: roles[0].max_duration: must be a duration between 15m and 12h`},
		{"duration-garbage", "max_duration: 1h", "max_duration: soon", `policy.yaml:13: roles[0].max_duration: must be a duration between 15m and 12h`},
		{"duplicate-rule", "rules:\n", "rules:\n  - name: main\n    issuer: github\n    roles: [deploy]\n    accounts: [dev]\n    claims: {ref: x}\n",
			`policy.yaml:20: rules[1].name: duplicate "main" (first at line 15)`},
		{"duplicate-role", "roles:\n", "roles:\n  - name: deploy\n    account: \"111111111111\"\n",
			`policy.yaml:13: roles[1].name: duplicate role "deploy" in account "dev" (first at line 11)`},
		{"rule-without-claims", "    claims:\n      repository: acme/app\n", "", `policy.yaml:15: rules[0].claims: at least one claim condition (or a condition) is required`},
		{"rule-without-name", "  - name: main\n    issuer", "  - issuer", `policy.yaml:15: rules[0].name: required`},
		{"version", "version: 1", "version: 2", `policy.yaml:1: version: must be 1`},
		{"http-issuer", "url: https://token", "url: http://token", `policy.yaml:4: issuers[0].url: "http://token.actions.githubusercontent.com": http is only allowed on loopback`},
		{"arn-other-account", "max_duration: 1h", "max_duration: 1h\n    arn: arn:aws:iam::999999999999:role/deploy",
			`policy.yaml:14: roles[0].arn: account 999999999999 does not match account "dev" (111111111111)`},
		{"region", "region: eu-west-1", "region: europe", `policy.yaml:9: accounts[0].region: must be an AWS region such as eu-west-1`},
		{"syntax", "roles: [deploy]", "roles: [deploy", `policy.yaml:17: did not find expected ',' or ']'`},
		{"scanner", "name: dev", "name: dev: x", `policy.yaml:8: mapping values are not allowed in this context`},
		{"duplicate-yaml-key", "    region: eu-west-1\n", "    region: eu-west-1\n    region: eu-west-2\n", `policy.yaml:10: mapping key "region" already defined at line 9`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(base, tc.old) {
				t.Fatalf("base does not contain %q", tc.old)
			}
			doc := strings.Replace(base, tc.old, tc.new, 1)
			_, err := policy.Parse("policy.yaml", []byte(doc))
			var pe *policy.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse error = %v, want a *ParseError", err)
			}
			if diff := cmp.Diff(err.Error(), tc.want); diff != "" {
				t.Errorf("error (-got +want):\n%s", diff)
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	doc := strings.NewReplacer("roles: [deploy]", "roles: [deplyo]", "issuer: github", "issuer: gitlab").Replace(base)
	_, err := policy.Parse("p.yaml", []byte(doc))
	want := `p.yaml:16: rules[0].issuer: unknown issuer "gitlab"` + "\n" + `p.yaml:17: rules[0].roles[0]: unknown role "deplyo"`
	if diff := cmp.Diff(err.Error(), want); diff != "" {
		t.Errorf("error (-got +want):\n%s", diff)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, doc := range []string{"", "# nothing\n"} {
		if _, err := policy.Parse("p.yaml", []byte(doc)); err == nil {
			t.Errorf("Parse(%q) succeeded", doc)
		}
	}
	if _, err := policy.Parse("p.yaml", []byte(base+"---\nversion: 1\n")); err == nil {
		t.Error("Parse accepted two documents")
	}
}

// identity is a GitHub Actions caller of acme/app.
func identity(claims map[string]string) policy.Identity {
	return policy.Identity{
		Issuer:  githubURL,
		Subject: "repo:acme/app:ref:" + claims["ref"],
		Claim: func(name string) (string, bool) {
			v, ok := claims[name]
			return v, ok
		},
	}
}

var mainBranch = map[string]string{"repository": "acme/app", "ref": "refs/heads/main", "ref_type": "branch"}

func TestEvaluate(t *testing.T) {
	p := load(t)
	dev, _ := p.Account("dev")
	tests := []struct {
		name   string
		id     policy.Identity
		target policy.Target
		want   policy.Decision
	}{
		{
			name:   "allow/main-branch",
			id:     identity(mainBranch),
			target: policy.Target{Role: "deploy", Account: "dev"},
			want: policy.Decision{
				Allowed: true, Rule: "main-branch-deploys-dev", Reason: `allowed by rule "main-branch-deploys-dev"`,
				Account: dev, Role: p.Roles()[0], Region: "eu-west-1", MaxDuration: time.Hour,
				Evaluations: []policy.RuleEvaluation{
					{Rule: "main-branch-deploys-dev", Effect: policy.EffectAllow, Matched: true, Reason: "issuer, role, account and every condition match", AboutTarget: true},
					{Rule: "tags-deploy-prod", Effect: policy.EffectAllow, Reason: "account dev: not covered by the rule; claim ref_type: want tag, got branch"},
				},
			},
		},
		{
			name:   "allow/by-account-id-in-residency",
			id:     identity(mainBranch),
			target: policy.Target{Role: "deploy", Account: "111111111111", Region: "eu-central-1"},
			want: policy.Decision{
				Allowed: true, Rule: "main-branch-deploys-dev", Reason: `allowed by rule "main-branch-deploys-dev"`,
				Account: dev, Role: p.Roles()[0], Region: "eu-central-1", MaxDuration: time.Hour,
				Evaluations: []policy.RuleEvaluation{
					{Rule: "main-branch-deploys-dev", Effect: policy.EffectAllow, Matched: true, Reason: "issuer, role, account and every condition match", AboutTarget: true},
					{Rule: "tags-deploy-prod", Effect: policy.EffectAllow, Reason: "account dev: not covered by the rule; claim ref_type: want tag, got branch"},
				},
			},
		},
		{
			name:   "deny/wrong-ref",
			id:     identity(map[string]string{"repository": "acme/app", "ref": "refs/heads/dev"}),
			target: policy.Target{Role: "deploy", Account: "dev"},
			want: policy.Decision{
				Rule: policy.DefaultDeny, Reason: `no allow rule matches role "deploy" in account "dev" for this token`,
				Account: dev, Role: p.Roles()[0], Region: "eu-west-1",
				Evaluations: []policy.RuleEvaluation{
					{Rule: "main-branch-deploys-dev", Effect: policy.EffectAllow, Reason: "claim ref: want refs/heads/main, got refs/heads/dev", AboutTarget: true},
					{Rule: "tags-deploy-prod", Effect: policy.EffectAllow, Reason: "account dev: not covered by the rule; claim ref_type: want tag, claim missing"},
				},
			},
		},
		{
			name:   "deny/wrong-issuer",
			id:     policy.Identity{Issuer: "https://gitlab.com", Subject: "x", Claim: identity(mainBranch).Claim},
			target: policy.Target{Role: "deploy", Account: "dev"},
			want: policy.Decision{
				Rule: policy.DefaultDeny, Reason: `no allow rule matches role "deploy" in account "dev" for this token`,
				Account: dev, Role: p.Roles()[0], Region: "eu-west-1",
				Evaluations: []policy.RuleEvaluation{
					{Rule: "main-branch-deploys-dev", Effect: policy.EffectAllow, Reason: "issuer: want " + githubURL + ", got https://gitlab.com"},
					{Rule: "tags-deploy-prod", Effect: policy.EffectAllow, Reason: "issuer: want " + githubURL + ", got https://gitlab.com; account dev: not covered by the rule; claim ref_type: want tag, got branch"},
				},
			},
		},
		{
			name:   "deny/unknown-role",
			id:     identity(mainBranch),
			target: policy.Target{Role: "admin", Account: "dev"},
			want:   policy.Decision{Rule: policy.DefaultDeny, Reason: `role "admin" is not declared in the trust policy`, Account: dev, Region: "eu-west-1"},
		},
		{
			name:   "deny/role-not-in-account",
			id:     identity(mainBranch),
			target: policy.Target{Role: "readonly", Account: "dev"},
			want:   policy.Decision{Rule: policy.DefaultDeny, Reason: `role "readonly" is not declared in account "dev"`, Account: dev, Region: "eu-west-1"},
		},
		{
			name:   "deny/unknown-account",
			id:     identity(mainBranch),
			target: policy.Target{Role: "deploy", Account: "stage"},
			want:   policy.Decision{Rule: policy.DefaultDeny, Reason: `account "stage" is not in the account matrix`},
		},
		{
			name:   "deny/outside-residency",
			id:     identity(mainBranch),
			target: policy.Target{Role: "deploy", Account: "dev", Region: "us-east-1"},
			want: policy.Decision{Rule: policy.ResidencyRule, Reason: `region "us-east-1" is outside residency zone "eu" of account "dev"`,
				Account: dev, Role: p.Roles()[0], Region: "us-east-1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(p.Evaluate(tc.id, tc.target), tc.want); diff != "" {
				t.Errorf("Evaluate (-got +want):\n%s", diff)
			}
		})
	}
}

func TestRolesFor(t *testing.T) {
	p := load(t)
	var got []string
	for _, g := range p.RolesFor(identity(map[string]string{"repository": "acme/app", "ref": "refs/tags/v1", "ref_type": "tag"}), time.Now(), policy.Request{}) {
		got = append(got, g.Role.Name+"@"+g.Account.Name+" by "+g.Rule)
	}
	want := []string{"deploy@prod by tags-deploy-prod", "readonly@prod by tags-deploy-prod"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("RolesFor (-got +want):\n%s", diff)
	}
}

// TestReadmeExample keeps the documented example valid and lint-clean.
func TestReadmeExample(t *testing.T) {
	data, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Parse("example.yaml", data); err != nil {
		t.Fatal(err)
	}
	if got := policy.FormatFindings("example.yaml", policy.Lint("example.yaml", data)); got != "" {
		t.Errorf("lint findings:\n%s", got)
	}
}
