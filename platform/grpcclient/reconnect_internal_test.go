package grpcclient

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// TestReconnectBackoffIsCapped: while a service is down the connection
// keeps trying at the capped interval instead of gRPC's growing one (up
// to 120 s), so a service that comes back is used again promptly. With
// the cap at 20 ms, ten attempts take well under a second; gRPC's default
// backoff would need over 40 s for them, past this test's deadline.
func TestReconnectBackoffIsCapped(t *testing.T) {
	saved := reconnectBackoff
	t.Cleanup(func() { reconnectBackoff = saved })
	reconnectBackoff = backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 20 * time.Millisecond}

	var attempts atomic.Int64
	reached := make(chan struct{})
	down := func(ctx context.Context, addr string) (net.Conn, error) {
		if attempts.Add(1) == 10 {
			close(reached)
		}
		return nil, errors.New("connection refused (test: the service is down)")
	}
	conn, err := Dial(Config{Target: "127.0.0.1:1", DevPlaintext: true}, grpc.WithContextDialer(down))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Connect()
	select {
	case <-reached:
	case <-time.After(20 * time.Second):
		t.Fatalf("%d connection attempts in 20 s, want 10: reconnection is not paced by reconnectBackoff", attempts.Load())
	}
}
