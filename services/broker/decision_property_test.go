package broker_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/credmatrix/credmatrix/services/broker/grpcapi"
	"github.com/credmatrix/credmatrix/services/broker/localsts"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// propertyPolicy exercises everything a decision depends on: residency,
// OU and rule caps, a guardrail, lists and globs, a CEL condition, a
// template needing a claim tokens may lack.
const propertyPolicy = `version: 1
issuers:
  - name: dev
    url: {{issuer}}
    audiences: [credmatrix]
zones:
  - name: eu
    regions: [eu-west-1, eu-central-1]
ous:
  - path: /root/prod
    max_duration: 30m
accounts:
  - {id: "111111111111", name: dev, ou: /root/dev, region: eu-west-1, residency: eu}
  - {id: "222222222222", name: prod, ou: /root/prod, region: us-east-1}
  - {id: "333333333333", name: sandbox, ou: /root/dev, region: us-west-2}
roles:
  - name: deploy
    account: dev
    max_duration: 2h
    session_policy: |
      {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::{{claim.environment}}-{{account_id}}/{{session_id}}/*"}]}
  - name: deploy
    account: prod
  - name: readonly
    account: dev
  - name: readonly
    account: sandbox
    max_duration: 4h
rules:
  - name: no-prod-from-pull-requests
    effect: deny
    ous: [/root/prod]
    claims: {event_name: pull_request}
  - name: main-deploys
    issuer: dev
    roles: [deploy, readonly]
    accounts: [dev, prod, sandbox]
    claims:
      repository: [acme/app, acme/ünï, acme/revoked]
      ref: refs/heads/main
  - name: acme-reads-sandbox
    issuer: dev
    roles: [readonly]
    accounts: [sandbox]
    max_duration: 45m
    condition: claims.repository_owner == "acme"
`

// cappedProvider is the local provider capped at one hour, as role
// chaining caps sessions.
type cappedProvider struct{ *localsts.Provider }

func (cappedProvider) MaxDuration() time.Duration { return time.Hour }

func pick[T any](r *rand.Rand, xs ...T) T { return xs[r.IntN(len(xs))] }

// TestOneDecisionEverywhere is a property test: for random claims and
// targets, IssueSession, ExplainDecision, the offline decision of
// `credmatrix policy test` (policy.Decide on the token's unverified
// claims, as the CLI runs it) and the decision the denial hint's command
// line reproduces all agree on allowed, rule, reason, granted duration,
// session policy and invalid requests, with the broker's state (a
// revocation, a freeze) and a provider cap in play. Set
// CREDMATRIX_PROPERTY_SEED to replay a run.
func TestOneDecisionEverywhere(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CREDMATRIX_PROPERTY_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (CREDMATRIX_PROPERTY_SEED=%d to replay)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	e := brokertest.NewEnv(t, propertyPolicy)
	now := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC).Add(time.Duration(rng.IntN(86400)) * time.Second)
	provider := cappedProvider{e.Provider}
	svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: provider, Auditor: e.Auditor, Hasher: e.Hasher,
		Store: e.Store, Admins: []string{brokertest.AdminPeer}, Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := svc.RevokeSessions(ctx, brokertest.AdminPeer, broker.RevokeRequest{Claims: map[string]string{"repository": "acme/revoked"}, Reason: "property"}); err != nil {
		t.Fatal(err)
	}
	scopeDowns := []string{"", "", "", `{"Statement":{"Effect":"Deny","Action":"s3:DeleteObject","Resource":"*"}}`,
		`{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}`}
	const iterations = 200
	seen := map[string]int{}
	check := func(i int, repo, ref, event, env string, target broker.Target) {
		t.Helper()
		claims := devissuer.GitHubActionsClaims(repo, ref, strconv.Itoa(i), brokertest.Audience)
		claims["event_name"] = event
		if env != "" {
			claims["environment"] = env
		}
		tok, err := e.Issuer.Mint(claims, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		// What `credmatrix policy test` runs: the token's claims,
		// unverified, through the one decision, without the broker's
		// state.
		offline := e.Policy.Decide(policy.Request{
			Identity: offlineIdentity(t, tok), Target: policy.Target{Role: target.Role, Account: target.Account, Region: target.Region, Time: now},
			Duration: target.Duration, ScopeDown: target.Policy, ProviderMax: time.Hour,
		})
		ex, exErr := svc.ExplainDecision(ctx, broker.ExplainRequest{Token: tok, Target: target, Peer: brokertest.AdminPeer})
		sessions, issueErr := svc.IssueSession(ctx, broker.IssueRequest{Token: tok, Targets: []broker.Target{target}})

		label := strings.Join([]string{repo, target.Role, target.Account, target.Region, target.Duration.String(), strconv.Itoa(len(target.Policy))}, " ")
		switch {
		case offline.Invalid != nil:
			seen["invalid"]++
			want := offline.Invalid.Field + ": " + offline.Invalid.Msg
			if got := errMessage(issueErr); domainerr.CodeOf(issueErr) != domainerr.Invalid || got != "targets[0]."+want {
				t.Fatalf("%s: offline invalid %q; IssueSession %v", label, want, issueErr)
			}
			if got := errMessage(exErr); domainerr.CodeOf(exErr) != domainerr.Invalid || got != "target."+want {
				t.Fatalf("%s: offline invalid %q; ExplainDecision %v", label, want, exErr)
			}
			return
		case exErr != nil:
			t.Fatalf("%s: ExplainDecision: %v", label, exErr)
		}
		got := ex.Decision
		if issueErr == nil {
			seen["allowed"]++
			s := sessions[0]
			if !got.Allowed || got.Rule != s.Rule || ex.Duration != s.Duration {
				t.Fatalf("%s: issued by %s for %s; explained %v by %s for %s", label, s.Rule, s.Duration, got.Allowed, got.Rule, ex.Duration)
			}
			info, err := svc.GetSession(ctx, s.Credentials.AccessKeyID, s.Credentials.SessionToken)
			if err != nil {
				t.Fatal(err)
			}
			wantPolicy := strings.ReplaceAll(offline.SessionPolicy, policy.PlaceholderSessionID, s.ID)
			if diff := cmp.Diff([]any{offline.Allowed, offline.Rule, offline.Duration, info.SessionPolicy}, []any{true, s.Rule, s.Duration, wantPolicy}); diff != "" {
				t.Fatalf("%s: offline decision differs from the issuance (-offline +issued):\n%s", label, diff)
			}
			return
		}
		var be *domainerr.Error
		if !errors.As(issueErr, &be) || be.Code != domainerr.PermissionDenied {
			t.Fatalf("%s: IssueSession: %v", label, issueErr)
		}
		dn, ok := be.Detail.(*broker.Denial)
		if !ok {
			t.Fatalf("%s: IssueSession denied without a denial detail: %v", label, issueErr)
		}
		if got.Allowed || got.Rule != dn.Rule || got.Reason != dn.Reason {
			t.Fatalf("%s: denied by %s (%s); explained %v by %s (%s)", label, dn.Rule, dn.Reason, got.Allowed, got.Rule, got.Reason)
		}
		hint := grpcapi.Hint(dn)
		if dn.Rule == broker.RuleAccountFrozen || dn.Rule == broker.RuleRevoked {
			// The broker's state: offline cannot know it, and the hint
			// says whom to ask instead.
			seen["state:"+dn.Rule]++
			if !strings.Contains(hint, "ask them") {
				t.Fatalf("%s: hint for %s: %q", label, dn.Rule, hint)
			}
			return
		}
		seen["denied:"+dn.Rule]++
		if offline.Allowed || offline.Rule != dn.Rule || offline.Reason != dn.Reason {
			t.Fatalf("%s: denied by %s (%s); offline %v by %s (%s)", label, dn.Rule, dn.Reason, offline.Allowed, offline.Rule, offline.Reason)
		}
		// The hint's command line reproduces the decision.
		replayed := e.Policy.Decide(hintRequest(t, hint, offlineIdentity(t, tok), target.Policy))
		if replayed.Allowed || replayed.Rule != dn.Rule || replayed.Reason != dn.Reason {
			t.Fatalf("%s: denied by %s (%s); the hint %q decides %v by %s (%s)", label, dn.Rule, dn.Reason, hint, replayed.Allowed, replayed.Rule, replayed.Reason)
		}
	}
	deny := `{"Statement":{"Effect":"Deny","Action":"s3:DeleteObject","Resource":"*"}}`
	allow := `{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}`
	// First one case of each outcome, so that every one is reached
	// whatever the seed; then random ones.
	fixed := []struct {
		repo, ref, event, env string
		target                broker.Target
	}{
		{"acme/app", "refs/heads/main", "push", "prod", broker.Target{Role: "deploy", Account: "dev", Duration: 3 * time.Hour, Policy: deny}},
		{"acme/app", "refs/heads/main", "push", "prod", broker.Target{Role: "deploy", Account: "dev", Policy: allow}},
		{"acme/app", "refs/heads/main", "push", "prod", broker.Target{Role: "deploy", Account: "dev", Region: "us-east-1"}},
		{"evil/app", "refs/heads/main", "push", "prod", broker.Target{Role: "deploy", Account: "dev"}},
		{"acme/app", "refs/heads/main", "push", "", broker.Target{Role: "deploy", Account: "dev"}},
		{"acme/app", "refs/heads/main", "pull_request", "prod", broker.Target{Role: "deploy", Account: "prod"}},
		{"acme/revoked", "refs/heads/main", "push", "prod", broker.Target{Role: "deploy", Account: "dev"}},
		{"acme/other", "refs/heads/dev", "push", "", broker.Target{Role: "readonly", Account: "sandbox", Duration: 3 * time.Hour}},
	}
	for i, c := range fixed {
		check(-1-i, c.repo, c.ref, c.event, c.env, c.target)
	}
	if _, err := svc.FreezeAccount(ctx, brokertest.AdminPeer, broker.FreezeRequest{Account: "sandbox", Reason: "property"}); err != nil {
		t.Fatal(err)
	}
	check(-100, "acme/app", "refs/heads/main", "push", "prod", broker.Target{Role: "readonly", Account: "sandbox"})
	if _, err := svc.UnfreezeAccount(ctx, brokertest.AdminPeer, broker.FreezeRequest{Account: "sandbox", Reason: "property"}); err != nil {
		t.Fatal(err)
	}
	for i := range iterations {
		if i == iterations/2 {
			if _, err := svc.FreezeAccount(ctx, brokertest.AdminPeer, broker.FreezeRequest{Account: "sandbox", Reason: "property"}); err != nil {
				t.Fatal(err)
			}
		}
		// Weighted towards tokens the policy lets in, so that every
		// step of the decision is reached often.
		env := pick(rng, "", "prod", "prod", "staging")
		check(i, pick(rng, "acme/app", "acme/app", "acme/app", "acme/ünï", "acme/ünï", "acme/revoked", "acme/other", "evil/app"),
			pick(rng, "refs/heads/main", "refs/heads/main", "refs/heads/main", "refs/heads/dev"),
			pick(rng, "push", "push", "push", "pull_request"), env,
			broker.Target{
				Role:     pick(rng, "deploy", "deploy", "deploy", "readonly", "readonly", "admin"),
				Account:  pick(rng, "dev", "dev", "dev", "prod", "prod", "sandbox", "333333333333", "nope"),
				Region:   pick(rng, "", "", "", "eu-west-1", "eu-central-1", "us-east-1"),
				Duration: pick(rng, time.Duration(0), 15*time.Minute, 45*time.Minute, 3*time.Hour),
				Policy:   pick(rng, scopeDowns...),
			})
	}
	t.Logf("outcomes: %v", seen)
	for _, must := range []string{"allowed", "invalid", "denied:residency", "denied:default-deny", "denied:session-policy", "denied:no-prod-from-pull-requests", "state:revoked", "state:account-frozen"} {
		if seen[must] == 0 {
			t.Errorf("no %s case (seed %d): the property was not exercised", must, seed)
		}
	}
}

func errMessage(err error) string {
	var be *domainerr.Error
	if errors.As(err, &be) {
		return be.Message
	}
	return ""
}

// offlineIdentity reads a token's claims without verifying it, as
// `credmatrix policy test --token-env` does.
func offlineIdentity(t *testing.T, tok string) policy.Identity {
	t.Helper()
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var raw map[string]any
	if err := dec.Decode(&raw); err != nil {
		t.Fatal(err)
	}
	c := &oidc.Claims{Raw: raw}
	c.Issuer, _ = c.String("iss")
	c.Subject, _ = c.String("sub")
	return policy.Identity{Issuer: c.Issuer, Subject: c.Subject, Claim: c.String, Raw: c.Raw}
}

// hintRequest reads the flags of a hint's command line into the request
// `credmatrix policy test` would make.
func hintRequest(t *testing.T, hint string, id policy.Identity, scopeDown string) policy.Request {
	t.Helper()
	args := strings.Fields(hint)
	req := policy.Request{Identity: id, ProviderMax: time.Hour}
	for i := 3; i+1 < len(args); i += 2 {
		v := strings.Trim(args[i+1], "'")
		switch args[i] {
		case "--role":
			req.Target.Role = v
		case "--account":
			req.Target.Account = v
		case "--region":
			req.Target.Region = v
		case "--duration":
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatal(err)
			}
			req.Duration = d
		case "--time":
			at, err := time.Parse(time.RFC3339, v)
			if err != nil {
				t.Fatal(err)
			}
			req.Target.Time = at
		case "--scope-down":
			req.ScopeDown = scopeDown
		case "--token-env", "--policy", "--policy-sha256":
		default:
			t.Fatalf("hint %q: unknown flag %s", hint, args[i])
		}
	}
	return req
}
