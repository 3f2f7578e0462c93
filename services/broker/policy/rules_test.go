package policy_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/google/go-cmp/cmp"
)

// guarded is a policy with guardrails, every kind of claim condition, OU
// caps, residency zones and a session policy template.
const guarded = `version: 1
issuers:
  - name: github
    url: https://token.actions.githubusercontent.com
    audiences: [credmatrix]
zones:
  - name: eu
    regions: [eu-west-1, eu-central-1]
ous:
  - path: /root/prod
    max_duration: 15m
accounts:
  - id: "111111111111"
    name: dev
    ou: /root/dev
    region: eu-west-1
    residency: eu
  - id: "222222222222"
    name: prod
    ou: /root/prod/eu
    region: eu-central-1
    residency: eu
  - id: "333333333333"
    name: us
    ou: /root/dev
    region: us-east-1
roles:
  - name: deploy
    account: dev
    max_duration: 2h
    session_policy: |
      {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:PutObject",
        "Resource": "arn:aws:s3:::artifacts-{{account_id}}/{{claim.repository}}/*"}]}
  - name: deploy
    account: prod
    max_duration: 1h
  - name: deploy
    account: us
rules:
  - name: no-prod-from-pull-requests
    effect: deny
    ous: [/root/prod]
    claims:
      event_name: pull_request
    reason: pull requests never reach prod
  - name: no-forks
    effect: deny
    condition: claims.repository_owner != "acme"
  - name: main-or-release
    issuer: github
    roles: [deploy]
    accounts: [dev, prod, us]
    claims:
      repository: acme/*
      ref: [refs/heads/main, refs/heads/release/*]
      environment: {not: [sandbox, scratch]}
  - name: cel-night-builds
    issuer: github
    roles: [deploy]
    accounts: [dev]
    condition: claims.workflow == "nightly" && int(claims.run_attempt) == 1
    max_duration: 30m
`

func ghIdentity(claims map[string]any) policy.Identity {
	raw := map[string]any{"repository": "acme/app", "repository_owner": "acme", "ref": "refs/heads/main", "event_name": "push", "environment": "prod"}
	for k, v := range claims {
		if v == nil {
			delete(raw, k)
		} else {
			raw[k] = v
		}
	}
	return policy.Identity{
		Issuer:  "https://token.actions.githubusercontent.com",
		Subject: "repo:acme/app",
		Raw:     raw,
		Claim: func(name string) (string, bool) {
			v, ok := raw[name].(string)
			return v, ok
		},
	}
}

func TestGuardrails(t *testing.T) {
	p, err := policy.Parse("guarded.yaml", []byte(guarded))
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		Allowed     bool
		Rule        string
		Reason      string
		MaxDuration time.Duration
	}
	tests := []struct {
		name   string
		claims map[string]any
		target policy.Target
		want   result
	}{
		{"allow/glob-and-list", nil, policy.Target{Role: "deploy", Account: "dev"},
			result{true, "main-or-release", `allowed by rule "main-or-release"`, 2 * time.Hour}},
		{"allow/release-branch-glob", map[string]any{"ref": "refs/heads/release/1.2"}, policy.Target{Role: "deploy", Account: "us"},
			result{true, "main-or-release", `allowed by rule "main-or-release"`, time.Hour}},
		{"allow/ou-cap", nil, policy.Target{Role: "deploy", Account: "prod"},
			result{true, "main-or-release", `allowed by rule "main-or-release"`, 15 * time.Minute}},
		{"allow/cel-rule-cap", map[string]any{"ref": "refs/heads/dev", "workflow": "nightly", "run_attempt": "1"}, policy.Target{Role: "deploy", Account: "dev"},
			result{true, "cel-night-builds", `allowed by rule "cel-night-builds"`, 30 * time.Minute}},
		{"deny/cel-false", map[string]any{"ref": "refs/heads/dev", "workflow": "nightly", "run_attempt": "2"}, policy.Target{Role: "deploy", Account: "dev"},
			result{false, policy.DefaultDeny, `no allow rule matches role "deploy" in account "dev" for this token`, 0}},
		{"deny/deny-beats-allow", map[string]any{"event_name": "pull_request"}, policy.Target{Role: "deploy", Account: "prod"},
			result{false, "no-prod-from-pull-requests", `denied by guardrail "no-prod-from-pull-requests": pull requests never reach prod`, 0}},
		{"allow/guardrail-out-of-scope", map[string]any{"event_name": "pull_request"}, policy.Target{Role: "deploy", Account: "dev"},
			result{true, "main-or-release", `allowed by rule "main-or-release"`, 2 * time.Hour}},
		{"deny/guardrail-missing-claim-fails-closed", map[string]any{"event_name": nil}, policy.Target{Role: "deploy", Account: "prod"},
			result{false, "no-prod-from-pull-requests", `denied by guardrail "no-prod-from-pull-requests": pull requests never reach prod`, 0}},
		{"deny/cel-guardrail", map[string]any{"repository_owner": "mallory", "repository": "acme/app"}, policy.Target{Role: "deploy", Account: "dev"},
			result{false, "no-forks", `denied by guardrail "no-forks"`, 0}},
		{"deny/cel-guardrail-missing-claim-fails-closed", map[string]any{"repository_owner": nil}, policy.Target{Role: "deploy", Account: "dev"},
			result{false, "no-forks", `denied by guardrail "no-forks"`, 0}},
		{"deny/negation", map[string]any{"environment": "sandbox"}, policy.Target{Role: "deploy", Account: "dev"},
			result{false, policy.DefaultDeny, `no allow rule matches role "deploy" in account "dev" for this token`, 0}},
		{"deny/negation-missing-claim", map[string]any{"environment": nil}, policy.Target{Role: "deploy", Account: "dev"},
			result{false, policy.DefaultDeny, `no allow rule matches role "deploy" in account "dev" for this token`, 0}},
		{"deny/glob-other-owner", map[string]any{"repository": "acmeevil/app"}, policy.Target{Role: "deploy", Account: "dev"},
			result{false, policy.DefaultDeny, `no allow rule matches role "deploy" in account "dev" for this token`, 0}},
		{"deny/list-miss", map[string]any{"ref": "refs/heads/feature"}, policy.Target{Role: "deploy", Account: "dev"},
			result{false, policy.DefaultDeny, `no allow rule matches role "deploy" in account "dev" for this token`, 0}},
		{"deny/residency-zone-list", nil, policy.Target{Role: "deploy", Account: "dev", Region: "eu-north-1"},
			result{false, policy.ResidencyRule, `region "eu-north-1" is outside residency zone "eu" of account "dev"`, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := p.Evaluate(ghIdentity(tc.claims), tc.target)
			got := result{d.Allowed, d.Rule, d.Reason, d.MaxDuration}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("Evaluate (-got +want):\n%s\nevaluations: %+v", diff, d.Evaluations)
			}
		})
	}
}

func TestEvaluationsListDenyRulesFirst(t *testing.T) {
	p, err := policy.Parse("guarded.yaml", []byte(guarded))
	if err != nil {
		t.Fatal(err)
	}
	d := p.Evaluate(ghIdentity(map[string]any{"ref": "refs/heads/x"}), policy.Target{Role: "deploy", Account: "dev"})
	var got []string
	for _, ev := range d.Evaluations {
		got = append(got, ev.Effect.String()+" "+ev.Rule+": "+ev.Reason)
	}
	want := []string{
		"deny no-prod-from-pull-requests: account dev: not covered by the rule; claim event_name: want pull_request, got push",
		"deny no-forks: condition: false",
		"allow main-or-release: claim ref: want one of [refs/heads/main, glob refs/heads/release/*], got refs/heads/x",
		"allow cel-night-builds: condition: no such key: workflow",
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("evaluations (-got +want):\n%s", diff)
	}
}

func TestSessionPolicy(t *testing.T) {
	p, err := policy.Parse("guarded.yaml", []byte(guarded))
	if err != nil {
		t.Fatal(err)
	}
	render := func(t *testing.T, repo, account, extra string) (string, error) {
		t.Helper()
		id := ghIdentity(map[string]any{"repository": repo})
		d := p.Evaluate(id, policy.Target{Role: "deploy", Account: account})
		if !d.Allowed {
			t.Fatalf("denied: %s", d.Reason)
		}
		return p.SessionPolicy(d, policy.RenderValues{Claim: id.Claim, SessionID: "s-1"}, extra)
	}
	// What goes to STS is canonical JSON: keys sorted, no whitespace.
	const residency = `{"Condition":{"StringNotLike":{"aws:RequestedRegion":["eu-west-1","eu-central-1"]}},"Effect":"Deny","NotAction":["iam:*","sts:*","organizations:*","route53:*","cloudfront:*","support:*","health:*","account:*"],"Resource":"*","Sid":"CredmatrixResidency"}`
	tests := []struct {
		name, repo, account, extra string
		want                       string
	}{
		{"template-and-residency", "acme/app", "dev", "",
			`{"Statement":[{"Action":"s3:PutObject","Effect":"Allow","Resource":"arn:aws:s3:::artifacts-111111111111/acme/app/*"},` + residency + `],"Version":"2012-10-17"}`},
		{"no-template-residency-only", "acme/app", "prod", "",
			`{"Statement":[{"Action":"*","Effect":"Allow","Resource":"*","Sid":"CredmatrixRole"},` + residency + `],"Version":"2012-10-17"}`},
		{"no-template-no-residency", "acme/app", "us", "", ""},
		{"extra-allow-narrows-untemplated-role", "acme/app", "us", `{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}`,
			`{"Statement":[{"Action":"s3:GetObject","Effect":"Allow","Resource":"*"}],"Version":"2012-10-17"}`},
		{"extra-deny-appended", "acme/app", "dev", `{"Statement":{"Effect":"Deny","Action":"s3:DeleteObject","Resource":"*"}}`,
			`{"Statement":[{"Action":"s3:PutObject","Effect":"Allow","Resource":"arn:aws:s3:::artifacts-111111111111/acme/app/*"},` + residency + `,{"Action":"s3:DeleteObject","Effect":"Deny","Resource":"*"}],"Version":"2012-10-17"}`},
		// Claims aimed at the policy text: each stays inside its string,
		// and IAM wildcards and variables are escaped.
		{"attack/quote-injection", `acme/x","Action":"*","Resource":"*`, "dev", "",
			`{"Statement":[{"Action":"s3:PutObject","Effect":"Allow","Resource":"arn:aws:s3:::artifacts-111111111111/acme/x\",\"Action\":\"${*}\",\"Resource\":\"${*}/*"},` + residency + `],"Version":"2012-10-17"}`},
		{"attack/wildcard", "acme/*", "dev", "",
			`{"Statement":[{"Action":"s3:PutObject","Effect":"Allow","Resource":"arn:aws:s3:::artifacts-111111111111/acme/${*}/*"},` + residency + `],"Version":"2012-10-17"}`},
		{"attack/newline-and-variable", "acme/a\n${aws:username}?", "dev", "",
			`{"Statement":[{"Action":"s3:PutObject","Effect":"Allow","Resource":"arn:aws:s3:::artifacts-111111111111/acme/a\n${$}{aws:username}${?}/*"},` + residency + `],"Version":"2012-10-17"}`},
		{"attack/unicode", "acme/\u2028é\"}", "dev", "",
			`{"Statement":[{"Action":"s3:PutObject","Effect":"Allow","Resource":"arn:aws:s3:::artifacts-111111111111/acme/\u2028é\"}/*"},` + residency + `],"Version":"2012-10-17"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := render(t, tc.repo, tc.account, tc.extra)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("SessionPolicy (-got +want):\n%s", diff)
			}
			if got == "" {
				return
			}
			// Whatever the claim, the policy keeps its shape: the same
			// statements with the same keys.
			var doc struct{ Statement []map[string]any }
			if err := json.Unmarshal([]byte(got), &doc); err != nil {
				t.Fatalf("rendered policy is not JSON: %v", err)
			}
			for _, st := range doc.Statement {
				if a, ok := st["Action"].(string); ok && a == "*" && st["Sid"] != "CredmatrixRole" {
					t.Errorf("a claim widened Action to *: %s", got)
				}
			}
		})
	}
	t.Run("refused/extra-allow-with-template", func(t *testing.T) {
		_, err := render(t, "acme/app", "dev", `{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`)
		if err == nil || !strings.Contains(err.Error(), "Allow statements are only accepted") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("refused/missing-claim", func(t *testing.T) {
		id := ghIdentity(nil)
		d := p.Evaluate(id, policy.Target{Role: "deploy", Account: "dev"})
		_, err := p.SessionPolicy(d, policy.RenderValues{Claim: func(string) (string, bool) { return "", false }}, "")
		if err == nil || !strings.Contains(err.Error(), "{{claim.repository}} has no value") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestTimeWindowGuardrail(t *testing.T) {
	doc := strings.Replace(base, "rules:\n", `rules:
  - name: office-hours
    effect: deny
    condition: now.getHours("Europe/Paris") < 8 || now.getHours("Europe/Paris") >= 19
    reason: deploys only in office hours
`, 1)
	p, err := policy.Parse("policy.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	id := policy.Identity{Issuer: "https://token.actions.githubusercontent.com", Subject: "s", Claim: func(n string) (string, bool) {
		return map[string]string{"repository": "acme/app"}[n], n == "repository"
	}}
	tests := []struct {
		name string
		at   time.Time
		rule string
	}{
		{"allow/paris-noon", time.Date(2026, 6, 1, 10, 0, 0, 0, time.UTC), "main"},
		{"deny/paris-night", time.Date(2026, 6, 1, 22, 0, 0, 0, time.UTC), "office-hours"},
		{"deny/paris-early", time.Date(2026, 1, 5, 6, 30, 0, 0, time.UTC), "office-hours"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := p.Evaluate(id, policy.Target{Role: "deploy", Account: "dev", Time: tc.at})
			if diff := cmp.Diff(d.Rule, tc.rule); diff != "" {
				t.Errorf("deciding rule (-got +want):\n%s", diff)
			}
		})
	}
}
