// Package sqlite is keyguard's state store in a SQLite file: the grants
// created through the API, the state of each key ring (minimum decryption
// version, usage counts), stored key versions and the state version. It is
// the embedded default and the store of a single keyguard process (the
// rotation lock is this process's); replicas use the postgres package.
// Every write is durable (WAL, synchronous=FULL) before it returns, so a
// grant revoked and acknowledged stays revoked across a crash.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the database/sql driver "sqlite"

	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/internal/grantcodec"
)

// Store is a keyguard.Store in a SQLite file. It is safe for concurrent
// use.
type Store struct {
	db   *sql.DB
	lock chan struct{}
	// version reads the state version, prepared once: every decision
	// reads it, and parsing the query each time cost more than running it.
	version *sql.Stmt

	closeOnce sync.Once
	closeErr  error
}

var _ keyguard.Store = (*Store)(nil)

// migrations bring a database to the current schema, in order;
// PRAGMA user_version counts those applied. The first is the schema of
// databases made before user_version was kept, so it is idempotent.
var migrations = []string{
	`CREATE TABLE IF NOT EXISTS grants (
		id TEXT PRIMARY KEY,
		principal TEXT NOT NULL,
		data_class TEXT NOT NULL,
		body TEXT NOT NULL
	);
	CREATE TABLE IF NOT EXISTS rings (
		data_class TEXT NOT NULL,
		region TEXT NOT NULL,
		min_decrypt_version INTEGER NOT NULL,
		counts TEXT NOT NULL DEFAULT '{}',
		PRIMARY KEY (data_class, region)
	);`,
	`CREATE TABLE state (
		id INTEGER PRIMARY KEY CHECK (id = 1),
		version INTEGER NOT NULL
	);
	INSERT INTO state (id, version) VALUES (1, 1);
	CREATE TABLE usage (
		data_class TEXT NOT NULL,
		region TEXT NOT NULL,
		version INTEGER NOT NULL,
		count INTEGER NOT NULL,
		PRIMARY KEY (data_class, region, version)
	);
	INSERT INTO usage (data_class, region, version, count)
		SELECT r.data_class, r.region, CAST(j.key AS INTEGER), j.value FROM rings r, json_each(r.counts) j;
	ALTER TABLE rings DROP COLUMN counts;
	CREATE TABLE key_versions (
		data_class TEXT NOT NULL,
		region TEXT NOT NULL,
		version INTEGER NOT NULL,
		create_unix_nano INTEGER NOT NULL,
		backend_key TEXT NOT NULL,
		mac BLOB NOT NULL,
		PRIMARY KEY (data_class, region, version)
	);`,
}

// Open opens (creating if needed) the database at path and migrates it.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" || strings.ContainsRune(path, '?') || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("open keyguard state %q: want a plain file path", path)
	}
	q := url.Values{}
	for _, p := range []string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(FULL)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open keyguard state %s: %w", path, err)
	}
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open keyguard state %s: %w", path, err)
	}
	version, err := db.PrepareContext(ctx, `SELECT version FROM state WHERE id = 1`)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open keyguard state %s: %w", path, err)
	}
	return &Store{db: db, lock: make(chan struct{}, 1), version: version}, nil
}

func migrate(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this keyguard (%d)", version, len(migrations))
	}
	for i, m := range migrations[version:] {
		if _, err := tx.ExecContext(ctx, m); err != nil {
			return fmt.Errorf("migrate to %d: %w", version+i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, len(migrations))); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return tx.Commit()
}

// Close closes the database. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = errors.Join(s.version.Close(), s.db.Close()) })
	return s.closeErr
}

// write runs f in a write transaction that also bumps the state version
// when bump is set.
func (s *Store) write(ctx context.Context, bump bool, f func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := f(tx); err != nil {
		return err
	}
	if bump {
		if _, err := tx.ExecContext(ctx, `UPDATE state SET version = version + 1 WHERE id = 1`); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Version implements keyguard.Store.
func (s *Store) Version(ctx context.Context) (uint64, error) {
	var v uint64
	if err := s.version.QueryRowContext(ctx).Scan(&v); err != nil {
		return 0, fmt.Errorf("read state version: %w", err)
	}
	return v, nil
}

// Load implements keyguard.Store: one read transaction, one snapshot.
func (s *Store) Load(ctx context.Context) (keyguard.State, error) {
	st := keyguard.State{Rings: map[keyguard.Ring]keyguard.RingState{}}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return st, fmt.Errorf("load state: %w", err)
	}
	defer tx.Rollback()
	if err := tx.QueryRowContext(ctx, `SELECT version FROM state WHERE id = 1`).Scan(&st.Version); err != nil {
		return st, fmt.Errorf("load state: version: %w", err)
	}
	if st.Grants, err = grants(ctx, tx); err != nil {
		return st, err
	}
	rows, err := tx.QueryContext(ctx, `SELECT data_class, region, min_decrypt_version FROM rings`)
	if err != nil {
		return st, fmt.Errorf("load ring state: %w", err)
	}
	for rows.Next() {
		var r keyguard.Ring
		var rs keyguard.RingState
		if err := rows.Scan(&r.DataClass, &r.Region, &rs.MinDecryptVersion); err != nil {
			rows.Close()
			return st, fmt.Errorf("load ring state: %w", err)
		}
		st.Rings[r] = rs
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("load ring state: %w", err)
	}
	rows, err = tx.QueryContext(ctx, `SELECT data_class, region, version, count FROM usage`)
	if err != nil {
		return st, fmt.Errorf("load usage: %w", err)
	}
	for rows.Next() {
		var r keyguard.Ring
		var v uint32
		var n uint64
		if err := rows.Scan(&r.DataClass, &r.Region, &v, &n); err != nil {
			rows.Close()
			return st, fmt.Errorf("load usage: %w", err)
		}
		rs := st.Rings[r]
		if rs.EncryptCounts == nil {
			rs.EncryptCounts = map[uint32]uint64{}
		}
		rs.EncryptCounts[v] = n
		st.Rings[r] = rs
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("load usage: %w", err)
	}
	if st.KeyVersions, err = keyVersions(ctx, tx); err != nil {
		return st, err
	}
	return st, tx.Commit()
}

func grants(ctx context.Context, tx *sql.Tx) ([]keyguard.Grant, error) {
	rows, err := tx.QueryContext(ctx, `SELECT body FROM grants ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("load grants: %w", err)
	}
	defer rows.Close()
	var out []keyguard.Grant
	for rows.Next() {
		var body string
		if err := rows.Scan(&body); err != nil {
			return nil, fmt.Errorf("load grants: %w", err)
		}
		g, err := grantcodec.Decode([]byte(body))
		if err != nil {
			return nil, fmt.Errorf("load grants: %w", err)
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// PutGrant implements keyguard.Store.
func (s *Store) PutGrant(ctx context.Context, g keyguard.Grant) error {
	body, err := grantcodec.Encode(g)
	if err != nil {
		return err
	}
	err = s.write(ctx, true, func(tx *sql.Tx) error {
		var exists int
		switch err := tx.QueryRowContext(ctx, `SELECT 1 FROM grants WHERE id = ?`, g.ID).Scan(&exists); {
		case err == nil:
			return keyguard.ErrExists
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO grants (id, principal, data_class, body) VALUES (?, ?, ?, ?)`,
			g.ID, g.Principal, g.DataClass, string(body))
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
	err := s.write(ctx, true, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM grants WHERE id = ?`, id)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		deleted = n > 0
		return err
	})
	if err != nil {
		return false, fmt.Errorf("delete grant %s: %w", id, err)
	}
	return deleted, nil
}

// SetMinDecryptVersion implements keyguard.Store.
func (s *Store) SetMinDecryptVersion(ctx context.Context, r keyguard.Ring, min uint32) error {
	err := s.write(ctx, true, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO rings (data_class, region, min_decrypt_version) VALUES (?, ?, ?)
ON CONFLICT (data_class, region) DO UPDATE SET min_decrypt_version = excluded.min_decrypt_version`, r.DataClass, r.Region, min)
		return err
	})
	if err != nil {
		return fmt.Errorf("store minimum version of %s: %w", r, err)
	}
	return nil
}

// AddUsage implements keyguard.Store.
func (s *Store) AddUsage(ctx context.Context, n map[keyguard.KeyRef]uint64) error {
	err := s.write(ctx, false, func(tx *sql.Tx) error {
		for k, c := range n {
			if _, err := tx.ExecContext(ctx, `INSERT INTO usage (data_class, region, version, count) VALUES (?, ?, ?, ?)
ON CONFLICT (data_class, region, version) DO UPDATE SET count = count + excluded.count`, k.DataClass, k.Region, k.Version, c); err != nil {
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
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("load key versions: %w", err)
	}
	defer tx.Rollback()
	out, err := keyVersions(ctx, tx)
	if err != nil {
		return nil, err
	}
	return out, tx.Commit()
}

func keyVersions(ctx context.Context, tx *sql.Tx) (map[keyguard.Ring][]keyguard.StoredKeyVersion, error) {
	rows, err := tx.QueryContext(ctx, `SELECT data_class, region, version, create_unix_nano, backend_key, mac
		FROM key_versions ORDER BY data_class, region, version`)
	if err != nil {
		return nil, fmt.Errorf("load key versions: %w", err)
	}
	defer rows.Close()
	out := map[keyguard.Ring][]keyguard.StoredKeyVersion{}
	for rows.Next() {
		var r keyguard.Ring
		var v keyguard.StoredKeyVersion
		var created int64
		if err := rows.Scan(&r.DataClass, &r.Region, &v.Version, &created, &v.BackendKey, &v.MAC); err != nil {
			return nil, fmt.Errorf("load key versions: %w", err)
		}
		v.Created = time.Unix(0, created).UTC()
		out[r] = append(out[r], v)
	}
	return out, rows.Err()
}

// AddKeyVersion implements keyguard.Store.
func (s *Store) AddKeyVersion(ctx context.Context, r keyguard.Ring, v keyguard.StoredKeyVersion) error {
	err := s.write(ctx, true, func(tx *sql.Tx) error {
		var last uint32
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM key_versions WHERE data_class = ? AND region = ?`,
			r.DataClass, r.Region).Scan(&last); err != nil {
			return err
		}
		if v.Version != last+1 {
			return fmt.Errorf("the ring's last version is %d: %w", last, keyguard.ErrConflict)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO key_versions (data_class, region, version, create_unix_nano, backend_key, mac)
			VALUES (?, ?, ?, ?, ?, ?)`, r.DataClass, r.Region, v.Version, v.Created.UnixNano(), v.BackendKey, v.MAC)
		return err
	})
	if err != nil {
		return fmt.Errorf("store key version %d of %s: %w", v.Version, r, err)
	}
	return nil
}

// LockRotation implements keyguard.Store with a lock of this Store: one
// process owns a SQLite state file.
func (s *Store) LockRotation(ctx context.Context) (func(), error) {
	select {
	case s.lock <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-s.lock }) }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
