package audit

import (
	"errors"
	"fmt"
	"time"
)

// ErrorCode classifies a domain error so that the edge (gRPC, CLI) can pick
// a status without inspecting messages.
type ErrorCode string

// The error codes of the audit domain. Each maps to one gRPC status code in
// grpcapi; anything that is not an *Error is an internal error there.
const (
	// Invalid means the caller's input is wrong; the message names the field.
	Invalid ErrorCode = "invalid"
	// Unavailable means the log cannot record or read right now (store
	// failure, shutting down); the caller may retry.
	Unavailable ErrorCode = "unavailable"
	// NotFound means the requested entity does not exist.
	NotFound ErrorCode = "not_found"
	// PermissionDenied means the caller's identity may not do this.
	PermissionDenied ErrorCode = "permission_denied"
	// ResourceExhausted means the log is overloaded and recorded nothing of
	// the request; the caller should back off and retry.
	ResourceExhausted ErrorCode = "resource_exhausted"
)

// Error is a domain error. Message is safe to show to the caller (it never
// carries a secret or a store's error text); Err is the cause, for logs only.
type Error struct {
	// Code classifies the error.
	Code ErrorCode
	// Message is the caller-facing text; for Invalid it starts with the
	// field path, e.g. "events[2].kind: required".
	Message string
	// Err is the underlying cause, if any. It is never shown to callers.
	Err error
	// RetryAfter, for ResourceExhausted and Unavailable, is how long the
	// caller should wait before retrying; 0 means no advice.
	RetryAfter time.Duration
}

// Error returns the message followed by the cause, for logs.
func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

// Unwrap returns the cause so that errors.Is and errors.As see through.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCodeOf returns the code of the first *Error in err's chain, or "" if
// err is nil or not a domain error.
func ErrorCodeOf(err error) ErrorCode {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// unavailable wraps a store failure: the caller learns only that the log is
// unavailable; the cause stays in Err for the edge to log.
func unavailable(msg string, err error) error {
	var e *Error
	if errors.As(err, &e) && e.Code != "" {
		return err // already classified by the store (e.g. a bad page token)
	}
	return &Error{Code: Unavailable, Message: msg, Err: err}
}
