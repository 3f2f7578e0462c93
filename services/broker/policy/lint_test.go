package policy_test

import (
	"strings"
	"testing"

	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/google/go-cmp/cmp"
)

func TestLint(t *testing.T) {
	tests := []struct {
		name string
		old  string // replaced in base by new
		new  string
		want string
	}{
		{"clean", "repository: acme/app", "repository_id: \"4242\"", ""},
		{"invalid/unknown-role", "roles: [deploy]", "roles: [deplyo]",
			`policy.yaml:17: error: rules[0].roles[0]: unknown role "deplyo" [invalid]`},
		{"invalid/unknown-account", "accounts: [dev]", "accounts: [stage]",
			`policy.yaml:18: error: rules[0].accounts[0]: unknown account "stage" [invalid]`},
		{"invalid/missing-audience", "    audiences: [credmatrix]\n", "",
			`policy.yaml:3: error: issuers[0].audiences: at least one is required: the audience is what says a token was minted for credmatrix [invalid]`},
		{"generic-audience", "audiences: [credmatrix]", "audiences: [sts.amazonaws.com]",
			"policy.yaml:5: warning: issuers[0].audiences[0]: \"sts.amazonaws.com\" is also the audience of AWS's own OIDC federation: use an audience only credmatrix accepts (e.g. credmatrix) [generic-audience]\n" +
				"policy.yaml:20: warning: rules[0].claims.repository: repository can be renamed and then re-created by someone else: also bind the immutable repository_id [mutable-name]"},
		{"broad-subject", "repository: acme/app", "sub: 'repo:*'",
			`policy.yaml:20: warning: rules[0].claims.sub: glob repo:* matches subjects of any repository or namespace: pin the owner and repository (repo:acme/app:*) [broad-subject]`},
		{"pinned-subject", "repository: acme/app", "sub: 'repo:acme/app:*'", ""},
		{"mutable-name", "repository: acme/app", "repository_owner: acme",
			`policy.yaml:20: warning: rules[0].claims.repository_owner: repository_owner can be renamed and then re-created by someone else: also bind the immutable repository_owner_id [mutable-name]`},
		{"unreachable/role-not-in-account", "roles:\n", "  - id: \"222222222222\"\n    name: prod\n    region: eu-west-1\nroles:\n",
			`policy.yaml:23: warning: rules[0].claims.repository: repository can be renamed and then re-created by someone else: also bind the immutable repository_id [mutable-name]` + "\n" +
				`policy.yaml:24: warning: rules[1]: none of its roles is declared in any of its accounts [unreachable-rule]`},
		{"unreachable/shadowed-by-guardrail", "rules:\n", "rules:\n  - name: freeze-dev\n    effect: deny\n    accounts: [dev]\n",
			`policy.yaml:23: warning: rules[1].claims.repository: repository can be renamed and then re-created by someone else: also bind the immutable repository_id [mutable-name]` + "\n" +
				`policy.yaml:18: warning: rules[1]: every role it grants is denied by an unconditional deny rule [unreachable-rule]`},
		{"unreachable/duplicate", "      repository: acme/app\n", "      repository_id: \"1\"\n  - name: again\n    issuer: github\n    roles: [deploy]\n    accounts: [dev]\n    claims:\n      repository_id: \"1\"\n      ref: refs/heads/main\n",
			`policy.yaml:21: warning: rules[1]: rule "main" grants everything it does, with no more conditions [unreachable-rule]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(base, tc.old) {
				t.Fatalf("base does not contain %q", tc.old)
			}
			doc := strings.Replace(base, tc.old, tc.new, 1)
			if tc.name == "unreachable/role-not-in-account" {
				doc += "  - name: deploy-prod\n    issuer: github\n    roles: [deploy]\n    accounts: [prod]\n    claims:\n      repository_id: \"1\"\n"
			}
			got := policy.FormatFindings("policy.yaml", policy.Lint("policy.yaml", []byte(doc)))
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("Lint (-got +want):\n%s", diff)
			}
		})
	}
}

// TestLintSiblingGlobs flags wildcards inside a name segment of sub,
// repository, ref and environment, and checks that the sibling each
// finding names really is granted by the rule.
func TestLintSiblingGlobs(t *testing.T) {
	tests := []struct {
		name, claims string
		want         []string // the sibling examples, in claim order
	}{
		{"sub/prefix", "sub: 'repo:acme/app*'", []string{"repo:acme/app-evil"}},
		{"sub/mid-segment", "sub: 'repo:acme/app-*:ref:refs/heads/main'", []string{"repo:acme/app--evil:ref:refs/heads/main"}},
		{"repository/prefix", "repository: acme/app*\n      repository_id: \"1\"", []string{"acme/app-evil"}},
		{"ref/prefix", "ref: refs/heads/release-*\n      repository_id: \"1\"", []string{"refs/heads/release--evil"}},
		{"ref/question-mark", "ref: refs/heads/v?\n      repository_id: \"1\"", []string{"refs/heads/vx"}},
		{"environment/prefix", "environment: prod*\n      repository_id: \"1\"", []string{"prod-evil"}},
		{"environment/suffix", "environment: '*-prod'\n      repository_id: \"1\"", []string{"evil--prod"}},
		{"environment/in-a-list", "environment: [staging, prod*]\n      repository_id: \"1\"", []string{"prod-evil"}},
		{"ok/whole-segments", "sub: 'repo:acme/app:*'\n      ref: refs/heads/*\n      repository_id: \"1\"", nil},
		{"ok/negated", "environment: {not: prod*}\n      repository_id: \"1\"", nil},
		{"ok/other-claim", "workflow: deploy*\n      repository_id: \"1\"", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := strings.Replace(base, "repository: acme/app", tc.claims, 1)
			var got []string
			for _, f := range policy.Lint("policy.yaml", []byte(doc)) {
				if f.Code != policy.FindingSiblingGlob {
					continue
				}
				_, rest, _ := strings.Cut(f.Message, "such as ")
				example, _, _ := strings.Cut(rest, ": ")
				got = append(got, example)
				// The sibling is real: the rule grants a token carrying it.
				p, err := policy.Parse("policy.yaml", []byte(doc))
				if err != nil {
					t.Fatal(err)
				}
				claim := strings.TrimPrefix(f.Field, "rules[0].claims.")
				raw := map[string]any{"sub": "repo:acme/app:ref:refs/heads/main", "repository_id": "1", "ref": "refs/heads/main", "environment": "prod", claim: example}
				id := policy.Identity{Issuer: "https://token.actions.githubusercontent.com", Subject: raw["sub"].(string), Raw: raw,
					Claim: func(n string) (string, bool) { v, ok := raw[n].(string); return v, ok }}
				if d := p.Evaluate(id, policy.Target{Role: "deploy", Account: "dev"}); !d.Allowed {
					t.Errorf("%s=%s: denied (%s); the finding names a sibling the rule does not grant", claim, example, d.Reason)
				}
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("sibling examples (-got +want):\n%s", diff)
			}
		})
	}
	t.Run("message", func(t *testing.T) {
		doc := strings.Replace(base, "repository: acme/app", "sub: 'repo:acme/app*'", 1)
		got := policy.FormatFindings("policy.yaml", policy.Lint("policy.yaml", []byte(doc)))
		want := `policy.yaml:20: warning: rules[0].claims.sub: glob repo:acme/app* also matches sibling names such as repo:acme/app-evil: end the wildcard at a separator (: or /) or list the exact names [sibling-glob]`
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("(-got +want):\n%s", diff)
		}
	})
}
