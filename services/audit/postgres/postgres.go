// Package postgres is the scale-out audit.Store: events and checkpoints in
// PostgreSQL (github.com/jackc/pgx/v5), written by one sequencer at a time
// and read by every replica.
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

	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
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

var (
	_ audit.Store          = (*Store)(nil)
	_ audit.RecordAppender = (*Store)(nil)
)

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
// ErrNotSequencer. The mutex serialises use of the single connection.
func (s *Store) withWriter(f func(conn *pgx.Conn) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writer == nil {
		return ErrNotSequencer
	}
	return f(s.writer)
}

// Append implements audit.Store.
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

var columns = []string{"sequence", "id", "time_unix_nano", "kind", "decision", "principal", "subject", "account_id", "role_name", "data_class", "trace_id", "data"}

// AppendRecords implements audit.RecordAppender: one transaction on the
// sequencer's connection, rows sent with COPY.
func (s *Store) AppendRecords(ctx context.Context, records []audit.Record) error {
	if len(records) == 0 {
		return nil
	}
	return s.withWriter(func(conn *pgx.Conn) error {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("append: begin: %w", err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		var head int64
		if err := tx.QueryRow(ctx, "SELECT COALESCE(MAX(sequence) + 1, 0) FROM audit_events").Scan(&head); err != nil {
			return fmt.Errorf("append: read head: %w", err)
		}
		rows := make([][]any, len(records))
		for i, r := range records {
			e := r.Event
			if want := uint64(head) + uint64(i); e.GetSequence() != want || want > math.MaxInt64 {
				return fmt.Errorf("append event %d: sequence %d, want %d: %w", i, e.GetSequence(), want, audit.ErrSequence)
			}
			ix := audit.IndexOf(e)
			rows[i] = []any{int64(e.GetSequence()), e.GetId(), e.GetTime().AsTime().UnixNano(), int32(e.GetKind()), int32(e.GetDecision()),
				ix.Principal, ix.Subject, ix.AccountID, ix.RoleName, ix.DataClass, e.GetTraceId(), r.Data}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_events"}, columns, pgx.CopyFromRows(rows)); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "23505" {
				return fmt.Errorf("append: %w", audit.ErrDuplicateID)
			}
			return fmt.Errorf("append: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("append: commit: %w", err)
		}
		return nil
	})
}

// Head implements audit.Store.
func (s *Store) Head(ctx context.Context) (uint64, error) {
	var head int64
	if err := s.pool.QueryRow(ctx, "SELECT COALESCE(MAX(sequence) + 1, 0) FROM audit_events").Scan(&head); err != nil {
		return 0, fmt.Errorf("read head: %w", err)
	}
	return uint64(head), nil
}

// Lookup implements audit.Store.
func (s *Store) Lookup(ctx context.Context, ids []string) (map[string]*auditv1.Event, error) {
	found := make(map[string]*auditv1.Event)
	events, err := s.query(ctx, "SELECT data FROM audit_events WHERE id = ANY($1)", ids)
	if err != nil {
		return nil, fmt.Errorf("lookup ids: %w", err)
	}
	for _, e := range events {
		found[e.GetId()] = e
	}
	return found, nil
}

// Read implements audit.Store.
func (s *Store) Read(ctx context.Context, from uint64, limit int) ([]*auditv1.Event, error) {
	if limit <= 0 || from > math.MaxInt64 {
		return nil, nil
	}
	events, err := s.query(ctx, "SELECT data FROM audit_events WHERE sequence >= $1 ORDER BY sequence LIMIT $2", int64(from), limit)
	if err != nil {
		return nil, fmt.Errorf("read from %d: %w", from, err)
	}
	return events, nil
}

// Query implements audit.Store. Every filter value is a bound parameter.
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
	var where []string
	var args []any
	add := func(cond string, a ...any) {
		for _, v := range a {
			args = append(args, v)
			cond = strings.Replace(cond, "?", fmt.Sprintf("$%d", len(args)), 1)
		}
		where = append(where, cond)
	}
	add("sequence >= ?", int64(from))
	if !f.Start.IsZero() {
		add("time_unix_nano >= ?", unixNano(f.Start))
	}
	if !f.End.IsZero() {
		add("time_unix_nano < ?", unixNano(f.End))
	}
	if len(f.Kinds) > 0 {
		kinds := make([]int32, len(f.Kinds))
		for i, k := range f.Kinds {
			kinds[i] = int32(k)
		}
		add("kind = ANY(?)", kinds)
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
	args = append(args, size+1)
	q := fmt.Sprintf("SELECT data FROM audit_events WHERE %s ORDER BY sequence LIMIT $%d", strings.Join(where, " AND "), len(args))
	events, err := s.query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("query events: %w", err)
	}
	if len(events) <= size {
		return events, "", nil
	}
	events = events[:size]
	return events, audit.EncodePageToken(events[size-1].GetSequence() + 1), nil
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
		var last, head int64
		if err := tx.QueryRow(ctx, `SELECT COALESCE((SELECT MAX(tree_size) FROM audit_checkpoints), 0), COALESCE((SELECT MAX(sequence) + 1 FROM audit_events), 0)`).Scan(&last, &head); err != nil {
			return fmt.Errorf("add checkpoint: read sizes: %w", err)
		}
		if int64(cp.Size) <= last || int64(cp.Size) > head {
			return fmt.Errorf("add checkpoint of size %d (last %d, head %d): %w", cp.Size, last, head, audit.ErrSequence)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO audit_checkpoints (tree_size, time_unix_nano, note) VALUES ($1, $2, $3)", int64(cp.Size), unixNano(cp.Time), cp.Note); err != nil {
			return fmt.Errorf("add checkpoint: %w", err)
		}
		return tx.Commit(ctx)
	})
}

// Checkpoints implements audit.Store.
func (s *Store) Checkpoints(ctx context.Context, fromSize uint64, limit int) ([]audit.StoredCheckpoint, error) {
	if limit <= 0 || fromSize > math.MaxInt64 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT tree_size, time_unix_nano, note FROM audit_checkpoints WHERE tree_size >= $1 ORDER BY tree_size LIMIT $2", int64(fromSize), limit)
	if err != nil {
		return nil, fmt.Errorf("read checkpoints: %w", err)
	}
	defer rows.Close()
	var out []audit.StoredCheckpoint
	for rows.Next() {
		var size, ns int64
		var note []byte
		if err := rows.Scan(&size, &ns, &note); err != nil {
			return nil, fmt.Errorf("read checkpoints: %w", err)
		}
		out = append(out, audit.StoredCheckpoint{Size: uint64(size), Time: time.Unix(0, ns).UTC(), Note: note})
	}
	return out, rows.Err()
}

// LatestCheckpoint implements audit.Store.
func (s *Store) LatestCheckpoint(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	var size, ns int64
	var note []byte
	err := s.pool.QueryRow(ctx, "SELECT tree_size, time_unix_nano, note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1").Scan(&size, &ns, &note)
	if errors.Is(err, pgx.ErrNoRows) {
		return audit.StoredCheckpoint{}, false, nil
	}
	if err != nil {
		return audit.StoredCheckpoint{}, false, fmt.Errorf("read latest checkpoint: %w", err)
	}
	return audit.StoredCheckpoint{Size: uint64(size), Time: time.Unix(0, ns).UTC(), Note: note}, true, nil
}

// Close stops competing for the lock (releasing it if held, by closing
// its connection) and closes the pool.
func (s *Store) Close() error {
	s.cancel()
	<-s.done
	s.pool.Close()
	return nil
}

func (s *Store) query(ctx context.Context, q string, args ...any) ([]*auditv1.Event, error) {
	rows, err := s.pool.Query(ctx, q, args...)
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

func unixNano(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}
