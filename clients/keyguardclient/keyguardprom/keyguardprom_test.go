package keyguardprom

import (
	"testing"

	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestSharedRegistry: two clients may register on one registry (their
// counts add up) instead of panicking.
func TestSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	for range 2 {
		_ = keyguardclient.New(nil, WithMetrics(reg))
	}
	cv := register(reg)
	cv.WithLabelValues("encrypt", "miss").Inc()
	register(reg).WithLabelValues("encrypt", "miss").Inc()
	if v := testutil.ToFloat64(cv.WithLabelValues("encrypt", "miss")); v != 2 {
		t.Errorf("misses = %v, want 2 (one per registration)", v)
	}
	if n, err := testutil.GatherAndCount(reg, DataKeyCacheRequests); err != nil || n != 1 {
		t.Errorf("series of %s = %d (%v), want 1", DataKeyCacheRequests, n, err)
	}
}
