package grpcserver

import (
	"context"
	"errors"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/platform/logging"
)

// statusCodes is the one table from domain codes to gRPC codes.
var statusCodes = map[domainerr.Code]codes.Code{
	domainerr.Invalid:            codes.InvalidArgument,
	domainerr.Unauthenticated:    codes.Unauthenticated,
	domainerr.PermissionDenied:   codes.PermissionDenied,
	domainerr.NotFound:           codes.NotFound,
	domainerr.FailedPrecondition: codes.FailedPrecondition,
	domainerr.ResourceExhausted:  codes.ResourceExhausted,
	domainerr.Unavailable:        codes.Unavailable,
	domainerr.Internal:           codes.Internal,
}

// ToStatus is the one mapping from a handler's error to the status the
// caller sees, shared by every service:
//   - a *domainerr.Error (anywhere in the chain) becomes its code's status
//     with its Message; ResourceExhausted and Unavailable carry a RetryInfo
//     detail when the domain advised a delay;
//   - an Internal or unknown code, and any error that is not a domain
//     error, is Internal with domainerr.InternalMessage;
//   - a bare context error is Canceled or DeadlineExceeded with the
//     context package's fixed text.
//
// Only a domain error's Message reaches the caller: causes never do. The
// result is nil for nil.
func ToStatus(err error) *status.Status {
	if err == nil {
		return nil
	}
	e, ok := errors.AsType[*domainerr.Error](err)
	if !ok {
		switch {
		case errors.Is(err, context.Canceled):
			return status.New(codes.Canceled, context.Canceled.Error())
		case errors.Is(err, context.DeadlineExceeded):
			return status.New(codes.DeadlineExceeded, context.DeadlineExceeded.Error())
		}
		return status.New(codes.Internal, domainerr.InternalMessage)
	}
	code, ok := statusCodes[e.Code]
	if !ok || code == codes.Internal {
		return status.New(codes.Internal, domainerr.InternalMessage)
	}
	st := status.New(code, e.Message)
	if (code == codes.ResourceExhausted || code == codes.Unavailable) && e.RetryAfter > 0 {
		if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)}); err == nil {
			st = withInfo
		}
	}
	return st
}

// Fail is ToStatus for a handler: it also logs the cause of err once,
// with the request's trace id, by one rule:
//   - Error level when the caller is told only "internal error";
//   - Warn level when a dependency failed (Unavailable, ResourceExhausted)
//     or the domain error carries a cause the caller does not see;
//   - Debug level otherwise (the caller's own mistake or a refusal; the
//     request log records its code) and for cancelled requests.
//
// Handlers return Fail(ctx, log, err).Err(); a batch handler uses the
// status of each failed item.
func Fail(ctx context.Context, log hclog.Logger, err error) *status.Status {
	st := ToStatus(err)
	if st == nil || log == nil {
		return st
	}
	level := hclog.Debug
	e, isDomain := errors.AsType[*domainerr.Error](err)
	switch c := st.Code(); {
	case c == codes.Internal:
		level = hclog.Error
	case c == codes.Unavailable || c == codes.ResourceExhausted || isDomain && e.Err != nil:
		level = hclog.Warn
	}
	args := []any{"code", st.Code().String(), "error", err}
	if method, ok := grpc.Method(ctx); ok {
		args = append([]any{"method", method}, args...)
	}
	logging.WithTrace(ctx, log).Log(level, "request failed", args...)
	return st
}
