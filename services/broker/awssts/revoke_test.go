package awssts_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/awssts"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/google/go-cmp/cmp"
)

// revokePolicy has two accounts, a role in each, and a role whose
// static session tag takes the place of the repository claim's.
const revokePolicy = `version: 1
issuers:
  - name: dev
    url: {{issuer}}
    audiences: [credmatrix]
accounts:
  - id: "111111111111"
    name: dev
    region: eu-west-1
  - id: "222222222222"
    name: prod
    region: us-east-1
roles:
  - name: deploy
    account: dev
  - name: deploy
    account: prod
  - name: readonly
    account: dev
    session_tags: {repository: shared}
rules:
  - name: acme
    issuer: dev
    roles: [deploy, readonly]
    accounts: [dev, prod]
    claims:
      repository_owner: acme
`

// callers are the tokens sessions are issued to: plain, unicode,
// over-long, another repository, another ref, and a repository named
// like the unicode one after sanitising.
var callers = []struct{ label, repo, ref string }{
	{"A", "acme/app", "refs/heads/main"},
	{"B", "acme/ünïcödé", "refs/heads/main"},
	{"C", "acme/" + strings.Repeat("x", 300), "refs/heads/main"},
	{"D", "acme/other", "refs/heads/main"},
	{"E", "acme/app", "refs/heads/dev"},
	{"F", "acme/-n-c-d-", "refs/heads/main"},
}

var revokeTargets = []struct{ label, role, account string }{
	{"deploy@dev", "deploy", "dev"},
	{"deploy@prod", "deploy", "prod"},
	{"readonly@dev", "readonly", "dev"},
}

func subjectOf(label string) string {
	for _, c := range callers {
		if c.label == label {
			return "repo:" + c.repo + ":ref:" + c.ref
		}
	}
	panic(label)
}

// issued is one session as the in-process STS endpoint saw it.
type issued struct {
	label     string // "A/deploy@dev"
	sessionID string
	session   stsSession
}

// revokeRig issues a session for every caller and target through the
// broker with the aws provider, against the in-process STS and IAM.
type revokeRig struct {
	env      *brokertest.Env
	fake     *fakeAWS
	svc      *broker.Service
	sessions []issued
	mu       sync.Mutex
	now      time.Time
	marks    map[string]time.Time // label of a caller → clock after its sessions
}

func (r *revokeRig) clock() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.now
}

func (r *revokeRig) advance(d time.Duration) {
	r.mu.Lock()
	r.now = r.now.Add(d)
	r.mu.Unlock()
}

func newRevokeRig(t *testing.T, mode string) *revokeRig {
	t.Helper()
	r := &revokeRig{env: brokertest.NewEnv(t, revokePolicy), now: time.Now().Truncate(time.Second), marks: map[string]time.Time{}}
	r.fake = &fakeAWS{now: r.clock, keyPerAccount: true}
	p := newProvider(t, r.fake, awssts.Config{Mode: mode, RevokerRoleName: "credmatrix-revoker"})
	var err error
	r.svc, err = broker.New(broker.Config{Policy: r.env.Policy, Verifier: r.env.Verifier, Provider: p, Auditor: r.env.Auditor,
		Hasher: r.env.Hasher, Store: r.env.Store, Admins: []string{brokertest.AdminPeer}, Clock: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range callers {
		tok, err := r.env.Issuer.Mint(devissuer.GitHubActionsClaims(c.repo, c.ref, "7", brokertest.Audience), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for _, tg := range revokeTargets {
			r.advance(time.Second)
			got, err := r.svc.IssueSession(context.Background(), broker.IssueRequest{Token: tok, Targets: []broker.Target{{Role: tg.role, Account: tg.account}}})
			if err != nil {
				t.Fatalf("%s %s: %v", c.label, tg.label, err)
			}
			r.fake.mu.Lock()
			last := r.fake.sessions[len(r.fake.sessions)-1]
			r.fake.mu.Unlock()
			r.sessions = append(r.sessions, issued{label: c.label + "/" + tg.label, sessionID: got[0].ID, session: last})
		}
		r.advance(time.Second)
		r.marks[c.label] = r.clock()
	}
	r.advance(time.Second)
	return r
}

// denied lists the sessions that the IAM policy now on their role
// denies, evaluated against what STS received when it issued them.
func (r *revokeRig) denied(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, s := range r.sessions {
		arn := s.session.form.Get("RoleArn")
		doc := r.fake.policy(accountOf(arn)+"/"+path.Base(arn), awssts.RevocationPolicyName)
		if doc != "" && iamDenies(t, doc, requestContext(s.session)) {
			out = append(out, s.label)
		}
	}
	return out
}

// requestContext is the IAM request context of a session: its tags and
// SourceIdentity as sent to AssumeRole (or AssumeRoleWithWebIdentity)
// and the time STS issued it. Condition keys are case-insensitive.
func requestContext(s stsSession) map[string]string {
	ctx := map[string]string{"aws:tokenissuetime": s.issued.UTC().Format(time.RFC3339Nano)}
	if si := s.form.Get("SourceIdentity"); si != "" {
		ctx["aws:sourceidentity"] = si
	}
	for i := 1; s.form.Has(fmt.Sprintf("Tags.member.%d.Key", i)); i++ {
		k := s.form.Get(fmt.Sprintf("Tags.member.%d.Key", i))
		ctx["aws:principaltag/"+strings.ToLower(k)] = s.form.Get(fmt.Sprintf("Tags.member.%d.Value", i))
	}
	return ctx
}

// iamDenies evaluates the Deny statements of an IAM policy the way IAM
// does for the three operators revocation uses: a statement applies
// when every condition holds; a condition on a key the request lacks
// does not hold.
func iamDenies(t *testing.T, doc string, ctx map[string]string) bool {
	t.Helper()
	var pol struct {
		Statement []struct {
			Effect    string
			Action    any
			Resource  any
			Condition map[string]map[string]any
		}
	}
	if err := json.Unmarshal([]byte(doc), &pol); err != nil {
		t.Fatalf("policy is not JSON: %v", err)
	}
	for _, st := range pol.Statement {
		if st.Effect != "Deny" || st.Action != "*" || st.Resource != "*" {
			t.Fatalf("unexpected statement %+v", st)
		}
		holds := true
		for op, conds := range st.Condition {
			for key, want := range conds {
				got, ok := ctx[strings.ToLower(key)]
				var values []string
				switch w := want.(type) {
				case string:
					values = []string{w}
				case []any:
					for _, v := range w {
						values = append(values, v.(string))
					}
				}
				holds = holds && ok && slices.ContainsFunc(values, func(v string) bool { return evalOp(t, op, got, v) })
			}
		}
		if holds {
			return true
		}
	}
	return false
}

func evalOp(t *testing.T, op, got, want string) bool {
	switch op {
	case "StringEquals":
		return got == want
	case "StringLike":
		ok, err := path.Match(strings.NewReplacer("[", "\\[", "\\", "\\\\").Replace(want), got)
		return err == nil && ok
	case "DateLessThan":
		g, err1 := time.Parse(time.RFC3339Nano, got)
		w, err2 := time.Parse(time.RFC3339Nano, want)
		if err1 != nil || err2 != nil {
			t.Fatalf("DateLessThan %q < %q: not dates", got, want)
		}
		return g.Before(w)
	default:
		t.Fatalf("condition operator %s not evaluated by this test", op)
		return false
	}
}

var sidRE = regexp.MustCompile(`Revocation[0-9a-f]{32}`)

func labels(callerLabels string, targets ...string) []string {
	var out []string
	for _, c := range strings.Split(callerLabels, ",") {
		for _, tg := range targets {
			out = append(out, c+"/"+tg)
		}
	}
	return out
}

var allTargets = []string{"deploy@dev", "deploy@prod", "readonly@dev"}

// TestRevocationEnforcedAsReported revokes with every kind of selector
// and checks, with the policy IAM received evaluated against the tags
// STS received, that the report tells the truth role by role: where it
// says "enforced in IAM" the policy denies exactly the sessions the
// revocation selects (plus, as reported, those whose tag values are
// indistinguishable after sanitising), and where it says "issuance
// blocked only" nothing is denied.
func TestRevocationEnforcedAsReported(t *testing.T) {
	type roleWant struct {
		enforcement broker.Enforcement
		reason      string // a substring of the report's reason
	}
	iam := roleWant{broker.EnforcedInIAM, ""}
	tests := []struct {
		name   string
		req    func(r *revokeRig) broker.RevokeRequest
		roles  map[string]roleWant // by target label
		denied []string
	}{
		{"subject", func(*revokeRig) broker.RevokeRequest { return broker.RevokeRequest{Subject: subjectOf("A")} },
			map[string]roleWant{"deploy@dev": iam, "deploy@prod": iam, "readonly@dev": iam}, labels("A", allTargets...)},
		{"subject/unicode", func(*revokeRig) broker.RevokeRequest { return broker.RevokeRequest{Subject: subjectOf("B")} },
			map[string]roleWant{"deploy@dev": {broker.EnforcedInIAM, "sanitised"}, "deploy@prod": {broker.EnforcedInIAM, "sanitised"}, "readonly@dev": {broker.EnforcedInIAM, "sanitised"}},
			labels("B,F", allTargets...)},
		{"subject/over-long", func(*revokeRig) broker.RevokeRequest { return broker.RevokeRequest{Subject: subjectOf("C")} },
			map[string]roleWant{"deploy@dev": {broker.EnforcedInIAM, "256 bytes"}, "deploy@prod": {broker.EnforcedInIAM, "256 bytes"}, "readonly@dev": {broker.EnforcedInIAM, "256 bytes"}},
			labels("C", allTargets...)},
		{"issuer", func(r *revokeRig) broker.RevokeRequest { return broker.RevokeRequest{Issuer: r.env.Issuer.URL()} },
			map[string]roleWant{"deploy@dev": iam, "deploy@prod": iam, "readonly@dev": iam}, labels("A,B,C,D,E,F", allTargets...)},
		{"issuer/another", func(*revokeRig) broker.RevokeRequest {
			return broker.RevokeRequest{Issuer: "https://gitlab.example.com"}
		},
			map[string]roleWant{"deploy@dev": iam, "deploy@prod": iam, "readonly@dev": iam}, nil},
		{"role", func(*revokeRig) broker.RevokeRequest { return broker.RevokeRequest{Role: "deploy"} },
			map[string]roleWant{"deploy@dev": iam, "deploy@prod": iam}, labels("A,B,C,D,E,F", "deploy@dev", "deploy@prod")},
		{"account", func(*revokeRig) broker.RevokeRequest { return broker.RevokeRequest{AccountID: "222222222222"} },
			map[string]roleWant{"deploy@prod": iam}, labels("A,B,C,D,E,F", "deploy@prod")},
		{"session", func(r *revokeRig) broker.RevokeRequest {
			return broker.RevokeRequest{SessionID: r.sessions[0].sessionID}
		},
			map[string]roleWant{"deploy@dev": iam, "deploy@prod": iam, "readonly@dev": iam}, []string{"A/deploy@dev"}},
		{"claims/repository", func(*revokeRig) broker.RevokeRequest {
			return broker.RevokeRequest{Claims: map[string]string{"repository": "acme/app"}}
		}, map[string]roleWant{"deploy@dev": iam, "deploy@prod": iam, "readonly@dev": {broker.IssuanceBlockedOnly, `the role sets session tag "repository" itself`}},
			labels("A,E", "deploy@dev", "deploy@prod")},
		{"claims/repository-unicode", func(*revokeRig) broker.RevokeRequest {
			return broker.RevokeRequest{Claims: map[string]string{"repository": "acme/ünïcödé"}}
		}, map[string]roleWant{"deploy@dev": {broker.EnforcedInIAM, "sanitised"}, "deploy@prod": {broker.EnforcedInIAM, "sanitised"}, "readonly@dev": {broker.IssuanceBlockedOnly, "itself"}},
			labels("B,F", "deploy@dev", "deploy@prod")},
		{"claims/ref", func(*revokeRig) broker.RevokeRequest {
			return broker.RevokeRequest{Claims: map[string]string{"ref": "refs/heads/dev"}}
		}, map[string]roleWant{"deploy@dev": iam, "deploy@prod": iam, "readonly@dev": iam}, labels("E", allTargets...)},
		{"claims/sub", func(*revokeRig) broker.RevokeRequest {
			return broker.RevokeRequest{Claims: map[string]string{"sub": subjectOf("D")}}
		}, map[string]roleWant{"deploy@dev": iam, "deploy@prod": iam, "readonly@dev": iam}, labels("D", allTargets...)},
		{"claims/not-a-session-tag", func(*revokeRig) broker.RevokeRequest {
			return broker.RevokeRequest{Claims: map[string]string{"workflow": "deploy"}}
		}, map[string]roleWant{
			"deploy@dev":   {broker.IssuanceBlockedOnly, "claims.workflow: not carried by sessions"},
			"deploy@prod":  {broker.IssuanceBlockedOnly, "claims.workflow: not carried by sessions"},
			"readonly@dev": {broker.IssuanceBlockedOnly, "claims.workflow: not carried by sessions"},
		}, nil},
		{"issued-before", func(r *revokeRig) broker.RevokeRequest {
			return broker.RevokeRequest{Role: "deploy", IssuedBefore: r.marks["C"]}
		}, map[string]roleWant{"deploy@dev": iam, "deploy@prod": iam}, labels("A,B,C", "deploy@dev", "deploy@prod")},
		{"combined", func(*revokeRig) broker.RevokeRequest {
			return broker.RevokeRequest{Subject: subjectOf("A"), AccountID: "111111111111", Claims: map[string]string{"ref": "refs/heads/main"}}
		}, map[string]roleWant{"deploy@dev": iam, "readonly@dev": iam}, labels("A", "deploy@dev", "readonly@dev")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRevokeRig(t, awssts.ModeAssumeRole)
			req := tc.req(r)
			req.Reason = "leak"
			if tc.name == "session" && !strings.HasPrefix(r.sessions[0].label, "A/deploy@dev") {
				t.Fatal("first session is not A/deploy@dev")
			}
			// The dry run shows the same roles and the policies that
			// the real run then puts, and changes nothing.
			dryReq := req
			dryReq.DryRun = true
			dry, err := r.svc.RevokeSessions(context.Background(), brokertest.AdminPeer, dryReq)
			if err != nil {
				t.Fatal(err)
			}
			if d := r.denied(t); d != nil {
				t.Fatalf("the dry run denied %v", d)
			}
			res, err := r.svc.RevokeSessions(context.Background(), brokertest.AdminPeer, req)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]roleWant{}
			for i, rr := range res.Roles {
				label := rr.Role.Name + "@" + map[string]string{"111111111111": "dev", "222222222222": "prod"}[rr.Role.AccountID]
				want, ok := tc.roles[label]
				if ok && want.reason != "" && strings.Contains(rr.Reason, want.reason) {
					rr.Reason = want.reason
				} else {
					rr.Reason = strings.TrimSpace(rr.Reason) // shown in the diff
				}
				got[label] = roleWant{rr.Enforcement, rr.Reason}
				if rr.Enforcement == broker.EnforcedInIAM && rr.Policy == "" {
					t.Errorf("%s: enforced in IAM without a policy", label)
				}
				// The revocation ids differ; nothing else may.
				sameSid := func(doc string) string { return sidRE.ReplaceAllString(doc, "Revocation<id>") }
				if sameSid(dry.Roles[i].Policy) != sameSid(rr.Policy) || dry.Roles[i].Enforcement != rr.Enforcement {
					t.Errorf("%s: the dry run showed %v %s, the revocation did %v %s", label, dry.Roles[i].Enforcement, dry.Roles[i].Policy, rr.Enforcement, rr.Policy)
				}
			}
			if diff := cmp.Diff(got, tc.roles, cmp.AllowUnexported(roleWant{})); diff != "" {
				t.Errorf("per-role report (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(r.denied(t), tc.denied); diff != "" {
				t.Errorf("sessions the IAM policy denies (-got +want):\n%s", diff)
			}
			// Only roles reported enforced got a policy.
			enforced := 0
			for _, rr := range res.Roles {
				if rr.Enforcement == broker.EnforcedInIAM {
					enforced++
				}
			}
			if res.RolesUpdated != enforced {
				t.Errorf("RolesUpdated = %d, %d roles reported enforced", res.RolesUpdated, enforced)
			}
		})
	}
}

// TestRevocationWebIdentityMode: sessions from AssumeRoleWithWebIdentity
// carry the caller token's tags, not the broker's, so selectors on
// tags or sessions are issuance-only; role, account and time still
// reach IAM.
func TestRevocationWebIdentityMode(t *testing.T) {
	for _, tc := range []struct {
		name   string
		req    broker.RevokeRequest
		want   broker.Enforcement
		denied []string
	}{
		{"subject", broker.RevokeRequest{Subject: subjectOf("A")}, broker.IssuanceBlockedOnly, nil},
		{"role", broker.RevokeRequest{Role: "deploy", AccountID: "222222222222"}, broker.EnforcedInIAM, labels("A,B,C,D,E,F", "deploy@prod")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRevokeRig(t, awssts.ModeWebIdentity)
			tc.req.Reason = "leak"
			res, err := r.svc.RevokeSessions(context.Background(), brokertest.AdminPeer, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			for _, rr := range res.Roles {
				if rr.Enforcement != tc.want {
					t.Errorf("%s: %v (%s), want %v", rr.Role.ARN, rr.Enforcement, rr.Reason, tc.want)
				}
				if tc.want == broker.IssuanceBlockedOnly && !strings.Contains(rr.Reason, "web-identity") {
					t.Errorf("%s: reason %q does not name web-identity mode", rr.Role.ARN, rr.Reason)
				}
			}
			if diff := cmp.Diff(r.denied(t), tc.denied); diff != "" {
				t.Errorf("denied (-got +want):\n%s", diff)
			}
		})
	}
}

// TestRevocationsAccumulateAndPrune: a role's one policy holds every
// revocation in effect; once their sessions have all expired, the next
// revocation drops them.
func TestRevocationsAccumulateAndPrune(t *testing.T) {
	r := newRevokeRig(t, awssts.ModeAssumeRole)
	revoke := func(subject string) {
		t.Helper()
		if _, err := r.svc.RevokeSessions(context.Background(), brokertest.AdminPeer, broker.RevokeRequest{Subject: subject, Role: "deploy", AccountID: "111111111111", Reason: "leak"}); err != nil {
			t.Fatal(err)
		}
	}
	sids := func() []string {
		var doc struct{ Statement []struct{ Sid string } }
		_ = json.Unmarshal([]byte(r.fake.policy("111111111111/deploy", awssts.RevocationPolicyName)), &doc)
		var out []string
		for _, s := range doc.Statement {
			out = append(out, s.Sid[:len("Revocation")])
		}
		return out
	}
	revoke(subjectOf("A"))
	revoke(subjectOf("D"))
	got := []any{len(sids()), r.denied(t)}
	r.advance(broker.MaxSessionDuration + time.Minute) // every session issued before both has expired
	revoke(subjectOf("E"))
	got = append(got, len(sids()))
	if diff := cmp.Diff(got, []any{2, []string{"A/deploy@dev", "D/deploy@dev"}, 1}); diff != "" {
		t.Errorf("(statements, denied, statements after pruning) (-got +want):\n%s", diff)
	}
}
