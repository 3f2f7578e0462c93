package grpcapi_test

import (
	"context"
	"strings"
	"testing"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestOperatorRPCsNeedAnAdmin(t *testing.T) {
	s := newStack(t) // peer is a CI runner, not an administrator
	ctx := context.Background()
	calls := []struct {
		name string
		kind auditv1.Kind
		call func() error
	}{
		{"RevokeSessions", auditv1.Kind_KIND_SESSION_REVOKE, func() error {
			_, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{Subject: "x", Reason: "r"})
			return err
		}},
		{"FreezeAccount", auditv1.Kind_KIND_ACCOUNT_FREEZE, func() error {
			_, err := s.client.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{Account: "dev", Reason: "r"})
			return err
		}},
		{"UnfreezeAccount", auditv1.Kind_KIND_ACCOUNT_UNFREEZE, func() error {
			_, err := s.client.UnfreezeAccount(ctx, &brokerv1.UnfreezeAccountRequest{Account: "dev", Reason: "r"})
			return err
		}},
		{"ReloadPolicy", auditv1.Kind_KIND_POLICY_RELOAD, func() error {
			_, err := s.client.ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{})
			return err
		}},
		{"ListRevocations", auditv1.Kind_KIND_SESSION_REVOKE, func() error {
			_, err := s.client.ListRevocations(ctx, &brokerv1.ListRevocationsRequest{})
			return err
		}},
		// Dry runs show what an incident response would touch: operators
		// only too.
		{"RevokeSessions/dry-run", auditv1.Kind_KIND_SESSION_REVOKE, func() error {
			_, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{Subject: "x", DryRun: true})
			return err
		}},
		{"FreezeAccount/dry-run", auditv1.Kind_KIND_ACCOUNT_FREEZE, func() error {
			_, err := s.client.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{Account: "dev", DryRun: true})
			return err
		}},
		{"ReloadPolicy/dry-run", auditv1.Kind_KIND_POLICY_RELOAD, func() error {
			_, err := s.client.ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{DryRun: true})
			return err
		}},
	}
	for _, c := range calls {
		t.Run("deny/"+c.name, func(t *testing.T) {
			s.Auditor.Reset()
			err := c.call()
			events := s.Auditor.Events()
			got := []any{status.Code(err), status.Convert(err).Message(), len(events)}
			want := []any{codes.PermissionDenied, "operator RPCs need an administrator's mTLS identity", 1}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Fatalf("(code, message, events) (-got +want):\n%s", diff)
			}
			ev := events[0]
			if diff := cmp.Diff([]any{ev.GetKind(), ev.GetDecision(), ev.GetActor().GetPeer()}, []any{c.kind, auditv1.Decision_DECISION_DENY, peerID}); diff != "" {
				t.Errorf("audit event (-got +want):\n%s", diff)
			}
		})
	}
}

func TestOperatorRPCsValidate(t *testing.T) {
	s := newStackWith(t, "", brokertest.AdminPeer)
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
		msg  string
	}{
		{"revoke/no-selector", func() error {
			_, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{Reason: "r"})
			return err
		}, "subject: at least one selector (subject, issuer, role, account_id, session_id, claims) is required"},
		{"revoke/no-reason", func() error {
			_, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{Subject: "x"})
			return err
		}, "reason: required: say why, for the audit log"},
		{"revoke/bad-account", func() error {
			_, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{AccountId: "dev", Reason: "r"})
			return err
		}, "account_id: must be 12 digits"},
		{"revoke/bad-session-id", func() error {
			_, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{SessionId: "x'; DROP", Reason: "r"})
			return err
		}, "session_id: not a session id"},
		{"revoke/block-too-long", func() error {
			_, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{Subject: "x", Reason: "r", BlockFor: durationpb.New(1000 * time.Hour)})
			return err
		}, "block_for: must be between 1m and 720h"},
		{"freeze/both", func() error {
			_, err := s.client.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{Account: "dev", OuPath: "/root", Reason: "r"})
			return err
		}, "account: exactly one of account and ou_path is required"},
		{"freeze/unknown-account", func() error {
			_, err := s.client.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{Account: "stage", Reason: "r"})
			return err
		}, "account: not in the account matrix"},
		{"freeze/bad-ou", func() error {
			_, err := s.client.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{OuPath: "root", Reason: "r"})
			return err
		}, "ou_path: must be a path such as /root/prod"},
		{"unfreeze/no-reason", func() error {
			_, err := s.client.UnfreezeAccount(ctx, &brokerv1.UnfreezeAccountRequest{Account: "dev"})
			return err
		}, "reason: required: say why, for the audit log"},
	}
	for _, tc := range tests {
		t.Run("invalid/"+tc.name, func(t *testing.T) {
			err := tc.call()
			if diff := cmp.Diff([]any{status.Code(err), status.Convert(err).Message()}, []any{codes.InvalidArgument, tc.msg}); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
		})
	}
}

// issue asks for deploy@dev with a main-branch token and returns the
// status code and, when denied, the deciding rule.
func (s *stack) issue(t *testing.T) (codes.Code, string, *brokerv1.Session) {
	t.Helper()
	resp, err := s.client.IssueSession(context.Background(), &brokerv1.IssueSessionRequest{
		Token: s.Token(t, "acme/app", "refs/heads/main", time.Hour), Targets: []*brokerv1.SessionTarget{target("deploy", "dev")},
	})
	rule := ""
	for _, d := range status.Convert(err).Details() {
		if dd, ok := d.(*brokerv1.DenialDetail); ok {
			rule = dd.GetRule()
		}
	}
	if err != nil {
		return status.Code(err), rule, nil
	}
	return codes.OK, rule, resp.GetSessions()[0]
}

func TestFreezeAccount(t *testing.T) {
	s := newStackWith(t, "", brokertest.AdminPeer)
	ctx := context.Background()
	steps := []struct {
		name     string
		do       func() (any, error)
		want     any
		code     codes.Code
		denyRule string
	}{
		{"freeze-ou", func() (any, error) {
			r, err := s.client.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{OuPath: "/root", Reason: "incident 42"})
			return r.GetAccountIds(), err
		}, []string{"111111111111", "222222222222"}, codes.PermissionDenied, "account-frozen"},
		{"unfreeze-ou", func() (any, error) {
			r, err := s.client.UnfreezeAccount(ctx, &brokerv1.UnfreezeAccountRequest{OuPath: "/root", Reason: "resolved"})
			return r.GetAccountIds(), err
		}, []string{"111111111111", "222222222222"}, codes.OK, ""},
		{"freeze-account-by-name", func() (any, error) {
			r, err := s.client.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{Account: "dev", Reason: "incident 43"})
			return r.GetAccountIds(), err
		}, []string{"111111111111"}, codes.PermissionDenied, "account-frozen"},
		{"list-roles-hides-frozen", func() (any, error) {
			r, err := s.client.ListRoles(ctx, &brokerv1.ListRolesRequest{Token: s.Token(t, "acme/app", "refs/heads/main", time.Hour)})
			return len(r.GetRoles()), err
		}, 0, codes.PermissionDenied, "account-frozen"},
		{"unfreeze-account-by-id", func() (any, error) {
			r, err := s.client.UnfreezeAccount(ctx, &brokerv1.UnfreezeAccountRequest{Account: "111111111111", Reason: "resolved"})
			return r.GetAccountIds(), err
		}, []string{"111111111111"}, codes.OK, ""},
	}
	for _, st := range steps {
		got, err := st.do()
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		code, rule, _ := s.issue(t)
		if diff := cmp.Diff([]any{got, code, rule}, []any{st.want, st.code, st.denyRule}); diff != "" {
			t.Errorf("%s: (result, issuance code, deny rule) (-got +want):\n%s", st.name, diff)
		}
	}
	var kinds []string
	for _, ev := range s.Auditor.Events() {
		kinds = append(kinds, ev.GetKind().String()+" "+ev.GetDecision().String()+" "+ev.GetRule())
	}
	want := []string{
		"KIND_ACCOUNT_FREEZE DECISION_ALLOW ", "KIND_SESSION_ISSUE DECISION_DENY account-frozen",
		"KIND_ACCOUNT_UNFREEZE DECISION_ALLOW ", "KIND_SESSION_ISSUE DECISION_ALLOW main-branch-deploys-dev",
		"KIND_ACCOUNT_FREEZE DECISION_ALLOW ", "KIND_SESSION_ISSUE DECISION_DENY account-frozen",
		"KIND_SESSION_ISSUE DECISION_DENY account-frozen",
		"KIND_ACCOUNT_UNFREEZE DECISION_ALLOW ", "KIND_SESSION_ISSUE DECISION_ALLOW main-branch-deploys-dev",
	}
	if diff := cmp.Diff(kinds, want); diff != "" {
		t.Errorf("audit log (-got +want):\n%s", diff)
	}
}

func TestRevokeSessions(t *testing.T) {
	s := newStackWith(t, "", brokertest.AdminPeer)
	ctx := context.Background()
	revoked := func(sess *brokerv1.Session) bool {
		t.Helper()
		info, err := s.client.GetSession(ctx, &brokerv1.GetSessionRequest{AccessKeyId: sess.GetCredentials().GetAccessKeyId(), SessionToken: sess.GetCredentials().GetSessionToken()})
		if err != nil {
			t.Fatal(err)
		}
		return info.GetRevoked()
	}
	_, _, first := s.issue(t)
	_, _, second := s.issue(t)

	// One session by id: it is revoked, further issuance is not blocked.
	if _, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{SessionId: first.GetSessionId(), Reason: "leaked in a log"}); err != nil {
		t.Fatal(err)
	}
	code, _, _ := s.issue(t)
	if diff := cmp.Diff([]any{revoked(first), revoked(second), code}, []any{true, false, codes.OK}); diff != "" {
		t.Errorf("after revoking one session: (first revoked, second revoked, issuance) (-got +want):\n%s", diff)
	}

	// Everything of a subject on one claim value: sessions revoked and
	// issuance blocked.
	res, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{
		Subject: "repo:acme/app:ref:refs/heads/main", Claims: map[string]string{"repository": "acme/app"},
		Role: "deploy", Reason: "compromised runner", BlockFor: durationpb.New(time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	code, rule, _ := s.issue(t)
	if diff := cmp.Diff([]any{revoked(second), code, rule}, []any{true, codes.PermissionDenied, "revoked"}); diff != "" {
		t.Errorf("after revoking the subject: (second revoked, issuance, rule) (-got +want):\n%s", diff)
	}
	// Another subject is not affected.
	resp, err := s.client.IssueSession(ctx, &brokerv1.IssueSessionRequest{
		Token: s.Token(t, "acme/app", "refs/tags/v1", time.Hour), Targets: []*brokerv1.SessionTarget{target("readonly", "prod")},
	})
	if err != nil || len(resp.GetSessions()) != 1 {
		t.Errorf("other subject: %v", err)
	}
	var ev *auditv1.Event
	for _, e := range s.Auditor.Events() {
		if e.GetAdmin().GetRevocationId() == res.GetRevocationId() {
			ev = e
		}
	}
	if ev == nil {
		t.Fatal("revocation not audited")
	}
	got := []any{ev.GetKind(), ev.GetActor().GetPeer(), ev.GetAdmin().GetSubject(), ev.GetAdmin().GetClaims(), ev.GetAdmin().GetBlockUntil().AsTime().Sub(ev.GetTime().AsTime())}
	want := []any{auditv1.Kind_KIND_SESSION_REVOKE, brokertest.AdminPeer, "repo:acme/app:ref:refs/heads/main", map[string]string{"repository": "acme/app"}, time.Hour}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("revocation event (-got +want):\n%s", diff)
	}
}

func TestReloadPolicy(t *testing.T) {
	s := newStackWith(t, "", brokertest.AdminPeer)
	ctx := context.Background()
	before := s.Service.Policy().SHA256()

	// A broken policy is refused, named by line and field, audited, and
	// the policy in force stays.
	s.SetPolicy(strings.Replace(brokertest.DefaultPolicy, "roles: [deploy, readonly]", "roles: [deploy, deplyo]", 1))
	_, err := s.client.ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{})
	wantMsg := `new trust policy refused; the policy in force stays: policy.yaml:27: rules[0].roles[1]: unknown role "deplyo"`
	if diff := cmp.Diff([]any{status.Code(err), status.Convert(err).Message()}, []any{codes.FailedPrecondition, wantMsg}); diff != "" {
		t.Errorf("bad reload (-got +want):\n%s", diff)
	}
	if code, _, _ := s.issue(t); code != codes.OK || s.Service.Policy().SHA256() != before {
		t.Errorf("after a refused reload: issuance %v, policy changed %v", code, s.Service.Policy().SHA256() != before)
	}

	// A good one takes effect at once.
	s.SetPolicy(strings.Replace(brokertest.DefaultPolicy, "ref: refs/heads/main", "ref: refs/heads/release", 1))
	res, err := s.client.ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	code, rule, _ := s.issue(t)
	if diff := cmp.Diff([]any{res.GetSha256() != before, res.GetRuleCount(), code, rule}, []any{true, uint32(2), codes.PermissionDenied, "default-deny"}); diff != "" {
		t.Errorf("good reload (-got +want):\n%s", diff)
	}

	var got []string
	for _, ev := range s.Auditor.Events() {
		if ev.GetKind() == auditv1.Kind_KIND_POLICY_RELOAD {
			got = append(got, ev.GetDecision().String()+" "+ev.GetReason()+" "+ev.GetPolicy().GetError())
		}
	}
	want := []string{
		`DECISION_DENY new trust policy refused; the policy in force stays policy.yaml:27: rules[0].roles[1]: unknown role "deplyo"`,
		"DECISION_ALLOW trust policy reloaded; signing keys refetched ",
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("reload events (-got +want):\n%s", diff)
	}
}

func TestRateLimit(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: e.Provider, Auditor: e.Auditor,
		Hasher: e.Hasher, Store: e.Store, Limits: broker.Limits{PerSubject: 0.001, SubjectBurst: 1}})
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{Env: e}
	e.Service = svc
	client := serve(t, s, peerID)
	req := &brokerv1.IssueSessionRequest{Token: e.Token(t, "acme/app", "refs/heads/main", time.Hour), Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}}
	if _, err := client.IssueSession(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	resp, err := client.IssueSession(context.Background(), req)
	st := status.Convert(err)
	var retry time.Duration
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			retry = ri.GetRetryDelay().AsDuration()
		}
	}
	events := e.Auditor.Events()
	last := events[len(events)-1]
	got := []any{st.Code(), st.Message(), len(resp.GetSessions()), retry > 15*time.Minute, last.GetDecision(), last.GetRule()}
	want := []any{codes.ResourceExhausted, "rate limit exceeded; retry later", 0, true, auditv1.Decision_DECISION_DENY, "rate-limited"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("(code, message, sessions, retry info, audited decision, rule) (-got +want):\n%s", diff)
	}
}

// TestOperatorDryRuns runs every operator RPC as a dry run and then for
// real: the dry run shows what would be covered (accounts, roles, the
// policy digest), records and changes nothing, and the real call
// matches it and names its audit event.
func TestOperatorDryRuns(t *testing.T) {
	s := newStackWith(t, "", brokertest.AdminPeer)
	ctx := context.Background()
	events := func() int { return len(s.Auditor.Events()) }

	dryFreeze, err := s.client.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{OuPath: "/root", DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	code, _, _ := s.issue(t)
	got := []any{dryFreeze.GetDryRun(), dryFreeze.GetAccountIds(), dryFreeze.GetRoleArns(), dryFreeze.GetAuditEventId(), events(), code}
	want := []any{true, []string{"111111111111", "222222222222"},
		[]string{"arn:aws:iam::111111111111:role/deploy", "arn:aws:iam::111111111111:role/readonly", "arn:aws:iam::222222222222:role/readonly"},
		"", 1, codes.OK} // the one event is the issuance
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("freeze dry run (dry, accounts, roles, event id, events, issuance after) (-got +want):\n%s", diff)
	}
	freeze, err := s.client.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{OuPath: "/root", Reason: "drill"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]any{freeze.GetDryRun(), freeze.GetAccountIds(), freeze.GetRoleArns(), freeze.GetAuditEventId() == s.Auditor.Events()[1].GetId()},
		[]any{false, dryFreeze.GetAccountIds(), dryFreeze.GetRoleArns(), true}); diff != "" {
		t.Errorf("freeze (-got +want):\n%s", diff)
	}
	list, err := s.client.ListRevocations(ctx, &brokerv1.ListRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(list.GetFrozenScopes(), []string{"ou:/root"}); diff != "" {
		t.Errorf("frozen scopes (-got +want):\n%s", diff)
	}
	n := events()
	dryUnfreeze, err := s.client.UnfreezeAccount(ctx, &brokerv1.UnfreezeAccountRequest{OuPath: "/root", DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if code, _, _ := s.issue(t); code != codes.PermissionDenied || !dryUnfreeze.GetDryRun() {
		t.Errorf("after an unfreeze dry run: issuance %v, dry %v; want still frozen", code, dryUnfreeze.GetDryRun())
	}
	if got := events() - n; got != 1 || dryUnfreeze.GetAuditEventId() != "" {
		t.Errorf("unfreeze dry run: %d new events, audit event id %q; want only the denied issuance's event and no id", got, dryUnfreeze.GetAuditEventId())
	}
	if _, err := s.client.UnfreezeAccount(ctx, &brokerv1.UnfreezeAccountRequest{OuPath: "/root", Reason: "drill over"}); err != nil {
		t.Fatal(err)
	}

	n = events()
	dryRevoke, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{Subject: "repo:acme/app:ref:refs/heads/main", AccountId: "111111111111", DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	code, _, _ = s.issue(t)
	var roles []string
	for _, r := range dryRevoke.GetRoles() {
		roles = append(roles, r.GetRoleArn()+" "+r.GetEnforcement().String())
	}
	got = []any{dryRevoke.GetDryRun(), roles, dryRevoke.GetAuditEventId(), events() - n, code, dryRevoke.GetBlockUntil() != nil}
	want = []any{true, []string{
		"arn:aws:iam::111111111111:role/deploy REVOCATION_ENFORCEMENT_ISSUANCE_ONLY",
		"arn:aws:iam::111111111111:role/readonly REVOCATION_ENFORCEMENT_ISSUANCE_ONLY",
	}, "", 1, codes.OK, true} // the one new event is the issuance
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("revoke dry run (dry, roles, event id, new events, issuance after, block) (-got +want):\n%s", diff)
	}
	list, err = s.client.ListRevocations(ctx, &brokerv1.ListRevocationsRequest{})
	if err != nil || len(list.GetRevocations()) != 0 {
		t.Errorf("revocations after a dry run: %v, %v", list.GetRevocations(), err)
	}
	revoke, err := s.client.RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{Subject: "repo:acme/app:ref:refs/heads/main", AccountId: "111111111111", Reason: "leak"})
	if err != nil {
		t.Fatal(err)
	}
	list, err = s.client.ListRevocations(ctx, &brokerv1.ListRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]any{len(revoke.GetRoles()), revoke.GetAuditEventId() != "", len(list.GetRevocations()), list.GetRevocations()[0].GetRevocationId(), list.GetRevocations()[0].GetReason()},
		[]any{2, true, 1, revoke.GetRevocationId(), "leak"}); diff != "" {
		t.Errorf("revoke then list (-got +want):\n%s", diff)
	}

	dryReload, err := s.client.ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]any{dryReload.GetDryRun(), dryReload.GetChanged(), dryReload.GetAuditEventId(), dryReload.GetSha256()},
		[]any{true, false, "", s.Service.Policy().SHA256()}); diff != "" {
		t.Errorf("reload dry run (-got +want):\n%s", diff)
	}
	s.SetPolicy(strings.Replace(brokertest.DefaultPolicy, "roles: [deploy, readonly]", "roles: [deploy, deplyo]", 1))
	_, err = s.client.ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{DryRun: true})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), `unknown role "deplyo"`) {
		t.Errorf("reload dry run of a bad policy: %v", err)
	}
}
