package keyguard

import "errors"

// Errors a KeyBackend wraps, so that the Service can answer its callers
// without knowing which backend it talks to.
var (
	// ErrKeyNotFound means the backend has no such ring or key version.
	ErrKeyNotFound = errors.New("key not found")
	// ErrUnwrap means a wrapped data key did not authenticate under the
	// named key version: it was tampered with or belongs to another ring.
	ErrUnwrap = errors.New("wrapped key did not authenticate")
	// ErrBackendUnavailable means the backend could not be reached or
	// throttled the request; retrying later may succeed.
	ErrBackendUnavailable = errors.New("key backend unavailable")
)
