package server

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/hashicorp/go-hclog"
)

// TestWatchReloadsOnFileChange runs the reload loop against a policy
// file: a broken edit is refused and audited while the old policy stays;
// a good edit takes effect.
func TestWatchReloadsOnFileChange(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	path := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(text string) {
		t.Helper()
		text = strings.ReplaceAll(text, brokertest.IssuerPlaceholder, e.Issuer.URL())
		// Replace the file atomically, as a ConfigMap update or an editor's
		// save-by-rename does.
		if err := os.WriteFile(path+".tmp", []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write(brokertest.DefaultPolicy)
	svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: e.Provider, Auditor: e.Auditor,
		Hasher: e.Hasher, Store: e.Store,
		Reload: func(ctx context.Context) (*policy.Policy, broker.TokenVerifier, error) {
			return loadPolicy(ctx, path, oidc.DefaultKeyLifetime)
		}})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{svc: svc, log: hclog.NewNullLogger(), cfg: Config{PolicyFile: path, PolicyReloadInterval: 5 * time.Millisecond}, lastSeen: e.Policy.SHA256()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.watch(ctx) }()
	defer func() { cancel(); <-done }()

	reloads := func() []string {
		var out []string
		for _, ev := range e.Auditor.Events() {
			if ev.GetKind() == auditv1.Kind_KIND_POLICY_RELOAD {
				out = append(out, ev.GetDecision().String())
			}
		}
		return out
	}
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(reloads()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("reload events %v, want %d", reloads(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	before := svc.Policy().SHA256()
	write(strings.Replace(brokertest.DefaultPolicy, "max_duration: 1h", "max_duration: forever", 1))
	waitFor(1)
	if svc.Policy().SHA256() != before {
		t.Fatal("a broken policy file replaced the policy in force")
	}
	write(strings.Replace(brokertest.DefaultPolicy, "max_duration: 1h", "max_duration: 2h", 1))
	waitFor(2)
	if got := reloads(); got[0] != "DECISION_DENY" || got[1] != "DECISION_ALLOW" {
		t.Errorf("reload events %v, want a refusal then a reload", got)
	}
	if svc.Policy().SHA256() == before || svc.Policy().Roles()[0].MaxDuration != 2*time.Hour {
		t.Error("the good policy file did not take effect")
	}
}

// TestSIGHUPRefetchesKeys sends the broker process SIGHUP with the
// policy file unchanged: the reload loop refetches the issuers' keys, so
// a key the issuer withdrew stops verifying at once.
func TestSIGHUPRefetchesKeys(t *testing.T) {
	e := brokertest.NewEnv(t, "")
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(brokertest.DefaultPolicy, brokertest.IssuerPlaceholder, e.Issuer.URL())), 0o600); err != nil {
		t.Fatal(err)
	}
	pol, verifier, err := loadPolicy(context.Background(), path, oidc.DefaultKeyLifetime)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := broker.New(broker.Config{Policy: pol, Verifier: verifier, Provider: e.Provider, Auditor: e.Auditor,
		Hasher: e.Hasher, Store: e.Store,
		Reload: func(ctx context.Context) (*policy.Policy, broker.TokenVerifier, error) {
			return loadPolicy(ctx, path, oidc.DefaultKeyLifetime)
		}})
	if err != nil {
		t.Fatal(err)
	}
	issue := func(tok string) domainerr.Code {
		_, err := svc.IssueSession(context.Background(), broker.IssueRequest{Token: tok, Targets: []broker.Target{{Role: "deploy", Account: "dev"}}})
		return domainerr.CodeOf(err)
	}
	compromised := e.Issuer.KeyID()
	old := e.Token(t, "acme/app", "refs/heads/main", time.Hour)
	if code := issue(old); code != "" {
		t.Fatal(code)
	}
	if err := e.Issuer.RotateKey(); err != nil {
		t.Fatal(err)
	}
	if err := e.Issuer.WithdrawKey(compromised); err != nil {
		t.Fatal(err)
	}
	if code := issue(old); code != "" {
		t.Fatalf("before SIGHUP: %v (the cached keys are fresh)", code)
	}

	// Our own registration keeps SIGHUP from killing the test process
	// whether or not the loop has registered yet.
	mine := make(chan os.Signal, 8)
	signal.Notify(mine, syscall.SIGHUP)
	defer signal.Stop(mine)
	s := &Server{svc: svc, log: hclog.NewNullLogger(), cfg: Config{PolicyFile: path}, lastSeen: pol.SHA256()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.watch(ctx) }()
	defer func() { cancel(); <-done }()

	reloads := func() []string {
		var out []string
		for _, ev := range e.Auditor.Events() {
			if ev.GetKind() == auditv1.Kind_KIND_POLICY_RELOAD {
				out = append(out, ev.GetActor().GetPrincipal()+": "+ev.GetReason())
			}
		}
		return out
	}
	// The loop may register after a signal is sent: send until it acts.
	deadline := time.Now().Add(10 * time.Second)
	for len(reloads()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no reload after SIGHUP")
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		<-mine
		time.Sleep(20 * time.Millisecond)
	}
	if got, want := reloads()[0], "signal: trust policy unchanged; signing keys refetched"; got != want {
		t.Errorf("reload event %q, want %q", got, want)
	}
	if code := issue(old); code != domainerr.Unauthenticated {
		t.Errorf("withdrawn key after SIGHUP: %v, want unauthenticated", code)
	}
}
