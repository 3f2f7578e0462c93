package keyguardclient

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// DataKeyCacheRequests is the name of the client-side counter of data-key
// cache lookups, by cache ("encrypt": GenerateDataKey keys for
// EncryptLocal; "decrypt": unwrapped keys for DecryptLocal) and result
// ("hit": served from the cache; "miss": fetched from keyguard;
// "coalesced": served by a fetch another caller had in flight; "oversize": a message too large for any cached
// key, given a key of its own).
const DataKeyCacheRequests = "credmatrix_keyguardclient_datakey_cache_requests_total"

// WithMetrics counts data-key cache lookups (DataKeyCacheRequests) in reg,
// the application's own registry. Several clients may share one registry:
// their counts add up. Labels hold no key material, ring or context.
func WithMetrics(reg prometheus.Registerer) Option {
	return func(c *Client) {
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
		c.cacheM = cv
	}
}
