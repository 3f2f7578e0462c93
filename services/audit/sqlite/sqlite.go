// Package sqlite is the embedded audit.Store: one SQLite file in WAL mode
// with synchronous=FULL, so an acknowledged event survives a crash or power
// loss, and the whole service runs on a laptop with no database server.
//
// It uses modernc.org/sqlite (pure Go, no cgo). The layout is the one
// audit.Store describes: per event one row (sequence, time, id, leaf
// bytes) appended at the end of the table's b-tree, with a unique index on
// (time, id) that grows at its end too; one checkpoint row per commit
// batch, in the same transaction; and the query index (event_index, with
// its watermark in index_state) written off the commit path in short
// transactions that do not wait for an fsync (it is derived data: a crash
// loses its last rows together with the watermark).
//
// OpenReadOnly opens a store file as evidence: read-only, without
// touching its schema, journal mode or WAL.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// lookupChunk bounds the number of keys in one IN (...) list.
const lookupChunk = 400

// Store is an audit.Store in a SQLite file.
type Store struct {
	db   *sql.DB // appends and checkpoints: synchronous=FULL, BEGIN IMMEDIATE
	idx  *sql.DB // index writes: synchronous=NORMAL, BEGIN IMMEDIATE, one connection
	rdb  *sql.DB // reads and views: deferred transactions
	path string
	ro   bool   // opened as evidence (OpenReadOnly)
	tmp  string // OpenReadOnly's private copy of the evidence, removed by Close
	v3   bool   // the file has the v3 layout (event_index); read-only opens of older files lack it
	v4   bool   // the file has tiles and compact ranges (v4); read-only opens of older files lack them
	v5   bool   // the file records pruning (v5)

	mu      sync.Mutex
	inserts map[string]*sql.Stmt // prepared multi-row INSERTs by table and row count
	heads   *sql.Stmt            // head and last checkpoint, in the append transaction
	addCP   *sql.Stmt            // INSERT of a checkpoint

	stop      chan struct{} // ends checkpointWAL
	closeOnce sync.Once
	closeErr  error
	done      chan struct{} // closed when checkpointWAL has returned
}

// walCheckpointEvery is how often the background goroutine copies the WAL
// into the database file (a PASSIVE checkpoint: it never blocks the
// writer, and the next writer restarts the WAL from its start).
const walCheckpointEvery = 250 * time.Millisecond

// walTruncateBytes bounds the WAL file. With readers always active (a
// Subscribe tail, queries, the indexer) a PASSIVE checkpoint never finds a
// moment when the whole WAL is copied and no reader uses it, so the WAL
// never restarts and grows without end (12 KB per event in a soak with a
// tail and queries). Past this size the checkpointer runs a TRUNCATE
// checkpoint: it waits for the short read transactions to move to the
// newest snapshot (the writer waits meanwhile), copies what is left and
// truncates the file.
var walTruncateBytes int64 = 16 << 20

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
			if fi, err := os.Stat(s.path + "-wal"); err == nil && fi.Size() > walTruncateBytes {
				_, _ = s.db.Exec("PRAGMA wal_checkpoint(TRUNCATE)")
			}
		}
	}
}

var _ audit.Store = (*Store)(nil)

// dsn returns the data source of path with the given pragmas.
func dsn(path string, txlock string, pragmas ...string) string {
	q := url.Values{}
	for _, p := range append([]string{fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds())}, pragmas...) {
		q.Add("_pragma", p)
	}
	if txlock != "" {
		q.Set("_txlock", txlock)
	}
	return path + "?" + q.Encode()
}

func checkPath(path string) error {
	if path == "" || strings.ContainsRune(path, '?') || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return fmt.Errorf("open audit store %q: want a plain file path", path)
	}
	return nil
}

// Open opens (creating if needed) the SQLite database at path, applies the
// durability pragmas to every connection and migrates the schema.
func Open(ctx context.Context, path string) (*Store, error) {
	if err := checkPath(path); err != nil {
		return nil, err
	}
	durable := []string{
		"journal_mode(WAL)",
		"synchronous(FULL)",
		// The committer never pays for copying the WAL into the database:
		// a background goroutine checkpoints (see checkpointWAL).
		"wal_autocheckpoint(0)",
		"foreign_keys(1)",
		"temp_store(MEMORY)",
	}
	// Writers take the write lock at BEGIN, so a transaction never fails
	// half-way with SQLITE_BUSY on lock upgrade.
	db, err := sql.Open("sqlite", dsn(path, "immediate", durable...))
	if err != nil {
		return nil, fmt.Errorf("open audit store %s: %w", path, err)
	}
	s := &Store{db: db, path: path, v3: true, v4: true, v5: true, inserts: make(map[string]*sql.Stmt), stop: make(chan struct{}), done: make(chan struct{})}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open audit store %s: %w", path, err)
	}
	s.idx, _ = sql.Open("sqlite", dsn(path, "immediate", "journal_mode(WAL)", "synchronous(NORMAL)", "wal_autocheckpoint(0)", "temp_store(MEMORY)"))
	s.idx.SetMaxOpenConns(1)
	s.rdb, _ = sql.Open("sqlite", dsn(path, "deferred", "journal_mode(WAL)", "query_only(1)"))
	if s.heads, err = s.db.PrepareContext(ctx, `SELECT (SELECT COALESCE(MAX(sequence) + 1, 0) FROM events), (SELECT COALESCE(MAX(tree_size), 0) FROM checkpoints)`); err == nil {
		s.addCP, err = s.db.PrepareContext(ctx, "INSERT INTO checkpoints (tree_size, time_unix_nano, note, compact_range) VALUES (?, ?, ?, ?)")
	}
	if err != nil {
		s.closeHandles()
		return nil, fmt.Errorf("open audit store %s: %w", path, err)
	}
	go s.checkpointWAL()
	return s, nil
}

// OpenReadOnly opens the SQLite store at path as evidence: the file is
// opened read-only, no migration runs, no pragma that writes (journal
// mode, schema version) is applied and no WAL checkpoint happens, so the
// database and its WAL stay byte-identical, and so does the WAL's
// shared-memory file (-shm):
//
//   - without a WAL file, the database is opened immutable (no lock, no
//     -shm is created);
//   - with a WAL and its -shm, both are opened read-only and the WAL's
//     events are read;
//   - with a WAL but no -shm (a seized copy), SQLite could only read the
//     WAL by creating one beside the evidence: the database and its WAL
//     are copied to a private temporary directory first, and that copy
//     is read.
//
// Every writing method fails. It reads stores of schema version 2 (no
// query index) and 3.
func OpenReadOnly(ctx context.Context, path string) (*Store, error) {
	if err := checkPath(path); err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open audit store read-only: %w", err)
	}
	// A file: URI needs an absolute path ("dir/audit.db" would name a
	// host "dir").
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	q := url.Values{}
	q.Set("mode", "ro")
	var tmp string
	_, walErr := os.Stat(path + "-wal")
	_, shmErr := os.Stat(path + "-shm")
	switch {
	case walErr != nil:
		q.Set("immutable", "1")
	case shmErr == nil:
		q.Set("readonly_shm", "1")
	default:
		var err error
		if tmp, err = os.MkdirTemp("", "credmatrix-audit-evidence-"); err != nil {
			return nil, fmt.Errorf("open audit store read-only: %w", err)
		}
		for _, suffix := range []string{"", "-wal"} {
			if err := copyFile(path+suffix, filepath.Join(tmp, "audit.db"+suffix)); err != nil {
				os.RemoveAll(tmp)
				return nil, fmt.Errorf("open audit store read-only: copy the evidence: %w", err)
			}
		}
		path = filepath.Join(tmp, "audit.db")
	}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "query_only(1)")
	q.Set("_txlock", "deferred")
	u := url.URL{Scheme: "file", Path: path, RawQuery: q.Encode()}
	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("open audit store %s read-only: %w", path, err)
	}
	s := &Store{db: db, rdb: db, path: path, ro: true, tmp: tmp, inserts: make(map[string]*sql.Stmt), stop: make(chan struct{}), done: make(chan struct{})}
	close(s.done)
	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		s.Close()
		return nil, fmt.Errorf("open audit store %s read-only: %w", path, err)
	}
	switch {
	case version == 2:
	case version == 3:
		s.v3 = true
	case version == 4:
		s.v3, s.v4 = true, true
	case version == len(migrations):
		s.v3, s.v4, s.v5 = true, true, true
	default:
		s.Close()
		return nil, fmt.Errorf("open audit store %s read-only: schema version %d (this binary reads 2 to %d)", path, version, len(migrations))
	}
	return s, nil
}

// copyFile copies from (opened read-only) to a new file.
func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// errReadOnly is the answer of every writing method of a read-only store.
var errReadOnly = errors.New("audit store opened read-only")

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
	// Version 3: per event only the leaf and its key on the commit path;
	// the query index apart, derived from the leaf, filled off the commit
	// path (the indexer rebuilds it for events stored before). Filter
	// strings are indexed as audit.ColumnHash values.
	`CREATE TABLE events_v3 (
		sequence       INTEGER PRIMARY KEY CHECK (sequence >= 0),
		time_unix_nano INTEGER NOT NULL,
		id             TEXT    NOT NULL,
		data           BLOB    NOT NULL
	) STRICT;
	INSERT INTO events_v3 (sequence, time_unix_nano, id, data) SELECT sequence, time_unix_nano, id, data FROM events ORDER BY sequence;
	DROP TABLE events;
	ALTER TABLE events_v3 RENAME TO events;
	CREATE UNIQUE INDEX events_key ON events (time_unix_nano, id);
	CREATE TABLE event_index (
		sequence   INTEGER PRIMARY KEY CHECK (sequence >= 0),
		kind       INTEGER NOT NULL,
		decision   INTEGER NOT NULL,
		principal  INTEGER NOT NULL,
		subject    INTEGER NOT NULL,
		account_id INTEGER NOT NULL,
		role_name  INTEGER NOT NULL,
		data_class INTEGER NOT NULL,
		trace_id   INTEGER NOT NULL
	) STRICT;
	CREATE INDEX event_index_kind ON event_index (kind, sequence);
	CREATE INDEX event_index_principal ON event_index (principal, sequence) WHERE principal <> 0;
	CREATE INDEX event_index_subject ON event_index (subject, sequence) WHERE subject <> 0;
	CREATE INDEX event_index_account ON event_index (account_id, sequence) WHERE account_id <> 0;
	CREATE INDEX event_index_trace ON event_index (trace_id, sequence) WHERE trace_id <> 0;
	CREATE TABLE index_state (next_sequence INTEGER NOT NULL CHECK (next_sequence >= 0)) STRICT;
	INSERT INTO index_state (next_sequence) VALUES (0);`,
	// Version 4: the Merkle tree's node hashes in the store (full tiles of
	// the C2SP tlog-tiles layout, written with the events that complete
	// them) and the compact range a checkpoint may carry, so that start-up
	// does not re-hash the log. A store migrated from version 3 has no
	// tiles yet: the Log rebuilds them once from the events.
	`CREATE TABLE tiles (
		level  INTEGER NOT NULL CHECK (level >= 0),
		idx    INTEGER NOT NULL CHECK (idx >= 0),
		hashes BLOB    NOT NULL CHECK (length(hashes) = 8192),
		PRIMARY KEY (level, idx)
	) STRICT, WITHOUT ROWID;
	ALTER TABLE checkpoints ADD COLUMN compact_range BLOB;`,
	// Version 5: how much of the log was archived and pruned (one row).
	`CREATE TABLE pruned (
		end_size INTEGER NOT NULL CHECK (end_size >= 0),
		base     INTEGER NOT NULL CHECK (base >= 0 AND base <= end_size)
	) STRICT;
	INSERT INTO pruned (end_size, base) VALUES (0, 0);`,
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
	if version == len(migrations) {
		return nil // nothing to write: an up-to-date file is left alone
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

// insertRows is how many rows one INSERT statement carries; multi-row
// statements cut the per-statement overhead that dominates small rows.
const insertRows = 64

// insertStmt returns the prepared INSERT of n rows into table, preparing
// it once.
func (s *Store) insertStmt(ctx context.Context, db *sql.DB, table, columns string, ncol, n int) (*sql.Stmt, error) {
	key := fmt.Sprintf("%s/%d", table, n)
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.inserts[key]; ok {
		return st, nil
	}
	row := "(" + placeholders(ncol) + ")"
	st, err := db.PrepareContext(ctx, "INSERT INTO "+table+" ("+columns+") VALUES "+strings.TrimSuffix(strings.Repeat(row+", ", n), ", "))
	if err != nil {
		return nil, err
	}
	s.inserts[key] = st
	return st, nil
}

// Append implements audit.Store: one transaction, committed with an fsync
// (synchronous=FULL) before it returns.
func (s *Store) Append(ctx context.Context, b audit.Batch) error {
	if s.ro {
		return errReadOnly
	}
	if len(b.Records) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("append: begin: %w", err)
	}
	defer tx.Rollback()
	var head, last uint64
	if err := tx.StmtContext(ctx, s.heads).QueryRowContext(ctx).Scan(&head, &last); err != nil {
		return fmt.Errorf("append: read head: %w", err)
	}
	for i, r := range b.Records {
		if want := head + uint64(i); r.Event.GetSequence() != want || want > math.MaxInt64 {
			return fmt.Errorf("append event %d: sequence %d, want %d: %w", i, r.Event.GetSequence(), want, audit.ErrSequence)
		}
	}
	newHead := head + uint64(len(b.Records))
	if cp := b.Checkpoint; cp != nil && (cp.Size <= last || cp.Size > newHead) {
		return fmt.Errorf("append: checkpoint of size %d (last %d, head %d): %w", cp.Size, last, newHead, audit.ErrSequence)
	}
	args := make([]any, 0, 4*insertRows)
	for start := 0; start < len(b.Records); start += insertRows {
		chunk := b.Records[start:min(len(b.Records), start+insertRows)]
		args = args[:0]
		for _, r := range chunk {
			k := audit.KeyOf(r.Event)
			args = append(args, int64(r.Event.GetSequence()), k.TimeUnixNano, k.ID, r.Data)
		}
		stmt, err := s.insertStmt(ctx, s.db, "events", "sequence, time_unix_nano, id, data", 4, len(chunk))
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
	if cp := b.Checkpoint; cp != nil {
		if _, err := tx.StmtContext(ctx, s.addCP).ExecContext(ctx, int64(cp.Size), audit.UnixNano(cp.Time), cp.Note, encodeRange(cp.CompactRange)); err != nil {
			return fmt.Errorf("append: checkpoint: %w", err)
		}
	}
	if err := insertTiles(ctx, tx, b.Tiles); err != nil {
		return fmt.Errorf("append: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("append: commit: %w", err)
	}
	return nil
}

// querier is what Store and a View transaction both run reads on.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// reader implements audit.Reader over a querier.
type reader struct {
	q          querier
	v3, v4, v5 bool
}

// Head implements audit.Reader.
func (s *Store) Head(ctx context.Context) (uint64, error) { return s.reader().Head(ctx) }

func (s *Store) reader() reader { return reader{q: s.rdb, v3: s.v3, v4: s.v4, v5: s.v5} }

func (r reader) Head(ctx context.Context) (uint64, error) {
	var head uint64
	if err := r.q.QueryRowContext(ctx, "SELECT COALESCE(MAX(sequence) + 1, 0) FROM events").Scan(&head); err != nil {
		return 0, fmt.Errorf("read head: %w", err)
	}
	return head, nil
}

// rowColumns selects an event row and its index row (NULLs when none).
func (r reader) rowColumns() string {
	if !r.v3 {
		return "e.sequence, e.time_unix_nano, e.id, e.data, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM events e"
	}
	return "e.sequence, e.time_unix_nano, e.id, e.data, i.sequence, i.kind, i.decision, i.principal, i.subject, i.account_id, i.role_name, i.data_class, i.trace_id FROM events e LEFT JOIN event_index i ON i.sequence = e.sequence"
}

// ReadRows implements audit.Reader.
func (s *Store) ReadRows(ctx context.Context, from uint64, limit int) ([]audit.Row, error) {
	return s.reader().ReadRows(ctx, from, limit)
}

func (r reader) ReadRows(ctx context.Context, from uint64, limit int) ([]audit.Row, error) {
	if limit <= 0 || from > math.MaxInt64 {
		return nil, nil
	}
	rows, err := r.rows(ctx, "SELECT "+r.rowColumns()+" WHERE e.sequence >= ? ORDER BY e.sequence LIMIT ?", int64(from), limit)
	if err != nil {
		return nil, fmt.Errorf("read rows from %d: %w", from, err)
	}
	return rows, nil
}

// rows runs a SELECT of rowColumns and scans the rows.
func (r reader) rows(ctx context.Context, q string, args ...any) ([]audit.Row, error) {
	rs, err := r.q.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []audit.Row
	for rs.Next() {
		var (
			seq, t int64
			id     string
			data   []byte
			ix     [9]sql.NullInt64
		)
		if err := rs.Scan(&seq, &t, &id, &data, &ix[0], &ix[1], &ix[2], &ix[3], &ix[4], &ix[5], &ix[6], &ix[7], &ix[8]); err != nil {
			return nil, err
		}
		row := audit.Row{Sequence: uint64(seq), Data: data, Key: audit.EventKey{TimeUnixNano: t, ID: id}}
		if ix[0].Valid {
			row.Index = &audit.IndexRow{
				Sequence: uint64(ix[0].Int64), Kind: int32(ix[1].Int64), Decision: int32(ix[2].Int64),
				Principal: ix[3].Int64, Subject: ix[4].Int64, AccountID: ix[5].Int64,
				RoleName: ix[6].Int64, DataClass: ix[7].Int64, TraceID: ix[8].Int64,
			}
		}
		out = append(out, row)
	}
	return out, rs.Err()
}

// IndexedUpTo implements audit.Reader.
func (s *Store) IndexedUpTo(ctx context.Context) (uint64, error) { return s.reader().IndexedUpTo(ctx) }

func (r reader) IndexedUpTo(ctx context.Context) (uint64, error) {
	if !r.v3 {
		return 0, nil
	}
	var n uint64
	if err := r.q.QueryRowContext(ctx, "SELECT next_sequence FROM index_state").Scan(&n); err != nil {
		return 0, fmt.Errorf("read index watermark: %w", err)
	}
	return n, nil
}

// Lookup implements audit.Store.
func (s *Store) Lookup(ctx context.Context, keys []audit.EventKey) (map[audit.EventKey]*auditv1.Event, error) {
	found := make(map[audit.EventKey]*auditv1.Event)
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), lookupChunk)]
		keys = keys[len(chunk):]
		args := make([]any, 0, 2*len(chunk))
		for _, k := range chunk {
			args = append(args, k.TimeUnixNano, k.ID)
		}
		rs, err := s.rdb.QueryContext(ctx, "SELECT sequence, time_unix_nano, id, data FROM events WHERE (time_unix_nano, id) IN (VALUES "+
			strings.TrimSuffix(strings.Repeat("(?, ?), ", len(chunk)), ", ")+")", args...)
		if err != nil {
			return nil, fmt.Errorf("lookup keys: %w", err)
		}
		for rs.Next() {
			var (
				seq, t int64
				id     string
				data   []byte
			)
			if err := rs.Scan(&seq, &t, &id, &data); err != nil {
				rs.Close()
				return nil, fmt.Errorf("lookup keys: %w", err)
			}
			e := new(auditv1.Event)
			if err := proto.Unmarshal(data, e); err != nil {
				rs.Close()
				return nil, fmt.Errorf("lookup keys: decode stored event %d: %w", seq, err)
			}
			found[audit.EventKey{TimeUnixNano: t, ID: id}] = e
		}
		if err := rs.Close(); err != nil {
			return nil, fmt.Errorf("lookup keys: %w", err)
		}
	}
	return found, nil
}

// Read implements audit.Store.
func (s *Store) Read(ctx context.Context, from uint64, limit int) ([]*auditv1.Event, error) {
	if limit <= 0 || from > math.MaxInt64 {
		return nil, nil
	}
	rs, err := s.rdb.QueryContext(ctx, "SELECT sequence, data FROM events WHERE sequence >= ? ORDER BY sequence LIMIT ?", int64(from), limit)
	if err != nil {
		return nil, fmt.Errorf("read from %d: %w", from, err)
	}
	defer rs.Close()
	var events []*auditv1.Event
	for rs.Next() {
		var seq int64
		var data []byte
		if err := rs.Scan(&seq, &data); err != nil {
			return nil, fmt.Errorf("read from %d: %w", from, err)
		}
		e := new(auditv1.Event)
		if err := proto.Unmarshal(data, e); err != nil {
			return nil, fmt.Errorf("read: decode stored event %d: %w", seq, err)
		}
		events = append(events, e)
	}
	return events, rs.Err()
}

// Query implements audit.Store. Every filter value is a bound parameter;
// only the fixed column conditions and the placeholders are built here.
func (s *Store) Query(ctx context.Context, f audit.Filter, from, to uint64, limit int) ([]audit.Row, error) {
	if limit <= 0 || from >= to || from > math.MaxInt64 {
		return nil, nil
	}
	r := s.reader()
	to = min(to, math.MaxInt64)
	if f.Empty() || !r.v3 {
		if !f.Empty() {
			return nil, nil // an index this file lacks matches nothing
		}
		return r.rows(ctx, "SELECT "+r.rowColumns()+" WHERE e.sequence >= ? AND e.sequence < ? ORDER BY e.sequence LIMIT ?", int64(from), int64(to), limit)
	}
	where := []string{"i.sequence >= ?", "i.sequence < ?"}
	args := []any{int64(from), int64(to)}
	add := func(cond string, a ...any) {
		where = append(where, cond)
		args = append(args, a...)
	}
	if !f.Start.IsZero() {
		add("e.time_unix_nano >= ?", audit.UnixNano(f.Start))
	}
	if !f.End.IsZero() {
		add("e.time_unix_nano < ?", audit.UnixNano(f.End))
	}
	if len(f.Kinds) > 0 {
		kinds := make([]any, len(f.Kinds))
		for i, k := range f.Kinds {
			kinds[i] = int32(k)
		}
		add("i.kind IN ("+placeholders(len(kinds))+")", kinds...)
	}
	if f.Subject != "" {
		h := audit.ColumnHash(f.Subject)
		add("(i.principal = ? OR i.subject = ?)", h, h)
	}
	for _, c := range []struct{ col, v string }{{"account_id", f.AccountID}, {"role_name", f.RoleName}, {"data_class", f.DataClass}, {"trace_id", f.TraceID}} {
		if c.v != "" {
			add("i."+c.col+" = ?", audit.ColumnHash(c.v))
		}
	}
	if f.Decision != auditv1.Decision_DECISION_UNSPECIFIED {
		add("i.decision = ?", int32(f.Decision))
	}
	args = append(args, limit)
	return r.rows(ctx, `SELECT e.sequence, e.time_unix_nano, e.id, e.data, i.sequence, i.kind, i.decision, i.principal, i.subject, i.account_id, i.role_name, i.data_class, i.trace_id
		FROM event_index i JOIN events e ON e.sequence = i.sequence WHERE `+strings.Join(where, " AND ")+" ORDER BY i.sequence LIMIT ?", args...)
}

// AddIndex implements audit.Store, on the index connection: a short
// transaction that does not wait for an fsync (the next event commit's
// fsync makes it durable).
func (s *Store) AddIndex(ctx context.Context, from uint64, rows []audit.IndexRow) error {
	if s.ro {
		return errReadOnly
	}
	for i, r := range rows {
		if r.Sequence != from+uint64(i) {
			return fmt.Errorf("add index row %d: sequence %d, want %d: %w", i, r.Sequence, from+uint64(i), audit.ErrSequence)
		}
	}
	// Prepare before the transaction: the index handle has one connection.
	stmts := make([]*sql.Stmt, 0, len(rows)/insertRows+1)
	for start := 0; start < len(rows); start += insertRows {
		stmt, err := s.insertStmt(ctx, s.idx, "event_index", "sequence, kind, decision, principal, subject, account_id, role_name, data_class, trace_id", 9, min(insertRows, len(rows)-start))
		if err != nil {
			return fmt.Errorf("add index: prepare: %w", err)
		}
		stmts = append(stmts, stmt)
	}
	tx, err := s.idx.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("add index: begin: %w", err)
	}
	defer tx.Rollback()
	var mark, head uint64
	if err := tx.QueryRowContext(ctx, "SELECT next_sequence, (SELECT COALESCE(MAX(sequence) + 1, 0) FROM events) FROM index_state").Scan(&mark, &head); err != nil {
		return fmt.Errorf("add index: read watermark: %w", err)
	}
	end := from + uint64(len(rows))
	if from != mark || end > head || end > math.MaxInt64 {
		return fmt.Errorf("add index %d to %d (watermark %d, head %d): %w", from, end, mark, head, audit.ErrSequence)
	}
	if len(rows) == 0 {
		return nil
	}
	args := make([]any, 0, 9*insertRows)
	for start := 0; start < len(rows); start += insertRows {
		chunk := rows[start:min(len(rows), start+insertRows)]
		args = args[:0]
		for _, r := range chunk {
			args = append(args, int64(r.Sequence), r.Kind, r.Decision, r.Principal, r.Subject, r.AccountID, r.RoleName, r.DataClass, r.TraceID)
		}
		if _, err := tx.StmtContext(ctx, stmts[start/insertRows]).ExecContext(ctx, args...); err != nil {
			return fmt.Errorf("add index rows %d to %d: %w", chunk[0].Sequence, chunk[len(chunk)-1].Sequence, err)
		}
	}
	if _, err := tx.ExecContext(ctx, "UPDATE index_state SET next_sequence = ?", int64(end)); err != nil {
		return fmt.Errorf("add index: watermark: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("add index: commit: %w", err)
	}
	return nil
}

// Repair implements audit.Store.
func (s *Store) Repair(ctx context.Context, keys []audit.Row, indexFrom uint64) error {
	if s.ro {
		return errReadOnly
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("repair: begin: %w", err)
	}
	defer tx.Rollback()
	for _, k := range keys {
		if _, err := tx.ExecContext(ctx, "UPDATE events SET time_unix_nano = ?, id = ? WHERE sequence = ?", k.Key.TimeUnixNano, k.Key.ID, int64(k.Sequence)); err != nil {
			return fmt.Errorf("repair key of event %d: %w", k.Sequence, err)
		}
	}
	from := int64(min(indexFrom, math.MaxInt64))
	if _, err := tx.ExecContext(ctx, "DELETE FROM event_index WHERE sequence >= ?", from); err != nil {
		return fmt.Errorf("repair index: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE index_state SET next_sequence = MIN(next_sequence, ?)", from); err != nil {
		return fmt.Errorf("repair index: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("repair: commit: %w", err)
	}
	return nil
}

// AddCheckpoint implements audit.Store.
func (s *Store) AddCheckpoint(ctx context.Context, cp audit.StoredCheckpoint) error {
	if s.ro {
		return errReadOnly
	}
	if cp.Size == 0 || cp.Size > math.MaxInt64 {
		return fmt.Errorf("add checkpoint of size %d: %w", cp.Size, audit.ErrSequence)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("add checkpoint: begin: %w", err)
	}
	defer tx.Rollback()
	var head, last uint64
	if err := tx.StmtContext(ctx, s.heads).QueryRowContext(ctx).Scan(&head, &last); err != nil {
		return fmt.Errorf("add checkpoint: read sizes: %w", err)
	}
	if cp.Size <= last || cp.Size > head {
		return fmt.Errorf("add checkpoint of size %d (last %d, head %d): %w", cp.Size, last, head, audit.ErrSequence)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO checkpoints (tree_size, time_unix_nano, note, compact_range) VALUES (?, ?, ?, ?)",
		int64(cp.Size), audit.UnixNano(cp.Time), cp.Note, encodeRange(cp.CompactRange)); err != nil {
		return fmt.Errorf("add checkpoint: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("add checkpoint: commit: %w", err)
	}
	return nil
}

// Checkpoints implements audit.Reader.
func (s *Store) Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]audit.StoredCheckpoint, error) {
	return s.reader().Checkpoints(ctx, fromSize, limit)
}

func (r reader) Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]audit.StoredCheckpoint, error) {
	if limit <= 0 || fromSize > math.MaxInt64 {
		return nil, nil
	}
	rows, err := r.q.QueryContext(ctx, "SELECT "+r.checkpointColumns()+" FROM checkpoints WHERE tree_size >= ? ORDER BY tree_size LIMIT ?", int64(fromSize), limit)
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

// LatestCheckpoint implements audit.Reader.
func (s *Store) LatestCheckpoint(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	return s.reader().LatestCheckpoint(ctx)
}

func (r reader) LatestCheckpoint(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	row := r.q.QueryRowContext(ctx, "SELECT "+r.checkpointColumns()+" FROM checkpoints ORDER BY tree_size DESC LIMIT 1")
	cp, err := scanCheckpoint(row)
	if errors.Is(err, sql.ErrNoRows) {
		return audit.StoredCheckpoint{}, false, nil
	}
	if err != nil {
		return audit.StoredCheckpoint{}, false, fmt.Errorf("read latest checkpoint: %w", err)
	}
	return cp, true, nil
}

// checkpointColumns selects a checkpoint row (a NULL compact range from
// a file older than version 4).
func (r reader) checkpointColumns() string {
	if !r.v4 {
		return "tree_size, time_unix_nano, note, NULL"
	}
	return "tree_size, time_unix_nano, note, compact_range"
}

func scanCheckpoint(row interface{ Scan(...any) error }) (audit.StoredCheckpoint, error) {
	var size, ns int64
	var note, cr []byte
	if err := row.Scan(&size, &ns, &note, &cr); err != nil {
		return audit.StoredCheckpoint{}, err
	}
	cp := audit.StoredCheckpoint{Size: uint64(size), Time: time.Unix(0, ns).UTC(), Note: note}
	if cr != nil {
		var err error
		if cp.CompactRange, err = decodeRange(cr); err != nil {
			return audit.StoredCheckpoint{}, fmt.Errorf("checkpoint of size %d: %w", size, err)
		}
	}
	return cp, nil
}

// View implements audit.Store: f reads inside one read transaction, which
// in WAL mode sees the database as of its first read while writers go on.
func (s *Store) View(ctx context.Context, f func(audit.Reader) error) error {
	tx, err := s.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("view: begin: %w", err)
	}
	defer tx.Rollback()
	// The snapshot starts at the first read: take it now.
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM checkpoints WHERE tree_size < 0").Scan(&n); err != nil {
		return fmt.Errorf("view: %w", err)
	}
	return f(reader{q: tx, v3: s.v3, v4: s.v4, v5: s.v5})
}

func (s *Store) closeHandles() error {
	s.mu.Lock()
	for _, st := range s.inserts {
		st.Close()
	}
	for _, st := range []*sql.Stmt{s.heads, s.addCP} {
		if st != nil {
			st.Close()
		}
	}
	s.mu.Unlock()
	errs := []error{s.db.Close()}
	for _, db := range []*sql.DB{s.idx, s.rdb} {
		if db != nil && db != s.db {
			errs = append(errs, db.Close())
		}
	}
	return errors.Join(errs...)
}

// Close implements audit.Store.
func (s *Store) Close() error {
	// The whole close runs inside the Once: a second caller (the server's
	// Stop racing its Serve) waits until the database file is released,
	// instead of returning while connections are still closing.
	s.closeOnce.Do(func() {
		if !s.ro {
			close(s.stop)
		}
		<-s.done
		if err := s.closeHandles(); err != nil {
			s.closeErr = fmt.Errorf("close audit store %s: %w", s.path, err)
		}
		if s.tmp != "" {
			os.RemoveAll(s.tmp)
		}
	})
	return s.closeErr
}

// placeholders returns "?, ?, ..." with n marks.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}
