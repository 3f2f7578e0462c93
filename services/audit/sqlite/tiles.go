package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/tiles"
)

// tilesChunk bounds the tiles of one SELECT.
const tilesChunk = 64

// ReadTiles implements audit.Reader (and tiles.Reader).
func (s *Store) ReadTiles(ctx context.Context, ids []tiles.ID) ([][]byte, error) {
	return s.reader().ReadTiles(ctx, ids)
}

func (r reader) ReadTiles(ctx context.Context, ids []tiles.ID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	if !r.v4 {
		return out, nil
	}
	pos := make(map[tiles.ID]int, len(ids))
	for i, id := range ids {
		pos[id] = i
	}
	for start := 0; start < len(ids); start += tilesChunk {
		chunk := ids[start:min(len(ids), start+tilesChunk)]
		args := make([]any, 0, 2*len(chunk))
		for _, id := range chunk {
			args = append(args, int64(id.Level), int64(id.Index))
		}
		rows, err := r.q.QueryContext(ctx, "SELECT level, idx, hashes FROM tiles WHERE (level, idx) IN (VALUES "+
			strings.TrimSuffix(strings.Repeat("(?, ?), ", len(chunk)), ", ")+")", args...)
		if err != nil {
			return nil, fmt.Errorf("read tiles: %w", err)
		}
		for rows.Next() {
			var level, idx int64
			var h []byte
			if err := rows.Scan(&level, &idx, &h); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read tiles: %w", err)
			}
			if i, ok := pos[tiles.ID{Level: uint64(level), Index: uint64(idx)}]; ok {
				out[i] = h
			}
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("read tiles: %w", err)
		}
	}
	return out, nil
}

// LatestCompactRange implements audit.Reader.
func (s *Store) LatestCompactRange(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	return s.reader().LatestCompactRange(ctx)
}

func (r reader) LatestCompactRange(ctx context.Context) (audit.StoredCheckpoint, bool, error) {
	if !r.v4 {
		return audit.StoredCheckpoint{}, false, nil
	}
	row := r.q.QueryRowContext(ctx, "SELECT "+r.checkpointColumns()+" FROM checkpoints WHERE compact_range IS NOT NULL ORDER BY tree_size DESC LIMIT 1")
	cp, err := scanCheckpoint(row)
	if errors.Is(err, sql.ErrNoRows) {
		return audit.StoredCheckpoint{}, false, nil
	}
	if err != nil {
		return audit.StoredCheckpoint{}, false, fmt.Errorf("read latest compact range: %w", err)
	}
	return cp, true, nil
}

// AddTiles implements audit.Store.
func (s *Store) AddTiles(ctx context.Context, ts []tiles.Tile) error {
	if s.ro {
		return errReadOnly
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("add tiles: begin: %w", err)
	}
	defer tx.Rollback()
	if err := insertTiles(ctx, tx, ts); err != nil {
		return fmt.Errorf("add tiles: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("add tiles: commit: %w", err)
	}
	return nil
}

// AddCompactRange implements audit.Store.
func (s *Store) AddCompactRange(ctx context.Context, size uint64, compactRange [][]byte) error {
	if s.ro {
		return errReadOnly
	}
	if _, err := s.db.ExecContext(ctx, "UPDATE checkpoints SET compact_range = ? WHERE tree_size = ? AND compact_range IS NULL", encodeRange(compactRange), int64(size)); err != nil {
		return fmt.Errorf("add compact range of size %d: %w", size, err)
	}
	return nil
}

// testHookTileWritten, when set (by a test), runs after each tile row is
// written inside a transaction: the crash test kills the process there.
var testHookTileWritten func()

// insertTiles writes full tiles in tx. A tile already stored is replaced:
// tiles are derived from committed events, so a legitimate rewrite has the
// same content, and a rebuild repairs a damaged one this way.
func insertTiles(ctx context.Context, tx *sql.Tx, ts []tiles.Tile) error {
	for _, t := range ts {
		if len(t.Hashes) != tiles.FullBytes {
			return fmt.Errorf("store %s: only full tiles are stored, this one has %d bytes", t.ID, len(t.Hashes))
		}
		if _, err := tx.ExecContext(ctx, "INSERT OR REPLACE INTO tiles (level, idx, hashes) VALUES (?, ?, ?)", int64(t.ID.Level), int64(t.ID.Index), t.Hashes); err != nil {
			return fmt.Errorf("store %s: %w", t.ID, err)
		}
		if testHookTileWritten != nil {
			testHookTileWritten()
		}
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

// decodeRange parses a stored compact range. A malformed one is an error
// (the Log refuses to trust it).
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
