package keyguard_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"
)

// nullAuditor acknowledges every event at once: the benchmarks below
// measure keyguard's own work (grant check, data key, wrap, seal, event
// building), without the audit round trip.
type nullAuditor struct{}

func (nullAuditor) Append(context.Context, *auditv1.Event) (*auditv1.AppendResult, error) {
	return &auditv1.AppendResult{}, nil
}

func (nullAuditor) AppendBatch(_ context.Context, evs []*auditv1.Event) ([]*auditv1.AppendResult, error) {
	out := make([]*auditv1.AppendResult, len(evs))
	for i := range out {
		out[i] = &auditv1.AppendResult{}
	}
	return out, nil
}

func benchService(b *testing.B) *keyguard.Service {
	kr, err := localkms.Open(filepath.Join(b.TempDir(), "keystore.json"), bytes.Repeat([]byte{1}, 32))
	if err != nil {
		b.Fatal(err)
	}
	if err := kr.EnsureRing(context.Background(), euRing.DataClass, euRing.Region); err != nil {
		b.Fatal(err)
	}
	svc, err := keyguard.New(context.Background(), keyguard.Config{Backend: kr, Auditor: nullAuditor{}, Rings: []keyguard.Ring{euRing}, Grants: grants, BackendName: "local"})
	if err != nil {
		b.Fatal(err)
	}
	return svc
}

// BenchmarkServiceEncrypt1KiB is the domain cost of one Encrypt.
func BenchmarkServiceEncrypt1KiB(b *testing.B) {
	svc := benchService(b)
	in := keyguard.EncryptInput{DataClass: euRing.DataClass, Region: euRing.Region, Plaintext: make([]byte, 1024), Context: encCtx}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := svc.Encrypt(context.Background(), app, in); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkServiceEncryptBatch100x1KiB is the domain cost of a batch of
// 100 records; records/s is what keyguard alone could sustain.
func BenchmarkServiceEncryptBatch100x1KiB(b *testing.B) {
	svc := benchService(b)
	items := make([]keyguard.EncryptInput, 100)
	for i := range items {
		items[i] = keyguard.EncryptInput{DataClass: euRing.DataClass, Region: euRing.Region, Plaintext: make([]byte, 1024), Context: encCtx}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			for _, r := range svc.EncryptBatch(context.Background(), app, items) {
				if r.Err != nil {
					b.Fatal(r.Err)
				}
			}
		}
	})
	b.ReportMetric(float64(b.N*len(items))/b.Elapsed().Seconds(), "records/s")
}
