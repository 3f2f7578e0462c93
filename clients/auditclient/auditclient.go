// Package auditclient is the Go client of the credmatrix audit log, for
// operators and investigators: query and tail events, export the log with
// its signed checkpoints and proofs into a bundle, and (in its
// subpackages) verify and replay a log offline.
//
//   - leaf: the one definition of an event's leaf bytes and hash.
//   - tree: an RFC 6962 Merkle tree built from leaves, for proofs.
//   - checkpoint: signed checkpoints (C2SP signed notes).
//   - bundle: the export format.
//   - verify: checks a bundle against a trusted key and a kept checkpoint.
//   - replay: reconstructs who held which session, grant or key when.
//
// It depends only on the audit contract (proto) and small libraries, so
// applications and the credmatrix CLI can import it without linking any
// store or server.
package auditclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"

	"google.golang.org/grpc"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// MaxPageSize is the largest page the audit service returns per Query call.
const MaxPageSize = 1000

// Client calls one audit service. It is safe for concurrent use.
type Client struct {
	rpc auditv1.AuditServiceClient
}

// New returns a client using conn (an mTLS connection with an operator
// identity: only operators may read the log).
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{rpc: auditv1.NewAuditServiceClient(conn)}
}

// RPC returns the generated client, for calls this package does not wrap.
func (c *Client) RPC() auditv1.AuditServiceClient { return c.rpc }

// Query calls fn for every event matching req, in sequence order, across
// all pages. req.PageToken is advanced in place; req.PageSize 0 means the
// largest page. fn returning an error stops the query with that error.
//
// Rows the service found tampered with (ColumnMismatch) are dropped
// silently here; use QueryChecked to hear of them.
func (c *Client) Query(ctx context.Context, req *auditv1.QueryRequest, fn func(*auditv1.Event) error) error {
	return c.QueryChecked(ctx, req, fn, nil)
}

// QueryChecked is Query that also calls onMismatch (when not nil) for
// every stored row the service reports as disagreeing with the log: its
// database columns differ from the event they derive from (queries
// filtering on them miss it or match it wrongly), or the stored event is
// not the one the log's Merkle tree holds. Either means someone wrote to
// the audit database behind the service's back.
func (c *Client) QueryChecked(ctx context.Context, req *auditv1.QueryRequest, fn func(*auditv1.Event) error, onMismatch func(*auditv1.ColumnMismatch)) error {
	if req.GetPageSize() == 0 {
		req.PageSize = MaxPageSize
	}
	for {
		resp, err := c.rpc.Query(ctx, req)
		if err != nil {
			return err
		}
		if onMismatch != nil {
			for _, m := range resp.GetColumnMismatches() {
				onMismatch(m)
			}
		}
		for _, ev := range resp.GetEvents() {
			if err := fn(ev); err != nil {
				return err
			}
		}
		if resp.GetNextPageToken() == "" {
			return nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// Tail streams events from sequence from on (only of kinds, if any): first
// the stored ones, then new ones as they become durable, until ctx ends
// (which returns nil) or the stream fails.
func (c *Client) Tail(ctx context.Context, from uint64, kinds []auditv1.Kind, fn func(*auditv1.Event) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.rpc.Subscribe(ctx, &auditv1.SubscribeRequest{FromSequence: from, Kinds: kinds})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := fn(resp.GetEvent()); err != nil {
			return err
		}
	}
}

// ExportOptions tune Export.
type ExportOptions struct {
	// Verifier labels the bundle with the trusted key and lets Export
	// include the consistency proof from Kept. Optional.
	Verifier *checkpoint.Verifier
	// Kept is a signed checkpoint kept from an earlier run; when it is
	// older than the service's, the bundle carries it and the consistency
	// proof from it to the new checkpoint. Optional.
	Kept []byte
	// Progress, if set, is called with the number of events fetched so far
	// and the total.
	Progress func(done, total uint64)
	// OnMismatch, if set, hears of the stored rows the service reports
	// as tampered with (see QueryChecked); a bundle holds events only.
	OnMismatch func(*auditv1.ColumnMismatch)
}

// Export fetches the log from the service as a bundle: a freshly signed
// checkpoint, every event it covers (their exact leaf bytes) and, given a
// kept checkpoint, the consistency proof from the kept one to it. The
// bundle is not verified here: pass it to verify.Bundle with a key you
// trust.
func (c *Client) Export(ctx context.Context, opts ExportOptions) (*bundle.Bundle, error) {
	cp, err := c.rpc.GetCheckpoint(ctx, &auditv1.GetCheckpointRequest{})
	if err != nil {
		return nil, err
	}
	b := &bundle.Bundle{Origin: cp.GetOrigin()}
	if v := opts.Verifier; v != nil {
		b.PublicKey = v.PublicKey()
		if len(opts.Kept) > 0 {
			if k, err := v.Open(opts.Kept); err == nil && k.Size < cp.GetTreeSize() {
				p, err := c.rpc.GetConsistencyProof(ctx, &auditv1.GetConsistencyProofRequest{FirstSize: k.Size, SecondSize: cp.GetTreeSize()})
				if err != nil {
					return nil, err
				}
				b.Checkpoints = append(b.Checkpoints, opts.Kept)
				b.Proofs = append(b.Proofs, bundle.Proof{From: k.Size, To: cp.GetTreeSize(), Hashes: p.GetHashes()})
			}
		}
	}
	b.Checkpoints = append(b.Checkpoints, cp.GetSignedNote())
	// Events before first_sequence were archived and pruned: the bundle
	// starts after them, from the tree's start hashes there.
	b.First, b.Start = cp.GetFirstSequence(), cp.GetStartHashes()
	if b.First > cp.GetTreeSize() {
		return nil, fmt.Errorf("audit service: first_sequence %d is beyond its checkpoint's tree size %d", b.First, cp.GetTreeSize())
	}
	total := cp.GetTreeSize() - b.First
	errDone := errors.New("done")
	err = c.QueryChecked(ctx, &auditv1.QueryRequest{}, func(e *auditv1.Event) error {
		if uint64(len(b.Events)) == total {
			return errDone
		}
		data, err := leaf.Marshal(e)
		if err != nil {
			return fmt.Errorf("event %d: %w", e.GetSequence(), err)
		}
		b.Events = append(b.Events, data)
		if opts.Progress != nil {
			opts.Progress(uint64(len(b.Events)), total)
		}
		return nil
	}, opts.OnMismatch)
	if err != nil && !errors.Is(err, errDone) {
		return nil, err
	}
	return b, nil
}

// ErrArchiveDigest means the archive bytes received do not hash to the
// digest the service computed: the transfer was damaged or cut.
var ErrArchiveDigest = errors.New("archive: the bytes received do not match the service's SHA-256")

// Archive asks the service for the sealed range of the log from the first
// event it holds up to the signed checkpoint of size endSize (0: its
// latest) and writes the bundle file's bytes to w. It checks the bytes
// received against the service's digest and returns the summary (range,
// SHA-256, the audit event recording the archive). The file is not
// verified here: read it with bundle.Read and check it with verify.Bundle
// and a key you trust before pruning anything.
func (c *Client) Archive(ctx context.Context, endSize uint64, w io.Writer) (*auditv1.ArchiveSummary, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.rpc.Archive(ctx, &auditv1.ArchiveRequest{EndSize: endSize})
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("archive: the stream ended without a summary: %w", io.ErrUnexpectedEOF)
		}
		if err != nil {
			return nil, err
		}
		if sum := resp.GetSummary(); sum != nil {
			if !bytes.Equal(h.Sum(nil), sum.GetSha256()) {
				return nil, ErrArchiveDigest
			}
			return sum, nil
		}
		h.Write(resp.GetChunk())
		if _, err := w.Write(resp.GetChunk()); err != nil {
			return nil, err
		}
	}
}

// Prune asks the service to remove from its hot store the events of an
// archive it wrote (sum, from Archive), once the archive file has been
// verified. It returns the first sequence the store now holds and the
// sequence of the audit event recording the prune.
func (c *Client) Prune(ctx context.Context, sum *auditv1.ArchiveSummary) (*auditv1.PruneResponse, error) {
	return c.rpc.Prune(ctx, &auditv1.PruneRequest{FirstSequence: sum.GetFirstSequence(), EndSize: sum.GetEndSize(), Sha256: sum.GetSha256()})
}

// Checkpoints returns the service's stored signed checkpoints (one per
// commit batch) with fromSize <= tree size <= toSize, in size order.
func (c *Client) Checkpoints(ctx context.Context, fromSize, toSize uint64) ([][]byte, error) {
	var notes [][]byte
	for fromSize <= toSize {
		resp, err := c.rpc.ListCheckpoints(ctx, &auditv1.ListCheckpointsRequest{FromSize: fromSize, PageSize: MaxPageSize})
		if err != nil {
			return nil, err
		}
		cps := resp.GetCheckpoints()
		for _, cp := range cps {
			if cp.GetTreeSize() > toSize {
				return notes, nil
			}
			notes = append(notes, cp.GetSignedNote())
		}
		if len(cps) < MaxPageSize {
			break
		}
		next := cps[len(cps)-1].GetTreeSize() + 1
		if next <= fromSize {
			return nil, fmt.Errorf("list checkpoints: the service went backwards (from %d to %d)", fromSize, next)
		}
		fromSize = next
	}
	return notes, nil
}

// Verify verifies a bundle Export fetched from this service, as
// verify.Bundle does, and then pins a modified event to its commit batch:
// an export carries only the kept and the latest checkpoint, so when an
// event in between no longer hashes, Verify fetches the service's
// per-batch checkpoints of that span and verifies again with them.
func (c *Client) Verify(ctx context.Context, b *bundle.Bundle, opts verify.Options) (*verify.Report, error) {
	r := verify.Bundle(b, opts)
	for _, p := range r.Problems {
		if (p.Kind != verify.Modified && p.Kind != verify.Rollback) || p.End <= p.Sequence+1 {
			continue
		}
		notes, err := c.Checkpoints(ctx, p.Sequence+1, p.End)
		if err != nil {
			return nil, fmt.Errorf("fetch the checkpoints of sequences %d to %d: %w", p.Sequence, p.End-1, err)
		}
		narrowed := *b
		narrowed.Checkpoints = append(slices.Clone(b.Checkpoints), notes...)
		return verify.Bundle(&narrowed, opts), nil
	}
	return r, nil
}
