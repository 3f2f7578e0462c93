package broker

import (
	"time"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// Messages shown to callers for failures whose cause must stay private.
const (
	msgUnauthenticated     = "token verification failed"
	msgAuditUnavailable    = "audit log unavailable; no credentials issued"
	msgIssuerUnavailable   = "token issuer unavailable; no credentials issued"
	msgProviderUnavailable = "credential provider unavailable; no credentials issued"
	msgInternal            = domainerr.InternalMessage
	msgStateUnavailable    = "broker state store unavailable; no credentials issued"
	msgTokenReplayed       = "token verification failed"
)

// Denial is what a caller may learn about a refused target: the Detail of
// a PermissionDenied *domainerr.Error, which the gRPC edge turns into a
// DenialDetail.
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

func invalidf(field, msg string) error {
	return &domainerr.Error{Code: domainerr.Invalid, Message: field + ": " + msg}
}
