package tiles_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/credmatrix/credmatrix/clients/auditclient/tree"
	"github.com/credmatrix/credmatrix/services/audit/tiles"
)

// store is a tiles.Reader over a map, writing the way the real stores do
// (a tile never shrinks).
type store struct {
	mu    sync.Mutex
	tiles map[tiles.ID][]byte
	reads int
}

func newStore() *store { return &store{tiles: make(map[tiles.ID][]byte)} }

func (s *store) ReadTiles(_ context.Context, ids []tiles.ID) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	out := make([][]byte, len(ids))
	for i, id := range ids {
		out[i] = slices.Clone(s.tiles[id])
	}
	return out, nil
}

func (s *store) write(ts []tiles.Tile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range ts {
		if len(t.Hashes) >= len(s.tiles[t.ID]) {
			s.tiles[t.ID] = slices.Clone(t.Hashes)
		}
	}
}

// grow appends leaves [from, to) as the Log does: stage, store the full
// tiles, commit.
func grow(t *tiles.Tree, s *store, from, to uint64) {
	batch := make([]tiles.Hash, 0, to-from)
	for i := from; i < to; i++ {
		batch = append(batch, leaf(i))
	}
	st := t.Stage(batch)
	s.write(st.Tiles)
	t.Commit(st)
}

func edgeLeaves(size uint64) []tiles.Hash {
	var out []tiles.Hash
	for i := tiles.EdgeLeaves(size); i < size; i++ {
		out = append(out, leaf(i))
	}
	return out
}

func leaf(i uint64) tiles.Hash {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], i)
	return tiles.Hash(rfc6962.DefaultHasher.HashLeaf(b[:]))
}

// reference is the in-memory tree the client-side verifier uses: proofs
// from stored tiles must equal its proofs.
func reference(n uint64) *tree.Tree {
	r := tree.New()
	for i := range n {
		r.Append(leaf(i))
	}
	return r
}

// compactRange computes the compact range of the first size leaves with
// the library's compact range, independently of tiles.
func compactRange(size uint64) [][]byte {
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	for i := range size {
		h := leaf(i)
		r.Append(h[:], nil)
	}
	return r.Hashes()
}

// checkAgainst compares roots and proofs of got (tiles) with want (the
// in-memory tree) at sizes and indexes drawn from rng, plus the edges.
func checkAgainst(t *testing.T, rng *rand.Rand, got *tiles.Tree, want *tree.Tree, samples int) {
	t.Helper()
	ctx := context.Background()
	n := want.Size()
	if got.Size() != n {
		t.Fatalf("Size() = %d, want %d", got.Size(), n)
	}
	wantRoot, _ := want.Root(n)
	if diff := cmp.Diff(got.Root(), wantRoot); diff != "" {
		t.Fatalf("Root() at %d (-got +want):\n%s", n, diff)
	}
	if n == 0 {
		return
	}
	sizes := []uint64{1, n}
	for range samples {
		sizes = append(sizes, 1+rng.Uint64N(n))
	}
	for _, size := range sizes {
		r, err := got.RootAt(ctx, size)
		if err != nil {
			t.Fatalf("RootAt(%d): %v", size, err)
		}
		wr, _ := want.Root(size)
		if !bytes.Equal(r, wr) {
			t.Fatalf("RootAt(%d) differs from the in-memory tree", size)
		}
		for _, idx := range []uint64{0, size - 1, rng.Uint64N(size)} {
			p, err := got.Inclusion(ctx, idx, size)
			if err != nil {
				t.Fatalf("Inclusion(%d, %d): %v", idx, size, err)
			}
			wp, _ := want.Inclusion(idx, size)
			if diff := cmp.Diff(p, wp); diff != "" {
				t.Fatalf("Inclusion(%d, %d) (-got +want):\n%s", idx, size, diff)
			}
			lh, err := got.LeafHash(ctx, idx)
			if err != nil || lh != leaf(idx) {
				t.Fatalf("LeafHash(%d) = %x, %v", idx, lh, err)
			}
			if err := proof.VerifyInclusion(rfc6962.DefaultHasher, idx, size, lh[:], p, wr); err != nil {
				t.Fatalf("VerifyInclusion(%d, %d): %v", idx, size, err)
			}
		}
		cr, err := got.CompactRangeAt(ctx, size)
		if err != nil {
			t.Fatalf("CompactRangeAt(%d): %v", size, err)
		}
		if diff := cmp.Diff(cr, compactRange(size)); diff != "" {
			t.Fatalf("CompactRangeAt(%d) (-got +want):\n%s", size, diff)
		}
		s1 := 1 + rng.Uint64N(size)
		p, err := got.Consistency(ctx, s1, size)
		if err != nil {
			t.Fatalf("Consistency(%d, %d): %v", s1, size, err)
		}
		wp, _ := want.Consistency(s1, size)
		if diff := cmp.Diff(p, wp); diff != "" {
			t.Fatalf("Consistency(%d, %d) (-got +want):\n%s", s1, size, diff)
		}
	}
}

// TestAgreesWithInMemoryTree grows trees of random sizes (some spanning
// three tile levels) in batches of random sizes, and checks roots and
// proofs against the in-memory implementation, also after reloading the
// tree from the store.
func TestAgreesWithInMemoryTree(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	sizes := []uint64{0, 1, 2, 255, 256, 257, 512, 65537}
	for range 4 {
		sizes = append(sizes, rng.Uint64N(3000))
	}
	sizes = append(sizes, 65536+rng.Uint64N(70000))
	for _, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			s := newStore()
			got := tiles.New(s, tiles.WithCacheTiles(int(rng.Uint64N(4))))
			want := tree.New()
			for i := uint64(0); i < n; {
				k := min(n-i, 1+rng.Uint64N(600))
				if rng.IntN(20) == 0 {
					k = min(n-i, 1000+rng.Uint64N(70000)) // a bulk load
				}
				for j := i; j < i+k; j++ {
					want.Append(leaf(j))
				}
				grow(got, s, i, i+k)
				i += k
			}
			checkAgainst(t, rng, got, want, 6)
			loaded, err := tiles.Load(context.Background(), s, n, edgeLeaves(n), got.CompactRange(), tiles.WithCacheTiles(0))
			if err != nil {
				t.Fatalf("Load(%d): %v", n, err)
			}
			checkAgainst(t, rng, loaded, want, 6)
		})
	}
}

// TestLoadContinues loads a tree from the store at an older size than the
// store's tiles reach (the latest compact range is older than the latest
// events, as after a crash), appends the rest again and more, and checks
// everything against the in-memory tree.
func TestLoadContinues(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	ctx := context.Background()
	for i := range 6 {
		n := 1 + rng.Uint64N(3000)
		if i == 0 {
			n = 65536 + rng.Uint64N(10000) // three tile levels
		}
		checkpointAt := 1 + rng.Uint64N(n) // the last size whose state was flushed before a "checkpoint"
		name := fmt.Sprintf("%d-cp%d", n, checkpointAt)
		t.Run(name, func(t *testing.T) {
			s := newStore()
			first := tiles.New(s)
			grow(first, s, 0, checkpointAt)
			cr := first.CompactRange()
			grow(first, s, checkpointAt, n)

			loaded, err := tiles.Load(ctx, s, checkpointAt, edgeLeaves(checkpointAt), cr)
			if err != nil {
				t.Fatalf("Load(%d): %v", checkpointAt, err)
			}
			want := reference(checkpointAt)
			if wr, _ := want.Root(checkpointAt); !bytes.Equal(loaded.Root(), wr) {
				t.Fatal("loaded root differs")
			}
			// Re-append what followed the checkpoint, then more.
			more := n + rng.Uint64N(1000)
			for i := checkpointAt; i < more; i++ {
				want.Append(leaf(i))
			}
			grow(loaded, s, checkpointAt, more)
			checkAgainst(t, rng, loaded, want, 5)
			again, err := tiles.Load(ctx, s, more, edgeLeaves(more), loaded.CompactRange())
			if err != nil {
				t.Fatalf("Load(%d) after flush: %v", more, err)
			}
			checkAgainst(t, rng, again, want, 5)
		})
	}
}

func TestLoadRefusesBadState(t *testing.T) {
	ctx := context.Background()
	const n = 1000
	build := func() (*store, [][]byte) {
		s := newStore()
		tr := tiles.New(s)
		grow(tr, s, 0, n)
		return s, tr.CompactRange()
	}
	t.Run("missing-tile", func(t *testing.T) {
		s, cr := build()
		delete(s.tiles, tiles.ID{Level: 0, Index: 1})
		if _, err := tiles.Load(ctx, s, n, edgeLeaves(n), cr); !errors.Is(err, tiles.ErrMissing) {
			t.Fatalf("Load = %v, want ErrMissing", err)
		}
	})
	t.Run("short-tile", func(t *testing.T) {
		s, cr := build()
		id := tiles.ID{Level: 0, Index: 2}
		s.tiles[id] = s.tiles[id][:tiles.HashSize]
		if _, err := tiles.Load(ctx, s, n, edgeLeaves(n), cr); !errors.Is(err, tiles.ErrMissing) {
			t.Fatalf("Load = %v, want ErrMissing", err)
		}
	})
	t.Run("wrong-edge-leaf-count", func(t *testing.T) {
		s, cr := build()
		if _, err := tiles.Load(ctx, s, n, edgeLeaves(n)[1:], cr); err == nil {
			t.Fatal("Load accepted too few edge leaves")
		}
	})
	t.Run("tampered-tile", func(t *testing.T) {
		s, cr := build()
		s.tiles[tiles.ID{Level: 0, Index: 0}][5] ^= 1
		if _, err := tiles.Load(ctx, s, n, edgeLeaves(n), cr); !errors.Is(err, tiles.ErrMismatch) {
			t.Fatalf("Load = %v, want ErrMismatch", err)
		}
	})
	t.Run("tampered-edge-leaf", func(t *testing.T) {
		s, cr := build()
		l := edgeLeaves(n)
		l[3][0] ^= 1
		if _, err := tiles.Load(ctx, s, n, l, cr); !errors.Is(err, tiles.ErrMismatch) {
			t.Fatalf("Load = %v, want ErrMismatch", err)
		}
	})
	t.Run("tampered-compact-range", func(t *testing.T) {
		s, cr := build()
		cr[0] = bytes.Clone(cr[0])
		cr[0][0] ^= 1
		if _, err := tiles.Load(ctx, s, n, edgeLeaves(n), cr); !errors.Is(err, tiles.ErrMismatch) {
			t.Fatalf("Load = %v, want ErrMismatch", err)
		}
	})
	t.Run("without-compact-range-root-tells", func(t *testing.T) {
		// Without a stored compact range the caller's signed root is the
		// check: a tampered tile changes Root.
		s, _ := build()
		s.tiles[tiles.ID{Level: 0, Index: 1}][0] ^= 1
		tr, err := tiles.Load(ctx, s, n, edgeLeaves(n), nil)
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := reference(n).Root(n); bytes.Equal(tr.Root(), want) {
			t.Fatal("root unchanged by a tampered tile")
		}
	})
}

func TestMissingFullTileIsAnError(t *testing.T) {
	ctx := context.Background()
	s := newStore()
	tr := tiles.New(s, tiles.WithCacheTiles(0))
	grow(tr, s, 0, 3*tiles.Width)
	delete(s.tiles, tiles.ID{Level: 0, Index: 1})
	if _, err := tr.Inclusion(ctx, tiles.Width+3, 3*tiles.Width); !errors.Is(err, tiles.ErrMissing) {
		t.Fatalf("Inclusion with a lost tile = %v, want ErrMissing", err)
	}
	// Proofs that do not need it still work.
	if _, err := tr.Inclusion(ctx, 3, 3*tiles.Width); err != nil {
		t.Fatal(err)
	}
}

func TestSizeErrors(t *testing.T) {
	ctx := context.Background()
	s := newStore()
	tr := tiles.New(s)
	grow(tr, s, 0, 2)
	for name, err := range map[string]error{
		"inclusion-index": func() error { _, err := tr.Inclusion(ctx, 2, 2); return err }(),
		"inclusion-size":  func() error { _, err := tr.Inclusion(ctx, 0, 3); return err }(),
		"consistency":     func() error { _, err := tr.Consistency(ctx, 1, 3); return err }(),
		"consistency-ord": func() error { _, err := tr.Consistency(ctx, 2, 1); return err }(),
		"root":            func() error { _, err := tr.RootAt(ctx, 3); return err }(),
		"leaf":            func() error { _, err := tr.LeafHash(ctx, 2); return err }(),
	} {
		if !errors.Is(err, tiles.ErrSize) {
			t.Errorf("%s: %v, want ErrSize", name, err)
		}
	}
}

// TestMemoryBounded checks what a tree keeps: the right-edge tiles and at
// most its cache, nothing per leaf; older leaves are read from the store.
func TestMemoryBounded(t *testing.T) {
	ctx := context.Background()
	s := newStore()
	tr := tiles.New(s, tiles.WithCacheTiles(2))
	for i := uint64(0); i < 100*tiles.Width; i += 100 {
		grow(tr, s, i, i+100)
	}
	before := s.reads
	for i := uint64(0); i < 10; i++ {
		if _, err := tr.LeafHash(ctx, i*tiles.Width); err != nil {
			t.Fatal(err)
		}
	}
	if s.reads-before != 10 {
		t.Fatalf("%d store reads for 10 leaves in 10 tiles with a 2-tile cache, want 10", s.reads-before)
	}
}

// TestStageDoesNotChangeTheTree: a failed commit (Stage without Commit)
// leaves the tree as it was.
func TestStageDoesNotChangeTheTree(t *testing.T) {
	s := newStore()
	tr := tiles.New(s)
	grow(tr, s, 0, 300)
	root := tr.Root()
	batch := []tiles.Hash{leaf(300), leaf(301)}
	st := tr.Stage(batch)
	if st.Size() != 302 || tr.Size() != 300 || !bytes.Equal(tr.Root(), root) {
		t.Fatalf("Stage changed the tree: staged %d, tree %d", st.Size(), tr.Size())
	}
	st2 := tr.Stage(batch) // the retry of the failed commit
	tr.Commit(st2)
	want := reference(302)
	if wr, _ := want.Root(302); !bytes.Equal(tr.Root(), wr) || !bytes.Equal(st.Root(), wr) {
		t.Fatal("root after retry differs")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("Commit of a stale stage did not panic")
		}
	}()
	tr.Commit(st)
}

// TestConcurrentReaders runs proofs while the tree grows and flushes (run
// with -race).
func TestConcurrentReaders(t *testing.T) {
	ctx := context.Background()
	s := newStore()
	tr := tiles.New(s, tiles.WithCacheTiles(1))
	want := reference(20000)
	var wg sync.WaitGroup
	done := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(rand.Uint64(), 3))
			for {
				select {
				case <-done:
					return
				default:
				}
				n := tr.Size()
				if n == 0 {
					continue
				}
				size := 1 + rng.Uint64N(n)
				idx := rng.Uint64N(size)
				p, err := tr.Inclusion(ctx, idx, size)
				if err != nil {
					t.Error(err)
					return
				}
				wp, _ := want.Inclusion(idx, size)
				if !slices.EqualFunc(p, wp, bytes.Equal) {
					t.Errorf("Inclusion(%d, %d) differs", idx, size)
					return
				}
			}
		}()
	}
	for i := uint64(0); i < 20000; i += 50 {
		batch := make([]tiles.Hash, 50)
		for j := range batch {
			batch[j] = leaf(i + uint64(j))
		}
		st := tr.Stage(batch)
		s.write(st.Tiles)
		tr.Commit(st)
	}
	close(done)
	wg.Wait()
}

func TestTileRoot(t *testing.T) {
	var hashes []byte
	r := tree.New()
	for i := range uint64(tiles.Width) {
		h := leaf(i)
		hashes = append(hashes, h[:]...)
		r.Append(h)
	}
	want, _ := r.Root(tiles.Width)
	if got := tiles.TileRoot(hashes); !bytes.Equal(got[:], want) {
		t.Fatal("TileRoot differs from the tree root of 256 leaves")
	}
	_ = sha256.Size
}

// TestStoredTilesAreVerified: a database writer who changes a leaf hash
// in a stored tile — even together with the parent tile's entry for it —
// gets an error, never a wrong leaf hash or proof: every tile read from
// the store is checked up to the right edge, which Load checks against the
// compact range (and the caller against a signed root).
func TestStoredTilesAreVerified(t *testing.T) {
	ctx := context.Background()
	const n = 70000 // three tile levels: tile 1/0 is full, level 2 is the edge
	const victim = 5*tiles.Width + 3
	build := func() (*store, [][]byte) {
		s := newStore()
		tr := tiles.New(s)
		grow(tr, s, 0, n)
		return s, tr.CompactRange()
	}
	t.Run("leaf", func(t *testing.T) {
		s, cr := build()
		s.tiles[tiles.ID{Level: 0, Index: 5}][3*tiles.HashSize] ^= 1
		tr, err := tiles.Load(ctx, s, n, edgeLeaves(n), cr, tiles.WithCacheTiles(0))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tr.LeafHash(ctx, victim); !errors.Is(err, tiles.ErrMismatch) {
			t.Fatalf("LeafHash of a tampered leaf = %v, want ErrMismatch", err)
		}
		if _, err := tr.Inclusion(ctx, victim+1, n); !errors.Is(err, tiles.ErrMismatch) {
			t.Fatalf("Inclusion through a tampered tile = %v, want ErrMismatch", err)
		}
		// Leaves in other tiles are still served.
		if h, err := tr.LeafHash(ctx, 9*tiles.Width); err != nil || h != leaf(9*tiles.Width) {
			t.Fatalf("LeafHash of an untouched leaf = %x, %v", h, err)
		}
	})
	t.Run("leaf-and-parent", func(t *testing.T) {
		s, cr := build()
		tl := s.tiles[tiles.ID{Level: 0, Index: 5}]
		tl[3*tiles.HashSize] ^= 1
		root := tiles.TileRoot(tl)
		copy(s.tiles[tiles.ID{Level: 1, Index: 0}][5*tiles.HashSize:], root[:])
		if _, err := tiles.Load(ctx, s, n, edgeLeaves(n), cr); !errors.Is(err, tiles.ErrMismatch) {
			t.Fatalf("Load over a consistently tampered tile pair = %v, want ErrMismatch", err)
		}
	})
}

// TestExtendInChunks: a stage extended chunk by chunk, its tiles taken as
// it goes, ends where one stage of all leaves does.
func TestExtendInChunks(t *testing.T) {
	s := newStore()
	tr := tiles.New(s)
	grow(tr, s, 0, 1000)
	st := tr.Stage(nil)
	var taken []tiles.Tile
	for i := uint64(1000); i < 70000; i += 4096 {
		var hs []tiles.Hash
		for j := i; j < min(i+4096, 70000); j++ {
			hs = append(hs, leaf(j))
		}
		st.Extend(hs)
		taken = append(taken, st.TakeTiles()...)
	}
	s.write(taken)
	tr.Commit(st)
	want := reference(70000)
	checkAgainst(t, rand.New(rand.NewPCG(1, 2)), tr, want, 4)
}
