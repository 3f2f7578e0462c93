package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/google/go-cmp/cmp"
)

// keyEvents lists "decision reason" of the audited issuer-key events and
// of the session events, in order.
func keyEvents(a *brokertest.Auditor) []string {
	var out []string
	for _, ev := range a.Events() {
		switch ev.GetKind() {
		case auditv1.Kind_KIND_ISSUER_KEYS, auditv1.Kind_KIND_SESSION_ISSUE:
			out = append(out, ev.GetKind().String()+" "+ev.GetDecision().String()+" "+ev.GetReason())
		}
	}
	a.Reset()
	return out
}

// TestIssuerOutageIsAuditedAndUnavailable takes the token issuer down
// under a running broker: inside the grace the cached keys keep issuing
// (the outage is audited once), past it the request is refused with
// UNAVAILABLE (audited as an error, not a denial), and the recovery is
// audited.
func TestIssuerOutageIsAuditedAndUnavailable(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	e.Issuer.SetCacheControl("max-age=300")
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	lifetime := oidc.KeyLifetime{MinRefresh: time.Minute, MaxRefresh: 15 * time.Minute, Grace: 10 * time.Minute, Cooldown: 30 * time.Second}
	v, err := broker.NewVerifier(context.Background(), e.Policy, oidc.WithClock(clock), oidc.WithKeyLifetime(lifetime))
	if err != nil {
		t.Fatal(err)
	}
	var logged []oidc.KeyEventKind
	svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: v, Provider: e.Provider, Auditor: e.Auditor, Hasher: e.Hasher, Store: e.Store,
		Clock: clock, KeyEventLog: func(ev oidc.KeyEvent, _ error) { logged = append(logged, ev.Kind) }})
	if err != nil {
		t.Fatal(err)
	}
	tok := e.Token(t, "acme/app", "refs/heads/main", time.Hour)
	issue := func() domainerr.Code {
		_, err := svc.IssueSession(context.Background(), broker.IssueRequest{Token: tok, Targets: deployDev()})
		return domainerr.CodeOf(err)
	}
	if code := issue(); code != "" {
		t.Fatal(code)
	}
	keyEvents(e.Auditor)

	e.Issuer.SetAvailable(false)
	advance(6 * time.Minute) // stale; refresh fails; grace until 15m
	got := []domainerr.Code{issue()}
	steps := [][]string{keyEvents(e.Auditor)}
	advance(10 * time.Minute) // past the grace
	got = append(got, issue())
	steps = append(steps, keyEvents(e.Auditor))
	e.Issuer.SetAvailable(true)
	advance(lifetime.Cooldown)
	got = append(got, issue())
	steps = append(steps, keyEvents(e.Auditor))

	if diff := cmp.Diff(got, []domainerr.Code{"", domainerr.Unavailable, ""}); diff != "" {
		t.Errorf("(inside the grace, past it, recovered) (-got +want):\n%s", diff)
	}
	want := [][]string{
		{
			"KIND_ISSUER_KEYS DECISION_ERROR issuer outage: serving cached signing keys within the grace",
			"KIND_SESSION_ISSUE DECISION_ALLOW allowed by rule \"main-branch-deploys-dev\"",
		},
		{
			"KIND_ISSUER_KEYS DECISION_ERROR issuer outage: no usable signing keys; tokens refused as unavailable",
			"KIND_SESSION_ISSUE DECISION_ERROR token issuer unavailable; no credentials issued",
		},
		{
			"KIND_ISSUER_KEYS DECISION_ALLOW issuer recovered",
			"KIND_SESSION_ISSUE DECISION_ALLOW allowed by rule \"main-branch-deploys-dev\"",
		},
	}
	if diff := cmp.Diff(steps, want); diff != "" {
		t.Errorf("audit events (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(logged, []oidc.KeyEventKind{oidc.KeysRefreshFailed, oidc.KeysUnavailable, oidc.KeysRecovered}); diff != "" {
		t.Errorf("key events logged (-got +want):\n%s", diff)
	}
}

// TestIssuerOutageFailsClosedWithoutAudit: the outage refusal is audited
// before it is answered; with audit down the caller is told audit is
// unavailable.
func TestIssuerOutageFailsClosedWithoutAudit(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	tok := e.Token(t, "acme/app", "refs/heads/main", time.Hour)
	e.Issuer.SetAvailable(false) // nothing fetched yet: discovery fails
	e.Auditor.SetFailing(true)
	_, err := e.Service.IssueSession(context.Background(), broker.IssueRequest{Token: tok, Targets: deployDev()})
	var be *domainerr.Error
	if !errorsAs(err, &be) || be.Code != domainerr.Unavailable || be.Message != "audit log unavailable; no credentials issued" {
		t.Errorf("err = %v, want the audit-unavailable error", err)
	}
}

// TestReloadRefetchesKeysWithUnchangedPolicy withdraws a key at the
// issuer: a reload with the same policy file (SIGHUP, ReloadPolicy)
// refetches the keys, so the withdrawn key stops verifying at once, and
// the withdrawal is audited.
func TestReloadRefetchesKeysWithUnchangedPolicy(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	compromised := e.Issuer.KeyID()
	old := e.Token(t, "acme/app", "refs/heads/main", time.Hour)
	issue := func(tok string) domainerr.Code {
		_, err := e.Service.IssueSession(context.Background(), broker.IssueRequest{Token: tok, Targets: deployDev()})
		return domainerr.CodeOf(err)
	}
	if code := issue(old); code != "" {
		t.Fatal(code)
	}
	if err := e.Issuer.RotateKey(); err != nil {
		t.Fatal(err)
	}
	if err := e.Issuer.WithdrawKey(compromised); err != nil {
		t.Fatal(err)
	}
	before := issue(old) // the cached set is still fresh
	res, err := e.Service.Reload(context.Background(), "signal")
	if err != nil {
		t.Fatal(err)
	}
	got := []any{before, res.Changed, res.KeysRefreshed, issue(old), issue(e.Token(t, "acme/app", "refs/heads/main", time.Hour))}
	if diff := cmp.Diff(got, []any{domainerr.Code(""), false, true, domainerr.Unauthenticated, domainerr.Code("")}); diff != "" {
		t.Errorf("(before reload, changed, keys refreshed, withdrawn key after, new key after) (-got +want):\n%s", diff)
	}
	var audited []string
	for _, ev := range e.Auditor.Events() {
		switch ev.GetKind() {
		case auditv1.Kind_KIND_ISSUER_KEYS:
			audited = append(audited, ev.GetAdmin().GetAction())
		case auditv1.Kind_KIND_POLICY_RELOAD:
			audited = append(audited, ev.GetReason())
		}
	}
	want := []string{
		"issuer signing keys changed: added [" + e.Issuer.KeyID() + "]; withdrawn [" + compromised + "]",
		"trust policy unchanged; signing keys refetched",
	}
	if diff := cmp.Diff(audited, want); diff != "" {
		t.Errorf("audited (-got +want):\n%s", diff)
	}
}

func errorsAs(err error, target **domainerr.Error) bool { return errors.As(err, target) }
