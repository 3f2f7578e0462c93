// Package coalesce shares reads among concurrent callers that each need an
// answer at least as fresh as their own call.
//
// Replicas of a service keep a copy of shared state (grants, freezes,
// revocations) and must never decide on a copy older than a change that was
// acknowledged before the request arrived. Reading the state's version from
// the database for every request is the simple way to guarantee that; Fresh
// makes it cheap: a caller waits for a read that *started after it called*,
// and every caller that arrives while a read is in flight shares the next
// one. Under load, one database round trip answers a whole wave of requests;
// alone, a request pays one round trip.
package coalesce

import (
	"context"
	"sync"
	"time"
)

// DefaultTimeout bounds one read when New is given no timeout.
const DefaultTimeout = 5 * time.Second

// Fresh runs read on behalf of concurrent callers. It is safe for concurrent
// use.
type Fresh[T any] struct {
	read    func(ctx context.Context) (T, error)
	timeout time.Duration

	mu      sync.Mutex
	running bool       // a read is in flight
	next    *flight[T] // callers waiting for the read after it
}

type flight[T any] struct {
	done    chan struct{}
	v       T
	err     error
	callers int // callers waiting for it (guarded by Fresh.mu)
}

// New returns a Fresh that calls read. Each read runs under its own context
// with the given timeout (DefaultTimeout when zero), not under any one
// caller's: a caller that gives up does not fail the others.
func New[T any](read func(ctx context.Context) (T, error), timeout time.Duration) *Fresh[T] {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Fresh[T]{read: read, timeout: timeout}
}

// Get returns the result of a read that started after Get was called: a
// read already in flight is not shared (it may have started before the
// caller's reason to ask), the next one is. Get returns ctx's error if ctx
// ends first.
func (f *Fresh[T]) Get(ctx context.Context) (T, error) {
	f.mu.Lock()
	if f.next == nil {
		f.next = &flight[T]{done: make(chan struct{})}
	}
	fl := f.next
	fl.callers++
	if !f.running {
		f.running = true
		f.next = nil
		go f.run(fl)
	}
	f.mu.Unlock()
	select {
	case <-fl.done:
		return fl.v, fl.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// run performs fl's read, then the reads queued meanwhile, one after
// another, until none is queued.
func (f *Fresh[T]) run(fl *flight[T]) {
	for fl != nil {
		ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
		fl.v, fl.err = f.read(ctx)
		cancel()
		close(fl.done)
		f.mu.Lock()
		fl, f.next = f.next, nil
		f.running = fl != nil
		f.mu.Unlock()
	}
}
