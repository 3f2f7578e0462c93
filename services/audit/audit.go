// Package audit is the domain of the credmatrix audit log: the rules for
// accepting events (validation, secrets only as HMAC refs, gap-free
// sequencing, idempotency on event id, durable-before-acknowledged with
// group commit), the tamper evidence (every event a leaf of an RFC 6962
// Merkle tree kept in memory, signed checkpoints, proofs, a store that
// does not match its last checkpoint refused at Open), and the Store
// interface its backends (sqlite, postgres, memstore) implement.
//
// The package knows nothing about gRPC: errors are *domainerr.Error values
// (platform/domainerr), mapped to status codes once, at the gRPC edge.
package audit

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/services/audit/tiles"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Store is the durable, append-only home of the log. Log is its only
// writer and serialises calls to Append; reads may run concurrently with
// each other and with Append.
//
// What a store keeps (the layout every backend shares):
//   - one row per event: its sequence, its leaf bytes (leaf.Marshal, the
//     evidence) and the idempotency key (time, id) derived from the leaf;
//   - one signed checkpoint per commit batch, committed in the same
//     transaction as the batch's events, so the log's own writer never
//     leaves an unsigned event behind;
//   - the query index: one IndexRow per event, derived from the leaf by
//     IndexRowOf and written off the commit path (AddIndex), with a
//     watermark saying how far it reaches.
//
// Only the leaf bytes and the signed checkpoints are evidence; every other
// column is derived from the leaf and checked against it by whoever reads
// it (Log on every query, start-up and verify), because a database writer
// can change it.
//
// Events passed in and returned are owned by the caller: a Store must not
// keep or mutate them, and must return fresh copies.
type Store interface {
	Reader
	// Append stores one commit batch: events whose sequence numbers are
	// already set, and (when the log signs) the checkpoint of the tree
	// they complete. The first event must be at Head and the rest must
	// follow without gaps (otherwise ErrSequence); no event's key may
	// already be stored or repeat in the batch (otherwise
	// ErrDuplicateID); the checkpoint's size must be larger than every
	// stored checkpoint's and at most the new head (otherwise
	// ErrSequence). It is all-or-nothing, and durable when it returns nil.
	Append(ctx context.Context, b Batch) error
	// Lookup returns the stored events among keys, keyed by key; keys that
	// are not stored are absent from the map. Log uses it to make Append
	// idempotent. The events are decoded from the leaf bytes of rows the
	// key columns point to: Log checks the decoded event's own key.
	Lookup(ctx context.Context, keys []EventKey) (map[EventKey]*auditv1.Event, error)
	// Read returns up to limit decoded events in sequence order starting
	// at from. It returns no events when limit <= 0 or from >= Head.
	Read(ctx context.Context, from uint64, limit int) ([]*auditv1.Event, error)
	// Query returns, in sequence order, up to limit rows with from <=
	// sequence < to whose stored index rows match f's indexed fields
	// (IndexRow.Matches; time bounds compare the row's Time column). With a
	// filter that selects nothing (f.Empty), it returns every event row in
	// the range, each with its index row or a nil Index when it has none,
	// so that a missing index row shows. Rows are candidates: Log decodes
	// each and checks it against the filter and its columns. Paging fields
	// of f are ignored; Log pages.
	Query(ctx context.Context, f Filter, from, to uint64, limit int) ([]Row, error)
	// AddIndex stores index rows for the events from sequence from on, in
	// order and without gaps, and moves the index watermark to the end of
	// rows, in one transaction. from must equal the watermark (otherwise
	// ErrSequence: another indexer was first) and the rows must not reach
	// beyond Head. Index rows are derived data: the store may commit them
	// without waiting for durability (a crash loses the last ones and the
	// watermark with them, consistently).
	AddIndex(ctx context.Context, from uint64, rows []IndexRow) error
	// AddCheckpoint stores a signed checkpoint on its own (an operator's
	// adoption of an unsigned store; commit batches carry theirs in
	// Append). Its Size must be larger than every stored checkpoint's and
	// at most Head (otherwise ErrSequence); it is durable when AddCheckpoint
	// returns nil.
	AddCheckpoint(ctx context.Context, cp StoredCheckpoint) error
	// Repair is an operator's adoption of a store whose derived columns
	// disagree with its leaves: it sets the key columns of each row in
	// keys to its Key, and drops the index rows from sequence indexFrom on
	// (the watermark moves back to indexFrom if it was beyond), so the
	// indexer rebuilds them from the leaves. It is one transaction.
	Repair(ctx context.Context, keys []Row, indexFrom uint64) error
	// AddTiles stores full Merkle tree tiles outside a commit batch (a
	// tile already stored is replaced), in one transaction: the Log
	// rebuilds them from the events of a store written before tiles
	// existed, or whose tiles a full verification found damaged.
	AddTiles(ctx context.Context, ts []tiles.Tile) error
	// AddCompactRange stores the compact range of the stored checkpoint of
	// tree size size, which has none yet (otherwise it changes nothing):
	// the Log does so once after rebuilding the tree of a store from before
	// tiles, so that its next start-up is bounded.
	AddCompactRange(ctx context.Context, size uint64, compactRange [][]byte) error
	// Prune records that the log's events below p.End were archived and
	// pruned, and deletes the stored events (and their index rows) below
	// p.Keep(), the first row a full verification needs; checkpoints and
	// tiles stay. p.End must be larger than the recorded End, p.Base must
	// not be below the recorded Base, and Keep() <= p.Base <= p.End <=
	// Head (otherwise ErrSequence); the index watermark moves up to Keep()
	// if it was below. The record is durable when Prune returns nil; the
	// deletion may run in several transactions (bounded WAL), so a crash
	// may leave rows below Keep() that the next Prune deletes.
	Prune(ctx context.Context, p PruneState) error
	// View calls f with a Reader that sees the store as of one instant
	// (one read transaction), so that events, checkpoints and the index
	// watermark read together are consistent while a sequencer appends.
	// The Reader must not be used after f returns.
	View(ctx context.Context, f func(Reader) error) error
	// Close releases the store's resources.
	Close() error
}

// Reader is the read side of a Store, on its own or inside View.
type Reader interface {
	// Head returns the sequence the next event will get: the number of
	// stored events.
	Head(ctx context.Context) (next uint64, err error)
	// ReadRows returns up to limit stored rows in sequence order starting
	// at from, raw: the leaf bytes as stored (not decoded, so an
	// undecodable row still comes back), the key columns and the index
	// row (nil when none). A row's Sequence is the store's own key for it.
	ReadRows(ctx context.Context, from uint64, limit int) ([]Row, error)
	// IndexedUpTo returns the index watermark: index rows exist for the
	// events below it (those at or above it are not indexed yet).
	IndexedUpTo(ctx context.Context) (uint64, error)
	// Checkpoints returns up to limit stored checkpoints whose Size is at
	// least fromSize, in increasing Size order.
	Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]StoredCheckpoint, error)
	// LatestCheckpoint returns the stored checkpoint with the largest Size;
	// ok is false when none is stored.
	LatestCheckpoint(ctx context.Context) (cp StoredCheckpoint, ok bool, err error)
	// LatestCompactRange returns the stored checkpoint with the largest
	// Size among those that carry a compact range; ok is false when none
	// does.
	LatestCompactRange(ctx context.Context) (cp StoredCheckpoint, ok bool, err error)
	// ReadTiles returns the stored hashes of the Merkle tree tiles ids, one
	// entry per id in order, nil for a tile that is not stored
	// (tiles.Reader).
	ReadTiles(ctx context.Context, ids []tiles.ID) ([][]byte, error)
	// Pruned returns what Prune recorded (zero when nothing was pruned).
	Pruned(ctx context.Context) (PruneState, error)
}

// PruneState is how much of the log was archived and pruned from the
// store.
type PruneState struct {
	// End is the first sequence the log serves: the events below it were
	// archived (a sealed bundle the log recorded) and pruned. 0: none.
	End uint64
	// Base is the size of a stored checkpoint that carries a compact range
	// (Base <= End), from which a full verification of the store loads
	// the tree and re-hashes the events after it: the store keeps the rows
	// from Keep() on.
	Base uint64
}

// Keep returns the first stored row the log still needs: the first leaf
// of the partial tile at Base, whose leaves the tree's right edge at Base
// is rebuilt from (tiles hold only full tiles).
func (p PruneState) Keep() uint64 { return tiles.EdgeLeaves(p.Base) }

// Batch is one group commit: events, the checkpoint that signs the tree
// they complete and the tree tiles they complete.
type Batch struct {
	// Records are the events, sequence set, with their leaf bytes.
	Records []Record
	// Checkpoint signs the tree of size Records[len-1].Sequence+1; nil
	// for a log without a signer.
	Checkpoint *StoredCheckpoint
	// Tiles are the full tiles of the Merkle tree the events complete
	// (tiles.Staged.Tiles), stored in the same transaction. A tile already
	// stored is replaced (it is derived from the events: same content).
	Tiles []tiles.Tile
}

// Record is an event with its serialisation, leaf.Marshal(Event).
type Record struct {
	// Event is the event, sequence set.
	Event *auditv1.Event
	// Data is its deterministic serialisation: the Merkle leaf bytes.
	Data []byte
}

// EventKey is the idempotency key of an event: a producer that retries
// sends the same event again, with the same id and the same time. The
// time leads so that the store's unique index on the key grows at its end
// (a unique index on random ids alone costs a random page write per
// event).
type EventKey struct {
	// TimeUnixNano is the event's time (producer time) in Unix nanoseconds.
	TimeUnixNano int64
	// ID is the event's id.
	ID string
}

// KeyOf returns e's idempotency key.
func KeyOf(e *auditv1.Event) EventKey {
	return EventKey{TimeUnixNano: e.GetTime().AsTime().UnixNano(), ID: e.GetId()}
}

// Row is one stored event as the store holds it: the evidence (Data) and
// the columns derived from it, unchecked.
type Row struct {
	// Sequence is the store's key of the row.
	Sequence uint64
	// Data is the stored leaf bytes.
	Data []byte
	// Key is the stored idempotency key columns.
	Key EventKey
	// Index is the stored index row, nil when there is none.
	Index *IndexRow
}

// IndexRow is what the query index keeps of an event: the filterable
// fields, strings as ColumnHash values (a query compares hashes; the
// leaf decides). IndexRowOf derives it; every store keeps it as is.
type IndexRow struct {
	// Sequence is the event's sequence.
	Sequence uint64
	// Kind and Decision are the event's enums.
	Kind, Decision int32
	// Principal, Subject, AccountID, RoleName, DataClass and TraceID are
	// ColumnHash of the fields Index names; 0 for an empty field.
	Principal, Subject, AccountID, RoleName, DataClass, TraceID int64
}

// IndexRowOf derives e's index row: the one definition every store and
// every check uses.
func IndexRowOf(e *auditv1.Event) IndexRow {
	ix := IndexOf(e)
	return IndexRow{
		Sequence:  e.GetSequence(),
		Kind:      int32(e.GetKind()),
		Decision:  int32(e.GetDecision()),
		Principal: ColumnHash(ix.Principal),
		Subject:   ColumnHash(ix.Subject),
		AccountID: ColumnHash(ix.AccountID),
		RoleName:  ColumnHash(ix.RoleName),
		DataClass: ColumnHash(ix.DataClass),
		TraceID:   ColumnHash(e.GetTraceId()),
	}
}

// columnHashPrefix separates index hashes from any other use of SHA-256.
const columnHashPrefix = "credmatrix audit index v1\x00"

// ColumnHash is the index form of a filterable string: the first 8 bytes
// of SHA-256 over a fixed prefix and s, as an int64, and 0 for "". A
// collision only adds a candidate that the leaf check then drops; finding
// one for a given value takes a second preimage of truncated SHA-256, so
// a caller cannot flood someone else's queries with candidates.
func ColumnHash(s string) int64 {
	if s == "" {
		return 0
	}
	h := sha256.New()
	h.Write([]byte(columnHashPrefix))
	h.Write([]byte(s))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	v := int64(binary.BigEndian.Uint64(sum[:8]))
	if v == 0 {
		v = 1 // 0 means "empty"
	}
	return v
}

// Matches reports whether the indexed fields of r match f (time bounds,
// paging and an unset field aside). Stores select candidates with these
// exact semantics.
func (r IndexRow) Matches(f Filter) bool {
	switch {
	case len(f.Kinds) > 0 && !slices.Contains(f.Kinds, auditv1.Kind(r.Kind)),
		f.Subject != "" && ColumnHash(f.Subject) != r.Principal && ColumnHash(f.Subject) != r.Subject,
		f.AccountID != "" && ColumnHash(f.AccountID) != r.AccountID,
		f.RoleName != "" && ColumnHash(f.RoleName) != r.RoleName,
		f.DataClass != "" && ColumnHash(f.DataClass) != r.DataClass,
		f.TraceID != "" && ColumnHash(f.TraceID) != r.TraceID,
		f.Decision != auditv1.Decision_DECISION_UNSPECIFIED && int32(f.Decision) != r.Decision:
		return false
	}
	return true
}

// MatchesTime reports whether a producer time in Unix nanoseconds is
// within f's time bounds (bounds beyond the int64 range clamp to it, so
// they still mean "no bound" on that side).
func (f Filter) MatchesTime(unixNano int64) bool {
	return (f.Start.IsZero() || unixNano >= UnixNano(f.Start)) && (f.End.IsZero() || unixNano < UnixNano(f.End))
}

// UnixNano is t in Unix nanoseconds, clamped to the int64 range, as stores
// compare times.
func UnixNano(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// Empty reports whether f selects every event (paging aside).
func (f Filter) Empty() bool {
	return f.Start.IsZero() && f.End.IsZero() && len(f.Kinds) == 0 && f.Subject == "" && f.AccountID == "" &&
		f.RoleName == "" && f.DataClass == "" && f.TraceID == "" && f.Decision == auditv1.Decision_DECISION_UNSPECIFIED
}

// CheckRow compares a stored row with its leaf: it decodes Data and
// returns the decoded event and the names of the columns that disagree
// with it ("sequence", "id", "time", "index", or "index:<field>"); an
// Index of nil is not a disagreement (the caller knows whether the row
// should be indexed). A row that does not decode returns a nil event and
// err.
func CheckRow(r Row) (e *auditv1.Event, mismatched []string, err error) {
	e = new(auditv1.Event)
	if err := proto.Unmarshal(r.Data, e); err != nil {
		return nil, nil, err
	}
	if e.GetSequence() != r.Sequence {
		mismatched = append(mismatched, "sequence")
	}
	key := KeyOf(e)
	if key.ID != r.Key.ID {
		mismatched = append(mismatched, "id")
	}
	if key.TimeUnixNano != r.Key.TimeUnixNano {
		mismatched = append(mismatched, "time")
	}
	if r.Index != nil {
		want := IndexRowOf(e)
		got := *r.Index
		for _, c := range []struct {
			name string
			ok   bool
		}{
			{"sequence", got.Sequence == want.Sequence},
			{"kind", got.Kind == want.Kind},
			{"decision", got.Decision == want.Decision},
			{"principal", got.Principal == want.Principal},
			{"subject", got.Subject == want.Subject},
			{"account_id", got.AccountID == want.AccountID},
			{"role_name", got.RoleName == want.RoleName},
			{"data_class", got.DataClass == want.DataClass},
			{"trace_id", got.TraceID == want.TraceID},
		} {
			if !c.ok {
				mismatched = append(mismatched, "index:"+c.name)
			}
		}
	}
	return e, mismatched, nil
}

// StoredCheckpoint is a signed checkpoint as a Store keeps it. The store
// does not interpret Note; Log verifies it against the signing key when it
// opens the store.
type StoredCheckpoint struct {
	// Size is the tree size the checkpoint commits to.
	Size uint64
	// Note is the C2SP signed note (checkpoint body and signatures).
	Note []byte
	// Time is when the log signed it.
	Time time.Time
	// CompactRange is the compact range of the tree it signs (the roots of
	// its perfect subtrees, largest first), when the log stored it with
	// this checkpoint (on the first checkpoint after each 256 events), so
	// that start-up loads the tree from here instead of re-hashing every
	// event; nil otherwise. It is checked against the signed root before
	// it is used.
	CompactRange [][]byte
}

// Store errors. Backends wrap them with %w so that Log and the conformance
// suite can recognise them; both mean the store's view differs from the
// caller's (another writer, or a bug), so Log reloads Head and reports
// Unavailable.
var (
	// ErrSequence means the batch does not start at Head or has a gap.
	ErrSequence = errors.New("audit store: sequence is not the next one")
	// ErrDuplicateID means an event key (time and id) is already stored
	// or repeats in the batch.
	ErrDuplicateID = errors.New("audit store: duplicate event id")
)

// Limits of the log, from the audit.v1 contract.
const (
	// MaxBatch is the maximum number of events in one Append.
	MaxBatch = 1000
	// MaxEventBytes is the maximum serialised size of one event as
	// submitted by the producer.
	MaxEventBytes = 64 << 10
	// MaxIDBytes is the maximum length of an event id.
	MaxIDBytes = 128
	// DefaultPageSize is the page size of a Query that asks for 0.
	DefaultPageSize = 100
	// MaxPageSize is the largest page a Query may ask for.
	MaxPageSize = 1000
)

// Filter selects events for Query. Zero fields do not filter; every set
// field must match.
type Filter struct {
	// Start is the inclusive lower bound of the producer's time.
	Start time.Time
	// End is the exclusive upper bound of the producer's time.
	End time.Time
	// Kinds lists the kinds to match; empty matches any kind.
	Kinds []auditv1.Kind
	// Subject matches the actor's principal or its subject.
	Subject string
	// AccountID matches the account of the session or admin detail.
	AccountID string
	// RoleName matches the role of the session or admin detail.
	RoleName string
	// DataClass matches the data class of the key detail.
	DataClass string
	// TraceID matches the event's trace id.
	TraceID string
	// Decision matches the decision; DECISION_UNSPECIFIED matches any.
	Decision auditv1.Decision
	// PageSize is the maximum number of events per page.
	PageSize int
	// PageToken continues a previous Query; "" starts at the beginning.
	PageToken string
}

// Matches reports whether e matches every set field of f (paging fields
// aside). It is the reference semantics that store queries must agree with.
func (f Filter) Matches(e *auditv1.Event) bool {
	ix := IndexOf(e)
	t := e.GetTime().AsTime()
	switch {
	case !f.Start.IsZero() && t.Before(f.Start),
		!f.End.IsZero() && !t.Before(f.End),
		len(f.Kinds) > 0 && !slices.Contains(f.Kinds, e.GetKind()),
		f.Subject != "" && f.Subject != ix.Principal && f.Subject != ix.Subject,
		f.AccountID != "" && f.AccountID != ix.AccountID,
		f.RoleName != "" && f.RoleName != ix.RoleName,
		f.DataClass != "" && f.DataClass != ix.DataClass,
		f.TraceID != "" && f.TraceID != e.GetTraceId(),
		f.Decision != auditv1.Decision_DECISION_UNSPECIFIED && f.Decision != e.GetDecision():
		return false
	}
	return true
}

// Index holds the fields of an event that filters look at, pulled out of
// the actor and the kind-specific detail, so every store indexes the same
// things the same way.
type Index struct {
	// Principal is actor.principal.
	Principal string
	// Subject is actor.subject.
	Subject string
	// AccountID is session.account_id, else admin.account_id.
	AccountID string
	// RoleName is session.role_name, else admin.role_name.
	RoleName string
	// DataClass is key.data_class.
	DataClass string
}

// IndexOf extracts the filterable fields of e.
func IndexOf(e *auditv1.Event) Index {
	ix := Index{
		Principal: e.GetActor().GetPrincipal(),
		Subject:   e.GetActor().GetSubject(),
		DataClass: e.GetKey().GetDataClass(),
	}
	switch d := e.GetDetail().(type) {
	case *auditv1.Event_Session:
		ix.AccountID, ix.RoleName = d.Session.GetAccountId(), d.Session.GetRoleName()
	case *auditv1.Event_Admin:
		ix.AccountID, ix.RoleName = d.Admin.GetAccountId(), d.Admin.GetRoleName()
	}
	return ix
}

// eventLeafHash returns the RFC 6962 leaf hash of e (leaf.HashEvent).
func eventLeafHash(e *auditv1.Event) ([]byte, error) {
	h, err := leaf.HashEvent(e)
	if err != nil {
		return nil, err
	}
	return h[:], nil
}

// leafHash returns the RFC 6962 leaf hash of leaf bytes (leaf.Hash).
func leafHash(b []byte) []byte {
	h := leaf.Hash(b)
	return h[:]
}
