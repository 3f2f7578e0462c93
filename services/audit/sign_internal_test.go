package audit

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/services/audit/tiles"
)

// noTiles is a tile store that holds none (the benchmark's tree is built
// in memory).
type noTiles struct{}

func (noTiles) ReadTiles(_ context.Context, ids []tiles.ID) ([][]byte, error) {
	return make([][]byte, len(ids)), nil
}

// BenchmarkBatchCheckpoint measures what signing every commit batch costs
// the committer: staging the batch's leaf hashes on the tree (a tree of a
// million events), its root and the Ed25519 signed note. Per event it is
// this divided by the batch size; note-bytes is what each batch adds to
// the store.
//
//	go test -run '^$' -bench BatchCheckpoint ./services/audit/
func BenchmarkBatchCheckpoint(b *testing.B) {
	skey, _, err := checkpoint.GenerateKey("bench.credmatrix.local/audit")
	if err != nil {
		b.Fatal(err)
	}
	signer, err := checkpoint.NewSigner(skey)
	if err != nil {
		b.Fatal(err)
	}
	l := &Log{signer: signer, clock: time.Now}
	t := tiles.New(noTiles{})
	leaves := make([]tiles.Hash, 1<<20)
	for i := range leaves {
		var h [8]byte
		binary.BigEndian.PutUint64(h[:], uint64(i))
		leaves[i] = sha256.Sum256(h[:])
	}
	t.Commit(t.Stage(leaves))
	for _, n := range []int{1, 16, 64} {
		hashes := make([]tiles.Hash, n)
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			var size int
			var ru0, ru1 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			for b.Loop() {
				st := t.Stage(hashes)
				cp, err := l.sign(st.Size(), st.Root())
				if err != nil {
					b.Fatal(err)
				}
				size = len(cp.Note)
			}
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
			b.ReportMetric(float64(cpu)/float64(b.N)/1000, "cpu-us/batch")
			b.ReportMetric(float64(size), "note-bytes")
		})
	}
}
