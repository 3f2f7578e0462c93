package tree_test

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/credmatrix/credmatrix/clients/auditclient/tree"
)

func leaf(i uint64) tree.Hash {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], i)
	var h tree.Hash
	copy(h[:], rfc6962.DefaultHasher.HashLeaf(b[:]))
	_ = sha256.Size
	return h
}

// reference computes roots with the library's compact range, independently
// of Tree's stored nodes.
func reference(t *testing.T, n uint64) []byte {
	t.Helper()
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	for i := range n {
		h := leaf(i)
		if err := r.Append(h[:], nil); err != nil {
			t.Fatal(err)
		}
	}
	if n == 0 {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func TestRootsAndProofs(t *testing.T) {
	const max = 70
	tr := tree.New()
	roots := [][]byte{reference(t, 0)}
	for i := range uint64(max) {
		tr.Append(leaf(i))
		roots = append(roots, reference(t, i+1))
	}
	h := rfc6962.DefaultHasher
	for size := uint64(0); size <= max; size++ {
		got, err := tr.Root(size)
		if err != nil {
			t.Fatalf("Root(%d): %v", size, err)
		}
		if diff := cmp.Diff(got, roots[size]); diff != "" {
			t.Fatalf("Root(%d) (-got +want):\n%s", size, diff)
		}
		for i := range size {
			p, err := tr.Inclusion(i, size)
			if err != nil {
				t.Fatalf("Inclusion(%d, %d): %v", i, size, err)
			}
			l := leaf(i)
			if err := proof.VerifyInclusion(h, i, size, l[:], p, roots[size]); err != nil {
				t.Fatalf("VerifyInclusion(%d, %d): %v", i, size, err)
			}
		}
		for s1 := uint64(1); s1 <= size; s1++ {
			p, err := tr.Consistency(s1, size)
			if err != nil {
				t.Fatalf("Consistency(%d, %d): %v", s1, size, err)
			}
			if err := proof.VerifyConsistency(h, s1, size, p, roots[s1], roots[size]); err != nil {
				t.Fatalf("VerifyConsistency(%d, %d): %v", s1, size, err)
			}
		}
	}
}

func TestOutOfRange(t *testing.T) {
	tr := tree.New()
	tr.Append(leaf(0), leaf(1))
	for name, err := range map[string]error{
		"root":              func() error { _, err := tr.Root(3); return err }(),
		"inclusion/size":    func() error { _, err := tr.Inclusion(0, 3); return err }(),
		"inclusion/leaf":    func() error { _, err := tr.Inclusion(2, 2); return err }(),
		"consistency":       func() error { _, err := tr.Consistency(1, 3); return err }(),
		"consistency/order": func() error { _, err := tr.Consistency(2, 1); return err }(),
		"leaf":              func() error { _, err := tr.LeafHash(2); return err }(),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func BenchmarkAppend(b *testing.B) {
	tr := tree.New()
	l := leaf(1)
	for b.Loop() {
		tr.Append(l)
	}
}
