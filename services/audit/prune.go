package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/services/audit/tiles"
)

// Admin actions of the events the log records about its archives.
const (
	// ActionArchive is AdminDetail.action of the event recording an
	// archive (Archive).
	ActionArchive = "archive"
	// ActionPrune is AdminDetail.action of the event recording a prune
	// (Prune).
	ActionPrune = "prune"
)

// archiveEventID is the id of the event that records the archive of
// [first, end) with digest sum.
func archiveEventID(first, end uint64, sum []byte) string {
	return fmt.Sprintf("audit-archive-%d-%d-%s", first, end, hex.EncodeToString(sum[:8]))
}

// archiveReason is the reason of that event; it names the whole digest.
func archiveReason(first, end uint64, n int64, sum []byte) string {
	return fmt.Sprintf("archived events %d to %d (%d bytes, sha256 %s)", first, end-1, n, hex.EncodeToString(sum))
}

// PrunedError is the answer to a read of events the log archived and
// pruned: FailedPrecondition, naming where the log now starts and where
// the events are (an archive bundle).
func prunedError(what string, seq, first uint64) error {
	return domainerr.Errorf(domainerr.FailedPrecondition,
		"%s %d: events below %d were archived and pruned from this audit service; read them from the archive bundle that holds them ('credmatrix audit verify|replay --bundle FILE'); this service holds events from %d on",
		what, seq, first, first)
}

// FirstSequence returns the first sequence the log serves: the events
// below it were archived and pruned (0: none).
func (l *Log) FirstSequence() uint64 { return l.pruned.Load().End }

// StartHashes returns the compact range of the tree before the first
// sequence the log serves (nil when nothing was pruned): an export of the
// events from there on starts from them.
func (l *Log) StartHashes(ctx context.Context) ([][]byte, error) {
	first := l.FirstSequence()
	if first == 0 {
		return nil, nil
	}
	cr, err := l.tree.CompactRangeAt(ctx, first)
	if err != nil {
		return nil, treeError(err)
	}
	return cr, nil
}

// PruneResult says what a prune did.
type PruneResult struct {
	// First is the first sequence the log now serves.
	First uint64
	// Base is the checkpoint a full verification now starts from; the
	// store keeps the rows from tiles.EdgeLeaves(Base) on.
	Base uint64
	// Sequence is that of the KIND_AUDIT_ADMIN event recording the prune.
	Sequence uint64
	// ArchiveSequence is that of the event that recorded the archive.
	ArchiveSequence uint64
}

// Prune removes from the store the events [first, end) of an archive the
// log wrote and recorded (Archive), named by its range and the SHA-256 of
// its bytes: first must be the first sequence the log serves, and an
// archive event of the log (checked against the log's tree, like every
// event it reads) must name exactly that range and digest. The log first
// records the prune in itself (a KIND_AUDIT_ADMIN event by operator,
// durable and signed), then the store deletes the rows. Checkpoints and
// the tree's tiles stay: inclusion proofs for every event and consistency
// proofs between every pair of sizes keep working, and a full verification
// of the store starts from the last checkpoint at or below end that
// carries a compact range (checked against its signature here, before
// anything is removed), so the store keeps the few rows (< 256) between
// that checkpoint's last full tile and end.
func (l *Log) Prune(ctx context.Context, operator string, first, end uint64, sum []byte) (PruneResult, error) {
	if l.signer == nil {
		return PruneResult{}, domainerr.Errorf(domainerr.Unavailable, "this audit log signs no checkpoints (no signing key configured): nothing was archived")
	}
	if err := l.usable(); err != nil {
		return PruneResult{}, err
	}
	if len(sum) != sha256.Size {
		return PruneResult{}, domainerr.Errorf(domainerr.Invalid, "sha256: must be %d bytes, got %d", sha256.Size, len(sum))
	}
	l.pruneMu.Lock()
	defer l.pruneMu.Unlock()
	cur := *l.pruned.Load()
	switch {
	case first != cur.End:
		return PruneResult{}, domainerr.Errorf(domainerr.FailedPrecondition, "first_sequence: %d is not the first event this service holds (%d): an archive to prune starts there", first, cur.End)
	case end <= first:
		return PruneResult{}, domainerr.Errorf(domainerr.Invalid, "end_size: %d is not after first_sequence %d", end, first)
	}
	latest := l.latest.Load()
	if latest == nil || end > latest.Size {
		return PruneResult{}, domainerr.Errorf(domainerr.FailedPrecondition, "end_size: %d is beyond the latest signed checkpoint: only a sealed, archived range can be pruned", end)
	}
	archived, err := l.findArchive(ctx, first, end, sum)
	if err != nil {
		return PruneResult{}, err
	}
	base, err := l.pruneBase(ctx, cur.Base, end)
	if err != nil {
		return PruneResult{}, err
	}
	e := &auditv1.Event{
		Id:       fmt.Sprintf("audit-prune-%d-%d-%s", first, end, hex.EncodeToString(sum[:8])),
		Time:     timestamppb.New(l.clock()),
		Kind:     auditv1.Kind_KIND_AUDIT_ADMIN,
		Decision: auditv1.Decision_DECISION_ALLOW,
		Reason: fmt.Sprintf("pruned events %d to %d from the hot store: archived as sha256 %s (recorded as event %d); a full verification of the store starts at checkpoint %d",
			first, end-1, hex.EncodeToString(sum), archived, base),
		Actor:  &auditv1.Actor{Principal: operator},
		Detail: &auditv1.Event_Admin{Admin: &auditv1.AdminDetail{Action: ActionPrune}},
	}
	res, err := l.record(ctx, SourceAudit, []*auditv1.Event{e}, true)
	if err != nil {
		return PruneResult{}, err
	}
	p := PruneState{End: end, Base: base}
	if err := l.store.Prune(ctx, p); err != nil {
		return PruneResult{}, unavailable("audit prune failed (the prune is recorded in the log; retrying it prunes the same range)", err)
	}
	l.pruned.Store(&p)
	l.logf("audit log: pruned archived events", "first", first, "end", end, "base", base, "sequence", res[0].GetSequence())
	return PruneResult{First: end, Base: base, Sequence: res[0].GetSequence(), ArchiveSequence: archived}, nil
}

// findArchive returns the sequence of the log's event recording the
// archive of [first, end) with digest sum: a KIND_AUDIT_ADMIN event after
// end (the log records an archive after writing it), found through
// Query, which checks every event against the tree.
func (l *Log) findArchive(ctx context.Context, first, end uint64, sum []byte) (uint64, error) {
	id := archiveEventID(first, end, sum)
	wantReason := "sha256 " + hex.EncodeToString(sum) + ")"
	f := Filter{Kinds: []auditv1.Kind{auditv1.Kind_KIND_AUDIT_ADMIN}, PageSize: MaxPageSize, PageToken: EncodePageToken(end)}
	for {
		page, err := l.Query(ctx, f)
		if err != nil {
			return 0, err
		}
		for _, e := range page.Events {
			if e.GetId() == id && e.GetAdmin().GetAction() == ActionArchive && e.GetSourceService() == SourceAudit &&
				strings.HasSuffix(e.GetReason(), wantReason) {
				return e.GetSequence(), nil
			}
		}
		if page.NextPageToken == "" {
			return 0, domainerr.Errorf(domainerr.FailedPrecondition, "no archive of events %d to %d with that sha256 is recorded in the log: only a range this service archived (credmatrix audit archive) can be pruned", first, end-1)
		}
		f.PageToken = page.NextPageToken
	}
}

// pruneBase returns the checkpoint a full verification starts from once
// the events below end are pruned: the last stored checkpoint at or below
// end that carries a compact range, if the tree loads from it and matches
// its signature (otherwise prev, the current base: fewer rows go).
func (l *Log) pruneBase(ctx context.Context, prev, end uint64) (uint64, error) {
	from := max(prev, tiles.EdgeLeaves(end))
	if from >= tiles.Width {
		from -= tiles.Width // the first checkpoint after a tile boundary may lie past it
	}
	var best *StoredCheckpoint
	for from <= end {
		cps, err := l.store.Checkpoints(ctx, max(from, prev), archiveChunk)
		if err != nil {
			return 0, unavailable("audit store unavailable", err)
		}
		for i := range cps {
			if cps[i].Size > end {
				break
			}
			if cps[i].CompactRange != nil && cps[i].Size > prev {
				best = &cps[i]
			}
		}
		if len(cps) < archiveChunk || cps[len(cps)-1].Size >= end {
			break
		}
		from = cps[len(cps)-1].Size + 1
	}
	if best == nil {
		return prev, nil
	}
	t, err := l.loadTreeAt(ctx, *best)
	if err != nil {
		l.logf("audit log: the stored tree state at a checkpoint does not check out; pruning keeps the rows after the previous base", "tree_size", best.Size, "problem", err.Error())
		return prev, nil
	}
	if !bytes.Equal(t.Root(), l.mustRootAt(ctx, best.Size)) {
		return prev, nil
	}
	return best.Size, nil
}

// mustRootAt is the log's root at size (nil if the tiles cannot say).
func (l *Log) mustRootAt(ctx context.Context, size uint64) []byte {
	r, err := l.tree.RootAt(ctx, size)
	if err != nil {
		return nil
	}
	return r
}

// loadPrunedBase loads, for a full verification of a pruned store, the
// tree at its base checkpoint p.Base (checked against its signature): the
// rows below its edge are gone. It returns the base (0: nothing pruned,
// verify from the start).
func (l *Log) loadPrunedBase(ctx context.Context, p PruneState) (uint64, error) {
	if p.Base == 0 {
		return 0, nil
	}
	if l.signer == nil {
		return 0, fmt.Errorf("%w: the store was pruned up to %d and this log has no key to check the checkpoint the rest is verified from", ErrStoreMismatch, p.End)
	}
	cps, err := l.store.Checkpoints(ctx, p.Base, 1)
	if err != nil {
		return 0, fmt.Errorf("read the checkpoint of size %d: %w", p.Base, err)
	}
	if len(cps) == 0 || cps[0].Size != p.Base || cps[0].CompactRange == nil {
		return 0, fmt.Errorf("%w: the store was pruned up to %d and has no checkpoint of size %d with its compact range to verify the rest from", ErrStoreMismatch, p.End, p.Base)
	}
	t, err := l.loadTreeAt(ctx, cps[0])
	if err != nil {
		return 0, fmt.Errorf("%w: the store was pruned up to %d and its tree state at checkpoint %d does not check out: %v", ErrStoreMismatch, p.End, p.Base, err)
	}
	l.tree, l.crSize = t, p.Base
	return p.Base, nil
}
