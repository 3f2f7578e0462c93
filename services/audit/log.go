package audit

import (
	"context"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// subscribeBatch is how many stored events Subscribe reads per store call
// while catching up.
const subscribeBatch = 256

// Log is the audit service logic over a Store: it validates, sequences and
// persists appends (one appender at a time, so sequences are gap-free), and
// serves queries and live subscriptions.
//
// A Log does not own its Store: closing the Log does not close the Store.
type Log struct {
	store Store
	clock func() time.Time

	// slot is a one-token semaphore held by the single appender. It is a
	// channel rather than a sync.Mutex so a waiting caller can give up
	// when its context ends.
	slot   chan struct{}
	next   uint64 // the store's Head; guarded by slot
	loaded bool   // next is valid; guarded by slot

	mu      sync.Mutex
	changed chan struct{} // closed and replaced after each durable append
	done    chan struct{} // closed by Close
	closed  bool
}

// Option configures a Log.
type Option func(*Log)

// WithClock sets the clock that stamps recorded_time, so tests are
// deterministic. The default is time.Now.
func WithClock(clock func() time.Time) Option {
	return func(l *Log) { l.clock = clock }
}

// NewLog returns a Log over store.
func NewLog(store Store, opts ...Option) *Log {
	l := &Log{
		store:   store,
		clock:   time.Now,
		slot:    make(chan struct{}, 1),
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Close ends every Subscribe (with Unavailable) and refuses further
// appends, so that a graceful server stop does not wait on endless
// streams. It does not close the Store. It is safe to call more than once.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.done)
	}
	return nil
}

// Append records events on behalf of source (the producer's verified
// identity, stored as source_service) and returns their positions in
// request order, only once they are durable.
//
// The events are validated first; any invalid event rejects the batch with
// an Invalid error naming it. An event whose id is already in the log (or
// earlier in the batch) is not stored again: its result is the existing
// event's. If the store fails, nothing is acknowledged, the sequence
// counter is reloaded from the store, and the error is Unavailable. The
// caller's events are not modified.
func (l *Log) Append(ctx context.Context, source string, events []*auditv1.Event) ([]*auditv1.AppendResult, error) {
	if err := validateBatch(events); err != nil {
		return nil, err
	}
	select {
	case l.slot <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.done:
		return nil, Errorf(Unavailable, "audit log is shutting down")
	}
	defer func() { <-l.slot }()
	select {
	case <-l.done:
		return nil, Errorf(Unavailable, "audit log is shutting down")
	default:
	}

	if !l.loaded {
		next, err := l.store.Head(ctx)
		if err != nil {
			return nil, unavailable("audit store unavailable", err)
		}
		l.next, l.loaded = next, true
	}

	ids := make([]string, len(events))
	for i, e := range events {
		ids[i] = e.GetId()
	}
	stored, err := l.store.Lookup(ctx, ids)
	if err != nil {
		return nil, unavailable("audit store unavailable", err)
	}

	recorded := timestamppb.New(l.clock())
	results := make([]*auditv1.AppendResult, len(events))
	first := make(map[string]int, len(events)) // id -> index of its first result
	var batch []*auditv1.Event
	for i, e := range events {
		id := e.GetId()
		if s, ok := stored[id]; ok {
			h, err := LeafHash(s)
			if err != nil {
				return nil, unavailable("audit store returned an unreadable event", err)
			}
			results[i] = &auditv1.AppendResult{Id: id, Sequence: s.GetSequence(), LeafHash: h}
			continue
		}
		if j, ok := first[id]; ok {
			results[i] = proto.CloneOf(results[j])
			continue
		}
		c := proto.CloneOf(e)
		c.Sequence = l.next + uint64(len(batch))
		c.RecordedTime = proto.CloneOf(recorded)
		c.SourceService = source
		h, err := LeafHash(c)
		if err != nil {
			return nil, Errorf(Invalid, "events[%d]: cannot be serialised", i)
		}
		first[id] = i
		results[i] = &auditv1.AppendResult{Id: id, Sequence: c.Sequence, LeafHash: h}
		batch = append(batch, c)
	}
	if len(batch) == 0 {
		return results, nil
	}
	if err := l.store.Append(ctx, batch); err != nil {
		// The store may or may not hold the batch (a failed commit can
		// still be durable): trust only what it says next time.
		l.loaded = false
		return nil, unavailable("audit store unavailable; retry the batch", err)
	}
	l.next += uint64(len(batch))
	l.wake()
	return results, nil
}

// Query returns one page of events matching f, in sequence order, and the
// token of the next page ("" on the last page).
//
// f.PageSize must be 0 (meaning DefaultPageSize) to MaxPageSize, and
// f.End must not be before f.Start; a Kinds list holding KIND_UNSPECIFIED
// matches any kind, as the contract says of the unspecified value.
func (l *Log) Query(ctx context.Context, f Filter) ([]*auditv1.Event, string, error) {
	switch {
	case f.PageSize < 0 || f.PageSize > MaxPageSize:
		return nil, "", Errorf(Invalid, "page_size: must be 0 to %d, got %d", MaxPageSize, f.PageSize)
	case !f.Start.IsZero() && !f.End.IsZero() && f.End.Before(f.Start):
		return nil, "", Errorf(Invalid, "end_time: before start_time")
	}
	if _, err := DecodePageToken(f.PageToken); err != nil {
		return nil, "", err
	}
	if f.PageSize == 0 {
		f.PageSize = DefaultPageSize
	}
	f.Kinds = normaliseKinds(f.Kinds)
	events, next, err := l.store.Query(ctx, f)
	if err != nil {
		return nil, "", unavailable("audit store unavailable", err)
	}
	return events, next, nil
}

// Subscribe calls send with every event from sequence from onwards whose
// kind is in kinds (empty: any kind): first the stored ones, then new ones
// as they become durable. It returns when ctx ends (with ctx's error),
// when send fails (with send's error, unchanged), when the Log is closed
// or when the store fails (Unavailable). send must not modify the event.
func (l *Log) Subscribe(ctx context.Context, from uint64, kinds []auditv1.Kind, send func(*auditv1.Event) error) error {
	kinds = normaliseKinds(kinds)
	next := from
	for {
		// Take the wake-up channel before reading, so an append that
		// lands after the read still wakes us.
		changed := l.changedChan()
		events, err := l.store.Read(ctx, next, subscribeBatch)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return unavailable("audit store unavailable", err)
		}
		for _, e := range events {
			next = e.GetSequence() + 1
			if len(kinds) > 0 && !slices.Contains(kinds, e.GetKind()) {
				continue
			}
			if err := send(e); err != nil {
				return err
			}
		}
		if len(events) == subscribeBatch {
			continue // more stored events to catch up on
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-l.done:
			return Errorf(Unavailable, "audit log is shutting down")
		}
	}
}

func (l *Log) changedChan() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// wake tells every waiting subscriber that new events are durable.
func (l *Log) wake() {
	l.mu.Lock()
	defer l.mu.Unlock()
	close(l.changed)
	l.changed = make(chan struct{})
}

// normaliseKinds applies the contract's "unspecified means any": a list
// holding KIND_UNSPECIFIED does not filter.
func normaliseKinds(kinds []auditv1.Kind) []auditv1.Kind {
	if slices.Contains(kinds, auditv1.Kind_KIND_UNSPECIFIED) {
		return nil
	}
	return kinds
}
