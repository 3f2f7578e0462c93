package audit_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/keptfile"
	"github.com/credmatrix/credmatrix/services/audit/memstore"
	"github.com/credmatrix/credmatrix/services/audit/tiles"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// grown is a log of n events appended in batches of batch events.
type grown struct {
	store  *memstore.Store
	signer *checkpoint.Signer
	kept   *keptfile.File
}

func grow(t *testing.T, n, batch int) grown {
	t.Helper()
	g := grown{store: memstore.New(), signer: audittest.NewSigner(t), kept: keptfile.New(filepath.Join(t.TempDir(), "kept"))}
	log, err := audit.Open(context.Background(), g.store, audit.WithSigner(g.signer), audit.WithKept(g.kept, 0))
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, log, 0, n, batch)
	log.Close()
	return g
}

func appendN(t *testing.T, log *audit.Log, from, n, batch int) {
	t.Helper()
	for i := from; i < from+n; i += batch {
		var evs []*auditv1.Event
		for j := i; j < min(i+batch, from+n); j++ {
			evs = append(evs, event(fmt.Sprintf("grow-%d", j)))
		}
		if _, err := log.Append(context.Background(), broker, evs); err != nil {
			t.Fatalf("Append at %d: %v", i, err)
		}
	}
}

func (g grown) open(t *testing.T, opts ...audit.Option) (*audit.Log, error) {
	t.Helper()
	l, err := audit.Open(context.Background(), g.store.Reopen(), append([]audit.Option{audit.WithSigner(g.signer), audit.WithKept(g.kept, 0)}, opts...)...)
	if err == nil {
		t.Cleanup(func() { l.Close() })
	}
	return l, err
}

// checkProofs checks inclusion proofs of a few leaves and a consistency
// proof against the log's signed checkpoint.
func checkProofs(t *testing.T, log *audit.Log) {
	t.Helper()
	ctx := context.Background()
	cp, err := log.LatestCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{0, 1, cp.Size / 3, cp.Size - 1} {
		lh, path, size, err := log.InclusionProof(ctx, seq, 0)
		if err != nil {
			t.Fatalf("InclusionProof(%d): %v", seq, err)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, seq, size, lh, path, cp.Root); err != nil {
			t.Fatalf("inclusion proof of %d does not verify: %v", seq, err)
		}
	}
}

// TestStartupIsBounded: a restarted log loads its tree from the latest
// checkpoint that carries a compact range and re-hashes only the events
// after it, whatever the log's size; proofs read from stored tiles verify.
func TestStartupIsBounded(t *testing.T) {
	g := grow(t, 3000, 7)
	log, err := g.open(t)
	if err != nil {
		t.Fatal(err)
	}
	oi := log.OpenInfo()
	if oi.Loaded == 0 || oi.Checked > tiles.Width+7 || oi.Loaded+oi.Checked != 3000 {
		t.Fatalf("OpenInfo = %+v: want the tree loaded near the head and at most %d events checked", oi, tiles.Width+7)
	}
	checkProofs(t, log)
	// It goes on appending, and the next start is bounded too.
	appendN(t, log, 3000, 500, 13)
	checkProofs(t, log)
	log.Close()
	log2, err := g.open(t)
	if err != nil {
		t.Fatal(err)
	}
	if oi := log2.OpenInfo(); oi.Loaded+oi.Checked != 3500 || oi.Checked > tiles.Width+13 {
		t.Fatalf("second OpenInfo = %+v", oi)
	}
	checkProofs(t, log2)
}

// TestStartupRebuildsTilesOnce: a store without tiles or compact ranges (one
// from before tiles) is checked whole once, its tiles rebuilt and written,
// and the next start is bounded.
func TestStartupRebuildsTilesOnce(t *testing.T) {
	g := grow(t, 2000, 50)
	g.store.Mutate(func(d *memstore.Data) {
		clear(d.Tiles)
		for i := range d.Checkpoints {
			d.Checkpoints[i].CompactRange = nil
		}
	})
	log, err := g.open(t)
	if err != nil {
		t.Fatal(err)
	}
	if oi := log.OpenInfo(); oi.Loaded != 0 || oi.Checked != 2000 || oi.TilesRebuilt != 2000/tiles.Width {
		t.Fatalf("OpenInfo = %+v, want a whole check rebuilding %d tiles", oi, 2000/tiles.Width)
	}
	checkProofs(t, log)
	log.Close()
	log2, err := g.open(t)
	if err != nil {
		t.Fatal(err)
	}
	if oi := log2.OpenInfo(); oi.Loaded != 2000 || oi.Checked != 0 {
		t.Fatalf("OpenInfo after the rebuild = %+v, want the tree loaded at 2000", oi)
	}
}

// TestDamagedTreeState: tree state in the store that does not check out
// is never trusted. A damaged compact range or edge makes start-up check
// the whole store (the events decide); a damaged tile below the edge makes
// proofs through it fail (never a false proof) until a full verification
// finds it, which refuses the store until an operator adopts it, and the
// adoption rewrites the tile from the events.
func TestDamagedTreeState(t *testing.T) {
	t.Run("compact-range", func(t *testing.T) {
		g := grow(t, 1000, 10)
		g.store.Mutate(func(d *memstore.Data) {
			for i := range d.Checkpoints {
				if cr := d.Checkpoints[i].CompactRange; cr != nil {
					cr[0] = make([]byte, 32)
				}
			}
		})
		log, err := g.open(t)
		if err != nil {
			t.Fatalf("Open with a damaged compact range: %v", err)
		}
		if oi := log.OpenInfo(); oi.Loaded != 0 || oi.Checked != 1000 {
			t.Fatalf("OpenInfo = %+v, want the whole store checked", oi)
		}
		checkProofs(t, log)
	})
	t.Run("edge-tile", func(t *testing.T) {
		// A tile start-up rebuilds the right edge from: the loaded tree
		// does not match its checkpoint, so the whole store is checked,
		// which finds the tile and refuses until an operator adopts.
		g := grow(t, 1000, 10)
		g.store.Mutate(func(d *memstore.Data) { d.Tiles[tiles.ID{Level: 0, Index: 1}][0] ^= 1 })
		_, err := g.open(t)
		if !errors.Is(err, audit.ErrStoreMismatch) || !strings.Contains(err.Error(), "tile 0/1") {
			t.Fatalf("Open = %v, want a refusal naming tile 0/1", err)
		}
		log, err := g.open(t, audit.WithAdoption(adoptToken(t, err)))
		if err != nil {
			t.Fatalf("adopt: %v", err)
		}
		checkProofs(t, log)
	})
	t.Run("tile-below-edge", func(t *testing.T) {
		// Under a full level-1 tile (more than 65,536 events), a tile
		// start-up does not read.
		g := grow(t, 70000, 1000)
		victim := tiles.ID{Level: 0, Index: 1}
		g.store.Mutate(func(d *memstore.Data) { d.Tiles[victim][0] ^= 1 })
		log, err := g.open(t)
		if err != nil {
			t.Fatalf("bounded Open: %v", err)
		}
		if _, _, _, err := log.InclusionProof(context.Background(), tiles.Width+5, 0); domainerr.CodeOf(err) != domainerr.Unavailable {
			t.Fatalf("InclusionProof through a damaged tile = %v, want Unavailable", err)
		}
		log.Close()
		_, err = g.open(t, audit.WithFullVerification())
		if !errors.Is(err, audit.ErrStoreMismatch) || !strings.Contains(err.Error(), "tile 0/1") {
			t.Fatalf("full verification = %v, want a refusal naming tile 0/1", err)
		}
		log, err = g.open(t, audit.WithFullVerification(), audit.WithAdoption(adoptToken(t, err)))
		if err != nil {
			t.Fatalf("adopt: %v", err)
		}
		if _, _, _, err := log.InclusionProof(context.Background(), tiles.Width+5, 0); err != nil {
			t.Fatalf("InclusionProof after the adoption rewrote the tile: %v", err)
		}
		checkProofs(t, log)
	})
}

// TestKeptCheckpointOlderThanTheLoadedTree: the checkpoint kept outside
// the store is checked by a consistency proof from stored tiles when the
// tree is loaded from a later checkpoint; a kept checkpoint of another
// history (same key) is refused.
func TestKeptCheckpointOlderThanTheLoadedTree(t *testing.T) {
	g := grow(t, 300, 10)
	log, err := g.open(t)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, log, 300, 1700, 10)
	log.Close() // saves the kept checkpoint at 2000
	old, err := g.store.Checkpoints(context.Background(), 300, 1)
	if err != nil || len(old) != 1 || old[0].Size != 300 {
		t.Fatalf("checkpoint 300: %v, %v", old, err)
	}
	if err := g.kept.Save(old[0].Note); err != nil {
		t.Fatal(err)
	}
	log, err = g.open(t)
	if err != nil {
		t.Fatalf("Open with a kept checkpoint at 300: %v", err)
	}
	if oi := log.OpenInfo(); oi.Loaded <= 300 {
		t.Fatalf("OpenInfo = %+v: the test needs the tree loaded after the kept checkpoint", oi)
	}
	log.Close()
	other := grow(t, 300, 30)
	cps, _ := other.store.Checkpoints(context.Background(), 300, 1)
	c, err := other.signer.Verifier().Open(cps[0].Note)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := g.signer.Sign(300, c.Root) // another history under the log's key
	if err != nil {
		t.Fatal(err)
	}
	if err := g.kept.Save(forged); err != nil {
		t.Fatal(err)
	}
	if _, err := g.open(t); !errors.Is(err, audit.ErrStoreMismatch) {
		t.Fatalf("Open with a kept checkpoint of another history = %v, want ErrStoreMismatch", err)
	}
}

// adoptToken returns the adopt=<token> a refusal names.
func adoptToken(t *testing.T, err error) string {
	t.Helper()
	_, rest, ok := strings.Cut(err.Error(), "adopt=")
	if !ok {
		t.Fatalf("no adoption token in %q", err)
	}
	return strings.FieldsFunc(rest, func(r rune) bool { return r == ' ' || r == ';' || r == ')' })[0]
}
