// Package keyguardprom exports the keyguard client library's data-key
// cache metrics to Prometheus. It is a package of its own so that a
// program using keyguardclient without Prometheus (the credmatrix CLI)
// does not link the Prometheus client, whose initialisation runs at every
// process start.
package keyguardprom

import (
	"errors"

	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/prometheus/client_golang/prometheus"
)

// DataKeyCacheRequests is the name of the client-side counter of data-key
// cache lookups, by cache ("encrypt", "decrypt") and result ("hit",
// "miss", "coalesced", "oversize"; see keyguardclient.WithCacheObserver).
const DataKeyCacheRequests = "credmatrix_keyguardclient_datakey_cache_requests_total"

// WithMetrics counts the client's data-key cache lookups
// (DataKeyCacheRequests) in reg, the application's own registry. Several
// clients may share one registry: their counts add up. Labels hold no key
// material, ring or context.
func WithMetrics(reg prometheus.Registerer) keyguardclient.Option {
	cv := register(reg)
	return keyguardclient.WithCacheObserver(func(cache, result string) { cv.WithLabelValues(cache, result).Inc() })
}

// register registers the counter in reg, or returns the one a client
// registered there before.
func register(reg prometheus.Registerer) *prometheus.CounterVec {
	cv := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: DataKeyCacheRequests,
		Help: "Data-key cache lookups of the keyguard client library, by cache (encrypt, decrypt) and result (hit, miss, coalesced, oversize).",
	}, []string{"cache", "result"})
	if err := reg.Register(cv); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			panic(err) // a different metric of the same name: a programming error
		}
		cv = are.ExistingCollector.(*prometheus.CounterVec)
	}
	return cv
}
