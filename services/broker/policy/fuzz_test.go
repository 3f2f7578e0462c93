package policy_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker/policy"
)

// FuzzParse loads arbitrary documents: Parse and Lint must never panic,
// and a policy that parses must evaluate, list roles and render session
// policies without panicking.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{base, guarded, "", "version: 1", "rules: [", "version: 1\nrules:\n  - claims: {a: {not: {not: {not: x}}}}\n"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		_ = policy.Lint("fuzz.yaml", []byte(doc))
		p, err := policy.Parse("fuzz.yaml", []byte(doc))
		if err != nil {
			return
		}
		id := ghIdentity(nil)
		for _, r := range p.Roles() {
			d := p.Evaluate(id, policy.Target{Role: r.Name, Account: r.AccountID, Time: time.Unix(0, 0)})
			if d.Allowed {
				if _, err := p.SessionPolicy(d, policy.RenderValues{Claim: id.Claim, Subject: id.Subject, SessionID: "s"}, ""); err != nil && !strings.Contains(err.Error(), "session policy") && !strings.Contains(err.Error(), "exceed") {
					t.Fatalf("SessionPolicy: %v", err)
				}
			}
		}
		_ = p.RolesFor(id, time.Unix(0, 0), policy.Request{})
	})
}

// FuzzSessionPolicyClaim aims arbitrary claim values at a session policy
// template: the result is always JSON with the template's one statement,
// and the claim lands inside the Resource string, never beside it.
func FuzzSessionPolicyClaim(f *testing.F) {
	p, err := policy.Parse("guarded.yaml", []byte(guarded))
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{"acme/app", `x","Action":"*`, "*", "${aws:username}", "a\nb", "\u2028", "\\", "\"}]}"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, repo string) {
		id := ghIdentity(map[string]any{"repository": repo})
		d := p.Evaluate(ghIdentity(nil), policy.Target{Role: "deploy", Account: "dev"})
		out, err := p.SessionPolicy(d, policy.RenderValues{Claim: id.Claim, SessionID: "s"}, "")
		if err != nil {
			if strings.Contains(err.Error(), "exceed") {
				return // too long for STS: refused, not truncated
			}
			t.Fatal(err)
		}
		var doc struct {
			Statement []map[string]any
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		if len(doc.Statement) != 2 || len(doc.Statement[0]) != 3 {
			t.Fatalf("claim changed the policy's structure: %s", out)
		}
		res, _ := doc.Statement[0]["Resource"].(string)
		if !strings.HasPrefix(res, "arn:aws:s3:::artifacts-111111111111/") || !strings.HasSuffix(res, "/*") || strings.Count(res, "*") != 1+strings.Count(res, "${*}") {
			t.Fatalf("claim widened the Resource: %q", res)
		}
	})
}
