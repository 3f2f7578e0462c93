package broker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/localsts"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/trace"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

func deployDev() []broker.Target { return []broker.Target{{Role: "deploy", Account: "dev"}} }

func TestIssueSessionRecordsEvent(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	tok := e.Token(t, "acme/app", "refs/heads/main", time.Hour)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
	})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	sessions, err := e.Service.IssueSession(ctx, broker.IssueRequest{Token: tok, Targets: deployDev(), Reason: "release", Peer: "spiffe://credmatrix.dev/ci"})
	if err != nil {
		t.Fatal(err)
	}
	events := e.Auditor.Events()
	if len(events) != 1 || len(sessions) != 1 {
		t.Fatalf("got %d events and %d sessions, want 1 and 1", len(events), len(sessions))
	}
	ev, ss := events[0], sessions[0]
	d := ev.GetSession()
	got := map[string]any{
		"kind":            ev.GetKind().String(),
		"decision":        ev.GetDecision().String(),
		"trace_id":        ev.GetTraceId(),
		"span_id":         ev.GetSpanId(),
		"issuer":          ev.GetActor().GetIssuer(),
		"subject":         ev.GetActor().GetSubject(),
		"claims":          ev.GetActor().GetClaims(),
		"account":         d.GetAccountId() + " " + d.GetAccountName() + " " + d.GetOuPath() + " " + d.GetResidency(),
		"role":            d.GetRoleArn(),
		"region":          d.GetRegion(),
		"session_name":    d.GetSessionName(),
		"source_identity": d.GetSourceIdentity() == "cm-"+ss.ID,
		"session_id":      d.GetSessionId() == ss.ID,
		"access_key_id":   d.GetAccessKeyId() == ss.Credentials.AccessKeyID,
		"expiration":      d.GetExpiration().AsTime().Equal(ss.Credentials.Expiration),
		"duration":        d.GetDuration().AsDuration(),
		"provider":        d.GetProvider(),
		"secret_refs":     []string{ev.GetSecretRefs()[0].GetName(), ev.GetSecretRefs()[1].GetName()},
		"oidc_token_ref":  cmp.Equal(ev.GetSecretRefs()[0].GetHmacSha256(), e.Hasher.Ref("oidc_token", []byte(tok)).GetHmacSha256()),
		"session_ref":     cmp.Equal(ev.GetSecretRefs()[1].GetHmacSha256(), e.Hasher.Ref("session_token", []byte(ss.Credentials.SessionToken)).GetHmacSha256()),
		"event_id":        ss.AuditEventID == ev.GetId() && ss.AuditSequence == ev.GetSequence(),
	}
	want := map[string]any{
		"kind":     "KIND_SESSION_ISSUE",
		"decision": "DECISION_ALLOW",
		"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
		"span_id":  "00f067aa0ba902b7",
		"issuer":   e.Issuer.URL(),
		"subject":  "repo:acme/app:ref:refs/heads/main",
		"claims": map[string]string{
			"repository": "acme/app", "ref": "refs/heads/main", "run_id": "4242", "workflow": "deploy", "event_name": "push",
			"sha":              ev.GetActor().GetClaims()["sha"],
			"job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
		},
		"account":         "111111111111 dev /root/dev eu",
		"role":            "arn:aws:iam::111111111111:role/deploy",
		"region":          "eu-west-1",
		"session_name":    "acme-app@4242",
		"source_identity": true,
		"session_id":      true,
		"access_key_id":   true,
		"expiration":      true,
		"duration":        time.Hour,
		"provider":        "local",
		"secret_refs":     []string{"oidc_token", "session_token"},
		"oidc_token_ref":  true,
		"session_ref":     true,
		"event_id":        true,
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("event (-got +want):\n%s", diff)
	}
	if len(ev.GetActor().GetClaims()["sha"]) != 40 {
		t.Errorf("sha claim = %q", ev.GetActor().GetClaims()["sha"])
	}
}

// failingProvider is a Provider whose Issue returns err.
type failingProvider struct{ err error }

func (failingProvider) Name() string { return "failing" }
func (p failingProvider) Issue(context.Context, broker.SessionSpec) (broker.Credentials, error) {
	return broker.Credentials{}, p.err
}

func TestIssueSessionProviderFails(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want domainerr.Code
	}{
		{"unavailable/throttled", errors.Join(broker.ErrProviderUnavailable, errors.New("Throttling: Rate exceeded")), domainerr.Unavailable},
		{"internal/upstream-invalid", errors.New("ValidationError: 1 validation error detected"), domainerr.Internal},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := brokertest.NewEnv(t, "")
			svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: failingProvider{tc.err}, Auditor: e.Auditor, Hasher: e.Hasher, Store: e.Store})
			if err != nil {
				t.Fatal(err)
			}
			sessions, err := svc.IssueSession(context.Background(), broker.IssueRequest{Token: e.Token(t, "acme/app", "refs/heads/main", time.Hour), Targets: deployDev()})
			var be *domainerr.Error
			if !errors.As(err, &be) {
				t.Fatalf("IssueSession error = %v, want *domainerr.Error", err)
			}
			events := e.Auditor.Events()
			got := []any{domainerr.CodeOf(err), len(sessions), len(events), events[0].GetDecision(), strings.Contains(be.Message, "Throttling") || strings.Contains(be.Message, "Validation")}
			if diff := cmp.Diff(got, []any{tc.want, 0, 1, auditv1.Decision_DECISION_ERROR, false}); diff != "" {
				t.Errorf("(code, sessions, events, decision, upstream text in message) (-got +want):\n%s", diff)
			}
		})
	}
}

func TestSetPolicy(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	tok := e.Token(t, "acme/app", "refs/heads/dev", time.Hour)
	if _, err := e.Service.IssueSession(context.Background(), broker.IssueRequest{Token: tok, Targets: deployDev()}); domainerr.CodeOf(err) != domainerr.PermissionDenied {
		t.Fatalf("before SetPolicy: %v, want PermissionDenied", err)
	}
	doc := strings.ReplaceAll(brokertest.DefaultPolicy, "ref: refs/heads/main", "ref: refs/heads/dev")
	doc = strings.ReplaceAll(doc, brokertest.IssuerPlaceholder, e.Issuer.URL())
	p, err := policy.Parse("new.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	e.Service.SetPolicy(p)
	e.Service.SetPolicy(nil) // ignored
	if e.Service.Policy() != p {
		t.Fatal("Policy() is not the policy set")
	}
	if _, err := e.Service.IssueSession(context.Background(), broker.IssueRequest{Token: tok, Targets: deployDev()}); err != nil {
		t.Fatalf("after SetPolicy: %v", err)
	}
}

func TestNewRequiresDependencies(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	full := broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: e.Provider, Auditor: e.Auditor, Hasher: e.Hasher, Store: e.Store}
	for name, edit := range map[string]func(*broker.Config){
		"policy":   func(c *broker.Config) { c.Policy = nil },
		"verifier": func(c *broker.Config) { c.Verifier = nil },
		"provider": func(c *broker.Config) { c.Provider = nil },
		"auditor":  func(c *broker.Config) { c.Auditor = nil },
		"hasher":   func(c *broker.Config) { c.Hasher = nil },
		"store":    func(c *broker.Config) { c.Store = nil },
	} {
		cfg := full
		edit(&cfg)
		if _, err := broker.New(cfg); err == nil {
			t.Errorf("New without %s succeeded", name)
		}
	}
}

func TestIssueSessionCancelled(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := e.Service.IssueSession(ctx, broker.IssueRequest{Token: e.Token(t, "acme/app", "refs/heads/main", time.Hour), Targets: deployDev()})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("IssueSession error = %v, want context.Canceled", err)
	}
}

// revokingProvider is the local provider plus a SessionRevoker that
// records the roles it was asked to put revocations on, failing when err
// is set.
type revokingProvider struct {
	*localsts.Provider
	mu    sync.Mutex
	roles []string
	err   error
}

// asked returns the roles asked for, sorted (roles are written in
// parallel).
func (p *revokingProvider) asked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(slices.Values(p.roles))
}

func (p *revokingProvider) RevocationSupport() broker.RevocationSupport {
	return broker.RevocationSupport{Tags: true, SourceIdentity: true}
}

func (p *revokingProvider) PutRevocations(_ context.Context, role broker.RoleRef, matches []broker.SessionMatch, dryRun bool) (broker.RevocationPolicy, error) {
	if !dryRun {
		p.mu.Lock()
		p.roles = append(p.roles, role.ARN)
		p.mu.Unlock()
	}
	if p.err != nil {
		return broker.RevocationPolicy{}, p.err
	}
	return broker.RevocationPolicy{Document: fmt.Sprintf("%d matches", len(matches))}, nil
}

func TestRevokeSessionsReachesTheProvider(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		code    domainerr.Code
		updated int
		asked   []string
	}{
		{"ok", nil, "", 2, []string{"arn:aws:iam::111111111111:role/readonly", "arn:aws:iam::222222222222:role/readonly"}},
		{"iam-fails", errors.Join(broker.ErrProviderUnavailable, errors.New("Throttling: Rate exceeded")), domainerr.Unavailable, 0, []string{"arn:aws:iam::111111111111:role/readonly", "arn:aws:iam::222222222222:role/readonly"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := brokertest.NewEnv(t, "")
			p := &revokingProvider{Provider: e.Provider, err: tc.err}
			svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: p, Auditor: e.Auditor,
				Hasher: e.Hasher, Store: e.Store, Admins: []string{brokertest.AdminPeer}})
			if err != nil {
				t.Fatal(err)
			}
			res, err := svc.RevokeSessions(context.Background(), brokertest.AdminPeer, broker.RevokeRequest{Role: "readonly", Reason: "leak"})
			var msg string
			var be *domainerr.Error
			if errors.As(err, &be) {
				msg = be.Message
			}
			got := []any{domainerr.CodeOf(err), res.RolesUpdated, p.asked(), strings.Contains(msg, "Throttling")}
			want := []any{tc.code, tc.updated, tc.asked, false}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("(code, roles updated, roles asked, upstream text in message) (-got +want):\n%s", diff)
			}
			// Either way, new sessions for the match are blocked.
			_, err = svc.IssueSession(context.Background(), broker.IssueRequest{
				Token: e.Token(t, "acme/app", "refs/heads/main", time.Hour), Targets: []broker.Target{{Role: "readonly", Account: "dev"}},
			})
			if domainerr.CodeOf(err) != domainerr.PermissionDenied {
				t.Errorf("issuance after the revocation: %v", err)
			}
		})
	}
}

// TestRevokeSessionsLocalProviderReportsIssuanceOnly: without IAM, the
// result says so for every role instead of counting them updated.
func TestRevokeSessionsLocalProviderReportsIssuanceOnly(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	res, err := e.Service.RevokeSessions(context.Background(), brokertest.AdminPeer, broker.RevokeRequest{Subject: "repo:acme/app:ref:refs/heads/main", Reason: "leak"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, rr := range res.Roles {
		got = append(got, rr.Role.ARN+" "+rr.Enforcement.String())
		if !strings.Contains(rr.Reason, "provider local puts no IAM policy") {
			t.Errorf("%s: reason %q", rr.Role.ARN, rr.Reason)
		}
	}
	want := []string{
		"arn:aws:iam::111111111111:role/deploy issuance blocked only",
		"arn:aws:iam::111111111111:role/readonly issuance blocked only",
		"arn:aws:iam::222222222222:role/readonly issuance blocked only",
	}
	if diff := cmp.Diff([]any{got, res.RolesUpdated, res.AuditEventID != ""}, []any{want, 0, true}); diff != "" {
		t.Errorf("(roles, updated, audit event id) (-got +want):\n%s", diff)
	}
}

// shortJWT is JWT-shaped and fits a reason (256 bytes).
const shortJWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBwIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"

// TestHostileReasonIsAlwaysRecordable: the reason of a refused token is
// recorded before the request is validated, so whatever it holds (not
// UTF-8, a raw token, control characters, any size) it is normalised into
// an event the audit service accepts, and the request still gets its
// usual answer with exactly one event.
func TestHostileReasonIsAlwaysRecordable(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	jwt := e.Token(t, "acme/app", "refs/heads/main", time.Hour)
	for _, tc := range []struct {
		name, token, reason string
		want                domainerr.Code
	}{
		{"oversized-token/invalid-utf8", strings.Repeat("x", broker.MaxTokenBytes+1), "ship \xff\xfe it", domainerr.Invalid},
		{"oversized-token/jwt", strings.Repeat("x", broker.MaxTokenBytes+1), "ship " + jwt, domainerr.Invalid},
		{"oversized-token/huge", strings.Repeat("x", broker.MaxTokenBytes+1), strings.Repeat("\x1b[2J", 50000), domainerr.Invalid},
		{"forged-token/jwt", jwt[:len(jwt)-4] + "AAAA", "ship " + shortJWT, domainerr.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.Auditor.Reset()
			_, err := e.Service.IssueSession(context.Background(), broker.IssueRequest{Token: tc.token, Targets: deployDev(), Reason: tc.reason})
			if got := domainerr.CodeOf(err); got != tc.want {
				t.Fatalf("IssueSession = %v, want %s", err, tc.want)
			}
			events := e.Auditor.Events()
			if len(events) != 1 {
				t.Fatalf("%d events, want 1", len(events))
			}
			got := events[0].GetActor().GetRequestReason()
			if strings.Contains(got, jwt) || strings.Contains(got, shortJWT) || strings.Contains(got, "\x1b") || strings.Contains(got, "\xff") || len(got) > 2048 {
				t.Errorf("request_reason recorded as %q", got)
			}
		})
	}
}
