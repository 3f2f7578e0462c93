package audit

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/clients/auditclient/tree"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Defaults of the Log's tuning options.
const (
	// DefaultQueueLimit is how many events may wait for a commit before
	// Append answers ResourceExhausted.
	DefaultQueueLimit = 20000
	// DefaultCommitMaxEvents bounds the events of one group commit.
	DefaultCommitMaxEvents = 2000
	// DefaultCheckpointEvery signs a checkpoint after this many events.
	DefaultCheckpointEvery = 1000
	// DefaultCheckpointInterval signs a checkpoint this often when the
	// log has grown.
	DefaultCheckpointInterval = 10 * time.Second
	// DefaultRetryAfter is the retry advice of an overloaded log.
	DefaultRetryAfter = 50 * time.Millisecond
)

// subscribeBatch is how many stored events Subscribe reads per store call
// while catching up.
const subscribeBatch = 256

// loadBatch is how many stored events Open reads per store call while
// rebuilding the tree.
const loadBatch = 4096

// commitTimeout bounds one store commit, so a hung store fails the batch
// with Unavailable instead of holding every caller forever.
const commitTimeout = 30 * time.Second

// ErrStoreMismatch means the store does not match its last signed
// checkpoint (events modified, removed or reordered, a checkpoint forged,
// or the store belongs to another log): Open refuses to serve it.
var ErrStoreMismatch = errors.New("audit store does not match its last signed checkpoint")

// Log is the audit service logic over a Store. It validates appends and
// hands them to one committer goroutine that group-commits the requests
// waiting at that moment in one store transaction (one fsync), assigns
// gap-free sequence numbers, extends the in-memory RFC 6962 Merkle tree,
// signs checkpoints every N events or T seconds, and acknowledges each
// caller only once its events are durable. It also serves queries, live
// subscriptions, checkpoints and proofs.
//
// A Log does not own its Store: closing the Log does not close the Store.
type Log struct {
	store Store
	clock func() time.Time

	signer     *checkpoint.Signer
	cpEvery    uint64
	cpInterval time.Duration

	queueLimit int64
	maxCommit  int
	window     time.Duration
	retryAfter time.Duration

	tree   *tree.Tree
	queue  chan *request
	queued atomic.Int64 // events waiting in queue
	cpNow  chan chan error
	latest atomic.Pointer[StoredCheckpoint]
	resync bool // the store may hold more than the tree; committer only

	mu      sync.Mutex
	changed chan struct{} // closed and replaced after each durable append
	done    chan struct{} // closed by Close
	stopped chan struct{} // closed when the committer has exited
	closed  bool
}

// request is one Append waiting for the committer.
type request struct {
	ctx    context.Context
	events []prepared
	done   chan response // buffered: the committer never blocks on it
}

// prepared is an event made ready in the caller's goroutine, so the
// committer only has to number it: a copy with recorded_time and
// source_service set, and its serialisation without the sequence.
type prepared struct {
	event *auditv1.Event
	// rest is leaf.Marshal of event with sequence 0. Sequence is field 1
	// and deterministic marshalling writes fields in number order, so the
	// leaf is the sequence's tag and varint followed by rest (see
	// withSequence).
	rest []byte
}

// withSequence returns leaf.Marshal of p's event numbered seq.
func (p prepared) withSequence(seq uint64) []byte {
	if seq == 0 {
		return p.rest // proto3 omits a zero sequence
	}
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(p.rest))
	b = append(b, 0x08) // field 1, varint
	b = binary.AppendUvarint(b, seq)
	return append(b, p.rest...)
}

type response struct {
	results []*auditv1.AppendResult
	err     error
}

// Option configures a Log.
type Option func(*Log)

// WithClock sets the clock that stamps recorded_time and checkpoints, so
// tests are deterministic. The default is time.Now.
func WithClock(clock func() time.Time) Option {
	return func(l *Log) { l.clock = clock }
}

// WithSigner makes the Log sign checkpoints with s every `every` events
// (0: DefaultCheckpointEvery) or `interval` (0: DefaultCheckpointInterval),
// and verify the store's last checkpoint with it at Open. Without a
// signer the log keeps its tree and serves proofs but signs nothing.
func WithSigner(s *checkpoint.Signer, every uint64, interval time.Duration) Option {
	return func(l *Log) {
		l.signer = s
		if every > 0 {
			l.cpEvery = every
		}
		if interval > 0 {
			l.cpInterval = interval
		}
	}
}

// WithGroupCommit tunes group commit: at most queueLimit events wait (more
// get ResourceExhausted with retryAfter), one commit takes at most
// maxEvents events, and the committer waits up to window for more requests
// before committing (0: commit whatever is waiting at once; batches form
// naturally while the previous commit runs). Zero values keep defaults.
func WithGroupCommit(queueLimit, maxEvents int, window, retryAfter time.Duration) Option {
	return func(l *Log) {
		if queueLimit > 0 {
			l.queueLimit = int64(queueLimit)
		}
		if maxEvents > 0 {
			l.maxCommit = maxEvents
		}
		if window > 0 {
			l.window = window
		}
		if retryAfter > 0 {
			l.retryAfter = retryAfter
		}
	}
}

// Open rebuilds the Merkle tree from every event in store, checks it
// against the store's last signed checkpoint (when a signer is set), and
// starts the committer. A store whose events do not match that checkpoint
// is refused with an error wrapping ErrStoreMismatch that names the tree
// size. Close stops the Log.
func Open(ctx context.Context, store Store, opts ...Option) (*Log, error) {
	l := &Log{
		store:      store,
		clock:      time.Now,
		cpEvery:    DefaultCheckpointEvery,
		cpInterval: DefaultCheckpointInterval,
		queueLimit: DefaultQueueLimit,
		maxCommit:  DefaultCommitMaxEvents,
		retryAfter: DefaultRetryAfter,
		tree:       tree.New(),
		cpNow:      make(chan chan error),
		changed:    make(chan struct{}),
		done:       make(chan struct{}),
		stopped:    make(chan struct{}),
	}
	for _, o := range opts {
		o(l)
	}
	l.queue = make(chan *request, l.queueLimit)
	if err := l.load(ctx); err != nil {
		return nil, err
	}
	go l.run()
	return l, nil
}

// load extends the tree with the stored events it does not hold yet,
// checking that each sits at its own sequence.
func (l *Log) load(ctx context.Context) error {
	for {
		from := l.tree.Size()
		events, err := l.store.Read(ctx, from, loadBatch)
		if err != nil {
			return fmt.Errorf("read audit store from %d: %w", from, err)
		}
		hashes := make([]tree.Hash, len(events))
		for i, e := range events {
			if want := from + uint64(i); e.GetSequence() != want {
				return fmt.Errorf("%w: stored event at position %d has sequence %d", ErrStoreMismatch, want, e.GetSequence())
			}
			h, err := eventLeafHash(e)
			if err != nil {
				return fmt.Errorf("%w: stored event %d cannot be serialised: %v", ErrStoreMismatch, from+uint64(i), err)
			}
			hashes[i] = tree.Hash(h)
		}
		l.tree.Append(hashes...)
		if len(events) < loadBatch {
			break
		}
	}
	cp, ok, err := l.store.LatestCheckpoint(ctx)
	if err != nil {
		return fmt.Errorf("read latest checkpoint: %w", err)
	}
	if !ok {
		return nil
	}
	if l.signer != nil {
		if err := l.check(cp); err != nil {
			return err
		}
	}
	l.latest.Store(&cp)
	return nil
}

// check verifies a stored checkpoint against the signing key and the tree.
func (l *Log) check(cp StoredCheckpoint) error {
	c, err := l.signer.Verifier().Open(cp.Note)
	if err != nil {
		return fmt.Errorf("%w: checkpoint at size %d is not signed by key %s for origin %s: %v", ErrStoreMismatch, cp.Size, l.signer.KeyID(), l.signer.Origin(), err)
	}
	if c.Size != cp.Size {
		return fmt.Errorf("%w: checkpoint stored for size %d signs size %d", ErrStoreMismatch, cp.Size, c.Size)
	}
	if size := l.tree.Size(); c.Size > size {
		return fmt.Errorf("%w: it commits to %d events but the store holds %d (events %d to %d are missing: truncated?)", ErrStoreMismatch, c.Size, size, size, c.Size-1)
	}
	root, err := l.tree.Root(c.Size)
	if err != nil {
		return err
	}
	if !slices.Equal(root, c.Root) {
		return fmt.Errorf("%w: root of the first %d stored events differs from the signed root (an event below sequence %d was modified, removed or reordered)", ErrStoreMismatch, c.Size, c.Size)
	}
	return nil
}

// Close stops the committer (queued appends fail with Unavailable), signs
// a last checkpoint if the log grew, ends every Subscribe (with
// Unavailable) and refuses further appends. It does not close the Store.
// It is safe to call more than once.
func (l *Log) Close() error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.done)
	}
	l.mu.Unlock()
	<-l.stopped
	return nil
}

func errShuttingDown() error { return Errorf(Unavailable, "audit log is shutting down") }

// tracerName names the audit log's instrumentation scope.
const tracerName = "github.com/credmatrix/credmatrix/services/audit"

// Append records events on behalf of source (the producer's verified
// identity, stored as source_service) and returns their positions in
// request order, only once they are durable.
//
// The events are validated first; any invalid event rejects the batch with
// an Invalid error naming it. An event whose id is already in the log (or
// earlier in the batch, or in a request committed with it) is not stored
// again: its result is the existing event's. When too many events wait
// already, nothing is recorded and the error is ResourceExhausted with
// retry advice. If the store fails, nothing is acknowledged and the error
// is Unavailable. The caller's events are not modified.
//
// recorded_time is stamped when the log accepts the batch, so that the
// event can be serialised in the caller's goroutine; it precedes
// durability by at most one group commit (milliseconds).
//
// Append runs in an "audit.commit" span (a child of the Append RPC's span)
// that covers waiting for the group commit; it names the event count and
// the first sequence number, never event content.
func (l *Log) Append(ctx context.Context, source string, events []*auditv1.Event) (results []*auditv1.AppendResult, err error) {
	ctx, span := otel.Tracer(tracerName).Start(ctx, "audit.commit", trace.WithAttributes(attribute.Int("credmatrix.audit.batch_size", len(events))))
	defer func() { endCommitSpan(span, results, err) }()
	if err := validateBatch(events); err != nil {
		return nil, err
	}
	return l.record(ctx, source, events)
}

// Outcome is what became of one event of AppendEach: recorded (Result)
// or refused (Err).
type Outcome struct {
	// Result is the event's durable position; nil when it was refused.
	Result *auditv1.AppendResult
	// Err is an Invalid *Error naming the event ("events[2].reason: ...")
	// when it was refused; nil when it was recorded.
	Err error
}

// AppendEach is Append with refusals per event: an event that fails
// validation is refused alone, in its Outcome, and the other events of
// the batch are recorded exactly as Append records them (in one group
// commit, in request order). A producer that batches the events of many
// of its callers uses it so that one caller's bad event fails only that
// caller. The error is for the request as a whole: an empty or oversized
// batch (Invalid), an overloaded log (ResourceExhausted) or a store
// failure (Unavailable), and then nothing is recorded.
func (l *Log) AppendEach(ctx context.Context, source string, events []*auditv1.Event) (outcomes []Outcome, err error) {
	ctx, span := otel.Tracer(tracerName).Start(ctx, "audit.commit", trace.WithAttributes(attribute.Int("credmatrix.audit.batch_size", len(events))))
	var results []*auditv1.AppendResult
	defer func() { endCommitSpan(span, results, err) }()
	if err := validateBatchSize(events); err != nil {
		return nil, err
	}
	outcomes = make([]Outcome, len(events))
	valid := make([]*auditv1.Event, 0, len(events))
	for i, e := range events {
		if verr := validateEvent(e); verr != nil {
			outcomes[i].Err = Errorf(Invalid, "events[%d]%s", i, verr)
			continue
		}
		valid = append(valid, e)
	}
	if refused := len(events) - len(valid); refused > 0 {
		span.SetAttributes(attribute.Int("credmatrix.audit.refused", refused))
	}
	if len(valid) == 0 {
		return outcomes, nil
	}
	if results, err = l.record(ctx, source, valid); err != nil {
		return nil, err
	}
	j := 0
	for i := range outcomes {
		if outcomes[i].Err == nil {
			outcomes[i].Result = results[j]
			j++
		}
	}
	return outcomes, nil
}

func endCommitSpan(span trace.Span, results []*auditv1.AppendResult, err error) {
	if err != nil {
		span.SetStatus(codes.Error, "append failed")
	} else if len(results) > 0 {
		span.SetAttributes(attribute.Int64("credmatrix.audit.first_sequence", int64(results[0].GetSequence())))
	}
	span.End()
}

// record hands valid events to the committer and waits until they are
// durable.
func (l *Log) record(ctx context.Context, source string, events []*auditv1.Event) ([]*auditv1.AppendResult, error) {
	select {
	case <-l.done:
		return nil, errShuttingDown()
	default:
	}
	n := int64(len(events))
	if l.queued.Add(n) > l.queueLimit {
		l.queued.Add(-n)
		return nil, &Error{Code: ResourceExhausted, Message: "audit log overloaded: nothing recorded; retry after the advised delay", RetryAfter: l.retryAfter}
	}
	recorded := timestamppb.New(l.clock())
	r := &request{ctx: ctx, events: make([]prepared, len(events)), done: make(chan response, 1)}
	for i, e := range events {
		c := proto.CloneOf(e)
		c.Sequence = 0
		c.RecordedTime = recorded
		c.SourceService = source
		rest, err := leaf.Marshal(c)
		if err != nil {
			l.queued.Add(-n)
			return nil, Errorf(Invalid, "events[%d]: cannot be serialised", i)
		}
		r.events[i] = prepared{event: c, rest: rest}
	}
	l.queue <- r // never blocks: capacity is queueLimit requests of >= 1 event
	select {
	case resp := <-r.done:
		return resp.results, resp.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.stopped:
		select {
		case resp := <-r.done:
			return resp.results, resp.err
		default:
			return nil, errShuttingDown()
		}
	}
}

// run is the committer: the only goroutine that writes to the store.
func (l *Log) run() {
	defer close(l.stopped)
	var tick <-chan time.Time
	if l.signer != nil {
		t := time.NewTicker(l.cpInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case r := <-l.queue:
			l.commit(l.collect(r))
			l.maybeCheckpoint(false)
		case <-tick:
			l.maybeCheckpoint(false)
		case reply := <-l.cpNow:
			reply <- l.maybeCheckpoint(true)
		case <-l.done:
			for {
				select {
				case r := <-l.queue:
					l.queued.Add(-int64(len(r.events)))
					r.done <- response{err: errShuttingDown()}
					continue
				default:
				}
				break
			}
			l.maybeCheckpoint(true)
			return
		}
	}
}

// collect gathers the requests waiting now (and, with a window, those
// arriving within it) up to maxCommit events.
func (l *Log) collect(first *request) []*request {
	batch := []*request{first}
	n := len(first.events)
	for n < l.maxCommit {
		select {
		case r := <-l.queue:
			batch = append(batch, r)
			n += len(r.events)
			continue
		default:
		}
		break
	}
	if l.window <= 0 || n >= l.maxCommit {
		return batch
	}
	timer := time.NewTimer(l.window)
	defer timer.Stop()
	for n < l.maxCommit {
		select {
		case r := <-l.queue:
			batch = append(batch, r)
			n += len(r.events)
		case <-timer.C:
			return batch
		}
	}
	return batch
}

// staged is a batch ready for the store.
type staged struct {
	records []Record
	hashes  []tree.Hash
	results [][]*auditv1.AppendResult // per request
}

// stage sequences the live requests' events after the tree's head.
// Events already stored (in stored) or earlier in the batch get the
// existing result.
func (l *Log) stage(batch []*request, stored map[string]*auditv1.Event) (staged, error) {
	next := l.tree.Size()
	st := staged{results: make([][]*auditv1.AppendResult, len(batch))}
	first := make(map[string]*auditv1.AppendResult)
	for ri, r := range batch {
		res := make([]*auditv1.AppendResult, len(r.events))
		for i, p := range r.events {
			id := p.event.GetId()
			if s, ok := stored[id]; ok {
				h, err := eventLeafHash(s)
				if err != nil {
					return staged{}, unavailable("audit store returned an unreadable event", err)
				}
				res[i] = &auditv1.AppendResult{Id: id, Sequence: s.GetSequence(), LeafHash: h}
				continue
			}
			if f, ok := first[id]; ok {
				res[i] = proto.CloneOf(f)
				continue
			}
			seq := next + uint64(len(st.records))
			// The prepared copy is ours: number it in place (a restage
			// numbers it again).
			e := p.event
			e.Sequence = seq
			data := p.withSequence(seq)
			h := leafHash(data)
			res[i] = &auditv1.AppendResult{Id: id, Sequence: seq, LeafHash: h}
			first[id] = res[i]
			st.records = append(st.records, Record{Event: e, Data: data})
			st.hashes = append(st.hashes, tree.Hash(h))
		}
		st.results[ri] = res
	}
	return st, nil
}

// commit stores one group of requests in one store transaction and
// answers each.
func (l *Log) commit(batch []*request) {
	var n int64
	live := batch[:0]
	for _, r := range batch {
		n += int64(len(r.events))
		if r.ctx.Err() == nil { // a caller that gave up gets nothing stored
			live = append(live, r)
		}
	}
	l.queued.Add(-n)
	fail := func(err error) {
		for _, r := range live {
			r.done <- response{err: err}
		}
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if l.resync {
		// A failed commit may still be durable: trust only the store.
		if err := l.load(ctx); err != nil {
			fail(unavailable("audit store unavailable", err))
			return
		}
		l.resync = false
	}
	// Optimistic: ids are fresh random UUIDs, so look them up only when
	// the store reports a duplicate (a producer's retry).
	st, err := l.stage(live, nil)
	if err == nil {
		err = l.appendRecords(ctx, st.records)
		if errors.Is(err, ErrSequence) {
			// Another writer extended the store (a replica that was the
			// sequencer before us): catch up, then number the batch after
			// its events.
			if err = l.load(ctx); err == nil {
				if st, err = l.stage(live, nil); err == nil {
					err = l.appendRecords(ctx, st.records)
				}
			}
		}
		if errors.Is(err, ErrDuplicateID) {
			st, err = l.restage(ctx, live)
			if err == nil && len(st.records) > 0 {
				err = l.appendRecords(ctx, st.records)
			}
		}
	}
	if err != nil {
		l.resync = true
		fail(unavailable("audit store unavailable; retry the batch", err))
		return
	}
	l.tree.Append(st.hashes...)
	if len(st.records) > 0 {
		l.wake()
	}
	for i, r := range live {
		r.done <- response{results: st.results[i]}
	}
}

// appendRecords stores records through the store's RecordAppender when it
// has one, else through Append.
func (l *Log) appendRecords(ctx context.Context, records []Record) error {
	if ra, ok := l.store.(RecordAppender); ok {
		return ra.AppendRecords(ctx, records)
	}
	events := make([]*auditv1.Event, len(records))
	for i, r := range records {
		events[i] = r.Event
	}
	return l.store.Append(ctx, events)
}

// restage looks up the batch's ids and stages it again without the
// stored ones.
func (l *Log) restage(ctx context.Context, live []*request) (staged, error) {
	var ids []string
	for _, r := range live {
		for _, p := range r.events {
			ids = append(ids, p.event.GetId())
		}
	}
	stored, err := l.store.Lookup(ctx, ids)
	if err != nil {
		return staged{}, err
	}
	return l.stage(live, stored)
}

// maybeCheckpoint signs and stores a checkpoint of the whole tree when it
// grew by cpEvery events, when cpInterval passed since the last one, or
// (force) whenever it grew at all.
func (l *Log) maybeCheckpoint(force bool) error {
	if l.signer == nil {
		return Errorf(Unavailable, "this audit log signs no checkpoints (no signing key configured)")
	}
	if l.resync {
		return Errorf(Unavailable, "audit store unavailable")
	}
	size := l.tree.Size()
	last := l.latest.Load()
	var lastSize uint64
	if last != nil {
		lastSize = last.Size
	}
	now := l.clock()
	switch {
	case size == 0 || size == lastSize:
		return nil
	case force, size-lastSize >= l.cpEvery, last == nil, now.Sub(last.Time) >= l.cpInterval:
	default:
		return nil
	}
	root, err := l.tree.Root(size)
	if err != nil {
		return err
	}
	signed, err := l.signer.Sign(size, root)
	if err != nil {
		return &Error{Code: Unavailable, Message: "audit log cannot sign a checkpoint", Err: err}
	}
	cp := StoredCheckpoint{Size: size, Note: signed, Time: now.UTC()}
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if err := l.store.AddCheckpoint(ctx, cp); err != nil {
		// A read replica cannot write checkpoints: serve the sequencer's
		// latest one once the tree has caught up with the store.
		if l.load(ctx) == nil && l.latest.Load() != nil {
			return nil
		}
		return unavailable("audit store unavailable", err)
	}
	l.latest.Store(&cp)
	return nil
}

// Checkpoint is a signed checkpoint as the log serves it.
type Checkpoint struct {
	StoredCheckpoint
	// Origin is the log origin.
	Origin string
	// Root is the RFC 6962 root hash at Size.
	Root []byte
	// KeyID is the signing key's "<name>+<hash>".
	KeyID string
}

// LatestCheckpoint returns a checkpoint covering every durable event: the
// latest one if the log has not grown since, else a freshly signed one.
func (l *Log) LatestCheckpoint(ctx context.Context) (Checkpoint, error) {
	if l.signer == nil {
		return Checkpoint{}, Errorf(Unavailable, "this audit log signs no checkpoints (no signing key configured)")
	}
	reply := make(chan error, 1)
	select {
	case l.cpNow <- reply:
	case <-ctx.Done():
		return Checkpoint{}, ctx.Err()
	case <-l.stopped:
	}
	select {
	case err := <-reply:
		if err != nil {
			return Checkpoint{}, err
		}
	case <-ctx.Done():
		return Checkpoint{}, ctx.Err()
	case <-l.stopped:
	}
	cp := l.latest.Load()
	if cp == nil {
		return Checkpoint{}, Errorf(NotFound, "the audit log is empty: no checkpoint yet")
	}
	root, err := l.tree.Root(cp.Size)
	if err != nil {
		return Checkpoint{}, err
	}
	return Checkpoint{StoredCheckpoint: *cp, Origin: l.signer.Origin(), Root: root, KeyID: l.signer.KeyID()}, nil
}

// Checkpoints returns up to limit stored checkpoints of size >= fromSize.
func (l *Log) Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]StoredCheckpoint, error) {
	cps, err := l.store.Checkpoints(ctx, fromSize, limit)
	if err != nil {
		return nil, unavailable("audit store unavailable", err)
	}
	return cps, nil
}

// Queued returns the number of events waiting for a commit (the audit lag
// in events).
func (l *Log) Queued() int { return int(l.queued.Load()) }

// Size returns the number of durable events in the tree.
func (l *Log) Size() uint64 { return l.tree.Size() }

// Origin returns the log origin, or "" without a signer.
func (l *Log) Origin() string {
	if l.signer == nil {
		return ""
	}
	return l.signer.Origin()
}

// resolveSize turns a requested tree size (0: the latest checkpoint's)
// into one the tree holds, naming field in errors.
func (l *Log) resolveSize(field string, size uint64) (uint64, error) {
	if size == 0 {
		cp := l.latest.Load()
		if cp == nil {
			return 0, Errorf(NotFound, "%s: no checkpoint yet; give an explicit size", field)
		}
		return cp.Size, nil
	}
	if have := l.tree.Size(); size > have {
		return 0, Errorf(Invalid, "%s: %d is larger than the log (%d events)", field, size, have)
	}
	return size, nil
}

// InclusionProof returns the leaf hash of event sequence and its audit
// path in the tree of size (0: the latest checkpoint's size).
func (l *Log) InclusionProof(sequence, size uint64) (leaf []byte, path [][]byte, treeSize uint64, err error) {
	if size, err = l.resolveSize("tree_size", size); err != nil {
		return nil, nil, 0, err
	}
	if sequence >= size {
		return nil, nil, 0, Errorf(Invalid, "sequence: %d is not below tree_size %d", sequence, size)
	}
	h, err := l.tree.LeafHash(sequence)
	if err != nil {
		return nil, nil, 0, err
	}
	path, err = l.tree.Inclusion(sequence, size)
	if err != nil {
		return nil, nil, 0, err
	}
	return h[:], path, size, nil
}

// ConsistencyProof proves the tree of first is a prefix of the tree of
// second (0: the latest checkpoint's size).
func (l *Log) ConsistencyProof(first, second uint64) (proof [][]byte, secondSize uint64, err error) {
	if second, err = l.resolveSize("second_size", second); err != nil {
		return nil, 0, err
	}
	switch {
	case first == 0:
		return nil, 0, Errorf(Invalid, "first_size: must be at least 1")
	case first > second:
		return nil, 0, Errorf(Invalid, "first_size: %d is larger than second_size %d", first, second)
	}
	proof, err = l.tree.Consistency(first, second)
	if err != nil {
		return nil, 0, err
	}
	return proof, second, nil
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
			return errShuttingDown()
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
