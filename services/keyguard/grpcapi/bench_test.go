package grpcapi_test

import (
	"bytes"
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/credmatrix/credmatrix/platform/benchload"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"

	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"
)

// nullAuditor acknowledges at once: with it, the benchmark measures
// keyguard's gRPC path (bufconn, no TLS) without the audit log, to split
// the end-to-end figures of clients/keyguardclient into keyguard's share
// and the audit service's.
type nullAuditor struct{ seq atomic.Uint64 }

func (a *nullAuditor) Append(context.Context, *auditv1.Event) (*auditv1.AppendResult, error) {
	return &auditv1.AppendResult{Sequence: a.seq.Add(1)}, nil
}

// BenchmarkEncryptNoAudit1KiB: Encrypt of 1 KiB over gRPC (bufconn), 16
// concurrent callers, audit acknowledged at once.
func BenchmarkEncryptNoAudit1KiB(b *testing.B) {
	kr, err := localkms.Open(filepath.Join(b.TempDir(), "keystore.json"), bytes.Repeat([]byte{3}, 32))
	if err != nil {
		b.Fatal(err)
	}
	if err := kr.EnsureRing(context.Background(), "confidential", "eu-west-1"); err != nil {
		b.Fatal(err)
	}
	svc, err := keyguard.New(context.Background(), keyguard.Config{
		Backend: kr, Auditor: &nullAuditor{}, BackendName: "local",
		Rings:  []keyguard.Ring{{DataClass: "confidential", Region: "eu-west-1"}},
		Grants: []keyguard.Grant{{Principal: app, DataClass: "confidential", Regions: []string{"eu-west-1"}, Operations: []keyguard.Operation{keyguard.OpEncrypt}}},
	})
	if err != nil {
		b.Fatal(err)
	}
	c := serve(b, svc)
	req := &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: make([]byte, 1024), EncryptionContext: encCtx}
	ctx := as(app)
	benchload.Run(b, 16, "ops", func(int) error {
		_, err := c.Encrypt(ctx, req)
		return err
	})
}
