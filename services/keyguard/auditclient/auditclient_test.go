package auditclient_test

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/services/keyguard/auditclient"
)

// fakeAudit records appends; while gate is non-nil each Append waits on it,
// so tests can pile up callers behind one RPC.
type fakeAudit struct {
	auditv1.UnimplementedAuditServiceServer
	mu      sync.Mutex
	calls   int
	events  []string
	fail    bool
	entered chan struct{}
	gate    chan struct{}
}

func (f *fakeAudit) Append(ctx context.Context, req *auditv1.AppendRequest) (*auditv1.AppendResponse, error) {
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.fail {
		return nil, status.Error(codes.Unavailable, "disk full")
	}
	resp := &auditv1.AppendResponse{}
	for _, ev := range req.GetEvents() {
		resp.Results = append(resp.Results, &auditv1.AppendResult{Id: ev.GetId(), Sequence: uint64(len(f.events))})
		f.events = append(f.events, ev.GetId())
	}
	return resp, nil
}

func serve(t *testing.T, f *fakeAudit) *auditclient.Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	auditv1.RegisterAuditServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return auditclient.New(conn)
}

func ev(id string) *auditv1.Event { return &auditv1.Event{Id: id} }

// TestCoalesces: callers arriving while an append is in flight go out
// together in the next one, and each gets its own results.
func TestCoalesces(t *testing.T) {
	f := &fakeAudit{entered: make(chan struct{}, 100), gate: make(chan struct{})}
	c := serve(t, f)
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { _, err := c.Append(ctx, ev("first")); first <- err }()
	<-f.entered // the first RPC is in flight and held

	const n = 20
	var wg sync.WaitGroup
	results := make([]*auditv1.AppendResult, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			res, err := c.AppendBatch(ctx, []*auditv1.Event{ev("e" + string(rune('a'+i)))})
			if err == nil {
				results[i] = res[0]
			}
			errs[i] = err
		})
	}
	// Wait (polling, with a deadline) until all n are queued behind the
	// held RPC, then release it: they must go out in one more RPC.
	deadline := time.Now().Add(10 * time.Second)
	for c.Queued() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d events queued", c.Queued(), n)
		}
		runtime.Gosched()
	}
	close(f.gate)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
		if want := "e" + string(rune('a'+i)); results[i].GetId() != want {
			t.Errorf("caller %d got the result of %q", i, results[i].GetId())
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.events) != n+1 || f.calls != 2 {
		t.Errorf("%d events in %d calls", len(f.events), f.calls)
	}
}

func TestErrors(t *testing.T) {
	t.Run("audit-down", func(t *testing.T) {
		f := &fakeAudit{fail: true}
		c := serve(t, f)
		if res, err := c.Append(context.Background(), ev("x")); err == nil || res != nil {
			t.Fatalf("Append with audit down: %v", err)
		}
	})
	t.Run("cancelled-caller-not-recorded", func(t *testing.T) {
		f := &fakeAudit{}
		c := serve(t, f)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c.Append(ctx, ev("gone")); !errors.Is(err, context.Canceled) {
			t.Fatalf("Append with a cancelled context: %v", err)
		}
		if _, err := c.Append(context.Background(), ev("next")); err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, id := range f.events {
			if id == "gone" {
				t.Fatal("the cancelled caller's event was recorded")
			}
		}
	})
	t.Run("too-many", func(t *testing.T) {
		c := serve(t, &fakeAudit{})
		evs := make([]*auditv1.Event, auditclient.MaxEventsPerAppend+1)
		if _, err := c.AppendBatch(context.Background(), evs); err == nil {
			t.Fatal("AppendBatch over the limit succeeded")
		}
	})
}
