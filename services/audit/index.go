package audit

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"time"

	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// maxPending bounds the committed events the committer hands to the
// indexer in memory; beyond it the indexer reads them back from the store.
const maxPending = 4 * indexBatch * 16

// indexRetry is how long the indexer waits after a store failure, and how
// often a following Log looks at the watermark another writer moves.
const indexRetry = time.Second

// indexDelay is how long the indexer lets a small lag grow before it
// writes it: at a low rate every commit holds one or a few events, and one
// index transaction per commit would double the write transactions.
// Queries scan the events the index does not cover yet, so the delay
// costs them nothing but a few rows.
const indexDelay = 100 * time.Millisecond

// handToIndexer gives the indexer the events of a batch just committed.
func (l *Log) handToIndexer(records []Record) {
	l.idxMu.Lock()
	first := records[0].Event.GetSequence()
	switch {
	case len(l.pending) == 0:
		l.pendingFrom = first
	case l.pendingFrom+uint64(len(l.pending)) != first || len(l.pending)+len(records) > maxPending:
		l.pending = l.pending[:0] // the indexer reads these from the store
		l.pendingFrom = first
	}
	for _, r := range records {
		l.pending = append(l.pending, r.Event)
	}
	l.idxMu.Unlock()
	select {
	case l.idxWake <- struct{}{}:
	default:
	}
}

// takePending returns up to n handed-over events from sequence from on,
// dropping those before it.
func (l *Log) takePending(from uint64, n int) []*auditv1.Event {
	l.idxMu.Lock()
	defer l.idxMu.Unlock()
	if from < l.pendingFrom || from >= l.pendingFrom+uint64(len(l.pending)) {
		if from >= l.pendingFrom+uint64(len(l.pending)) {
			l.pending = l.pending[:0]
		}
		return nil
	}
	skip := int(from - l.pendingFrom)
	l.pending = l.pending[skip:]
	l.pendingFrom = from
	out := l.pending[:min(n, len(l.pending))]
	return slices.Clone(out)
}

// runIndexer maintains the query index off the commit path: it derives
// the index rows of committed events (IndexRowOf) and stores them in
// small transactions, so a commit never waits long for the write lock.
func (l *Log) runIndexer() {
	defer close(l.idxStopped)
	t := time.NewTicker(indexRetry)
	defer t.Stop()
	var mark watermark
	for {
		select {
		case <-l.done:
			return
		case <-l.idxWake:
			if l.IndexLag() < indexBatch {
				select {
				case <-time.After(indexDelay):
				case <-l.done:
					return
				}
			}
		case <-t.C:
		}
		for l.indexSome(&mark) {
			select {
			case <-l.done:
				return
			default:
			}
		}
	}
}

// watermark is the indexer's knowledge of the index watermark: after its
// own AddIndex it knows it without reading it again; another writer's
// progress (a replica's sequencer) shows as ErrSequence, and then it reads.
type watermark struct {
	at    uint64
	known bool
}

// indexSome indexes one batch of the events the tree holds and the index
// does not cover; it reports whether it made progress.
func (l *Log) indexSome(mark *watermark) bool {
	if l.usable() != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if !mark.known {
		w, err := l.store.IndexedUpTo(ctx)
		if err != nil {
			l.logf("query index: cannot read its watermark", "error", err)
			return false
		}
		*mark = watermark{at: w, known: true}
		l.setIndexed(w)
	}
	from := mark.at
	var err error
	size := l.tree.Size()
	if from >= size {
		return false
	}
	n := int(min(uint64(indexBatch), size-from))
	events := l.takePending(from, n)
	if len(events) == 0 {
		if events, err = l.readVerified(ctx, from, n); err != nil || len(events) == 0 {
			if err != nil {
				l.logf("query index: cannot read events to index", "from", from, "error", err)
			} else {
				l.logf("query index: the stored event is not the one the tree holds; not indexing it", "sequence", from)
			}
			return false
		}
	}
	rows := make([]IndexRow, len(events))
	for i, e := range events {
		rows[i] = IndexRowOf(e)
	}
	err = l.store.AddIndex(ctx, from, rows)
	switch {
	case err == nil:
		mark.at = from + uint64(len(rows))
		l.setIndexed(mark.at)
		return true
	case errors.Is(err, ErrSequence):
		mark.known = false
		return true // another indexer moved the watermark: read it again
	default:
		mark.known = false
		if !errors.Is(err, errNotWriter) {
			l.logf("query index: cannot store index rows", "from", from, "error", err)
		}
		return false
	}
}

// readVerified reads up to n events from sequence from, checking that
// each leaf is the one the tree holds (the index must only ever describe
// what the tree covers).
func (l *Log) readVerified(ctx context.Context, from uint64, n int) ([]*auditv1.Event, error) {
	rows, err := l.store.ReadRows(ctx, from, n)
	if err != nil {
		return nil, err
	}
	out := make([]*auditv1.Event, 0, len(rows))
	for i, r := range rows {
		if r.Sequence != from+uint64(i) {
			break
		}
		want, err := l.tree.LeafHash(ctx, r.Sequence)
		if err != nil {
			break
		}
		if h := leaf.Hash(r.Data); !bytes.Equal(h[:], want[:]) {
			break // tampered since it was checked: leave it to Query and verify
		}
		e, _, err := CheckRow(r)
		if err != nil {
			break
		}
		out = append(out, e)
	}
	return out, nil
}

// setIndexed records the watermark and wakes a committer waiting for it.
func (l *Log) setIndexed(w uint64) {
	if w <= l.indexed.Load() {
		return
	}
	l.indexed.Store(w)
	l.mu.Lock()
	close(l.idxMoved)
	l.idxMoved = make(chan struct{})
	l.mu.Unlock()
}

// IndexLag returns how many committed events the query index does not
// cover yet.
func (l *Log) IndexLag() uint64 {
	size, w := l.tree.Size(), l.indexed.Load()
	if w >= size {
		return 0
	}
	return size - w
}

// waitForIndex throttles the committer while the index lags by more than
// indexLag events, so that queries, which scan what the index does not
// cover, stay cheap: each commit then waits for one step of the indexer
// (or indexRetry, if the indexer is stuck on store errors: recording
// events matters more than query speed). New appends queue meanwhile (and
// are refused with ResourceExhausted when the queue is full).
func (l *Log) waitForIndex() {
	if l.IndexLag() <= l.indexLag {
		return
	}
	l.mu.Lock()
	moved := l.idxMoved
	l.mu.Unlock()
	select {
	case l.idxWake <- struct{}{}:
	default:
	}
	select {
	case <-moved:
	case <-l.done:
	case <-time.After(indexRetry):
	}
}

// runKept saves the latest checkpoint outside the store: at most every
// keptEv while the log grows, and once more when the log closes.
func (l *Log) runKept() {
	defer close(l.keptStopped)
	if l.kept == nil {
		return
	}
	var saved uint64 // Open checked that the kept checkpoint is not newer than the latest
	save := func() {
		cp := l.latest.Load()
		if cp == nil || cp.Size <= saved {
			return
		}
		if err := l.kept.Save(cp.Note); err != nil {
			l.logf("cannot save the kept checkpoint: start-up cannot detect a rollback past the last one saved", "tree_size", cp.Size, "error", err)
			return
		}
		saved = cp.Size
	}
	save()
	for {
		select {
		case <-l.done:
			<-l.stopped // the committer is done: its last checkpoint is final
			save()
			return
		case <-l.keptWake:
			save()
			select {
			case <-time.After(l.keptEv):
			case <-l.done:
			}
		}
	}
}
