package sqlite

import (
	"context"
	"fmt"
	"math"

	"github.com/credmatrix/credmatrix/services/audit"
)

// pruneChunk is how many events one deletion transaction removes, so that
// pruning millions of events never makes one huge transaction (and WAL).
const pruneChunk = 50000

// Pruned implements audit.Reader.
func (s *Store) Pruned(ctx context.Context) (audit.PruneState, error) { return s.reader().Pruned(ctx) }

func (r reader) Pruned(ctx context.Context) (audit.PruneState, error) {
	if !r.v5 {
		return audit.PruneState{}, nil
	}
	var end, base int64
	if err := r.q.QueryRowContext(ctx, "SELECT end_size, base FROM pruned").Scan(&end, &base); err != nil {
		return audit.PruneState{}, fmt.Errorf("read pruned state: %w", err)
	}
	if end < 0 || base < 0 || base > end {
		return audit.PruneState{}, fmt.Errorf("read pruned state: end %d and base %d are not a prune", end, base)
	}
	return audit.PruneState{End: uint64(end), Base: uint64(base)}, nil
}

// Prune implements audit.Store: the record (and the index watermark) in
// one durable transaction, then the deletion in transactions of
// pruneChunk events. The freed pages are reused by later appends (the
// file does not shrink; VACUUM would rewrite it whole).
func (s *Store) Prune(ctx context.Context, p audit.PruneState) error {
	if s.ro {
		return errReadOnly
	}
	keep := p.Keep()
	if p.End > math.MaxInt64 || keep > p.Base || p.Base > p.End {
		return fmt.Errorf("prune to %d (base %d): %w", p.End, p.Base, audit.ErrSequence)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("prune: begin: %w", err)
	}
	defer tx.Rollback()
	var head, end, base uint64
	if err := tx.QueryRowContext(ctx, "SELECT (SELECT COALESCE(MAX(sequence) + 1, 0) FROM events), end_size, base FROM pruned").Scan(&head, &end, &base); err != nil {
		return fmt.Errorf("prune: read state: %w", err)
	}
	if p.End <= end || p.Base < base || p.End > head || keep >= head {
		return fmt.Errorf("prune to %d (base %d; pruned to %d, base %d, head %d): %w", p.End, p.Base, end, base, head, audit.ErrSequence)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE pruned SET end_size = ?, base = ?", int64(p.End), int64(p.Base)); err != nil {
		return fmt.Errorf("prune: record: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE index_state SET next_sequence = MAX(next_sequence, ?)", int64(keep)); err != nil {
		return fmt.Errorf("prune: index watermark: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("prune: commit: %w", err)
	}
	return s.deleteBelow(ctx, keep)
}

// deleteBelow deletes the events and index rows below keep, chunk by
// chunk from the lowest one still stored.
func (s *Store) deleteBelow(ctx context.Context, keep uint64) error {
	for {
		var low int64
		if err := s.db.QueryRowContext(ctx, "SELECT COALESCE(MIN(sequence), ?) FROM events", int64(keep)).Scan(&low); err != nil {
			return fmt.Errorf("prune: %w", err)
		}
		if low < 0 || uint64(low) >= keep {
			return nil
		}
		upto := min(uint64(low)+pruneChunk, keep)
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("prune: begin: %w", err)
		}
		for _, q := range []string{"DELETE FROM events WHERE sequence < ?", "DELETE FROM event_index WHERE sequence < ?"} {
			if _, err := tx.ExecContext(ctx, q, int64(upto)); err != nil {
				tx.Rollback()
				return fmt.Errorf("prune events below %d: %w", upto, err)
			}
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("prune: commit: %w", err)
		}
	}
}
