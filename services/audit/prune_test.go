package audit_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/memstore"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// appendBatches appends n batches of size events (one commit batch, one
// signed checkpoint each).
func appendBatches(t *testing.T, l *audit.Log, prefix string, n, size int) {
	t.Helper()
	for b := range n {
		evs := make([]*auditv1.Event, size)
		for i := range evs {
			evs[i] = event(fmt.Sprintf("%s-%d-%d", prefix, b, i))
		}
		if _, err := l.Append(context.Background(), broker, evs); err != nil {
			t.Fatal(err)
		}
	}
}

func archiveOf(t *testing.T, l *audit.Log, end uint64) (audit.ArchiveInfo, []byte) {
	t.Helper()
	var file bytes.Buffer
	info, _, err := l.Archive(context.Background(), "operator", end, &file)
	if err != nil {
		t.Fatalf("Archive(%d): %v", end, err)
	}
	return info, file.Bytes()
}

func verifyFile(t *testing.T, file []byte, opts verify.Options) *verify.Report {
	t.Helper()
	b, err := bundle.Read(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	r := verify.Bundle(b, opts)
	if !r.OK() {
		t.Fatalf("bundle does not verify: %v", r.Problem)
	}
	return r
}

func wantCode(t *testing.T, what string, err error, code domainerr.Code, contains string) {
	t.Helper()
	if domainerr.CodeOf(err) != code || !strings.Contains(fmt.Sprint(err), contains) {
		t.Errorf("%s = %v, want %s naming %q", what, err, code, contains)
	}
}

// TestPruneArchived: archive a sealed range, refuse every prune that is
// not exactly that archive, prune it (recorded in the log first), then the
// log serves from the archive's end, proofs work for every size, the
// archive and the live log verify as one chain and hold the same events
// as before, and the store restarts (bounded and in full) after it.
func TestPruneArchived(t *testing.T) {
	ctx := context.Background()
	store := memstore.New()
	signer := audittest.NewSigner(t)
	key := signer.Verifier()
	l := audittest.OpenLog(t, store, audit.WithSigner(signer), audit.WithGroupCommit(audit.MaxBatch, 0, 0, 0))
	appendBatches(t, l, "a", 14, 50) // checkpoints every 50 events, to 700
	info, file := archiveOf(t, l, 600)
	before, _, err := audit.ExportBundle(ctx, store, key.Origin(), key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}

	// Only the exact archive the log recorded is pruned.
	bad := bytes.Clone(info.SHA256)
	bad[0] ^= 1
	for _, tc := range []struct {
		name       string
		first, end uint64
		sum        []byte
		code       domainerr.Code
		names      string
	}{
		{"other-digest", 0, 600, bad, domainerr.FailedPrecondition, "no archive of events 0 to 599"},
		{"not-archived-end", 0, 550, info.SHA256, domainerr.FailedPrecondition, "no archive of events 0 to 549"},
		{"not-first", 50, 600, info.SHA256, domainerr.FailedPrecondition, "first_sequence"},
		{"beyond-checkpoint", 0, 10000, info.SHA256, domainerr.FailedPrecondition, "beyond the latest signed checkpoint"},
		{"empty-range", 0, 0, info.SHA256, domainerr.Invalid, "end_size"},
		{"short-digest", 0, 600, info.SHA256[:5], domainerr.Invalid, "sha256"},
	} {
		_, err := l.Prune(ctx, "operator", tc.first, tc.end, tc.sum)
		wantCode(t, tc.name, err, tc.code, tc.names)
	}
	if l.FirstSequence() != 0 {
		t.Fatal("a refused prune pruned")
	}

	res, err := l.Prune(ctx, "operator", 0, 600, info.SHA256)
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if res.First != 600 || res.Base != 550 || l.FirstSequence() != 600 {
		t.Fatalf("Prune = %+v, first %d; want first 600, base 550 (the last checkpoint with a compact range)", res, l.FirstSequence())
	}
	rows, _ := store.ReadRows(ctx, 0, 1)
	if len(rows) != 1 || rows[0].Sequence != 512 {
		t.Fatalf("the store's first row is %v, want 512 (the edge of the tree at the base)", rows)
	}
	// The prune is in the log, after the archive event.
	page, err := l.Query(ctx, audit.Filter{Kinds: []auditv1.Kind{auditv1.Kind_KIND_AUDIT_ADMIN}})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range page.Events {
		actions = append(actions, e.GetAdmin().GetAction())
		if e.GetAdmin().GetAction() == audit.ActionPrune && (e.GetSequence() != res.Sequence || e.GetActor().GetPrincipal() != "operator" || !strings.Contains(e.GetReason(), fmt.Sprintf("%x", info.SHA256))) {
			t.Errorf("prune event %v", e)
		}
	}
	if strings.Join(actions, ",") != "archive,prune" {
		t.Errorf("admin events after the prune: %v, want archive,prune", actions)
	}
	// Queries cover the events from 600 on; a tail from below fails,
	// naming the archive.
	page, err = l.Query(ctx, audit.Filter{PageSize: 1})
	if err != nil || len(page.Events) != 1 || page.Events[0].GetSequence() != 600 {
		t.Fatalf("Query after the prune = %v, %v; want event 600 first", page.Events, err)
	}
	err = l.Subscribe(ctx, 599, nil, func(*auditv1.Event) error { return nil })
	wantCode(t, "Subscribe from a pruned sequence", err, domainerr.FailedPrecondition, "archive bundle")
	// The same archive is not pruned twice.
	_, err = l.Prune(ctx, "operator", 0, 600, info.SHA256)
	wantCode(t, "second Prune", err, domainerr.FailedPrecondition, "first_sequence")

	// Proofs: inclusion of a pruned event and a later one, consistency
	// from a pruned size, against the latest signed root.
	cp, err := l.LatestCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{3, 599, 650} {
		lh, path, size, err := l.InclusionProof(ctx, seq, 0)
		if err != nil {
			t.Fatalf("InclusionProof(%d): %v", seq, err)
		}
		want := leaf.Hash(before.Events[seq])
		if !bytes.Equal(lh, want[:]) || proof.VerifyInclusion(rfc6962.DefaultHasher, seq, size, lh, path, cp.Root) != nil {
			t.Errorf("inclusion proof of %d does not verify", seq)
		}
	}
	for _, size := range []uint64{100, 600} {
		hs, second, err := l.ConsistencyProof(ctx, size, 0)
		if err != nil {
			t.Fatal(err)
		}
		old, err := rootOf(before, size)
		if err != nil {
			t.Fatal(err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, size, second, hs, old, cp.Root); err != nil {
			t.Errorf("consistency proof %d -> %d: %v", size, second, err)
		}
	}

	// The archive and the rest of the log, archived next, form one chain
	// holding the events of the log before the prune; so does the
	// forensic export of the pruned store.
	appendBatches(t, l, "b", 2, 50)
	info2, file2 := archiveOf(t, l, 0)
	if info2.First != 600 {
		t.Fatalf("the next archive starts at %d, want 600", info2.First)
	}
	r1 := verifyFile(t, file, verify.Options{Key: key, KeepEvents: true})
	r2 := verifyFile(t, file2, verify.Options{Key: key, KeepEvents: true})
	if p := verify.Chain([]*verify.Report{r1, r2}); p != nil {
		t.Fatalf("archive + next archive: %v", p)
	}
	var joined []*auditv1.Event
	joined = append(append(joined, r1.DecodedEvents...), r2.DecodedEvents...)
	for i, data := range before.Events {
		got, _ := leaf.Marshal(joined[i])
		if !bytes.Equal(got, data) {
			t.Fatalf("event %d across the archives differs from the log before the prune", i)
		}
	}
	exported, _, err := audit.ExportBundle(ctx, store, key.Origin(), key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	rx := verify.Bundle(exported, verify.Options{Key: key})
	if !rx.OK() || rx.First != 600 {
		t.Fatalf("export of the pruned store: first %d, %v", rx.First, rx.Problem)
	}
	if p := verify.Chain([]*verify.Report{r1, rx}); p != nil {
		t.Fatalf("archive + export of the pruned store: %v", p)
	}
	vr, err := audit.VerifyStore(ctx, store, key, nil)
	if err != nil || !vr.OK() {
		t.Fatalf("VerifyStore of the pruned store: %v, %v", err, vr.Problem)
	}

	// Restart: bounded, then in full (from the prune base).
	size := l.Size()
	l.Close()
	for _, opts := range [][]audit.Option{nil, {audit.WithFullVerification()}} {
		l2 := audittest.OpenLog(t, store.Reopen(), append(opts, audit.WithSigner(signer))...)
		if l2.Size() != size || l2.FirstSequence() != 600 {
			t.Fatalf("after restart (%d options): size %d, first %d; want %d, 600", len(opts), l2.Size(), l2.FirstSequence(), size)
		}
		if len(opts) > 0 && l2.OpenInfo().Loaded != 550 {
			t.Errorf("full verification loaded the tree at %d, want the prune base 550", l2.OpenInfo().Loaded)
		}
		appendBatches(t, l2, fmt.Sprintf("c%d", len(opts)), 1, 10)
		size += 10
		l2.Close()
	}
}

// rootOf is the root of the first size events of b.
func rootOf(b *bundle.Bundle, size uint64) ([]byte, error) {
	hs := make([][]byte, size)
	for i := range size {
		h := leaf.Hash(b.Events[i])
		hs[i] = h[:]
	}
	return rootHashes(hs), nil
}

func rootHashes(hs [][]byte) []byte {
	h := rfc6962.DefaultHasher
	switch len(hs) {
	case 0:
		return h.EmptyRoot()
	case 1:
		return hs[0]
	}
	k := 1
	for k*2 < len(hs) {
		k *= 2
	}
	return h.HashChildren(rootHashes(hs[:k]), rootHashes(hs[k:]))
}

// TestPruneBehindTheLogsBack: a database writer who deletes old events
// and records a prune the log never made is refused by a full
// verification, naming the pruned end.
func TestPruneBehindTheLogsBack(t *testing.T) {
	store := memstore.New()
	signer := audittest.NewSigner(t)
	l := audittest.OpenLog(t, store, audit.WithSigner(signer), audit.WithGroupCommit(audit.MaxBatch, 0, 0, 0))
	appendBatches(t, l, "a", 14, 50)
	l.Close()
	store.Mutate(func(d *memstore.Data) {
		d.Pruned = audit.PruneState{End: 600, Base: 550}
		d.Rows = d.Rows[512:]
	})
	_, err := audit.Open(context.Background(), store.Reopen(), audit.WithSigner(signer), audit.WithFullVerification())
	f, ok := audit.FirstFinding(err)
	if !ok || f.Sequence != 600 || !strings.Contains(f.What, "no prune the log recorded") {
		t.Fatalf("full verification of a store pruned behind the log's back = %v", err)
	}
}
