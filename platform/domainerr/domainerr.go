// Package domainerr is the one error shape of the credmatrix services.
//
// Domain packages (broker, keyguard, audit and their backends) return an
// *Error whenever the caller should learn something: a Code it can act on
// (fix the request, retry later, ask an operator) and a Message that is
// safe to show. The cause stays in Err, for the log only. Nothing here
// knows about gRPC: the one mapping from Code to a gRPC status is
// grpcserver.ToStatus, at the edge, and anything that is not an *Error is
// Internal there, with a fixed message.
package domainerr

import (
	"errors"
	"fmt"
	"time"
)

// Code classifies a domain error. Each code maps to exactly one gRPC status
// code at the edge.
type Code string

// The error codes. Each is something a caller can act on differently.
const (
	// Invalid means the request is wrong; the message starts with the
	// field it names, e.g. "events[2].kind: required".
	Invalid Code = "invalid"
	// Unauthenticated means the caller's credential (token, certificate)
	// did not verify. The message must be fixed and reveal nothing about
	// why.
	Unauthenticated Code = "unauthenticated"
	// PermissionDenied means the caller is known but not allowed.
	PermissionDenied Code = "permission_denied"
	// NotFound means the thing asked about does not exist (or cannot be
	// shown to this caller).
	NotFound Code = "not_found"
	// FailedPrecondition means the request is well formed but the current
	// state refuses it; retrying will not help until the state changes.
	FailedPrecondition Code = "failed_precondition"
	// ResourceExhausted means a limit refused the request and nothing was
	// done; the caller should back off (RetryAfter, when set) and retry.
	ResourceExhausted Code = "resource_exhausted"
	// Unavailable means a dependency (the audit log, a store, an issuer, a
	// cloud API) cannot serve right now and nothing was done; the caller
	// may retry (after RetryAfter, when set).
	Unavailable Code = "unavailable"
	// Internal means a bug or a misconfiguration. Callers are told only
	// InternalMessage; the cause is logged.
	Internal Code = "internal"
)

// InternalMessage is all a caller learns of an internal error.
const InternalMessage = "internal error"

// Error is a domain error.
type Error struct {
	// Code classifies the error.
	Code Code
	// Message is what the caller is told. It never carries a secret,
	// upstream (AWS, KMS, store) error text or anything the caller sent
	// that was not bounded first.
	Message string
	// Err is the underlying cause, if any: for logs only, never shown to
	// callers.
	Err error
	// RetryAfter, for ResourceExhausted and Unavailable, is how long the
	// caller should wait before retrying; 0 gives no advice.
	RetryAfter time.Duration
	// Detail is what a service's edge may add to the status beyond the
	// message (the broker's denial detail); nil for most errors.
	Detail any
}

// Error returns the message followed by the cause, for logs.
func (e *Error) Error() string {
	if e.Err == nil {
		return e.Message
	}
	return e.Message + ": " + e.Err.Error()
}

// Unwrap returns the cause so that errors.Is and errors.As see through.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with code and a formatted message. The
// arguments become part of what the caller is told.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of the first *Error in err's chain, Internal for
// any other non-nil error, and "" for nil.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	if e, ok := errors.AsType[*Error](err); ok && known(e.Code) {
		return e.Code
	}
	return Internal
}

// MessageOf returns what a caller may be told of err: the Message of the
// first *Error in its chain, or InternalMessage for internal and unknown
// errors, whose text may hold details the caller must not see; "" for nil.
func MessageOf(err error) string {
	if err == nil {
		return ""
	}
	if e, ok := errors.AsType[*Error](err); ok && known(e.Code) && e.Code != Internal {
		return e.Message
	}
	return InternalMessage
}

// known reports whether c is one of the codes above: an *Error with any
// other code is treated as Internal, so a typo never leaks its message.
func known(c Code) bool {
	switch c {
	case Invalid, Unauthenticated, PermissionDenied, NotFound, FailedPrecondition, ResourceExhausted, Unavailable, Internal:
		return true
	}
	return false
}
