package audit

import (
	"context"
	"fmt"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
)

// exportChunk is how many rows or checkpoints one store call returns.
const exportChunk = 4096

// ExportBundle exports everything in store as it is, in one snapshot: the
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
		for from := uint64(0); ; {
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
		for from := uint64(0); ; {
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
