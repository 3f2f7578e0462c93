package bundle

import (
	"context"
	"fmt"

	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/tree"
)

// readChunk is how many events or checkpoints one store call returns.
const readChunk = 4096

// FromStore exports everything in store: its events in order (re-serialised
// deterministically, which is how they were hashed), every stored
// checkpoint, and consistency proofs between successive checkpoints. It
// reads the store directly, so it works when the service refuses to start
// on a damaged store, which is when an investigator needs it. origin and
// publicKey label the bundle; verification uses the investigator's own key.
func FromStore(ctx context.Context, store audit.Store, origin, publicKey string) (*Bundle, error) {
	b := &Bundle{Origin: origin, PublicKey: publicKey}
	t := tree.New()
	for from := uint64(0); ; {
		events, err := store.Read(ctx, from, readChunk)
		if err != nil {
			return nil, fmt.Errorf("export events from %d: %w", from, err)
		}
		for _, e := range events {
			data, err := audit.MarshalEvent(e)
			if err != nil {
				return nil, fmt.Errorf("export event %d: %w", e.GetSequence(), err)
			}
			b.Events = append(b.Events, data)
			var h tree.Hash
			copy(h[:], leafHash(data))
			t.Append(h)
		}
		if len(events) < readChunk {
			break
		}
		from = events[len(events)-1].GetSequence() + 1
	}
	var sizes []uint64
	for from := uint64(0); ; {
		cps, err := store.Checkpoints(ctx, from, readChunk)
		if err != nil {
			return nil, fmt.Errorf("export checkpoints: %w", err)
		}
		for _, cp := range cps {
			b.Checkpoints = append(b.Checkpoints, cp.Note)
			sizes = append(sizes, cp.Size)
		}
		if len(cps) < readChunk {
			break
		}
		from = cps[len(cps)-1].Size + 1
	}
	for i := 1; i < len(sizes); i++ {
		if sizes[i] > t.Size() {
			break // the verifier reports the truncation
		}
		p, err := t.Consistency(sizes[i-1], sizes[i])
		if err != nil {
			return nil, err
		}
		b.Proofs = append(b.Proofs, Proof{From: sizes[i-1], To: sizes[i], Hashes: p})
	}
	return b, nil
}
