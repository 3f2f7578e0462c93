package largelog

import (
	"context"
	"fmt"
	"time"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/tiles"
)

// Commit stores one bulk batch in one transaction: its events (sequence
// set, leaf bytes), the signed checkpoint of the tree they complete, and
// the full tiles they complete. It is the store's own Append, as the
// audit Log calls it.
type Commit func(ctx context.Context, records []audit.Record, cp audit.StoredCheckpoint, tiles []tiles.Tile) error

// Options say what log to build.
type Options struct {
	// Events is how many events to append (after those already stored).
	Events uint64
	// From is the sequence of the first event (the store's head).
	From uint64
	// Seed makes the events (the same seed, the same events).
	Seed uint64
	// CheckpointEvery is how many events one batch (one transaction, one
	// signed checkpoint) holds; 0 means 1000.
	CheckpointEvery int
	// Progress, if set, is called after each batch.
	Progress func(done uint64)
}

// Stats describe a built log.
type Stats struct {
	// Size is the tree size at the end.
	Size uint64
	// LeafBytes is the total size of the events' leaf bytes.
	LeafBytes uint64
	// Checkpoints is how many checkpoints were signed.
	Checkpoints int
	// Elapsed is the wall time of the build.
	Elapsed time.Duration
}

// Build appends opts.Events generated events through commit, batch by
// batch, each with its signed checkpoint and full tiles, exactly as the
// audit Log commits them (tree is the log's tiles tree at opts.From; it is
// extended). Generation and serialisation run on another goroutine than
// the store writes.
func Build(ctx context.Context, commit Commit, tree *tiles.Tree, signer *checkpoint.Signer, opts Options) (Stats, error) {
	every := opts.CheckpointEvery
	if every <= 0 {
		every = 1000
	}
	if tree.Size() != opts.From {
		return Stats{}, fmt.Errorf("largelog: tree has %d leaves, the log starts at %d", tree.Size(), opts.From)
	}
	start := time.Now()
	type batch struct {
		records []audit.Record
		hashes  []tiles.Hash
		bytes   uint64
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan batch, 4)
	go func() {
		defer close(batches)
		g := NewGenerator(opts.Seed)
		end := opts.From + opts.Events
		for seq := opts.From; seq < end; {
			n := min(uint64(every), end-seq)
			b := batch{records: make([]audit.Record, n), hashes: make([]tiles.Hash, n)}
			for i := range n {
				e := g.Event(seq + i)
				data, err := leaf.Marshal(e)
				if err != nil {
					panic(fmt.Sprintf("largelog: marshal generated event: %v", err)) // generated events always marshal
				}
				b.records[i] = audit.Record{Event: e, Data: data}
				b.hashes[i] = leaf.Hash(data)
				b.bytes += uint64(len(data))
			}
			seq += n
			select {
			case batches <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	var st Stats
	crSize := uint64(0) // the last checkpoint stored with its compact range
	for b := range batches {
		staged := tree.Stage(b.hashes)
		note, err := signer.Sign(staged.Size(), staged.Root())
		if err != nil {
			return st, err
		}
		cp := audit.StoredCheckpoint{Size: staged.Size(), Note: note, Time: time.Now().UTC()}
		if audit.CompactRangeDue(crSize, cp.Size) {
			cp.CompactRange, crSize = staged.CompactRange(), cp.Size
		}
		if err := commit(ctx, b.records, cp, staged.Tiles); err != nil {
			return st, fmt.Errorf("largelog: commit events %d to %d: %w", b.records[0].Event.GetSequence(), staged.Size()-1, err)
		}
		tree.Commit(staged)
		st.LeafBytes += b.bytes
		st.Checkpoints++
		if opts.Progress != nil {
			opts.Progress(staged.Size() - opts.From)
		}
	}
	st.Size, st.Elapsed = tree.Size(), time.Since(start)
	return st, ctx.Err()
}
