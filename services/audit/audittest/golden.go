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

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// GoldenOrigin is the origin of the golden log.
const GoldenOrigin = "golden.credmatrix.local/audit"

// Golden is the golden log: the Scenario appended one event at a time to
// a log with a fixed clock and a key derived from a fixed seed, signing a
// checkpoint every 4 events.
type Golden struct {
	// Bundle is the export, in the bundle format.
	Bundle []byte
	// PublicKey is the verifier key.
	PublicKey string
	// Kept is an older checkpoint (tree size 9) an operator kept.
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
	log, err := audit.Open(ctx, store, audit.WithSigner(signer, 4, 0), audit.WithClock(func() time.Time { return auditclienttest.T0.Add(time.Hour) }))
	if err != nil {
		return nil, err
	}
	for i, e := range auditclienttest.Scenario() {
		if _, err := log.Append(ctx, "spiffe://credmatrix.dev/broker", []*auditv1.Event{e}); err != nil {
			return nil, fmt.Errorf("append scenario event %d: %w", i, err)
		}
	}
	log.Close()
	b, err := audit.ExportBundle(ctx, store, signer.Origin(), vkey)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := b.Write(&buf); err != nil {
		return nil, err
	}
	cps, err := store.Checkpoints(ctx, 9, 1)
	if err != nil || len(cps) != 1 || cps[0].Size != 9 {
		return nil, fmt.Errorf("golden log: no checkpoint at size 9 (%v)", err)
	}
	return &Golden{Bundle: buf.Bytes(), PublicKey: vkey, Kept: cps[0].Note}, nil
}
