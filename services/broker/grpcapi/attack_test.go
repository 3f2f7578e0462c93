package grpcapi_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// hardenedPolicy trusts the dev issuer in strict-audience, single-use
// mode and scopes the dev role with a template built from a claim, so
// hostile claims can be aimed at it.
const hardenedPolicy = `version: 1
issuers:
  - name: dev
    url: {{issuer}}
    audiences: [credmatrix]
    strict_audience: true
    single_use: true
    algorithms: [RS256]
accounts:
  - id: "111111111111"
    name: dev
    ou: /root/dev
    region: eu-west-1
roles:
  - name: deploy
    account: dev
    session_policy: |
      {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:PutObject",
        "Resource": "arn:aws:s3:::artifacts/{{claim.repository}}/*"}]}
rules:
  - name: acme-main
    issuer: dev
    roles: [deploy]
    accounts: [dev]
    claims:
      repository_owner: acme
      ref: refs/heads/main
`

func segment(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

// TestTokenAttacks sends every token attack through gRPC: each is
// refused with the right code, each refusal is audited (with an HMAC of
// the token, never the token), and none yields credentials.
func TestTokenAttacks(t *testing.T) {
	s := newStackWith(t, hardenedPolicy, peerID)
	stranger, err := devissuer.New()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stranger.Close() })

	claims := func(override map[string]any) map[string]any {
		c := devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "4242", brokertest.Audience)
		c["iss"] = s.Issuer.URL()
		c["exp"] = time.Now().Add(time.Hour).Unix()
		for k, v := range override {
			c[k] = v
		}
		return c
	}
	good := func() string { return s.TokenWith(t, time.Hour, nil) }
	replayed := good()
	if _, err := s.client.IssueSession(context.Background(), &brokerv1.IssueSessionRequest{Token: replayed, Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}}); err != nil {
		t.Fatalf("first use of a single-use token: %v", err)
	}
	header := segment(map[string]any{"alg": "RS256", "typ": "JWT", "kid": s.Issuer.KeyID()})

	const verifyFailed = "token verification failed"
	tests := []struct {
		name   string
		token  string
		code   codes.Code
		msg    string
		reason string // audited reason
	}{
		{"alg-none", brokertest.AlgNoneToken(claims(nil)), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"hs256-with-public-key", brokertest.PublicKeyHS256Token(s.Issuer.PublicKey(), s.Issuer.KeyID(), claims(nil)), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"expired", s.TokenWith(t, -time.Hour, nil), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"nbf-in-future", s.TokenWith(t, 2*time.Hour, map[string]any{"nbf": time.Now().Add(time.Hour).Unix()}), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"wrong-iss", s.TokenWith(t, time.Hour, map[string]any{"iss": "https://token.actions.githubusercontent.com"}), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"wrong-aud", s.TokenWith(t, time.Hour, map[string]any{"aud": "sts.amazonaws.com"}), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"several-audiences-strict", s.TokenWith(t, time.Hour, map[string]any{"aud": []string{"credmatrix", "other"}}), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"unknown-kid", func() string {
			tok, err := stranger.Mint(claims(nil), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}(), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"payload-modified", brokertest.TamperPayload(good(), claims(map[string]any{"repository_owner": "acme", "sub": "admin"})), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"signature-modified", brokertest.TamperSignature(good()), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"signature-stripped", good()[:strings.LastIndexByte(good(), '.')+1], codes.Unauthenticated, verifyFailed, verifyFailed},
		{"malformed-base64", header + ".%%%not-base64%%%." + "c2ln", codes.Unauthenticated, verifyFailed, verifyFailed},
		{"malformed-json", header + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss": "x"`)) + ".c2ln", codes.Unauthenticated, verifyFailed, verifyFailed},
		{"not-a-jws", "not-a-token", codes.Unauthenticated, verifyFailed, verifyFailed},
		{"jwe-shaped", "a.b.c.d.e", codes.Unauthenticated, verifyFailed, verifyFailed},
		{"replayed-jti", replayed, codes.Unauthenticated, verifyFailed, "token verification failed: replayed single-use token"},
		{"missing-jti-single-use", s.TokenWith(t, time.Hour, map[string]any{"jti": nil}), codes.Unauthenticated, verifyFailed, verifyFailed},
		{"oversized", s.TokenWith(t, time.Hour, map[string]any{"pad": strings.Repeat("a", 16<<10)}), codes.InvalidArgument, "token: exceeds 16384 bytes", "token: exceeds 16384 bytes"},
	}
	for _, tc := range tests {
		t.Run("deny/"+tc.name, func(t *testing.T) {
			s.Auditor.Reset()
			resp, err := s.client.IssueSession(context.Background(), &brokerv1.IssueSessionRequest{Token: tc.token, Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}})
			if diff := cmp.Diff([]any{status.Code(err), status.Convert(err).Message(), len(resp.GetSessions())}, []any{tc.code, tc.msg, 0}); diff != "" {
				t.Errorf("(code, message, sessions) (-got +want):\n%s", diff)
			}
			events := s.Auditor.Events()
			if len(events) != 1 {
				t.Fatalf("%d audit events, want 1", len(events))
			}
			ev := events[0]
			var refs []string
			for _, r := range ev.GetSecretRefs() {
				refs = append(refs, r.GetName())
			}
			got := []any{ev.GetDecision(), ev.GetReason(), refs, ev.GetActor().GetPeer(), ev.GetSession().GetAccessKeyId()}
			want := []any{auditv1.Decision_DECISION_DENY, tc.reason, []string{"oidc_token"}, peerID, ""}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("audit event (decision, reason, secret refs, peer, access key) (-got +want):\n%s", diff)
			}
			if strings.Contains(ev.String(), tc.token[:min(len(tc.token), 40)]) {
				t.Error("the audit event holds the token")
			}
		})
	}
}

// TestHostileClaims aims claim values at the session policy, the session
// name and the tags: the session is issued (the rule only binds the
// owner and ref), with every hostile value escaped or sanitised.
func TestHostileClaims(t *testing.T) {
	s := newStackWith(t, hardenedPolicy, peerID)
	tests := []struct {
		name, repository, runID string
		wantName, wantRepoTag   string
		wantResource            string
	}{
		{"quotes", `acme/x","Action":"*","Resource":"*`, "1", `acme-x-,-Action-----,-Resource----@1`, `acme/x---Action-:-----Resource-:--`,
			`arn:aws:s3:::artifacts/acme/x","Action":"${*}","Resource":"${*}/*`},
		{"newlines", "acme/a\n}]}\n{", "2\n3", "acme-a------@2-3", "acme/a------", "arn:aws:s3:::artifacts/acme/a\n}]}\n{/*"},
		{"wildcards", "acme/*", "?", "acme--@-", "acme/-", "arn:aws:s3:::artifacts/acme/${*}/*"},
		{"iam-variable", "acme/${aws:username}", "1", "acme---aws-username-@1", "acme/--aws:username-", "arn:aws:s3:::artifacts/acme/${$}{aws:username}/*"},
		{"unicode", "acme/dépl✓y\u202e", "1", "acme-d-pl-y-@1", "acme/d-pl-y-", "arn:aws:s3:::artifacts/acme/dépl✓y\u202e/*"},
	}
	for _, tc := range tests {
		t.Run("allow/"+tc.name, func(t *testing.T) {
			tok := s.TokenWith(t, time.Hour, map[string]any{"repository": tc.repository, "run_id": tc.runID})
			resp, err := s.client.IssueSession(context.Background(), &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}})
			if err != nil {
				t.Fatal(err)
			}
			creds := resp.GetSessions()[0].GetCredentials()
			info, err := s.client.GetSession(context.Background(), &brokerv1.GetSessionRequest{AccessKeyId: creds.GetAccessKeyId(), SessionToken: creds.GetSessionToken()})
			if err != nil {
				t.Fatal(err)
			}
			var doc struct {
				Statement []struct{ Effect, Action, Resource string }
			}
			if err := json.Unmarshal([]byte(info.GetSessionPolicy()), &doc); err != nil {
				t.Fatalf("session policy is not JSON: %v", err)
			}
			got := []any{resp.GetSessions()[0].GetSessionName(), info.GetSessionTags()["repository"], len(doc.Statement), doc.Statement[0].Action, doc.Statement[0].Resource}
			want := []any{tc.wantName, tc.wantRepoTag, 1, "s3:PutObject", tc.wantResource}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("(session name, repository tag, statements, action, resource) (-got +want):\n%s", diff)
			}
		})
	}
}
