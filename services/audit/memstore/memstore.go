// Package memstore is an in-memory audit.Store for unit tests of code that
// needs a log but not durability. It passes the same conformance suite as
// the real stores (storetest), so tests that use it exercise real store
// semantics: gap rejection, duplicate ids, copies in and out.
package memstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/credmatrix/credmatrix/services/audit"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// errClosed is returned by every method of a closed Store.
var errClosed = errors.New("memstore: closed")

// data is the log shared by a Store and the handles Reopen makes from it,
// standing in for a file that outlives the process.
type data struct {
	mu          sync.RWMutex
	events      []*auditv1.Event
	byID        map[string]uint64
	checkpoints []audit.StoredCheckpoint
}

// Store is an in-memory audit.Store. The zero value is not usable; call New.
type Store struct {
	d      *data
	closed atomic.Bool
}

var _ audit.Store = (*Store)(nil)

// New returns an empty Store.
func New() *Store {
	return &Store{d: &data{byID: make(map[string]uint64)}}
}

// Reopen returns a new handle on the same events, as reopening a file
// would, so that persistence tests run against memstore too.
func (s *Store) Reopen() *Store {
	return &Store{d: s.d}
}

// Append implements audit.Store.
func (s *Store) Append(ctx context.Context, events []*auditv1.Event) error {
	if s.closed.Load() {
		return errClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	next := uint64(len(s.d.events))
	seen := make(map[string]bool, len(events))
	for i, e := range events {
		if want := next + uint64(i); e.GetSequence() != want {
			return fmt.Errorf("append event %d: sequence %d, want %d: %w", i, e.GetSequence(), want, audit.ErrSequence)
		}
		if _, ok := s.d.byID[e.GetId()]; ok || seen[e.GetId()] {
			return fmt.Errorf("append event %d: id %q: %w", i, e.GetId(), audit.ErrDuplicateID)
		}
		seen[e.GetId()] = true
	}
	for _, e := range events {
		s.d.byID[e.GetId()] = e.GetSequence()
		s.d.events = append(s.d.events, proto.CloneOf(e))
	}
	return nil
}

// Head implements audit.Store.
func (s *Store) Head(ctx context.Context) (uint64, error) {
	if s.closed.Load() {
		return 0, errClosed
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	return uint64(len(s.d.events)), nil
}

// Lookup implements audit.Store.
func (s *Store) Lookup(ctx context.Context, ids []string) (map[string]*auditv1.Event, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	found := make(map[string]*auditv1.Event)
	for _, id := range ids {
		if seq, ok := s.d.byID[id]; ok {
			found[id] = proto.CloneOf(s.d.events[seq])
		}
	}
	return found, nil
}

// Read implements audit.Store.
func (s *Store) Read(ctx context.Context, from uint64, limit int) ([]*auditv1.Event, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	var out []*auditv1.Event
	for seq := from; seq < uint64(len(s.d.events)) && len(out) < limit; seq++ {
		out = append(out, proto.CloneOf(s.d.events[seq]))
	}
	return out, nil
}

// Query implements audit.Store.
func (s *Store) Query(ctx context.Context, f audit.Filter) ([]*auditv1.Event, string, error) {
	if s.closed.Load() {
		return nil, "", errClosed
	}
	from, err := audit.DecodePageToken(f.PageToken)
	if err != nil {
		return nil, "", err
	}
	size := f.PageSize
	if size <= 0 {
		size = audit.DefaultPageSize
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	var out []*auditv1.Event
	for seq := from; seq < uint64(len(s.d.events)); seq++ {
		e := s.d.events[seq]
		if !f.Matches(e) {
			continue
		}
		if len(out) == size {
			return out, audit.EncodePageToken(out[size-1].GetSequence() + 1), nil
		}
		out = append(out, proto.CloneOf(e))
	}
	return out, "", nil
}

// AddCheckpoint implements audit.Store.
func (s *Store) AddCheckpoint(ctx context.Context, cp audit.StoredCheckpoint) error {
	if s.closed.Load() {
		return errClosed
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	if n := len(s.d.checkpoints); cp.Size == 0 || n > 0 && cp.Size <= s.d.checkpoints[n-1].Size || cp.Size > uint64(len(s.d.events)) {
		return fmt.Errorf("add checkpoint of size %d: %w", cp.Size, audit.ErrSequence)
	}
	cp.Note = bytes.Clone(cp.Note)
	s.d.checkpoints = append(s.d.checkpoints, cp)
	return nil
}

// Checkpoints implements audit.Store.
func (s *Store) Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]audit.StoredCheckpoint, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	var out []audit.StoredCheckpoint
	for _, cp := range s.d.checkpoints {
		if cp.Size >= fromSize && len(out) < limit {
			cp.Note = bytes.Clone(cp.Note)
			out = append(out, cp)
		}
	}
	return out, nil
}

// LatestCheckpoint implements audit.Store.
func (s *Store) LatestCheckpoint(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	if s.closed.Load() {
		return audit.StoredCheckpoint{}, false, errClosed
	}
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	n := len(s.d.checkpoints)
	if n == 0 {
		return audit.StoredCheckpoint{}, false, nil
	}
	cp := s.d.checkpoints[n-1]
	cp.Note = bytes.Clone(cp.Note)
	return cp, true, nil
}

// Mutate calls f with the stored events and checkpoints under the write
// lock, so tamper tests can edit "the file" behind the log's back.
func (s *Store) Mutate(f func(events *[]*auditv1.Event, checkpoints *[]audit.StoredCheckpoint)) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	f(&s.d.events, &s.d.checkpoints)
	s.d.byID = make(map[string]uint64, len(s.d.events))
	for i, e := range s.d.events {
		s.d.byID[e.GetId()] = uint64(i)
	}
}

// Close implements audit.Store. The events stay reachable through handles
// made by Reopen.
func (s *Store) Close() error {
	s.closed.Store(true)
	return nil
}
