package audit

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// archiveChunk is how many events or checkpoints an archive reads per
// store call.
const archiveChunk = 4096

// treeNodes is what an archive needs of the log's Merkle tree: node
// hashes read from stored tiles (tiles.Tree).
type treeNodes interface {
	CompactRangeAt(ctx context.Context, size uint64) ([][]byte, error)
}

// ArchiveInfo describes a written archive.
type ArchiveInfo struct {
	// First is the sequence of the first archived event.
	First uint64
	// End is the tree size the archive ends at (a signed checkpoint's).
	End uint64
	// SHA256 is the digest of the bytes written.
	SHA256 []byte
	// Bytes is how many bytes were written.
	Bytes int64
}

// WriteArchive writes the sealed range [first, end) of the log kept in
// store and tree to w as a bundle (format v2 when first > 0): the events'
// leaf bytes as stored, every stored checkpoint of a size in [first, end]
// (there must be one at end, and at first when first > 0) and the compact
// range of the tree before first. Consistency proofs are not needed: the
// archive holds every event between its checkpoints, so a verifier
// recomputes each one's root. Memory does not grow with the range: events are streamed.
// key labels the bundle; verification uses the investigator's own key.
func WriteArchive(ctx context.Context, store Store, tree treeNodes, key *checkpoint.Verifier, first, end uint64, w io.Writer) (ArchiveInfo, error) {
	info := ArchiveInfo{First: first, End: end}
	if end <= first {
		return info, domainerr.Errorf(domainerr.Invalid, "end_size: %d is not after the first event to archive (%d)", end, first)
	}
	head := &bundle.Bundle{Origin: key.Origin(), PublicKey: key.PublicKey(), First: first}
	var sizes []uint64
	for from := first; ; {
		cps, err := store.Checkpoints(ctx, from, archiveChunk)
		if err != nil {
			return info, fmt.Errorf("archive: read checkpoints: %w", err)
		}
		for _, cp := range cps {
			if cp.Size > end {
				break
			}
			head.Checkpoints = append(head.Checkpoints, cp.Note)
			sizes = append(sizes, cp.Size)
		}
		if len(cps) < archiveChunk || cps[len(cps)-1].Size >= end {
			break
		}
		from = cps[len(cps)-1].Size + 1
	}
	if len(sizes) == 0 || sizes[len(sizes)-1] != end {
		return info, domainerr.Errorf(domainerr.Invalid, "end_size: %d is not the size of a stored signed checkpoint: an archive ends at one", end)
	}
	if first > 0 && sizes[0] != first {
		return info, domainerr.Errorf(domainerr.Invalid, "the log holds no signed checkpoint at %d, where the archive must start", first)
	}
	var err error
	if head.Start, err = tree.CompactRangeAt(ctx, first); err != nil {
		return info, fmt.Errorf("archive: compact range at %d: %w", first, err)
	}
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(w, h), h: h}
	bw, err := bundle.NewWriter(cw, head)
	if err != nil {
		return info, err
	}
	for next := first; next < end; {
		events, err := store.Read(ctx, next, int(min(archiveChunk, end-next)))
		if err != nil {
			return info, fmt.Errorf("archive: read events from %d: %w", next, err)
		}
		if len(events) == 0 {
			return info, fmt.Errorf("archive: the store holds no event %d", next)
		}
		for _, e := range events {
			if e.GetSequence() != next {
				return info, fmt.Errorf("archive: the store returned event %d where %d belongs", e.GetSequence(), next)
			}
			data, err := leaf.Marshal(e)
			if err != nil {
				return info, fmt.Errorf("archive: event %d: %w", next, err)
			}
			if err := bw.Event(data); err != nil {
				return info, err
			}
			next++
		}
	}
	if err := bw.Close(); err != nil {
		return info, err
	}
	info.SHA256, info.Bytes = h.Sum(nil), cw.n
	return info, nil
}

type countingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Archive writes the sealed range of the log from its first event up to
// the stored signed checkpoint of size end (0: the latest checkpoint) to w
// as a bundle file (see WriteArchive), then records the archive — range,
// SHA-256 of the bytes written, the operator who asked — in the log as a
// KIND_AUDIT_ADMIN event, whose sequence it returns. Nothing is recorded
// when writing fails.
func (l *Log) Archive(ctx context.Context, operator string, end uint64, w io.Writer) (ArchiveInfo, uint64, error) {
	if l.signer == nil {
		return ArchiveInfo{}, 0, domainerr.Errorf(domainerr.Unavailable, "this audit log signs no checkpoints (no signing key configured): nothing to archive")
	}
	if err := l.usable(); err != nil {
		return ArchiveInfo{}, 0, err
	}
	if end == 0 {
		cp := l.latest.Load()
		if cp == nil {
			return ArchiveInfo{}, 0, domainerr.Errorf(domainerr.NotFound, "the audit log is empty: nothing to archive")
		}
		end = cp.Size
	}
	if latest := l.latest.Load(); latest == nil || end > latest.Size {
		return ArchiveInfo{}, 0, domainerr.Errorf(domainerr.Invalid, "end_size: %d is beyond the latest checkpoint", end)
	}
	first := l.FirstSequence()
	if end <= first {
		return ArchiveInfo{}, 0, domainerr.Errorf(domainerr.Invalid, "end_size: %d is not after the first event this service holds (%d; the events before it were archived and pruned)", end, first)
	}
	info, err := WriteArchive(ctx, l.store, l.tree, l.signer.Verifier(), first, end, w)
	if err != nil {
		return info, 0, unavailable("audit archive failed", err) // a domain error stays as it is
	}
	e := &auditv1.Event{
		Id:       archiveEventID(info.First, info.End, info.SHA256),
		Time:     timestamppb.New(l.clock()),
		Kind:     auditv1.Kind_KIND_AUDIT_ADMIN,
		Decision: auditv1.Decision_DECISION_ALLOW,
		Reason:   archiveReason(info.First, info.End, info.Bytes, info.SHA256),
		Actor:    &auditv1.Actor{Principal: operator},
		Detail:   &auditv1.Event_Admin{Admin: &auditv1.AdminDetail{Action: ActionArchive}},
	}
	res, err := l.record(ctx, SourceAudit, []*auditv1.Event{e}, true)
	if err != nil {
		return info, 0, err
	}
	return info, res[0].GetSequence(), nil
}
