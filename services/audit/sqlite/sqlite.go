// Package sqlite is the embedded audit.Store: one SQLite file in WAL mode
// with synchronous=FULL, so an acknowledged event survives a crash or power
// loss, and the whole service runs on a laptop with no database server.
//
// It uses modernc.org/sqlite (pure Go, no cgo). Each event is stored as its
// deterministic protobuf serialisation (the Merkle leaf bytes) beside the
// columns that queries filter on.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	sqlitedrv "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/credmatrix/credmatrix/services/audit"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// busyTimeout is how long a connection waits for a lock held by another
// connection before failing with SQLITE_BUSY.
const busyTimeout = 10 * time.Second

// lookupChunk bounds the number of ids in one IN (...) list.
const lookupChunk = 500

// Store is an audit.Store in a SQLite file.
type Store struct {
	db   *sql.DB
	path string
}

var _ audit.Store = (*Store)(nil)

// Open opens (creating if needed) the SQLite database at path, applies the
// durability pragmas to every connection and migrates the schema.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" || strings.ContainsRune(path, '?') || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("open audit store %q: want a plain file path", path)
	}
	q := url.Values{}
	for _, p := range []string{
		fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()),
		"journal_mode(WAL)",
		"synchronous(FULL)",
		"foreign_keys(1)",
	} {
		q.Add("_pragma", p)
	}
	// Writers take the write lock at BEGIN, so a transaction never fails
	// half-way with SQLITE_BUSY on lock upgrade.
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open audit store %s: %w", path, err)
	}
	s := &Store{db: db, path: path}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open audit store %s: %w", path, err)
	}
	return s, nil
}

// migrations are applied in order; PRAGMA user_version records how many
// have run. Never edit one that has shipped: append a new one.
var migrations = []string{
	`CREATE TABLE events (
		sequence       INTEGER PRIMARY KEY CHECK (sequence >= 0),
		id             TEXT    NOT NULL UNIQUE,
		time_unix_nano INTEGER NOT NULL,
		kind           INTEGER NOT NULL,
		decision       INTEGER NOT NULL,
		principal      TEXT    NOT NULL,
		subject        TEXT    NOT NULL,
		account_id     TEXT    NOT NULL,
		role_name      TEXT    NOT NULL,
		data_class     TEXT    NOT NULL,
		trace_id       TEXT    NOT NULL,
		data           BLOB    NOT NULL
	) STRICT;
	CREATE INDEX events_time ON events (time_unix_nano);
	CREATE INDEX events_kind ON events (kind, sequence);
	CREATE INDEX events_principal ON events (principal) WHERE principal <> '';
	CREATE INDEX events_subject ON events (subject) WHERE subject <> '';
	CREATE INDEX events_account ON events (account_id) WHERE account_id <> '';
	CREATE INDEX events_trace ON events (trace_id) WHERE trace_id <> '';`,
}

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("migrate: schema version %d is newer than this binary's %d", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migrate to schema version %d: %w", i+1, err)
		}
	}
	// PRAGMA takes no bound parameters; the value is our own integer.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
		return fmt.Errorf("migrate: set schema version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// Append implements audit.Store: one transaction, committed with an fsync
// (synchronous=FULL) before it returns.
func (s *Store) Append(ctx context.Context, events []*auditv1.Event) error {
	if len(events) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("append: begin: %w", err)
	}
	defer tx.Rollback()
	var head uint64
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(sequence) + 1, 0) FROM events").Scan(&head); err != nil {
		return fmt.Errorf("append: read head: %w", err)
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO events
		(sequence, id, time_unix_nano, kind, decision, principal, subject, account_id, role_name, data_class, trace_id, data)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("append: prepare: %w", err)
	}
	defer stmt.Close()
	for i, e := range events {
		if want := head + uint64(i); e.GetSequence() != want || want > math.MaxInt64 {
			return fmt.Errorf("append event %d: sequence %d, want %d: %w", i, e.GetSequence(), want, audit.ErrSequence)
		}
		data, err := audit.MarshalEvent(e)
		if err != nil {
			return fmt.Errorf("append event %d: %w", i, err)
		}
		ix := audit.IndexOf(e)
		_, err = stmt.ExecContext(ctx,
			int64(e.GetSequence()), e.GetId(), e.GetTime().AsTime().UnixNano(),
			int32(e.GetKind()), int32(e.GetDecision()),
			ix.Principal, ix.Subject, ix.AccountID, ix.RoleName, ix.DataClass, e.GetTraceId(),
			data)
		if err != nil {
			var se *sqlitedrv.Error
			if errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE {
				return fmt.Errorf("append event %d: id %q: %w", i, e.GetId(), audit.ErrDuplicateID)
			}
			return fmt.Errorf("append event %d: %w", i, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("append: commit: %w", err)
	}
	return nil
}

// Head implements audit.Store.
func (s *Store) Head(ctx context.Context) (uint64, error) {
	var head uint64
	if err := s.db.QueryRowContext(ctx, "SELECT COALESCE(MAX(sequence) + 1, 0) FROM events").Scan(&head); err != nil {
		return 0, fmt.Errorf("read head: %w", err)
	}
	return head, nil
}

// Lookup implements audit.Store.
func (s *Store) Lookup(ctx context.Context, ids []string) (map[string]*auditv1.Event, error) {
	found := make(map[string]*auditv1.Event)
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), lookupChunk)]
		ids = ids[len(chunk):]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		events, err := s.query(ctx, "SELECT data FROM events WHERE id IN ("+placeholders(len(chunk))+")", args...)
		if err != nil {
			return nil, fmt.Errorf("lookup ids: %w", err)
		}
		for _, e := range events {
			found[e.GetId()] = e
		}
	}
	return found, nil
}

// Read implements audit.Store.
func (s *Store) Read(ctx context.Context, from uint64, limit int) ([]*auditv1.Event, error) {
	if limit <= 0 || from > math.MaxInt64 {
		return nil, nil
	}
	events, err := s.query(ctx, "SELECT data FROM events WHERE sequence >= ? ORDER BY sequence LIMIT ?", int64(from), limit)
	if err != nil {
		return nil, fmt.Errorf("read from %d: %w", from, err)
	}
	return events, nil
}

// Query implements audit.Store. Every filter value is a bound parameter;
// only the fixed column conditions and the placeholders are built here.
func (s *Store) Query(ctx context.Context, f audit.Filter) ([]*auditv1.Event, string, error) {
	from, err := audit.DecodePageToken(f.PageToken)
	if err != nil {
		return nil, "", err
	}
	if from > math.MaxInt64 {
		return nil, "", nil
	}
	size := f.PageSize
	if size <= 0 {
		size = audit.DefaultPageSize
	}
	where := []string{"sequence >= ?"}
	args := []any{int64(from)}
	add := func(cond string, a ...any) {
		where = append(where, cond)
		args = append(args, a...)
	}
	if !f.Start.IsZero() {
		add("time_unix_nano >= ?", unixNano(f.Start))
	}
	if !f.End.IsZero() {
		add("time_unix_nano < ?", unixNano(f.End))
	}
	if len(f.Kinds) > 0 {
		kinds := make([]any, len(f.Kinds))
		for i, k := range f.Kinds {
			kinds[i] = int32(k)
		}
		add("kind IN ("+placeholders(len(kinds))+")", kinds...)
	}
	if f.Subject != "" {
		add("(principal = ? OR subject = ?)", f.Subject, f.Subject)
	}
	if f.AccountID != "" {
		add("account_id = ?", f.AccountID)
	}
	if f.RoleName != "" {
		add("role_name = ?", f.RoleName)
	}
	if f.DataClass != "" {
		add("data_class = ?", f.DataClass)
	}
	if f.TraceID != "" {
		add("trace_id = ?", f.TraceID)
	}
	if f.Decision != auditv1.Decision_DECISION_UNSPECIFIED {
		add("decision = ?", int32(f.Decision))
	}
	// One extra row tells whether there is a next page.
	args = append(args, size+1)
	events, err := s.query(ctx, "SELECT data FROM events WHERE "+strings.Join(where, " AND ")+" ORDER BY sequence LIMIT ?", args...)
	if err != nil {
		return nil, "", fmt.Errorf("query events: %w", err)
	}
	if len(events) <= size {
		return events, "", nil
	}
	events = events[:size]
	return events, audit.EncodePageToken(events[size-1].GetSequence() + 1), nil
}

// Close implements audit.Store.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close audit store %s: %w", s.path, err)
	}
	return nil
}

// query runs a SELECT of the data column and decodes each row.
func (s *Store) query(ctx context.Context, q string, args ...any) ([]*auditv1.Event, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var events []*auditv1.Event
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return nil, err
		}
		e := new(auditv1.Event)
		if err := proto.Unmarshal(data, e); err != nil {
			return nil, fmt.Errorf("decode stored event: %w", err)
		}
		events = append(events, e)
	}
	return events, rows.Err()
}

// placeholders returns "?, ?, ..." with n marks.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// unixNano is t in Unix nanoseconds, clamped to int64 so that a filter
// bound far in the past or future still means "no bound" on that side.
func unixNano(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}
