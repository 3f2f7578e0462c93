package brokertest

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/credmatrix/credmatrix/services/broker/localsts"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/credmatrix/credmatrix/services/broker/sqlite"
)

// Audience is the audience Env's policy accepts.
const Audience = "credmatrix"

// IssuerPlaceholder in a policy given to NewEnv is replaced by the URL of
// the started development issuer.
const IssuerPlaceholder = "{{issuer}}"

// DefaultPolicy lets acme/app deploy to dev from main (role deploy, at
// most 1h) and read prod from tags.
const DefaultPolicy = `version: 1
issuers:
  - name: dev
    url: {{issuer}}
    audiences: [credmatrix]
accounts:
  - id: "111111111111"
    name: dev
    ou: /root/dev
    region: eu-west-1
    residency: eu
  - id: "222222222222"
    name: prod
    ou: /root/prod
    region: us-east-1
roles:
  - name: deploy
    account: dev
    max_duration: 1h
  - name: readonly
    account: dev
  - name: readonly
    account: prod
rules:
  - name: main-branch-deploys-dev
    issuer: dev
    roles: [deploy, readonly]
    accounts: [dev]
    claims:
      repository: acme/app
      ref: refs/heads/main
  - name: tags-read-prod
    issuer: dev
    roles: [readonly]
    accounts: [prod]
    claims:
      repository: acme/app
      ref_type: tag
`

// Env is a broker Service wired to real components: a started development
// issuer, the OIDC verifier, a parsed policy naming that issuer and the
// local provider; only the audit log and the secret hasher are the
// in-memory ones of this package.
type Env struct {
	// Issuer is the started development issuer the policy trusts.
	Issuer *devissuer.Issuer
	// Verifier verifies tokens from Issuer.
	Verifier *oidc.Verifier
	// Policy is the parsed policy the Service started with.
	Policy *policy.Policy
	// Provider is the local provider minting the sessions.
	Provider *localsts.Provider
	// Auditor records the Service's events.
	Auditor *Auditor
	// Hasher names secrets in those events.
	Hasher *Hasher
	// Store is the broker's state, a SQLite file in a temp dir.
	Store *sqlite.Store
	// Service is the broker under test; AdminPeer is its administrator.
	Service *broker.Service

	issuerURL  string
	policyYAML atomic.Pointer[string]
}

// AdminPeer is the mTLS identity Env's Service accepts as an
// administrator.
const AdminPeer = "spiffe://credmatrix.dev/cli"

// SetPolicy replaces the policy text Service.Reload reads next.
func (e *Env) SetPolicy(policyYAML string) {
	text := strings.ReplaceAll(policyYAML, IssuerPlaceholder, e.issuerURL)
	e.policyYAML.Store(&text)
}

// NewEnv starts an Env with policyYAML (DefaultPolicy when empty). The
// issuer stops when the test ends.
func NewEnv(t testing.TB, policyYAML string) *Env {
	t.Helper()
	if policyYAML == "" {
		policyYAML = DefaultPolicy
	}
	iss, err := devissuer.New()
	if err != nil {
		t.Fatal(err)
	}
	url, err := iss.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = iss.Close() })

	pol, err := policy.Parse("policy.yaml", []byte(strings.ReplaceAll(policyYAML, IssuerPlaceholder, url)))
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := broker.NewVerifier(context.Background(), pol)
	if err != nil {
		t.Fatal(err)
	}
	store, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "broker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	key := make([]byte, localsts.KeySize)
	_, _ = rand.Read(key) // crypto/rand.Read never fails
	provider, err := localsts.New(key)
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{Issuer: iss, Verifier: verifier, Policy: pol, Provider: provider, Auditor: NewAuditor(), Hasher: NewHasher(), Store: store, issuerURL: url}
	e.SetPolicy(policyYAML)
	e.Service = e.Replica(t, store)
	return e
}

// Replica returns another broker Service like e.Service (same policy,
// issuer, provider, auditor and policy text to reload) on store: with
// e.Store, or a store sharing its database, it is a second replica.
func (e *Env) Replica(t testing.TB, store broker.Store) *broker.Service {
	t.Helper()
	svc, err := broker.New(broker.Config{
		Policy: e.Policy, Verifier: e.Verifier, Provider: e.Provider, Auditor: e.Auditor, Hasher: e.Hasher, Store: store,
		Admins: []string{AdminPeer},
		Reload: func(ctx context.Context) (*policy.Policy, broker.TokenVerifier, error) {
			p, err := policy.Parse("policy.yaml", []byte(*e.policyYAML.Load()))
			if err != nil {
				return nil, nil, err
			}
			v, err := broker.NewVerifier(ctx, p)
			return p, v, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// Token mints a GitHub Actions token for repo at ref, valid for ttl.
func (e *Env) Token(t testing.TB, repo, ref string, ttl time.Duration) string {
	t.Helper()
	tok, err := e.Issuer.Mint(devissuer.GitHubActionsClaims(repo, ref, "4242", Audience), ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TokenWith mints a token for acme/app on main with claims overridden
// (a nil value removes a claim).
func (e *Env) TokenWith(t testing.TB, ttl time.Duration, override map[string]any) string {
	t.Helper()
	claims := devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "4242", Audience)
	for k, v := range override {
		claims[k] = v
	}
	tok, err := e.Issuer.Mint(claims, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
