// Package audit is the domain of the credmatrix audit log: the rules for
// accepting events (validation, secrets only as HMAC refs, gap-free
// sequencing, idempotency on event id, durable-before-acknowledged with
// group commit), the tamper evidence (every event a leaf of an RFC 6962
// Merkle tree kept in memory, signed checkpoints, proofs, a store that
// does not match its last checkpoint refused at Open), and the Store
// interface its backends (sqlite, postgres, memstore) implement.
//
// The package knows nothing about gRPC: errors are *Error values with an
// ErrorCode, mapped to status codes once, in grpcapi.
package audit

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Store is the durable, append-only home of the log. Log is its only
// writer and serialises calls to Append; reads may run concurrently with
// each other and with Append.
//
// Events passed in and returned are owned by the caller: a Store must not
// keep or mutate them, and must return fresh copies.
type Store interface {
	// Append stores events whose sequence numbers are already set. The
	// first must equal Head and the rest must follow without gaps
	// (otherwise ErrSequence); no id may already be stored or repeat in
	// the batch (otherwise ErrDuplicateID). It is all-or-nothing, and
	// the events are durable when it returns nil.
	Append(ctx context.Context, events []*auditv1.Event) error
	// Head returns the sequence the next event will get: the number of
	// stored events.
	Head(ctx context.Context) (next uint64, err error)
	// Lookup returns the stored events among ids, keyed by id; ids that
	// are not stored are absent from the map. Log uses it to make Append
	// idempotent on event id.
	Lookup(ctx context.Context, ids []string) (map[string]*auditv1.Event, error)
	// Read returns up to limit events in sequence order starting at from.
	// It returns no events when limit <= 0 or from >= Head.
	Read(ctx context.Context, from uint64, limit int) ([]*auditv1.Event, error)
	// Query returns one page of events matching f in sequence order and
	// the token of the next page ("" on the last page). f.PageSize is in
	// 1..MaxPageSize (Log normalises it). A malformed f.PageToken is an
	// Invalid error naming page_token; use DecodePageToken.
	Query(ctx context.Context, f Filter) (events []*auditv1.Event, nextPageToken string, err error)
	// AddCheckpoint stores a signed checkpoint. Its Size must be larger
	// than every stored checkpoint's and at most Head (otherwise
	// ErrSequence); it is durable when AddCheckpoint returns nil.
	AddCheckpoint(ctx context.Context, cp StoredCheckpoint) error
	// Checkpoints returns up to limit stored checkpoints whose Size is at
	// least fromSize, in increasing Size order.
	Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]StoredCheckpoint, error)
	// LatestCheckpoint returns the stored checkpoint with the largest Size;
	// ok is false when none is stored.
	LatestCheckpoint(ctx context.Context) (cp StoredCheckpoint, ok bool, err error)
	// Close releases the store's resources.
	Close() error
}

// Record is an event with its serialisation, leaf.Marshal(Event).
type Record struct {
	// Event is the event, sequence set.
	Event *auditv1.Event
	// Data is its deterministic serialisation: the Merkle leaf bytes.
	Data []byte
}

// RecordAppender is implemented by stores that can take events already
// serialised, which spares the single committer goroutine a second
// serialisation per event. AppendRecords has Append's contract.
type RecordAppender interface {
	AppendRecords(ctx context.Context, records []Record) error
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
}

// Store errors. Backends wrap them with %w so that Log and the conformance
// suite can recognise them; both mean the store's view differs from the
// caller's (another writer, or a bug), so Log reloads Head and reports
// Unavailable.
var (
	// ErrSequence means the batch does not start at Head or has a gap.
	ErrSequence = errors.New("audit store: sequence is not the next one")
	// ErrDuplicateID means an event id is already stored or repeats in
	// the batch.
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
