package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
)

// BenchmarkDurableAppend measures group-committed, fsynced appends of one
// event per call from 1, 16 and 64 concurrent callers, as the broker and
// keyguard make them. It reports events/s and the p50/p99 latency of one
// Append (enqueue to durable acknowledgement).
//
//	go test -run '^$' -bench DurableAppend -benchtime 20000x ./services/audit/sqlite/
func BenchmarkDurableAppend(b *testing.B) {
	for _, callers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			store, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "audit.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			log := audittest.OpenLog(b, store, audit.WithSigner(audittest.NewSigner(b)))
			audittest.RunAppendBenchmark(b, log, callers)
		})
	}
}
