package grpcapi

import (
	"context"
	"errors"
	"fmt"

	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Fixed messages for statuses whose cause must not reach the caller.
const (
	msgUnauthenticated = "token verification failed"
	msgInternal        = "internal error"
)

// toStatus maps a domain error to the status the caller sees. Only the
// domain's safe Message travels; causes never do. Anything that is not a
// domain error is Internal with a fixed message.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	var e *broker.Error
	if !errors.As(err, &e) {
		return status.Error(codes.Internal, msgInternal)
	}
	switch e.Code {
	case broker.Invalid:
		return status.Error(codes.InvalidArgument, e.Message)
	case broker.Unauthenticated:
		return status.Error(codes.Unauthenticated, msgUnauthenticated)
	case broker.PermissionDenied:
		return denialStatus(e)
	case broker.Unavailable:
		return status.Error(codes.Unavailable, e.Message)
	case broker.NotFound:
		return status.Error(codes.NotFound, e.Message)
	case broker.FailedPrecondition:
		return status.Error(codes.FailedPrecondition, e.Message)
	case broker.ResourceExhausted:
		st := status.New(codes.ResourceExhausted, e.Message)
		if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)}); err == nil {
			st = withInfo
		}
		return st.Err()
	default:
		return status.Error(codes.Internal, msgInternal)
	}
}

// denialStatus is PERMISSION_DENIED with a DenialDetail, so a CI log
// shows which rule refused, the audit event to look up and how to
// reproduce the decision offline.
func denialStatus(e *broker.Error) error {
	st := status.New(codes.PermissionDenied, e.Message)
	if e.Denial == nil {
		return st.Err()
	}
	detail := &brokerv1.DenialDetail{
		Rule:         e.Denial.Rule,
		Reason:       e.Denial.Reason,
		AuditEventId: e.Denial.AuditEventID,
		Hint: fmt.Sprintf("credmatrix policy test --claims claims.json --role %s --account %s",
			shellQuote(e.Denial.Role), shellQuote(e.Denial.Account)),
	}
	switch e.Denial.Rule {
	case broker.RuleAccountFrozen, broker.RuleRevoked:
		// Broker state, not the policy: an offline simulation would allow.
		detail.Hint = "an operator froze the account or revoked these sessions (incident response); ask them, quoting audit event " + e.Denial.AuditEventID
	}
	if withDetail, err := st.WithDetails(detail); err == nil {
		st = withDetail
	}
	return st.Err()
}
