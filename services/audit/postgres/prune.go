package postgres

import (
	"context"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"

	"github.com/credmatrix/credmatrix/services/audit"
)

// pruneChunk is how many events one deletion transaction removes.
const pruneChunk = 50000

// Pruned implements audit.Reader.
func (s *Store) Pruned(ctx context.Context) (audit.PruneState, error) { return s.reader().Pruned(ctx) }

func (r reader) Pruned(ctx context.Context) (audit.PruneState, error) {
	var end, base int64
	if err := r.q.QueryRow(ctx, "SELECT end_size, base FROM audit_pruned").Scan(&end, &base); err != nil {
		return audit.PruneState{}, fmt.Errorf("read pruned state: %w", err)
	}
	if end < 0 || base < 0 || base > end {
		return audit.PruneState{}, fmt.Errorf("read pruned state: end %d and base %d are not a prune", end, base)
	}
	return audit.PruneState{End: uint64(end), Base: uint64(base)}, nil
}

// Prune implements audit.Store, on the sequencer's connection: the record
// (and the index watermark) in one transaction, then the deletion in
// transactions of pruneChunk events (VACUUM, run by autovacuum, makes
// the space reusable).
func (s *Store) Prune(ctx context.Context, p audit.PruneState) error {
	keep := p.Keep()
	if p.End > math.MaxInt64 || keep > p.Base || p.Base > p.End {
		return fmt.Errorf("prune to %d (base %d): %w", p.End, p.Base, audit.ErrSequence)
	}
	return s.withWriter(func(conn *pgx.Conn) error {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("prune: begin: %w", err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		var head, end, base int64
		if err := tx.QueryRow(ctx, "SELECT COALESCE((SELECT MAX(sequence) + 1 FROM audit_events), 0), end_size, base FROM audit_pruned FOR UPDATE").Scan(&head, &end, &base); err != nil {
			return fmt.Errorf("prune: read state: %w", err)
		}
		if p.End <= uint64(end) || p.Base < uint64(base) || p.End > uint64(head) || keep >= uint64(head) {
			return fmt.Errorf("prune to %d (base %d; pruned to %d, base %d, head %d): %w", p.End, p.Base, end, base, head, audit.ErrSequence)
		}
		if _, err := tx.Exec(ctx, "UPDATE audit_pruned SET end_size = $1, base = $2", int64(p.End), int64(p.Base)); err != nil {
			return fmt.Errorf("prune: record: %w", err)
		}
		if _, err := tx.Exec(ctx, "UPDATE audit_index_state SET next_sequence = GREATEST(next_sequence, $1)", int64(keep)); err != nil {
			return fmt.Errorf("prune: index watermark: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("prune: commit: %w", err)
		}
		for {
			var low int64
			if err := conn.QueryRow(ctx, "SELECT COALESCE(MIN(sequence), $1) FROM audit_events", int64(keep)).Scan(&low); err != nil {
				return fmt.Errorf("prune: %w", err)
			}
			if low < 0 || uint64(low) >= keep {
				return nil
			}
			upto := int64(min(uint64(low)+pruneChunk, keep))
			tx, err := conn.Begin(ctx)
			if err != nil {
				return fmt.Errorf("prune: begin: %w", err)
			}
			for _, q := range []string{"DELETE FROM audit_events WHERE sequence < $1", "DELETE FROM audit_event_index WHERE sequence < $1"} {
				if _, err := tx.Exec(ctx, q, upto); err != nil {
					tx.Rollback(context.WithoutCancel(ctx))
					return fmt.Errorf("prune events below %d: %w", upto, err)
				}
			}
			if err := tx.Commit(ctx); err != nil {
				return fmt.Errorf("prune: commit: %w", err)
			}
		}
	})
}
