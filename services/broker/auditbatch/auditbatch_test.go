package auditbatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
)

// fakeAudit records batch sizes and answers with sequence numbers; the
// first call waits on gate when it is set.
type fakeAudit struct {
	mu      sync.Mutex
	batches []int
	next    uint64
	gate    chan struct{}
	entered chan struct{}
	err     error
}

func (f *fakeAudit) Append(_ context.Context, in *auditv1.AppendRequest, _ ...grpc.CallOption) (*auditv1.AppendResponse, error) {
	f.mu.Lock()
	first := len(f.batches) == 0
	f.batches = append(f.batches, len(in.GetEvents()))
	f.mu.Unlock()
	if first && f.gate != nil {
		close(f.entered)
		<-f.gate
	}
	if f.err != nil {
		return nil, f.err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &auditv1.AppendResponse{}
	for _, ev := range in.GetEvents() {
		resp.Results = append(resp.Results, &auditv1.AppendResult{Id: ev.GetId(), Sequence: f.next})
		f.next++
	}
	return resp, nil
}

func TestBatchesWhileBusy(t *testing.T) {
	f := &fakeAudit{gate: make(chan struct{}), entered: make(chan struct{})}
	b := newBatcher(f, WithLimits(100, 1))
	type res struct {
		id  string
		seq uint64
		err error
	}
	results := make(chan res, 11)
	appendOne := func(id string) {
		r, err := b.Append(context.Background(), &auditv1.Event{Id: id})
		results <- res{id, r.GetSequence(), err}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); appendOne("first") }()
	<-f.entered // the first request is in flight: the next ten queue
	for i := range 10 {
		wg.Add(1)
		go func() { defer wg.Done(); appendOne(fmt.Sprint("e", i)) }()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		n := len(b.queue)
		b.mu.Unlock()
		if n == 10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(f.gate)
	wg.Wait()
	close(results)
	seqs := map[uint64]bool{}
	for r := range results {
		if r.err != nil {
			t.Fatalf("%s: %v", r.id, r.err)
		}
		seqs[r.seq] = true
	}
	if diff := cmp.Diff([]any{f.batches, len(seqs)}, []any{[]int{1, 10}, 11}); diff != "" {
		t.Errorf("(batch sizes, distinct sequences) (-got +want):\n%s", diff)
	}
}

func TestFailedBatchFailsEveryEvent(t *testing.T) {
	f := &fakeAudit{err: errors.New("audit down")}
	b := newBatcher(f)
	_, err := b.Append(context.Background(), &auditv1.Event{Id: "x"})
	if err == nil || !errors.Is(err, f.err) {
		t.Errorf("Append error = %v, want the batch's error", err)
	}
}

func TestCancelledCaller(t *testing.T) {
	f := &fakeAudit{gate: make(chan struct{}), entered: make(chan struct{})}
	b := newBatcher(f)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := b.Append(ctx, &auditv1.Event{Id: "x"}); errc <- err }()
	<-f.entered
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Append error = %v, want context.Canceled", err)
	}
	close(f.gate)
}
