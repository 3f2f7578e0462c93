package broker

import (
	"math"
	"sync"
	"time"
)

// Limits are token-bucket rate limits on issuance. A zero rate disables
// that limit.
type Limits struct {
	// PerSubject is the sustained issuances per second one caller
	// (issuer and subject) may make.
	PerSubject float64
	// SubjectBurst is how many a caller may make at once (at least 1).
	SubjectBurst int
	// PerRole is the sustained issuances per second for one role in one
	// account, whoever asks: it protects the STS quota of the account.
	PerRole float64
	// RoleBurst is how many at once (at least 1).
	RoleBurst int
	// ExplainPerSubject is the sustained ExplainDecision calls per
	// second one caller may make: each reveals policy.
	ExplainPerSubject float64
	// ExplainBurst is how many at once (at least 1).
	ExplainBurst int
}

// maxBuckets bounds the limiter's memory: past it, full buckets (idle
// callers) are dropped.
const maxBuckets = 100_000

// limiter holds one token bucket per key.
type limiter struct {
	cfg     Limits
	now     func() time.Time
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
	rate   float64
	burst  float64
}

func newLimiter(cfg Limits, now func() time.Time) *limiter {
	if cfg.SubjectBurst < 1 {
		cfg.SubjectBurst = 1
	}
	if cfg.RoleBurst < 1 {
		cfg.RoleBurst = 1
	}
	if cfg.ExplainBurst < 1 {
		cfg.ExplainBurst = 1
	}
	return &limiter{cfg: cfg, now: now, buckets: map[string]*bucket{}}
}

// allow takes one token from the subject's bucket and from each role's
// bucket, all or none, and says how long to wait when refused.
func (l *limiter) allow(subject string, roles []string) (bool, time.Duration) {
	if l.cfg.PerSubject <= 0 && l.cfg.PerRole <= 0 {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var take []*bucket
	if l.cfg.PerSubject > 0 {
		take = append(take, l.bucket("s\x00"+subject, l.cfg.PerSubject, l.cfg.SubjectBurst, now))
	}
	if l.cfg.PerRole > 0 {
		for _, r := range roles {
			take = append(take, l.bucket("r\x00"+r, l.cfg.PerRole, l.cfg.RoleBurst, now))
		}
	}
	// A request for two sessions of one role needs two of its tokens.
	need := map[*bucket]float64{}
	for _, b := range take {
		need[b]++
	}
	var wait time.Duration
	for b, n := range need {
		if b.tokens < n {
			w := time.Duration(math.Ceil((n - b.tokens) / b.rate * float64(time.Second)))
			wait = max(wait, w)
		}
	}
	if wait > 0 {
		return false, wait
	}
	for b, n := range need {
		b.tokens -= n
	}
	return true, 0
}

// allowExplain takes one token from the caller's explain bucket.
func (l *limiter) allowExplain(subject string) (bool, time.Duration) {
	if l.cfg.ExplainPerSubject <= 0 {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket("x\x00"+subject, l.cfg.ExplainPerSubject, l.cfg.ExplainBurst, now)
	if b.tokens < 1 {
		return false, time.Duration(math.Ceil((1 - b.tokens) / b.rate * float64(time.Second)))
	}
	b.tokens--
	return true, 0
}

// bucket returns the refilled bucket of key, creating it full.
func (l *limiter) bucket(key string, rate float64, burst int, now time.Time) *bucket {
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxBuckets {
			l.prune(now)
		}
		b = &bucket{tokens: float64(burst), last: now, rate: rate, burst: float64(burst)}
		l.buckets[key] = b
		return b
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(b.burst, b.tokens+el*b.rate)
		b.last = now
	}
	return b
}

// prune drops the buckets that have refilled completely: forgetting them
// changes nothing.
func (l *limiter) prune(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*b.rate >= b.burst {
			delete(l.buckets, k)
		}
	}
}
