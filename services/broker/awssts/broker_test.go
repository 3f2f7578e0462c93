package awssts_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/awssts"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/google/go-cmp/cmp"
)

// TestBrokerIssuesThroughSTS runs IssueSession with the aws provider
// against the in-process STS endpoint: what the policy decided (role,
// duration, session name, tags, SourceIdentity, residency scope-down)
// is what STS receives, and the audit event names the provider and the
// regional endpoint's access key.
func TestBrokerIssuesThroughSTS(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	f := &fakeAWS{}
	p := newProvider(t, f, awssts.Config{HubRoleARN: "arn:aws:iam::999999999999:role/hub"})
	svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: p, Auditor: e.Auditor, Hasher: e.Hasher, Store: e.Store})
	if err != nil {
		t.Fatal(err)
	}
	sessions, err := svc.IssueSession(context.Background(), broker.IssueRequest{
		Token:   e.Token(t, "acme/app", "refs/heads/main", time.Hour),
		Targets: []broker.Target{{Role: "deploy", Account: "dev", Region: "eu-central-1", Duration: 45 * time.Minute}},
	})
	if err != nil {
		t.Fatal(err)
	}
	calls, _ := f.recorded()
	target := calls[len(calls)-1]
	s := sessions[0]
	got := []any{
		target.Get("RoleArn"), target.Get("RoleSessionName"), target.Get("DurationSeconds"), target.Get("SourceIdentity"),
		strings.Contains(target.Get("Policy"), `"aws:RequestedRegion":["eu-*"]`), target.Get("Tags.member.1.Key"),
		s.STSEndpoint, s.Credentials.AccessKeyID, s.SourceIdentity == target.Get("SourceIdentity"),
	}
	want := []any{
		"arn:aws:iam::111111111111:role/deploy", "acme-app@4242", "2700", "cm-" + s.ID,
		true, "iss", p.Endpoint("eu-central-1"), "ASIAIOSFODNN7EXAMPLE", true,
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("(role, session name, duration, source identity, residency scope-down, first tag, endpoint, key, same source identity) (-got +want):\n%s", diff)
	}
	ev := e.Auditor.Events()[0]
	if diff := cmp.Diff([]any{ev.GetDecision(), ev.GetSession().GetProvider(), ev.GetSession().GetAccessKeyId()},
		[]any{auditv1.Decision_DECISION_ALLOW, "aws", "ASIAIOSFODNN7EXAMPLE"}); diff != "" {
		t.Errorf("audit event (-got +want):\n%s", diff)
	}
}

// TestBrokerHidesUpstreamErrors checks that AWS's refusal reaches the
// caller as a clear, fixed message and the audit log as an error event,
// never as AWS's text.
func TestBrokerHidesUpstreamErrors(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	f := &fakeAWS{fail: []fakeError{{status: 403, code: "AccessDenied", message: "User: arn:aws:sts::999999999999:assumed-role/broker/x is not authorized"}}}
	p := newProvider(t, f, awssts.Config{})
	svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: p, Auditor: e.Auditor, Hasher: e.Hasher, Store: e.Store})
	if err != nil {
		t.Fatal(err)
	}
	_, err = svc.IssueSession(context.Background(), broker.IssueRequest{
		Token: e.Token(t, "acme/app", "refs/heads/main", time.Hour), Targets: []broker.Target{{Role: "deploy", Account: "dev"}},
	})
	var be *domainerr.Error
	if !errors.As(err, &be) {
		t.Fatalf("err = %v", err)
	}
	ev := e.Auditor.Events()[0]
	got := []any{be.Code, be.Message, ev.GetDecision(), strings.Contains(ev.String(), "not authorized")}
	want := []any{domainerr.FailedPrecondition, `AWS refused to issue role "deploy" in account "dev" (check the role's trust policy); no credentials issued`,
		auditv1.Decision_DECISION_ERROR, false}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("(code, message, audited decision, upstream text in event) (-got +want):\n%s", diff)
	}
}
