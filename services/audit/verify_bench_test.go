package audit_test

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
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
// 100,000 realistic events (half issued sessions, half key operations)
// in commit batches of 1000 (read from bytes, every leaf re-hashed, the
// tree rebuilt, the 100 checkpoints checked), alone, followed by replay
// of the leaves (as the CLI does), and followed by a full decode and
// replay of every event: events/s over the whole pipeline, and the CPU
// time per event (steadier on a busy machine).
//
//	go test -run '^$' -bench VerifyReplay -benchtime 5x ./services/audit/
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
			if j%2 == 1 {
				// Half key operations, as keyguard records them.
				batch[j].Kind = auditv1.Kind_KIND_KEY_ENCRYPT
				batch[j].Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{
					DataClass: "confidential", Region: "eu-west-1", KeyVersion: 3, Backend: "local",
					EncryptionContext: map[string]string{"app": "billing", "tenant": "t-42"}, PlaintextBytes: 1024,
				}}
			}
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
	// cpu reports the CPU time of the process per event of the loop.
	cpu := func(b *testing.B, start syscall.Rusage) {
		var end syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &end)
		d := end.Utime.Nano() + end.Stime.Nano() - start.Utime.Nano() - start.Stime.Nano()
		b.ReportMetric(float64(d)/float64(n*b.N), "cpu-ns/event")
	}
	// As 'credmatrix audit replay' does: verify, then replay the leaves,
	// decoding only what replay uses.
	b.Run("verify+replay", func(b *testing.B) {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		start := time.Now()
		for b.Loop() {
			got, err := bundle.Read(bytes.NewReader(raw.Bytes()))
			if err != nil {
				b.Fatal(err)
			}
			r := verify.Bundle(got, verify.Options{Key: signer.Verifier(), KeepLeaves: true})
			if !r.OK() {
				b.Fatal(r.Problem)
			}
			rp := replay.New()
			for _, data := range r.Leaves {
				l, err := replay.ReadLeaf(data)
				if err != nil {
					b.Fatal(err)
				}
				if err := rp.ApplyLeaf(l); err != nil {
					b.Fatal(err)
				}
			}
			_ = rp.SessionsAt(time.Now(), replay.SessionFilter{})
		}
		b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "events/s")
		cpu(b, ru)
		b.ReportMetric(0, "ns/op")
	})
	// Every event decoded whole, then replayed (Apply).
	b.Run("verify+decode+replay", func(b *testing.B) {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
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
		cpu(b, ru)
		b.ReportMetric(0, "ns/op")
	})
	b.Run("verify", func(b *testing.B) {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
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
		cpu(b, ru)
		b.ReportMetric(0, "ns/op")
	})
}
