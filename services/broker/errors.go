package broker

import (
	"errors"
	"time"
)

// Code classifies a domain error. The gRPC edge maps each code to one
// status code; nothing else in the service knows about gRPC.
type Code string

// Error codes.
const (
	// Invalid means the request is malformed; the message names the field.
	Invalid Code = "invalid"
	// Unauthenticated means the token did not verify; the message is
	// fixed so that it reveals nothing.
	Unauthenticated Code = "unauthenticated"
	// PermissionDenied means the trust policy refused; Error.Denial says
	// which rule and why.
	PermissionDenied Code = "permission_denied"
	// Unavailable means a dependency (audit log, issuer, provider) is down
	// and nothing was issued; the caller may retry.
	Unavailable Code = "unavailable"
	// NotFound means the thing asked about does not exist (or cannot be
	// shown to this caller).
	NotFound Code = "not_found"
	// Internal is a bug or an unexpected failure; callers are told nothing.
	Internal Code = "internal"
	// ResourceExhausted means a rate limit refused the request; Error.RetryAfter
	// says when to retry.
	ResourceExhausted Code = "resource_exhausted"
	// FailedPrecondition means the operation cannot run in the current
	// state (e.g. a new trust policy failed validation); the message says
	// why.
	FailedPrecondition Code = "failed_precondition"
)

// Messages shown to callers for failures whose cause must stay private.
const (
	msgUnauthenticated     = "token verification failed"
	msgAuditUnavailable    = "audit log unavailable; no credentials issued"
	msgIssuerUnavailable   = "token issuer unavailable; no credentials issued"
	msgProviderUnavailable = "credential provider unavailable; no credentials issued"
	msgInternal            = "internal error"
	msgStateUnavailable    = "broker state store unavailable; no credentials issued"
	msgTokenReplayed       = "token verification failed"
)

// Error is a domain error. Message is safe to show the caller; Err is the
// cause, for logs only.
type Error struct {
	// Code classifies the error.
	Code Code
	// Message is what the caller is told.
	Message string
	// Err is the underlying cause, if any. Never shown to callers.
	Err error
	// Denial details a PermissionDenied error.
	Denial *Denial
	// RetryAfter says when a ResourceExhausted request may be retried.
	RetryAfter time.Duration
}

// Error returns the message and the cause, for logs.
func (e *Error) Error() string {
	if e.Err == nil {
		return e.Message
	}
	return e.Message + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Denial is what a caller may learn about a refused target.
type Denial struct {
	// Target is the index of the refused target in the request.
	Target int
	// Role is the role asked for.
	Role string
	// Account is the account asked for, as the caller wrote it.
	Account string
	// Rule is the rule that refused, policy.DefaultDeny when none allowed.
	Rule string
	// Reason says why, in words safe to show.
	Reason string
	// AuditEventID identifies the audit event recording the denial.
	AuditEventID string
	// Region is the region of the decision (the account's home region
	// when none was asked; "" for an unknown account).
	Region string
	// Duration is the duration asked for (0: none).
	Duration time.Duration
	// ScopeDown reports that the request carried a scope-down policy.
	ScopeDown bool
	// PolicySHA256 and PolicySource name the trust policy that decided.
	PolicySHA256, PolicySource string
	// DecidedAt is the time of the decision (for time-window rules).
	DecidedAt time.Time
}

// ErrorCode returns the code of err: the Code of a wrapped *Error,
// Internal for any other non-nil error and "" for nil.
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}

func invalidf(field, msg string) error {
	return &Error{Code: Invalid, Message: field + ": " + msg}
}
