package audit

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// Page is one page of a Query.
type Page struct {
	// Events are the matching events, in sequence order. Every one is
	// the leaf the log's tree holds at its sequence, and matches the
	// filter by its own fields (not by the store's columns).
	Events []*auditv1.Event
	// NextPageToken continues the query; "" on the last page.
	NextPageToken string
	// Mismatches name the rows the query came across whose stored columns
	// disagree with their leaf (a database writer edited them), or whose
	// leaf is not the one the tree holds (then the event is left out).
	Mismatches []Mismatch
}

// Mismatch is a stored row that disagrees with what the log trusts.
type Mismatch struct {
	// Sequence is the row's sequence.
	Sequence uint64
	// Columns name what disagrees: "data" (the leaf is not the one the
	// tree holds, or does not decode), "id", "time", "index:<field>",
	// "index row missing".
	Columns []string
}

func (m Mismatch) String() string {
	return fmt.Sprintf("sequence %d: %s", m.Sequence, strings.Join(m.Columns, ", "))
}

// Query returns one page of events matching f, in sequence order, and the
// token of the next page ("" on the last page).
//
// The store's index only proposes candidates: every candidate's leaf is
// checked against the tree and the filter, and its columns against the
// leaf, and a disagreement is reported in Page.Mismatches. Events the
// index does not cover yet (committed moments ago) are read and matched
// from their leaves. A page may hold fewer than PageSize events and still
// have a next page.
//
// f.PageSize must be 0 (meaning DefaultPageSize) to MaxPageSize, and
// f.End must not be before f.Start; a Kinds list holding KIND_UNSPECIFIED
// matches any kind, as the contract says of the unspecified value.
func (l *Log) Query(ctx context.Context, f Filter) (Page, error) {
	switch {
	case f.PageSize < 0 || f.PageSize > MaxPageSize:
		return Page{}, domainerr.Errorf(domainerr.Invalid, "page_size: must be 0 to %d, got %d", MaxPageSize, f.PageSize)
	case !f.Start.IsZero() && !f.End.IsZero() && f.End.Before(f.Start):
		return Page{}, domainerr.Errorf(domainerr.Invalid, "end_time: before start_time")
	}
	from, err := DecodePageToken(f.PageToken)
	if err != nil {
		return Page{}, err
	}
	if err := l.usable(); err != nil {
		return Page{}, err
	}
	if f.PageSize == 0 {
		f.PageSize = DefaultPageSize
	}
	f.Kinds = normaliseKinds(f.Kinds)
	size := l.tree.Size() // serve what the tree covers, nothing beyond
	// The events below the first one served were archived and pruned: a
	// query covers the events the service holds (GetCheckpoint's
	// first_sequence says where they start).
	from = max(from, l.FirstSequence())
	indexed, err := l.store.IndexedUpTo(ctx)
	if err != nil {
		return Page{}, unavailable("audit store unavailable", err)
	}
	indexed = min(indexed, size)
	q := pageQuery{ctx: ctx, l: l, f: f, want: f.PageSize + 1}
	// Candidates from the index, then the tail it does not cover yet.
	for from < indexed && len(q.page.Events) < q.want {
		rows, err := l.store.Query(ctx, f, from, indexed, q.want-len(q.page.Events))
		if err != nil {
			return Page{}, unavailable("audit store unavailable", err)
		}
		if len(rows) == 0 {
			from = indexed
			break
		}
		for _, r := range rows {
			q.check(r, true)
		}
		from = rows[len(rows)-1].Sequence + 1
	}
	for from = max(from, indexed); from < size && len(q.page.Events) < q.want; {
		rows, err := l.store.ReadRows(ctx, from, int(min(uint64(subscribeBatch), size-from)))
		if err != nil {
			return Page{}, unavailable("audit store unavailable", err)
		}
		if len(rows) == 0 {
			q.mismatch(from, "row missing")
			break
		}
		for _, r := range rows {
			if r.Sequence >= size {
				break
			}
			if r.Sequence != from {
				q.mismatch(from, "row missing")
			}
			q.check(r, false)
			from = r.Sequence + 1
			if len(q.page.Events) == q.want {
				break
			}
		}
	}
	if len(q.page.Events) > f.PageSize {
		q.page.Events = q.page.Events[:f.PageSize]
		q.page.NextPageToken = EncodePageToken(q.page.Events[f.PageSize-1].GetSequence() + 1)
	}
	return q.page, nil
}

// pageQuery collects one page.
type pageQuery struct {
	ctx  context.Context
	l    *Log
	f    Filter
	want int
	page Page
}

func (q *pageQuery) mismatch(seq uint64, cols ...string) {
	if len(q.page.Mismatches) < MaxPageSize {
		q.page.Mismatches = append(q.page.Mismatches, Mismatch{Sequence: seq, Columns: cols})
	}
}

// check checks one row and keeps its event if its leaf matches the filter.
// indexed says the row is below the watermark, where a missing index row
// is a mismatch.
func (q *pageQuery) check(r Row, indexed bool) {
	want, err := q.l.tree.LeafHash(q.ctx, r.Sequence)
	if h := leaf.Hash(r.Data); err != nil || !bytes.Equal(h[:], want[:]) {
		q.mismatch(r.Sequence, "data")
		return
	}
	e, bad, err := CheckRow(r)
	if err != nil {
		q.mismatch(r.Sequence, "data")
		return
	}
	if indexed && r.Index == nil {
		bad = append(bad, "index row missing")
	}
	if len(bad) > 0 {
		q.mismatch(r.Sequence, bad...)
	}
	if q.f.Matches(e) && len(q.page.Events) < q.want {
		q.page.Events = append(q.page.Events, e)
	}
}

// Subscribe calls send with every event from sequence from onwards whose
// kind is in kinds (empty: any kind): first the stored ones, then new ones
// as they become durable. Every event sent is the leaf the log's tree
// holds at its sequence. It returns when ctx ends (with ctx's error),
// when send fails (with send's error, unchanged), when the Log is closed
// or when the store fails or holds a leaf the tree does not (Unavailable).
// A subscription from (or, after a prune, still at) a sequence the log
// archived and pruned fails with FailedPrecondition naming the archive.
// send must not modify the event.
func (l *Log) Subscribe(ctx context.Context, from uint64, kinds []auditv1.Kind, send func(*auditv1.Event) error) error {
	kinds = normaliseKinds(kinds)
	next := from
	for {
		if err := l.usable(); err != nil {
			return err
		}
		if first := l.FirstSequence(); next < first {
			return prunedError("from_sequence", next, first)
		}
		// Take the wake-up channel before reading, so an append that
		// lands after the read still wakes us.
		changed := l.changedChan()
		size := l.tree.Size()
		var rows []Row
		if next < size {
			var err error
			rows, err = l.store.ReadRows(ctx, next, int(min(uint64(subscribeBatch), size-next)))
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return unavailable("audit store unavailable", err)
			}
		}
		for _, r := range rows {
			if r.Sequence != next {
				return domainerr.Errorf(domainerr.Unavailable, "audit store: event %d is missing from the store", next)
			}
			want, err := l.tree.LeafHash(ctx, r.Sequence)
			h := leaf.Hash(r.Data)
			e, _, derr := CheckRow(r)
			if err != nil || !bytes.Equal(h[:], want[:]) || derr != nil {
				return domainerr.Errorf(domainerr.Unavailable, "audit store: event %d is not the event the log recorded (the store was modified)", r.Sequence)
			}
			next = r.Sequence + 1
			if len(kinds) > 0 && !slices.Contains(kinds, e.GetKind()) {
				continue
			}
			if err := send(e); err != nil {
				return err
			}
		}
		if len(rows) == subscribeBatch {
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
