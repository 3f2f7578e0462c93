package audit_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/replay"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/memstore"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// BenchmarkVerifyReplay measures offline verification of a bundle of
// 100,000 realistic events in commit batches of 1000 (read from bytes,
// every leaf re-hashed, the
// tree rebuilt, the 100 checkpoints checked), alone and followed by a full decode
// and replay: events/s over the whole pipeline.
//
//	go test -run '^$' -bench VerifyReplay -benchtime 5x ./services/audit/verify/
func BenchmarkVerifyReplay(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	signer := audittest.NewSigner(b)
	store := memstore.New()
	log, err := audit.Open(ctx, store, audit.WithSigner(signer))
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i += 1000 {
		batch := make([]*auditv1.Event, 1000)
		for j := range batch {
			batch[j] = audittest.BenchEvent(fmt.Sprintf("e-%d", i+j))
		}
		if _, err := log.Append(ctx, "broker", batch); err != nil {
			b.Fatal(err)
		}
	}
	log.Close()
	bu, _, err := audit.ExportBundle(ctx, store, signer.Origin(), signer.PublicKey())
	if err != nil {
		b.Fatal(err)
	}
	var raw bytes.Buffer
	bu.Write(&raw)
	b.Run("verify+replay", func(b *testing.B) {
		start := time.Now()
		for b.Loop() {
			got, err := bundle.Read(bytes.NewReader(raw.Bytes()))
			if err != nil {
				b.Fatal(err)
			}
			r := verify.Bundle(got, verify.Options{Key: signer.Verifier(), KeepEvents: true})
			if !r.OK() {
				b.Fatal(r.Problem)
			}
			rp := replay.New()
			for _, e := range r.DecodedEvents {
				rp.Apply(e)
			}
			_ = rp.SessionsAt(time.Now(), replay.SessionFilter{})
		}
		b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "events/s")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("verify", func(b *testing.B) {
		start := time.Now()
		for b.Loop() {
			got, err := bundle.Read(bytes.NewReader(raw.Bytes()))
			if err != nil {
				b.Fatal(err)
			}
			if r := verify.Bundle(got, verify.Options{Key: signer.Verifier()}); !r.OK() {
				b.Fatal(r.Problem)
			}
		}
		b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "events/s")
		b.ReportMetric(0, "ns/op")
	})
}
