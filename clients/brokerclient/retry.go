package brokerclient

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Retry says how calls are retried when the broker is unavailable or
// throttling (UNAVAILABLE, RESOURCE_EXHAUSTED): jittered exponential
// backoff, honouring the server's RetryInfo, never past the context's
// deadline. Denials and invalid requests are never retried.
type Retry struct {
	// Attempts is the total number of tries (1 disables retries).
	Attempts int
	// Initial is the first backoff; it doubles up to Max.
	Initial, Max time.Duration
}

// DefaultRetry suits CI jobs: up to 5 tries over about 10 s.
var DefaultRetry = Retry{Attempts: 5, Initial: 250 * time.Millisecond, Max: 4 * time.Second}

// retryable reports whether err may succeed when tried again, and the
// server's suggested delay if it gave one.
func retryable(err error) (bool, time.Duration) {
	st, ok := status.FromError(err)
	if !ok {
		return false, 0
	}
	switch st.Code() {
	case codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
	default:
		return false, 0
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return true, ri.GetRetryDelay().AsDuration()
		}
	}
	return true, 0
}

// do runs call until it succeeds, fails for good, or the attempts or the
// context run out. It returns the last error.
func (r Retry) do(ctx context.Context, call func(context.Context) error) error {
	attempts := max(r.Attempts, 1)
	backoff := r.Initial
	var err error
	for i := range attempts {
		if err = call(ctx); err == nil {
			return nil
		}
		again, hint := retryable(err)
		if !again || i == attempts-1 {
			return err
		}
		// Full jitter spreads a burst of CI jobs instead of synchronising
		// their retries.
		wait := time.Duration(rand.Int64N(int64(backoff) + 1))
		if hint > wait {
			wait = hint
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff = min(2*backoff, r.Max)
	}
	return err
}
