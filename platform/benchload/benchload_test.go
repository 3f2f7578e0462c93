package benchload

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 100; i++ {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	if got := Percentile(lat, 0.5); got != 50 {
		t.Errorf("p50 = %v, want 50", got)
	}
	if got := Percentile(lat, 0.99); got != 99 {
		t.Errorf("p99 = %v, want 99", got)
	}
	if got := Percentile(nil, 0.5); got != 0 {
		t.Errorf("empty = %v", got)
	}
}

func TestRunCallsExactlyN(t *testing.T) {
	var calls atomic.Int64
	res := testing.Benchmark(func(b *testing.B) {
		calls.Store(0)
		Run(b, 4, "ops", func(int) error { calls.Add(1); return nil })
		if calls.Load() != int64(b.N) {
			b.Errorf("%d calls for b.N=%d", calls.Load(), b.N)
		}
	})
	if res.N == 0 || res.Extra["ops/s"] <= 0 {
		t.Fatalf("benchmark result %+v", res)
	}
	failed := testing.Benchmark(func(b *testing.B) {
		Run(b, 2, "ops", func(int) error { return errors.New("boom") })
	})
	if failed.N != 0 && failed.Extra["ops/s"] != 0 {
		t.Fatalf("errors must not produce throughput: %+v", failed)
	}
}
