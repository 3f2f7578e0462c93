// Package memstore is an in-memory audit.Store for unit tests of code that
// needs a log but not durability. It keeps what the real stores keep — leaf
// bytes, key columns, one checkpoint per batch, an index with a watermark —
// and passes the same conformance suite (storetest), so tests that use it
// exercise real store semantics: gap rejection, duplicate keys, copies in
// and out, and a database writer's edits (Mutate).
package memstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/tiles"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// errClosed is returned by every method of a closed Store.
var errClosed = errors.New("memstore: closed")

// Data is what a Store holds, as a database writer could edit it (Mutate).
type Data struct {
	// Rows are the event rows in sequence order; Rows[i].Index is the
	// index row of the event (nil when not indexed).
	Rows []audit.Row
	// Checkpoints are the stored checkpoints in size order.
	Checkpoints []audit.StoredCheckpoint
	// IndexedUpTo is the index watermark.
	IndexedUpTo uint64
	// Tiles are the stored Merkle tree tiles.
	Tiles map[tiles.ID][]byte
	// Pruned is what Prune recorded.
	Pruned audit.PruneState
}

// data is the log shared by a Store and the handles Reopen makes from it,
// standing in for a file that outlives the process.
type data struct {
	mu sync.RWMutex
	Data
	byKey map[audit.EventKey]uint64
}

// Store is an in-memory audit.Store. The zero value is not usable; call New.
type Store struct {
	d      *data
	closed atomic.Bool
}

var _ audit.Store = (*Store)(nil)

// New returns an empty Store.
func New() *Store {
	return &Store{d: &data{byKey: make(map[audit.EventKey]uint64), Data: Data{Tiles: make(map[tiles.ID][]byte)}}}
}

// Reopen returns a new handle on the same events, as reopening a file
// would, so that persistence tests run against memstore too.
func (s *Store) Reopen() *Store {
	return &Store{d: s.d}
}

func (s *Store) check(ctx context.Context) error {
	if s.closed.Load() {
		return errClosed
	}
	return ctx.Err()
}

// Append implements audit.Store.
func (s *Store) Append(ctx context.Context, b audit.Batch) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	next := s.d.head()
	seen := make(map[audit.EventKey]bool, len(b.Records))
	for i, r := range b.Records {
		if want := next + uint64(i); r.Event.GetSequence() != want {
			return fmt.Errorf("append event %d: sequence %d, want %d: %w", i, r.Event.GetSequence(), want, audit.ErrSequence)
		}
		k := audit.KeyOf(r.Event)
		if _, ok := s.d.byKey[k]; ok || seen[k] {
			return fmt.Errorf("append event %d: key %v: %w", i, k, audit.ErrDuplicateID)
		}
		seen[k] = true
	}
	if cp := b.Checkpoint; cp != nil {
		if err := s.d.checkCheckpoint(*cp, next+uint64(len(b.Records))); err != nil {
			return err
		}
	}
	if err := checkTiles(b.Tiles); err != nil {
		return err
	}
	for _, r := range b.Records {
		k := audit.KeyOf(r.Event)
		s.d.byKey[k] = r.Event.GetSequence()
		s.d.Rows = append(s.d.Rows, audit.Row{Sequence: r.Event.GetSequence(), Data: bytes.Clone(r.Data), Key: k})
	}
	if cp := b.Checkpoint; cp != nil {
		s.d.Checkpoints = append(s.d.Checkpoints, cloneCheckpoint(*cp))
	}
	s.d.addTiles(b.Tiles)
	return nil
}

func cloneCheckpoint(cp audit.StoredCheckpoint) audit.StoredCheckpoint {
	cp.Note = bytes.Clone(cp.Note)
	if cp.CompactRange != nil {
		r := make([][]byte, len(cp.CompactRange))
		for i, h := range cp.CompactRange {
			r[i] = bytes.Clone(h)
		}
		cp.CompactRange = r
	}
	return cp
}

func checkTiles(ts []tiles.Tile) error {
	for _, t := range ts {
		if t.Width() != tiles.Width || len(t.Hashes) != tiles.FullBytes {
			return fmt.Errorf("store %s: only full tiles are stored, this one has %d bytes", t.ID, len(t.Hashes))
		}
	}
	return nil
}

func (d *data) addTiles(ts []tiles.Tile) {
	for _, t := range ts {
		d.Tiles[t.ID] = bytes.Clone(t.Hashes)
	}
}

// AddTiles implements audit.Store.
func (s *Store) AddTiles(ctx context.Context, ts []tiles.Tile) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if err := checkTiles(ts); err != nil {
		return err
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	s.d.addTiles(ts)
	return nil
}

// AddCompactRange implements audit.Store.
func (s *Store) AddCompactRange(ctx context.Context, size uint64, compactRange [][]byte) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	for i := range s.d.Checkpoints {
		if cp := &s.d.Checkpoints[i]; cp.Size == size && cp.CompactRange == nil {
			cp.CompactRange = cloneCheckpoint(audit.StoredCheckpoint{CompactRange: compactRange}).CompactRange
		}
	}
	return nil
}

// ReadTiles implements audit.Reader.
func (s *Store) ReadTiles(ctx context.Context, ids []tiles.ID) ([][]byte, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	return s.d.readTiles(ids), nil
}

func (d *data) readTiles(ids []tiles.ID) [][]byte {
	out := make([][]byte, len(ids))
	for i, id := range ids {
		out[i] = bytes.Clone(d.Tiles[id])
	}
	return out
}

// LatestCompactRange implements audit.Reader.
func (s *Store) LatestCompactRange(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	if err := s.check(ctx); err != nil {
		return audit.StoredCheckpoint{}, false, err
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	return s.d.latestCompactRange()
}

func (d *data) latestCompactRange() (audit.StoredCheckpoint, bool, error) {
	for i := len(d.Checkpoints) - 1; i >= 0; i-- {
		if d.Checkpoints[i].CompactRange != nil {
			return cloneCheckpoint(d.Checkpoints[i]), true, nil
		}
	}
	return audit.StoredCheckpoint{}, false, nil
}

func (d *data) checkCheckpoint(cp audit.StoredCheckpoint, head uint64) error {
	if n := len(d.Checkpoints); cp.Size == 0 || n > 0 && cp.Size <= d.Checkpoints[n-1].Size || cp.Size > head {
		return fmt.Errorf("add checkpoint of size %d: %w", cp.Size, audit.ErrSequence)
	}
	return nil
}

// Head implements audit.Reader.
func (s *Store) Head(ctx context.Context) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	return s.d.head(), nil
}

func (d *data) head() uint64 {
	if n := len(d.Rows); n > 0 {
		return d.Rows[n-1].Sequence + 1
	}
	return 0
}

// Lookup implements audit.Store.
func (s *Store) Lookup(ctx context.Context, keys []audit.EventKey) (map[audit.EventKey]*auditv1.Event, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	found := make(map[audit.EventKey]*auditv1.Event)
	for _, k := range keys {
		seq, ok := s.d.byKey[k]
		if !ok {
			continue
		}
		r, ok := s.d.row(seq)
		if !ok {
			continue
		}
		e := new(auditv1.Event)
		if err := proto.Unmarshal(r.Data, e); err != nil {
			return nil, fmt.Errorf("lookup: decode stored event %d: %w", seq, err)
		}
		found[k] = e
	}
	return found, nil
}

// row finds the row with sequence seq (rows are in order; a database
// writer may have removed some).
func (d *data) row(seq uint64) (audit.Row, bool) {
	i := d.search(seq)
	if i < len(d.Rows) && d.Rows[i].Sequence == seq {
		return d.Rows[i], true
	}
	return audit.Row{}, false
}

// search returns the index of the first row with Sequence >= seq.
func (d *data) search(seq uint64) int {
	lo, hi := 0, len(d.Rows)
	for lo < hi {
		m := (lo + hi) / 2
		if d.Rows[m].Sequence < seq {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Read implements audit.Store.
func (s *Store) Read(ctx context.Context, from uint64, limit int) ([]*auditv1.Event, error) {
	rows, err := s.ReadRows(ctx, from, limit)
	if err != nil {
		return nil, err
	}
	out := make([]*auditv1.Event, 0, len(rows))
	for _, r := range rows {
		e := new(auditv1.Event)
		if err := proto.Unmarshal(r.Data, e); err != nil {
			return nil, fmt.Errorf("read: decode stored event %d: %w", r.Sequence, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// ReadRows implements audit.Reader.
func (s *Store) ReadRows(ctx context.Context, from uint64, limit int) ([]audit.Row, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	return s.d.readRows(from, limit), nil
}

func (d *data) readRows(from uint64, limit int) []audit.Row {
	var out []audit.Row
	for i := d.search(from); i < len(d.Rows) && len(out) < limit; i++ {
		out = append(out, copyRow(d.Rows[i]))
	}
	return out
}

func copyRow(r audit.Row) audit.Row {
	r.Data = bytes.Clone(r.Data)
	if r.Index != nil {
		ix := *r.Index
		r.Index = &ix
	}
	return r
}

// IndexedUpTo implements audit.Reader.
func (s *Store) IndexedUpTo(ctx context.Context) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	return s.d.IndexedUpTo, nil
}

// Query implements audit.Store.
func (s *Store) Query(ctx context.Context, f audit.Filter, from, to uint64, limit int) ([]audit.Row, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	var out []audit.Row
	for i := s.d.search(from); i < len(s.d.Rows) && len(out) < limit; i++ {
		r := s.d.Rows[i]
		if r.Sequence >= to {
			break
		}
		if !f.Empty() && (r.Index == nil || !r.Index.Matches(f) || !f.MatchesTime(r.Key.TimeUnixNano)) {
			continue
		}
		out = append(out, copyRow(r))
	}
	return out, nil
}

// AddIndex implements audit.Store.
func (s *Store) AddIndex(ctx context.Context, from uint64, rows []audit.IndexRow) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	if from != s.d.IndexedUpTo {
		return fmt.Errorf("add index from %d, watermark %d: %w", from, s.d.IndexedUpTo, audit.ErrSequence)
	}
	if end := from + uint64(len(rows)); end > s.d.head() {
		return fmt.Errorf("add index up to %d beyond head %d: %w", end, s.d.head(), audit.ErrSequence)
	}
	for i, ix := range rows {
		if ix.Sequence != from+uint64(i) {
			return fmt.Errorf("add index row %d: sequence %d, want %d: %w", i, ix.Sequence, from+uint64(i), audit.ErrSequence)
		}
	}
	for _, ix := range rows {
		if j := s.d.search(ix.Sequence); j < len(s.d.Rows) && s.d.Rows[j].Sequence == ix.Sequence {
			c := ix
			s.d.Rows[j].Index = &c
		}
	}
	s.d.IndexedUpTo = from + uint64(len(rows))
	return nil
}

// Repair implements audit.Store.
func (s *Store) Repair(ctx context.Context, keys []audit.Row, indexFrom uint64) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	for _, k := range keys {
		if j := s.d.search(k.Sequence); j < len(s.d.Rows) && s.d.Rows[j].Sequence == k.Sequence {
			delete(s.d.byKey, s.d.Rows[j].Key)
			s.d.Rows[j].Key = k.Key
			s.d.byKey[k.Key] = k.Sequence
		}
	}
	for j := s.d.search(indexFrom); j < len(s.d.Rows); j++ {
		s.d.Rows[j].Index = nil
	}
	s.d.IndexedUpTo = min(s.d.IndexedUpTo, indexFrom)
	return nil
}

// Pruned implements audit.Reader.
func (s *Store) Pruned(ctx context.Context) (audit.PruneState, error) {
	if err := s.check(ctx); err != nil {
		return audit.PruneState{}, err
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	return s.d.Pruned, nil
}

// Prune implements audit.Store.
func (s *Store) Prune(ctx context.Context, p audit.PruneState) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	keep, head := p.Keep(), s.d.head()
	if keep > p.Base || p.Base > p.End || p.End <= s.d.Pruned.End || p.Base < s.d.Pruned.Base || p.End > head || keep >= head {
		return fmt.Errorf("prune to %d (base %d; pruned to %d, base %d, head %d): %w", p.End, p.Base, s.d.Pruned.End, s.d.Pruned.Base, head, audit.ErrSequence)
	}
	s.d.Pruned = p
	s.d.IndexedUpTo = max(s.d.IndexedUpTo, keep)
	i := s.d.search(keep)
	for _, r := range s.d.Rows[:i] {
		delete(s.d.byKey, r.Key)
	}
	s.d.Rows = append([]audit.Row(nil), s.d.Rows[i:]...)
	return nil
}

// AddCheckpoint implements audit.Store.
func (s *Store) AddCheckpoint(ctx context.Context, cp audit.StoredCheckpoint) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	if err := s.d.checkCheckpoint(cp, s.d.head()); err != nil {
		return err
	}
	s.d.Checkpoints = append(s.d.Checkpoints, cloneCheckpoint(cp))
	return nil
}

// Checkpoints implements audit.Reader.
func (s *Store) Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]audit.StoredCheckpoint, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	return s.d.checkpoints(fromSize, limit), nil
}

func (d *data) checkpoints(fromSize uint64, limit int) []audit.StoredCheckpoint {
	var out []audit.StoredCheckpoint
	for _, cp := range d.Checkpoints {
		if cp.Size >= fromSize && len(out) < limit {
			out = append(out, cloneCheckpoint(cp))
		}
	}
	return out
}

// LatestCheckpoint implements audit.Reader.
func (s *Store) LatestCheckpoint(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	if err := s.check(ctx); err != nil {
		return audit.StoredCheckpoint{}, false, err
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	return s.d.latest()
}

func (d *data) latest() (audit.StoredCheckpoint, bool, error) {
	n := len(d.Checkpoints)
	if n == 0 {
		return audit.StoredCheckpoint{}, false, nil
	}
	return cloneCheckpoint(d.Checkpoints[n-1]), true, nil
}

// View implements audit.Store: f reads a copy of the data taken under
// the read lock, so writers go on while it reads, as they do with a
// database's read transaction.
func (s *Store) View(ctx context.Context, f func(audit.Reader) error) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	s.d.mu.RLock()
	snap := &data{Data: Data{
		Rows:        append([]audit.Row(nil), s.d.Rows...),
		Checkpoints: append([]audit.StoredCheckpoint(nil), s.d.Checkpoints...),
		IndexedUpTo: s.d.IndexedUpTo,
		Tiles:       maps.Clone(s.d.Tiles),
		Pruned:      s.d.Pruned,
	}}
	s.d.mu.RUnlock()
	return f(view{d: snap})
}

// view is the Reader of View: a snapshot of the data.
type view struct{ d *data }

func (v view) Head(context.Context) (uint64, error) { return v.d.head(), nil }
func (v view) ReadRows(_ context.Context, from uint64, limit int) ([]audit.Row, error) {
	return v.d.readRows(from, limit), nil
}
func (v view) IndexedUpTo(context.Context) (uint64, error) { return v.d.IndexedUpTo, nil }
func (v view) Checkpoints(_ context.Context, fromSize uint64, limit int) ([]audit.StoredCheckpoint, error) {
	return v.d.checkpoints(fromSize, limit), nil
}
func (v view) LatestCheckpoint(context.Context) (audit.StoredCheckpoint, bool, error) {
	return v.d.latest()
}
func (v view) LatestCompactRange(context.Context) (audit.StoredCheckpoint, bool, error) {
	return v.d.latestCompactRange()
}
func (v view) Pruned(context.Context) (audit.PruneState, error) { return v.d.Pruned, nil }
func (v view) ReadTiles(_ context.Context, ids []tiles.ID) ([][]byte, error) {
	return v.d.readTiles(ids), nil
}

// Mutate calls f with the stored data under the write lock, so tamper
// tests can edit "the file" behind the log's back as a database writer
// would (rows, their columns and index rows, checkpoints, the watermark,
// tiles).
func (s *Store) Mutate(f func(d *Data)) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	f(&s.d.Data)
	if s.d.Tiles == nil {
		s.d.Tiles = make(map[tiles.ID][]byte)
	}
	s.d.byKey = make(map[audit.EventKey]uint64, len(s.d.Rows))
	for _, r := range s.d.Rows {
		s.d.byKey[r.Key] = r.Sequence
	}
}

// Close implements audit.Store. The events stay reachable through handles
// made by Reopen.
func (s *Store) Close() error {
	s.closed.Store(true)
	return nil
}
