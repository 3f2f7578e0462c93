package storetest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// RunReplicas runs two broker Services as replicas on two handles of one
// fresh, empty state (newPair opens them, as two processes would) and
// checks what replication promises: a freeze, unfreeze, revocation or
// policy reload acknowledged at one replica binds the other's very next
// decision, with no notification delivered.
func RunReplicas(t *testing.T, newPair func(t *testing.T) (broker.Store, broker.Store)) {
	ctx := context.Background()
	setup := func(t *testing.T) (*brokertest.Env, *broker.Service, *broker.Service) {
		e := brokertest.NewEnv(t, "")
		sa, sb := newPair(t)
		return e, e.Replica(t, sa), e.Replica(t, sb)
	}
	issue := func(t *testing.T, e *brokertest.Env, svc *broker.Service, repo string) domainerr.Code {
		t.Helper()
		_, err := svc.IssueSession(ctx, broker.IssueRequest{Token: e.Token(t, repo, "refs/heads/main", time.Hour),
			Targets: []broker.Target{{Role: "deploy", Account: "dev"}}})
		return domainerr.CodeOf(err)
	}

	t.Run("freeze-and-unfreeze-bind-the-other-at-once", func(t *testing.T) {
		e, a, b := setup(t)
		var got []domainerr.Code
		for range 10 {
			if _, err := a.FreezeAccount(ctx, brokertest.AdminPeer, broker.FreezeRequest{Account: "dev", Reason: "incident"}); err != nil {
				t.Fatal(err)
			}
			got = append(got, issue(t, e, b, "acme/app"))
			if _, err := b.UnfreezeAccount(ctx, brokertest.AdminPeer, broker.FreezeRequest{Account: "dev", Reason: "over"}); err != nil {
				t.Fatal(err)
			}
			got = append(got, issue(t, e, a, "acme/app"))
		}
		want := []domainerr.Code{}
		for range 10 {
			want = append(want, domainerr.PermissionDenied, "")
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("(other replica after freeze, after unfreeze)×10 (-got +want):\n%s", diff)
		}
	})

	t.Run("revocation-binds-the-other-at-once", func(t *testing.T) {
		e, a, b := setup(t)
		if code := issue(t, e, b, "acme/app"); code != "" {
			t.Fatalf("before the revocation: %v", code)
		}
		sub := "repo:acme/app:ref:refs/heads/main"
		if _, err := a.RevokeSessions(ctx, brokertest.AdminPeer, broker.RevokeRequest{Subject: sub, Reason: "leak"}); err != nil {
			t.Fatal(err)
		}
		if code := issue(t, e, b, "acme/app"); code != domainerr.PermissionDenied {
			t.Errorf("other replica right after RevokeSessions returned: %q, want PermissionDenied", code)
		}
	})

	t.Run("reload-binds-the-other-at-once", func(t *testing.T) {
		e, a, b := setup(t)
		if code := issue(t, e, b, "acme/app"); code != "" {
			t.Fatalf("before the reload: %v", code)
		}
		// The new policy lets acme/other deploy instead of acme/app.
		e.SetPolicy(strings.Replace(brokertest.DefaultPolicy, "repository: acme/app\n      ref: refs/heads/main", "repository: acme/other\n      ref: refs/heads/main", 1))
		if _, err := a.ReloadPolicy(ctx, brokertest.AdminPeer, false); err != nil {
			t.Fatal(err)
		}
		got := []domainerr.Code{issue(t, e, b, "acme/app"), issue(t, e, b, "acme/other")}
		if diff := cmp.Diff(got, []domainerr.Code{domainerr.PermissionDenied, ""}); diff != "" {
			t.Errorf("other replica right after ReloadPolicy returned: (old repo, new repo) (-got +want):\n%s", diff)
		}
		var reloads []string
		for _, ev := range e.Auditor.Events() {
			if p := ev.GetPolicy(); p != nil && ev.GetDecision().String() == "DECISION_ALLOW" {
				reloads = append(reloads, ev.GetActor().GetPrincipal())
			}
		}
		want := []string{"rpc:" + brokertest.AdminPeer, "replicated:rpc:" + brokertest.AdminPeer}
		if diff := cmp.Diff(reloads, want); diff != "" {
			t.Errorf("reloads audited (by trigger) (-got +want):\n%s", diff)
		}
	})
}
