package grpcapi

import (
	"time"

	"context"
	"errors"
	"fmt"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/services/audit"
)

func TestToStatus(t *testing.T) {
	secret := errors.New("pq: password authentication failed for user audit")
	type result struct {
		Code    codes.Code
		Message string
	}
	for _, tc := range []struct {
		name string
		err  error
		want result
	}{
		{"invalid", audit.Errorf(audit.Invalid, "events[0].id: required"), result{codes.InvalidArgument, "events[0].id: required"}},
		{"invalid/wrapped", fmt.Errorf("query: %w", audit.Errorf(audit.Invalid, "page_token: malformed")), result{codes.InvalidArgument, "page_token: malformed"}},
		{"unavailable/hides-cause", &audit.Error{Code: audit.Unavailable, Message: "audit store unavailable", Err: secret}, result{codes.Unavailable, "audit store unavailable"}},
		{"not-found", audit.Errorf(audit.NotFound, "sequence 9: not found"), result{codes.NotFound, "sequence 9: not found"}},
		{"permission-denied", audit.Errorf(audit.PermissionDenied, "caller may not append to the audit log"), result{codes.PermissionDenied, "caller may not append to the audit log"}},
		{"resource-exhausted", audit.Errorf(audit.ResourceExhausted, "log overloaded"), result{codes.ResourceExhausted, "log overloaded"}},
		{"internal/unknown-error", secret, result{codes.Internal, "internal error"}},
		{"internal/unknown-code", audit.Errorf("teapot", "short and stout"), result{codes.Internal, "internal error"}},
		{"canceled", context.Canceled, result{codes.Canceled, context.Canceled.Error()}},
		{"deadline", fmt.Errorf("read: %w", context.DeadlineExceeded), result{codes.DeadlineExceeded, context.DeadlineExceeded.Error()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(toStatus(tc.err))
			if diff := cmp.Diff(result{st.Code(), st.Message()}, tc.want); diff != "" {
				t.Errorf("toStatus(%v) mismatch (-got +want):\n%s", tc.err, diff)
			}
		})
	}
	if err := toStatus(nil); err != nil {
		t.Errorf("toStatus(nil) = %v, want nil", err)
	}
}

func TestToStatusRetryInfo(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		code  codes.Code
		delay time.Duration
	}{
		{"exhausted/with-delay", &audit.Error{Code: audit.ResourceExhausted, Message: "overloaded", RetryAfter: 50 * time.Millisecond}, codes.ResourceExhausted, 50 * time.Millisecond},
		{"unavailable/with-delay", &audit.Error{Code: audit.Unavailable, Message: "down", RetryAfter: time.Second}, codes.Unavailable, time.Second},
		{"exhausted/no-delay", &audit.Error{Code: audit.ResourceExhausted, Message: "overloaded"}, codes.ResourceExhausted, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(toStatus(tc.err))
			var got time.Duration
			for _, d := range st.Details() {
				if ri, ok := d.(*errdetails.RetryInfo); ok {
					got = ri.GetRetryDelay().AsDuration()
				}
			}
			if st.Code() != tc.code || got != tc.delay {
				t.Errorf("toStatus = %v with retry delay %v, want %v with %v", st.Code(), got, tc.code, tc.delay)
			}
		})
	}
}
