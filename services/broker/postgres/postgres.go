// Package postgres is the broker's shared state store for several broker
// replicas: single-use token ids, revocations and freezes in PostgreSQL
// (github.com/jackc/pgx/v5), so that a token used at one replica is
// refused at every other and a freeze applies everywhere at once.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store is a broker.Store in PostgreSQL.
type Store struct {
	pool    *pgxpool.Pool
	inserts atomic.Uint64
}

var _ broker.Store = (*Store)(nil)

const pruneEvery = 1024

// Open connects to the database at dsn (a libpq keyword string or URL)
// and migrates the schema.
func Open(ctx context.Context, dsn string) (*Store, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("open broker store: %w", err)
	}
	s := &Store{pool: pool}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open broker store: %w", err)
	}
	return s, nil
}

// migrations are applied in order under an advisory lock; the
// credmatrix_broker_schema table records how many have run.
var migrations = []string{
	`CREATE TABLE broker_jti (
		issuer  TEXT        NOT NULL,
		jti     TEXT        NOT NULL,
		expires TIMESTAMPTZ NOT NULL,
		PRIMARY KEY (issuer, jti)
	);
	CREATE INDEX broker_jti_expires ON broker_jti (expires);
	CREATE TABLE broker_revocations (
		id            TEXT        PRIMARY KEY,
		subject       TEXT        NOT NULL,
		issuer        TEXT        NOT NULL,
		role          TEXT        NOT NULL,
		account_id    TEXT        NOT NULL,
		session_id    TEXT        NOT NULL,
		claims        JSONB       NOT NULL,
		issued_before TIMESTAMPTZ,
		block_until   TIMESTAMPTZ,
		created_at    TIMESTAMPTZ NOT NULL,
		reason        TEXT        NOT NULL
	);
	CREATE TABLE broker_freezes (
		scope      TEXT        PRIMARY KEY,
		reason     TEXT        NOT NULL,
		created_at TIMESTAMPTZ NOT NULL
	);`,
	// Single use consumes a token id only with an issuance: a row is a
	// reservation (holder set, lapsing at lease_until) until committed
	// (holder ''). Rows already there were consumed.
	`ALTER TABLE broker_jti ADD COLUMN holder TEXT NOT NULL DEFAULT '';
	ALTER TABLE broker_jti ADD COLUMN lease_until TIMESTAMPTZ;`,
	// The state version moves with every change of freezes, revocations
	// and reload requests (see broker.Store.StateVersion).
	`CREATE TABLE broker_state (
		id                INTEGER PRIMARY KEY CHECK (id = 1),
		version           BIGINT  NOT NULL,
		reload_generation BIGINT  NOT NULL,
		reload_by         TEXT    NOT NULL
	);
	INSERT INTO broker_state (id, version, reload_generation, reload_by) VALUES (1, 1, 0, '');`,
}

// migrationLock is the advisory lock key serialising migrations of
// replicas starting together.
const migrationLock = 0x63726d62 // "crmb"

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("lock schema: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS credmatrix_broker_schema (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("schema table: %w", err)
	}
	var version int
	err = tx.QueryRow(ctx, `SELECT version FROM credmatrix_broker_schema`).Scan(&version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := tx.Exec(ctx, `INSERT INTO credmatrix_broker_schema (version) VALUES (0)`); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this broker (%d)", version, len(migrations))
	}
	for _, m := range migrations[version:] {
		if _, err := tx.Exec(ctx, m); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE credmatrix_broker_schema SET version = $1`, len(migrations)); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// ReserveJTI implements broker.Store.
func (s *Store) ReserveJTI(ctx context.Context, r broker.JTIReservation, now time.Time) error {
	if s.inserts.Add(1)%pruneEvery == 0 {
		if _, err := s.pool.Exec(ctx, `DELETE FROM broker_jti WHERE expires < $1`, now); err != nil {
			return fmt.Errorf("prune token ids: %w", err)
		}
	}
	// Insert, or take over a lapsed reservation; a used id (holder '')
	// or a live reservation is left alone. One statement: the row lock
	// of the conflict makes one of concurrent reservations, at any
	// replica, the winner.
	tag, err := s.pool.Exec(ctx, `INSERT INTO broker_jti (issuer, jti, expires, holder, lease_until) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (issuer, jti) DO UPDATE SET expires = excluded.expires, holder = excluded.holder, lease_until = excluded.lease_until
		WHERE broker_jti.holder <> '' AND broker_jti.lease_until <= $6`,
		r.Issuer, r.JTI, r.Expires, r.Holder, r.LeaseUntil, now)
	if err != nil {
		return fmt.Errorf("reserve token id: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	var holder string
	err = s.pool.QueryRow(ctx, `SELECT holder FROM broker_jti WHERE issuer = $1 AND jti = $2`, r.Issuer, r.JTI).Scan(&holder)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
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
	tag, err := s.pool.Exec(ctx, `UPDATE broker_jti SET holder = '', lease_until = NULL WHERE issuer = $1 AND jti = $2 AND holder = $3`,
		r.Issuer, r.JTI, r.Holder)
	if err != nil {
		return fmt.Errorf("commit token id: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return broker.ErrJTILost
	}
	return nil
}

// ReleaseJTI implements broker.Store.
func (s *Store) ReleaseJTI(ctx context.Context, r broker.JTIReservation) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM broker_jti WHERE issuer = $1 AND jti = $2 AND holder = $3`, r.Issuer, r.JTI, r.Holder); err != nil {
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
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("add revocation: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	tag, err := tx.Exec(ctx, `INSERT INTO broker_revocations
		(id, subject, issuer, role, account_id, session_id, claims, issued_before, block_until, created_at, reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING`,
		r.ID, r.Subject, r.Issuer, r.Role, r.AccountID, r.SessionID, string(claims),
		nullTime(r.IssuedBefore), nullTime(r.BlockUntil), r.CreatedAt, r.Reason)
	if err != nil {
		return fmt.Errorf("add revocation: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("revocation %s: %w", r.ID, broker.ErrExists)
	}
	if err := bump(ctx, tx); err != nil {
		return fmt.Errorf("add revocation: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("add revocation: %w", err)
	}
	return nil
}

// Revocations implements broker.Store.
func (s *Store) Revocations(ctx context.Context, now time.Time) ([]broker.Revocation, error) {
	return revocations(ctx, s.pool, now)
}

// querier is *pgxpool.Pool or pgx.Tx.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func revocations(ctx context.Context, q querier, now time.Time) ([]broker.Revocation, error) {
	rows, err := q.Query(ctx, `SELECT id, subject, issuer, role, account_id, session_id, claims::text,
		issued_before, block_until, created_at, reason FROM broker_revocations
		WHERE block_until > $1 OR issued_before > $2 ORDER BY created_at, id`,
		now, now.Add(-broker.MaxSessionDuration))
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	defer rows.Close()
	var out []broker.Revocation
	for rows.Next() {
		var r broker.Revocation
		var claims string
		var issued, block *time.Time
		if err := rows.Scan(&r.ID, &r.Subject, &r.Issuer, &r.Role, &r.AccountID, &r.SessionID, &claims,
			&issued, &block, &r.CreatedAt, &r.Reason); err != nil {
			return nil, fmt.Errorf("list revocations: %w", err)
		}
		if err := json.Unmarshal([]byte(claims), &r.Claims); err != nil {
			return nil, fmt.Errorf("revocation %s: claims: %w", r.ID, err)
		}
		r.IssuedBefore, r.BlockUntil, r.CreatedAt = utc(issued), utc(block), r.CreatedAt.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	return out, nil
}

// Freeze implements broker.Store.
func (s *Store) Freeze(ctx context.Context, scopes []string, reason string, at time.Time) ([]string, error) {
	return s.each(ctx, scopes, `INSERT INTO broker_freezes (scope, reason, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		func(scope string) []any { return []any{scope, reason, at} })
}

// Unfreeze implements broker.Store.
func (s *Store) Unfreeze(ctx context.Context, scopes []string) ([]string, error) {
	return s.each(ctx, scopes, `DELETE FROM broker_freezes WHERE scope = $1`, func(scope string) []any { return []any{scope} })
}

func (s *Store) each(ctx context.Context, scopes []string, query string, args func(string) []any) ([]string, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("update freezes: %w", err)
	}
	defer tx.Rollback(ctx)
	changed := []string{}
	for _, scope := range scopes {
		tag, err := tx.Exec(ctx, query, args(scope)...)
		if err != nil {
			return nil, fmt.Errorf("update freeze %s: %w", scope, err)
		}
		if tag.RowsAffected() == 1 {
			changed = append(changed, scope)
		}
	}
	if len(changed) > 0 {
		if err := bump(ctx, tx); err != nil {
			return nil, fmt.Errorf("update freezes: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("update freezes: %w", err)
	}
	return changed, nil
}

// Frozen implements broker.Store.
func (s *Store) Frozen(ctx context.Context, scopes []string) (string, error) {
	if len(scopes) == 0 {
		return "", nil
	}
	rows, err := s.pool.Query(ctx, `SELECT scope FROM broker_freezes WHERE scope = ANY($1)`, scopes)
	if err != nil {
		return "", fmt.Errorf("read freezes: %w", err)
	}
	frozen := map[string]bool{}
	for rows.Next() {
		var sc string
		if err := rows.Scan(&sc); err != nil {
			rows.Close()
			return "", fmt.Errorf("read freezes: %w", err)
		}
		frozen[sc] = true
	}
	rows.Close()
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
	rows, err := s.pool.Query(ctx, `SELECT scope FROM broker_freezes ORDER BY scope`)
	if err != nil {
		return nil, fmt.Errorf("list freezes: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list freezes: %w", err)
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}

// Close implements broker.Store.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func utc(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}
