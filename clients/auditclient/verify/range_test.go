package verify_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/clients/auditclient/tree"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// testLog is a signed log of n events with a checkpoint every `every`
// events, from which range bundles are cut as the audit service cuts
// archives.
type testLog struct {
	signer *checkpoint.Signer
	leaves [][]byte
	tree   *tree.Tree
	notes  map[uint64][]byte
}

func newTestLog(t *testing.T, n, every uint64) *testLog {
	t.Helper()
	skey, _, err := checkpoint.GenerateKey("range.test/audit")
	if err != nil {
		t.Fatal(err)
	}
	s, err := checkpoint.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	l := &testLog{signer: s, tree: tree.New(), notes: map[uint64][]byte{}}
	for i := range n {
		e := &auditv1.Event{Sequence: i, Id: fmt.Sprintf("e-%d", i), Time: timestamppb.Now(), Kind: auditv1.Kind_KIND_AUDIT_ADMIN, Decision: auditv1.Decision_DECISION_ALLOW}
		b, err := leaf.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		l.leaves = append(l.leaves, b)
		l.tree.Append(leaf.Hash(b))
		if size := i + 1; size%every == 0 || size == n {
			root, _ := l.tree.Root(size)
			note, err := s.Sign(size, root)
			if err != nil {
				t.Fatal(err)
			}
			l.notes[size] = note
		}
	}
	return l
}

// cut returns the bundle of events [first, end) with every checkpoint of
// a size in [first, end] and the consistency proofs between them.
func (l *testLog) cut(t *testing.T, first, end uint64) *bundle.Bundle {
	t.Helper()
	b := &bundle.Bundle{Origin: l.signer.Origin(), PublicKey: l.signer.PublicKey(), First: first, Events: l.leaves[first:end]}
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	cr := rf.NewEmptyRange(0)
	for i := range first {
		h := leaf.Hash(l.leaves[i])
		cr.Append(h[:], nil)
	}
	b.Start = cr.Hashes()
	var prev uint64
	for size := first; size <= end; size++ {
		if note, ok := l.notes[size]; ok {
			b.Checkpoints = append(b.Checkpoints, note)
			if prev > 0 {
				p, _ := l.tree.Consistency(prev, size)
				b.Proofs = append(b.Proofs, bundle.Proof{From: prev, To: size, Hashes: p})
			}
			prev = size
		}
	}
	// Round-trip through the file format, as an archive file would.
	var buf bytes.Buffer
	if err := b.Write(&buf); err != nil {
		t.Fatal(err)
	}
	got, err := bundle.Read(&buf)
	if err != nil {
		t.Fatalf("read back range bundle: %v", err)
	}
	return got
}

func TestRangeBundles(t *testing.T) {
	l := newTestLog(t, 1000, 100)
	key := l.signer.Verifier()
	for _, tc := range []struct {
		name        string
		first, end  uint64
		sealed      bool
		unsigned    uint64
		wantProblem verify.ProblemKind
	}{
		{name: "ok/whole", first: 0, end: 1000, sealed: true},
		{name: "ok/archive-from-0", first: 0, end: 300, sealed: true},
		{name: "ok/archive-middle", first: 300, end: 700, sealed: true},
		{name: "ok/tail", first: 700, end: 1000, sealed: true},
		// Events after the last checkpoint are reported, not passed.
		{name: "unsigned/unsealed-end", first: 300, end: 750, wantProblem: verify.Unsigned},
		{name: "ok/start-not-at-checkpoint", first: 350, end: 700, sealed: true},
		{name: "unverified/no-checkpoint-after-start", first: 310, end: 390, wantProblem: verify.Unverified},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := l.cut(t, tc.first, tc.end)
			if tc.first > 0 && b.First != tc.first {
				t.Fatalf("First = %d after round trip", b.First)
			}
			r := verify.Bundle(b, verify.Options{Key: key, KeepEvents: true})
			if tc.wantProblem != "" {
				if r.OK() || r.Problem.Kind != tc.wantProblem {
					t.Fatalf("problem = %v, want %s", r.Problem, tc.wantProblem)
				}
				return
			}
			if !r.OK() {
				t.Fatalf("does not verify: %s", r.Problem)
			}
			if r.Sealed != tc.sealed || r.Unsigned != tc.unsigned || r.First != tc.first || len(r.DecodedEvents) != int(tc.end-tc.first) {
				t.Fatalf("sealed %v unsigned %d first %d decoded %d, want %v %d %d %d", r.Sealed, r.Unsigned, r.First, len(r.DecodedEvents), tc.sealed, tc.unsigned, tc.first, tc.end-tc.first)
			}
		})
	}
}

func TestRangeBundleTampering(t *testing.T) {
	l := newTestLog(t, 1000, 100)
	key := l.signer.Verifier()
	for _, tc := range []struct {
		name   string
		tamper func(b *bundle.Bundle)
		kind   verify.ProblemKind
		seq    uint64
	}{
		{"start-hash", func(b *bundle.Bundle) { b.Start[0] = bytes.Repeat([]byte{1}, 32) }, verify.BadStart, 300},
		{"start-count", func(b *bundle.Bundle) { b.Start = b.Start[1:] }, verify.BadStart, 300},
		{"event-modified", func(b *bundle.Bundle) {
			e := &auditv1.Event{Sequence: 450, Id: "forged"}
			b.Events[150], _ = leaf.Marshal(e)
		}, verify.Modified, 400},
		{"event-missing", func(b *bundle.Bundle) { b.Events = append(b.Events[:10:10], b.Events[11:]...) }, verify.Missing, 310},
		{"first-shifted", func(b *bundle.Bundle) { b.First = 301 }, verify.BadStart, 301},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := l.cut(t, 300, 700)
			tc.tamper(b)
			r := verify.Bundle(b, verify.Options{Key: key})
			if r.OK() || r.Problem.Kind != tc.kind || r.Problem.Sequence != tc.seq {
				t.Fatalf("problem = %v, want %s at %d", r.Problem, tc.kind, tc.seq)
			}
		})
	}
}

func TestKeptCheckpointBeforeRange(t *testing.T) {
	l := newTestLog(t, 1000, 100)
	key := l.signer.Verifier()
	b := l.cut(t, 700, 1000)
	t.Run("no-proof", func(t *testing.T) {
		r := verify.Bundle(b, verify.Options{Key: key, Trusted: l.notes[200]})
		if r.OK() || r.Problem.Kind != verify.Unverified {
			t.Fatalf("problem = %v, want unverified", r.Problem)
		}
	})
	t.Run("with-proof", func(t *testing.T) {
		p, _ := l.tree.Consistency(200, 1000)
		b2 := *b
		b2.Checkpoints = append([][]byte{l.notes[200]}, b.Checkpoints...)
		b2.Proofs = append(b2.Proofs, bundle.Proof{From: 200, To: 1000, Hashes: p})
		r := verify.Bundle(&b2, verify.Options{Key: key, Trusted: l.notes[200]})
		if !r.OK() {
			t.Fatalf("does not verify: %s", r.Problem)
		}
	})
	t.Run("forked-kept", func(t *testing.T) {
		other := newTestLog(t, 300, 100) // another history, same origin, other key: sign with l's key
		root, _ := other.tree.Root(200)
		forged, err := l.signer.Sign(200, root)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := l.tree.Consistency(200, 1000)
		b2 := *b
		b2.Proofs = append(b2.Proofs, bundle.Proof{From: 200, To: 1000, Hashes: p})
		r := verify.Bundle(&b2, verify.Options{Key: key, Trusted: forged})
		if r.OK() || r.Problem.Kind != verify.Rollback {
			t.Fatalf("problem = %v, want rollback", r.Problem)
		}
	})
}

func TestChain(t *testing.T) {
	l := newTestLog(t, 1000, 100)
	key := l.signer.Verifier()
	v := func(first, end uint64) *verify.Report {
		return verify.Bundle(l.cut(t, first, end), verify.Options{Key: key})
	}
	if p := verify.Chain([]*verify.Report{v(0, 300), v(300, 700), v(700, 1000)}); p != nil {
		t.Fatalf("chain of archives and tail: %s", p)
	}
	if p := verify.Chain([]*verify.Report{v(0, 300), v(400, 1000)}); p == nil || p.Kind != verify.Missing || p.Sequence != 300 {
		t.Fatalf("gap: %v", p)
	}
	if p := verify.Chain([]*verify.Report{v(0, 400), v(300, 1000)}); p == nil || p.Kind != verify.Inconsistent {
		t.Fatalf("overlap: %v", p)
	}
	// A range of another log with the same key and sizes does not chain.
	other := newTestLog(t, 1000, 100)
	ob := other.cut(t, 300, 1000)
	// Re-sign the other log's checkpoints with l's key, as a forger with
	// the key would.
	ob.Checkpoints = nil
	for size := uint64(300); size <= 1000; size += 100 {
		root, _ := other.tree.Root(size)
		note, _ := l.signer.Sign(size, root)
		ob.Checkpoints = append(ob.Checkpoints, note)
	}
	ob.Proofs = nil
	r := verify.Bundle(ob, verify.Options{Key: key})
	if !r.OK() {
		t.Fatalf("forged range does not verify alone: %s", r.Problem)
	}
	if p := verify.Chain([]*verify.Report{v(0, 300), r}); p == nil || p.Kind != verify.Inconsistent {
		t.Fatalf("forked continuation: %v", p)
	}
}
