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
