package keyguardclient

import (
	"context"
	"sync"
	"time"
)

// CacheLimits bound how long and how much one cached data key is used.
// A key is dropped when it reaches any limit; the next use fetches a new
// one. Zero fields take the defaults of DefaultCacheLimits.
type CacheLimits struct {
	// MaxAge is how long a data key is used after it was fetched.
	MaxAge time.Duration
	// MaxMessages is how many envelopes or streams one data key seals.
	MaxMessages uint64
	// MaxBytes is how many plaintext bytes one data key seals.
	MaxBytes uint64
	// MaxEntries bounds the number of keys held at once (one per ring and
	// encryption context); the oldest is dropped first.
	MaxEntries int
}

// DefaultCacheLimits are conservative: five minutes, 2^20 messages, 2^36
// bytes (64 GiB), 256 entries. Every envelope derives its own AES key from
// the data key and a fresh salt, so these bound exposure of one data key,
// not AES-GCM nonce safety.
var DefaultCacheLimits = CacheLimits{MaxAge: 5 * time.Minute, MaxMessages: 1 << 20, MaxBytes: 1 << 36, MaxEntries: 256}

func (l CacheLimits) withDefaults() CacheLimits {
	d := DefaultCacheLimits
	if l.MaxAge > 0 {
		d.MaxAge = l.MaxAge
	}
	if l.MaxMessages > 0 {
		d.MaxMessages = l.MaxMessages
	}
	if l.MaxBytes > 0 {
		d.MaxBytes = l.MaxBytes
	}
	if l.MaxEntries > 0 {
		d.MaxEntries = l.MaxEntries
	}
	return d
}

// cachedKey is one data key in the cache. The key bytes are never exposed
// outside the package and never printed.
type cachedKey struct {
	key      *DataKey
	fetched  time.Time
	messages uint64
	bytes    uint64
}

// fetchCall is a fetch in flight; others waiting for the same cache key
// wait on done instead of fetching too.
type fetchCall struct {
	done chan struct{}
	err  error
}

// keyCache holds data keys under a string key, bounded by CacheLimits, with
// at most one fetch in flight per key: a burst of callers needing the same
// key makes one GenerateDataKey (or Decrypt) call, not one each.
type keyCache struct {
	limits CacheLimits
	now    func() time.Time

	mu       sync.Mutex
	entries  map[string]*cachedKey
	order    []string // insertion order, for eviction
	inflight map[string]*fetchCall
	fetches  int // for tests: how many fetches ran

	// observe, when set, is told the outcome of each get: "hit",
	// "miss", "coalesced" (served by another caller's fetch) or
	// "oversize".
	observe func(result string)
}

func newKeyCache(l CacheLimits, now func() time.Time) *keyCache {
	return &keyCache{limits: l.withDefaults(), now: now, entries: map[string]*cachedKey{}, inflight: map[string]*fetchCall{}}
}

// get returns a data key for k that may seal one more message of n bytes,
// calling fetch (once, however many callers wait) when there is none.
func (c *keyCache) get(ctx context.Context, k string, n uint64, fetch func(context.Context) (*DataKey, error)) (*DataKey, error) {
	if n > c.limits.MaxBytes {
		// Too large for any cached key: use a key of its own.
		c.mu.Lock()
		c.fetches++
		c.mu.Unlock()
		c.note("oversize")
		return fetch(ctx)
	}
	outcome := "hit" // "coalesced" after waiting for another's fetch; "" after our own
	for {
		c.mu.Lock()
		if e := c.entries[k]; e != nil {
			if c.now().Sub(e.fetched) < c.limits.MaxAge && e.messages < c.limits.MaxMessages && e.bytes+n <= c.limits.MaxBytes {
				e.messages++
				e.bytes += n
				c.mu.Unlock()
				if outcome != "" {
					c.note(outcome)
				}
				return e.key, nil
			}
			c.removeLocked(k)
		}
		if call := c.inflight[k]; call != nil {
			c.mu.Unlock()
			select {
			case <-call.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if call.err != nil {
				return nil, call.err
			}
			if outcome != "" {
				outcome = "coalesced"
			}
			continue // the new key is in the cache (or already used up)
		}
		call := &fetchCall{done: make(chan struct{})}
		c.inflight[k] = call
		c.fetches++
		c.mu.Unlock()
		c.note("miss")
		outcome = ""

		key, err := fetch(ctx)

		c.mu.Lock()
		delete(c.inflight, k)
		call.err = err
		if err == nil {
			c.entries[k] = &cachedKey{key: key, fetched: c.now()}
			c.order = append(c.order, k)
			for len(c.entries) > c.limits.MaxEntries {
				c.removeLocked(c.order[0])
			}
		}
		close(call.done)
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

func (c *keyCache) note(result string) {
	if c.observe != nil {
		c.observe(result)
	}
}

func (c *keyCache) removeLocked(k string) {
	delete(c.entries, k)
	for i, o := range c.order {
		if o == k {
			c.order = append(c.order[:i:i], c.order[i+1:]...)
			break
		}
	}
}

func (c *keyCache) fetchCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fetches
}
