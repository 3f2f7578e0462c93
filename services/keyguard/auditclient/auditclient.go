// Package auditclient is keyguard's writer to the audit service. It
// implements keyguard.Auditor and keyguard.BatchAuditor, and coalesces
// concurrent appends: while one Append RPC is in flight, the events of
// other callers queue up and go out together in the next one, so many
// concurrent Encrypt calls share one audit round trip (and one group
// commit) instead of each paying its own. Every caller still returns only
// once its own event is durable, and sees the error of its own batch.
//
// Tracing: each RPC is one "audit.append_batch" span whose parent is the
// first live request's span, so a lone request is a plain parent/child
// chain request → batch → audit.Append; the batch span links to every
// other request in it and each of their spans links back, so any request
// can be followed into the audit call that recorded its events.
package auditclient

import (
	"context"
	"fmt"
	"sync"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/credmatrix/credmatrix/services/keyguard"
)

// tracerName names this package's instrumentation scope.
const tracerName = "github.com/credmatrix/credmatrix/services/keyguard/auditclient"

// Defaults of a Client.
const (
	// DefaultTimeout bounds one Append RPC, so a hung audit service turns
	// into a prompt UNAVAILABLE.
	DefaultTimeout = 5 * time.Second
	// DefaultInFlight is how many Append RPCs may be outstanding at once.
	DefaultInFlight = 1
	// MaxEventsPerAppend is the audit API's limit on one Append.
	MaxEventsPerAppend = 1000
)

// Client appends keyguard's events to the audit service.
type Client struct {
	rpc      auditv1.AuditServiceClient
	timeout  time.Duration
	inFlight chan struct{}

	mu      sync.Mutex
	queue   []*request
	queued  int
	running bool
}

var (
	_ keyguard.Auditor      = (*Client)(nil)
	_ keyguard.BatchAuditor = (*Client)(nil)
)

// request is one caller's events and where its answer goes.
type request struct {
	ctx  context.Context
	evs  []*auditv1.Event
	res  []*auditv1.AppendResult
	err  error
	done chan struct{}
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout sets the per-RPC timeout.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithInFlight sets how many Append RPCs may be outstanding at once.
func WithInFlight(n int) Option {
	return func(c *Client) { c.inFlight = make(chan struct{}, max(n, 1)) }
}

// New returns a client over conn.
func New(conn grpc.ClientConnInterface, opts ...Option) *Client {
	c := &Client{rpc: auditv1.NewAuditServiceClient(conn), timeout: DefaultTimeout, inFlight: make(chan struct{}, DefaultInFlight)}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Append records ev and returns once it is durable.
func (c *Client) Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	res, err := c.AppendBatch(ctx, []*auditv1.Event{ev})
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

// AppendBatch records evs (all in one Append RPC, possibly with other
// callers' events) and returns their results in order once durable.
func (c *Client) AppendBatch(ctx context.Context, evs []*auditv1.Event) ([]*auditv1.AppendResult, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	if len(evs) > MaxEventsPerAppend {
		return nil, fmt.Errorf("append: %d events exceed %d", len(evs), MaxEventsPerAppend)
	}
	r := &request{ctx: ctx, evs: evs, done: make(chan struct{})}
	c.mu.Lock()
	c.queue = append(c.queue, r)
	c.queued += len(evs)
	start := !c.running
	c.running = true
	c.mu.Unlock()
	if start {
		go c.drain()
	}
	select {
	case <-r.done:
		return r.res, r.err
	case <-ctx.Done():
		// The events may still be recorded; the caller fails closed.
		return nil, ctx.Err()
	}
}

// drain sends the queue in batches until it is empty, with at most
// cap(inFlight) RPCs outstanding; it runs while there is work.
func (c *Client) drain() {
	for {
		c.inFlight <- struct{}{}
		c.mu.Lock()
		if len(c.queue) == 0 {
			c.running = false
			c.mu.Unlock()
			<-c.inFlight
			return
		}
		var batch []*request
		n := 0
		for len(c.queue) > 0 && n+len(c.queue[0].evs) <= MaxEventsPerAppend {
			batch = append(batch, c.queue[0])
			n += len(c.queue[0].evs)
			c.queue = c.queue[1:]
		}
		c.queued -= n
		c.mu.Unlock()
		go func() {
			defer func() { <-c.inFlight }()
			c.send(batch, n)
		}()
	}
}

// send appends the events of batch in one RPC and answers each request.
func (c *Client) send(batch []*request, n int) {
	evs := make([]*auditv1.Event, 0, n)
	live := batch[:0:0]
	for _, r := range batch {
		if r.ctx.Err() != nil {
			// The caller has given up and failed its request: do not
			// record an operation that did not happen.
			r.err = r.ctx.Err()
			close(r.done)
			continue
		}
		evs = append(evs, r.evs...)
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	ctx, span := startBatchSpan(live, len(evs))
	defer span.End()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.rpc.Append(ctx, &auditv1.AppendRequest{Events: evs})
	if err != nil {
		span.SetStatus(codes.Error, "append failed")
	}
	if err == nil && len(resp.GetResults()) != len(evs) {
		err = fmt.Errorf("audit returned %d results for %d events", len(resp.GetResults()), len(evs))
	}
	if err != nil {
		err = fmt.Errorf("append %d audit events: %w", len(evs), err)
	}
	off := 0
	for _, r := range live {
		if err != nil {
			r.err = err
		} else {
			r.res = resp.GetResults()[off : off+len(r.evs)]
		}
		off += len(r.evs)
		close(r.done)
	}
}

// startBatchSpan starts the span of one Append RPC as a child of the first
// request's span (on a fresh context: that request's deadline and metadata
// must not leak into the shared call) with links to the other requests,
// and links each other request's span back to it.
func startBatchSpan(live []*request, events int) (context.Context, trace.Span) {
	first := trace.SpanFromContext(live[0].ctx).SpanContext()
	var links []trace.Link
	for _, r := range live[1:] {
		if sc := trace.SpanContextFromContext(r.ctx); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	ctx, span := otel.Tracer(tracerName).Start(trace.ContextWithSpanContext(context.Background(), first), "audit.append_batch",
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.Int("credmatrix.audit.batch_size", events),
			attribute.Int("credmatrix.audit.batch_requests", len(live)),
		))
	if sc := span.SpanContext(); sc.IsValid() {
		for _, r := range live[1:] {
			trace.SpanFromContext(r.ctx).AddLink(trace.Link{SpanContext: sc})
		}
	}
	return ctx, span
}
