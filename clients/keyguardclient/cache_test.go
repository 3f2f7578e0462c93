package keyguardclient

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestCacheSingleFlight(t *testing.T) {
	c := newKeyCache(CacheLimits{}, time.Now)
	release := make(chan struct{})
	started := make(chan struct{})
	var calls atomic.Int32
	fetch := func(context.Context) (*DataKey, error) {
		if calls.Add(1) == 1 {
			close(started)
		}
		<-release
		return testKey(t), nil
	}
	const callers = 64
	var wg sync.WaitGroup
	keys := make([]*DataKey, callers)
	for i := range callers {
		wg.Go(func() {
			k, err := c.get(context.Background(), "ring", 10, fetch)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	// Once the first fetch is in flight, let it finish: callers that
	// arrived meanwhile wait for it, later ones find its key cached.
	<-started
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d fetches for %d concurrent callers, want 1", n, callers)
	}
	for i, k := range keys {
		if k != keys[0] {
			t.Fatalf("caller %d got another key", i)
		}
	}
}

func TestCacheLimits(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	fetchErr := errors.New("keyguard unavailable")
	tests := []struct {
		name   string
		limits CacheLimits
		steps  func(c *keyCache, use func(k string, n uint64) error)
		want   int // fetches
	}{
		{"reuse/same-ring", CacheLimits{}, func(c *keyCache, use func(string, uint64) error) {
			for range 10 {
				use("a", 100)
			}
		}, 1},
		{"separate/other-ring", CacheLimits{}, func(c *keyCache, use func(string, uint64) error) {
			use("a", 1)
			use("b", 1)
			use("a", 1)
		}, 2},
		{"limit/messages", CacheLimits{MaxMessages: 3}, func(c *keyCache, use func(string, uint64) error) {
			for range 7 {
				use("a", 1)
			}
		}, 3},
		{"limit/bytes", CacheLimits{MaxBytes: 100}, func(c *keyCache, use func(string, uint64) error) {
			use("a", 60)
			use("a", 60) // would exceed: new key
			use("a", 40)
		}, 2},
		{"limit/oversized-message-uncached", CacheLimits{MaxBytes: 100}, func(c *keyCache, use func(string, uint64) error) {
			use("a", 101)
			use("a", 101)
		}, 2},
		{"limit/age", CacheLimits{MaxAge: time.Minute}, func(c *keyCache, use func(string, uint64) error) {
			use("a", 1)
			now = now.Add(59 * time.Second)
			use("a", 1)
			now = now.Add(time.Second)
			use("a", 1)
		}, 2},
		{"limit/entries", CacheLimits{MaxEntries: 2}, func(c *keyCache, use func(string, uint64) error) {
			use("a", 1)
			use("b", 1)
			use("c", 1) // evicts a
			use("a", 1)
		}, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newKeyCache(tc.limits, clock)
			fails := 0
			tc.steps(c, func(k string, n uint64) error {
				_, err := c.get(context.Background(), k, n, func(context.Context) (*DataKey, error) { return testKey(t), nil })
				if err != nil {
					fails++
				}
				return err
			})
			if diff := cmp.Diff(c.fetchCount(), tc.want); diff != "" {
				t.Errorf("fetches (-got +want):\n%s", diff)
			}
			if fails != 0 {
				t.Errorf("%d failures", fails)
			}
		})
	}
	t.Run("error/not-cached", func(t *testing.T) {
		c := newKeyCache(CacheLimits{}, clock)
		if _, err := c.get(context.Background(), "a", 1, func(context.Context) (*DataKey, error) { return nil, fetchErr }); !errors.Is(err, fetchErr) {
			t.Fatalf("error %v", err)
		}
		if _, err := c.get(context.Background(), "a", 1, func(context.Context) (*DataKey, error) { return testKey(t), nil }); err != nil {
			t.Fatalf("after a failed fetch: %v", err)
		}
	})
}
