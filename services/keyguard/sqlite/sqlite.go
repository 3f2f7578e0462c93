// Package sqlite is keyguard's state store in a SQLite file: the grants
// created through the API and the state of each key ring (minimum
// decryption version, usage counts). It is the embedded default and the
// production store of a single keyguard process; every write is durable
// (WAL, synchronous=FULL) before it returns, so a grant revoked and
// acknowledged stays revoked across a crash.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the database/sql driver "sqlite"

	"github.com/credmatrix/credmatrix/services/keyguard"
)

// Store is a keyguard.Store in a SQLite file. It is safe for concurrent
// use.
type Store struct {
	db *sql.DB
}

var _ keyguard.Store = (*Store)(nil)

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
	const schema = `
CREATE TABLE IF NOT EXISTS grants (
	id TEXT PRIMARY KEY,
	principal TEXT NOT NULL,
	data_class TEXT NOT NULL,
	body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rings (
	data_class TEXT NOT NULL,
	region TEXT NOT NULL,
	min_decrypt_version INTEGER NOT NULL,
	counts TEXT NOT NULL,
	PRIMARY KEY (data_class, region)
);`
	if _, err := db.ExecContext(ctx, schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("open keyguard state %s: migrate: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// grantJSON is the stored form of a grant.
type grantJSON struct {
	ID              string            `json:"id"`
	Principal       string            `json:"principal"`
	DataClass       string            `json:"data_class"`
	Operations      []string          `json:"operations"`
	Regions         []string          `json:"regions"`
	RequiredContext map[string]string `json:"required_context,omitempty"`
	ExpireTime      time.Time         `json:"expire_time"`
	CreateTime      time.Time         `json:"create_time"`
	CreatedBy       string            `json:"created_by"`
}

// PutGrant stores a new grant; an existing id is an error.
func (s *Store) PutGrant(ctx context.Context, g keyguard.Grant) error {
	j := grantJSON{ID: g.ID, Principal: g.Principal, DataClass: g.DataClass, Regions: g.Regions,
		RequiredContext: g.RequiredContext, ExpireTime: g.ExpireTime, CreateTime: g.CreateTime, CreatedBy: g.CreatedBy}
	for _, op := range g.Operations {
		j.Operations = append(j.Operations, op.String())
	}
	body, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("encode grant %s: %w", g.ID, err)
	}
	if _, err := s.db.ExecContext(ctx, `INSERT INTO grants (id, principal, data_class, body) VALUES (?, ?, ?, ?)`,
		g.ID, g.Principal, g.DataClass, string(body)); err != nil {
		return fmt.Errorf("store grant %s: %w", g.ID, err)
	}
	return nil
}

// DeleteGrant removes a grant, reporting whether it existed.
func (s *Store) DeleteGrant(ctx context.Context, id string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM grants WHERE id = ?`, id)
	if err != nil {
		return false, fmt.Errorf("delete grant %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// Grants returns every stored grant.
func (s *Store) Grants(ctx context.Context) ([]keyguard.Grant, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT body FROM grants ORDER BY id`)
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
		var j grantJSON
		if err := json.Unmarshal([]byte(body), &j); err != nil {
			return nil, fmt.Errorf("load grants: decode: %w", err)
		}
		g := keyguard.Grant{ID: j.ID, Principal: j.Principal, DataClass: j.DataClass, Regions: j.Regions,
			RequiredContext: j.RequiredContext, ExpireTime: j.ExpireTime, CreateTime: j.CreateTime, CreatedBy: j.CreatedBy}
		for _, name := range j.Operations {
			op, ok := keyguard.ParseOperation(name)
			if !ok {
				return nil, fmt.Errorf("load grants: grant %s: unknown operation %q", j.ID, name)
			}
			g.Operations = append(g.Operations, op)
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// RingStates returns the stored state of every ring.
func (s *Store) RingStates(ctx context.Context) (map[keyguard.Ring]keyguard.RingState, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT data_class, region, min_decrypt_version, counts FROM rings`)
	if err != nil {
		return nil, fmt.Errorf("load ring state: %w", err)
	}
	defer rows.Close()
	out := map[keyguard.Ring]keyguard.RingState{}
	for rows.Next() {
		var r keyguard.Ring
		var st keyguard.RingState
		var counts string
		if err := rows.Scan(&r.DataClass, &r.Region, &st.MinDecryptVersion, &counts); err != nil {
			return nil, fmt.Errorf("load ring state: %w", err)
		}
		if err := json.Unmarshal([]byte(counts), &st.EncryptCounts); err != nil {
			return nil, fmt.Errorf("load ring state %s: counts: %w", r, err)
		}
		out[r] = st
	}
	return out, rows.Err()
}

// PutRingState replaces the state of one ring.
func (s *Store) PutRingState(ctx context.Context, r keyguard.Ring, st keyguard.RingState) error {
	counts, err := json.Marshal(st.EncryptCounts)
	if err != nil {
		return errors.Join(fmt.Errorf("encode ring state %s", r), err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO rings (data_class, region, min_decrypt_version, counts) VALUES (?, ?, ?, ?)
ON CONFLICT (data_class, region) DO UPDATE SET min_decrypt_version = excluded.min_decrypt_version, counts = excluded.counts`,
		r.DataClass, r.Region, st.MinDecryptVersion, string(counts))
	if err != nil {
		return fmt.Errorf("store ring state %s: %w", r, err)
	}
	return nil
}
