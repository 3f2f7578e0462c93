package grpcapi_test

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/credmatrix/credmatrix/services/broker/grpcapi"
	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/durationpb"
)

const peerID = "spiffe://credmatrix.dev/ci"

// stack is the broker served over an in-memory gRPC connection.
type stack struct {
	*brokertest.Env
	client brokerv1.BrokerServiceClient
	logs   *lockedBuffer // the server's log: causes of failed requests
}

// lockedBuffer is a bytes.Buffer safe for the server's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newStack(t *testing.T) *stack {
	t.Helper()
	return newStackWith(t, "", peerID)
}

// newStackWith serves a broker with policyYAML (brokertest.DefaultPolicy
// when empty) to a caller whose mTLS identity is peer.
func newStackWith(t *testing.T, policyYAML, peer string) *stack {
	t.Helper()
	s := &stack{Env: brokertest.NewEnv(t, policyYAML)}
	s.client = serve(t, s, peer)
	return s
}

// serve serves s's broker over bufconn to a caller whose identity is peer.
func serve(t testing.TB, s *stack, peer string) brokerv1.BrokerServiceClient {
	t.Helper()
	s.logs = &lockedBuffer{}
	srv := grpc.NewServer()
	brokerv1.RegisterBrokerServiceServer(srv, grpcapi.New(s.Service,
		grpcapi.WithIdentity(func(context.Context) (string, bool) { return peer, peer != "" }),
		grpcapi.WithLogger(hclog.New(&hclog.LoggerOptions{Output: s.logs, Level: hclog.Debug})),
	))
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return brokerv1.NewBrokerServiceClient(conn)
}

func target(role, account string) *brokerv1.SessionTarget {
	return &brokerv1.SessionTarget{Role: role, Account: account}
}

// outcome is what a test compares: the status, the denial detail, the
// sessions and the recorded events, with random ids replaced by
// placeholders.
type outcome struct {
	Code     codes.Code
	Message  string
	Denial   *denial
	Sessions []session
	Events   []event
}

type denial struct{ Rule, Reason, AuditEvent, Hint string }

var (
	hintTimeRE = regexp.MustCompile(`--time \S+`)
	hintSHARE  = regexp.MustCompile(`--policy-sha256 [0-9a-f]{64}`)
)

type session struct {
	Account, AccountName, Role, RoleARN, Region, Rule, Duration, SessionName string
	KeyShape, SourceIdentityShape, AuditEvent                                string
}

type event struct {
	Decision                               auditv1.Decision
	Rule, Reason, Account, Role, Principal string
	Peer, RequestReason, Repository        string
	SecretRefs                             []string
	AccessKeyID                            bool
}

var (
	akidRE  = regexp.MustCompile(`^ASIA[A-Z2-7]{16}$`)
	uuidRE  = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	matches = func(re *regexp.Regexp, s string) string {
		if re.MatchString(s) {
			return "ok"
		}
		return "bad: " + s
	}
)

// eventRef names an event id by its position among recorded events.
func eventRef(events []*auditv1.Event, id string, seq uint64) string {
	for i, ev := range events {
		if ev.GetId() == id && ev.GetSequence() == seq {
			return "event " + strconv.Itoa(i)
		}
	}
	return "unknown event " + id
}

func summarize(err error, resp *brokerv1.IssueSessionResponse, events []*auditv1.Event) outcome {
	st := status.Convert(err)
	o := outcome{Code: st.Code(), Message: st.Message()}
	if err == nil {
		o.Message = ""
	}
	for _, d := range st.Details() {
		if dd, ok := d.(*brokerv1.DenialDetail); ok {
			seq := uint64(0)
			for _, ev := range events {
				if ev.GetId() == dd.GetAuditEventId() {
					seq = ev.GetSequence()
				}
			}
			// The hint names the decision time and the policy digest:
			// both vary, the rest must not.
			hint := hintTimeRE.ReplaceAllString(dd.GetHint(), "--time T")
			hint = hintSHARE.ReplaceAllString(hint, "--policy-sha256 SHA")
			o.Denial = &denial{Rule: dd.GetRule(), Reason: dd.GetReason(), AuditEvent: eventRef(events, dd.GetAuditEventId(), seq), Hint: hint}
		}
	}
	for _, s := range resp.GetSessions() {
		o.Sessions = append(o.Sessions, session{
			Account: s.GetAccountId(), AccountName: s.GetAccountName(), Role: s.GetRole(), RoleARN: s.GetRoleArn(),
			Region: s.GetRegion(), Rule: s.GetRule(), Duration: s.GetDuration().AsDuration().String(), SessionName: s.GetSessionName(),
			KeyShape:            matches(akidRE, s.GetCredentials().GetAccessKeyId()),
			SourceIdentityShape: matches(uuidRE, strings.TrimPrefix(s.GetSourceIdentity(), "cm-")),
			AuditEvent:          eventRef(events, s.GetAuditEventId(), s.GetAuditSequence()),
		})
	}
	for _, ev := range events {
		d := ev.GetSession()
		e := event{
			Decision: ev.GetDecision(), Rule: ev.GetRule(), Reason: ev.GetReason(),
			Account: d.GetAccountName(), Role: d.GetRoleName(), Principal: ev.GetActor().GetPrincipal(),
			Peer: ev.GetActor().GetPeer(), RequestReason: ev.GetActor().GetRequestReason(),
			Repository: ev.GetActor().GetClaims()["repository"], AccessKeyID: d.GetAccessKeyId() != "",
		}
		for _, r := range ev.GetSecretRefs() {
			e.SecretRefs = append(e.SecretRefs, r.GetName())
		}
		o.Events = append(o.Events, e)
	}
	return o
}

func TestIssueSession(t *testing.T) {
	s := newStack(t)
	iss := s.Issuer.URL()
	principal := iss + "#repo:acme/app:ref:refs/heads/main"
	stranger, err := devissuer.New()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stranger.Close() })
	strangerToken, err := stranger.Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "1", brokertest.Audience), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	good := s.Token(t, "acme/app", "refs/heads/main", time.Hour)
	forged := map[string]any{
		"iss": iss, "sub": "repo:acme/app:ref:refs/heads/main", "aud": brokertest.Audience,
		"repository": "acme/app", "ref": "refs/heads/main", "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
	}
	allowEvent := func(role string) event {
		return event{Decision: auditv1.Decision_DECISION_ALLOW, Rule: "main-branch-deploys-dev", Reason: `allowed by rule "main-branch-deploys-dev"`,
			Account: "dev", Role: role, Principal: principal, Peer: peerID, RequestReason: "deploy v1", Repository: "acme/app",
			SecretRefs: []string{"oidc_token", "session_token"}, AccessKeyID: true}
	}
	devSession := func(role, dur, auditEvent string) session {
		return session{Account: "111111111111", AccountName: "dev", Role: role, RoleARN: "arn:aws:iam::111111111111:role/" + role,
			Region: "eu-west-1", Rule: "main-branch-deploys-dev", Duration: dur, SessionName: "acme-app@4242",
			KeyShape: "ok", SourceIdentityShape: "ok", AuditEvent: auditEvent}
	}
	unauthenticated := outcome{Code: codes.Unauthenticated, Message: "token verification failed", Events: []event{{
		Decision: auditv1.Decision_DECISION_DENY, Reason: "token verification failed", Peer: peerID, RequestReason: "deploy v1", SecretRefs: []string{"oidc_token"},
	}}}
	auditDown := outcome{Code: codes.Unavailable, Message: "audit log unavailable; no credentials issued"}

	tests := []struct {
		name      string
		req       *brokerv1.IssueSessionRequest
		auditDown bool
		want      outcome
	}{
		{
			name: "allow/main-branch",
			req:  &brokerv1.IssueSessionRequest{Token: good, Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: "deploy v1"},
			want: outcome{Sessions: []session{devSession("deploy", "1h0m0s", "event 0")}, Events: []event{allowEvent("deploy")}},
		},
		{
			name: "allow/two-targets-by-id-duration-capped",
			req: &brokerv1.IssueSessionRequest{Token: good, Reason: "deploy v1", Targets: []*brokerv1.SessionTarget{
				{Role: "deploy", Account: "111111111111", Duration: durationpb.New(2 * time.Hour)},
				{Role: "readonly", Account: "dev", Duration: durationpb.New(30 * time.Minute)},
			}},
			want: outcome{
				Sessions: []session{devSession("deploy", "1h0m0s", "event 0"), devSession("readonly", "30m0s", "event 1")},
				Events:   []event{allowEvent("deploy"), allowEvent("readonly")},
			},
		},
		{
			name: "deny/wrong-ref",
			req:  &brokerv1.IssueSessionRequest{Token: s.Token(t, "acme/app", "refs/heads/dev", time.Hour), Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: "deploy v1"},
			want: outcome{
				Code: codes.PermissionDenied, Message: `targets[0]: no allow rule matches role "deploy" in account "dev" for this token`,
				Denial: &denial{Rule: "default-deny", Reason: `no allow rule matches role "deploy" in account "dev" for this token`, AuditEvent: "event 0",
					Hint: "credmatrix policy test --token-env CREDMATRIX_OIDC_TOKEN --policy policy.yaml --policy-sha256 SHA --role deploy --account dev --region eu-west-1 --time T"},
				Events: []event{{Decision: auditv1.Decision_DECISION_DENY, Rule: "default-deny", Reason: `no allow rule matches role "deploy" in account "dev" for this token`,
					Account: "dev", Role: "deploy", Principal: iss + "#repo:acme/app:ref:refs/heads/dev", Peer: peerID, RequestReason: "deploy v1",
					Repository: "acme/app", SecretRefs: []string{"oidc_token"}}},
			},
		},
		{
			name: "deny/unknown-role",
			req:  &brokerv1.IssueSessionRequest{Token: good, Targets: []*brokerv1.SessionTarget{target("admin", "dev")}, Reason: "deploy v1"},
			want: outcome{
				Code: codes.PermissionDenied, Message: `targets[0]: role "admin" is not declared in the trust policy`,
				Denial: &denial{Rule: "default-deny", Reason: `role "admin" is not declared in the trust policy`, AuditEvent: "event 0",
					Hint: "credmatrix policy test --token-env CREDMATRIX_OIDC_TOKEN --policy policy.yaml --policy-sha256 SHA --role admin --account dev --region eu-west-1 --time T"},
				Events: []event{{Decision: auditv1.Decision_DECISION_DENY, Rule: "default-deny", Reason: `role "admin" is not declared in the trust policy`,
					Account: "dev", Role: "admin", Principal: principal, Peer: peerID, RequestReason: "deploy v1", Repository: "acme/app", SecretRefs: []string{"oidc_token"}}},
			},
		},
		{
			name: "deny/second-of-two-targets",
			req:  &brokerv1.IssueSessionRequest{Token: good, Targets: []*brokerv1.SessionTarget{target("deploy", "dev"), target("readonly", "prod")}, Reason: "deploy v1"},
			want: outcome{
				Code: codes.PermissionDenied, Message: `targets[1]: no allow rule matches role "readonly" in account "prod" for this token`,
				Denial: &denial{Rule: "default-deny", Reason: `no allow rule matches role "readonly" in account "prod" for this token`, AuditEvent: "event 0",
					Hint: "credmatrix policy test --token-env CREDMATRIX_OIDC_TOKEN --policy policy.yaml --policy-sha256 SHA --role readonly --account prod --region us-east-1 --time T"},
				Events: []event{{Decision: auditv1.Decision_DECISION_DENY, Rule: "default-deny", Reason: `no allow rule matches role "readonly" in account "prod" for this token`,
					Account: "prod", Role: "readonly", Principal: principal, Peer: peerID, RequestReason: "deploy v1", Repository: "acme/app", SecretRefs: []string{"oidc_token"}}},
			},
		},
		{
			name: "unauthenticated/expired-token",
			req:  &brokerv1.IssueSessionRequest{Token: s.Token(t, "acme/app", "refs/heads/main", -10*time.Minute), Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: "deploy v1"},
			want: unauthenticated,
		},
		{
			name: "unauthenticated/wrong-audience",
			req:  &brokerv1.IssueSessionRequest{Token: s.TokenWith(t, time.Hour, map[string]any{"aud": "sts.amazonaws.com"}), Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: "deploy v1"},
			want: unauthenticated,
		},
		{
			name: "unauthenticated/unknown-issuer",
			req:  &brokerv1.IssueSessionRequest{Token: strangerToken, Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: "deploy v1"},
			want: unauthenticated,
		},
		{
			name: "unauthenticated/alg-none",
			req:  &brokerv1.IssueSessionRequest{Token: brokertest.AlgNoneToken(forged), Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: "deploy v1"},
			want: unauthenticated,
		},
		{
			name: "unauthenticated/hs256-with-public-key",
			req: &brokerv1.IssueSessionRequest{Token: brokertest.PublicKeyHS256Token(s.Issuer.PublicKey(), s.Issuer.KeyID(), forged),
				Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: "deploy v1"},
			want: unauthenticated,
		},
		{
			name: "unauthenticated/tampered-signature",
			req:  &brokerv1.IssueSessionRequest{Token: brokertest.TamperSignature(good), Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: "deploy v1"},
			want: unauthenticated,
		},
		{
			name: "invalid/empty-token",
			req:  &brokerv1.IssueSessionRequest{Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}},
			want: outcome{Code: codes.InvalidArgument, Message: "token: required"},
		},
		{
			name: "invalid/oversized-token",
			req:  &brokerv1.IssueSessionRequest{Token: strings.Repeat("a", 16<<10+1), Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}},
			want: outcome{Code: codes.InvalidArgument, Message: "token: exceeds 16384 bytes", Events: []event{
				{Decision: auditv1.Decision_DECISION_DENY, Reason: "token: exceeds 16384 bytes", Peer: peerID, SecretRefs: []string{"oidc_token"}},
			}},
		},
		{
			name: "invalid/no-targets",
			req:  &brokerv1.IssueSessionRequest{Token: good},
			want: outcome{Code: codes.InvalidArgument, Message: "targets: 1 to 10 required"},
		},
		{
			name: "invalid/too-many-targets",
			req:  &brokerv1.IssueSessionRequest{Token: good, Targets: make([]*brokerv1.SessionTarget, 11)},
			want: outcome{Code: codes.InvalidArgument, Message: "targets: 1 to 10 required"},
		},
		{
			name: "invalid/empty-role",
			req:  &brokerv1.IssueSessionRequest{Token: good, Targets: []*brokerv1.SessionTarget{target("deploy", "dev"), target("", "dev")}},
			want: outcome{Code: codes.InvalidArgument, Message: "targets[1].role: required"},
		},
		{
			name: "invalid/short-duration",
			req:  &brokerv1.IssueSessionRequest{Token: good, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "dev", Duration: durationpb.New(5 * time.Minute)}}},
			want: outcome{Code: codes.InvalidArgument, Message: "targets[0].duration: must be between 15m and 12h"},
		},
		{
			name: "invalid/long-reason",
			req:  &brokerv1.IssueSessionRequest{Token: good, Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: strings.Repeat("r", 257)},
			want: outcome{Code: codes.InvalidArgument, Message: "reason: at most 256 bytes"},
		},
		{
			name: "invalid/session-policy-not-json",
			req:  &brokerv1.IssueSessionRequest{Token: good, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "dev", Policy: "{"}}},
			want: outcome{Code: codes.InvalidArgument, Message: "targets[0].policy: malformed JSON: unexpected end"},
		},
		{
			name:      "unavailable/audit-down",
			req:       &brokerv1.IssueSessionRequest{Token: good, Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: "deploy v1"},
			auditDown: true,
			want:      auditDown,
		},
		{
			name:      "unavailable/audit-down-on-deny",
			req:       &brokerv1.IssueSessionRequest{Token: good, Targets: []*brokerv1.SessionTarget{target("admin", "dev")}, Reason: "deploy v1"},
			auditDown: true,
			want:      auditDown,
		},
		{
			name:      "unavailable/audit-down-on-unauthenticated",
			req:       &brokerv1.IssueSessionRequest{Token: brokertest.TamperSignature(good), Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}, Reason: "deploy v1"},
			auditDown: true,
			want:      auditDown,
		},
	}

	var secrets []string // every secret that crossed the API
	var recorded strings.Builder
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s.Auditor.Reset()
			s.Auditor.SetFailing(tc.auditDown)
			t.Cleanup(func() { s.Auditor.SetFailing(false) })
			secrets = append(secrets, tc.req.GetToken())

			resp, err := s.client.IssueSession(context.Background(), tc.req)
			events := s.Auditor.Events()
			for _, ev := range events {
				recorded.WriteString(prototext.Format(ev))
			}
			for _, ss := range resp.GetSessions() {
				secrets = append(secrets, ss.GetCredentials().GetSecretAccessKey(), ss.GetCredentials().GetSessionToken())
			}
			if diff := cmp.Diff(summarize(err, resp, events), tc.want); diff != "" {
				t.Errorf("outcome (-got +want):\n%s", diff)
			}
		})
	}

	t.Run("no-secret-in-audit-events", func(t *testing.T) {
		text := recorded.String()
		if !strings.Contains(text, "oidc_token") {
			t.Fatal("no event recorded: the check below would be vacuous")
		}
		for _, secret := range secrets {
			if secret != "" && strings.Contains(text, secret) {
				t.Errorf("an audit event contains a secret of %d bytes", len(secret))
			}
		}
	})
	t.Run("no-secret-in-logged-causes", func(t *testing.T) {
		logs := s.logs.String()
		if !strings.Contains(logs, "request failed") {
			t.Fatal("no failure logged: the check below would be vacuous")
		}
		for _, secret := range secrets {
			if len(secret) > 16 && strings.Contains(logs, secret) {
				t.Errorf("the server log contains a secret of %d bytes", len(secret))
			}
		}
	})
}

func TestIssueSessionAuditFailsOnSecondEvent(t *testing.T) {
	s := newStack(t)
	s.Auditor.FailAfter(1)
	resp, err := s.client.IssueSession(context.Background(), &brokerv1.IssueSessionRequest{
		Token:   s.Token(t, "acme/app", "refs/heads/main", time.Hour),
		Targets: []*brokerv1.SessionTarget{target("deploy", "dev"), target("readonly", "dev")},
	})
	if status.Code(err) != codes.Unavailable || resp != nil {
		t.Errorf("IssueSession = %v, %v; want Unavailable and no response", resp, err)
	}
}

func TestListRoles(t *testing.T) {
	s := newStack(t)
	resp, err := s.client.ListRoles(context.Background(), &brokerv1.ListRolesRequest{Token: s.Token(t, "acme/app", "refs/tags/v1.0.0", time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range resp.GetRoles() {
		got = append(got, r.GetRole()+"@"+r.GetAccountName()+" "+r.GetRoleArn()+" "+r.GetRegion()+" "+r.GetMaxDuration().AsDuration().String()+" "+r.GetRule())
	}
	want := []string{"readonly@prod arn:aws:iam::222222222222:role/readonly us-east-1 1h0m0s tags-read-prod"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("ListRoles (-got +want):\n%s", diff)
	}
	_, err = s.client.ListRoles(context.Background(), &brokerv1.ListRolesRequest{Token: brokertest.TamperSignature(s.Token(t, "acme/app", "refs/heads/main", time.Hour))})
	if diff := cmp.Diff([]any{status.Code(err), status.Convert(err).Message()}, []any{codes.Unauthenticated, "token verification failed"}); diff != "" {
		t.Errorf("ListRoles with a bad token (-got +want):\n%s", diff)
	}
	if n := len(s.Auditor.Events()); n != 0 {
		t.Errorf("ListRoles recorded %d audit events, want 0", n)
	}
}

func TestExplainDecision(t *testing.T) {
	s := newStack(t) // a CI runner: sees only the rules about its target
	tok := s.Token(t, "acme/app", "refs/heads/dev", time.Hour)
	resp, err := s.client.ExplainDecision(context.Background(), &brokerv1.ExplainDecisionRequest{Token: tok, Target: target("deploy", "dev")})
	if err != nil {
		t.Fatal(err)
	}
	want := &brokerv1.ExplainDecisionResponse{
		DecidingRule: "default-deny",
		Reason:       `no allow rule matches role "deploy" in account "dev" for this token`,
		Evaluations: []*brokerv1.RuleEvaluation{
			{Rule: "account-frozen", Effect: brokerv1.Effect_EFFECT_DENY, Reason: "account and its OUs are not frozen"},
			{Rule: "revoked", Effect: brokerv1.Effect_EFFECT_DENY, Reason: "no revocation matches"},
			{Rule: "main-branch-deploys-dev", Effect: brokerv1.Effect_EFFECT_ALLOW, Reason: "claim ref: want refs/heads/main, got refs/heads/dev"},
			// tags-read-prod is about readonly in prod: not shown.
		},
		AuditEventId: resp.GetAuditEventId(),
	}
	if diff := cmp.Diff(prototext.Format(resp), prototext.Format(want)); diff != "" {
		t.Errorf("ExplainDecision (-got +want):\n%s", diff)
	}

	resp, err = s.client.ExplainDecision(context.Background(), &brokerv1.ExplainDecisionRequest{
		Token:  s.Token(t, "acme/app", "refs/heads/main", time.Hour),
		Target: &brokerv1.SessionTarget{Role: "deploy", Account: "dev", Duration: durationpb.New(20 * time.Minute)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]any{resp.GetAllowed(), resp.GetDecidingRule(), resp.GetEffectiveDuration().AsDuration()}, []any{true, "main-branch-deploys-dev", 20 * time.Minute}); diff != "" {
		t.Errorf("ExplainDecision allow (-got +want):\n%s", diff)
	}

	_, err = s.client.ExplainDecision(context.Background(), &brokerv1.ExplainDecisionRequest{Token: tok})
	if diff := cmp.Diff([]any{status.Code(err), status.Convert(err).Message()}, []any{codes.InvalidArgument, "target.role: required"}); diff != "" {
		t.Errorf("ExplainDecision without target (-got +want):\n%s", diff)
	}
	_, err = s.client.ExplainDecision(context.Background(), &brokerv1.ExplainDecisionRequest{Token: brokertest.TamperSignature(tok), Target: target("deploy", "dev")})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("ExplainDecision with a forged token: %v", err)
	}
	// Every explanation, and the forged token, is audited (the invalid
	// request is refused before anything is decided).
	var got []string
	for _, ev := range s.Auditor.Events() {
		got = append(got, ev.GetKind().String()+" "+ev.GetDecision().String()+" "+ev.GetRule()+" "+ev.GetReason())
	}
	wantEvents := []string{
		`KIND_DECISION_EXPLAIN DECISION_ALLOW default-deny explained: would deny: no allow rule matches role "deploy" in account "dev" for this token`,
		`KIND_DECISION_EXPLAIN DECISION_ALLOW main-branch-deploys-dev explained: would allow: allowed by rule "main-branch-deploys-dev"`,
		`KIND_DECISION_EXPLAIN DECISION_DENY  token verification failed`,
	}
	if diff := cmp.Diff(got, wantEvents); diff != "" {
		t.Errorf("audit events (-got +want):\n%s", diff)
	}
	if id := s.Auditor.Events()[0].GetId(); id != want.AuditEventId {
		t.Errorf("response names audit event %s, recorded %s", want.AuditEventId, id)
	}

	// Audit down: no explanation.
	s.Auditor.SetFailing(true)
	_, err = s.client.ExplainDecision(context.Background(), &brokerv1.ExplainDecisionRequest{Token: tok, Target: target("deploy", "dev")})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("ExplainDecision with audit down: %v, want Unavailable", err)
	}
}

// TestExplainDecisionAdminSeesEveryRule: an operator's mTLS identity
// sees the rules about other targets too.
func TestExplainDecisionAdminSeesEveryRule(t *testing.T) {
	s := newStackWith(t, "", brokertest.AdminPeer)
	resp, err := s.client.ExplainDecision(context.Background(), &brokerv1.ExplainDecisionRequest{Token: s.Token(t, "acme/app", "refs/heads/dev", time.Hour), Target: target("deploy", "dev")})
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, ev := range resp.GetEvaluations() {
		rules = append(rules, ev.GetRule())
	}
	if diff := cmp.Diff(rules, []string{"account-frozen", "revoked", "main-branch-deploys-dev", "tags-read-prod"}); diff != "" {
		t.Errorf("rules shown to an operator (-got +want):\n%s", diff)
	}
}

// TestExplainDecisionRateLimited: a caller probing the policy is slowed
// down, and each refusal is audited.
func TestExplainDecisionRateLimited(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	now := time.Now()
	svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: e.Provider, Auditor: e.Auditor,
		Hasher: e.Hasher, Store: e.Store, Clock: func() time.Time { return now }, Limits: broker.Limits{ExplainPerSubject: 1, ExplainBurst: 2}})
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{Env: e}
	s.Service = svc
	client := serve(t, s, peerID)
	tok := e.Token(t, "acme/app", "refs/heads/main", time.Hour)
	explain := func() codes.Code {
		_, err := client.ExplainDecision(context.Background(), &brokerv1.ExplainDecisionRequest{Token: tok, Target: target("deploy", "dev")})
		return status.Code(err)
	}
	got := []codes.Code{explain(), explain(), explain()}
	now = now.Add(time.Second)
	got = append(got, explain())
	if diff := cmp.Diff(got, []codes.Code{codes.OK, codes.OK, codes.ResourceExhausted, codes.OK}); diff != "" {
		t.Errorf("(burst of 3, then 1s later) (-got +want):\n%s", diff)
	}
	ev := e.Auditor.Events()[2]
	if diff := cmp.Diff([]any{ev.GetKind(), ev.GetDecision(), ev.GetRule()}, []any{auditv1.Kind_KIND_DECISION_EXPLAIN, auditv1.Decision_DECISION_DENY, "rate-limited"}); diff != "" {
		t.Errorf("refusal audited as (-got +want):\n%s", diff)
	}
}

func TestGetSession(t *testing.T) {
	s := newStack(t)
	resp, err := s.client.IssueSession(context.Background(), &brokerv1.IssueSessionRequest{
		Token:   s.Token(t, "acme/app", "refs/heads/main", time.Hour),
		Targets: []*brokerv1.SessionTarget{target("deploy", "dev")},
	})
	if err != nil {
		t.Fatal(err)
	}
	issued := resp.GetSessions()[0]
	creds := issued.GetCredentials()
	got, err := s.client.GetSession(context.Background(), &brokerv1.GetSessionRequest{AccessKeyId: creds.GetAccessKeyId(), SessionToken: creds.GetSessionToken()})
	if err != nil {
		t.Fatal(err)
	}
	want := &brokerv1.GetSessionResponse{
		SessionId:  issued.GetSessionId(),
		Subject:    "repo:acme/app:ref:refs/heads/main",
		AccountId:  "111111111111",
		Role:       "deploy",
		RoleArn:    "arn:aws:iam::111111111111:role/deploy",
		Region:     "eu-west-1",
		IssueTime:  got.GetIssueTime(),
		Expiration: creds.GetExpiration(),
		SessionTags: map[string]string{"sub": "repo:acme/app:ref:refs/heads/main", "iss": s.Issuer.URL(), "repository": "acme/app", "ref": "refs/heads/main",
			"run_id": "4242", "sha": got.GetSessionTags()["sha"]},
		SessionPolicy: `{"Statement":[{"Action":"*","Effect":"Allow","Resource":"*","Sid":"CredmatrixRole"},` +
			`{"Condition":{"StringNotLike":{"aws:RequestedRegion":["eu-*"]}},"Effect":"Deny","NotAction":["iam:*","sts:*","organizations:*","route53:*","cloudfront:*","support:*","health:*","account:*"],` +
			`"Resource":"*","Sid":"CredmatrixResidency"}],"Version":"2012-10-17"}`,
	}
	if len(got.GetSessionTags()["sha"]) != 40 {
		t.Errorf("sha tag = %q, want the commit sha", got.GetSessionTags()["sha"])
	}
	if diff := cmp.Diff(prototext.Format(got), prototext.Format(want)); diff != "" {
		t.Errorf("GetSession (-got +want):\n%s", diff)
	}

	tests := []struct {
		name string
		req  *brokerv1.GetSessionRequest
		code codes.Code
		msg  string
	}{
		{"not-found/tampered-token", &brokerv1.GetSessionRequest{AccessKeyId: creds.GetAccessKeyId(), SessionToken: brokertest.TamperSignature(creds.GetSessionToken())}, codes.NotFound, "session not found"},
		{"not-found/other-key", &brokerv1.GetSessionRequest{AccessKeyId: "ASIAAAAAAAAAAAAAAAAA", SessionToken: creds.GetSessionToken()}, codes.NotFound, "session not found"},
		{"invalid/no-key", &brokerv1.GetSessionRequest{SessionToken: creds.GetSessionToken()}, codes.InvalidArgument, "access_key_id: required"},
		{"invalid/no-token", &brokerv1.GetSessionRequest{AccessKeyId: creds.GetAccessKeyId()}, codes.InvalidArgument, "session_token: required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.client.GetSession(context.Background(), tc.req)
			if diff := cmp.Diff([]any{status.Code(err), status.Convert(err).Message()}, []any{tc.code, tc.msg}); diff != "" {
				t.Errorf("GetSession (-got +want):\n%s", diff)
			}
		})
	}
}
