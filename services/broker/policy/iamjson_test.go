package policy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/google/go-cmp/cmp"
)

// TestScopeDownJSONIsStrict sends scope-down policies that Go's decoder
// and IAM would read differently: each is refused, naming the field.
func TestScopeDownJSONIsStrict(t *testing.T) {
	p, err := policy.Parse("guarded.yaml", []byte(guarded))
	if err != nil {
		t.Fatal(err)
	}
	id := ghIdentity(nil)
	d := p.Evaluate(id, policy.Target{Role: "deploy", Account: "us"}) // no template, no residency
	if !d.Allowed {
		t.Fatal(d.Reason)
	}
	const ok = `"Action":"s3:GetObject","Resource":"*"`
	tests := []struct {
		name, doc, want string
	}{
		{"duplicate/effect", `{"Statement":[{"Effect":"Allow",` + ok + `,"Effect":"Deny"}]}`,
			`Statement[0].Effect: duplicate key`},
		{"duplicate/effect-other-case", `{"Statement":[{"Effect":"Deny",` + ok + `,"effect":"Allow"}]}`,
			`Statement[0].effect: duplicate key (same as "Effect" but for case)`},
		{"duplicate/statement", `{"Statement":[{"Effect":"Deny",` + ok + `}],"Statement":[{"Effect":"Allow",` + ok + `}]}`,
			`Statement: duplicate key`},
		{"duplicate/condition-key-other-case", `{"Statement":[{"Effect":"Deny",` + ok + `,"Condition":{"StringEquals":{"aws:SourceVpc":"vpc-1","aws:sourcevpc":"vpc-2"}}}]}`,
			`Statement[0].Condition.StringEquals.aws:sourcevpc: duplicate key (same as "aws:SourceVpc" but for case)`},
		{"wrong-case/statement", `{"statement":[{"Effect":"Deny",` + ok + `}]}`,
			`statement: wrong case: IAM policy elements are case-sensitive, want "Statement"`},
		{"wrong-case/action", `{"Statement":[{"Effect":"Deny","action":"s3:*","Resource":"*"}]}`,
			`Statement[0].action: wrong case: IAM policy elements are case-sensitive, want "Action"`},
		{"wrong-case/effect-value", `{"Statement":[{"Effect":"deny",` + ok + `}]}`,
			`Statement[0].Effect: must be Allow or Deny`},
		{"unknown/element", `{"Statement":[{"Effect":"Deny",` + ok + `,"Actions":"*"}]}`,
			`Statement[0].Actions: unknown IAM policy element`},
		{"refused/principal", `{"Statement":[{"Effect":"Deny",` + ok + `,"Principal":"*"}]}`,
			`Statement[0].Principal: not allowed in a session policy`},
		{"refused/trailing-document", `{"Statement":[{"Effect":"Deny",` + ok + `}]}{"Statement":[]}`,
			`not one JSON value: trailing data after it`},
		{"refused/not-an-object", `["Statement"]`, `not an IAM policy JSON object`},
		{"refused/no-statement", `{"Version":"2012-10-17"}`, `Statement: required`},
		{"refused/bad-version", `{"Version":"2012-10-18","Statement":[{"Effect":"Deny",` + ok + `}]}`, `Version: want "2012-10-17"`},
		{"refused/deep", `{"Statement":[{"Effect":"Deny",` + ok + `,"Condition":` + strings.Repeat(`{"a":`, 20) + `1` + strings.Repeat(`}`, 20) + `}]}`,
			`Statement[0].Condition.a.a.a.a.a.a.a.a.a.a.a.a.a.a: nested more than 16 deep`},
		{"refused/truncated", `{"Statement":[{"Effect":"Deny"`, `Statement[0]: malformed JSON: unexpected end`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.SessionPolicy(d, policy.RenderValues{Claim: id.Claim, SessionID: "s-1"}, tc.doc)
			var extra *policy.ExtraPolicyError
			if !errors.As(err, &extra) {
				t.Fatalf("SessionPolicy error = %v, want an ExtraPolicyError", err)
			}
			if diff := cmp.Diff(extra.Msg, tc.want); diff != "" {
				t.Errorf("message (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(policy.CheckPolicyJSON(tc.doc).Error(), tc.want); diff != "" {
				t.Errorf("CheckPolicyJSON (-got +want):\n%s", diff)
			}
		})
	}
}

// TestScopeDownIsSentCanonical shows that two spellings of one policy
// reach STS as the same bytes: the re-serialisation of what was checked.
func TestScopeDownIsSentCanonical(t *testing.T) {
	p, err := policy.Parse("guarded.yaml", []byte(guarded))
	if err != nil {
		t.Fatal(err)
	}
	id := ghIdentity(nil)
	d := p.Evaluate(id, policy.Target{Role: "deploy", Account: "us"})
	spellings := []string{
		`{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":["s3:DeleteObject"],"Resource":"*","Condition":{"StringEquals":{"aws:ResourceTag/env":"prod<&>"}}}]}`,
		"{ \"Statement\" : {\n  \"Resource\": \"*\", \"Condition\": {\"StringEquals\": {\"aws:ResourceTag/env\": \"prod\\u003c\\u0026\\u003e\"}},\n  \"Action\": [\"s3:DeleteObject\"], \"Effect\": \"Deny\" } }",
	}
	const want = `{"Statement":[{"Action":"*","Effect":"Allow","Resource":"*","Sid":"CredmatrixRole"},` +
		`{"Action":["s3:DeleteObject"],"Condition":{"StringEquals":{"aws:ResourceTag/env":"prod<&>"}},"Effect":"Deny","Resource":"*"}],"Version":"2012-10-17"}`
	for i, doc := range spellings {
		got, err := p.SessionPolicy(d, policy.RenderValues{Claim: id.Claim, SessionID: "s-1"}, doc)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("spelling %d (-got +want):\n%s", i, diff)
		}
	}
}

// TestSessionPolicyTemplateIsStrict refuses, at load, a role template
// with a duplicate key, naming the role and the field.
func TestSessionPolicyTemplateIsStrict(t *testing.T) {
	doc := strings.Replace(guarded, `"Effect": "Allow", "Action": "s3:PutObject",`, `"Effect": "Allow", "Action": "s3:PutObject", "Effect": "Deny",`, 1)
	_, err := policy.Parse("guarded.yaml", []byte(doc))
	if err == nil || !strings.Contains(err.Error(), "roles[0].session_policy: Statement[0].Effect: duplicate key") {
		t.Errorf("Parse error = %v, want the duplicate Effect named", err)
	}
}

// TestCanonicalStringsAsEncodingJSON: the canonical writer encodes every
// string as encoding/json does without HTML escaping, invalid UTF-8 and
// line separators included.
func TestCanonicalStringsAsEncodingJSON(t *testing.T) {
	cases := []string{"", "plain", `q"uote\back`, "\n\r\t\b\f\x00\x1f\x7f", "<&>", "é\u2028\u2029✓", "\xff\xfeok\xc3", "${*}${?}${$}"}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, r.IntN(24))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		if got := policy.WriteJSONString(s); got != strings.TrimSuffix(want.String(), "\n") {
			t.Fatalf("%q: got %s, want %s", s, got, want.String())
		}
	}
}

// TestTemplatePlaceholdersInKeys: a placeholder may name a key; filled
// keys that collide are refused, and a template holding NUL characters
// (the compiled form's markers) is refused at load.
func TestTemplatePlaceholdersInKeys(t *testing.T) {
	withTemplate := func(tmpl string) string {
		return strings.Replace(guarded, `{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:PutObject",
        "Resource": "arn:aws:s3:::artifacts-{{account_id}}/{{claim.repository}}/*"}]}`, tmpl, 1)
	}
	render := func(t *testing.T, doc string, claims map[string]any) (policy.Outcome, error) {
		t.Helper()
		p, err := policy.Parse("guarded.yaml", []byte(doc))
		if err != nil {
			return policy.Outcome{}, err
		}
		return p.Decide(policy.Request{Identity: ghIdentity(claims), Target: policy.Target{Role: "deploy", Account: "dev", Time: time.Now()}}), nil
	}
	keyed := withTemplate(`{"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*",
        "Condition": {"StringEquals": {"aws:ResourceTag/{{claim.team}}": "{{claim.repository}}", "aws:ResourceTag/{{claim.other}}": "x"}}}]}`)
	o, err := render(t, keyed, map[string]any{"team": "web*", "other": "db"})
	if err != nil || !strings.Contains(o.SessionPolicy, `"aws:ResourceTag/web${*}":"acme/app"`) {
		t.Errorf("keyed template: %v %s", err, o.SessionPolicy)
	}
	o, err = render(t, keyed, map[string]any{"team": "WEB", "other": "web"})
	if err != nil || o.Allowed || o.Rule != policy.SessionPolicyRule || !strings.Contains(o.Reason, "appears twice") {
		t.Errorf("colliding keys: %v allowed=%v rule=%s reason=%s", err, o.Allowed, o.Rule, o.Reason)
	}
	if _, err := policy.Parse("guarded.yaml", []byte(withTemplate(`{"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "a\u0000b"}]}`))); err == nil ||
		!strings.Contains(err.Error(), "NUL characters are not allowed") {
		t.Errorf("NUL in a template: %v", err)
	}
}
