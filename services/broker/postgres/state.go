package postgres

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credmatrix/credmatrix/platform/pgnotify"
	"github.com/credmatrix/credmatrix/services/broker"
)

// StateChannel is the LISTEN/NOTIFY channel of state changes (freezes,
// revocations, reload requests); the payload is the new state version.
const StateChannel = "broker_state"

// bump increases the state version inside tx and announces it on
// StateChannel (delivered when tx commits).
func bump(ctx context.Context, tx pgx.Tx) error {
	var v int64
	if err := tx.QueryRow(ctx, `UPDATE broker_state SET version = version + 1 WHERE id = 1 RETURNING version`).Scan(&v); err != nil {
		return fmt.Errorf("bump state version: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, StateChannel, strconv.FormatInt(v, 10)); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

// StateVersion implements broker.Store.
func (s *Store) StateVersion(ctx context.Context) (uint64, error) {
	var v int64
	if err := s.pool.QueryRow(ctx, `SELECT version FROM broker_state WHERE id = 1`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read state version: %w", err)
	}
	return uint64(v), nil
}

// LoadState implements broker.Store: one repeatable-read transaction, one
// snapshot.
func (s *Store) LoadState(ctx context.Context, now time.Time) (broker.SharedState, error) {
	var st broker.SharedState
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return st, fmt.Errorf("load state: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var v, gen int64
	if err := tx.QueryRow(ctx, `SELECT version, reload_generation, reload_by FROM broker_state WHERE id = 1`).Scan(&v, &gen, &st.ReloadBy); err != nil {
		return st, fmt.Errorf("load state: %w", err)
	}
	st.Version, st.ReloadGeneration = uint64(v), uint64(gen)
	rows, err := tx.Query(ctx, `SELECT scope FROM broker_freezes ORDER BY scope`)
	if err != nil {
		return st, fmt.Errorf("load state: freezes: %w", err)
	}
	if st.Frozen, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return st, fmt.Errorf("load state: freezes: %w", err)
	}
	if st.Frozen == nil {
		st.Frozen = []string{}
	}
	if st.Revocations, err = revocations(ctx, tx, now); err != nil {
		return st, fmt.Errorf("load state: %w", err)
	}
	return st, tx.Commit(ctx)
}

// RequestReload implements broker.Store.
func (s *Store) RequestReload(ctx context.Context, by string) (uint64, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("request reload: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var gen int64
	if err := tx.QueryRow(ctx, `UPDATE broker_state SET reload_generation = reload_generation + 1, reload_by = $1
		WHERE id = 1 RETURNING reload_generation`, by).Scan(&gen); err != nil {
		return 0, fmt.Errorf("request reload: %w", err)
	}
	if err := bump(ctx, tx); err != nil {
		return 0, fmt.Errorf("request reload: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("request reload: %w", err)
	}
	return uint64(gen), nil
}

// Follow calls changed whenever a replica announces a state change, and
// after every (re)connection of the listening session (notifications may
// have been missed meanwhile), until ctx ends. Connection failures go to
// onError (may be nil).
func (s *Store) Follow(ctx context.Context, changed func(), onError func(error)) {
	pgnotify.Listen(ctx, s.pool.Config().ConnConfig, StateChannel, func(string) { changed() }, onError)
}
