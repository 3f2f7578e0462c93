package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/tiles"
)

// ReadTiles implements audit.Reader (and tiles.Reader).
func (s *Store) ReadTiles(ctx context.Context, ids []tiles.ID) ([][]byte, error) {
	return s.reader().ReadTiles(ctx, ids)
}

func (r reader) ReadTiles(ctx context.Context, ids []tiles.ID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	pos := make(map[tiles.ID]int, len(ids))
	levels, idxs := make([]int64, len(ids)), make([]int64, len(ids))
	for i, id := range ids {
		pos[id] = i
		levels[i], idxs[i] = int64(id.Level), int64(id.Index)
	}
	rows, err := r.q.Query(ctx, `SELECT t.level, t.idx, t.hashes FROM audit_tiles t
		JOIN unnest($1::bigint[], $2::bigint[]) AS w(level, idx) ON t.level = w.level AND t.idx = w.idx`, levels, idxs)
	if err != nil {
		return nil, fmt.Errorf("read tiles: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var level, idx int64
		var h []byte
		if err := rows.Scan(&level, &idx, &h); err != nil {
			return nil, fmt.Errorf("read tiles: %w", err)
		}
		if i, ok := pos[tiles.ID{Level: uint64(level), Index: uint64(idx)}]; ok {
			out[i] = h
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read tiles: %w", err)
	}
	return out, nil
}

// LatestCompactRange implements audit.Reader.
func (s *Store) LatestCompactRange(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	return s.reader().LatestCompactRange(ctx)
}

func (r reader) LatestCompactRange(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	cp, err := scanCheckpoint(r.q.QueryRow(ctx, "SELECT tree_size, time_unix_nano, note, compact_range FROM audit_checkpoints WHERE compact_range IS NOT NULL ORDER BY tree_size DESC LIMIT 1"))
	if errors.Is(err, pgx.ErrNoRows) {
		return audit.StoredCheckpoint{}, false, nil
	}
	if err != nil {
		return audit.StoredCheckpoint{}, false, fmt.Errorf("read latest compact range: %w", err)
	}
	return cp, true, nil
}

// AddTiles implements audit.Store, on the sequencer's connection.
func (s *Store) AddTiles(ctx context.Context, ts []tiles.Tile) error {
	return s.withWriter(func(conn *pgx.Conn) error {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("add tiles: %w", err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		if err := insertTiles(ctx, tx, ts); err != nil {
			return fmt.Errorf("add tiles: %w", err)
		}
		return tx.Commit(ctx)
	})
}

// AddCompactRange implements audit.Store, on the sequencer's connection.
func (s *Store) AddCompactRange(ctx context.Context, size uint64, compactRange [][]byte) error {
	return s.withWriter(func(conn *pgx.Conn) error {
		if _, err := conn.Exec(ctx, "UPDATE audit_checkpoints SET compact_range = $1 WHERE tree_size = $2 AND compact_range IS NULL", encodeRange(compactRange), int64(size)); err != nil {
			return fmt.Errorf("add compact range of size %d: %w", size, err)
		}
		return nil
	})
}

// insertTiles writes full tiles in tx; a stored one is replaced (tiles are
// derived from committed events: a legitimate rewrite has the same content,
// and a rebuild repairs a damaged one).
func insertTiles(ctx context.Context, tx pgx.Tx, ts []tiles.Tile) error {
	if len(ts) == 0 {
		return nil
	}
	levels, idxs, hashes := make([]int64, len(ts)), make([]int64, len(ts)), make([][]byte, len(ts))
	for i, t := range ts {
		if len(t.Hashes) != tiles.FullBytes {
			return fmt.Errorf("store %s: only full tiles are stored, this one has %d bytes", t.ID, len(t.Hashes))
		}
		levels[i], idxs[i], hashes[i] = int64(t.ID.Level), int64(t.ID.Index), t.Hashes
	}
	if _, err := tx.Exec(ctx, `INSERT INTO audit_tiles (level, idx, hashes)
		SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])
		ON CONFLICT (level, idx) DO UPDATE SET hashes = EXCLUDED.hashes`, levels, idxs, hashes); err != nil {
		return fmt.Errorf("store tiles: %w", err)
	}
	return nil
}

// encodeRange is a compact range as stored: its hashes concatenated; nil
// (NULL) for none.
func encodeRange(hashes [][]byte) []byte {
	if hashes == nil {
		return nil
	}
	out := make([]byte, 0, len(hashes)*tiles.HashSize)
	for _, h := range hashes {
		out = append(out, h...)
	}
	return out
}

// decodeRange parses a stored compact range.
func decodeRange(b []byte) ([][]byte, error) {
	if len(b)%tiles.HashSize != 0 || len(b) > 64*tiles.HashSize {
		return nil, fmt.Errorf("stored compact range of %d bytes is not 1 to 64 hashes", len(b))
	}
	out := make([][]byte, 0, len(b)/tiles.HashSize)
	for i := 0; i < len(b); i += tiles.HashSize {
		out = append(out, b[i:i+tiles.HashSize:i+tiles.HashSize])
	}
	return out, nil
}
