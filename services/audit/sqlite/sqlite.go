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
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	sqlitedrv "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
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

	mu      sync.Mutex
	inserts map[int]*sql.Stmt // prepared INSERTs by row count

	stop      chan struct{} // ends checkpointWAL
	closeOnce sync.Once
	closeErr  error
	done      chan struct{} // closed when checkpointWAL has returned
}

// walCheckpointEvery is how often the background goroutine copies the WAL
// into the database file (a PASSIVE checkpoint: it never blocks the
// writer, and the next writer restarts the WAL from its start).
const walCheckpointEvery = 250 * time.Millisecond

// checkpointWAL runs SQLite WAL checkpoints off the append path, on the
// other CPU, so that a group commit writes only its own frames.
func (s *Store) checkpointWAL() {
	defer close(s.done)
	t := time.NewTicker(walCheckpointEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			// A failure here (busy, I/O) leaves the frames in the WAL,
			// which is durable; the next tick retries.
			_, _ = s.db.Exec("PRAGMA wal_checkpoint(PASSIVE)")
		}
	}
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
		// The committer never pays for copying the WAL into the database:
		// a background goroutine checkpoints (see checkpointWAL).
		"wal_autocheckpoint(0)",
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
	s := &Store{db: db, path: path, inserts: make(map[int]*sql.Stmt), stop: make(chan struct{}), done: make(chan struct{})}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open audit store %s: %w", path, err)
	}
	go s.checkpointWAL()
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
	`CREATE TABLE checkpoints (
		tree_size      INTEGER PRIMARY KEY CHECK (tree_size > 0),
		time_unix_nano INTEGER NOT NULL,
		note           BLOB    NOT NULL
	) STRICT;`,
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

// insertRows is how many events one INSERT statement carries; multi-row
// statements cut the per-statement overhead that dominates small events.
const insertRows = 64

const insertPrefix = `INSERT INTO events
	(sequence, id, time_unix_nano, kind, decision, principal, subject, account_id, role_name, data_class, trace_id, data)
	VALUES `

const insertRow = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

// Append implements audit.Store: one transaction, committed with an fsync
// (synchronous=FULL) before it returns.
func (s *Store) Append(ctx context.Context, events []*auditv1.Event) error {
	records := make([]audit.Record, len(events))
	for i, e := range events {
		data, err := leaf.Marshal(e)
		if err != nil {
			return fmt.Errorf("append event %d: %w", i, err)
		}
		records[i] = audit.Record{Event: e, Data: data}
	}
	return s.AppendRecords(ctx, records)
}

var _ audit.RecordAppender = (*Store)(nil)

// AppendRecords implements audit.RecordAppender: Append without
// serialising again.
func (s *Store) AppendRecords(ctx context.Context, records []audit.Record) error {
	if len(records) == 0 {
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
	for i, r := range records {
		if want := head + uint64(i); r.Event.GetSequence() != want || want > math.MaxInt64 {
			return fmt.Errorf("append event %d: sequence %d, want %d: %w", i, r.Event.GetSequence(), want, audit.ErrSequence)
		}
	}
	for start := 0; start < len(records); start += insertRows {
		chunk := records[start:min(len(records), start+insertRows)]
		args := make([]any, 0, 12*len(chunk))
		for _, r := range chunk {
			e := r.Event
			ix := audit.IndexOf(e)
			args = append(args,
				int64(e.GetSequence()), e.GetId(), e.GetTime().AsTime().UnixNano(),
				int32(e.GetKind()), int32(e.GetDecision()),
				ix.Principal, ix.Subject, ix.AccountID, ix.RoleName, ix.DataClass, e.GetTraceId(),
				r.Data)
		}
		stmt, err := s.insertStmt(ctx, len(chunk))
		if err != nil {
			return fmt.Errorf("append: prepare: %w", err)
		}
		if _, err := tx.StmtContext(ctx, stmt).ExecContext(ctx, args...); err != nil {
			var se *sqlitedrv.Error
			if errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE {
				return fmt.Errorf("append events %d to %d: %w", start, start+len(chunk)-1, audit.ErrDuplicateID)
			}
			return fmt.Errorf("append events %d to %d: %w", start, start+len(chunk)-1, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("append: commit: %w", err)
	}
	return nil
}

// insertStmt returns the prepared INSERT of n rows, preparing it once.
func (s *Store) insertStmt(ctx context.Context, n int) (*sql.Stmt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.inserts[n]; ok {
		return st, nil
	}
	st, err := s.db.PrepareContext(ctx, insertPrefix+strings.TrimSuffix(strings.Repeat(insertRow+", ", n), ", "))
	if err != nil {
		return nil, err
	}
	s.inserts[n] = st
	return st, nil
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

// AddCheckpoint implements audit.Store.
func (s *Store) AddCheckpoint(ctx context.Context, cp audit.StoredCheckpoint) error {
	if cp.Size == 0 || cp.Size > math.MaxInt64 {
		return fmt.Errorf("add checkpoint of size %d: %w", cp.Size, audit.ErrSequence)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("add checkpoint: begin: %w", err)
	}
	defer tx.Rollback()
	var last, head uint64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(tree_size), 0), (SELECT COALESCE(MAX(sequence) + 1, 0) FROM events) FROM checkpoints`).Scan(&last, &head); err != nil {
		return fmt.Errorf("add checkpoint: read sizes: %w", err)
	}
	if cp.Size <= last || cp.Size > head {
		return fmt.Errorf("add checkpoint of size %d (last %d, head %d): %w", cp.Size, last, head, audit.ErrSequence)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO checkpoints (tree_size, time_unix_nano, note) VALUES (?, ?, ?)",
		int64(cp.Size), unixNano(cp.Time), cp.Note); err != nil {
		return fmt.Errorf("add checkpoint: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("add checkpoint: commit: %w", err)
	}
	return nil
}

// Checkpoints implements audit.Store.
func (s *Store) Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]audit.StoredCheckpoint, error) {
	if limit <= 0 || fromSize > math.MaxInt64 {
		return nil, nil
	}
	rows, err := s.db.QueryContext(ctx, "SELECT tree_size, time_unix_nano, note FROM checkpoints WHERE tree_size >= ? ORDER BY tree_size LIMIT ?", int64(fromSize), limit)
	if err != nil {
		return nil, fmt.Errorf("read checkpoints: %w", err)
	}
	defer rows.Close()
	var out []audit.StoredCheckpoint
	for rows.Next() {
		cp, err := scanCheckpoint(rows)
		if err != nil {
			return nil, fmt.Errorf("read checkpoints: %w", err)
		}
		out = append(out, cp)
	}
	return out, rows.Err()
}

// LatestCheckpoint implements audit.Store.
func (s *Store) LatestCheckpoint(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	row := s.db.QueryRowContext(ctx, "SELECT tree_size, time_unix_nano, note FROM checkpoints ORDER BY tree_size DESC LIMIT 1")
	cp, err := scanCheckpoint(row)
	if errors.Is(err, sql.ErrNoRows) {
		return audit.StoredCheckpoint{}, false, nil
	}
	if err != nil {
		return audit.StoredCheckpoint{}, false, fmt.Errorf("read latest checkpoint: %w", err)
	}
	return cp, true, nil
}

func scanCheckpoint(row interface{ Scan(...any) error }) (audit.StoredCheckpoint, error) {
	var size, ns int64
	var note []byte
	if err := row.Scan(&size, &ns, &note); err != nil {
		return audit.StoredCheckpoint{}, err
	}
	return audit.StoredCheckpoint{Size: uint64(size), Time: time.Unix(0, ns).UTC(), Note: note}, nil
}

// Close implements audit.Store.
func (s *Store) Close() error {
	// The whole close runs inside the Once: a second caller (the server's
	// Stop racing its Serve) waits until the database file is released,
	// instead of returning while connections are still closing.
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.mu.Lock()
		for _, st := range s.inserts {
			st.Close()
		}
		s.mu.Unlock()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("close audit store %s: %w", s.path, err)
		}
	})
	return s.closeErr
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
