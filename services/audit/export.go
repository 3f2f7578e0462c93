package audit

import (
	"context"
	"fmt"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	"github.com/credmatrix/credmatrix/services/audit/tiles"
)

// exportChunk is how many rows or checkpoints one store call returns.
const exportChunk = 4096

// ExportBundle exports everything in store as it is, in one snapshot (from
// the first event the log serves, when older ones were archived and
// pruned: the bundle then starts from the tree's compact range there): the
// leaf bytes of every stored row exactly as stored (not decoded and
// re-serialised, so the bundle holds the evidence itself, an undecodable
// row included, for verify to report by position) and every stored
// checkpoint (one per commit batch, which is what lets verify pin a
// modified event to its batch). It also compares every row's columns
// with its leaf and returns the rows that disagree, which a bundle does
// not carry.
//
// It reads the store directly, so it works when the service refuses to
// start on a damaged store, which is when an investigator needs it.
// origin and publicKey label the bundle; verification uses the
// investigator's own key. The bundle carries no consistency proofs: every
// checkpoint's root is checked against the events themselves.
func ExportBundle(ctx context.Context, store Store, origin, publicKey string) (*bundle.Bundle, []Mismatch, error) {
	b := &bundle.Bundle{Origin: origin, PublicKey: publicKey}
	var mismatches []Mismatch
	err := store.View(ctx, func(r Reader) error {
		indexed, err := r.IndexedUpTo(ctx)
		if err != nil {
			return fmt.Errorf("export: read index watermark: %w", err)
		}
		if b.First, b.Start, err = prunedStart(ctx, r); err != nil {
			return fmt.Errorf("export: %w", err)
		}
		for from := b.First; ; {
			rows, err := r.ReadRows(ctx, from, exportChunk)
			if err != nil {
				return fmt.Errorf("export events from %d: %w", from, err)
			}
			for _, row := range rows {
				b.Events = append(b.Events, row.Data)
				_, bad, err := CheckRow(row)
				if err != nil {
					continue // verify reports the undecodable leaf
				}
				if row.Index == nil && row.Sequence < indexed {
					bad = append(bad, "index row missing")
				}
				if len(bad) > 0 {
					mismatches = append(mismatches, Mismatch{Sequence: row.Sequence, Columns: bad})
				}
			}
			if len(rows) < exportChunk {
				break
			}
			from = rows[len(rows)-1].Sequence + 1
		}
		for from := b.First; ; {
			cps, err := r.Checkpoints(ctx, from, exportChunk)
			if err != nil {
				return fmt.Errorf("export checkpoints: %w", err)
			}
			for _, cp := range cps {
				b.Checkpoints = append(b.Checkpoints, cp.Note)
			}
			if len(cps) < exportChunk {
				break
			}
			from = cps[len(cps)-1].Size + 1
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return b, mismatches, nil
}

// VerifyStore verifies everything in store as an investigator would, from
// the store alone: ExportBundle's events and checkpoints checked by
// verify.Bundle with key (and kept, a checkpoint kept from earlier, if
// not nil), plus every row whose columns disagree with its event. It is
// what 'audit verify --db' runs.
func VerifyStore(ctx context.Context, store Store, key *checkpoint.Verifier, kept []byte) (*verify.Report, error) {
	b, mismatches, err := ExportBundle(ctx, store, key.Origin(), key.PublicKey())
	if err != nil {
		return nil, err
	}
	r := verify.Bundle(b, verify.Options{Key: key, Trusted: kept})
	for _, m := range mismatches {
		r.AddColumnMismatch(m.Sequence, m.Columns)
	}
	return r, nil
}

// prunedStart returns where an export of the store r starts: 0, or the
// first event the log serves when older ones were archived and pruned,
// with the compact range of the tree there (read from the stored tiles,
// from the prune base checkpoint; unverified here: verify.Bundle checks it
// against the signed checkpoints after it).
func prunedStart(ctx context.Context, r Reader) (uint64, [][]byte, error) {
	p, err := r.Pruned(ctx)
	if err != nil || p.End == 0 {
		return 0, nil, err
	}
	if p.Base == 0 {
		return 0, nil, nil // nothing was deleted: every row is there
	}
	cps, err := r.Checkpoints(ctx, p.Base, 1)
	if err != nil {
		return 0, nil, err
	}
	if len(cps) == 0 || cps[0].Size != p.Base || cps[0].CompactRange == nil {
		return 0, nil, fmt.Errorf("the store was pruned up to %d and holds no checkpoint of size %d with its compact range", p.End, p.Base)
	}
	// The leaves from the edge of the tree at Base to End: the tree at
	// Base needs the first ones, the compact range at End all of them
	// (fewer than a tile and a commit batch).
	keep := p.Keep()
	var hashes []tiles.Hash
	for next := keep; next < p.End; {
		rows, err := r.ReadRows(ctx, next, int(min(exportChunk, p.End-next)))
		if err != nil {
			return 0, nil, err
		}
		if len(rows) == 0 {
			return 0, nil, fmt.Errorf("event %d is missing", next)
		}
		for _, row := range rows {
			if row.Sequence != next {
				return 0, nil, fmt.Errorf("event %d is missing", next)
			}
			hashes = append(hashes, leaf.Hash(row.Data))
			next++
		}
	}
	t, err := tiles.Load(ctx, r, p.Base, hashes[:p.Base-keep], cps[0].CompactRange, tiles.WithCacheTiles(0))
	if err != nil {
		return 0, nil, fmt.Errorf("the tree at the prune base %d: %w", p.Base, err)
	}
	t.Append(hashes[p.Base-keep:]...)
	return p.End, t.CompactRange(), nil
}
