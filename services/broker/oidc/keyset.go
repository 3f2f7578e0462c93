package oidc

import (
	"context"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// KeyLifetime says how long an issuer's signing keys are trusted. Keys
// are refetched on a schedule, so a key the issuer withdraws (after a
// compromise, say) stops verifying within MaxRefresh; when the issuer
// cannot be reached, the last keys fetched keep verifying for Grace past
// their refresh time, then tokens are refused as unavailable.
type KeyLifetime struct {
	// MinRefresh and MaxRefresh bound the refresh interval the JWKS
	// response asks for with Cache-Control max-age; a response without
	// one (or with no-cache or no-store) is refreshed after MaxRefresh
	// (MinRefresh for no-cache and no-store).
	MinRefresh, MaxRefresh time.Duration
	// Grace is how long past their refresh time the last keys fetched
	// keep verifying while the issuer cannot be reached.
	Grace time.Duration
	// Cooldown is the least time between two fetches of one issuer's
	// keys that the schedule did not ask for: a token naming an unknown
	// kid, a known kid whose signature fails (the issuer may have
	// replaced the key under the same kid), a failed fetch tried again.
	// It keeps forged tokens from turning the broker into a request
	// amplifier against the issuer.
	Cooldown time.Duration
}

// DefaultKeyLifetime refreshes keys every 15 minutes at most (sooner if
// the issuer's max-age says so, but not more than once a minute), keeps
// serving cached keys for an hour of issuer outage, and refreshes early
// at most once per 30 seconds.
var DefaultKeyLifetime = KeyLifetime{
	MinRefresh: time.Minute,
	MaxRefresh: 15 * time.Minute,
	Grace:      time.Hour,
	Cooldown:   DefaultKeyRefreshCooldown,
}

// DefaultKeyRefreshCooldown is DefaultKeyLifetime's Cooldown.
const DefaultKeyRefreshCooldown = 30 * time.Second

// Validate checks that the bounds make sense.
func (l KeyLifetime) Validate() error {
	switch {
	case l.MinRefresh <= 0 || l.MaxRefresh < l.MinRefresh:
		return errors.New("key lifetime: want 0 < min refresh <= max refresh")
	case l.Grace < 0:
		return errors.New("key lifetime: grace must not be negative")
	case l.Cooldown < 0:
		return errors.New("key lifetime: cooldown must not be negative")
	}
	return nil
}

// KeyEventKind says what happened to an issuer's keys.
type KeyEventKind int

// Key events.
const (
	// KeysChanged: a refresh found keys added, withdrawn or replaced
	// under the same kid. Not reported for the first fetch.
	KeysChanged KeyEventKind = iota + 1
	// KeysRefreshFailed: the issuer's keys could not be fetched; the
	// cached keys keep verifying until Until (the end of the grace).
	// Reported once per outage.
	KeysRefreshFailed
	// KeysUnavailable: the grace is over (or no key was ever fetched)
	// and tokens from the issuer are refused as unavailable. Reported
	// once per outage.
	KeysUnavailable
	// KeysRecovered: a fetch succeeded after an outage.
	KeysRecovered
)

// String names the kind.
func (k KeyEventKind) String() string {
	switch k {
	case KeysChanged:
		return "keys changed"
	case KeysRefreshFailed:
		return "key refresh failed"
	case KeysUnavailable:
		return "keys unavailable"
	case KeysRecovered:
		return "keys recovered"
	default:
		return "unknown"
	}
}

// KeyEvent reports a change in an issuer's keys, for the audit log.
type KeyEvent struct {
	// Kind says what happened.
	Kind KeyEventKind
	// Issuer is the issuer URL.
	Issuer string
	// Added, Withdrawn and Replaced list kids (KeysChanged).
	Added, Withdrawn, Replaced []string
	// Until is when the cached keys stop verifying (KeysRefreshFailed).
	Until time.Time
	// Err is the fetch failure, for logs only: it may quote the issuer's
	// answer and is never shown to a caller.
	Err error
}

// maxJWKSBytes bounds a JWKS response.
const maxJWKSBytes = 1 << 20

// keySet is one issuer's JWKS, parsed once and cached for the refresh
// interval. A stale set is refetched by the first request that needs it
// (concurrent requests share one fetch); a token naming a kid the set
// lacks, or whose known kid fails to verify, triggers at most one early
// refresh per cooldown.
type keySet struct {
	issuer   string
	url      string
	client   *http.Client
	lifetime KeyLifetime
	now      func() time.Time
	observe  atomic.Pointer[func(context.Context, KeyEvent)]

	mu          sync.Mutex
	keys        []jose.JSONWebKey // nil until the first successful fetch
	expires     time.Time         // keys are fresh until then
	lastAttempt time.Time         // last fetch started
	lastErr     error             // error of the last fetch, nil if it succeeded
	failing     bool              // an outage has been reported
	unavailable bool              // the end of the grace has been reported
	inflight    *keyFetch
}

type keyFetch struct {
	done chan struct{}
	keys []jose.JSONWebKey
	err  error
}

// verify checks jws's signature with the issuer's key named by its kid.
// Errors wrapping ErrIssuerUnavailable mean the keys could not be had;
// any other error is a verification failure.
func (k *keySet) verify(ctx context.Context, jws *jose.JSONWebSignature) error {
	kid := jws.Signatures[0].Header.KeyID
	keys, err := k.current(ctx)
	if err != nil {
		return err
	}
	found, verr := verifyWith(jws, keys, kid)
	if found && verr == nil {
		return nil
	}
	// An unknown kid (a new key), or a known kid that fails (a key
	// replaced under the same kid): refresh once, if the cooldown allows.
	k.mu.Lock()
	since := k.now().Sub(k.lastAttempt)
	allowed := k.inflight != nil || since >= k.lifetime.Cooldown
	k.mu.Unlock()
	if !allowed {
		if !found {
			return fmt.Errorf("no key with kid %q (key set refreshed %s ago)", truncate(kid, 64), since.Round(time.Millisecond))
		}
		return verr
	}
	if keys, err = k.refresh(ctx); err != nil {
		return err
	}
	found, verr = verifyWith(jws, keys, kid)
	if !found {
		return fmt.Errorf("no key with kid %q", truncate(kid, 64))
	}
	return verr
}

// current returns keys that may verify now: the cached set while fresh,
// else a refetched one; when the refetch fails, the cached set until the
// end of the grace, else an error wrapping ErrIssuerUnavailable.
func (k *keySet) current(ctx context.Context) ([]jose.JSONWebKey, error) {
	k.mu.Lock()
	now := k.now()
	if k.keys != nil && now.Before(k.expires) {
		keys := k.keys
		k.mu.Unlock()
		return keys, nil
	}
	retryLater := k.lastErr != nil && now.Sub(k.lastAttempt) < k.lifetime.Cooldown && k.inflight == nil
	k.mu.Unlock()
	if !retryLater {
		keys, err := k.refresh(ctx)
		if err == nil || ctx.Err() != nil {
			return keys, err
		}
	}
	k.mu.Lock()
	keys, ev := k.fallback(k.now())
	cause := k.lastErr
	k.mu.Unlock()
	if ev != nil {
		k.emit(ctx, *ev)
	}
	if keys == nil {
		return nil, fmt.Errorf("%w: %s: signing keys: %w", ErrIssuerUnavailable, k.issuer, cause)
	}
	return keys, nil
}

// fallback is what a stale set offers while the issuer cannot be
// reached: the cached keys within the grace, nothing after it (reported
// once). k.mu is held.
func (k *keySet) fallback(now time.Time) ([]jose.JSONWebKey, *KeyEvent) {
	if k.keys != nil && now.Before(k.expires.Add(k.lifetime.Grace)) {
		return k.keys, nil
	}
	if k.unavailable {
		return nil, nil
	}
	k.unavailable = true
	return nil, &KeyEvent{Kind: KeysUnavailable, Issuer: k.issuer, Err: k.lastErr}
}

// verifyWith verifies with the keys named kid (every key when kid is
// empty); found reports whether any key was tried. go-jose checks that
// the key's type suits the header's algorithm.
func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) (bool, error) {
	found := false
	for i := range keys {
		if kid != "" && keys[i].KeyID != kid {
			continue
		}
		found = true
		if _, err := jws.Verify(&keys[i]); err == nil {
			return true, nil
		}
	}
	return found, errors.New("signature does not verify")
}

// refresh fetches the key set now, coalescing concurrent callers. On
// success the fetched set replaces the cached one entirely: withdrawn
// keys are gone. Errors wrap ErrIssuerUnavailable.
func (k *keySet) refresh(ctx context.Context) ([]jose.JSONWebKey, error) {
	k.mu.Lock()
	f := k.inflight
	if f == nil {
		f = &keyFetch{done: make(chan struct{})}
		k.inflight = f
		k.lastAttempt = k.now()
		// The fetch outlives a cancelled caller so that the others
		// waiting on it still get keys; the client has a timeout.
		go k.run(context.WithoutCancel(ctx), f)
	}
	k.mu.Unlock()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-f.done:
		if f.err != nil {
			return nil, fmt.Errorf("%w: %s: signing keys: %w", ErrIssuerUnavailable, k.issuer, f.err)
		}
		return f.keys, nil
	}
}

// run performs one fetch and records its outcome.
func (k *keySet) run(ctx context.Context, f *keyFetch) {
	keys, ttl, err := k.fetch(ctx)
	var events []KeyEvent
	k.mu.Lock()
	now := k.now()
	k.lastErr = err
	if err == nil {
		if k.keys != nil {
			if ev, changed := diffKeys(k.issuer, k.keys, keys); changed {
				events = append(events, ev)
			}
		}
		if k.failing || k.unavailable {
			events = append(events, KeyEvent{Kind: KeysRecovered, Issuer: k.issuer})
		}
		k.keys, k.expires, k.failing, k.unavailable = keys, now.Add(ttl), false, false
	} else if !k.failing {
		k.failing = true
		if k.keys != nil && now.Before(k.expires.Add(k.lifetime.Grace)) {
			events = append(events, KeyEvent{Kind: KeysRefreshFailed, Issuer: k.issuer, Until: k.expires.Add(k.lifetime.Grace), Err: err})
		}
	}
	k.mu.Unlock()
	// Report before waking the requests waiting on this fetch, so the
	// record of an outage precedes the refusals it causes. The report
	// is bounded in time: a hung audit log must not hold the fetch.
	if len(events) > 0 {
		ectx, cancel := context.WithTimeout(ctx, reportTimeout)
		for _, ev := range events {
			k.emit(ectx, ev)
		}
		cancel()
	}
	k.mu.Lock()
	k.inflight = nil
	k.mu.Unlock()
	f.keys, f.err = keys, err
	close(f.done)
}

// reportTimeout bounds the reporting of a key event by a fetch.
const reportTimeout = 10 * time.Second

func (k *keySet) emit(ctx context.Context, ev KeyEvent) {
	if f := k.observe.Load(); f != nil {
		(*f)(ctx, ev)
	}
}

// fetch GETs the JWKS and returns its usable keys and how long they are
// fresh.
func (k *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("%s: %s", k.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, 0, err
	}
	if len(body) > maxJWKSBytes {
		return nil, 0, fmt.Errorf("%s: key set exceeds %d bytes", k.url, maxJWKSBytes)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return nil, 0, err
	}
	return keys, k.lifetime.refreshAfter(resp.Header), nil
}

// refreshAfter is the refresh interval a JWKS response asks for, within
// the bounds: Cache-Control max-age less the response's Age.
func (l KeyLifetime) refreshAfter(h http.Header) time.Duration {
	ttl, found := l.MaxRefresh, false
	for _, d := range strings.Split(strings.Join(h.Values("Cache-Control"), ","), ",") {
		name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
		switch strings.ToLower(name) {
		case "no-store", "no-cache":
			return l.MinRefresh
		case "max-age":
			if n, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64); err == nil && n >= 0 && !found {
				ttl, found = time.Duration(min(n, int64(l.MaxRefresh/time.Second)+1))*time.Second, true
			}
		}
	}
	if age, err := strconv.ParseInt(h.Get("Age"), 10, 64); found && err == nil && age > 0 {
		ttl -= time.Duration(min(age, int64(ttl/time.Second))) * time.Second
	}
	return min(max(ttl, l.MinRefresh), l.MaxRefresh)
}

// diffKeys compares two key sets by kid and key material.
func diffKeys(issuer string, old, cur []jose.JSONWebKey) (KeyEvent, bool) {
	ev := KeyEvent{Kind: KeysChanged, Issuer: issuer}
	prints := func(keys []jose.JSONWebKey) map[string][]string {
		m := map[string][]string{}
		for i := range keys {
			m[keys[i].KeyID] = append(m[keys[i].KeyID], thumbprint(&keys[i]))
		}
		return m
	}
	o, c := prints(old), prints(cur)
	for kid, tp := range c {
		switch prev, ok := o[kid]; {
		case !ok:
			ev.Added = append(ev.Added, kid)
		case !sameSet(prev, tp):
			ev.Replaced = append(ev.Replaced, kid)
		}
	}
	for kid := range o {
		if _, ok := c[kid]; !ok {
			ev.Withdrawn = append(ev.Withdrawn, kid)
		}
	}
	slices.Sort(ev.Added)
	slices.Sort(ev.Withdrawn)
	slices.Sort(ev.Replaced)
	return ev, len(ev.Added)+len(ev.Withdrawn)+len(ev.Replaced) > 0
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func thumbprint(k *jose.JSONWebKey) string {
	tp, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return "?"
	}
	return hex.EncodeToString(tp)
}

// parseJWKS keeps the public signing keys of a JWKS and skips keys it
// cannot use (unknown types, encryption keys, private keys), so one odd
// key does not make the issuer unusable.
func parseJWKS(body []byte) ([]jose.JSONWebKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("key set: %v", err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range set.Keys {
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(raw); err != nil {
			continue
		}
		if !key.Valid() || !key.IsPublic() || (key.Use != "" && key.Use != "sig") {
			continue
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, errors.New("key set has no usable public signing key")
	}
	return keys, nil
}
