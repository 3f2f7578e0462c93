package audittest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"

	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/credmatrix/credmatrix/clients/auditclient/auditclienttest"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/memstore"
)

// GoldenOrigin is the origin of the golden log.
const GoldenOrigin = "golden.credmatrix.local/audit"

// Golden is the golden log: the Scenario appended 4 events at a time to a
// log with a fixed clock and a key derived from a fixed seed, so it holds
// a signed checkpoint per commit batch (tree sizes 4, 8, 12 and 13).
type Golden struct {
	// Bundle is the export, in the bundle format.
	Bundle []byte
	// PublicKey is the verifier key.
	PublicKey string
	// Kept is an older checkpoint (tree size 8) an operator kept.
	Kept []byte
}

// GenerateGolden builds the golden log. It is deterministic: Ed25519
// signatures are, and every time comes from the fixed clock.
func GenerateGolden(ctx context.Context) (*Golden, error) {
	seed := sha256.Sum256([]byte("credmatrix golden audit log: test key, never use elsewhere"))
	skey, vkey, err := note.GenerateKey(bytes.NewReader(seed[:]), GoldenOrigin)
	if err != nil {
		return nil, err
	}
	signer, err := checkpoint.NewSigner(skey)
	if err != nil {
		return nil, err
	}
	store := memstore.New()
	log, err := audit.Open(ctx, store, audit.WithSigner(signer), audit.WithClock(func() time.Time { return auditclienttest.T0.Add(time.Hour) }))
	if err != nil {
		return nil, err
	}
	scenario := auditclienttest.Scenario()
	for i := 0; i < len(scenario); i += 4 {
		batch := scenario[i:min(i+4, len(scenario))]
		if _, err := log.Append(ctx, "spiffe://credmatrix.dev/broker", batch); err != nil {
			return nil, fmt.Errorf("append scenario events %d to %d: %w", i, i+len(batch)-1, err)
		}
	}
	log.Close()
	b, _, err := audit.ExportBundle(ctx, store, signer.Origin(), vkey)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := b.Write(&buf); err != nil {
		return nil, err
	}
	cps, err := store.Checkpoints(ctx, 8, 1)
	if err != nil || len(cps) != 1 || cps[0].Size != 8 {
		return nil, fmt.Errorf("golden log: no checkpoint at size 8 (%v)", err)
	}
	return &Golden{Bundle: buf.Bytes(), PublicKey: vkey, Kept: cps[0].Note}, nil
}
