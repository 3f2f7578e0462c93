package grpcapi_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/clients/auditclient"
	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/replay"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// TestArchive: an operator's Archive streams a bundle file that verifies
// offline with the log's key alone, sealed at the checkpoint asked for,
// whose digest matches the summary, and replays; the archive is recorded
// in the log; other callers are refused; an end that is not a checkpoint
// is InvalidArgument.
func TestArchive(t *testing.T) {
	f := secured(t)
	ctx := as(broker)
	var sizes []uint64
	for b := range 40 {
		var evs []*auditv1.Event
		for i := range 30 {
			evs = append(evs, event(fmt.Sprintf("arch-%d-%d", b, i), auditv1.Kind_KIND_KEY_ENCRYPT))
		}
		res, err := f.client.Append(ctx, &auditv1.AppendRequest{Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, res.GetResults()[len(evs)-1].GetSequence()+1)
	}
	client := auditclient.New(f.conn)
	for _, end := range []uint64{sizes[20], 0} {
		t.Run(fmt.Sprint(end), func(t *testing.T) {
			var file bytes.Buffer
			sum, err := client.Archive(as(operator), end, &file)
			if err != nil {
				t.Fatalf("Archive: %v", err)
			}
			if d := sha256.Sum256(file.Bytes()); !bytes.Equal(d[:], sum.GetSha256()) {
				t.Fatal("the summary's SHA-256 is not the file's")
			}
			b, err := bundle.Read(&file)
			if err != nil {
				t.Fatal(err)
			}
			r := verify.Bundle(b, verify.Options{Key: f.signer.Verifier(), KeepEvents: true})
			wantEnd := end
			if end == 0 {
				wantEnd = sum.GetEndSize()
			}
			if !r.OK() || !r.Sealed || r.First != 0 || r.Events != wantEnd || sum.GetEndSize() != wantEnd {
				t.Fatalf("archive: ok %v (%v), sealed %v, events %d, summary end %d; want %d", r.OK(), r.Problem, r.Sealed, r.Events, sum.GetEndSize(), wantEnd)
			}
			rp := replay.New()
			for _, e := range r.DecodedEvents {
				rp.Apply(e)
			}
			if rp.Events() != int(wantEnd) {
				t.Fatalf("replayed %d events, want %d", rp.Events(), wantEnd)
			}
			// The archive is recorded in the log.
			resp, err := f.client.Query(as(operator), &auditv1.QueryRequest{Kinds: []auditv1.Kind{auditv1.Kind_KIND_AUDIT_ADMIN}})
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, e := range resp.GetEvents() {
				if e.GetSequence() == sum.GetAuditSequence() && e.GetAdmin().GetAction() == "archive" && strings.Contains(e.GetReason(), fmt.Sprintf("%x", sum.GetSha256())) {
					found = true
				}
			}
			if !found {
				t.Fatalf("no archive event at sequence %d naming the digest", sum.GetAuditSequence())
			}
		})
	}
	t.Run("deny/broker", func(t *testing.T) {
		if _, err := client.Archive(as(broker), 0, &bytes.Buffer{}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Archive by the broker = %v, want PermissionDenied", err)
		}
	})
	t.Run("invalid/not-a-checkpoint", func(t *testing.T) {
		if _, err := client.Archive(as(operator), sizes[3]-1, &bytes.Buffer{}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("Archive to a size without a checkpoint = %v, want InvalidArgument", err)
		}
	})
}

// TestPrune: through gRPC, only operators prune, only the archive the log
// recorded; after it GetCheckpoint names the first sequence and the start
// hashes, an export (auditclient.Export) starts there and chains with the
// archive, a tail from a pruned sequence is FailedPrecondition naming the
// archive, and proofs keep working.
func TestPrune(t *testing.T) {
	f := secured(t)
	ctx := as(broker)
	for b := range 20 {
		var evs []*auditv1.Event
		for i := range 30 {
			evs = append(evs, event(fmt.Sprintf("prune-%d-%d", b, i), auditv1.Kind_KIND_KEY_ENCRYPT))
		}
		if _, err := f.client.Append(ctx, &auditv1.AppendRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	client := auditclient.New(f.conn)
	var file bytes.Buffer
	sum, err := client.Archive(as(operator), 300, &file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Prune(as(broker), sum); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Prune by the broker = %v, want PermissionDenied", err)
	}
	bad := &auditv1.ArchiveSummary{FirstSequence: 0, EndSize: 300, Sha256: bytes.Repeat([]byte{1}, 32)}
	if _, err := client.Prune(as(operator), bad); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Prune of an archive the log did not record = %v, want FailedPrecondition", err)
	}
	if _, err := f.client.Prune(as(operator), &auditv1.PruneRequest{EndSize: 300, Sha256: []byte("short")}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Prune with a short digest = %v, want InvalidArgument", err)
	}
	res, err := client.Prune(as(operator), sum)
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if res.GetFirstSequence() != 300 || res.GetAuditSequence() <= sum.GetAuditSequence() {
		t.Fatalf("Prune = %v", res)
	}
	cp, err := f.client.GetCheckpoint(as(operator), &auditv1.GetCheckpointRequest{})
	if err != nil || cp.GetFirstSequence() != 300 || len(cp.GetStartHashes()) == 0 {
		t.Fatalf("GetCheckpoint after the prune = first %d, %d start hashes, %v", cp.GetFirstSequence(), len(cp.GetStartHashes()), err)
	}
	b, err := client.Export(as(operator), auditclient.ExportOptions{Verifier: f.signer.Verifier()})
	if err != nil {
		t.Fatal(err)
	}
	live := verify.Bundle(b, verify.Options{Key: f.signer.Verifier()})
	archived, err := bundle.Read(&file)
	if err != nil {
		t.Fatal(err)
	}
	arch := verify.Bundle(archived, verify.Options{Key: f.signer.Verifier()})
	if !live.OK() || live.First != 300 || live.VerifiedSize != cp.GetTreeSize() {
		t.Fatalf("export after the prune: first %d, verified to %d, %v", live.First, live.VerifiedSize, live.Problem)
	}
	if p := verify.Chain([]*verify.Report{arch, live}); p != nil {
		t.Fatalf("archive + export after the prune: %v", p)
	}
	stream, err := f.client.Subscribe(as(operator), &auditv1.SubscribeRequest{FromSequence: 10})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "archive bundle") {
		t.Fatalf("Subscribe from a pruned sequence = %v, want FailedPrecondition naming the archive", err)
	}
	if _, err := f.client.GetInclusionProof(as(operator), &auditv1.GetInclusionProofRequest{Sequence: 10}); err != nil {
		t.Fatalf("inclusion proof of a pruned event: %v", err)
	}
	if _, err := f.client.GetConsistencyProof(as(operator), &auditv1.GetConsistencyProofRequest{FirstSize: 30}); err != nil {
		t.Fatalf("consistency proof from a pruned size: %v", err)
	}
}
