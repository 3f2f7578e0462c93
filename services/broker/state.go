package broker

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"
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
	// Close releases the store.
	Close() error
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

// DefaultStateTTL is how long the broker trusts its in-memory copy of the
// freezes and revocations before reading them from the store again: a
// freeze or revocation made at another replica takes effect within it.
// Changes made through this replica take effect at once.
const DefaultStateTTL = time.Second

// stateCache is the broker's in-memory copy of the freezes and
// revocations, so that a request costs no store round trip.
type stateCache struct {
	mu     sync.Mutex
	loaded time.Time
	frozen map[string]bool
	revs   []Revocation
}

// state returns the freezes and revocations in effect, reading the store
// when the copy is older than the TTL.
func (s *Service) state(ctx context.Context, now time.Time) (map[string]bool, []Revocation, error) {
	c := &s.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.loaded.IsZero() && now.Sub(c.loaded) < s.stateTTL && !now.Before(c.loaded) {
		return c.frozen, c.revs, nil
	}
	scopes, err := s.store.Freezes(ctx)
	if err != nil {
		return nil, nil, err
	}
	revs, err := s.store.Revocations(ctx, now)
	if err != nil {
		return nil, nil, err
	}
	frozen := make(map[string]bool, len(scopes))
	for _, sc := range scopes {
		frozen[sc] = true
	}
	c.frozen, c.revs, c.loaded = frozen, revs, now
	return frozen, revs, nil
}

// invalidateState makes the next request read the store.
func (s *Service) invalidateState() {
	s.cache.mu.Lock()
	s.cache.loaded = time.Time{}
	s.cache.mu.Unlock()
}
