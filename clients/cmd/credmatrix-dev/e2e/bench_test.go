package e2e

import (
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/benchload"
)

// reportLatency adds p50 and p99 in milliseconds to a benchmark's output.
func reportLatency(b *testing.B, lat []time.Duration) {
	benchload.Report(b, "", len(lat), lat, time.Second)
}
