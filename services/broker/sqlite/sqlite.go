// Package sqlite is the broker's embedded state store: single-use token
// ids, revocations and freezes in one SQLite file (WAL, synchronous
// FULL), for a single broker replica or the local stack. Replicas that
// share state use the postgres package instead.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
	_ "modernc.org/sqlite" // the database/sql driver "sqlite"
)

// Store is a broker.Store in a SQLite file.
type Store struct {
	db      *sql.DB
	inserts atomic.Uint64
	// version reads the state version, prepared once: every decision
	// reads it, and parsing the query each time cost more than running it.
	version *sql.Stmt
}

var _ broker.Store = (*Store)(nil)

const busyTimeout = 5 * time.Second

// pruneEvery is how many ReserveJTI calls pass between deletions of
// expired token ids.
const pruneEvery = 1024

// Open opens (creating if needed) the store at path and migrates it.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" || strings.ContainsRune(path, '?') || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("open broker store %q: want a plain file path", path)
	}
	q := url.Values{}
	for _, p := range []string{
		fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()),
		"journal_mode(WAL)",
		"synchronous(FULL)",
	} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open broker store %s: %w", path, err)
	}
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open broker store %s: %w", path, err)
	}
	if s.version, err = db.PrepareContext(ctx, `SELECT version FROM state WHERE id = 1`); err != nil {
		db.Close()
		return nil, fmt.Errorf("open broker store %s: %w", path, err)
	}
	return s, nil
}

// migrations are applied in order; PRAGMA user_version records how many
// have run. Never edit one that has shipped: append a new one.
var migrations = []string{
	`CREATE TABLE jti (
		issuer  TEXT    NOT NULL,
		jti     TEXT    NOT NULL,
		expires INTEGER NOT NULL,
		PRIMARY KEY (issuer, jti)
	) WITHOUT ROWID;
	CREATE INDEX jti_expires ON jti (expires);
	CREATE TABLE revocations (
		id            TEXT    PRIMARY KEY,
		subject       TEXT    NOT NULL,
		issuer        TEXT    NOT NULL,
		role          TEXT    NOT NULL,
		account_id    TEXT    NOT NULL,
		session_id    TEXT    NOT NULL,
		claims        TEXT    NOT NULL,
		issued_before INTEGER NOT NULL,
		block_until   INTEGER NOT NULL,
		created_at    INTEGER NOT NULL,
		reason        TEXT    NOT NULL
	);
	CREATE TABLE freezes (
		scope      TEXT    PRIMARY KEY,
		reason     TEXT    NOT NULL,
		created_at INTEGER NOT NULL
	);`,
	// Single use consumes a token id only with an issuance: a row is a
	// reservation (holder set, lapsing at lease_until) until committed
	// (holder ''). Rows already there were consumed.
	`ALTER TABLE jti ADD COLUMN holder TEXT NOT NULL DEFAULT '';
	ALTER TABLE jti ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;`,
	// The state version moves with every change of freezes, revocations
	// and reload requests (see broker.Store.StateVersion).
	`CREATE TABLE state (
		id                INTEGER PRIMARY KEY CHECK (id = 1),
		version           INTEGER NOT NULL,
		reload_generation INTEGER NOT NULL,
		reload_by         TEXT    NOT NULL
	);
	INSERT INTO state (id, version, reload_generation, reload_by) VALUES (1, 1, 0, '');`,
}

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this broker (%d)", version, len(migrations))
	}
	for _, m := range migrations[version:] {
		if _, err := tx.ExecContext(ctx, m); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	// PRAGMA takes no bound parameters; the value is our own integer.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
		return err
	}
	return tx.Commit()
}

// ReserveJTI implements broker.Store.
func (s *Store) ReserveJTI(ctx context.Context, r broker.JTIReservation, now time.Time) error {
	if s.inserts.Add(1)%pruneEvery == 0 {
		if _, err := s.db.ExecContext(ctx, `DELETE FROM jti WHERE expires < ?`, now.UnixNano()); err != nil {
			return fmt.Errorf("prune token ids: %w", err)
		}
	}
	// Insert, or take over a lapsed reservation; a used id (holder '')
	// or a live reservation is left alone. One statement, so one of
	// concurrent reservations wins.
	res, err := s.db.ExecContext(ctx, `INSERT INTO jti (issuer, jti, expires, holder, lease_until) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (issuer, jti) DO UPDATE SET expires = excluded.expires, holder = excluded.holder, lease_until = excluded.lease_until
		WHERE jti.holder <> '' AND jti.lease_until <= ?`,
		r.Issuer, r.JTI, nanos(r.Expires), r.Holder, nanos(r.LeaseUntil), now.UnixNano())
	if err != nil {
		return fmt.Errorf("reserve token id: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("reserve token id: %w", err)
	} else if n == 1 {
		return nil
	}
	var holder string
	err = s.db.QueryRowContext(ctx, `SELECT holder FROM jti WHERE issuer = ? AND jti = ?`, r.Issuer, r.JTI).Scan(&holder)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return broker.ErrJTIInUse // released meanwhile: refuse this once, a retry may have it
	case err != nil:
		return fmt.Errorf("reserve token id: %w", err)
	case holder == "":
		return broker.ErrJTIUsed
	default:
		return broker.ErrJTIInUse
	}
}

// CommitJTI implements broker.Store.
func (s *Store) CommitJTI(ctx context.Context, r broker.JTIReservation) error {
	res, err := s.db.ExecContext(ctx, `UPDATE jti SET holder = '', lease_until = 0 WHERE issuer = ? AND jti = ? AND holder = ?`,
		r.Issuer, r.JTI, r.Holder)
	if err != nil {
		return fmt.Errorf("commit token id: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("commit token id: %w", err)
	} else if n == 0 {
		return broker.ErrJTILost
	}
	return nil
}

// ReleaseJTI implements broker.Store.
func (s *Store) ReleaseJTI(ctx context.Context, r broker.JTIReservation) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM jti WHERE issuer = ? AND jti = ? AND holder = ?`, r.Issuer, r.JTI, r.Holder); err != nil {
		return fmt.Errorf("release token id: %w", err)
	}
	return nil
}

// AddRevocation implements broker.Store.
func (s *Store) AddRevocation(ctx context.Context, r broker.Revocation) error {
	claims, err := json.Marshal(r.Claims)
	if err != nil {
		return fmt.Errorf("encode revocation claims: %w", err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("add revocation: %w", err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT INTO revocations
		(id, subject, issuer, role, account_id, session_id, claims, issued_before, block_until, created_at, reason)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		r.ID, r.Subject, r.Issuer, r.Role, r.AccountID, r.SessionID, string(claims),
		nanos(r.IssuedBefore), nanos(r.BlockUntil), nanos(r.CreatedAt), r.Reason)
	if err != nil {
		return fmt.Errorf("add revocation: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("add revocation: %w", err)
	} else if n == 0 {
		return fmt.Errorf("revocation %s: %w", r.ID, broker.ErrExists)
	}
	if err := bump(ctx, tx); err != nil {
		return fmt.Errorf("add revocation: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("add revocation: %w", err)
	}
	return nil
}

// Revocations implements broker.Store.
func (s *Store) Revocations(ctx context.Context, now time.Time) ([]broker.Revocation, error) {
	return revocations(ctx, s.db, now)
}

// querier is *sql.DB or *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func revocations(ctx context.Context, q querier, now time.Time) ([]broker.Revocation, error) {
	rows, err := q.QueryContext(ctx, `SELECT id, subject, issuer, role, account_id, session_id, claims,
		issued_before, block_until, created_at, reason FROM revocations
		WHERE block_until > ? OR issued_before > ? ORDER BY created_at, id`,
		nanos(now), nanos(now.Add(-broker.MaxSessionDuration)))
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	defer rows.Close()
	var out []broker.Revocation
	for rows.Next() {
		var r broker.Revocation
		var claims string
		var issued, block, created int64
		if err := rows.Scan(&r.ID, &r.Subject, &r.Issuer, &r.Role, &r.AccountID, &r.SessionID, &claims,
			&issued, &block, &created, &r.Reason); err != nil {
			return nil, fmt.Errorf("list revocations: %w", err)
		}
		if err := json.Unmarshal([]byte(claims), &r.Claims); err != nil {
			return nil, fmt.Errorf("revocation %s: claims: %w", r.ID, err)
		}
		r.IssuedBefore, r.BlockUntil, r.CreatedAt = fromNanos(issued), fromNanos(block), fromNanos(created)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	return out, nil
}

// Freeze implements broker.Store.
func (s *Store) Freeze(ctx context.Context, scopes []string, reason string, at time.Time) ([]string, error) {
	return s.each(ctx, scopes, `INSERT INTO freezes (scope, reason, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
		func(scope string) []any { return []any{scope, reason, nanos(at)} })
}

// Unfreeze implements broker.Store.
func (s *Store) Unfreeze(ctx context.Context, scopes []string) ([]string, error) {
	return s.each(ctx, scopes, `DELETE FROM freezes WHERE scope = ?`, func(scope string) []any { return []any{scope} })
}

// each runs query once per scope in one transaction and returns the
// scopes it changed.
func (s *Store) each(ctx context.Context, scopes []string, query string, args func(string) []any) ([]string, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("update freezes: %w", err)
	}
	defer tx.Rollback()
	changed := []string{}
	for _, scope := range scopes {
		res, err := tx.ExecContext(ctx, query, args(scope)...)
		if err != nil {
			return nil, fmt.Errorf("update freeze %s: %w", scope, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, fmt.Errorf("update freeze %s: %w", scope, err)
		} else if n == 1 {
			changed = append(changed, scope)
		}
	}
	if len(changed) > 0 {
		if err := bump(ctx, tx); err != nil {
			return nil, fmt.Errorf("update freezes: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("update freezes: %w", err)
	}
	return changed, nil
}

// Frozen implements broker.Store.
func (s *Store) Frozen(ctx context.Context, scopes []string) (string, error) {
	if len(scopes) == 0 {
		return "", nil
	}
	q := `SELECT scope FROM freezes WHERE scope IN (?` + strings.Repeat(`, ?`, len(scopes)-1) + `)`
	args := make([]any, len(scopes))
	for i, sc := range scopes {
		args[i] = sc
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return "", fmt.Errorf("read freezes: %w", err)
	}
	defer rows.Close()
	frozen := map[string]bool{}
	for rows.Next() {
		var sc string
		if err := rows.Scan(&sc); err != nil {
			return "", fmt.Errorf("read freezes: %w", err)
		}
		frozen[sc] = true
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("read freezes: %w", err)
	}
	for _, sc := range scopes {
		if frozen[sc] {
			return sc, nil
		}
	}
	return "", nil
}

// Freezes implements broker.Store.
func (s *Store) Freezes(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT scope FROM freezes ORDER BY scope`)
	if err != nil {
		return nil, fmt.Errorf("list freezes: %w", err)
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var sc string
		if err := rows.Scan(&sc); err != nil {
			return nil, fmt.Errorf("list freezes: %w", err)
		}
		out = append(out, sc)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list freezes: %w", err)
	}
	return out, nil
}

// Close implements broker.Store.
func (s *Store) Close() error { return errors.Join(s.version.Close(), s.db.Close()) }

// nanos stores a time as Unix nanoseconds, the zero time as 0.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
