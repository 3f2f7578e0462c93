// Package postgres is keyguard's state store for several keyguard replicas:
// grants, ring state, usage counts, key versions and the state version in
// PostgreSQL (github.com/jackc/pgx/v5).
//
// Every change that can alter a decision bumps the state version in its
// own transaction and notifies the channel StateChannel with the new
// version; replicas read the version before deciding (keyguard.Service), so
// the notification only lets them reload early. The rotation lock is a
// PostgreSQL session advisory lock, released if the holder's session ends.
package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/credmatrix/credmatrix/platform/pgnotify"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/internal/grantcodec"
)

// StateChannel is the LISTEN/NOTIFY channel of state changes; the payload
// is the new state version.
const StateChannel = "keyguard_state"

// Advisory lock keys: the first 8 bytes of SHA-256 of their names, so they
// do not collide with the other services' locks in a shared database.
const (
	migrationLock int64 = 0x1f5e0c3a7d92b461 // "credmatrix keyguard migration"
	rotationLock  int64 = 0x6b0d4e21c8a7f359 // "credmatrix keyguard rotation"
)

// Store is a keyguard.Store in PostgreSQL. It is safe for concurrent use,
// by any number of processes on one database.
type Store struct {
	pool *pgxpool.Pool
}

var _ keyguard.Store = (*Store)(nil)

// Open connects to the database at dsn (a libpq keyword string or URL) and
// migrates the schema.
func Open(ctx context.Context, dsn string) (*Store, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("open keyguard state: %w", err)
	}
	s := &Store{pool: pool}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open keyguard state: %w", err)
	}
	return s, nil
}

// migrations are applied in order under an advisory lock; the
// credmatrix_keyguard_schema table records how many have run.
var migrations = []string{
	`CREATE TABLE keyguard_state (
		id      INTEGER PRIMARY KEY CHECK (id = 1),
		version BIGINT  NOT NULL
	);
	INSERT INTO keyguard_state (id, version) VALUES (1, 1);
	CREATE TABLE keyguard_grants (
		id         TEXT PRIMARY KEY,
		principal  TEXT NOT NULL,
		data_class TEXT NOT NULL,
		body       TEXT NOT NULL
	);
	CREATE TABLE keyguard_rings (
		data_class          TEXT    NOT NULL,
		region              TEXT    NOT NULL,
		min_decrypt_version INTEGER NOT NULL,
		PRIMARY KEY (data_class, region)
	);
	CREATE TABLE keyguard_usage (
		data_class TEXT    NOT NULL,
		region     TEXT    NOT NULL,
		version    INTEGER NOT NULL,
		count      BIGINT  NOT NULL,
		PRIMARY KEY (data_class, region, version)
	);
	CREATE TABLE keyguard_key_versions (
		data_class       TEXT    NOT NULL,
		region           TEXT    NOT NULL,
		version          INTEGER NOT NULL,
		create_unix_nano BIGINT  NOT NULL,
		backend_key      TEXT    NOT NULL,
		mac              BYTEA   NOT NULL,
		PRIMARY KEY (data_class, region, version)
	);`,
}

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("lock schema: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS credmatrix_keyguard_schema (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("schema table: %w", err)
	}
	var version int
	err = tx.QueryRow(ctx, `SELECT version FROM credmatrix_keyguard_schema`).Scan(&version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := tx.Exec(ctx, `INSERT INTO credmatrix_keyguard_schema (version) VALUES (0)`); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this keyguard (%d)", version, len(migrations))
	}
	for _, m := range migrations[version:] {
		if _, err := tx.Exec(ctx, m); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE credmatrix_keyguard_schema SET version = $1`, len(migrations)); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// Close closes the pool.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// Follow calls changed whenever another process (or this one) announces a
// state change, and after every (re)connection of the listening session,
// since notifications may have been missed meanwhile, until ctx ends.
// Connection failures go to onError (may be nil).
func (s *Store) Follow(ctx context.Context, changed func(), onError func(error)) {
	pgnotify.Listen(ctx, s.pool.Config().ConnConfig, StateChannel, func(string) { changed() }, onError)
}

// write runs f in a transaction that, when bump is set, also increases the
// state version and notifies StateChannel.
func (s *Store) write(ctx context.Context, bump bool, f func(tx pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := f(tx); err != nil {
		return err
	}
	if bump {
		var v int64
		if err := tx.QueryRow(ctx, `UPDATE keyguard_state SET version = version + 1 WHERE id = 1 RETURNING version`).Scan(&v); err != nil {
			return fmt.Errorf("bump state version: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, StateChannel, strconv.FormatInt(v, 10)); err != nil {
			return fmt.Errorf("notify: %w", err)
		}
	}
	return tx.Commit(ctx)
}

// Version implements keyguard.Store.
func (s *Store) Version(ctx context.Context) (uint64, error) {
	var v int64
	if err := s.pool.QueryRow(ctx, `SELECT version FROM keyguard_state WHERE id = 1`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read state version: %w", err)
	}
	return uint64(v), nil
}

// Load implements keyguard.Store: one repeatable-read transaction, one
// snapshot.
func (s *Store) Load(ctx context.Context) (keyguard.State, error) {
	st := keyguard.State{Rings: map[keyguard.Ring]keyguard.RingState{}}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return st, fmt.Errorf("load state: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var v int64
	if err := tx.QueryRow(ctx, `SELECT version FROM keyguard_state WHERE id = 1`).Scan(&v); err != nil {
		return st, fmt.Errorf("load state: version: %w", err)
	}
	st.Version = uint64(v)
	rows, err := tx.Query(ctx, `SELECT body FROM keyguard_grants ORDER BY id`)
	if err != nil {
		return st, fmt.Errorf("load grants: %w", err)
	}
	bodies, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return st, fmt.Errorf("load grants: %w", err)
	}
	for _, b := range bodies {
		g, err := grantcodec.Decode([]byte(b))
		if err != nil {
			return st, fmt.Errorf("load grants: %w", err)
		}
		st.Grants = append(st.Grants, g)
	}
	rows, err = tx.Query(ctx, `SELECT data_class, region, min_decrypt_version FROM keyguard_rings`)
	if err != nil {
		return st, fmt.Errorf("load ring state: %w", err)
	}
	for rows.Next() {
		var r keyguard.Ring
		var min int32
		if err := rows.Scan(&r.DataClass, &r.Region, &min); err != nil {
			rows.Close()
			return st, fmt.Errorf("load ring state: %w", err)
		}
		st.Rings[r] = keyguard.RingState{MinDecryptVersion: uint32(min)}
	}
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("load ring state: %w", err)
	}
	rows, err = tx.Query(ctx, `SELECT data_class, region, version, count FROM keyguard_usage`)
	if err != nil {
		return st, fmt.Errorf("load usage: %w", err)
	}
	for rows.Next() {
		var r keyguard.Ring
		var version int32
		var n int64
		if err := rows.Scan(&r.DataClass, &r.Region, &version, &n); err != nil {
			rows.Close()
			return st, fmt.Errorf("load usage: %w", err)
		}
		rs := st.Rings[r]
		if rs.EncryptCounts == nil {
			rs.EncryptCounts = map[uint32]uint64{}
		}
		rs.EncryptCounts[uint32(version)] = uint64(n)
		st.Rings[r] = rs
	}
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("load usage: %w", err)
	}
	if st.KeyVersions, err = keyVersions(ctx, tx); err != nil {
		return st, err
	}
	return st, tx.Commit(ctx)
}

// PutGrant implements keyguard.Store.
func (s *Store) PutGrant(ctx context.Context, g keyguard.Grant) error {
	body, err := grantcodec.Encode(g)
	if err != nil {
		return err
	}
	err = s.write(ctx, true, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO keyguard_grants (id, principal, data_class, body) VALUES ($1, $2, $3, $4)
			ON CONFLICT DO NOTHING`, g.ID, g.Principal, g.DataClass, string(body))
		if err == nil && tag.RowsAffected() == 0 {
			err = keyguard.ErrExists
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("store grant %s: %w", g.ID, err)
	}
	return nil
}

// DeleteGrant implements keyguard.Store.
func (s *Store) DeleteGrant(ctx context.Context, id string) (bool, error) {
	var deleted bool
	err := s.write(ctx, true, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM keyguard_grants WHERE id = $1`, id)
		deleted = tag.RowsAffected() > 0
		return err
	})
	if err != nil {
		return false, fmt.Errorf("delete grant %s: %w", id, err)
	}
	return deleted, nil
}

// SetMinDecryptVersion implements keyguard.Store.
func (s *Store) SetMinDecryptVersion(ctx context.Context, r keyguard.Ring, min uint32) error {
	err := s.write(ctx, true, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO keyguard_rings (data_class, region, min_decrypt_version) VALUES ($1, $2, $3)
			ON CONFLICT (data_class, region) DO UPDATE SET min_decrypt_version = excluded.min_decrypt_version`, r.DataClass, r.Region, int64(min))
		return err
	})
	if err != nil {
		return fmt.Errorf("store minimum version of %s: %w", r, err)
	}
	return nil
}

// AddUsage implements keyguard.Store. Rows are updated in key order, so
// replicas flushing at once never deadlock.
func (s *Store) AddUsage(ctx context.Context, n map[keyguard.KeyRef]uint64) error {
	keys := make([]keyguard.KeyRef, 0, len(n))
	for k := range n {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b keyguard.KeyRef) int {
		return cmp.Or(cmp.Compare(a.DataClass, b.DataClass), cmp.Compare(a.Region, b.Region), cmp.Compare(a.Version, b.Version))
	})
	err := s.write(ctx, false, func(tx pgx.Tx) error {
		for _, k := range keys {
			if _, err := tx.Exec(ctx, `INSERT INTO keyguard_usage (data_class, region, version, count) VALUES ($1, $2, $3, $4)
				ON CONFLICT (data_class, region, version) DO UPDATE SET count = keyguard_usage.count + excluded.count`,
				k.DataClass, k.Region, int64(k.Version), int64(n[k])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store usage counts: %w", err)
	}
	return nil
}

// KeyVersions implements keyguard.Store.
func (s *Store) KeyVersions(ctx context.Context) (map[keyguard.Ring][]keyguard.StoredKeyVersion, error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("load key versions: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	out, err := keyVersions(ctx, tx)
	if err != nil {
		return nil, err
	}
	return out, tx.Commit(ctx)
}

func keyVersions(ctx context.Context, tx pgx.Tx) (map[keyguard.Ring][]keyguard.StoredKeyVersion, error) {
	rows, err := tx.Query(ctx, `SELECT data_class, region, version, create_unix_nano, backend_key, mac
		FROM keyguard_key_versions ORDER BY data_class, region, version`)
	if err != nil {
		return nil, fmt.Errorf("load key versions: %w", err)
	}
	defer rows.Close()
	out := map[keyguard.Ring][]keyguard.StoredKeyVersion{}
	for rows.Next() {
		var r keyguard.Ring
		var v keyguard.StoredKeyVersion
		var version int32
		var created int64
		if err := rows.Scan(&r.DataClass, &r.Region, &version, &created, &v.BackendKey, &v.MAC); err != nil {
			return nil, fmt.Errorf("load key versions: %w", err)
		}
		v.Version, v.Created = uint32(version), time.Unix(0, created).UTC()
		out[r] = append(out[r], v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load key versions: %w", err)
	}
	return out, nil
}

// AddKeyVersion implements keyguard.Store. The primary key settles races
// between replicas: one insert of a version number wins, the others are
// keyguard.ErrConflict.
func (s *Store) AddKeyVersion(ctx context.Context, r keyguard.Ring, v keyguard.StoredKeyVersion) error {
	err := s.write(ctx, true, func(tx pgx.Tx) error {
		var last int64
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM keyguard_key_versions WHERE data_class = $1 AND region = $2`,
			r.DataClass, r.Region).Scan(&last); err != nil {
			return err
		}
		if int64(v.Version) != last+1 {
			return fmt.Errorf("the ring's last version is %d: %w", last, keyguard.ErrConflict)
		}
		_, err := tx.Exec(ctx, `INSERT INTO keyguard_key_versions (data_class, region, version, create_unix_nano, backend_key, mac)
			VALUES ($1, $2, $3, $4, $5, $6)`, r.DataClass, r.Region, int64(v.Version), v.Created.UnixNano(), v.BackendKey, v.MAC)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" {
			return fmt.Errorf("version %d exists: %w", v.Version, keyguard.ErrConflict)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("store key version %d of %s: %w", v.Version, r, err)
	}
	return nil
}

// LockRotation implements keyguard.Store with a session advisory lock on a
// connection taken from the pool for as long as it is held: if this
// process dies, PostgreSQL ends the session and frees the lock.
func (s *Store) LockRotation(ctx context.Context) (func(), error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("rotation lock: %w", err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, rotationLock); err != nil {
		// The wait may have been cancelled mid-query: never reuse the
		// connection, its session may yet get the lock.
		conn.Conn().Close(context.WithoutCancel(ctx))
		conn.Release()
		return nil, fmt.Errorf("rotation lock: %w", err)
	}
	var once sync.Once
	return func() { once.Do(func() { unlockConn(conn) }) }, nil
}

func unlockConn(conn *pgxpool.Conn) {
	uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, rotationLock); err != nil {
		conn.Conn().Close(uctx) // ending the session frees the lock
	}
	conn.Release()
}
