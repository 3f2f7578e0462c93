package largelog_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/largelog"
	"github.com/credmatrix/credmatrix/services/audit/tiles"
)

type memTiles map[tiles.ID][]byte

func (m memTiles) ReadTiles(_ context.Context, ids []tiles.ID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	for i, id := range ids {
		out[i] = m[id]
	}
	return out, nil
}

// TestBuild builds a log and checks what it hands the store: gap-free
// events that are their own leaf bytes, checkpoints that verify and sign
// the tree of the events committed so far, and every full tile once.
func TestBuild(t *testing.T) {
	skey, _, err := checkpoint.GenerateKey("largelog.test/audit")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := checkpoint.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	stored := memTiles{}
	var next uint64
	var cps []audit.StoredCheckpoint
	check := tiles.New(stored)
	commit := func(_ context.Context, records []audit.Record, cp audit.StoredCheckpoint, ts []tiles.Tile) error {
		for _, r := range records {
			if r.Event.GetSequence() != next {
				t.Fatalf("event %d where %d belongs", r.Event.GetSequence(), next)
			}
			if d, _ := leaf.Marshal(r.Event); !bytes.Equal(d, r.Data) {
				t.Fatalf("event %d: Data is not its leaf bytes", next)
			}
			next++
			check.Append(leaf.Hash(r.Data))
		}
		for _, tl := range ts {
			if stored[tl.ID] != nil {
				t.Fatalf("%s stored twice", tl.ID)
			}
			stored[tl.ID] = tl.Hashes
		}
		c, err := signer.Verifier().Open(cp.Note)
		if err != nil || c.Size != next || !bytes.Equal(c.Root, check.Root()) {
			t.Fatalf("checkpoint at %d: size %d, root matches %v, %v", next, c.Size, bytes.Equal(c.Root, check.Root()), err)
		}
		cps = append(cps, cp)
		return nil
	}
	const n = 2600
	st, err := largelog.Build(context.Background(), commit, tiles.New(stored), signer, largelog.Options{Events: n, Seed: 3, CheckpointEvery: 500})
	if err != nil {
		t.Fatal(err)
	}
	if st.Size != n || next != n || st.Checkpoints != 6 || len(cps) != 6 || len(stored) != n/tiles.Width {
		t.Fatalf("size %d, committed %d, checkpoints %d/%d, tiles %d", st.Size, next, st.Checkpoints, len(cps), len(stored))
	}
	// The same seed gives the same events.
	a, b := largelog.NewGenerator(9), largelog.NewGenerator(9)
	for i := range uint64(100) {
		da, _ := leaf.Marshal(a.Event(i))
		db, _ := leaf.Marshal(b.Event(i))
		if !bytes.Equal(da, db) {
			t.Fatalf("event %d differs between two generators of one seed", i)
		}
	}
}
