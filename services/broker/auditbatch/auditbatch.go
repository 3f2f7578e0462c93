// Package auditbatch coalesces the broker's concurrent audit appends into
// batched Append calls: while a few appends are in flight, events that
// arrive queue up and leave together in the next request. An idle broker
// sends each event at once (no added wait); a busy one sends fewer,
// larger requests, which the audit service makes durable with one commit.
//
// Tracing: each batch is one "audit.append_batch" span whose parent is the
// first queued request's span, so the common case (an idle broker, a batch
// of one) is a plain parent/child chain request → batch → audit.Append. The
// batch span links to every other request in it, and each of those
// requests' spans links back to the batch span, so an investigator can
// follow any request into the audit call that recorded its event.
//
// Every caller still waits for its own event's durable result; a failed
// batch fails every event in it, so the broker fails closed exactly as it
// would with one call per event.
package auditbatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
)

// tracerName names this package's instrumentation scope.
const tracerName = "github.com/credmatrix/credmatrix/services/broker/auditbatch"

// Defaults.
const (
	// DefaultMaxBatch is the most events one request carries (the audit
	// API accepts up to 1000).
	DefaultMaxBatch = 256
	// DefaultMaxInFlight is the most requests in flight at once.
	DefaultMaxInFlight = 4
	// DefaultTimeout bounds one request.
	DefaultTimeout = 5 * time.Second
)

// appender is the one audit RPC the batcher calls.
type appender interface {
	Append(ctx context.Context, in *auditv1.AppendRequest, opts ...grpc.CallOption) (*auditv1.AppendResponse, error)
}

// Batcher appends events in batches. It implements the broker's Auditor
// and is safe for concurrent use.
type Batcher struct {
	rpc         appender
	maxBatch    int
	maxInFlight int
	timeout     time.Duration

	mu       sync.Mutex
	queue    []*pending
	inFlight int
}

type pending struct {
	ev   *auditv1.Event
	span trace.Span // the caller's span (may be a no-op)
	done chan outcome
}

type outcome struct {
	res *auditv1.AppendResult
	err error
}

// Option configures a Batcher.
type Option func(*Batcher)

// WithLimits sets the batch size and the requests in flight.
func WithLimits(maxBatch, maxInFlight int) Option {
	return func(b *Batcher) { b.maxBatch, b.maxInFlight = maxBatch, maxInFlight }
}

// WithTimeout sets the deadline of one request.
func WithTimeout(d time.Duration) Option { return func(b *Batcher) { b.timeout = d } }

// New returns a Batcher over the audit service connection conn.
func New(conn grpc.ClientConnInterface, opts ...Option) *Batcher {
	return newBatcher(auditv1.NewAuditServiceClient(conn), opts...)
}

func newBatcher(rpc appender, opts ...Option) *Batcher {
	b := &Batcher{rpc: rpc, maxBatch: DefaultMaxBatch, maxInFlight: DefaultMaxInFlight, timeout: DefaultTimeout}
	for _, o := range opts {
		o(b)
	}
	if b.maxBatch < 1 {
		b.maxBatch = 1
	}
	if b.maxInFlight < 1 {
		b.maxInFlight = 1
	}
	return b
}

// Append queues ev and returns once it is durable (or its batch failed,
// or ctx ended: then the event may still be recorded, as with any RPC
// cut short).
func (b *Batcher) Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := &pending{ev: ev, span: trace.SpanFromContext(ctx), done: make(chan outcome, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, p)
	if b.inFlight < b.maxInFlight {
		b.inFlight++
		go b.flush()
	}
	b.mu.Unlock()
	select {
	case o := <-p.done:
		return o.res, o.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// flush sends queued events until the queue is empty.
func (b *Batcher) flush() {
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.inFlight--
			b.mu.Unlock()
			return
		}
		n := min(len(b.queue), b.maxBatch)
		batch := b.queue[:n:n]
		b.queue = b.queue[n:]
		b.mu.Unlock()
		b.send(batch)
	}
}

func (b *Batcher) send(batch []*pending) {
	req := &auditv1.AppendRequest{Events: make([]*auditv1.Event, len(batch))}
	for i, p := range batch {
		req.Events[i] = p.ev
	}
	ctx, span := startBatchSpan(batch)
	defer span.End()
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	resp, err := b.rpc.Append(ctx, req)
	if err != nil {
		span.SetStatus(codes.Error, "append failed")
	}
	if err == nil && len(resp.GetResults()) != len(batch) {
		err = fmt.Errorf("audit returned %d results for %d events", len(resp.GetResults()), len(batch))
	}
	for i, p := range batch {
		if err != nil {
			p.done <- outcome{err: fmt.Errorf("append audit event %s (batch of %d): %w", p.ev.GetId(), len(batch), err)}
			continue
		}
		r := resp.GetResults()[i]
		if r.GetId() != "" && r.GetId() != p.ev.GetId() {
			p.done <- outcome{err: errors.New("audit results out of order")}
			continue
		}
		p.done <- outcome{res: r}
	}
}

// startBatchSpan starts the span of one batch as a child of the first
// request's span (on a fresh context: the request's deadline and metadata
// must not leak into the shared call) with links to the other requests,
// and links each other request's span back to it.
func startBatchSpan(batch []*pending) (context.Context, trace.Span) {
	parent := trace.ContextWithSpanContext(context.Background(), batch[0].span.SpanContext())
	var links []trace.Link
	for _, p := range batch[1:] {
		if sc := p.span.SpanContext(); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	ctx, span := otel.Tracer(tracerName).Start(parent, "audit.append_batch",
		trace.WithLinks(links...),
		trace.WithAttributes(attribute.Int("credmatrix.audit.batch_size", len(batch))))
	if sc := span.SpanContext(); sc.IsValid() {
		for _, p := range batch[1:] {
			p.span.AddLink(trace.Link{SpanContext: sc})
		}
	}
	return ctx, span
}
