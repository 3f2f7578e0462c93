package keyguardclient

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestCacheOutcomes checks the result each lookup reports: a first use
// is one miss (not a miss and a hit), reuse is a hit, an exhausted key a
// new miss, an oversized message its own class, waiting on another
// caller's fetch "coalesced".
func TestCacheOutcomes(t *testing.T) {
	var mu sync.Mutex
	var got []string
	c := newKeyCache(CacheLimits{MaxMessages: 2, MaxBytes: 100}, time.Now)
	c.observe = func(r string) { mu.Lock(); got = append(got, r); mu.Unlock() }
	fetch := func(context.Context) (*DataKey, error) { return &DataKey{}, nil }
	ctx := context.Background()
	for _, n := range []uint64{10, 10, 10, 1000} {
		if _, err := c.get(ctx, "k", n, fetch); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(got, []string{"miss", "hit", "miss", "oversize"}); diff != "" {
		t.Errorf("outcomes (-got +want):\n%s", diff)
	}

	got = nil
	release, started := make(chan struct{}), make(chan struct{})
	slow := func(context.Context) (*DataKey, error) { close(started); <-release; return &DataKey{}, nil }
	c2 := newKeyCache(CacheLimits{}, time.Now)
	c2.observe = c.observe
	done := make(chan struct{})
	go func() { defer close(done); _, _ = c2.get(ctx, "k", 1, slow) }()
	<-started
	waiter := make(chan struct{})
	go func() { defer close(waiter); _, _ = c2.get(ctx, "k", 1, fetch) }()
	// The waiter is either parked on the in-flight fetch or not yet in
	// get; both end as "coalesced" or "hit" once the fetch lands.
	close(release)
	<-done
	<-waiter
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0] != "miss" || (got[1] != "coalesced" && got[1] != "hit") {
		t.Errorf("concurrent outcomes %v, want [miss coalesced|hit]", got)
	}
}

// TestWithCacheObserver: the observer hears each lookup of each cache,
// named by cache and result.
func TestWithCacheObserver(t *testing.T) {
	var got []string
	c := New(nil, WithCacheObserver(func(cache, result string) { got = append(got, cache+"/"+result) }))
	fetch := func(context.Context) (*DataKey, error) { return &DataKey{}, nil }
	for _, kc := range []*keyCache{c.enc, c.enc, c.dec} {
		if _, err := kc.get(context.Background(), "k", 1, fetch); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(got, []string{"encrypt/miss", "encrypt/hit", "decrypt/miss"}); diff != "" {
		t.Errorf("observed (-got +want):\n%s", diff)
	}
}
