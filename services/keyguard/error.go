package keyguard

import "errors"

// Code classifies a domain error. The gRPC edge maps each code to one status
// code; nothing in this package knows about gRPC.
type Code string

// The error codes. A caller can act on each differently: fix the request,
// create the ring or grant, retry later, or report a bug.
const (
	// Invalid means the request is wrong; the message names the field.
	Invalid Code = "invalid"
	// NotFound means the key ring or key version does not exist.
	NotFound Code = "not_found"
	// PermissionDenied means no grant allows the caller the operation.
	PermissionDenied Code = "permission_denied"
	// FailedPrecondition means the request is well formed but the state
	// refuses it: a retired key version, a grant defined in configuration.
	FailedPrecondition Code = "failed_precondition"
	// Unavailable means a dependency (the audit log, the KEK backend) is
	// down; nothing was performed and the request may be retried.
	Unavailable Code = "unavailable"
	// Internal means a bug or a misconfiguration; the message is fixed and
	// the cause is only in Err, for the log.
	Internal Code = "internal"
)

// Error is a domain error: a code, a message that is safe to show to the
// caller (never a key, a plaintext or upstream error text) and, for the log
// only, the underlying cause.
type Error struct {
	// Code classifies the error.
	Code Code
	// Message is safe to return to the caller. For Invalid it starts with the
	// field name, e.g. "data_class: required".
	Message string
	// Err is the cause, for logging; it is never shown to the caller.
	Err error
}

// Error returns the message followed by the cause, if any, for logs.
func (e *Error) Error() string {
	if e.Err == nil {
		return e.Message
	}
	return e.Message + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// ErrorCode returns the code of the first *Error in err's chain, Internal
// for any other non-nil error, and "" for nil.
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Code
	}
	return Internal
}

// ErrorMessage returns the caller-safe message of the first *Error in err's
// chain, or "internal error" for any other error, whose text may hold
// details the caller must not see.
func ErrorMessage(err error) string {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Message
	}
	return "internal error"
}

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
