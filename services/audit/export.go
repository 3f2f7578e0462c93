package audit

import (
	"bytes"
	"context"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"

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

// verifySegment is how many events VerifyStore holds in memory at once
// (at least: a segment ends at a signed checkpoint, and the last one runs
// to the head). 16,384 events kept 'audit verify --db' at about 75 MiB
// peak RSS on a log of 10 million; 65,536 at 194 MiB.
var verifySegment uint64 = 1 << 14

// maxColumnMismatches bounds the column disagreements VerifyStore keeps.
const maxColumnMismatches = 10000

// VerifyStore verifies everything in store as an investigator would, from
// the store alone, in one snapshot: the events (their leaf bytes as
// stored) and the stored checkpoints are checked by verify.Bundle with
// key (and kept, a checkpoint kept from earlier, if not nil), segment by
// segment so that memory does not grow with the log: each segment holds
// at least verifySegment events and ends at a signed checkpoint (never the
// last one, so a final unsigned tail is reported as such), starts from the
// compact range of the tree before it (computed here from the events
// before it, or, in a pruned store, read from the tiles and proven by the
// segment's checkpoints), and the segments must form one chain
// (verify.Chain). Verification stops at the first segment that fails
// (later checkpoints fail with it); every row's columns are still compared
// with its event. It is what 'audit verify --db' runs.
func VerifyStore(ctx context.Context, store Store, key *checkpoint.Verifier, kept []byte) (*verify.Report, error) {
	var out *verify.Report
	err := store.View(ctx, func(r Reader) error {
		var err error
		out, err = verifyView(ctx, r, key, kept)
		return err
	})
	return out, err
}

func verifyView(ctx context.Context, r Reader, key *checkpoint.Verifier, kept []byte) (*verify.Report, error) {
	indexed, err := r.IndexedUpTo(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: read index watermark: %w", err)
	}
	first, start, tree, err := prunedStartTree(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	// The checkpoint sizes, to cut segments at (8 bytes each).
	var sizes []uint64
	for from := first; ; {
		cps, err := r.Checkpoints(ctx, from, exportChunk)
		if err != nil {
			return nil, fmt.Errorf("verify: read checkpoints: %w", err)
		}
		for _, cp := range cps {
			sizes = append(sizes, cp.Size)
		}
		if len(cps) < exportChunk {
			break
		}
		from = cps[len(cps)-1].Size + 1
	}
	var bounds []uint64 // segment ends, each a checkpoint size
	last := first
	for i, sz := range sizes {
		if i < len(sizes)-1 && sz >= last+verifySegment {
			bounds = append(bounds, sz)
			last = sz
		}
	}
	var trusted *checkpoint.Checkpoint
	if len(kept) > 0 {
		if c, err := key.Open(kept); err == nil {
			trusted = &c
		}
	}
	cr, err := leafRange(first, start)
	if err != nil {
		return nil, fmt.Errorf("verify: the start of the store: %w", err)
	}
	var (
		reports    []*verify.Report
		mismatches []Mismatch
		failed     bool
		skipped    uint64  // rows read after a failed segment
		skippedCPs int     // their signed checkpoints
		next       = first // the next row to read
		segFirst   = first
	)
	for seg := 0; seg <= len(bounds); seg++ {
		b := &bundle.Bundle{Origin: key.Origin(), PublicKey: key.PublicKey(), First: segFirst, Start: cloneHashes(cr.Hashes())}
		if segFirst == 0 {
			b.Start = nil
		}
		segEnd := ^uint64(0) // the last segment reads every row left
		if seg < len(bounds) {
			segEnd = bounds[seg]
		}
		want := segEnd - segFirst
		for uint64(len(b.Events)) < want {
			rows, err := r.ReadRows(ctx, next, int(min(exportChunk, want-uint64(len(b.Events)))))
			if err != nil {
				return nil, fmt.Errorf("verify: read events from %d: %w", next, err)
			}
			for _, row := range rows {
				b.Events = append(b.Events, row.Data)
				h := leaf.Hash(row.Data)
				if err := cr.Append(h[:], nil); err != nil {
					return nil, err
				}
				if _, bad, err := CheckRow(row); err == nil {
					if row.Index == nil && row.Sequence < indexed {
						bad = append(bad, "index row missing")
					}
					if len(bad) > 0 && len(mismatches) < maxColumnMismatches {
						mismatches = append(mismatches, Mismatch{Sequence: row.Sequence, Columns: bad})
					}
				}
				next = row.Sequence + 1
			}
			if len(rows) == 0 {
				break
			}
		}
		end := segFirst + uint64(len(b.Events))
		for from := segFirst; ; {
			cps, err := r.Checkpoints(ctx, from, exportChunk)
			if err != nil {
				return nil, fmt.Errorf("verify: read checkpoints: %w", err)
			}
			for _, cp := range cps {
				if seg < len(bounds) && cp.Size > segEnd {
					break
				}
				b.Checkpoints = append(b.Checkpoints, cp.Note)
			}
			if len(cps) < exportChunk || seg < len(bounds) && cps[len(cps)-1].Size >= segEnd {
				break
			}
			from = cps[len(cps)-1].Size + 1
		}
		if failed {
			// Only the columns are still compared, and the signatures
			// counted.
			skipped += uint64(len(b.Events))
			for _, note := range b.Checkpoints {
				if c, err := key.Open(note); err == nil && c.Size > segFirst {
					skippedCPs++
				}
			}
			segFirst = segEnd
			continue
		}
		opts := verify.Options{Key: key}
		if trusted != nil && (trusted.Size > segFirst || seg == 0) && (trusted.Size <= end || seg == len(bounds)) {
			opts.Trusted = kept
			if trusted.Size < first && tree != nil {
				// A kept checkpoint older than a pruned store's first
				// event: a consistency proof from the stored tiles.
				if p, err := tree.Consistency(ctx, trusted.Size, first); err == nil {
					b.Proofs = append(b.Proofs, bundle.Proof{From: trusted.Size, To: first, Hashes: p})
				}
			}
		}
		rep := verify.Bundle(b, opts)
		reports = append(reports, rep)
		if !rep.OK() {
			failed = true
		} else if p := verify.Chain(reports); p != nil && first == 0 {
			rep.Add(p)
			failed = true
		}
		segFirst = segEnd
	}
	out := mergeReports(reports, skipped)
	out.Checkpoints += skippedCPs
	for _, m := range mismatches {
		out.AddColumnMismatch(m.Sequence, m.Columns)
	}
	return out, nil
}

// mergeReports makes one report of the segments' (in order, all OK but
// perhaps the last): the events of all (and skipped, those read after a
// failed one) and their checkpoints (a boundary checkpoint is in two
// segments), the start of the first, the end and problems of the last,
// and the verified size of the last that verified one.
func mergeReports(reports []*verify.Report, skipped uint64) *verify.Report {
	out := *reports[len(reports)-1]
	out.First, out.StartRoot = reports[0].First, reports[0].StartRoot
	out.Events, out.Checkpoints = skipped, 0
	for i, r := range reports {
		out.Events += r.Events
		out.Checkpoints += r.Checkpoints
		if i > 0 {
			out.Checkpoints-- // the boundary checkpoint, counted in the segment before
		}
	}
	if n := len(reports); n > 1 {
		if prev := reports[n-2]; out.VerifiedSize < prev.VerifiedSize {
			// The failed segment proved nothing: the log is proven up
			// to the segment before.
			out.VerifiedSize, out.Root, out.Latest = prev.VerifiedSize, prev.Root, prev.Latest
		}
	}
	return &out
}

// leafRange returns a compact range over the leaves [0, first) from their
// compact range start (nil when first is 0).
func leafRange(first uint64, start [][]byte) (*compact.Range, error) {
	rf := &compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	if first == 0 {
		return rf.NewEmptyRange(0), nil
	}
	return rf.NewRange(0, first, cloneHashes(start))
}

func cloneHashes(hs [][]byte) [][]byte {
	out := make([][]byte, len(hs))
	for i, h := range hs {
		out[i] = bytes.Clone(h)
	}
	return out
}

// prunedStart returns where an export of the store r starts: 0, or the
// first event the log serves when older ones were archived and pruned,
// with the compact range of the tree there (read from the stored tiles,
// from the prune base checkpoint; unverified here: verify.Bundle checks it
// against the signed checkpoints after it).
func prunedStart(ctx context.Context, r Reader) (uint64, [][]byte, error) {
	first, start, _, err := prunedStartTree(ctx, r)
	return first, start, err
}

// prunedStartTree is prunedStart that also returns the tree (from the
// stored tiles) at the first event, for proofs (nil when it starts at 0).
func prunedStartTree(ctx context.Context, r Reader) (uint64, [][]byte, *tiles.Tree, error) {
	p, err := r.Pruned(ctx)
	if err != nil || p.End == 0 {
		return 0, nil, nil, err
	}
	if p.Base == 0 {
		return 0, nil, nil, nil // nothing was deleted: every row is there
	}
	cps, err := r.Checkpoints(ctx, p.Base, 1)
	if err != nil {
		return 0, nil, nil, err
	}
	if len(cps) == 0 || cps[0].Size != p.Base || cps[0].CompactRange == nil {
		return 0, nil, nil, fmt.Errorf("the store was pruned up to %d and holds no checkpoint of size %d with its compact range", p.End, p.Base)
	}
	// The leaves from the edge of the tree at Base to End: the tree at
	// Base needs the first ones, the compact range at End all of them
	// (fewer than a tile and a commit batch).
	keep := p.Keep()
	var hashes []tiles.Hash
	for next := keep; next < p.End; {
		rows, err := r.ReadRows(ctx, next, int(min(exportChunk, p.End-next)))
		if err != nil {
			return 0, nil, nil, err
		}
		if len(rows) == 0 {
			return 0, nil, nil, fmt.Errorf("event %d is missing", next)
		}
		for _, row := range rows {
			if row.Sequence != next {
				return 0, nil, nil, fmt.Errorf("event %d is missing", next)
			}
			hashes = append(hashes, leaf.Hash(row.Data))
			next++
		}
	}
	t, err := tiles.Load(ctx, r, p.Base, hashes[:p.Base-keep], cps[0].CompactRange, tiles.WithCacheTiles(0))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("the tree at the prune base %d: %w", p.Base, err)
	}
	t.Append(hashes[p.Base-keep:]...)
	return p.End, t.CompactRange(), t, nil
}
