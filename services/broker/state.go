package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// Store keeps the state broker replicas share: the single-use token ids
// seen, revocations and freezes. The sqlite package (embedded default)
// and the postgres package implement it; storetest is their conformance
// suite. Implementations are safe for concurrent use.
type Store interface {
	// ReserveJTI reserves a single-use token id for one issuance in
	// progress. It returns ErrJTIUsed when an issuance already consumed
	// the id and ErrJTIInUse when another request holds a reservation
	// that has not lapsed (r.LeaseUntil of that request is after now); a
	// lapsed reservation (its replica died) is taken over. Of concurrent
	// reservations of one id, across every replica sharing the store,
	// exactly one succeeds.
	ReserveJTI(ctx context.Context, r JTIReservation, now time.Time) error
	// CommitJTI consumes a reservation: the id can never be reserved
	// again (until r.Expires, after which the store may forget it and
	// the token is refused as expired anyway). It returns ErrJTILost
	// when r no longer holds the id (released, or lapsed and taken over).
	CommitJTI(ctx context.Context, r JTIReservation) error
	// ReleaseJTI gives up a reservation that issued nothing, so the
	// token may be used again. Releasing a reservation r no longer holds
	// changes nothing.
	ReleaseJTI(ctx context.Context, r JTIReservation) error
	// AddRevocation records r. A revocation id is unique: adding one
	// twice returns ErrExists.
	AddRevocation(ctx context.Context, r Revocation) error
	// Revocations lists the revocations still in effect at now, oldest
	// first: those blocking issuance (BlockUntil after now) and those
	// whose revoked sessions may still be alive (IssuedBefore within
	// MaxSessionDuration of now).
	Revocations(ctx context.Context, now time.Time) ([]Revocation, error)
	// Freeze records freezes of the scopes (FreezeScope values) and
	// returns those that were not frozen before.
	Freeze(ctx context.Context, scopes []string, reason string, at time.Time) (added []string, err error)
	// Unfreeze lifts freezes of the scopes and returns those that were
	// frozen.
	Unfreeze(ctx context.Context, scopes []string) (removed []string, err error)
	// Frozen returns the first of the scopes that is frozen, or "".
	Frozen(ctx context.Context, scopes []string) (string, error)
	// Freezes lists every frozen scope, sorted.
	Freezes(ctx context.Context) ([]string, error)
	// StateVersion returns the version of the shared state: every change
	// of freezes, revocations or reload requests increases it in the
	// transaction that makes the change (token ids do not).
	StateVersion(ctx context.Context) (uint64, error)
	// LoadState reads the freezes, the revocations in effect at now (as
	// Revocations) and the latest reload request, with the version they
	// reflect, in one snapshot.
	LoadState(ctx context.Context, now time.Time) (SharedState, error)
	// RequestReload records that every replica must reload its trust
	// policy, by whom (for their audit events), and returns the request's
	// generation (increasing from 1).
	RequestReload(ctx context.Context, by string) (uint64, error)
	// Close releases the store.
	Close() error
}

// SharedState is what replicas share besides token ids, read at one
// moment.
type SharedState struct {
	// Version is the state version the rest reflects.
	Version uint64
	// Frozen are the frozen scopes, sorted.
	Frozen []string
	// Revocations are those in effect, oldest first.
	Revocations []Revocation
	// ReloadGeneration counts policy reload requests (0: none yet);
	// ReloadBy says who made the latest.
	ReloadGeneration uint64
	ReloadBy         string
}

// ErrExists is returned by Store.AddRevocation for a duplicate id.
var ErrExists = errors.New("already exists")

// Errors of the single-use token id reservations.
var (
	// ErrJTIUsed: an issuance already consumed the token id.
	ErrJTIUsed = errors.New("token id already used")
	// ErrJTIInUse: another request holds the token id.
	ErrJTIInUse = errors.New("token id reserved by a request in progress")
	// ErrJTILost: the reservation no longer holds the token id.
	ErrJTILost = errors.New("token id reservation lost")
)

// JTIReservation is one request's hold on a single-use token id.
type JTIReservation struct {
	// Issuer and JTI name the token id.
	Issuer, JTI string
	// Holder identifies the reservation (a random id per request).
	Holder string
	// Expires is when the token expires (leeway included): the store may
	// forget the id after it.
	Expires time.Time
	// LeaseUntil is when an uncommitted reservation lapses and another
	// request may take the id over.
	LeaseUntil time.Time
}

// Revocation blocks issuance for, and revokes the sessions of, every
// caller and target it matches: each set selector must match.
type Revocation struct {
	// ID identifies the revocation.
	ID string
	// Subject is the OIDC subject, or "" for any.
	Subject string
	// Issuer is the OIDC issuer URL, or "" for any.
	Issuer string
	// Role is the role name, or "" for any.
	Role string
	// AccountID is the account id, or "" for any.
	AccountID string
	// SessionID revokes one session, or "" for any.
	SessionID string
	// Claims are claim values the caller's token carried.
	Claims map[string]string
	// IssuedBefore: sessions issued before it are revoked.
	IssuedBefore time.Time
	// BlockUntil: until then, new sessions for the match are refused
	// (zero for a revocation naming a session id only).
	BlockUntil time.Time
	// CreatedAt is when the revocation was made.
	CreatedAt time.Time
	// Reason is the operator's reason.
	Reason string
}

// RevocationTarget is what a revocation is matched against.
type RevocationTarget struct {
	// SessionID is the session's id ("" when asking about a new session).
	SessionID string
	// Subject and Issuer identify the caller.
	Subject, Issuer string
	// Role and AccountID identify the target.
	Role, AccountID string
	// Claims looks up the caller's scalar claims (nil: none known).
	Claims func(name string) (string, bool)
	// ClaimsAreTags says Claims returns session tag values (an issued
	// session's), which are compared with TagValue of the selectors.
	ClaimsAreTags bool
	// IssuedAt is when the session was issued (zero for a new session).
	IssuedAt time.Time
}

// Matches reports whether r's selectors all match t. Time is not
// considered; see Blocks and Revokes.
func (r Revocation) Matches(t RevocationTarget) bool {
	if r.Subject != "" && r.Subject != t.Subject ||
		r.Issuer != "" && r.Issuer != t.Issuer ||
		r.Role != "" && r.Role != t.Role ||
		r.AccountID != "" && r.AccountID != t.AccountID ||
		r.SessionID != "" && r.SessionID != t.SessionID {
		return false
	}
	for k, want := range r.Claims {
		if t.Claims == nil {
			return false
		}
		if t.ClaimsAreTags {
			want = TagValue(want)
		}
		if got, ok := t.Claims(k); !ok || got != want {
			return false
		}
	}
	return true
}

// Blocks reports whether r refuses a new session for t at now.
func (r Revocation) Blocks(t RevocationTarget, now time.Time) bool {
	return r.SessionID == "" && now.Before(r.BlockUntil) && r.Matches(t)
}

// Revokes reports whether r revokes an issued session t.
func (r Revocation) Revokes(t RevocationTarget) bool {
	return t.IssuedAt.Before(r.IssuedBefore) && r.Matches(t)
}

// Clone returns a deep copy.
func (r Revocation) Clone() Revocation {
	r.Claims = maps.Clone(r.Claims)
	return r
}

// FreezeScope names what a freeze covers: "account:<id>" or "ou:<path>".
func FreezeScope(kind, value string) string { return kind + ":" + value }

// How replicas agree.
//
// Each Service keeps an in-memory copy of the freezes and revocations,
// tagged with the state version it reflects. Every decision first reads
// the store's current version through a coalesce.Fresh (the read starts
// after the request arrived; concurrent requests share it) and reloads the
// copy if the store is ahead. FreezeAccount, UnfreezeAccount and
// RevokeSessions commit their change with a version bump before they
// return, so a request that arrives at any replica after the call
// returned decides on state that includes it: no replica issues a
// matching session after a freeze or revocation has been acknowledged.
// A version that cannot be read fails the request (Unavailable): a replica
// cut off from the shared state does not decide on its copy. LISTEN/NOTIFY
// (server package) only moves reloads off the request path.
//
// A ReloadPolicy call is shared the same way: the replica that takes it
// reloads its own policy file, then records a reload request; every
// replica that sees a newer request reloads its file before its next
// decision (and at once when notified).

// stateCache is the broker's in-memory copy of the freezes and
// revocations.
type stateCache struct {
	mu      sync.Mutex
	loaded  bool
	version uint64
	frozen  map[string]bool
	revs    []Revocation
	// reloadGen is the latest reload request seen.
	reloadGen uint64
	reloadBy  string
}

// syncedKey marks a request's context once its state is synced: the
// value is the store version read after the request began.
type syncedKey struct{}

// syncState brings the copy (and the policy, when a reload was requested)
// up to a store version read after the request began, and returns a
// context that lets the request's later state reads use it without
// another round trip. Entry points call it before they load the policy
// snapshot, so a reload requested before the request arrived is in
// force for it.
func (s *Service) syncState(ctx context.Context, now time.Time) (context.Context, error) {
	v, err := s.versions.Get(ctx)
	if err != nil {
		return ctx, s.stateUnavailable(ctx, err)
	}
	if _, _, err := s.loadState(ctx, v, now); err != nil {
		return ctx, s.stateUnavailable(ctx, err)
	}
	if err := s.applyReloadRequest(ctx); err != nil {
		return ctx, err
	}
	return context.WithValue(ctx, syncedKey{}, v), nil
}

// state returns the freezes and revocations in effect, as of a store
// version read after the request began (by syncState, or here).
func (s *Service) state(ctx context.Context, now time.Time) (map[string]bool, []Revocation, error) {
	if v, ok := ctx.Value(syncedKey{}).(uint64); ok {
		return s.loadState(ctx, v, now)
	}
	v, err := s.versions.Get(ctx)
	if err != nil {
		return nil, nil, err
	}
	frozen, revs, err := s.loadState(ctx, v, now)
	if err != nil {
		return nil, nil, err
	}
	if err := s.applyReloadRequest(ctx); err != nil {
		return nil, nil, err
	}
	return frozen, revs, nil
}

// loadState returns the copy, reloading it unless it reflects version
// atLeast already.
func (s *Service) loadState(ctx context.Context, atLeast uint64, now time.Time) (map[string]bool, []Revocation, error) {
	c := &s.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loaded && c.version >= atLeast {
		return c.frozen, c.revs, nil
	}
	st, err := s.store.LoadState(ctx, now)
	if err != nil {
		return nil, nil, err
	}
	frozen := make(map[string]bool, len(st.Frozen))
	for _, sc := range st.Frozen {
		frozen[sc] = true
	}
	c.frozen, c.revs, c.version, c.loaded = frozen, st.Revocations, st.Version, true
	c.reloadGen, c.reloadBy = st.ReloadGeneration, st.ReloadBy
	return frozen, st.Revocations, nil
}

// applyReloadRequest reloads this replica's policy when another replica
// asked for a reload this one has not performed yet. A reload that fails
// is audited and logged by Reload, and not retried until the next request:
// the policy in force stays.
func (s *Service) applyReloadRequest(ctx context.Context) error {
	s.cache.mu.Lock()
	gen, by := s.cache.reloadGen, s.cache.reloadBy
	s.cache.mu.Unlock()
	if gen <= s.reloadDone.Load() || s.reload == nil {
		return nil
	}
	s.replicaReloadMu.Lock()
	defer s.replicaReloadMu.Unlock()
	if gen <= s.reloadDone.Load() {
		return nil
	}
	_, err := s.Reload(ctx, "replicated:"+by)
	var e *domainerr.Error
	if err != nil && errors.As(err, &e) && e.Code == domainerr.Unavailable {
		return err // not even audited: fail this request, retry with the next
	}
	s.markReloaded(gen)
	return nil
}

// markReloaded records that reload request gen (and every earlier one)
// has been performed here.
func (s *Service) markReloaded(gen uint64) {
	for {
		cur := s.reloadDone.Load()
		if gen <= cur || s.reloadDone.CompareAndSwap(cur, gen) {
			return
		}
	}
}

// RefreshState reloads the copy if the store holds a newer state, and
// performs a reload request it holds. The server calls it when a replica
// announces a change; correctness never depends on it.
func (s *Service) RefreshState(ctx context.Context) error {
	if _, _, err := s.state(ctx, s.now()); err != nil {
		return fmt.Errorf("broker: refresh shared state: %w", err)
	}
	return nil
}
