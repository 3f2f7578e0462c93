package policy_test

import (
	"errors"
	"strings"
	"testing"

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
