package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
)

// bump increases the state version inside tx.
func bump(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `UPDATE state SET version = version + 1 WHERE id = 1`)
	return err
}

// StateVersion implements broker.Store.
func (s *Store) StateVersion(ctx context.Context) (uint64, error) {
	var v uint64
	if err := s.version.QueryRowContext(ctx).Scan(&v); err != nil {
		return 0, fmt.Errorf("read state version: %w", err)
	}
	return v, nil
}

// LoadState implements broker.Store: one transaction, one snapshot.
func (s *Store) LoadState(ctx context.Context, now time.Time) (broker.SharedState, error) {
	var st broker.SharedState
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return st, fmt.Errorf("load state: %w", err)
	}
	defer tx.Rollback()
	if err := tx.QueryRowContext(ctx, `SELECT version, reload_generation, reload_by FROM state WHERE id = 1`).
		Scan(&st.Version, &st.ReloadGeneration, &st.ReloadBy); err != nil {
		return st, fmt.Errorf("load state: %w", err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT scope FROM freezes ORDER BY scope`)
	if err != nil {
		return st, fmt.Errorf("load state: freezes: %w", err)
	}
	st.Frozen = []string{}
	for rows.Next() {
		var sc string
		if err := rows.Scan(&sc); err != nil {
			rows.Close()
			return st, fmt.Errorf("load state: freezes: %w", err)
		}
		st.Frozen = append(st.Frozen, sc)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("load state: freezes: %w", err)
	}
	if st.Revocations, err = revocations(ctx, tx, now); err != nil {
		return st, fmt.Errorf("load state: %w", err)
	}
	return st, tx.Commit()
}

// RequestReload implements broker.Store.
func (s *Store) RequestReload(ctx context.Context, by string) (uint64, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("request reload: %w", err)
	}
	defer tx.Rollback()
	var gen uint64
	if err := tx.QueryRowContext(ctx, `UPDATE state SET version = version + 1, reload_generation = reload_generation + 1, reload_by = ?
		WHERE id = 1 RETURNING reload_generation`, by).Scan(&gen); err != nil {
		return 0, fmt.Errorf("request reload: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("request reload: %w", err)
	}
	return gen, nil
}
