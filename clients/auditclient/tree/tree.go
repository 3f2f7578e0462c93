// Package tree is the in-memory RFC 6962 Merkle tree of the audit log.
//
// It keeps the hash of every complete (perfect) subtree, level by level, so
// that an append costs O(log n) hashes amortised (O(1) on average) and any
// root, inclusion proof or consistency proof for any tree size is read off
// the stored nodes in O(log n). Proof shapes come from
// github.com/transparency-dev/merkle/proof, so they verify with its
// verifiers. Memory is about 64 bytes per leaf.
//
// The log rebuilds a Tree from the store's leaves at start-up (which also
// re-verifies every stored event against the last signed checkpoint).
package tree

import (
	"errors"
	"fmt"
	"sync"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// HashSize is the size of every hash in the tree (SHA-256).
const HashSize = 32

// Hash is one node hash.
type Hash = [HashSize]byte

// ErrSize means a requested index or tree size is beyond the tree.
var ErrSize = errors.New("merkle tree: size out of range")

var hasher = rfc6962.DefaultHasher

// Tree is an append-only RFC 6962 Merkle tree. It is safe for concurrent
// use: one appender, many readers.
type Tree struct {
	mu     sync.RWMutex
	levels [][]Hash // levels[k][i] is the root of leaves [i<<k, (i+1)<<k)
}

// New returns an empty tree.
func New() *Tree { return &Tree{levels: [][]Hash{nil}} }

// Size returns the number of leaves.
func (t *Tree) Size() uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return uint64(len(t.levels[0]))
}

// Append adds leaf hashes (already hashed with the 0x00 leaf prefix).
func (t *Tree) Append(leaves ...Hash) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, leaf := range leaves {
		t.levels[0] = append(t.levels[0], leaf)
		// Complete every parent whose right child was just finished.
		for k := 0; len(t.levels[k])%2 == 0; k++ {
			n := len(t.levels[k])
			if k+1 == len(t.levels) {
				t.levels = append(t.levels, nil)
			}
			var p Hash
			copy(p[:], hasher.HashChildren(t.levels[k][n-2][:], t.levels[k][n-1][:]))
			t.levels[k+1] = append(t.levels[k+1], p)
		}
	}
}

// LeafHash returns the hash of leaf index.
func (t *Tree) LeafHash(index uint64) (Hash, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if index >= uint64(len(t.levels[0])) {
		return Hash{}, fmt.Errorf("leaf %d of %d: %w", index, len(t.levels[0]), ErrSize)
	}
	return t.levels[0][index], nil
}

// Root returns the root hash of the tree of the first size leaves.
func (t *Tree) Root(size uint64) ([]byte, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if size > uint64(len(t.levels[0])) {
		return nil, fmt.Errorf("root of size %d, tree has %d: %w", size, len(t.levels[0]), ErrSize)
	}
	return t.rootLocked(0, size), nil
}

// rootLocked is the RFC 6962 hash of leaves [begin, end), from stored
// perfect subtrees. begin must be a multiple of the largest subtree used
// (it is 0, or the start of a node id as proofs ask).
func (t *Tree) rootLocked(begin, end uint64) []byte {
	if begin == end {
		return hasher.EmptyRoot()
	}
	ids := compact.RangeNodes(begin, end, nil)
	h := t.node(ids[len(ids)-1])
	for i := len(ids) - 2; i >= 0; i-- {
		h = hasher.HashChildren(t.node(ids[i]), h)
	}
	return h
}

func (t *Tree) node(id compact.NodeID) []byte {
	h := t.levels[id.Level][id.Index]
	return h[:]
}

// Inclusion returns the audit path of leaf index in the tree of size
// leaves, as proof.VerifyInclusion expects.
func (t *Tree) Inclusion(index, size uint64) ([][]byte, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if size > uint64(len(t.levels[0])) || index >= size {
		return nil, fmt.Errorf("inclusion of %d in size %d, tree has %d: %w", index, size, len(t.levels[0]), ErrSize)
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, err
	}
	return t.fetch(nodes, size)
}

// Consistency returns the proof that the tree of size1 is a prefix of the
// tree of size2, as proof.VerifyConsistency expects.
func (t *Tree) Consistency(size1, size2 uint64) ([][]byte, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if size2 > uint64(len(t.levels[0])) || size1 > size2 {
		return nil, fmt.Errorf("consistency %d to %d, tree has %d: %w", size1, size2, len(t.levels[0]), ErrSize)
	}
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return t.fetch(nodes, size2)
}

// fetch reads the hashes of nodes; a node that is not a complete subtree of
// the tree of size (the "ephemeral" one on the right border) is computed.
func (t *Tree) fetch(nodes proof.Nodes, size uint64) ([][]byte, error) {
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		begin, end := id.Coverage()
		if end <= size {
			hashes[i] = t.node(id)
			continue
		}
		hashes[i] = t.rootLocked(begin, size)
	}
	return nodes.Rehash(hashes, hasher.HashChildren)
}
