package broker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/platform/pgtest"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/localsts"
	"github.com/credmatrix/credmatrix/services/broker/postgres"
	"github.com/credmatrix/credmatrix/services/broker/sqlite"
	"github.com/google/go-cmp/cmp"
)

// singleUsePolicy is DefaultPolicy with single-use tokens and a role
// whose session policy needs a claim (environment) tokens may lack.
var singleUsePolicy = strings.Replace(strings.Replace(brokertest.DefaultPolicy,
	"    audiences: [credmatrix]\n", "    audiences: [credmatrix]\n    single_use: true\n", 1),
	"  - name: readonly\n    account: dev\n", `  - name: readonly
    account: dev
    session_policy: |
      {"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{{claim.environment}}/*"}]}
`, 1)

// flakyProvider is the local provider, failing while fail is set.
type flakyProvider struct {
	*localsts.Provider
	mu      sync.Mutex
	fail    bool
	onIssue func() // called first, when set
}

func (p *flakyProvider) Issue(ctx context.Context, spec broker.SessionSpec) (broker.Credentials, error) {
	p.mu.Lock()
	fail, hook := p.fail, p.onIssue
	p.mu.Unlock()
	if hook != nil {
		hook()
		if err := ctx.Err(); err != nil {
			return broker.Credentials{}, err
		}
	}
	if fail {
		return broker.Credentials{}, errors.Join(broker.ErrProviderUnavailable, errors.New("Throttling"))
	}
	return p.Provider.Issue(ctx, spec)
}

// TestSingleUseConsumedOnlyOnIssuance sends one single-use token first
// in a request that fails or is refused, then in the correct request:
// the first never consumes the token, the correct one issues, and only
// then is the token spent.
func TestSingleUseConsumedOnlyOnIssuance(t *testing.T) {
	tests := []struct {
		name  string
		first func(t *testing.T, e *brokertest.Env, p *flakyProvider, svc *broker.Service, tok string) error
		code  domainerr.Code
	}{
		{"denied/wrong-account", func(t *testing.T, e *brokertest.Env, _ *flakyProvider, svc *broker.Service, tok string) error {
			return issueWith(svc, tok, broker.Target{Role: "deploy", Account: "prod"})
		}, domainerr.PermissionDenied},
		{"denied/residency", func(t *testing.T, e *brokertest.Env, _ *flakyProvider, svc *broker.Service, tok string) error {
			return issueWith(svc, tok, broker.Target{Role: "deploy", Account: "dev", Region: "us-east-1"})
		}, domainerr.PermissionDenied},
		{"denied/template-needs-a-missing-claim", func(t *testing.T, e *brokertest.Env, _ *flakyProvider, svc *broker.Service, tok string) error {
			return issueWith(svc, tok, broker.Target{Role: "readonly", Account: "dev"})
		}, domainerr.PermissionDenied},
		{"denied/frozen", func(t *testing.T, e *brokertest.Env, _ *flakyProvider, svc *broker.Service, tok string) error {
			if _, err := svc.FreezeAccount(context.Background(), brokertest.AdminPeer, broker.FreezeRequest{Account: "dev", Reason: "drill"}); err != nil {
				t.Fatal(err)
			}
			err := issueWith(svc, tok, broker.Target{Role: "deploy", Account: "dev"})
			if _, uerr := svc.UnfreezeAccount(context.Background(), brokertest.AdminPeer, broker.FreezeRequest{Account: "dev", Reason: "drill over"}); uerr != nil {
				t.Fatal(uerr)
			}
			return err
		}, domainerr.PermissionDenied},
		{"invalid/scope-down", func(t *testing.T, e *brokertest.Env, _ *flakyProvider, svc *broker.Service, tok string) error {
			return issueWith(svc, tok, broker.Target{Role: "deploy", Account: "dev", Policy: `{"Statement":[{"Effect":"Deny","Action":"*","Resource":"*","Action":"s3:*"}]}`})
		}, domainerr.Invalid},
		{"failed/audit-down", func(t *testing.T, e *brokertest.Env, _ *flakyProvider, svc *broker.Service, tok string) error {
			e.Auditor.SetFailing(true)
			defer e.Auditor.SetFailing(false)
			return issueWith(svc, tok, broker.Target{Role: "deploy", Account: "dev"})
		}, domainerr.Unavailable},
		{"failed/audit-down-after-issuance", func(t *testing.T, e *brokertest.Env, _ *flakyProvider, svc *broker.Service, tok string) error {
			e.Auditor.FailAfter(0) // credentials minted, their event refused
			defer e.Auditor.SetFailing(false)
			return issueWith(svc, tok, broker.Target{Role: "deploy", Account: "dev"})
		}, domainerr.Unavailable},
		{"failed/provider", func(t *testing.T, e *brokertest.Env, p *flakyProvider, svc *broker.Service, tok string) error {
			p.mu.Lock()
			p.fail = true
			p.mu.Unlock()
			defer func() { p.mu.Lock(); p.fail = false; p.mu.Unlock() }()
			return issueWith(svc, tok, broker.Target{Role: "deploy", Account: "dev"})
		}, domainerr.Unavailable},
		{"failed/caller-cancelled-mid-issuance", func(t *testing.T, e *brokertest.Env, p *flakyProvider, svc *broker.Service, tok string) error {
			ctx, cancel := context.WithCancel(context.Background())
			p.mu.Lock()
			p.onIssue = cancel // the caller goes away while STS is called
			p.mu.Unlock()
			defer func() { p.mu.Lock(); p.onIssue = nil; p.mu.Unlock() }()
			_, err := svc.IssueSession(ctx, broker.IssueRequest{Token: tok, Targets: []broker.Target{{Role: "deploy", Account: "dev"}}})
			return err
		}, domainerr.Unavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := brokertest.NewEnv(t, singleUsePolicy)
			p := &flakyProvider{Provider: e.Provider}
			svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: p, Auditor: e.Auditor, Hasher: e.Hasher,
				Store: e.Store, Admins: []string{brokertest.AdminPeer}})
			if err != nil {
				t.Fatal(err)
			}
			tok := e.Token(t, "acme/app", "refs/heads/main", time.Hour)
			got := []domainerr.Code{domainerr.CodeOf(tc.first(t, e, p, svc, tok))}
			e.Auditor.Reset()
			got = append(got,
				domainerr.CodeOf(issueWith(svc, tok, broker.Target{Role: "deploy", Account: "dev"})),
				domainerr.CodeOf(issueWith(svc, tok, broker.Target{Role: "deploy", Account: "dev"})))
			if diff := cmp.Diff(got, []domainerr.Code{tc.code, "", domainerr.Unauthenticated}); diff != "" {
				t.Errorf("(first request, the correct one, a replay) (-got +want):\n%s", diff)
			}
			evs := e.Auditor.Events()
			if r := evs[len(evs)-1].GetReason(); r != "token verification failed: replayed single-use token" {
				t.Errorf("replay audited as %q", r)
			}
		})
	}
}

func issueWith(svc *broker.Service, tok string, targets ...broker.Target) error {
	_, err := svc.IssueSession(context.Background(), broker.IssueRequest{Token: tok, Targets: targets})
	return err
}

// gatedProvider is the local provider holding every Issue until the
// gate opens, telling entered when one arrives.
type gatedProvider struct {
	*localsts.Provider
	entered chan struct{}
	gate    chan struct{}
}

func (p *gatedProvider) Issue(ctx context.Context, spec broker.SessionSpec) (broker.Credentials, error) {
	p.entered <- struct{}{}
	<-p.gate
	return p.Provider.Issue(ctx, spec)
}

// TestSingleUseOneWinnerAcrossReplicas uses one single-use token at two
// broker replicas sharing a state store (SQLite, PostgreSQL): while the
// first request holds the token inside the provider, every other use at
// either replica is refused (audited as a concurrent use); the first
// issues; later uses are refused as replays.
func TestSingleUseOneWinnerAcrossReplicas(t *testing.T) {
	stores := map[string]func(t *testing.T) (broker.Store, broker.Store){
		"sqlite": func(t *testing.T) (broker.Store, broker.Store) {
			path := t.TempDir() + "/broker.db"
			return openSQLite(t, path), openSQLite(t, path)
		},
		"postgres": func(t *testing.T) (broker.Store, broker.Store) {
			dsn := pgtest.Start(t).NewDatabase(t)
			return openPostgres(t, dsn), openPostgres(t, dsn)
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			e := brokertest.NewEnv(t, singleUsePolicy)
			a, b := open(t)
			gated := &gatedProvider{Provider: e.Provider, entered: make(chan struct{}, 1), gate: make(chan struct{})}
			replica := func(store broker.Store, p broker.Provider) *broker.Service {
				svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: p, Auditor: e.Auditor, Hasher: e.Hasher, Store: store})
				if err != nil {
					t.Fatal(err)
				}
				return svc
			}
			first, other := replica(a, gated), replica(b, e.Provider)
			tok := e.Token(t, "acme/app", "refs/heads/main", time.Hour)
			deploy := broker.Target{Role: "deploy", Account: "dev"}

			done := make(chan error, 1)
			go func() { done <- issueWith(first, tok, deploy) }()
			<-gated.entered // the first request holds the token
			var during []domainerr.Code
			for range 3 {
				during = append(during, domainerr.CodeOf(issueWith(other, tok, deploy)))
			}
			close(gated.gate)
			if err := <-done; err != nil {
				t.Fatalf("the first request: %v", err)
			}
			after := []domainerr.Code{domainerr.CodeOf(issueWith(other, tok, deploy))}
			go func() { <-gated.entered }() // in case the replay got that far (it must not)
			after = append(after, domainerr.CodeOf(issueWith(first, tok, deploy)))
			want := []domainerr.Code{domainerr.Unauthenticated, domainerr.Unauthenticated, domainerr.Unauthenticated}
			if diff := cmp.Diff([][]domainerr.Code{during, after}, [][]domainerr.Code{want, want[:2]}); diff != "" {
				t.Errorf("(uses while held, uses after) (-got +want):\n%s", diff)
			}
			var reasons []string
			issued := 0
			for _, ev := range e.Auditor.Events() {
				if ev.GetDecision() == auditv1.Decision_DECISION_ALLOW {
					issued++
					continue
				}
				reasons = append(reasons, ev.GetReason())
			}
			wantReasons := []string{
				"token verification failed: single-use token used by two requests at once",
				"token verification failed: single-use token used by two requests at once",
				"token verification failed: single-use token used by two requests at once",
				"token verification failed: replayed single-use token",
				"token verification failed: replayed single-use token",
			}
			if diff := cmp.Diff([]any{issued, reasons}, []any{1, wantReasons}); diff != "" {
				t.Errorf("(issuances, refusals audited) (-got +want):\n%s", diff)
			}
		})
	}
}

func openSQLite(t *testing.T, path string) broker.Store {
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openPostgres(t *testing.T, dsn string) broker.Store {
	s, err := postgres.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
