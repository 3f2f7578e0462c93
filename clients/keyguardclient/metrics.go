package keyguardclient

// WithCacheObserver reports every data-key cache lookup to observe: the
// cache ("encrypt": GenerateDataKey keys for EncryptLocal; "decrypt":
// unwrapped keys for DecryptLocal) and the result ("hit": served from the
// cache; "miss": fetched from keyguard; "coalesced": served by a fetch
// another caller had in flight; "oversize": a message too large for any
// cached key, given a key of its own). Neither holds key material, ring
// or context. observe runs on the request path: keep it cheap.
//
// keyguardprom.WithMetrics counts the lookups in a Prometheus registry;
// the library itself does not link the Prometheus client, so programs
// that do not export metrics (the credmatrix CLI) do not pay its start-up.
func WithCacheObserver(observe func(cache, result string)) Option {
	return func(c *Client) { c.observe = observe }
}
