// Package postgres is the scale-out audit.Store: events and checkpoints in
// PostgreSQL (github.com/jackc/pgx/v5), written by one sequencer at a time
// and read by every replica. The layout is the one audit.Store describes
// (per event the leaf and its key; one checkpoint per commit batch in the
// same transaction; the query index written off the commit path, by any
// replica's indexer, without waiting for a synchronous commit).
//
// Every Store competes for a PostgreSQL session advisory lock on a
// dedicated connection. The holder is the sequencer: its appends and
// checkpoints run on that very connection, so if the connection (and with
// it the lock) is lost, its writes fail instead of racing a new sequencer
// (fencing). The others serve reads from a pool and answer Append with
// ErrNotSequencer until the lock frees, then take over. PostgreSQL commits
// are durable (synchronous_commit on) before Append returns.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/credmatrix/credmatrix/services/audit"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// ErrNotSequencer means this replica does not hold the sequencer lock: it
// serves reads only. Log reports it as Unavailable; the caller retries
// against the sequencer.
var ErrNotSequencer = errors.New("audit store: this replica is not the sequencer")

// lockKey is the advisory lock of the audit sequencer (one log per
// database): the first 8 bytes of SHA-256("credmatrix audit sequencer").
const lockKey int64 = 0x2c9a4f0e61d3b857

// retryLead is how long the lead loop waits after a failed attempt.
const retryLead = time.Second

// Store is an audit.Store in PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
	dsn  string

	mu     sync.Mutex
	writer *pgx.Conn // holds the advisory lock; nil when not the sequencer
	led    chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

var _ audit.Store = (*Store)(nil)

// Open connects to dsn, migrates the schema and starts competing for the
// sequencer lock in the background (IsSequencer and Sequencing tell the
// outcome).
func Open(ctx context.Context, dsn string) (*Store, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("open audit store: %w", err)
	}
	s := &Store{pool: pool, dsn: dsn, led: make(chan struct{}), done: make(chan struct{})}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open audit store: %w", err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.lead(lctx)
	return s, nil
}

// OpenReadOnly connects to dsn for reading the log as evidence: every
// session is read-only (default_transaction_read_only), no migration
// runs and the store does not compete for the sequencer lock, so it
// changes nothing in the database. Every writing method fails.
func OpenReadOnly(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("open audit store read-only: %w", err)
	}
	cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open audit store read-only: %w", err)
	}
	var version int
	if err := pool.QueryRow(ctx, "SELECT version FROM audit_schema_version").Scan(&version); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open audit store read-only: read schema version: %w", err)
	}
	if version != len(migrations) {
		pool.Close()
		return nil, fmt.Errorf("open audit store read-only: schema version %d (this binary reads %d)", version, len(migrations))
	}
	s := &Store{pool: pool, dsn: dsn, led: make(chan struct{}), done: make(chan struct{}), cancel: func() {}}
	close(s.done)
	return s, nil
}

// migrations are applied in order under an advisory lock; the
// schema_version table records how many have run.
var migrations = []string{
	`CREATE TABLE audit_events (
		sequence       BIGINT PRIMARY KEY CHECK (sequence >= 0),
		id             TEXT   NOT NULL UNIQUE,
		time_unix_nano BIGINT NOT NULL,
		kind           INT    NOT NULL,
		decision       INT    NOT NULL,
		principal      TEXT   NOT NULL,
		subject        TEXT   NOT NULL,
		account_id     TEXT   NOT NULL,
		role_name      TEXT   NOT NULL,
		data_class     TEXT   NOT NULL,
		trace_id       TEXT   NOT NULL,
		data           BYTEA  NOT NULL
	);
	CREATE INDEX audit_events_time ON audit_events (time_unix_nano);
	CREATE INDEX audit_events_kind ON audit_events (kind, sequence);
	CREATE INDEX audit_events_principal ON audit_events (principal) WHERE principal <> '';
	CREATE INDEX audit_events_subject ON audit_events (subject) WHERE subject <> '';
	CREATE INDEX audit_events_account ON audit_events (account_id) WHERE account_id <> '';
	CREATE INDEX audit_events_trace ON audit_events (trace_id) WHERE trace_id <> '';
	CREATE TABLE audit_checkpoints (
		tree_size      BIGINT PRIMARY KEY CHECK (tree_size > 0),
		time_unix_nano BIGINT NOT NULL,
		note           BYTEA  NOT NULL
	);`,
	// Version 2: per event only the leaf and its key on the commit path;
	// the query index apart, derived from the leaf, filled off the commit
	// path (the indexer rebuilds it for events stored before). Filter
	// strings are indexed as audit.ColumnHash values.
	`CREATE TABLE audit_events_v2 (
		sequence       BIGINT PRIMARY KEY CHECK (sequence >= 0),
		time_unix_nano BIGINT NOT NULL,
		id             TEXT   NOT NULL,
		data           BYTEA  NOT NULL
	);
	INSERT INTO audit_events_v2 (sequence, time_unix_nano, id, data) SELECT sequence, time_unix_nano, id, data FROM audit_events;
	DROP TABLE audit_events;
	ALTER TABLE audit_events_v2 RENAME TO audit_events;
	ALTER INDEX audit_events_v2_pkey RENAME TO audit_events_pkey;
	CREATE UNIQUE INDEX audit_events_key ON audit_events (time_unix_nano, id);
	CREATE TABLE audit_event_index (
		sequence   BIGINT PRIMARY KEY CHECK (sequence >= 0),
		kind       INT    NOT NULL,
		decision   INT    NOT NULL,
		principal  BIGINT NOT NULL,
		subject    BIGINT NOT NULL,
		account_id BIGINT NOT NULL,
		role_name  BIGINT NOT NULL,
		data_class BIGINT NOT NULL,
		trace_id   BIGINT NOT NULL
	);
	CREATE INDEX audit_event_index_kind ON audit_event_index (kind, sequence);
	CREATE INDEX audit_event_index_principal ON audit_event_index (principal, sequence) WHERE principal <> 0;
	CREATE INDEX audit_event_index_subject ON audit_event_index (subject, sequence) WHERE subject <> 0;
	CREATE INDEX audit_event_index_account ON audit_event_index (account_id, sequence) WHERE account_id <> 0;
	CREATE INDEX audit_event_index_trace ON audit_event_index (trace_id, sequence) WHERE trace_id <> 0;
	CREATE TABLE audit_index_state (next_sequence BIGINT NOT NULL CHECK (next_sequence >= 0));
	INSERT INTO audit_index_state (next_sequence) VALUES (0);`,
	// Version 3: the Merkle tree's node hashes in the store (full tiles of
	// the C2SP tlog-tiles layout, written with the events that complete
	// them) and the compact range a checkpoint may carry, so that start-up
	// does not re-hash the log. A store migrated from version 2 has no
	// tiles yet: the Log rebuilds them once from the events. Tiles are
	// stored uncompressed (random hashes do not compress).
	`CREATE TABLE audit_tiles (
		level  BIGINT NOT NULL CHECK (level >= 0),
		idx    BIGINT NOT NULL CHECK (idx >= 0),
		hashes BYTEA  NOT NULL CHECK (length(hashes) = 8192),
		PRIMARY KEY (level, idx)
	);
	ALTER TABLE audit_tiles ALTER COLUMN hashes SET STORAGE EXTERNAL;
	ALTER TABLE audit_checkpoints ADD COLUMN compact_range BYTEA;`,
	// Version 4: how much of the log was archived and pruned (one row).
	`CREATE TABLE audit_pruned (
		end_size BIGINT NOT NULL CHECK (end_size >= 0),
		base     BIGINT NOT NULL CHECK (base >= 0 AND base <= end_size)
	);
	INSERT INTO audit_pruned (end_size, base) VALUES (0, 0);`,
}

func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	// Serialise migrations across replicas starting together.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey+1); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey+1)
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS audit_schema_version (version INT NOT NULL)"); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var version int
	err = conn.QueryRow(ctx, "SELECT version FROM audit_schema_version").Scan(&version)
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err := conn.Exec(ctx, "INSERT INTO audit_schema_version VALUES (0)"); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("migrate: schema version %d is newer than this binary's %d", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if _, err := tx.Exec(ctx, migrations[i]); err != nil {
			tx.Rollback(ctx)
			return fmt.Errorf("migrate to schema version %d: %w", i+1, err)
		}
		if _, err := tx.Exec(ctx, "UPDATE audit_schema_version SET version = $1", i+1); err != nil {
			tx.Rollback(ctx)
			return fmt.Errorf("migrate: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	return nil
}

// lead competes for the sequencer lock until ctx ends: it connects,
// blocks in pg_advisory_lock, and once it holds the lock keeps the
// connection as the writer until the connection fails.
func (s *Store) lead(ctx context.Context) {
	defer close(s.done)
	for ctx.Err() == nil {
		conn, err := pgx.Connect(ctx, s.dsn)
		if err == nil {
			_, err = conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey)
			if err == nil {
				s.mu.Lock()
				s.writer = conn
				close(s.led)
				s.mu.Unlock()
				// Hold the lock until the connection dies or we stop.
				for ctx.Err() == nil {
					if err := s.ping(ctx, conn); err != nil {
						break
					}
					select {
					case <-ctx.Done():
					case <-time.After(retryLead):
					}
				}
				s.mu.Lock()
				s.writer = nil
				s.led = make(chan struct{})
				s.mu.Unlock()
			}
			conn.Close(context.Background())
		}
		select {
		case <-ctx.Done():
		case <-time.After(retryLead):
		}
	}
}

func (s *Store) ping(ctx context.Context, conn *pgx.Conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return conn.Ping(ctx)
}

// IsSequencer reports whether this replica holds the sequencer lock now.
func (s *Store) IsSequencer() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writer != nil
}

// Sequencing returns a channel closed when this replica becomes the
// sequencer (already closed if it is).
func (s *Store) Sequencing() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.led
}

// withWriter runs f on the lock-holding connection, or fails with
// ErrNotSequencer (marked audit.NotWriter: nothing was written). The mutex
// serialises use of the single connection.
func (s *Store) withWriter(f func(conn *pgx.Conn) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writer == nil {
		return audit.NotWriter(ErrNotSequencer)
	}
	return f(s.writer)
}

// Append implements audit.Store: one transaction on the sequencer's
// connection holding the batch's events and its checkpoint.
func (s *Store) Append(ctx context.Context, b audit.Batch) error {
	if len(b.Records) == 0 {
		return nil
	}
	n := len(b.Records)
	seqs, times, ids, data := make([]int64, n), make([]int64, n), make([]string, n), make([][]byte, n)
	for i, r := range b.Records {
		k := audit.KeyOf(r.Event)
		seqs[i], times[i], ids[i], data[i] = int64(r.Event.GetSequence()), k.TimeUnixNano, k.ID, r.Data
	}
	return s.withWriter(func(conn *pgx.Conn) error {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("append: begin: %w", err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		var head, last int64
		if err := tx.QueryRow(ctx, headsSQL).Scan(&head, &last); err != nil {
			return fmt.Errorf("append: read head: %w", err)
		}
		for i, r := range b.Records {
			if want := uint64(head) + uint64(i); r.Event.GetSequence() != want || want > math.MaxInt64 {
				return fmt.Errorf("append event %d: sequence %d, want %d: %w", i, r.Event.GetSequence(), want, audit.ErrSequence)
			}
		}
		newHead := uint64(head) + uint64(n)
		if cp := b.Checkpoint; cp != nil && (cp.Size <= uint64(last) || cp.Size > newHead) {
			return fmt.Errorf("append: checkpoint of size %d (last %d, head %d): %w", cp.Size, last, newHead, audit.ErrSequence)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO audit_events (sequence, time_unix_nano, id, data)
			SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[])`, seqs, times, ids, data); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "23505" {
				return fmt.Errorf("append: %w", audit.ErrDuplicateID)
			}
			return fmt.Errorf("append: %w", err)
		}
		if cp := b.Checkpoint; cp != nil {
			if _, err := tx.Exec(ctx, "INSERT INTO audit_checkpoints (tree_size, time_unix_nano, note, compact_range) VALUES ($1, $2, $3, $4)", int64(cp.Size), audit.UnixNano(cp.Time), cp.Note, encodeRange(cp.CompactRange)); err != nil {
				return fmt.Errorf("append: checkpoint: %w", err)
			}
		}
		if err := insertTiles(ctx, tx, b.Tiles); err != nil {
			return fmt.Errorf("append: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("append: commit: %w", err)
		}
		return nil
	})
}

const headsSQL = `SELECT COALESCE((SELECT MAX(sequence) + 1 FROM audit_events), 0), COALESCE((SELECT MAX(tree_size) FROM audit_checkpoints), 0)`

// querier is what the pool and a View transaction both run reads on.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// reader implements audit.Reader over a querier.
type reader struct{ q querier }

func (s *Store) reader() reader { return reader{q: s.pool} }

// Head implements audit.Reader.
func (s *Store) Head(ctx context.Context) (uint64, error) { return s.reader().Head(ctx) }

func (r reader) Head(ctx context.Context) (uint64, error) {
	var head int64
	if err := r.q.QueryRow(ctx, "SELECT COALESCE(MAX(sequence) + 1, 0) FROM audit_events").Scan(&head); err != nil {
		return 0, fmt.Errorf("read head: %w", err)
	}
	return uint64(head), nil
}

const rowColumns = `e.sequence, e.time_unix_nano, e.id, e.data, i.sequence, i.kind, i.decision, i.principal, i.subject, i.account_id, i.role_name, i.data_class, i.trace_id`

// ReadRows implements audit.Reader.
func (s *Store) ReadRows(ctx context.Context, from uint64, limit int) ([]audit.Row, error) {
	return s.reader().ReadRows(ctx, from, limit)
}

func (r reader) ReadRows(ctx context.Context, from uint64, limit int) ([]audit.Row, error) {
	if limit <= 0 || from > math.MaxInt64 {
		return nil, nil
	}
	rows, err := r.rows(ctx, "SELECT "+rowColumns+" FROM audit_events e LEFT JOIN audit_event_index i ON i.sequence = e.sequence WHERE e.sequence >= $1 ORDER BY e.sequence LIMIT $2", int64(from), limit)
	if err != nil {
		return nil, fmt.Errorf("read rows from %d: %w", from, err)
	}
	return rows, nil
}

func (r reader) rows(ctx context.Context, q string, args ...any) ([]audit.Row, error) {
	rs, err := r.q.Query(ctx, q, args...)
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
			ix     [9]*int64
		)
		if err := rs.Scan(&seq, &t, &id, &data, &ix[0], &ix[1], &ix[2], &ix[3], &ix[4], &ix[5], &ix[6], &ix[7], &ix[8]); err != nil {
			return nil, err
		}
		row := audit.Row{Sequence: uint64(seq), Data: data, Key: audit.EventKey{TimeUnixNano: t, ID: id}}
		if ix[0] != nil {
			v := func(p *int64) int64 {
				if p == nil {
					return 0
				}
				return *p
			}
			row.Index = &audit.IndexRow{
				Sequence: uint64(*ix[0]), Kind: int32(v(ix[1])), Decision: int32(v(ix[2])),
				Principal: v(ix[3]), Subject: v(ix[4]), AccountID: v(ix[5]),
				RoleName: v(ix[6]), DataClass: v(ix[7]), TraceID: v(ix[8]),
			}
		}
		out = append(out, row)
	}
	return out, rs.Err()
}

// IndexedUpTo implements audit.Reader.
func (s *Store) IndexedUpTo(ctx context.Context) (uint64, error) { return s.reader().IndexedUpTo(ctx) }

func (r reader) IndexedUpTo(ctx context.Context) (uint64, error) {
	var n int64
	if err := r.q.QueryRow(ctx, "SELECT next_sequence FROM audit_index_state").Scan(&n); err != nil {
		return 0, fmt.Errorf("read index watermark: %w", err)
	}
	return uint64(n), nil
}

// Lookup implements audit.Store.
func (s *Store) Lookup(ctx context.Context, keys []audit.EventKey) (map[audit.EventKey]*auditv1.Event, error) {
	found := make(map[audit.EventKey]*auditv1.Event)
	if len(keys) == 0 {
		return found, nil
	}
	times, ids := make([]int64, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		times[i], ids[i] = k.TimeUnixNano, k.ID
	}
	rs, err := s.pool.Query(ctx, `SELECT e.sequence, e.time_unix_nano, e.id, e.data FROM audit_events e
		JOIN unnest($1::bigint[], $2::text[]) AS k(t, id) ON e.time_unix_nano = k.t AND e.id = k.id`, times, ids)
	if err != nil {
		return nil, fmt.Errorf("lookup keys: %w", err)
	}
	defer rs.Close()
	for rs.Next() {
		var (
			seq, t int64
			id     string
			data   []byte
		)
		if err := rs.Scan(&seq, &t, &id, &data); err != nil {
			return nil, fmt.Errorf("lookup keys: %w", err)
		}
		e := new(auditv1.Event)
		if err := proto.Unmarshal(data, e); err != nil {
			return nil, fmt.Errorf("lookup keys: decode stored event %d: %w", seq, err)
		}
		found[audit.EventKey{TimeUnixNano: t, ID: id}] = e
	}
	return found, rs.Err()
}

// Read implements audit.Store.
func (s *Store) Read(ctx context.Context, from uint64, limit int) ([]*auditv1.Event, error) {
	if limit <= 0 || from > math.MaxInt64 {
		return nil, nil
	}
	rs, err := s.pool.Query(ctx, "SELECT sequence, data FROM audit_events WHERE sequence >= $1 ORDER BY sequence LIMIT $2", int64(from), limit)
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

// Query implements audit.Store. Every filter value is a bound parameter.
func (s *Store) Query(ctx context.Context, f audit.Filter, from, to uint64, limit int) ([]audit.Row, error) {
	if limit <= 0 || from >= to || from > math.MaxInt64 {
		return nil, nil
	}
	to = min(to, math.MaxInt64)
	r := s.reader()
	if f.Empty() {
		return r.rows(ctx, "SELECT "+rowColumns+" FROM audit_events e LEFT JOIN audit_event_index i ON i.sequence = e.sequence WHERE e.sequence >= $1 AND e.sequence < $2 ORDER BY e.sequence LIMIT $3", int64(from), int64(to), limit)
	}
	var where []string
	var args []any
	add := func(cond string, a ...any) {
		for _, v := range a {
			args = append(args, v)
			cond = strings.Replace(cond, "?", fmt.Sprintf("$%d", len(args)), 1)
		}
		where = append(where, cond)
	}
	add("i.sequence >= ?", int64(from))
	add("i.sequence < ?", int64(to))
	if !f.Start.IsZero() {
		add("e.time_unix_nano >= ?", audit.UnixNano(f.Start))
	}
	if !f.End.IsZero() {
		add("e.time_unix_nano < ?", audit.UnixNano(f.End))
	}
	if len(f.Kinds) > 0 {
		kinds := make([]int32, len(f.Kinds))
		for i, k := range f.Kinds {
			kinds[i] = int32(k)
		}
		add("i.kind = ANY(?)", kinds)
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
	q := fmt.Sprintf("SELECT %s FROM audit_event_index i JOIN audit_events e ON e.sequence = i.sequence WHERE %s ORDER BY i.sequence LIMIT $%d", rowColumns, strings.Join(where, " AND "), len(args))
	return r.rows(ctx, q, args...)
}

// AddIndex implements audit.Store, on a pooled connection (any replica
// may index; the row lock on the watermark serialises indexers) and
// without waiting for a synchronous commit: the rows are derived data.
func (s *Store) AddIndex(ctx context.Context, from uint64, rows []audit.IndexRow) error {
	n := len(rows)
	cols := make([][]int64, 9)
	for c := range cols {
		cols[c] = make([]int64, n)
	}
	for i, r := range rows {
		if r.Sequence != from+uint64(i) {
			return fmt.Errorf("add index row %d: sequence %d, want %d: %w", i, r.Sequence, from+uint64(i), audit.ErrSequence)
		}
		for c, v := range []int64{int64(r.Sequence), int64(r.Kind), int64(r.Decision), r.Principal, r.Subject, r.AccountID, r.RoleName, r.DataClass, r.TraceID} {
			cols[c][i] = v
		}
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("add index: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
		return fmt.Errorf("add index: %w", err)
	}
	var mark, head int64
	if err := tx.QueryRow(ctx, "SELECT next_sequence, (SELECT COALESCE(MAX(sequence) + 1, 0) FROM audit_events) FROM audit_index_state FOR UPDATE").Scan(&mark, &head); err != nil {
		return fmt.Errorf("add index: read watermark: %w", err)
	}
	end := from + uint64(n)
	if from != uint64(mark) || end > uint64(head) {
		return fmt.Errorf("add index %d to %d (watermark %d, head %d): %w", from, end, mark, head, audit.ErrSequence)
	}
	if n == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO audit_event_index (sequence, kind, decision, principal, subject, account_id, role_name, data_class, trace_id)
		SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])`,
		cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7], cols[8]); err != nil {
		return fmt.Errorf("add index rows %d to %d: %w", from, end-1, err)
	}
	if _, err := tx.Exec(ctx, "UPDATE audit_index_state SET next_sequence = $1", int64(end)); err != nil {
		return fmt.Errorf("add index: watermark: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("add index: commit: %w", err)
	}
	return nil
}

// Repair implements audit.Store.
func (s *Store) Repair(ctx context.Context, keys []audit.Row, indexFrom uint64) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("repair: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	for _, k := range keys {
		if _, err := tx.Exec(ctx, "UPDATE audit_events SET time_unix_nano = $1, id = $2 WHERE sequence = $3", k.Key.TimeUnixNano, k.Key.ID, int64(k.Sequence)); err != nil {
			return fmt.Errorf("repair key of event %d: %w", k.Sequence, err)
		}
	}
	from := int64(min(indexFrom, math.MaxInt64))
	if _, err := tx.Exec(ctx, "DELETE FROM audit_event_index WHERE sequence >= $1", from); err != nil {
		return fmt.Errorf("repair index: %w", err)
	}
	if _, err := tx.Exec(ctx, "UPDATE audit_index_state SET next_sequence = LEAST(next_sequence, $1)", from); err != nil {
		return fmt.Errorf("repair index: %w", err)
	}
	return tx.Commit(ctx)
}

// AddCheckpoint implements audit.Store, on the sequencer's connection.
func (s *Store) AddCheckpoint(ctx context.Context, cp audit.StoredCheckpoint) error {
	if cp.Size == 0 || cp.Size > math.MaxInt64 {
		return fmt.Errorf("add checkpoint of size %d: %w", cp.Size, audit.ErrSequence)
	}
	return s.withWriter(func(conn *pgx.Conn) error {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("add checkpoint: %w", err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		var head, last int64
		if err := tx.QueryRow(ctx, headsSQL).Scan(&head, &last); err != nil {
			return fmt.Errorf("add checkpoint: read sizes: %w", err)
		}
		if int64(cp.Size) <= last || int64(cp.Size) > head {
			return fmt.Errorf("add checkpoint of size %d (last %d, head %d): %w", cp.Size, last, head, audit.ErrSequence)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO audit_checkpoints (tree_size, time_unix_nano, note, compact_range) VALUES ($1, $2, $3, $4)", int64(cp.Size), audit.UnixNano(cp.Time), cp.Note, encodeRange(cp.CompactRange)); err != nil {
			return fmt.Errorf("add checkpoint: %w", err)
		}
		return tx.Commit(ctx)
	})
}

// Checkpoints implements audit.Reader.
func (s *Store) Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]audit.StoredCheckpoint, error) {
	return s.reader().Checkpoints(ctx, fromSize, limit)
}

func (r reader) Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]audit.StoredCheckpoint, error) {
	if limit <= 0 || fromSize > math.MaxInt64 {
		return nil, nil
	}
	rows, err := r.q.Query(ctx, "SELECT tree_size, time_unix_nano, note, compact_range FROM audit_checkpoints WHERE tree_size >= $1 ORDER BY tree_size LIMIT $2", int64(fromSize), limit)
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

func scanCheckpoint(row pgx.Row) (audit.StoredCheckpoint, error) {
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

// LatestCheckpoint implements audit.Reader.
func (s *Store) LatestCheckpoint(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	return s.reader().LatestCheckpoint(ctx)
}

func (r reader) LatestCheckpoint(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	cp, err := scanCheckpoint(r.q.QueryRow(ctx, "SELECT tree_size, time_unix_nano, note, compact_range FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1"))
	if errors.Is(err, pgx.ErrNoRows) {
		return audit.StoredCheckpoint{}, false, nil
	}
	if err != nil {
		return audit.StoredCheckpoint{}, false, fmt.Errorf("read latest checkpoint: %w", err)
	}
	return cp, true, nil
}

// View implements audit.Store: f reads inside one REPEATABLE READ,
// read-only transaction, so events, checkpoints and the watermark come
// from one snapshot while the sequencer appends.
func (s *Store) View(ctx context.Context, f func(audit.Reader) error) error {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("view: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	return f(reader{q: tx})
}

// Close stops competing for the lock (releasing it if held, by closing
// its connection) and closes the pool.
func (s *Store) Close() error {
	s.cancel()
	<-s.done
	s.pool.Close()
	return nil
}
