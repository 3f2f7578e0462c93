package audit_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/memstore"
)

// TestVerifyStoreSegments: VerifyStore verifies a store segment by
// segment (bounded memory) with the same outcome as one segment: the same
// events, checkpoints, verified size and root on an intact store, and the
// same first problem for a modified event, a deleted one, an unsigned
// tail, a rollback against a kept checkpoint, and a pruned store checked
// against a kept checkpoint from before its first event.
func TestVerifyStoreSegments(t *testing.T) {
	ctx := context.Background()
	signer := audittest.NewSigner(t)
	key := signer.Verifier()
	build := func(t *testing.T) (*memstore.Store, []byte) {
		store := memstore.New()
		l := audittest.OpenLog(t, store, audit.WithSigner(signer), audit.WithGroupCommit(audit.MaxBatch, 0, 0, 0))
		appendBatches(t, l, "v", 28, 50) // 1400 events, a checkpoint every 50
		cp, err := l.LatestCheckpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		return store, cp.Note
	}
	other := func(seq uint64) []byte {
		e := event("forged")
		e.Sequence = seq
		b, err := leaf.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	type outcome struct {
		ok               bool
		problem          string
		events, verified uint64
		checkpoints      int
		root             string
	}
	run := func(t *testing.T, store audit.Store, kept []byte, segment uint64) outcome {
		t.Helper()
		defer audit.SetVerifySegment(segment)()
		r, err := audit.VerifyStore(ctx, store, key, kept)
		if err != nil {
			t.Fatalf("VerifyStore (segment %d): %v", segment, err)
		}
		o := outcome{ok: r.OK(), events: r.Events, verified: r.VerifiedSize, checkpoints: r.Checkpoints, root: fmt.Sprintf("%x", r.Root)}
		if r.Problem != nil {
			o.problem = fmt.Sprintf("%s@%d..%d", r.Problem.Kind, r.Problem.Sequence, r.Problem.End)
		}
		return o
	}
	for _, tc := range []struct {
		name string
		edit func(d *memstore.Data)
		kept func(latest []byte) []byte
		want string // the first problem ("" for none)
	}{
		{name: "intact"},
		{name: "modified", edit: func(d *memstore.Data) { d.Rows[777].Data = other(777) }, want: "modified@750..800"},
		{name: "deleted", edit: func(d *memstore.Data) { d.Rows = append(d.Rows[:300:300], d.Rows[301:]...) }, want: "missing@300..301"},
		{name: "unsigned-tail", edit: func(d *memstore.Data) {
			d.Rows = append(d.Rows, audit.Row{Sequence: 1400, Data: other(1400)})
		}, want: "unsigned@1400..1401"},
		{name: "rollback", edit: func(d *memstore.Data) {
			d.Rows, d.Checkpoints = d.Rows[:1300], d.Checkpoints[:26]
		}, kept: func(latest []byte) []byte { return latest }, want: "rollback@1300..0"},
		{name: "kept", kept: func(latest []byte) []byte { return latest }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, latest := build(t)
			if tc.edit != nil {
				store.Mutate(tc.edit)
			}
			var kept []byte
			if tc.kept != nil {
				kept = tc.kept(latest)
			}
			whole := run(t, store, kept, 1<<30)
			for _, seg := range []uint64{1, 100, 333} {
				if got := run(t, store, kept, seg); got != whole {
					t.Errorf("segments of %d: %+v; in one: %+v", seg, got, whole)
				}
			}
			if whole.problem != tc.want {
				t.Errorf("problem = %q, want %q", whole.problem, tc.want)
			}
			if tc.want == "" && (whole.events != 1400 || whole.verified != 1400 || whole.checkpoints != 28) {
				t.Errorf("intact store: %+v", whole)
			}
		})
	}
	t.Run("pruned/kept-before-first", func(t *testing.T) {
		store := memstore.New()
		l := audittest.OpenLog(t, store, audit.WithSigner(signer), audit.WithGroupCommit(audit.MaxBatch, 0, 0, 0))
		appendBatches(t, l, "p", 14, 50)
		old, err := l.LatestCheckpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		appendBatches(t, l, "q", 14, 50)
		info, _ := archiveOf(t, l, 1000)
		if _, err := l.Prune(ctx, "operator", 0, 1000, info.SHA256); err != nil {
			t.Fatal(err)
		}
		l.Close()
		for _, seg := range []uint64{1 << 30, 100} {
			defer audit.SetVerifySegment(seg)()
			r, err := audit.VerifyStore(ctx, store, key, old.Note)
			if err != nil || !r.OK() || r.First != 1000 || r.Problem != nil {
				t.Fatalf("VerifyStore of a pruned store with a kept checkpoint of size %d (segment %d): %v, %+v", old.Size, seg, err, r.Problem)
			}
			if r.VerifiedSize < 1400 {
				t.Errorf("verified size %d", r.VerifiedSize)
			}
		}
	})
}
