package auditclienttest

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Scenario actors and times, for tests that check replay answers.
const (
	Alice      = "repo:acme/app:ref:refs/heads/main"
	Bob        = "repo:acme/api:ref:refs/heads/main"
	GitHub     = "https://token.actions.githubusercontent.com"
	Billing    = "spiffe://credmatrix.dev/app/billing"
	Operator   = "spiffe://credmatrix.dev/cli"
	Sandbox    = "111111111111"
	Prod       = "222222222222"
	ScenarioID = "scenario"
)

// T0 is the time of the scenario's first event.
var T0 = time.Date(2026, 11, 1, 9, 0, 0, 0, time.UTC)

// At is T0 plus minutes.
func At(minutes int) time.Time { return T0.Add(time.Duration(minutes) * time.Minute) }

// Scenario is a scripted story with known truth (see replay's tests):
// sessions issued, denied, expired and revoked; a grant created, used and
// revoked; a key rotated. Events are as producers send them (no sequence).
func Scenario() []*auditv1.Event {
	n := 0
	ev := func(min int, kind auditv1.Kind, dec auditv1.Decision, actor *auditv1.Actor) *auditv1.Event {
		n++
		return &auditv1.Event{
			Id: fmt.Sprintf("%s-%02d", ScenarioID, n), Time: timestamppb.New(At(min)), Kind: kind, Decision: dec, Actor: actor,
		}
	}
	gh := func(sub string) *auditv1.Actor {
		return &auditv1.Actor{Principal: GitHub + "#" + sub, Issuer: GitHub, Subject: sub, Claims: map[string]string{"repository": "acme/x"}}
	}
	svc := func(p string) *auditv1.Actor { return &auditv1.Actor{Principal: p} }
	session := func(e *auditv1.Event, id, acct, name, role string, lifetime int) *auditv1.Event {
		e.Detail = &auditv1.Event_Session{Session: &auditv1.SessionDetail{
			AccountId: acct, AccountName: name, RoleName: role, Region: "eu-west-1", SessionId: id,
			AccessKeyId: "ASIA" + id, Expiration: timestamppb.New(e.GetTime().AsTime().Add(time.Duration(lifetime) * time.Minute)),
			Provider: "local",
		}}
		return e
	}
	key := func(e *auditv1.Event, class, region string, version uint32, grant string) *auditv1.Event {
		e.Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{DataClass: class, Region: region, KeyVersion: version, GrantId: grant, Backend: "local"}}
		return e
	}
	allow, deny := auditv1.Decision_DECISION_ALLOW, auditv1.Decision_DECISION_DENY
	out := []*auditv1.Event{
		session(ev(0, auditv1.Kind_KIND_SESSION_ISSUE, allow, gh(Alice)), "s1", Sandbox, "sandbox", "deploy", 60),
		session(ev(5, auditv1.Kind_KIND_SESSION_ISSUE, allow, gh(Bob)), "s2", Prod, "prod", "deploy", 15),
		session(ev(10, auditv1.Kind_KIND_SESSION_ISSUE, deny, gh(Alice)), "", Prod, "prod", "admin", 0),
		func() *auditv1.Event {
			e := ev(15, auditv1.Kind_KIND_GRANT_CREATE, allow, svc(Operator))
			e.Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{
				DataClass: "confidential", GrantId: "g1", Grantee: Billing, GrantRegions: []string{"eu-west-1"},
				GrantOperations: []string{"encrypt", "decrypt"},
			}}
			return e
		}(),
		key(ev(20, auditv1.Kind_KIND_KEY_ENCRYPT, allow, svc(Billing)), "confidential", "eu-west-1", 1, "g1"),
		key(ev(25, auditv1.Kind_KIND_KEY_ROTATE, allow, svc(Operator)), "confidential", "eu-west-1", 2, ""),
		key(ev(30, auditv1.Kind_KIND_KEY_DECRYPT, allow, svc(Billing)), "confidential", "eu-west-1", 1, "g1"),
		session(ev(35, auditv1.Kind_KIND_SESSION_ISSUE, allow, gh(Alice)), "s3", Sandbox, "sandbox", "deploy", 60),
		func() *auditv1.Event {
			e := ev(40, auditv1.Kind_KIND_SESSION_REVOKE, allow, svc(Operator))
			e.Detail = &auditv1.Event_Admin{Admin: &auditv1.AdminDetail{
				Action: "revoke sessions", Subject: Alice, AccountId: Sandbox, IssuedBefore: timestamppb.New(At(40)),
			}}
			return e
		}(),
		session(ev(45, auditv1.Kind_KIND_SESSION_ISSUE, allow, gh(Alice)), "s4", Sandbox, "sandbox", "deploy", 60),
		func() *auditv1.Event {
			e := ev(50, auditv1.Kind_KIND_GRANT_REVOKE, allow, svc(Operator))
			e.Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{DataClass: "confidential", GrantId: "g1", Grantee: Billing}}
			return e
		}(),
		key(ev(55, auditv1.Kind_KIND_KEY_ENCRYPT, allow, svc(Billing)), "restricted", "us-east-1", 1, "g9"),
		key(ev(56, auditv1.Kind_KIND_KEY_GENERATE_DATA_KEY, deny, svc(Billing)), "confidential", "eu-west-1", 0, ""),
	}
	return out
}
