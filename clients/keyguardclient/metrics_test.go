package keyguardclient

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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

// TestWithMetricsSharedRegistry: two clients may register on one
// registry (their counts add up) instead of panicking.
func TestWithMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := New(nil, WithMetrics(reg))
	b := New(nil, WithMetrics(reg))
	fetch := func(context.Context) (*DataKey, error) { return &DataKey{}, nil }
	for _, cl := range []*Client{a, b} {
		if _, err := cl.enc.get(context.Background(), "k", 1, fetch); err != nil {
			t.Fatal(err)
		}
	}
	if v := testutil.ToFloat64(a.cacheM.WithLabelValues("encrypt", "miss")); v != 2 {
		t.Errorf("misses = %v, want 2 (one per client)", v)
	}
}
