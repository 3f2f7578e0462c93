package keyguard

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// How replicas agree.
//
// Each Service keeps an in-memory copy of the shared state (grants, minimum
// versions, usage counts, key versions through the backend) tagged with the
// state version it reflects. Before deciding anything, a request reads the
// store's current version through a coalesce.Fresh: the read starts after
// the request arrived, and concurrent requests share it. If the store is
// ahead, the copy is reloaded first (one reload at a time). A change is
// committed together with its version bump before the RPC that made it
// returns, so every request that arrives at any replica afterwards reads a
// version at least as new and decides on state that includes the change:
// a revoked grant denies everywhere before RevokeGrant returns. Change
// notifications (postgres LISTEN/NOTIFY, see Refresh) only move the reload
// off the request path. If the version cannot be read, the request fails
// with Unavailable: a replica that cannot see the shared state does not
// decide on its copy.

// errStateUnavailable is what a caller learns when the shared state cannot
// be read: nothing was decided or performed, and a retry may succeed.
func errStateUnavailable(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &domainerr.Error{Code: domainerr.Unavailable, Message: "state store unavailable; operation not performed", Err: err}
}

// sync brings the in-memory copy up to the store's current version. Every
// request that decides calls it first.
func (s *Service) sync(ctx context.Context) error {
	v, err := s.versions.Get(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errStateUnavailable(err)
	}
	if s.loaded.Load() >= v {
		return nil
	}
	if err := s.reload(ctx, v, false); err != nil {
		return errStateUnavailable(err)
	}
	return nil
}

// Refresh reloads the in-memory copy if the store holds a newer state. The
// cmd calls it when another replica announces a change, so that requests
// rarely find the copy stale; correctness never depends on it.
func (s *Service) Refresh(ctx context.Context) error {
	v, err := s.store.Version(ctx)
	if err != nil {
		return fmt.Errorf("keyguard: read state version: %w", err)
	}
	if s.loaded.Load() >= v {
		return nil
	}
	return s.reload(ctx, v, false)
}

// StateVersion is the state version the in-memory copy reflects.
func (s *Service) StateVersion() uint64 { return s.loaded.Load() }

// reload reads the whole state and installs it, unless (without force) the
// copy already reflects version atLeast.
func (s *Service) reload(ctx context.Context, atLeast uint64, force bool) error {
	s.smu.Lock()
	defer s.smu.Unlock()
	if !force && s.loaded.Load() >= atLeast {
		return nil
	}
	st, err := s.store.Load(ctx)
	if err != nil {
		return fmt.Errorf("keyguard: load state: %w", err)
	}
	if err := s.backend.Refresh(ctx); err != nil {
		return fmt.Errorf("keyguard: refresh key versions: %w", err)
	}
	s.gmu.Lock()
	s.grants, s.byWho = map[string]*Grant{}, map[string][]*Grant{}
	for i := range s.static {
		g := cloneGrant(s.static[i])
		g.static = true
		s.addGrantLocked(&g)
	}
	for _, g := range st.Grants {
		g := cloneGrant(g)
		g.static = false
		if old := s.grants[g.ID]; old != nil && old.static {
			continue // an API grant can never shadow a configured one
		}
		s.addGrantLocked(&g)
	}
	s.gmu.Unlock()
	for r, rs := range s.rings {
		rst := st.Rings[r]
		rs.storedMin.Store(rst.MinDecryptVersion)
		rs.setBase(rst.EncryptCounts)
	}
	s.loaded.Store(st.Version)
	return nil
}

// Flush saves the usage counted since the last flush. Counts are kept in
// memory between flushes (the cmd flushes periodically and at shutdown), so
// a crash loses at most the counts since the last flush; they only steer
// rotation, never decryption. Each replica adds its own counts.
func (s *Service) Flush(ctx context.Context) error {
	s.smu.Lock()
	defer s.smu.Unlock()
	return s.flushLocked(ctx)
}

func (s *Service) flushLocked(ctx context.Context) error {
	type flushed struct {
		c *counter
		n uint64
	}
	add := map[KeyRef]uint64{}
	var done []flushed
	for r, rs := range s.rings {
		rs.cmu.RLock()
		for v, c := range rs.counts {
			if n := c.delta.Load(); n > 0 {
				add[KeyRef{DataClass: r.DataClass, Region: r.Region, Version: v}] = n
				done = append(done, flushed{c, n})
			}
		}
		rs.cmu.RUnlock()
	}
	if len(add) == 0 {
		return nil
	}
	if err := s.store.AddUsage(ctx, add); err != nil {
		return fmt.Errorf("keyguard: save usage counts: %w", err)
	}
	for _, f := range done {
		f.c.delta.Add(^(f.n - 1)) // subtract what was saved
		f.c.base.Add(f.n)
	}
	return nil
}

// lockAndReload takes the rotation lock, saves this replica's usage counts
// and reloads the whole state, so that what follows decides on the latest
// state of every replica. The caller calls the returned unlock.
func (s *Service) lockAndReload(ctx context.Context) (func(), error) {
	unlock, err := s.store.LockRotation(ctx)
	if err != nil {
		return nil, errStateUnavailable(err)
	}
	s.smu.Lock()
	err = s.flushLocked(ctx)
	s.smu.Unlock()
	if err == nil {
		err = s.reload(ctx, 0, true)
	}
	if err != nil {
		unlock()
		return nil, errStateUnavailable(err)
	}
	return unlock, nil
}

// NewMemoryStore returns a Store in memory: the state of one process, lost
// when it ends. New uses one when Config.Store is nil (tests, throwaway
// stacks).
func NewMemoryStore() Store {
	return &memStore{
		grants:   map[string]Grant{},
		rings:    map[Ring]RingState{},
		versions: map[Ring][]StoredKeyVersion{},
		lock:     make(chan struct{}, 1),
	}
}

type memStore struct {
	mu       sync.Mutex
	version  uint64
	grants   map[string]Grant
	rings    map[Ring]RingState
	versions map[Ring][]StoredKeyVersion
	lock     chan struct{}
}

func cloneRingState(st RingState) RingState {
	st.EncryptCounts = maps.Clone(st.EncryptCounts)
	return st
}

func (m *memStore) Load(context.Context) (State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := State{Version: m.version, Rings: map[Ring]RingState{}, KeyVersions: m.keyVersionsLocked()}
	for _, g := range m.grants {
		st.Grants = append(st.Grants, cloneGrant(g))
	}
	slices.SortFunc(st.Grants, func(a, b Grant) int { return compare(a.ID, b.ID) })
	for r, rs := range m.rings {
		st.Rings[r] = cloneRingState(rs)
	}
	return st, nil
}

func (m *memStore) Version(context.Context) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.version, nil
}

func (m *memStore) PutGrant(ctx context.Context, g Grant) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.grants[g.ID]; ok {
		return fmt.Errorf("grant %s: %w", g.ID, ErrExists)
	}
	m.grants[g.ID] = cloneGrant(g)
	m.version++
	return nil
}

func (m *memStore) DeleteGrant(ctx context.Context, id string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.grants[id]
	if ok {
		delete(m.grants, id)
		m.version++
	}
	return ok, nil
}

func (m *memStore) SetMinDecryptVersion(ctx context.Context, r Ring, min uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := cloneRingState(m.rings[r])
	st.MinDecryptVersion = min
	m.rings[r] = st
	m.version++
	return nil
}

func (m *memStore) AddUsage(ctx context.Context, n map[KeyRef]uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, c := range n {
		r := Ring{DataClass: k.DataClass, Region: k.Region}
		st := cloneRingState(m.rings[r])
		if st.EncryptCounts == nil {
			st.EncryptCounts = map[uint32]uint64{}
		}
		st.EncryptCounts[k.Version] += c
		m.rings[r] = st
	}
	return nil
}

func (m *memStore) keyVersionsLocked() map[Ring][]StoredKeyVersion {
	out := make(map[Ring][]StoredKeyVersion, len(m.versions))
	for r, vs := range m.versions {
		out[r] = cloneKeyVersions(vs)
	}
	return out
}

func cloneKeyVersions(vs []StoredKeyVersion) []StoredKeyVersion {
	out := slices.Clone(vs)
	for i := range out {
		out[i].MAC = slices.Clone(out[i].MAC)
	}
	return out
}

func (m *memStore) KeyVersions(context.Context) (map[Ring][]StoredKeyVersion, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.keyVersionsLocked(), nil
}

func (m *memStore) AddKeyVersion(ctx context.Context, r Ring, v StoredKeyVersion) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if int(v.Version) != len(m.versions[r])+1 {
		return fmt.Errorf("ring %s version %d: %w", r, v.Version, ErrConflict)
	}
	m.versions[r] = append(m.versions[r], cloneKeyVersions([]StoredKeyVersion{v})...)
	m.version++
	return nil
}

func (m *memStore) LockRotation(ctx context.Context) (func(), error) {
	select {
	case m.lock <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-m.lock }) }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
