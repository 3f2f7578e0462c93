// Package tiles keeps the audit log's RFC 6962 Merkle tree in the store
// instead of in memory, so that the service's memory and start-up time do
// not grow with the log.
//
// The node hashes are stored as tiles in the C2SP tlog-tiles layout (the
// one Tessera uses): a tile of level L and index N holds up to 256 hashes
// of tree level 8L, the nodes N*256 to N*256+255 of that level, from which
// the 8 tree levels above them are recomputed on demand. Level-0 tiles
// hold the leaf hashes. Every tile is full (256 hashes, immutable) except
// the right-edge tile of each level, which grows until it is full.
//
// A Tree holds in memory only what the store cannot answer: the right-edge
// tile of each level (at most 255 hashes per level, a few levels: O(log n)),
// the compact range of the whole tree, and a fixed-size cache of stored
// tiles. Only full tiles are ever stored: they are written in the same
// store transaction as the events that complete them (Stage, then Commit
// once the store says durable), so the stored tiles, events and checkpoints
// never disagree after a crash. Load rebuilds the right edge from the full
// tiles of the level below and the last (at most 255) leaf hashes.
// Inclusion and consistency proofs read the tiles they need from the store
// (a proof at 10 million leaves reads two tiles).
//
// Nothing here trusts the store: a Tree never computes a root from stored
// tiles for signing (roots of new checkpoints come from its compact range,
// which the caller checks against a signed root after Load), and proofs
// built from tampered tiles fail verification against a signed root.
package tiles

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

const (
	// Height is the number of tree levels one tile spans (C2SP tlog-tiles).
	Height = 8
	// Width is the number of hashes in a full tile.
	Width = 1 << Height
	// HashSize is the size of a node hash (SHA-256).
	HashSize = sha256.Size
	// FullBytes is the size of a full tile's hashes.
	FullBytes = Width * HashSize
)

// Hash is one node hash.
type Hash = [HashSize]byte

// ID names a tile: Level is the tile level (tree level Level*Height),
// Index the tile's position in that level.
type ID struct {
	Level uint64
	Index uint64
}

// String is "tile L/N".
func (id ID) String() string { return fmt.Sprintf("tile %d/%d", id.Level, id.Index) }

// Tile is a tile's content: the concatenated hashes (HashSize bytes each)
// of its first Width() nodes.
type Tile struct {
	ID     ID
	Hashes []byte
}

// Width is the number of hashes the tile holds.
func (t Tile) Width() int { return len(t.Hashes) / HashSize }

// Reader reads stored tiles. ReadTiles returns one entry per id, in order:
// the stored hashes, or nil when the tile is not stored. It must not keep
// or modify the returned slices after returning.
type Reader interface {
	ReadTiles(ctx context.Context, ids []ID) ([][]byte, error)
}

// Errors of a Tree.
var (
	// ErrSize means a requested index or tree size is beyond the tree.
	ErrSize = errors.New("merkle tree: size out of range")
	// ErrMissing means a tile the tree needs is not stored, or is stored
	// with fewer hashes than the tree has: the store lost or never got
	// it (a store written before tiles existed, or tampered with).
	ErrMissing = errors.New("merkle tree: stored tile missing or short")
	// ErrMismatch means stored tree state disagrees with what the caller
	// trusts (a compact range or a signed root).
	ErrMismatch = errors.New("merkle tree: stored tree state does not match")
)

// DefaultCacheTiles is the default number of stored full tiles a Tree
// caches (8 KiB each).
const DefaultCacheTiles = 128

var factory = &compact.RangeFactory{Hash: func(l, r []byte) []byte {
	h := hashChildren(l, r)
	return h[:]
}}

// Tree is an append-only RFC 6962 Merkle tree whose nodes live in tiles.
// One goroutine changes it (Stage and Commit, or Append); any number read
// concurrently.
type Tree struct {
	r Reader

	mu   sync.RWMutex
	size uint64
	cr   *compact.Range // [0, size)
	edge [][]byte       // edge[L]: hashes of the right-edge tile of level L (< Width)

	cache *lru
}

// Option configures a Tree.
type Option func(*Tree)

// WithCacheTiles sets how many stored full tiles the tree caches (0: none).
func WithCacheTiles(n int) Option { return func(t *Tree) { t.cache = newLRU(n) } }

// New returns an empty tree reading stored tiles from r.
func New(r Reader, opts ...Option) *Tree {
	t := &Tree{r: r, cr: factory.NewEmptyRange(0), cache: newLRU(DefaultCacheTiles)}
	for _, o := range opts {
		o(t)
	}
	return t
}

// EdgeLeaves returns where the leaves Load needs the hashes of begin: the
// right-edge level-0 tile of a tree of size leaves holds [begin, size),
// at most Width-1 leaves.
func EdgeLeaves(size uint64) (begin uint64) { return size - size%Width }

// loadChunk bounds the tiles Load reads per store call.
const loadChunk = 64

// Load returns the tree of size leaves kept in r. It rebuilds the
// right-edge tile of each level: level 0 from edgeLeaves (the hashes of
// leaves [EdgeLeaves(size), size)), level L from the roots of the full
// tiles of level L-1 after the last full tile of level L. When
// compactRange is not nil it must equal the compact range so rebuilt (else
// ErrMismatch); a tile that is absent or short is ErrMissing. The caller
// must check Root against a root it trusts (a signed checkpoint of size
// leaves) before signing anything with the tree.
func Load(ctx context.Context, r Reader, size uint64, edgeLeaves []Hash, compactRange [][]byte, opts ...Option) (*Tree, error) {
	t := New(r, opts...)
	if want := size - EdgeLeaves(size); uint64(len(edgeLeaves)) != want {
		return nil, fmt.Errorf("load tree of size %d: got %d edge leaf hashes, want %d", size, len(edgeLeaves), want)
	}
	if size == 0 {
		return t, nil
	}
	for L := uint64(0); L*Height < 64 && size>>(L*Height) > 0; L++ {
		n := size >> (L * Height) // complete nodes at tree level L*Height
		w := n % Width
		e := make([]byte, 0, FullBytes)
		if L == 0 {
			for _, h := range edgeLeaves {
				e = append(e, h[:]...)
			}
		} else {
			// Node j of tree level L*Height is the root of tile (L-1, j).
			for j := n - w; j < n; j += loadChunk {
				ids := make([]ID, 0, loadChunk)
				for k := j; k < min(n, j+loadChunk); k++ {
					ids = append(ids, ID{Level: L - 1, Index: k})
				}
				got, err := r.ReadTiles(ctx, ids)
				if err != nil {
					return nil, fmt.Errorf("load tree of size %d: read tiles: %w", size, err)
				}
				if len(got) != len(ids) {
					return nil, fmt.Errorf("load tree of size %d: read tiles: got %d for %d ids", size, len(got), len(ids))
				}
				for i, id := range ids {
					if len(got[i]) != FullBytes {
						return nil, fmt.Errorf("%w: %s holds %d hashes, want %d (tree size %d)", ErrMissing, id, len(got[i])/HashSize, Width, size)
					}
					root := subtreeRoot(got[i])
					e = append(e, root[:]...)
				}
			}
		}
		t.edge = append(t.edge, e)
	}
	t.size = size
	ids := compact.RangeNodes(0, size, nil)
	hashes := make([][]byte, len(ids))
	for i, id := range ids {
		h, ok := t.edgeNode(id)
		if !ok {
			return nil, fmt.Errorf("%w: compact range node %d/%d is not on the right edge", ErrMissing, id.Level, id.Index)
		}
		hashes[i] = h[:]
	}
	if compactRange != nil {
		if len(compactRange) != len(hashes) {
			return nil, fmt.Errorf("%w: compact range of size %d has %d hashes, want %d", ErrMismatch, size, len(compactRange), len(hashes))
		}
		for i := range hashes {
			if !bytes.Equal(hashes[i], compactRange[i]) {
				return nil, fmt.Errorf("%w: stored tiles and leaves disagree with the compact range stored for tree size %d (node %d/%d)", ErrMismatch, size, ids[i].Level, ids[i].Index)
			}
		}
	}
	var err error
	if t.cr, err = factory.NewRange(0, size, hashes); err != nil {
		return nil, err
	}
	return t, nil
}

// Size returns the number of leaves.
func (t *Tree) Size() uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.size
}

// Staged is the tree as it would be after appending some leaves: what a
// commit needs (the new root to sign, the full tiles to store with the
// events) without changing the tree until Commit.
type Staged struct {
	t    *Tree
	base uint64
	cr   *compact.Range
	// Per tile level: the hashes appended since the level's last full
	// tile (cur), and whether a tile of that level completed in this stage
	// (then the tree's old edge tile is in Tiles, and cur is the new edge).
	cur       [][]byte
	completed []bool
	// Tiles are the full tiles the leaves complete, to store in the same
	// transaction as their events (TakeTiles hands them over early).
	Tiles []Tile
}

// Size is the tree size after the staged leaves.
func (s *Staged) Size() uint64 { return s.cr.End() }

// Root is the root hash after the staged leaves.
func (s *Staged) Root() []byte {
	if s.cr.End() == 0 {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	root, _ := s.cr.GetRootHash(nil)
	return root
}

// CompactRange is the compact range after the staged leaves (see
// Tree.CompactRange).
func (s *Staged) CompactRange() [][]byte { return cloneHashes(s.cr.Hashes()) }

// Stage computes the tree after appending leaves (hashed with the RFC 6962
// leaf prefix) without changing it. Only the goroutine that commits may
// call it, and the next Commit must be of this Staged.
func (t *Tree) Stage(leaves []Hash) *Staged {
	// Only this goroutine writes size, cr and edge: no lock needed to read.
	st := &Staged{t: t, base: t.size}
	st.cr, _ = factory.NewRange(0, t.size, slices.Clone(t.cr.Hashes()))
	st.Extend(leaves)
	return st
}

// Extend appends more leaves to the stage. Memory stays bounded when the
// caller takes the completed tiles as it goes (TakeTiles): a full rebuild
// of a large log extends one stage chunk by chunk.
func (s *Staged) Extend(leaves []Hash) {
	for i := range leaves {
		_ = s.cr.Append(leaves[i][:], s.visit)
	}
}

// TakeTiles returns the full tiles completed so far and forgets them.
func (s *Staged) TakeTiles() []Tile {
	ts := s.Tiles
	s.Tiles = nil
	return ts
}

func (s *Staged) visit(id compact.NodeID, hash []byte) {
	if id.Level%Height != 0 {
		return
	}
	L := int(id.Level / Height)
	for len(s.cur) <= L {
		s.cur = append(s.cur, nil)
		s.completed = append(s.completed, false)
	}
	s.cur[L] = append(s.cur[L], hash...)
	var old []byte
	if !s.completed[L] && L < len(s.t.edge) {
		old = s.t.edge[L]
	}
	if len(old)+len(s.cur[L]) < FullBytes {
		return
	}
	full := make([]byte, 0, FullBytes)
	full = append(append(full, old...), s.cur[L]...)
	s.Tiles = append(s.Tiles, Tile{ID: ID{Level: uint64(L), Index: id.Index / Width}, Hashes: full})
	s.cur[L] = s.cur[L][:0:0]
	s.completed[L] = true
}

// Commit makes the tree what st staged, once st's tiles are durable in
// the store. It panics if st was not staged on the tree as it is.
func (t *Tree) Commit(st *Staged) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st.base != t.size || st.t != t {
		panic(fmt.Sprintf("tiles: commit of a stage built on size %d, tree has %d", st.base, t.size))
	}
	for L, cur := range st.cur {
		for len(t.edge) <= L {
			t.edge = append(t.edge, make([]byte, 0, FullBytes))
		}
		if !st.completed[L] {
			// Writes past the current length only: readers holding a
			// prefix of this array stay valid.
			t.edge[L] = append(t.edge[L], cur...)
			continue
		}
		t.edge[L] = append(make([]byte, 0, FullBytes), cur...)
	}
	for _, tl := range st.Tiles {
		t.cache.put(tl.ID, tl.Hashes)
	}
	t.cr = st.cr
	t.size = st.cr.End()
}

// Append stages and commits leaves at once, for callers that store the
// returned tiles themselves afterwards (a bulk loader), or whose tiles are
// already stored (a reader catching up with events another writer
// committed with their tiles). It returns the full tiles the leaves
// completed.
func (t *Tree) Append(leaves ...Hash) []Tile {
	st := t.Stage(leaves)
	t.Commit(st)
	return st.Tiles
}

// Root returns the root hash of the whole tree (the empty root when it is
// empty), from the in-memory compact range.
func (t *Tree) Root() []byte {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.rootLocked()
}

func (t *Tree) rootLocked() []byte {
	if t.size == 0 {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	root, _ := t.cr.GetRootHash(nil)
	return root
}

// CompactRange returns the roots of the perfect subtrees that make up the
// tree, largest (leftmost) first: what a checkpoint keeps so that a later
// Load can check the stored tiles.
func (t *Tree) CompactRange() [][]byte {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return cloneHashes(t.cr.Hashes())
}

func cloneHashes(hs [][]byte) [][]byte {
	out := make([][]byte, len(hs))
	for i, h := range hs {
		out[i] = slices.Clone(h)
	}
	return out
}

// CompactRangeAt returns the compact range of the tree of the first size
// leaves (see CompactRange), read from stored tiles: the start hashes of
// an archive that begins at leaf size.
func (t *Tree) CompactRangeAt(ctx context.Context, size uint64) ([][]byte, error) {
	if cur := t.Size(); size > cur {
		return nil, fmt.Errorf("compact range of size %d, tree has %d: %w", size, cur, ErrSize)
	}
	hashes, err := t.nodes(ctx, compact.RangeNodes(0, size, nil))
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(hashes))
	for i := range hashes {
		out[i] = slices.Clone(hashes[i][:])
	}
	return out, nil
}

// RootAt returns the root hash of the tree of the first size leaves.
func (t *Tree) RootAt(ctx context.Context, size uint64) ([]byte, error) {
	cur := t.Size()
	switch {
	case size > cur:
		return nil, fmt.Errorf("root of size %d, tree has %d: %w", size, cur, ErrSize)
	case size == 0:
		return rfc6962.DefaultHasher.EmptyRoot(), nil
	}
	ids := compact.RangeNodes(0, size, nil)
	hashes, err := t.nodes(ctx, ids)
	if err != nil {
		return nil, err
	}
	h := hashes[len(hashes)-1]
	for i := len(hashes) - 2; i >= 0; i-- {
		h = hashChildren(hashes[i][:], h[:])
	}
	return h[:], nil
}

// LeafHash returns the hash of leaf index.
func (t *Tree) LeafHash(ctx context.Context, index uint64) (Hash, error) {
	if cur := t.Size(); index >= cur {
		return Hash{}, fmt.Errorf("leaf %d of %d: %w", index, cur, ErrSize)
	}
	h, err := t.nodes(ctx, []compact.NodeID{compact.NewNodeID(0, index)})
	if err != nil {
		return Hash{}, err
	}
	return h[0], nil
}

// Inclusion returns the audit path of leaf index in the tree of size
// leaves, as proof.VerifyInclusion expects.
func (t *Tree) Inclusion(ctx context.Context, index, size uint64) ([][]byte, error) {
	if cur := t.Size(); size > cur || index >= size {
		return nil, fmt.Errorf("inclusion of %d in size %d, tree has %d: %w", index, size, cur, ErrSize)
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, err
	}
	return t.rehash(ctx, nodes)
}

// Consistency returns the proof that the tree of size1 is a prefix of the
// tree of size2, as proof.VerifyConsistency expects.
func (t *Tree) Consistency(ctx context.Context, size1, size2 uint64) ([][]byte, error) {
	if cur := t.Size(); size2 > cur || size1 > size2 {
		return nil, fmt.Errorf("consistency %d to %d, tree has %d: %w", size1, size2, cur, ErrSize)
	}
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return t.rehash(ctx, nodes)
}

func (t *Tree) rehash(ctx context.Context, nodes proof.Nodes) ([][]byte, error) {
	hashes, err := t.nodes(ctx, nodes.IDs)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(hashes))
	for i := range hashes {
		out[i] = hashes[i][:]
	}
	return nodes.Rehash(out, func(l, r []byte) []byte {
		h := hashChildren(l, r)
		return h[:]
	})
}

// need is one node to compute: from hashes [off, off+2^h) of tile id.
type need struct {
	id     ID
	off, h int
	src    []byte // the tile's hashes, once found
}

// nodes returns the hashes of perfect nodes of the tree: each is computed
// from the tile holding its descendants at the tile level below it, found
// in memory (right edge, cache) or read from the store in one
// call.
func (t *Tree) nodes(ctx context.Context, ids []compact.NodeID) ([]Hash, error) {
	needs := make([]need, len(ids))
	var missing []ID
	t.mu.RLock()
	for i, id := range ids {
		L, h := uint64(id.Level/Height), int(id.Level%Height)
		first := id.Index << h // first node at tree level L*Height
		n := need{id: ID{Level: L, Index: first / Width}, off: int(first % Width), h: h}
		if _, end := id.Coverage(); end > t.size {
			t.mu.RUnlock()
			return nil, fmt.Errorf("node %d/%d is not complete in a tree of %d: %w", id.Level, id.Index, t.size, ErrSize)
		}
		switch {
		case L < uint64(len(t.edge)) && n.id.Index == (t.size>>(L*Height))/Width:
			n.src = t.edge[L]
		default:
			n.src = t.cache.get(n.id)
		}
		if n.src == nil && !slices.Contains(missing, n.id) {
			missing = append(missing, n.id)
		}
		needs[i] = n
	}
	t.mu.RUnlock()
	for _, id := range missing {
		full, err := t.fetch(ctx, id)
		if err != nil {
			return nil, err
		}
		for j := range needs {
			if needs[j].src == nil && needs[j].id == id {
				needs[j].src = full
			}
		}
	}
	out := make([]Hash, len(needs))
	for i, n := range needs {
		end := (n.off + 1<<n.h) * HashSize
		if len(n.src) < end {
			return nil, fmt.Errorf("%w: %s holds %d hashes, node needs %d", ErrMissing, n.id, len(n.src)/HashSize, end/HashSize)
		}
		out[i] = subtreeRoot(n.src[n.off*HashSize : end])
	}
	return out, nil
}

// source returns the hashes of tile id when memory holds them: the right
// edge (trusted: checked at Load, then extended by this tree) or the cache
// (tiles this tree computed, or read and verified).
func (t *Tree) source(id ID) []byte {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if L := id.Level; L < uint64(len(t.edge)) && id.Index == (t.size>>(L*Height))/Width {
		return t.edge[L]
	}
	return t.cache.get(id)
}

// fetch returns the hashes of the full tile id. A tile read from the store
// is verified before use: its root must be the entry for it in its parent
// tile, itself in memory or fetched and verified the same way. The chain
// ends at a right-edge tile, which the tree trusts, so a stored tile a
// database writer changed (even together with the event it holds) is
// ErrMismatch, never a wrong leaf hash or proof.
func (t *Tree) fetch(ctx context.Context, id ID) ([]byte, error) {
	if h := t.source(id); h != nil {
		return h, nil
	}
	got, err := t.r.ReadTiles(ctx, []ID{id})
	if err != nil {
		return nil, fmt.Errorf("read tiles: %w", err)
	}
	if len(got) != 1 || len(got[0]) != FullBytes {
		n := 0
		if len(got) == 1 {
			n = len(got[0]) / HashSize
		}
		// Anything not in memory is a full tile below the right edge.
		return nil, fmt.Errorf("%w: %s holds %d hashes, want %d", ErrMissing, id, n, Width)
	}
	full := slices.Clone(got[0])
	if id.Level+1 >= 64/Height+1 {
		return nil, fmt.Errorf("%w: %s has no parent", ErrMismatch, id)
	}
	parent := ID{Level: id.Level + 1, Index: id.Index / Width}
	ph, err := t.fetch(ctx, parent)
	if err != nil {
		return nil, err
	}
	pos := int(id.Index % Width)
	root := subtreeRoot(full)
	if len(ph) < (pos+1)*HashSize || !bytes.Equal(root[:], ph[pos*HashSize:(pos+1)*HashSize]) {
		return nil, fmt.Errorf("%w: stored %s does not hash to its entry in %s", ErrMismatch, id, parent)
	}
	t.cache.put(id, full)
	return full, nil
}

// edgeNode computes a node from the in-memory right-edge tiles only.
func (t *Tree) edgeNode(id compact.NodeID) (Hash, bool) {
	L, h := uint64(id.Level/Height), int(id.Level%Height)
	first := id.Index << h
	if L >= uint64(len(t.edge)) || first/Width != (t.size>>(L*Height))/Width {
		return Hash{}, false
	}
	off := int(first % Width)
	end := (off + 1<<h) * HashSize
	if len(t.edge[L]) < end {
		return Hash{}, false
	}
	return subtreeRoot(t.edge[L][off*HashSize : end]), true
}

// hashChildren is the RFC 6962 interior node hash, without allocating.
func hashChildren(l, r []byte) Hash {
	var buf [1 + 2*HashSize]byte
	buf[0] = 1
	copy(buf[1:], l)
	copy(buf[1+HashSize:], r)
	return sha256.Sum256(buf[:])
}

// subtreeRoot returns the root of the perfect subtree whose bottom row is
// hashes (a power of two of them).
func subtreeRoot(hashes []byte) Hash {
	n := len(hashes) / HashSize
	if n == 1 {
		return Hash(hashes)
	}
	var row [Width / 2]Hash
	for i := 0; i < n/2; i++ {
		row[i] = hashChildren(hashes[2*i*HashSize:(2*i+1)*HashSize], hashes[(2*i+1)*HashSize:(2*i+2)*HashSize])
	}
	for m := n / 2; m > 1; m /= 2 {
		for i := 0; i < m/2; i++ {
			row[i] = hashChildren(row[2*i][:], row[2*i+1][:])
		}
	}
	return row[0]
}

// TileRoot returns the root of a full tile: the node one tile level up.
func TileRoot(hashes []byte) Hash { return subtreeRoot(hashes) }
