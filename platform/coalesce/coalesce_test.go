package coalesce

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// gatedRead is a read that counts its calls and blocks each one until the
// test releases it.
type gatedRead struct {
	calls   atomic.Int64
	started chan int64
	release chan error
}

func newGatedRead() *gatedRead {
	return &gatedRead{started: make(chan int64, 16), release: make(chan error)}
}

func (g *gatedRead) read(ctx context.Context) (int64, error) {
	n := g.calls.Add(1)
	g.started <- n
	select {
	case err := <-g.release:
		return n, err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// waitQueued waits until n callers wait for the next read.
func waitQueued[T any](t *testing.T, f *Fresh[T], n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.mu.Lock()
		queued := f.next != nil && f.next.callers == n
		f.mu.Unlock()
		if queued {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d callers did not queue for the next read within 10s", n)
		}
		time.Sleep(time.Millisecond)
	}
}

type result struct {
	v   int64
	err error
}

func get(f *Fresh[int64], ctx context.Context) chan result {
	ch := make(chan result, 1)
	go func() {
		v, err := f.Get(ctx)
		ch <- result{v, err}
	}()
	return ch
}

func TestInFlightReadIsNotShared(t *testing.T) {
	g := newGatedRead()
	f := New(g.read, time.Minute)
	ctx := context.Background()

	a := get(f, ctx)
	if n := <-g.started; n != 1 {
		t.Fatalf("first read is call %d", n)
	}
	// b and c arrive while read 1 is in flight: they must wait for read 2.
	b := get(f, ctx)
	c := get(f, ctx)
	waitQueued(t, f, 2)
	g.release <- nil
	if r := <-a; r.v != 1 || r.err != nil {
		t.Errorf("a = %+v, want read 1", r)
	}
	if n := <-g.started; n != 2 {
		t.Fatalf("second read is call %d", n)
	}
	g.release <- nil
	for name, ch := range map[string]chan result{"b": b, "c": c} {
		if r := <-ch; r.v != 2 || r.err != nil {
			t.Errorf("%s = %+v, want read 2 (a read started after it called)", name, r)
		}
	}
	if got := g.calls.Load(); got != 2 {
		t.Errorf("%d reads for 3 callers in two waves, want 2", got)
	}
}

func TestErrorsReachTheirWave(t *testing.T) {
	g := newGatedRead()
	f := New(g.read, time.Minute)
	a := get(f, context.Background())
	<-g.started
	boom := errors.New("boom")
	g.release <- boom
	if r := <-a; !errors.Is(r.err, boom) {
		t.Errorf("a = %+v, want boom", r)
	}
	b := get(f, context.Background())
	<-g.started
	g.release <- nil
	if r := <-b; r.err != nil || r.v != 2 {
		t.Errorf("b after a failed read = %+v, want read 2", r)
	}
}

func TestCancelledCallerLeavesOthers(t *testing.T) {
	g := newGatedRead()
	f := New(g.read, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	a := get(f, ctx)
	<-g.started
	b := get(f, context.Background())
	waitQueued(t, f, 1)
	cancel()
	if r := <-a; !errors.Is(r.err, context.Canceled) {
		t.Errorf("cancelled a = %+v, want context.Canceled", r)
	}
	g.release <- nil // read 1 completes for nobody
	<-g.started
	g.release <- nil
	if r := <-b; r.err != nil || r.v != 2 {
		t.Errorf("b = %+v, want read 2", r)
	}
}

func TestReadTimeout(t *testing.T) {
	f := New(func(ctx context.Context) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	}, time.Millisecond)
	if _, err := f.Get(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get = %v, want the read's deadline error", err)
	}
}

func BenchmarkGetParallel(b *testing.B) {
	var n atomic.Int64
	f := New(func(context.Context) (int64, error) {
		time.Sleep(50 * time.Microsecond) // a loopback database round trip
		return n.Add(1), nil
	}, 0)
	b.SetParallelism(16) // 32 callers on 2 cores
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.Get(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(n.Load())/float64(b.N), "reads/op")
}
