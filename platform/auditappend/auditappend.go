// Package auditappend is the one audit appender of every producer (broker,
// keyguard): it records their events in the audit service and returns
// each event's durable position, and it fails closed.
//
// One Appender serves one audit endpoint (one gRPC connection); a
// producer that writes to several audit logs (one per residency zone) puts
// a small router above several Appenders.
//
// # Batching
//
// Events of concurrent callers leave together: while MaxInFlight Append
// RPCs are outstanding, new events queue, and each RPC that completes
// takes up to MaxEvents queued events in the next one. An idle appender
// sends an event at once, so batching adds no latency; a busy one sends
// fewer, larger requests, which the audit service makes durable in one
// group commit. At most MaxQueued events wait; beyond that Append fails at
// once (ErrOverloaded) rather than holding memory without bound.
//
// # One result per event
//
// Every request asks the audit service to refuse invalid events
// individually (AppendRequest.refuse_individually): an event it refuses
// fails only its own caller (ErrRefused, naming the field), and the rest of
// the batch is recorded. An audit service that predates per-event
// refusals answers a batch holding an invalid event with INVALID_ARGUMENT;
// the appender then sends that batch's events one by one, so the rule
// holds during a rolling upgrade too (the idempotency of Append on event
// id makes the resend safe).
//
// # Cancelled callers
//
// Once Append is called the event is recorded, whatever becomes of the
// caller's context: the caller calls Append after its decision is made,
// so the action it records (an issuance, a denial, a key operation)
// happened and must not vanish from the log because the caller hung up.
// The RPC runs on a context of its own (the appender's timeout, the
// caller's trace); a caller whose context ends stops waiting and gets the
// context's error, and fails closed: it returns nothing it guarded.
//
// # Errors
//
// Every error means "not known to be durable": the caller must fail closed
// (UNAVAILABLE to its own caller). ErrUnavailable wraps transport and
// audit-side failures (the gRPC status stays in the chain),
// ErrRefused an event the audit service refused, ErrOverloaded a full
// queue and ErrClosed an appender being closed. An audit service that
// answers RESOURCE_EXHAUSTED (nothing recorded, retry advised) is retried
// after its advised delay until the request's timeout.
//
// # Tracing
//
// Each RPC is one "audit.append_batch" span whose parent is the first
// queued caller's span, so a lone request is a plain chain request →
// batch → audit.Append. The batch span links to every other caller in it,
// and each of their spans links back to the batch span, so an investigator
// can follow any request into the audit call that recorded its event.
package auditappend

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/platform/config"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// tracerName names this package's instrumentation scope.
const tracerName = "github.com/credmatrix/credmatrix/platform/auditappend"

// Defaults and limits.
const (
	// MaxEventsPerAppend is the audit API's limit on one Append request,
	// and so on one AppendBatch call.
	MaxEventsPerAppend = 1000
	// DefaultMaxEvents is the most events one request carries.
	DefaultMaxEvents = 256
	// DefaultMaxInFlight is the most requests outstanding at once.
	DefaultMaxInFlight = 4
	// DefaultMaxQueued is the most events waiting for a request.
	DefaultMaxQueued = 10000
	// DefaultTimeout bounds one request, retries included, so a hung audit
	// service turns into a prompt failure.
	DefaultTimeout = 5 * time.Second
	// defaultRetryAfter is the wait before retrying an overloaded audit
	// service that gave no advice.
	defaultRetryAfter = 50 * time.Millisecond
)

// Errors. Each is wrapped with the details; test with errors.Is.
var (
	// ErrUnavailable means the audit service could not be reached or did
	// not record the events (its gRPC status is in the chain).
	ErrUnavailable = errors.New("audit unavailable")
	// ErrRefused means the audit service refused the event as invalid; the
	// message names the field. Retrying the same event will not help.
	ErrRefused = errors.New("audit refused the event")
	// ErrOverloaded means MaxQueued events are already waiting.
	ErrOverloaded = errors.New("audit appender overloaded: too many events waiting")
	// ErrClosed means the appender is closing or closed.
	ErrClosed = errors.New("audit appender closed")
)

// Config is an appender's tuning, as services read it from their config.
type Config struct {
	MaxEvents   int `cfg:"max_events" help:"most events in one audit Append request (events of concurrent requests queue while requests are in flight and leave together); 1 sends each alone"`
	MaxInFlight int `cfg:"max_in_flight" help:"most audit Append requests in flight at once"`
}

// DefaultConfig returns the default tuning.
func DefaultConfig() Config {
	return Config{MaxEvents: DefaultMaxEvents, MaxInFlight: DefaultMaxInFlight}
}

// Validate checks c, naming the bad field.
func (c Config) Validate() error {
	var errs []error
	if c.MaxEvents < 1 || c.MaxEvents > MaxEventsPerAppend {
		errs = append(errs, &config.FieldError{Field: "max_events", Msg: fmt.Sprintf("must be 1 to %d", MaxEventsPerAppend)})
	}
	if c.MaxInFlight < 1 {
		errs = append(errs, &config.FieldError{Field: "max_in_flight", Msg: "must be at least 1"})
	}
	return errors.Join(errs...)
}

// appendClient is the one audit RPC the appender calls.
type appendClient interface {
	Append(ctx context.Context, in *auditv1.AppendRequest, opts ...grpc.CallOption) (*auditv1.AppendResponse, error)
}

// Appender appends events to one audit service. It is safe for concurrent
// use.
type Appender struct {
	rpc         appendClient
	maxEvents   int
	maxInFlight int
	maxQueued   int
	timeout     time.Duration
	sleep       func(context.Context, time.Duration) error

	mu       sync.Mutex
	queue    []*request
	queued   int // events in queue
	inFlight int // flushers running
	closed   bool
	idle     chan struct{} // closed when nothing is queued or in flight; nil while not waited on
}

// request is one caller's events and where its answer goes.
type request struct {
	evs  []*auditv1.Event
	span trace.Span // the caller's span (may be a no-op)
	res  []*auditv1.AppendResult
	err  error
	done chan struct{}
}

// Option configures an Appender.
type Option func(*Appender)

// WithConfig sets the batch size and the requests in flight.
func WithConfig(c Config) Option {
	return func(a *Appender) { a.maxEvents, a.maxInFlight = c.MaxEvents, c.MaxInFlight }
}

// WithMaxQueued sets how many events may wait (DefaultMaxQueued).
func WithMaxQueued(n int) Option { return func(a *Appender) { a.maxQueued = n } }

// WithTimeout sets the deadline of one request, retries included
// (DefaultTimeout).
func WithTimeout(d time.Duration) Option { return func(a *Appender) { a.timeout = d } }

// New returns an Appender over a connection to the audit service (see
// grpcclient.Dial). It does not own conn.
func New(conn grpc.ClientConnInterface, opts ...Option) *Appender {
	return newAppender(auditv1.NewAuditServiceClient(conn), opts...)
}

func newAppender(rpc appendClient, opts ...Option) *Appender {
	a := &Appender{
		rpc: rpc, maxEvents: DefaultMaxEvents, maxInFlight: DefaultMaxInFlight,
		maxQueued: DefaultMaxQueued, timeout: DefaultTimeout, sleep: sleepCtx,
	}
	for _, o := range opts {
		o(a)
	}
	a.maxEvents = min(max(a.maxEvents, 1), MaxEventsPerAppend)
	a.maxInFlight = max(a.maxInFlight, 1)
	a.maxQueued = max(a.maxQueued, MaxEventsPerAppend)
	return a
}

// Append records ev and returns its durable position. See the package
// documentation for batching, errors and what happens when ctx ends.
func (a *Appender) Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	res, err := a.AppendBatch(ctx, []*auditv1.Event{ev})
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

// AppendBatch records the events of one caller, all in the same Append
// request (possibly with other callers' events), and returns their
// positions in order. It fails as a whole: if any of them was refused or
// not recorded, the error says so and no results are returned (those of
// evs that the audit service accepted are recorded all the same).
func (a *Appender) AppendBatch(ctx context.Context, evs []*auditv1.Event) ([]*auditv1.AppendResult, error) {
	switch {
	case len(evs) == 0:
		return nil, nil
	case len(evs) > MaxEventsPerAppend:
		return nil, fmt.Errorf("append %d audit events: at most %d at once", len(evs), MaxEventsPerAppend)
	}
	r := &request{evs: evs, span: trace.SpanFromContext(ctx), done: make(chan struct{})}
	a.mu.Lock()
	switch {
	case a.closed:
		a.mu.Unlock()
		return nil, ErrClosed
	case a.queued+len(evs) > a.maxQueued:
		a.mu.Unlock()
		return nil, fmt.Errorf("%w (%d)", ErrOverloaded, a.maxQueued)
	}
	a.queue = append(a.queue, r)
	a.queued += len(evs)
	if a.inFlight < a.maxInFlight {
		a.inFlight++
		go a.flush()
	}
	a.mu.Unlock()
	select {
	case <-r.done:
		return r.res, r.err
	case <-ctx.Done():
		// The events are still recorded (see "Cancelled callers").
		return nil, ctx.Err()
	}
}

// Queued returns the number of events waiting for a request, not counting
// those in flight.
func (a *Appender) Queued() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.queued
}

// Close stops accepting events and waits until every event already
// accepted has its answer (recorded or failed), or ctx ends. Call it
// before closing the connection, so the events of callers that went away
// are not lost at shutdown. It is safe to call more than once.
func (a *Appender) Close(ctx context.Context) error {
	a.mu.Lock()
	a.closed = true
	if a.inFlight == 0 {
		a.mu.Unlock()
		return nil
	}
	if a.idle == nil {
		a.idle = make(chan struct{})
	}
	idle := a.idle
	a.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("audit appender closing with %d events unsent: %w", a.Queued(), ctx.Err())
	}
}

// flush sends queued requests until the queue is empty; at most
// maxInFlight run at once.
func (a *Appender) flush() {
	for {
		a.mu.Lock()
		if len(a.queue) == 0 {
			a.inFlight--
			if a.inFlight == 0 && a.idle != nil {
				close(a.idle)
				a.idle = nil
			}
			a.mu.Unlock()
			return
		}
		// Whole requests, at least one, up to maxEvents events.
		n, events := 1, len(a.queue[0].evs)
		for n < len(a.queue) && events+len(a.queue[n].evs) <= a.maxEvents {
			events += len(a.queue[n].evs)
			n++
		}
		batch := a.queue[:n:n]
		a.queue = a.queue[n:]
		a.queued -= events
		a.mu.Unlock()
		a.send(batch, events)
	}
}

// send appends the events of batch in one request and answers each
// caller.
func (a *Appender) send(batch []*request, n int) {
	evs := make([]*auditv1.Event, 0, n)
	for _, r := range batch {
		evs = append(evs, r.evs...)
	}
	ctx, span := startBatchSpan(batch, len(evs))
	defer span.End()
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	results, errs := a.appendEvents(ctx, evs)
	if refused := countErrs(errs); refused > 0 {
		span.SetStatus(codes.Error, "append failed")
		span.SetAttributes(attribute.Int("credmatrix.audit.failed_events", refused))
	}
	off := 0
	for _, r := range batch {
		var failed []error
		for i := range r.evs {
			if err := errs[off+i]; err != nil {
				failed = append(failed, err)
			}
		}
		switch {
		case len(failed) == 1:
			r.err = failed[0]
		case len(failed) > 1:
			r.err = fmt.Errorf("%d of %d audit events not recorded: %w", len(failed), len(r.evs), errors.Join(failed...))
		default:
			r.res = results[off : off+len(r.evs) : off+len(r.evs)]
		}
		off += len(r.evs)
		close(r.done)
	}
}

// appendEvents records evs and returns a result or an error per event.
func (a *Appender) appendEvents(ctx context.Context, evs []*auditv1.Event) ([]*auditv1.AppendResult, []error) {
	results := make([]*auditv1.AppendResult, len(evs))
	errs := make([]error, len(evs))
	resp, err := a.call(ctx, evs)
	if err != nil && len(evs) > 1 && status.Code(err) == grpccodes.InvalidArgument {
		// An audit service without per-event refusals refused the batch
		// for one of its events: find it by sending each alone.
		for i, ev := range evs {
			r, e := a.appendEvents(ctx, []*auditv1.Event{ev})
			results[i], errs[i] = r[0], e[0]
		}
		return results, errs
	}
	if err != nil {
		for i, ev := range evs {
			errs[i] = describe(ev, len(evs), err)
		}
		return results, errs
	}
	if got := len(resp.GetResults()); got != len(evs) {
		err := fmt.Errorf("%w: audit returned %d results for %d events", ErrUnavailable, got, len(evs))
		for i := range errs {
			errs[i] = err
		}
		return results, errs
	}
	for i, r := range resp.GetResults() {
		switch ev := evs[i]; {
		case r.GetId() != "" && r.GetId() != ev.GetId():
			errs[i] = fmt.Errorf("%w: audit results out of order (event %s answered as %s)", ErrUnavailable, ev.GetId(), r.GetId())
		case r.GetRefusal() != nil:
			errs[i] = fmt.Errorf("%w %s: %s (%s)", ErrRefused, ev.GetId(), r.GetRefusal().GetMessage(), grpccodes.Code(r.GetRefusal().GetCode()))
		default:
			results[i] = r
		}
	}
	return results, errs
}

// call makes one Append RPC, retrying while the audit service reports
// overload (it then recorded nothing) until ctx ends.
func (a *Appender) call(ctx context.Context, evs []*auditv1.Event) (*auditv1.AppendResponse, error) {
	req := &auditv1.AppendRequest{Events: evs, RefuseIndividually: true}
	for {
		resp, err := a.rpc.Append(ctx, req)
		if status.Code(err) != grpccodes.ResourceExhausted {
			return resp, err
		}
		if a.sleep(ctx, retryAfter(err)) != nil {
			return nil, err
		}
	}
}

// describe wraps the failure of a whole request for one of its events.
func describe(ev *auditv1.Event, n int, err error) error {
	if status.Code(err) == grpccodes.InvalidArgument {
		// A lone event the audit service refused (the fallback above).
		return fmt.Errorf("%w %s: %s", ErrRefused, ev.GetId(), status.Convert(err).Message())
	}
	return fmt.Errorf("%w: append audit event %s (request of %d): %w", ErrUnavailable, ev.GetId(), n, err)
}

// retryAfter is the delay an overloaded audit service advised.
func retryAfter(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			if d := ri.GetRetryDelay().AsDuration(); d > 0 {
				return d
			}
		}
	}
	return defaultRetryAfter
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func countErrs(errs []error) int {
	n := 0
	for _, e := range errs {
		if e != nil {
			n++
		}
	}
	return n
}

// startBatchSpan starts the span of one request as a child of the first
// caller's span (on a fresh context: that caller's deadline and metadata
// must not leak into the shared call) with links to the other callers,
// and links each other caller's span back to it.
func startBatchSpan(batch []*request, events int) (context.Context, trace.Span) {
	parent := trace.ContextWithSpanContext(context.Background(), batch[0].span.SpanContext())
	var links []trace.Link
	for _, r := range batch[1:] {
		if sc := r.span.SpanContext(); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	ctx, span := otel.Tracer(tracerName).Start(parent, "audit.append_batch",
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.Int("credmatrix.audit.batch_size", events),
			attribute.Int("credmatrix.audit.batch_requests", len(batch)),
		))
	if sc := span.SpanContext(); sc.IsValid() {
		for _, r := range batch[1:] {
			r.span.AddLink(trace.Link{SpanContext: sc})
		}
	}
	return ctx, span
}
