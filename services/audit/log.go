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

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/services/audit/tiles"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Defaults of the Log's tuning options.
const (
	// DefaultQueueLimit is how many events may wait for a commit before
	// Append answers ResourceExhausted.
	DefaultQueueLimit = 20000
	// DefaultCommitMaxEvents bounds the events of one group commit.
	DefaultCommitMaxEvents = 2000
	// DefaultRetryAfter is the retry advice of an overloaded log.
	DefaultRetryAfter = 50 * time.Millisecond
	// DefaultIndexLag is how many committed events may wait for the query
	// index before commits wait for the indexer: queries scan the events
	// the index does not cover yet, so the lag bounds their cost.
	DefaultIndexLag = 20000
	// DefaultKeptInterval is how often, at most, the kept checkpoint is
	// written while the log grows.
	DefaultKeptInterval = time.Second
)

// subscribeBatch is how many stored events Subscribe reads per store call
// while catching up.
const subscribeBatch = 256

// loadBatch is how many stored rows the log reads per store call while
// checking the store (start-up, following a sequencer).
const loadBatch = 4096

// indexBatch is how many index rows one AddIndex call writes: small
// enough that the write lock it takes (SQLite) never holds a commit back
// for long.
const indexBatch = 256

// commitTimeout bounds one store commit, so a hung store fails the batch
// with Unavailable instead of holding every caller forever.
const commitTimeout = 30 * time.Second

// ErrStoreMismatch means the store does not match what the log trusts: its
// own signed checkpoints, the checkpoint kept outside the store, or the
// leaves its columns are derived from (events modified, removed or
// reordered, a checkpoint forged, columns altered, events without a
// signature, or the store belongs to another log). Open refuses such a
// store; the error names the first sequence that is wrong.
var ErrStoreMismatch = errors.New("audit store does not match the log")

// Kept is where the log keeps its latest signed checkpoint outside the
// store (a file beside the signing key, or one the operator configures),
// so that a store rolled back, truncated or replaced wholesale is caught
// at start-up even though its own checkpoints were rolled back with it.
type Kept interface {
	// Load returns the kept signed note; nil (and no error) when none is
	// kept yet.
	Load() ([]byte, error)
	// Save replaces the kept note durably and atomically.
	Save(note []byte) error
}

// Log is the audit service logic over a Store. It validates appends and
// hands them to one committer goroutine that group-commits the requests
// waiting at that moment in one store transaction (one fsync), assigns
// gap-free sequence numbers, extends the RFC 6962 Merkle tree, signs a
// checkpoint of every commit batch (stored in the same transaction, so a
// modified event is pinpointed to its batch), and acknowledges each caller
// only once its events are durable. An indexer goroutine maintains the
// query index off the commit path. The Log also serves queries (checked
// against the leaves), live subscriptions, checkpoints and proofs, and,
// over a store another process writes (a PostgreSQL replica), follows it.
//
// A Log does not own its Store: closing the Log does not close the Store.
type Log struct {
	store Store
	clock func() time.Time

	signer *checkpoint.Signer
	kept   Kept
	keptEv time.Duration
	adopt  string
	follow time.Duration
	// zone, when set, is the one residency zone whose events the log keeps.
	zone string
	logf func(msg string, keyvals ...any)

	queueLimit int64
	maxCommit  int
	window     time.Duration
	retryAfter time.Duration
	indexLag   uint64

	// tree is the log's Merkle tree: tiles in the store, the right edge
	// and a fixed cache in memory.
	tree      *tiles.Tree
	tileCache int    // tiles the tree caches
	crSize    uint64 // size of the last checkpoint stored with its compact range; committer only
	full      bool   // WithFullVerification
	opened    OpenInfo
	queue     chan *request
	queued    atomic.Int64 // events waiting in queue
	refresh   chan chan error
	latest    atomic.Pointer[StoredCheckpoint]
	resync    bool // the store may hold more than the tree; committer only
	broken    atomic.Pointer[domainerr.Error]
	adopted   *Adoption
	pruned    atomic.Pointer[PruneState] // what the store pruned (never nil once open)
	pruneMu   sync.Mutex                 // one Prune at a time

	// The indexer: pending holds events committed and not yet indexed
	// (the committer hands them over so the indexer need not read them
	// back), pendingFrom the sequence of the first one.
	idxMu       sync.Mutex
	pending     []*auditv1.Event
	pendingFrom uint64
	indexed     atomic.Uint64 // the index watermark as last seen
	idxWake     chan struct{}
	idxMoved    chan struct{} // closed and replaced when the watermark moves
	idxStopped  chan struct{}
	keptWake    chan struct{}
	keptStopped chan struct{}

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

// WithSigner makes the Log sign a checkpoint of every commit batch with s
// (stored with the batch, in the same transaction) and check the store's
// checkpoints with it at Open. Without a signer the log keeps its tree and
// serves proofs but signs nothing.
func WithSigner(s *checkpoint.Signer) Option {
	return func(l *Log) { l.signer = s }
}

// WithKept makes the Log keep its latest checkpoint in k, outside the
// store: Open refuses a store that does not extend the kept checkpoint,
// and the Log saves the latest one at most every interval (0:
// DefaultKeptInterval) while it grows, off the commit path, and at Close.
// It needs WithSigner.
func WithKept(k Kept, interval time.Duration) Option {
	return func(l *Log) {
		l.kept = k
		if interval > 0 {
			l.keptEv = interval
		}
	}
}

// WithAdoption lets Open accept a store it would refuse for reasons an
// operator may accept — events no checkpoint signs (an unsigned tail, or
// no checkpoint at all), columns that disagree with their leaves — when
// token equals the one the refusal printed, which binds the adoption to
// that exact state of the store. The adopted events are then signed,
// the columns rebuilt from the leaves, and the adoption recorded in the
// log as a KIND_AUDIT_ADMIN event (see Adopted). A token that no longer
// matches refuses as before; on a store that needs no adoption it is
// ignored.
func WithAdoption(token string) Option {
	return func(l *Log) { l.adopt = token }
}

// WithFollow makes the Log follow a store that another process extends
// (a PostgreSQL replica following the sequencer): every interval, and
// before it answers LatestCheckpoint, it reads what was appended in one
// snapshot, checks it like at Open (the new checkpoint's signature and
// root, the columns) and serves it. A store that fails the check stops
// the Log (every call answers Unavailable, naming the problem).
func WithFollow(interval time.Duration) Option {
	return func(l *Log) { l.follow = interval }
}

// WithErrorLog gives the Log a place to report what goes wrong in its
// background work (saving the kept checkpoint, indexing, following a
// store), which has no caller to answer: logf gets a message and
// key-value pairs (hclog's Error fits).
func WithErrorLog(logf func(msg string, keyvals ...any)) Option {
	return func(l *Log) { l.logf = logf }
}

// WithResidencyZone makes the log keep the events of one residency zone
// only: an event whose residency_zone is another (or empty) is refused as
// invalid and recorded nowhere, so a misrouted event never lands in a
// log outside its zone. Without it the log keeps events of every zone.
func WithResidencyZone(zone string) Option {
	return func(l *Log) { l.zone = zone }
}

// zoneError is why e cannot be recorded in this log, or nil.
func (l *Log) zoneError(e *auditv1.Event) error {
	if l.zone == "" || e.GetResidencyZone() == l.zone {
		return nil
	}
	return fmt.Errorf(".residency_zone: %q: this log keeps the events of residency zone %q only", e.GetResidencyZone(), l.zone)
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

// WithIndexLag sets how many committed events may wait for the query
// index before commits wait for it (0: DefaultIndexLag).
func WithIndexLag(events int) Option {
	return func(l *Log) {
		if events > 0 {
			l.indexLag = uint64(events)
		}
	}
}

// Open checks the store and starts the log: in one snapshot of the store
// it rebuilds the Merkle tree from every stored leaf, checks the latest
// signed checkpoint against it (when a signer is set), checks that the
// tree extends the kept checkpoint (WithKept), and compares every row's
// columns with its leaf. A store that fails is refused with an error
// wrapping ErrStoreMismatch that names the first bad sequence (and, when
// an operator may adopt the store as it is, the WithAdoption token).
// Close stops the Log.
func Open(ctx context.Context, store Store, opts ...Option) (*Log, error) {
	l := &Log{
		store:       store,
		clock:       time.Now,
		keptEv:      DefaultKeptInterval,
		queueLimit:  DefaultQueueLimit,
		maxCommit:   DefaultCommitMaxEvents,
		retryAfter:  DefaultRetryAfter,
		indexLag:    DefaultIndexLag,
		tileCache:   tiles.DefaultCacheTiles,
		refresh:     make(chan chan error),
		idxWake:     make(chan struct{}, 1),
		idxMoved:    make(chan struct{}),
		idxStopped:  make(chan struct{}),
		keptWake:    make(chan struct{}, 1),
		keptStopped: make(chan struct{}),
		changed:     make(chan struct{}),
		done:        make(chan struct{}),
		stopped:     make(chan struct{}),
		logf:        func(string, ...any) {},
	}
	for _, o := range opts {
		o(l)
	}
	if l.kept != nil && l.signer == nil {
		return nil, errors.New("audit log: a kept checkpoint needs a signer")
	}
	l.queue = make(chan *request, l.queueLimit)
	l.pruned.Store(&PruneState{})
	l.tree = tiles.New(l.store, tiles.WithCacheTiles(l.tileCache))
	adoption, err := l.open(ctx)
	if err != nil {
		return nil, err
	}
	go l.run()
	go l.runIndexer()
	go l.runKept()
	if adoption != nil {
		if err := l.recordAdoption(ctx, adoption); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// Close stops the committer (queued appends fail with Unavailable), ends
// every Subscribe (with Unavailable), stops the indexer, saves the kept
// checkpoint and refuses further appends. It does not close the Store.
// It is safe to call more than once.
func (l *Log) Close() error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.done)
	}
	l.mu.Unlock()
	<-l.stopped
	<-l.idxStopped
	<-l.keptStopped
	return nil
}

func errShuttingDown() error {
	return domainerr.Errorf(domainerr.Unavailable, "audit log is shutting down")
}

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
	return l.appendAll(ctx, source, events, false)
}

// AppendOwned is Append for a caller that hands its events over (the gRPC
// handler, whose request nothing else reads): the log stamps and numbers
// them in place instead of copying each one first. The caller must not
// use the events again, and each must appear once.
func (l *Log) AppendOwned(ctx context.Context, source string, events []*auditv1.Event) (results []*auditv1.AppendResult, err error) {
	return l.appendAll(ctx, source, events, true)
}

func (l *Log) appendAll(ctx context.Context, source string, events []*auditv1.Event, owned bool) (results []*auditv1.AppendResult, err error) {
	ctx, span := otel.Tracer(tracerName).Start(ctx, "audit.commit", trace.WithAttributes(attribute.Int("credmatrix.audit.batch_size", len(events))))
	defer func() { endCommitSpan(span, results, err) }()
	if err := validateBatchSize(events); err != nil {
		return nil, err
	}
	ps, err := prepareAll(events, source, timestamppb.New(l.clock()), owned)
	if err != nil {
		return nil, err
	}
	for i, e := range events {
		if err := l.zoneError(e); err != nil {
			return nil, domainerr.Errorf(domainerr.Invalid, "events[%d]%s", i, err)
		}
	}
	return l.enqueue(ctx, ps)
}

// Outcome is what became of one event of AppendEach: recorded (Result)
// or refused (Err).
type Outcome struct {
	// Result is the event's durable position; nil when it was refused.
	Result *auditv1.AppendResult
	// Err is an Invalid *domainerr.Error naming the event ("events[2].reason: ...")
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
	return l.appendEach(ctx, source, events, false)
}

// AppendEachOwned is AppendEach for a caller that hands its events over
// (see AppendOwned). Refused events are left as they were.
func (l *Log) AppendEachOwned(ctx context.Context, source string, events []*auditv1.Event) (outcomes []Outcome, err error) {
	return l.appendEach(ctx, source, events, true)
}

func (l *Log) appendEach(ctx context.Context, source string, events []*auditv1.Event, owned bool) (outcomes []Outcome, err error) {
	ctx, span := otel.Tracer(tracerName).Start(ctx, "audit.commit", trace.WithAttributes(attribute.Int("credmatrix.audit.batch_size", len(events))))
	var results []*auditv1.AppendResult
	defer func() { endCommitSpan(span, results, err) }()
	if err := validateBatchSize(events); err != nil {
		return nil, err
	}
	outcomes = make([]Outcome, len(events))
	valid := make([]prepared, 0, len(events))
	recorded := timestamppb.New(l.clock())
	for i, e := range events {
		p, verr := prepare(e, source, recorded, owned)
		if verr == nil {
			verr = l.zoneError(e)
		}
		if verr != nil {
			outcomes[i].Err = domainerr.Errorf(domainerr.Invalid, "events[%d]%s", i, verr)
			continue
		}
		valid = append(valid, p)
	}
	if refused := len(events) - len(valid); refused > 0 {
		span.SetAttributes(attribute.Int("credmatrix.audit.refused", refused))
	}
	if len(valid) == 0 {
		return outcomes, nil
	}
	if results, err = l.enqueue(ctx, valid); err != nil {
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

// record validates events and hands them to the committer, and waits
// until they are durable; owned events are stamped in place, others
// copied first. Any invalid event rejects the batch.
func (l *Log) record(ctx context.Context, source string, events []*auditv1.Event, owned bool) ([]*auditv1.AppendResult, error) {
	ps, err := prepareAll(events, source, timestamppb.New(l.clock()), owned)
	if err != nil {
		return nil, err
	}
	return l.enqueue(ctx, ps)
}

// prepareAll prepares every event; any invalid one is the error (Invalid,
// naming it).
func prepareAll(events []*auditv1.Event, source string, recorded *timestamppb.Timestamp, owned bool) ([]prepared, error) {
	ps := make([]prepared, len(events))
	for i, e := range events {
		p, err := prepare(e, source, recorded, owned)
		if err != nil {
			return nil, domainerr.Errorf(domainerr.Invalid, "events[%d]%s", i, err)
		}
		ps[i] = p
	}
	return ps, nil
}

// prepare validates e (see validateEvent) and makes it ready for the
// committer: e or a copy of it stamped with recorded and source, and its
// serialisation. The strings are checked on that serialisation
// (auditevent.CleanWire), so a clean event is serialised once; the
// field-by-field check runs only on one that may hold a bad string, to
// name it.
func prepare(e *auditv1.Event, source string, recorded *timestamppb.Timestamp, owned bool) (prepared, error) {
	if err := validateFields(e); err != nil {
		return prepared{}, err
	}
	c := e
	if !owned {
		c = proto.CloneOf(e)
	}
	c.Sequence = 0
	c.RecordedTime = recorded
	c.SourceService = source
	rest, err := leaf.Marshal(c)
	if err != nil || !auditevent.CleanWire(rest) {
		if cerr := auditevent.Check(c); cerr != nil {
			return prepared{}, cerr
		}
		if err != nil {
			return prepared{}, fmt.Errorf(": cannot be serialised")
		}
	}
	return prepared{event: c, rest: rest}, nil
}

// enqueue hands prepared events to the committer and waits until they
// are durable.
func (l *Log) enqueue(ctx context.Context, events []prepared) ([]*auditv1.AppendResult, error) {
	select {
	case <-l.done:
		return nil, errShuttingDown()
	default:
	}
	n := int64(len(events))
	if l.queued.Add(n) > l.queueLimit {
		l.queued.Add(-n)
		return nil, &domainerr.Error{Code: domainerr.ResourceExhausted, Message: "audit log overloaded: nothing recorded; retry after the advised delay", RetryAfter: l.retryAfter}
	}
	r := &request{ctx: ctx, events: events, done: make(chan response, 1)}
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

// run is the committer: the only goroutine that writes events to the
// store and extends the tree.
func (l *Log) run() {
	defer close(l.stopped)
	var tick <-chan time.Time
	if l.follow > 0 {
		t := time.NewTicker(l.follow)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case r := <-l.queue:
			l.waitForIndex()
			l.commit(l.collect(r))
		case <-tick:
			l.followStore()
		case reply := <-l.refresh:
			reply <- l.followStore()
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
	batch   Batch
	hashes  []tiles.Hash
	tree    *tiles.Staged             // the tree with the batch
	results [][]*auditv1.AppendResult // per request
}

// stage sequences the live requests' events after the tree's head and
// signs the checkpoint of the tree they complete. Events already stored
// (in stored, by key) or earlier in the batch get the existing result.
func (l *Log) stage(batch []*request, stored map[EventKey]*auditv1.Event) (staged, error) {
	next := l.tree.Size()
	st := staged{results: make([][]*auditv1.AppendResult, len(batch))}
	first := make(map[EventKey]*auditv1.AppendResult)
	for ri, r := range batch {
		res := make([]*auditv1.AppendResult, len(r.events))
		for i, p := range r.events {
			key := KeyOf(p.event)
			if s, ok := stored[key]; ok && KeyOf(s) == key {
				h, err := eventLeafHash(s)
				if err != nil {
					return staged{}, unavailable("audit store returned an unreadable event", err)
				}
				res[i] = &auditv1.AppendResult{Id: key.ID, Sequence: s.GetSequence(), LeafHash: h}
				continue
			}
			if f, ok := first[key]; ok {
				res[i] = proto.CloneOf(f)
				continue
			}
			seq := next + uint64(len(st.batch.Records))
			// The prepared copy is ours: number it in place (a restage
			// numbers it again).
			e := p.event
			e.Sequence = seq
			data := p.withSequence(seq)
			h := leafHash(data)
			res[i] = &auditv1.AppendResult{Id: key.ID, Sequence: seq, LeafHash: h}
			first[key] = res[i]
			st.batch.Records = append(st.batch.Records, Record{Event: e, Data: data})
			st.hashes = append(st.hashes, tiles.Hash(h))
		}
		st.results[ri] = res
	}
	if len(st.hashes) == 0 {
		return st, nil
	}
	st.tree = l.tree.Stage(st.hashes)
	st.batch.Tiles = st.tree.Tiles
	if l.signer != nil {
		cp, err := l.sign(st.tree.Size(), st.tree.Root())
		if err != nil {
			return staged{}, err
		}
		if l.compactRangeDue(st.tree.Size()) {
			cp.CompactRange = st.tree.CompactRange()
		}
		st.batch.Checkpoint = &cp
	}
	return st, nil
}

// compactRangeDue says whether the checkpoint of a tree of size leaves
// carries its compact range: the first checkpoint after each 256 events
// (tiles.Width) does, so that start-up re-hashes at most a few hundred
// events while the compact ranges cost about 1.5 bytes per event.
func (l *Log) compactRangeDue(size uint64) bool { return CompactRangeDue(l.crSize, size) }

// CompactRangeDue is the rule: the checkpoint of a tree of size leaves
// carries its compact range when the last one that did (of size last; 0:
// none yet) is in an earlier 256-event tile.
func CompactRangeDue(last, size uint64) bool {
	return last == 0 || size/tiles.Width > last/tiles.Width
}

// sign signs the checkpoint of the tree of size leaves whose root is root.
func (l *Log) sign(size uint64, root []byte) (StoredCheckpoint, error) {
	note, err := l.signer.Sign(size, root)
	if err != nil {
		return StoredCheckpoint{}, &domainerr.Error{Code: domainerr.Unavailable, Message: "audit log cannot sign a checkpoint", Err: err}
	}
	return StoredCheckpoint{Size: size, Note: note, Time: l.clock().UTC()}, nil
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
	if b := l.broken.Load(); b != nil {
		fail(b)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if l.resync {
		// A failed commit may still be durable: trust only the store.
		if err := l.extend(ctx); err != nil {
			fail(unavailable("audit store unavailable", err))
			return
		}
		l.resync = false
	}
	// Optimistic: ids are fresh random UUIDs, so look keys up only when
	// the store reports a duplicate (a producer's retry).
	st, err := l.stage(live, nil)
	if err == nil && len(st.hashes) > 0 {
		err = l.store.Append(ctx, st.batch)
		if errors.Is(err, ErrSequence) {
			// Another writer extended the store (a replica that was the
			// sequencer before us): check and follow what it wrote, then
			// number the batch after its events.
			if err = l.extend(ctx); err == nil {
				if st, err = l.stage(live, nil); err == nil {
					err = l.store.Append(ctx, st.batch)
				}
			}
		}
		if errors.Is(err, ErrDuplicateID) {
			st, err = l.restage(ctx, live)
			if err == nil && len(st.hashes) > 0 {
				err = l.store.Append(ctx, st.batch)
			}
		}
	}
	if err != nil {
		if !errors.Is(err, errNotWriter) {
			l.resync = true
		}
		fail(unavailable("audit store unavailable; retry the batch", err))
		return
	}
	if len(st.hashes) > 0 {
		l.applied(st.batch, st.tree)
	}
	for i, r := range live {
		r.done <- response{results: st.results[i]}
	}
}

// errNotWriter is what stores that are not the writer of the log wrap in
// their refusals (see NotWriter): nothing was written, so nothing needs
// re-reading.
var errNotWriter = errors.New("this store handle is not the log's writer")

// NotWriter wraps err (a store's refusal to append because another
// process writes the log) so that Log knows nothing was written and the
// refusal leaves the log's state alone.
func NotWriter(err error) error { return fmt.Errorf("%w: %w", errNotWriter, err) }

// applied extends the tree with a batch the store holds now, makes its
// checkpoint the latest, and hands its events to the indexer.
func (l *Log) applied(b Batch, st *tiles.Staged) {
	l.tree.Commit(st)
	if b.Checkpoint != nil {
		if b.Checkpoint.CompactRange != nil {
			l.crSize = b.Checkpoint.Size
		}
		cp := *b.Checkpoint
		l.latest.Store(&cp)
		select {
		case l.keptWake <- struct{}{}:
		default:
		}
	}
	l.handToIndexer(b.Records)
	l.wake()
}

// restage looks up the batch's keys and stages it again without the
// stored ones.
func (l *Log) restage(ctx context.Context, live []*request) (staged, error) {
	var keys []EventKey
	for _, r := range live {
		for _, p := range r.events {
			keys = append(keys, KeyOf(p.event))
		}
	}
	stored, err := l.store.Lookup(ctx, keys)
	if err != nil {
		return staged{}, err
	}
	return l.stage(live, stored)
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

// LatestCheckpoint returns the checkpoint of the latest commit batch,
// which covers every durable event (a following Log first reads what the
// sequencer appended).
func (l *Log) LatestCheckpoint(ctx context.Context) (Checkpoint, error) {
	if l.signer == nil {
		return Checkpoint{}, domainerr.Errorf(domainerr.Unavailable, "this audit log signs no checkpoints (no signing key configured)")
	}
	if err := l.usable(); err != nil {
		return Checkpoint{}, err
	}
	if l.follow > 0 {
		reply := make(chan error, 1)
		select {
		case l.refresh <- reply:
		case <-ctx.Done():
			return Checkpoint{}, ctx.Err()
		case <-l.stopped:
			return Checkpoint{}, errShuttingDown()
		}
		select {
		case err := <-reply:
			if err != nil {
				return Checkpoint{}, err
			}
		case <-ctx.Done():
			return Checkpoint{}, ctx.Err()
		}
	}
	cp := l.latest.Load()
	if cp == nil {
		return Checkpoint{}, domainerr.Errorf(domainerr.NotFound, "the audit log is empty: no checkpoint yet")
	}
	c, err := l.signer.Verifier().Open(cp.Note)
	if err != nil {
		return Checkpoint{}, &domainerr.Error{Code: domainerr.Unavailable, Message: "audit log: its latest checkpoint does not verify", Err: err}
	}
	return Checkpoint{StoredCheckpoint: *cp, Origin: l.signer.Origin(), Root: c.Root, KeyID: l.signer.KeyID()}, nil
}

// Checkpoints returns up to limit stored checkpoints with fromSize <= size
// <= the latest checkpoint the log serves, in size order.
func (l *Log) Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]StoredCheckpoint, error) {
	if err := l.usable(); err != nil {
		return nil, err
	}
	latest := l.latest.Load()
	if latest == nil || fromSize > latest.Size {
		return nil, nil
	}
	cps, err := l.store.Checkpoints(ctx, fromSize, limit)
	if err != nil {
		return nil, unavailable("audit store unavailable", err)
	}
	for i, cp := range cps {
		if cp.Size > latest.Size {
			return cps[:i], nil
		}
	}
	return cps, nil
}

// usable returns the error of a Log that stopped trusting its store.
func (l *Log) usable() error {
	if b := l.broken.Load(); b != nil {
		return b
	}
	return nil
}

// Queued returns the number of events waiting for a commit (the audit lag
// in events).
func (l *Log) Queued() int { return int(l.queued.Load()) }

// Size returns the number of durable events in the tree.
func (l *Log) Size() uint64 { return l.tree.Size() }

// SignedSize returns the tree size of the latest checkpoint the log
// serves (0 before the first).
func (l *Log) SignedSize() uint64 {
	if cp := l.latest.Load(); cp != nil {
		return cp.Size
	}
	return 0
}

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
			return 0, domainerr.Errorf(domainerr.NotFound, "%s: no checkpoint yet; give an explicit size", field)
		}
		return cp.Size, nil
	}
	if have := l.tree.Size(); size > have {
		return 0, domainerr.Errorf(domainerr.Invalid, "%s: %d is larger than the log (%d events)", field, size, have)
	}
	return size, nil
}

// InclusionProof returns the leaf hash of event sequence and its audit
// path in the tree of size (0: the latest checkpoint's size).
//
// The proof is read from the tree's stored tiles; when size is the latest
// checkpoint's it is checked against that signed root before it is
// served, so a damaged tile is an error, not a false proof.
func (l *Log) InclusionProof(ctx context.Context, sequence, size uint64) (leaf []byte, path [][]byte, treeSize uint64, err error) {
	if size, err = l.resolveSize("tree_size", size); err != nil {
		return nil, nil, 0, err
	}
	if sequence >= size {
		return nil, nil, 0, domainerr.Errorf(domainerr.Invalid, "sequence: %d is not below tree_size %d", sequence, size)
	}
	h, err := l.tree.LeafHash(ctx, sequence)
	if err != nil {
		return nil, nil, 0, treeError(err)
	}
	path, err = l.tree.Inclusion(ctx, sequence, size)
	if err != nil {
		return nil, nil, 0, treeError(err)
	}
	if root := l.signedRoot(size); root != nil {
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, sequence, size, h[:], path, root); err != nil {
			return nil, nil, 0, treeError(fmt.Errorf("%w: the inclusion proof of %d in %d read from the stored tiles does not verify against the signed root: %v", tiles.ErrMismatch, sequence, size, err))
		}
	}
	return h[:], path, size, nil
}

// ConsistencyProof proves the tree of first is a prefix of the tree of
// second (0: the latest checkpoint's size).
func (l *Log) ConsistencyProof(ctx context.Context, first, second uint64) (hashes [][]byte, secondSize uint64, err error) {
	if second, err = l.resolveSize("second_size", second); err != nil {
		return nil, 0, err
	}
	switch {
	case first == 0:
		return nil, 0, domainerr.Errorf(domainerr.Invalid, "first_size: must be at least 1")
	case first > second:
		return nil, 0, domainerr.Errorf(domainerr.Invalid, "first_size: %d is larger than second_size %d", first, second)
	}
	hashes, err = l.tree.Consistency(ctx, first, second)
	if err != nil {
		return nil, 0, treeError(err)
	}
	return hashes, second, nil
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

// signedRoot returns the signed root of the tree of size leaves when size
// is the latest checkpoint's, else nil.
func (l *Log) signedRoot(size uint64) []byte {
	cp := l.latest.Load()
	if cp == nil || cp.Size != size || l.signer == nil {
		return nil
	}
	c, err := l.signer.Verifier().Open(cp.Note)
	if err != nil {
		return nil
	}
	return c.Root
}

// treeError maps an error of the tiles tree: a size beyond the tree is the
// caller's (checked before), anything else means the stored tiles are
// missing or damaged, or the store is down.
func treeError(err error) error {
	switch {
	case errors.Is(err, tiles.ErrSize):
		return domainerr.Errorf(domainerr.Invalid, "%v", err)
	case errors.Is(err, tiles.ErrMissing), errors.Is(err, tiles.ErrMismatch):
		return &domainerr.Error{Code: domainerr.Unavailable, Message: "audit log: the stored Merkle tree is damaged or incomplete ('audit verify --db' rebuilds and checks it)", Err: err}
	}
	return unavailable("audit store unavailable", err)
}

// WithTileCache sets how many stored tiles of the Merkle tree (8 KiB
// each) the log caches for proofs (0: tiles.DefaultCacheTiles).
func WithTileCache(n int) Option {
	return func(l *Log) {
		if n > 0 {
			l.tileCache = n
		}
	}
}

// WithFullVerification makes Open check the whole store, as it did before
// the tree lived in the store: every event re-hashed, every row's columns,
// the latest and kept checkpoints, and every stored tile rebuilt from the
// events and compared (damaged or missing tiles are rewritten, and
// reported). Without it Open loads the tree from the latest checkpoint
// that carries a compact range and checks only what follows it.
func WithFullVerification() Option {
	return func(l *Log) { l.full = true }
}
