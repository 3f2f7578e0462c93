package grpcserver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
)

func TestToStatus(t *testing.T) {
	secret := errors.New("pq: password authentication failed for user audit")
	type result struct {
		Code       codes.Code
		Message    string
		RetryAfter time.Duration
	}
	for _, tc := range []struct {
		name string
		err  error
		want result
	}{
		{"invalid", domainerr.Errorf(domainerr.Invalid, "events[0].id: required"), result{codes.InvalidArgument, "events[0].id: required", 0}},
		{"invalid/wrapped", fmt.Errorf("query: %w", domainerr.Errorf(domainerr.Invalid, "page_token: malformed")), result{codes.InvalidArgument, "page_token: malformed", 0}},
		{"invalid/joined", errors.Join(errors.New("other"), domainerr.Errorf(domainerr.Invalid, "x: bad")), result{codes.InvalidArgument, "x: bad", 0}},
		{"unauthenticated", &domainerr.Error{Code: domainerr.Unauthenticated, Message: "token verification failed", Err: secret}, result{codes.Unauthenticated, "token verification failed", 0}},
		{"permission-denied", domainerr.Errorf(domainerr.PermissionDenied, "caller may not append to the audit log"), result{codes.PermissionDenied, "caller may not append to the audit log", 0}},
		{"not-found", domainerr.Errorf(domainerr.NotFound, "sequence 9: not found"), result{codes.NotFound, "sequence 9: not found", 0}},
		{"failed-precondition", domainerr.Errorf(domainerr.FailedPrecondition, "key version 1 is retired"), result{codes.FailedPrecondition, "key version 1 is retired", 0}},
		{"unavailable/hides-cause", &domainerr.Error{Code: domainerr.Unavailable, Message: "audit store unavailable", Err: secret}, result{codes.Unavailable, "audit store unavailable", 0}},
		{"unavailable/retry-info", &domainerr.Error{Code: domainerr.Unavailable, Message: "down", RetryAfter: time.Second}, result{codes.Unavailable, "down", time.Second}},
		{"exhausted/retry-info", &domainerr.Error{Code: domainerr.ResourceExhausted, Message: "overloaded", RetryAfter: 50 * time.Millisecond}, result{codes.ResourceExhausted, "overloaded", 50 * time.Millisecond}},
		{"exhausted/no-advice", domainerr.Errorf(domainerr.ResourceExhausted, "overloaded"), result{codes.ResourceExhausted, "overloaded", 0}},
		{"internal/domain-hides-message", &domainerr.Error{Code: domainerr.Internal, Message: "bad config detail", Err: secret}, result{codes.Internal, "internal error", 0}},
		{"internal/unknown-error", secret, result{codes.Internal, "internal error", 0}},
		{"internal/unknown-code", domainerr.Errorf("teapot", "short and stout"), result{codes.Internal, "internal error", 0}},
		{"internal/retry-advice-ignored", &domainerr.Error{Code: domainerr.Invalid, Message: "x: bad", RetryAfter: time.Second}, result{codes.InvalidArgument, "x: bad", 0}},
		{"canceled", context.Canceled, result{codes.Canceled, "context canceled", 0}},
		{"canceled/wrapped-text-hidden", fmt.Errorf("dial 10.0.0.7: %w", context.Canceled), result{codes.Canceled, "context canceled", 0}},
		{"deadline", fmt.Errorf("read: %w", context.DeadlineExceeded), result{codes.DeadlineExceeded, "context deadline exceeded", 0}},
		{"domain-wins-over-context", &domainerr.Error{Code: domainerr.Unavailable, Message: "audit log unavailable", Err: context.DeadlineExceeded}, result{codes.Unavailable, "audit log unavailable", 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := grpcserver.ToStatus(tc.err)
			got := result{Code: st.Code(), Message: st.Message()}
			for _, d := range st.Details() {
				if ri, ok := d.(*errdetails.RetryInfo); ok {
					got.RetryAfter = ri.GetRetryDelay().AsDuration()
				}
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("ToStatus(%v) mismatch (-got +want):\n%s", tc.err, diff)
			}
		})
	}
	if st := grpcserver.ToStatus(nil); st.Err() != nil {
		t.Errorf("ToStatus(nil) = %v, want nil", st)
	}
}

// TestFailLogsCauseOnce checks the one logging rule: causes the caller does
// not see are logged (Error for internal, Warn for dependencies), once;
// the caller's own mistakes only at Debug.
func TestFailLogsCauseOnce(t *testing.T) {
	secretCause := errors.New("kms: AccessDeniedException arn:aws:kms:eu-west-1:1:key/x")
	for _, tc := range []struct {
		name      string
		err       error
		wantLevel string // "" means nothing at Info or above
	}{
		{"internal/unknown", secretCause, "error"},
		{"internal/domain", &domainerr.Error{Code: domainerr.Internal, Message: "internal error", Err: secretCause}, "error"},
		{"unavailable", &domainerr.Error{Code: domainerr.Unavailable, Message: "key backend unavailable", Err: secretCause}, "warn"},
		{"exhausted/no-cause", domainerr.Errorf(domainerr.ResourceExhausted, "rate limit exceeded"), "warn"},
		{"unauthenticated/with-cause", &domainerr.Error{Code: domainerr.Unauthenticated, Message: "token verification failed", Err: secretCause}, "warn"},
		{"invalid/no-cause", domainerr.Errorf(domainerr.Invalid, "region: required"), ""},
		{"canceled", context.Canceled, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info})
			st := grpcserver.Fail(context.Background(), log, tc.err)
			if st.Code() == codes.OK {
				t.Fatal("Fail returned OK")
			}
			lines := strings.Count(buf.String(), "\n")
			switch {
			case tc.wantLevel == "" && lines != 0:
				t.Errorf("logged %q, want nothing at info or above", buf.String())
			case tc.wantLevel != "" && (lines != 1 || !strings.Contains(buf.String(), "["+strings.ToUpper(tc.wantLevel)+"]") || !strings.Contains(buf.String(), tc.err.Error())):
				t.Errorf("logged %q, want one %s line with the cause", buf.String(), tc.wantLevel)
			}
			if strings.Contains(st.Message(), "kms:") {
				t.Errorf("status message %q carries the cause", st.Message())
			}
		})
	}
	if st := grpcserver.Fail(context.Background(), hclog.NewNullLogger(), nil); st.Err() != nil {
		t.Errorf("Fail(nil) = %v, want nil", st)
	}
}
