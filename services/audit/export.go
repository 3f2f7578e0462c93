package audit

import (
	"context"
	"fmt"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/clients/auditclient/tree"
)

// exportChunk is how many events or checkpoints one store call returns.
const exportChunk = 4096

// ExportBundle exports everything in store: its events in order (re-serialised
// deterministically, which is how they were hashed), every stored
// checkpoint, and consistency proofs between successive checkpoints. It
// reads the store directly, so it works when the service refuses to start
// on a damaged store, which is when an investigator needs it. origin and
// publicKey label the bundle; verification uses the investigator's own key.
func ExportBundle(ctx context.Context, store Store, origin, publicKey string) (*bundle.Bundle, error) {
	b := &bundle.Bundle{Origin: origin, PublicKey: publicKey}
	t := tree.New()
	for from := uint64(0); ; {
		events, err := store.Read(ctx, from, exportChunk)
		if err != nil {
			return nil, fmt.Errorf("export events from %d: %w", from, err)
		}
		for _, e := range events {
			data, err := leaf.Marshal(e)
			if err != nil {
				return nil, fmt.Errorf("export event %d: %w", e.GetSequence(), err)
			}
			b.Events = append(b.Events, data)
			t.Append(leaf.Hash(data))
		}
		if len(events) < exportChunk {
			break
		}
		from = events[len(events)-1].GetSequence() + 1
	}
	var sizes []uint64
	for from := uint64(0); ; {
		cps, err := store.Checkpoints(ctx, from, exportChunk)
		if err != nil {
			return nil, fmt.Errorf("export checkpoints: %w", err)
		}
		for _, cp := range cps {
			b.Checkpoints = append(b.Checkpoints, cp.Note)
			sizes = append(sizes, cp.Size)
		}
		if len(cps) < exportChunk {
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
		b.Proofs = append(b.Proofs, bundle.Proof{From: sizes[i-1], To: sizes[i], Hashes: p})
	}
	return b, nil
}
