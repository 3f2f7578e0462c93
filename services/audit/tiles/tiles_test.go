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

func flush(t *tiles.Tree, s *store) {
	ts := t.Unflushed()
	s.write(ts)
	t.Flushed(ts)
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
// three tile levels), flushing at random points, and checks every root
// and proof against the in-memory implementation.
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
				batch := make([]tiles.Hash, k)
				for j := range batch {
					batch[j] = leaf(i + uint64(j))
					want.Append(batch[j])
				}
				got.Append(batch...)
				i += k
				if rng.IntN(3) == 0 {
					flush(got, s)
				}
			}
			checkAgainst(t, rng, got, want, 6)
			flush(got, s)
			if got.Pending() != 0 {
				t.Fatalf("Pending() = %d after flush", got.Pending())
			}
			checkAgainst(t, rng, got, want, 6)
		})
	}
}

// TestLoadContinues flushes a tree, loads it from the store at its size
// (and, as after a crash between a tile flush and the checkpoint, at an
// older size while the store holds newer tiles), appends more and checks
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
			for i := range checkpointAt {
				first.Append(leaf(i))
			}
			flush(first, s)
			cr := first.CompactRange()
			// Half-written: tiles for more leaves reach the store, the
			// checkpoint for them never does.
			for i := checkpointAt; i < n; i++ {
				first.Append(leaf(i))
			}
			flush(first, s)

			loaded, err := tiles.Load(ctx, s, checkpointAt, cr)
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
				loaded.Append(leaf(i))
				want.Append(leaf(i))
			}
			checkAgainst(t, rng, loaded, want, 5)
			flush(loaded, s)
			again, err := tiles.Load(ctx, s, more, loaded.CompactRange())
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
		for i := range uint64(n) {
			tr.Append(leaf(i))
		}
		flush(tr, s)
		return s, tr.CompactRange()
	}
	t.Run("missing-edge-tile", func(t *testing.T) {
		s, cr := build()
		delete(s.tiles, tiles.ID{Level: 0, Index: n / tiles.Width})
		if _, err := tiles.Load(ctx, s, n, cr); !errors.Is(err, tiles.ErrMissing) {
			t.Fatalf("Load = %v, want ErrMissing", err)
		}
	})
	t.Run("short-edge-tile", func(t *testing.T) {
		s, cr := build()
		id := tiles.ID{Level: 0, Index: n / tiles.Width}
		s.tiles[id] = s.tiles[id][:tiles.HashSize]
		if _, err := tiles.Load(ctx, s, n, cr); !errors.Is(err, tiles.ErrMissing) {
			t.Fatalf("Load = %v, want ErrMissing", err)
		}
	})
	t.Run("tampered-edge-tile", func(t *testing.T) {
		s, cr := build()
		s.tiles[tiles.ID{Level: 0, Index: n / tiles.Width}][5] ^= 1
		if _, err := tiles.Load(ctx, s, n, cr); !errors.Is(err, tiles.ErrMismatch) {
			t.Fatalf("Load = %v, want ErrMismatch", err)
		}
	})
	t.Run("tampered-compact-range", func(t *testing.T) {
		s, cr := build()
		cr[0] = bytes.Clone(cr[0])
		cr[0][0] ^= 1
		if _, err := tiles.Load(ctx, s, n, cr); !errors.Is(err, tiles.ErrMismatch) {
			t.Fatalf("Load = %v, want ErrMismatch", err)
		}
	})
	t.Run("without-compact-range-root-tells", func(t *testing.T) {
		// Without a stored compact range the caller's signed root is the
		// check: a tampered edge tile changes Root.
		s, _ := build()
		s.tiles[tiles.ID{Level: 1, Index: 0}][0] ^= 1
		tr, err := tiles.Load(ctx, s, n, nil)
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
	for i := range uint64(3 * tiles.Width) {
		tr.Append(leaf(i))
	}
	flush(tr, s)
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
	tr := tiles.New(newStore())
	tr.Append(leaf(0), leaf(1))
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

// TestMemoryBounded checks what a tree keeps after a flush: the right-edge
// tiles, at most the cache, nothing per leaf.
func TestMemoryBounded(t *testing.T) {
	ctx := context.Background()
	s := newStore()
	tr := tiles.New(s, tiles.WithCacheTiles(2))
	for i := range uint64(100 * tiles.Width) {
		tr.Append(leaf(i))
	}
	if got := tr.Pending(); got != 100 {
		t.Fatalf("Pending() = %d before flush, want 100", got)
	}
	flush(tr, s)
	if got := tr.Pending(); got != 0 {
		t.Fatalf("Pending() = %d after flush", got)
	}
	// Reading old leaves goes to the store; the cache holds at most 2.
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
		tr.Append(batch...)
		if i%1000 == 0 {
			flush(tr, s)
		}
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
