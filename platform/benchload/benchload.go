// Package benchload runs benchmark bodies the way the project's speed
// targets are stated — a fixed number of concurrent callers — and reports
// throughput with p50 and p99 latency, so every benchmark measures and
// prints them the same way.
package benchload

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Run calls op from callers goroutines until b.N calls are done in total,
// then reports "<unit>/s", "p50-ms" and "p99-ms". op gets its caller's
// index (0..callers-1), so each caller can hold its own token or client.
// The first error stops that caller and fails the benchmark.
func Run(b *testing.B, callers int, unit string, op func(caller int) error) {
	b.Helper()
	var next atomic.Int64
	lat := make([][]time.Duration, callers)
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range callers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := op(i); err != nil {
					b.Error(err)
					return
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	Report(b, unit, len(all), all, elapsed)
}

// Report reports count/elapsed as "<unit>/s" and the p50 and p99 of lat in
// milliseconds. It sorts lat.
func Report(b *testing.B, unit string, count int, lat []time.Duration, elapsed time.Duration) {
	b.Helper()
	if len(lat) == 0 || elapsed <= 0 {
		return
	}
	slices.Sort(lat)
	if unit != "" {
		b.ReportMetric(float64(count)/elapsed.Seconds(), unit+"/s")
	}
	b.ReportMetric(Percentile(lat, 0.50), "p50-ms")
	b.ReportMetric(Percentile(lat, 0.99), "p99-ms")
}

// Percentile returns the p-quantile (0..1) of sorted, in milliseconds.
func Percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(p*float64(len(sorted)-1))].Microseconds()) / 1000
}
