package brokerclient

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestRetry(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "audit log unavailable")
	denied := status.Error(codes.PermissionDenied, "no")
	st, _ := status.New(codes.ResourceExhausted, "slow down").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Millisecond)})
	throttled := st.Err()
	r := Retry{Attempts: 4, Initial: time.Millisecond, Max: 2 * time.Millisecond}
	for _, tc := range []struct {
		name      string
		errs      []error
		wantCalls int
		wantErr   error
	}{
		{"ok-first", []error{nil}, 1, nil},
		{"unavailable-then-ok", []error{unavailable, unavailable, nil}, 3, nil},
		{"throttled-then-ok", []error{throttled, nil}, 2, nil},
		{"denied-not-retried", []error{denied, nil}, 1, denied},
		{"gives-up", []error{unavailable, unavailable, unavailable, unavailable, nil}, 4, unavailable},
		{"plain-error-not-retried", []error{errors.New("x"), nil}, 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := r.do(context.Background(), func(context.Context) error {
				e := tc.errs[calls]
				calls++
				return e
			})
			if calls != tc.wantCalls {
				t.Fatalf("%d calls, want %d", calls, tc.wantCalls)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestRetryStopsAtDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	calls := 0
	err := Retry{Attempts: 100, Initial: time.Second, Max: time.Second}.do(ctx, func(context.Context) error {
		calls++
		return status.Error(codes.Unavailable, "down")
	})
	// A 1 s backoff cannot fit in a 50 ms deadline... unless jitter drew a
	// tiny wait: allow a few quick tries, but never the whole budget.
	if status.Code(err) != codes.Unavailable || calls > 10 {
		t.Fatalf("calls %d err %v", calls, err)
	}
}
