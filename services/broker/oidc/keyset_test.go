package oidc_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/google/go-cmp/cmp"
)

// clock is a settable clock shared by an issuer and a verifier.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now().Truncate(time.Second)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// jwksCounter counts requests for the JWKS (discovery excluded) and can
// make them fail while discovery works.
type jwksCounter struct {
	n    atomic.Int32
	fail atomic.Bool
}

func (c *jwksCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == devissuer.JWKSPath {
		c.n.Add(1)
		if c.fail.Load() {
			return nil, errors.New("connection refused")
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}

// events records key events.
type events struct {
	mu  sync.Mutex
	evs []oidc.KeyEvent
}

func (e *events) record(_ context.Context, ev oidc.KeyEvent) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

// kinds returns the kinds seen, and forgets them.
func (e *events) take() []oidc.KeyEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := e.evs
	e.evs = nil
	for i := range out {
		out[i].Err = nil // causes are for logs; tests compare the rest
	}
	return out
}

var lifetime = oidc.KeyLifetime{MinRefresh: time.Minute, MaxRefresh: 15 * time.Minute, Grace: time.Hour, Cooldown: 30 * time.Second}

type rig struct {
	clock    *clock
	issuer   *devissuer.Issuer
	verifier *oidc.Verifier
	fetches  *jwksCounter
	events   *events
}

func newRig(t *testing.T, cacheControl string) *rig {
	t.Helper()
	r := &rig{clock: newClock(), fetches: &jwksCounter{}, events: &events{}}
	r.issuer = startIssuer(t, devissuer.WithClock(r.clock.Now))
	r.issuer.SetCacheControl(cacheControl)
	v, err := oidc.NewVerifier(context.Background(), []oidc.IssuerConfig{{URL: r.issuer.URL(), Audiences: []string{audience}}},
		oidc.WithHTTPClient(&http.Client{Transport: r.fetches, Timeout: 5 * time.Second}), oidc.WithClock(r.clock.Now), oidc.WithKeyLifetime(lifetime))
	if err != nil {
		t.Fatal(err)
	}
	v.OnKeyEvent(r.events.record)
	r.verifier = v
	return r
}

func (r *rig) token(t *testing.T) string {
	t.Helper()
	return mint(t, r.issuer, 24*time.Hour, nil)
}

// verdict is "ok", "unauthenticated" or "unavailable".
func (r *rig) verdict(tok string) string {
	_, err := r.verifier.Verify(context.Background(), tok)
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, oidc.ErrIssuerUnavailable) && !errors.Is(err, oidc.ErrUnauthenticated):
		return "unavailable"
	case errors.Is(err, oidc.ErrUnauthenticated) && !errors.Is(err, oidc.ErrIssuerUnavailable):
		return "unauthenticated"
	default:
		return "unexpected: " + err.Error()
	}
}

// TestWithdrawnKeyRefusedWithinRefreshInterval withdraws the key a token
// was signed with, as an issuer does after a compromise: the token keeps
// verifying only until the key set's refresh time, which honours the
// issuer's Cache-Control max-age within the configured bounds.
func TestWithdrawnKeyRefusedWithinRefreshInterval(t *testing.T) {
	tests := []struct {
		name, cacheControl string
		refresh            time.Duration
	}{
		{"max-age-honoured", "public, max-age=300", 5 * time.Minute},
		{"max-age-capped", "max-age=86400", 15 * time.Minute},
		{"max-age-raised-to-min", "max-age=5", time.Minute},
		{"no-store-min", "no-store", time.Minute},
		{"no-header-max", "", 15 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.cacheControl)
			compromised := r.issuer.KeyID()
			old := r.token(t)
			if got := r.verdict(old); got != "ok" {
				t.Fatalf("before withdrawal: %s", got)
			}
			if err := r.issuer.RotateKey(); err != nil {
				t.Fatal(err)
			}
			if err := r.issuer.WithdrawKey(compromised); err != nil {
				t.Fatal(err)
			}
			fresh := r.token(t)
			r.clock.Advance(tc.refresh - time.Second)
			got := []string{r.verdict(old)} // still cached: the bounded exposure
			r.clock.Advance(time.Second)
			got = append(got, r.verdict(old), r.verdict(fresh))
			if diff := cmp.Diff(got, []string{"ok", "unauthenticated", "ok"}); diff != "" {
				t.Errorf("(old token 1s before the refresh, old token at the refresh, new token) (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(r.events.take(), []oidc.KeyEvent{{Kind: oidc.KeysChanged, Issuer: r.issuer.URL(), Added: []string{r.issuer.KeyID()}, Withdrawn: []string{compromised}}}); diff != "" {
				t.Errorf("key events (-got +want):\n%s", diff)
			}
		})
	}
}

// TestSameKidRotationAccepted replaces the key material under the same
// kid: the first token signed with the new material triggers one early
// refresh (once the cooldown since the last fetch has passed) and is
// accepted; tokens of the replaced material are refused from then on.
func TestSameKidRotationAccepted(t *testing.T) {
	r := newRig(t, "max-age=900")
	old := r.token(t)
	if got := r.verdict(old); got != "ok" {
		t.Fatal(got)
	}
	kid := r.issuer.KeyID()
	if err := r.issuer.ReplaceKey(); err != nil {
		t.Fatal(err)
	}
	rotated := r.token(t)
	before := r.fetches.n.Load()
	got := []string{r.verdict(rotated)} // within the cooldown of the first fetch
	r.clock.Advance(lifetime.Cooldown)
	got = append(got, r.verdict(rotated), r.verdict(rotated), r.verdict(old))
	if diff := cmp.Diff(got, []string{"unauthenticated", "ok", "ok", "unauthenticated"}); diff != "" {
		t.Errorf("(rotated within cooldown, rotated after, again, replaced) (-got +want):\n%s", diff)
	}
	if n := r.fetches.n.Load() - before; n != 1 {
		t.Errorf("%d key fetches for the rotation, want 1", n)
	}
	if diff := cmp.Diff(r.events.take(), []oidc.KeyEvent{{Kind: oidc.KeysChanged, Issuer: r.issuer.URL(), Replaced: []string{kid}}}); diff != "" {
		t.Errorf("key events (-got +want):\n%s", diff)
	}
}

// TestForgedSignaturesCostOneFetchPerCooldown sends many tokens whose
// known kid fails to verify: they may cause one early refresh per
// cooldown, never one per token.
func TestForgedSignaturesCostOneFetchPerCooldown(t *testing.T) {
	r := newRig(t, "max-age=900")
	good := r.token(t)
	if got := r.verdict(good); got != "ok" {
		t.Fatal(got)
	}
	forged := brokertest.TamperSignature(good)
	r.clock.Advance(lifetime.Cooldown)
	before := r.fetches.n.Load()
	for range 50 {
		if got := r.verdict(forged); got != "unauthenticated" {
			t.Fatalf("forged token: %s", got)
		}
	}
	if n := r.fetches.n.Load() - before; n != 1 {
		t.Errorf("%d key fetches for 50 forged tokens within one cooldown, want 1", n)
	}
}

// TestIssuerDownWithCachedKeys takes the issuer down: the cached keys
// keep verifying until the end of the grace (refresh time + grace), then
// tokens are refused as unavailable, not unauthenticated; the outage,
// its end of grace and the recovery are each reported once.
func TestIssuerDownWithCachedKeys(t *testing.T) {
	r := newRig(t, "max-age=300")
	tok := r.token(t)
	if got := r.verdict(tok); got != "ok" {
		t.Fatal(got)
	}
	start := r.clock.Now()
	graceEnd := start.Add(5*time.Minute + lifetime.Grace)
	r.issuer.SetAvailable(false)
	before := r.fetches.n.Load()

	var got []string
	r.clock.Advance(10 * time.Minute) // stale: a refresh is tried and fails
	got = append(got, r.verdict(tok), r.verdict(tok))
	r.clock.Advance(30 * time.Minute) // still inside the grace
	got = append(got, r.verdict(tok))
	r.clock.Advance(graceEnd.Sub(r.clock.Now()) - time.Second)
	got = append(got, r.verdict(tok))
	r.clock.Advance(time.Second) // the grace is over
	got = append(got, r.verdict(tok), r.verdict(tok))
	if diff := cmp.Diff(got, []string{"ok", "ok", "ok", "ok", "unavailable", "unavailable"}); diff != "" {
		t.Errorf("(10m, 10m again, 40m, 1s before the grace ends, at its end, again) (-got +want):\n%s", diff)
	}
	// One attempt per visit after the cooldown, none in between.
	if n := r.fetches.n.Load() - before; n != 3 {
		t.Errorf("%d fetch attempts during the outage, want 3 (one per visit past the cooldown)", n)
	}
	wantEvents := []oidc.KeyEvent{
		{Kind: oidc.KeysRefreshFailed, Issuer: r.issuer.URL(), Until: graceEnd},
		{Kind: oidc.KeysUnavailable, Issuer: r.issuer.URL()},
	}
	if diff := cmp.Diff(r.events.take(), wantEvents); diff != "" {
		t.Errorf("outage events (-got +want):\n%s", diff)
	}

	r.issuer.SetAvailable(true)
	got = []string{r.verdict(tok)} // within the cooldown of the last attempt
	r.clock.Advance(lifetime.Cooldown)
	got = append(got, r.verdict(tok))
	if diff := cmp.Diff(got, []string{"unavailable", "ok"}); diff != "" {
		t.Errorf("(back within the cooldown, after it) (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(r.events.take(), []oidc.KeyEvent{{Kind: oidc.KeysRecovered, Issuer: r.issuer.URL()}}); diff != "" {
		t.Errorf("recovery events (-got +want):\n%s", diff)
	}
}

// TestUnknownKidDuringOutageIsUnavailable: a token naming a key the
// broker has not seen cannot be checked while the issuer is down, so it
// is refused as unavailable (retry), not as a bad token.
func TestUnknownKidDuringOutageIsUnavailable(t *testing.T) {
	r := newRig(t, "max-age=900")
	if got := r.verdict(r.token(t)); got != "ok" {
		t.Fatal(got)
	}
	if err := r.issuer.RotateKey(); err != nil {
		t.Fatal(err)
	}
	rotated := r.token(t)
	r.issuer.SetAvailable(false)
	r.clock.Advance(lifetime.Cooldown)
	if got := r.verdict(rotated); got != "unavailable" {
		t.Errorf("unknown kid while the issuer is down: %s, want unavailable", got)
	}
}

// TestFirstFetchFailsIsUnavailable: with no key ever fetched there is no
// grace.
func TestFirstFetchFailsIsUnavailable(t *testing.T) {
	r := newRig(t, "max-age=900")
	tok := r.token(t)
	r.fetches.fail.Store(true) // discovery works, the JWKS does not
	if got := r.verdict(tok); got != "unavailable" {
		t.Errorf("verdict = %s, want unavailable", got)
	}
	if diff := cmp.Diff(r.events.take(), []oidc.KeyEvent{{Kind: oidc.KeysUnavailable, Issuer: r.issuer.URL()}}); diff != "" {
		t.Errorf("key events (-got +want):\n%s", diff)
	}
	r.fetches.fail.Store(false)
	r.clock.Advance(lifetime.Cooldown)
	if got := r.verdict(tok); got != "ok" {
		t.Errorf("after recovery: %s", got)
	}
}

// TestRefreshKeysDropsWithdrawnKeysAtOnce is what SIGHUP and ReloadPolicy
// do: refetch now, whatever the schedule.
func TestRefreshKeysDropsWithdrawnKeysAtOnce(t *testing.T) {
	r := newRig(t, "max-age=900")
	compromised := r.issuer.KeyID()
	old := r.token(t)
	if got := r.verdict(old); got != "ok" {
		t.Fatal(got)
	}
	if err := r.issuer.RotateKey(); err != nil {
		t.Fatal(err)
	}
	if err := r.issuer.WithdrawKey(compromised); err != nil {
		t.Fatal(err)
	}
	if got := r.verdict(old); got != "ok" {
		t.Fatalf("before the refresh: %s (the set is fresh for 15m)", got)
	}
	if err := r.verifier.RefreshKeys(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := r.verdict(old); got != "unauthenticated" {
		t.Errorf("after RefreshKeys: %s, want unauthenticated", got)
	}
	r.issuer.SetAvailable(false)
	if err := r.verifier.RefreshKeys(context.Background()); !errors.Is(err, oidc.ErrIssuerUnavailable) {
		t.Errorf("RefreshKeys with the issuer down = %v, want ErrIssuerUnavailable", err)
	}
	if got := r.verdict(r.token(t)); got != "ok" {
		t.Errorf("cached keys after a failed RefreshKeys: %s, want ok (inside the grace)", got)
	}
}

// TestAdoptKeysKeepsTheCache: a reloaded policy's verifier starts with
// the keys (and the grace) of the one it replaces.
func TestAdoptKeysKeepsTheCache(t *testing.T) {
	r := newRig(t, "max-age=900")
	tok := r.token(t)
	if got := r.verdict(tok); got != "ok" {
		t.Fatal(got)
	}
	next, err := oidc.NewVerifier(context.Background(), []oidc.IssuerConfig{{URL: r.issuer.URL(), Audiences: []string{audience}}},
		oidc.WithClock(r.clock.Now), oidc.WithKeyLifetime(lifetime))
	if err != nil {
		t.Fatal(err)
	}
	next.AdoptKeys(r.verifier)
	r.issuer.SetAvailable(false)
	r.clock.Advance(20 * time.Minute)
	if _, err := next.Verify(context.Background(), tok); err != nil {
		t.Errorf("adopted keys with the issuer down: %v", err)
	}
}

func TestKeyLifetimeValidated(t *testing.T) {
	for _, l := range []oidc.KeyLifetime{
		{MinRefresh: 0, MaxRefresh: time.Minute},
		{MinRefresh: time.Hour, MaxRefresh: time.Minute},
		{MinRefresh: time.Minute, MaxRefresh: time.Minute, Grace: -1},
	} {
		if _, err := oidc.NewVerifier(context.Background(), []oidc.IssuerConfig{{URL: "https://issuer.example", Audiences: []string{audience}}}, oidc.WithKeyLifetime(l)); err == nil {
			t.Errorf("NewVerifier accepted %+v", l)
		}
	}
}

func TestRefreshAfter(t *testing.T) {
	tests := []struct {
		name   string
		header http.Header
		want   time.Duration
	}{
		{"none", http.Header{}, 15 * time.Minute},
		{"max-age", http.Header{"Cache-Control": {"public, max-age=600"}}, 10 * time.Minute},
		{"max-age-less-age", http.Header{"Cache-Control": {"max-age=600"}, "Age": {"300"}}, 5 * time.Minute},
		{"age-beyond-max-age", http.Header{"Cache-Control": {"max-age=600"}, "Age": {"9000"}}, time.Minute},
		{"capped", http.Header{"Cache-Control": {"max-age=99999999999999999"}}, 15 * time.Minute},
		{"raised", http.Header{"Cache-Control": {"max-age=0"}}, time.Minute},
		{"no-cache", http.Header{"Cache-Control": {"max-age=600, no-cache"}}, time.Minute},
		{"garbage", http.Header{"Cache-Control": {"max-age=soon"}}, 15 * time.Minute},
		{"negative", http.Header{"Cache-Control": {"max-age=-5"}}, 15 * time.Minute},
		{"quoted", http.Header{"Cache-Control": {`max-age="120"`}}, 2 * time.Minute},
		{"first-wins", http.Header{"Cache-Control": {"max-age=120", "max-age=600"}}, 2 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := oidc.RefreshAfter(lifetime, tc.header); got != tc.want {
				t.Errorf("refresh after %s, want %s", got, tc.want)
			}
		})
	}
}
