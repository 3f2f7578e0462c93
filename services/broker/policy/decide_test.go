package policy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/google/go-cmp/cmp"
)

// frozenState refuses every target in account "frozen".
type frozenState struct{ account string }

func (f frozenState) Check(_ policy.Identity, acct policy.Account, _ policy.Role, _ time.Time) []policy.StateRule {
	return []policy.StateRule{{Rule: "account-frozen", Matched: acct.ID == f.account, Reason: "frozen", Evaluation: "state"}}
}

func TestDecide(t *testing.T) {
	p, err := policy.Parse("guarded.yaml", []byte(guarded))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	id := ghIdentity(nil)
	noRepo := ghIdentity(map[string]any{"repository": nil, "repository_owner": "acme"})
	type result struct {
		Allowed  bool
		Rule     string
		Duration time.Duration
		Invalid  string
		Policy   bool
	}
	tests := []struct {
		name string
		req  policy.Request
		want result
	}{
		{"allow/role-cap", policy.Request{Identity: id, Target: policy.Target{Role: "deploy", Account: "dev"}},
			result{true, "main-or-release", 2 * time.Hour, "", true}},
		{"allow/asked-shorter", policy.Request{Identity: id, Target: policy.Target{Role: "deploy", Account: "dev"}, Duration: 20 * time.Minute},
			result{true, "main-or-release", 20 * time.Minute, "", true}},
		{"allow/asked-longer-capped", policy.Request{Identity: id, Target: policy.Target{Role: "deploy", Account: "us"}, Duration: 12 * time.Hour},
			result{true, "main-or-release", time.Hour, "", false}},
		{"allow/ou-cap", policy.Request{Identity: id, Target: policy.Target{Role: "deploy", Account: "prod"}},
			result{true, "main-or-release", 15 * time.Minute, "", true}},
		{"allow/provider-cap", policy.Request{Identity: id, Target: policy.Target{Role: "deploy", Account: "dev"}, ProviderMax: time.Hour},
			result{true, "main-or-release", time.Hour, "", true}},
		{"deny/residency", policy.Request{Identity: id, Target: policy.Target{Role: "deploy", Account: "dev", Region: "us-east-1"}},
			result{false, policy.ResidencyRule, 0, "", false}},
		{"deny/template-needs-missing-claim", policy.Request{Identity: noRepo, Target: policy.Target{Role: "deploy", Account: "dev"}},
			result{false, "default-deny", 0, "", false}}, // no repository: the allow rule does not match either
		{"deny/state", policy.Request{Identity: id, Target: policy.Target{Role: "deploy", Account: "us"}, State: frozenState{"333333333333"}},
			result{false, "account-frozen", 0, "", false}},
		{"invalid/duration", policy.Request{Identity: id, Target: policy.Target{Role: "deploy", Account: "dev"}, Duration: time.Minute},
			result{false, "default-deny", 0, "duration: must be between 15m and 12h", false}},
		{"invalid/scope-down-allow-with-template", policy.Request{Identity: id, Target: policy.Target{Role: "deploy", Account: "dev"},
			ScopeDown: `{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`},
			result{false, "main-or-release", 0, "policy: Allow statements are only accepted for roles without a session_policy; scope down with Deny statements", false}},
		{"invalid/scope-down-duplicate", policy.Request{Identity: id, Target: policy.Target{Role: "deploy", Account: "us"},
			ScopeDown: `{"Statement":[{"Effect":"Deny","Effect":"Allow","Action":"*","Resource":"*"}]}`},
			result{false, "default-deny", 0, "policy: Statement[0].Effect: duplicate key", false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Target.Time = at
			o := p.Decide(tc.req)
			got := result{o.Allowed, o.Rule, o.Duration, "", o.SessionPolicy != ""}
			if o.Invalid != nil {
				got.Invalid = o.Invalid.Error()
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
		})
	}
}

// TestDecideTemplateRenderFailureRefuses: a role template needing a claim
// the token lacks refuses, naming the session-policy rule.
func TestDecideTemplateRenderFailureRefuses(t *testing.T) {
	doc := strings.Replace(guarded, "{{claim.repository}}", "{{claim.team}}", 1)
	p, err := policy.Parse("guarded.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	o := p.Decide(policy.Request{Identity: ghIdentity(nil), Target: policy.Target{Role: "deploy", Account: "dev", Time: time.Now()}})
	if diff := cmp.Diff([]any{o.Allowed, o.Rule, o.Reason}, []any{false, policy.SessionPolicyRule, "session policy: {{claim.team}} has no value for this token"}); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
}

// TestDecidePlaceholderSessionID: a dry run renders the session id's
// placeholder, of the length of a real one, so the size limit bites the
// same.
func TestDecidePlaceholderSessionID(t *testing.T) {
	doc := strings.Replace(guarded, "{{claim.repository}}/*", "{{claim.repository}}/{{session_id}}", 1)
	p, err := policy.Parse("guarded.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	req := policy.Request{Identity: ghIdentity(nil), Target: policy.Target{Role: "deploy", Account: "dev", Time: time.Now()}}
	dry := p.Decide(req)
	req.SessionID = "0b7c9f3e-1d2a-4c5b-8e6f-7a8b9c0d1e2f"
	real := p.Decide(req)
	if len(dry.SessionPolicy) != len(real.SessionPolicy) || !strings.Contains(dry.SessionPolicy, policy.PlaceholderSessionID) {
		t.Errorf("dry run %q, issuance %q", dry.SessionPolicy, real.SessionPolicy)
	}
}
