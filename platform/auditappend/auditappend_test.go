package auditappend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// fakeAudit follows the Append contract of the audit service closely
// enough for the appender: events whose reason is "invalid" are refused
// (per event, or the whole batch when the request does not ask or legacy
// is set), ids are idempotent, and calls can be held at a gate. The real
// service is exercised with the appender in services/audit.
type fakeAudit struct {
	auditv1.UnimplementedAuditServiceServer
	legacy    bool          // ignore refuse_individually, like an older service
	overload  int           // answer RESOURCE_EXHAUSTED this many times first
	fail      error         // answer every call with this error
	gate      chan struct{} // when set, the first call waits for it to close
	entered   chan struct{} // closed when the first call is at the gate
	mu        sync.Mutex
	calls     [][]string // event ids per call
	seqs      map[string]uint64
	processed int
}

func (f *fakeAudit) Append(ctx context.Context, req *auditv1.AppendRequest) (*auditv1.AppendResponse, error) {
	f.mu.Lock()
	var ids []string
	for _, ev := range req.GetEvents() {
		ids = append(ids, ev.GetId())
	}
	f.calls = append(f.calls, ids)
	first := len(f.calls) == 1
	f.mu.Unlock()
	if first && f.gate != nil {
		close(f.entered)
		select {
		case <-f.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	if f.overload > 0 {
		f.overload--
		st, _ := status.New(codes.ResourceExhausted, "overloaded").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Hour)})
		return nil, st.Err()
	}
	individually := req.GetRefuseIndividually() && !f.legacy
	resp := &auditv1.AppendResponse{}
	for i, ev := range req.GetEvents() {
		if ev.GetReason() == "invalid" {
			msg := fmt.Sprintf("events[%d].reason: looks like a secret", i)
			if !individually {
				return nil, status.Error(codes.InvalidArgument, msg)
			}
			resp.Results = append(resp.Results, &auditv1.AppendResult{Id: ev.GetId(), Refusal: &auditv1.AppendRefusal{Code: int32(codes.InvalidArgument), Message: msg}})
			continue
		}
		resp.Results = append(resp.Results, nil)
	}
	if f.seqs == nil {
		f.seqs = map[string]uint64{}
	}
	for i, ev := range req.GetEvents() {
		if resp.Results[i] != nil {
			continue
		}
		seq, ok := f.seqs[ev.GetId()]
		if !ok {
			seq = uint64(len(f.seqs))
			f.seqs[ev.GetId()] = seq
		}
		resp.Results[i] = &auditv1.AppendResult{Id: ev.GetId(), Sequence: seq}
	}
	f.processed++
	return resp, nil
}

func (f *fakeAudit) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id := range f.seqs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (f *fakeAudit) callIDs() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func held() *fakeAudit {
	return &fakeAudit{gate: make(chan struct{}), entered: make(chan struct{})}
}

// serve runs f on an in-memory gRPC connection and returns an Appender
// over it.
func serve(t *testing.T, f *fakeAudit, opts ...Option) *Appender {
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
	a := New(conn, opts...)
	a.sleep = func(ctx context.Context, _ time.Duration) error { return ctx.Err() } // no real waits
	return a
}

func ev(id string) *auditv1.Event { return &auditv1.Event{Id: id} }

func invalid(id string) *auditv1.Event { return &auditv1.Event{Id: id, Reason: "invalid"} }

// waitQueued waits until a holds n queued events; it fails the test if
// that does not happen within 10 s.
func waitQueued(t *testing.T, a *Appender, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for a.Queued() != n {
		if time.Now().After(deadline) {
			t.Fatalf("queued = %d, want %d", a.Queued(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

type outcome struct {
	ID  string
	Seq uint64
	Err string
}

// appendAll appends evs from one goroutine each while the first call is
// held, so that they share the second request, and returns each outcome.
func appendAll(t *testing.T, f *fakeAudit, a *Appender, evs ...*auditv1.Event) []outcome {
	t.Helper()
	plug := make(chan error, 1)
	go func() { _, err := a.Append(context.Background(), ev("plug")); plug <- err }()
	<-f.entered
	out := make([]outcome, len(evs))
	var wg sync.WaitGroup
	for i, e := range evs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := a.Append(context.Background(), e)
			out[i] = outcome{ID: e.GetId(), Seq: r.GetSequence()}
			if err != nil {
				out[i].Err = errKind(err)
			}
		}()
	}
	waitQueued(t, a, len(evs))
	close(f.gate)
	wg.Wait()
	if err := <-plug; err != nil {
		t.Fatalf("plug: %v", err)
	}
	return out
}

func errKind(err error) string {
	for _, k := range []error{ErrRefused, ErrUnavailable, ErrOverloaded, ErrClosed, context.Canceled} {
		if errors.Is(err, k) {
			return k.Error()
		}
	}
	return err.Error()
}

func TestBatchesConcurrentCallersWhileBusy(t *testing.T) {
	f := held()
	a := serve(t, f, WithConfig(Config{MaxEvents: 100, MaxInFlight: 1}))
	var evs []*auditv1.Event
	for i := range 10 {
		evs = append(evs, ev(fmt.Sprint("e", i)))
	}
	out := appendAll(t, f, a, evs...)
	calls := f.callIDs()
	if len(calls) != 2 || len(calls[1]) != 10 {
		t.Fatalf("calls = %v, want the plug alone, then all ten together", calls)
	}
	seqs := map[uint64]bool{}
	for _, o := range out {
		if o.Err != "" {
			t.Errorf("%s: %s", o.ID, o.Err)
		}
		seqs[o.Seq] = true
	}
	if len(seqs) != 10 {
		t.Errorf("%d distinct sequences, want 10", len(seqs))
	}
}

func TestMaxEventsSplitsRequests(t *testing.T) {
	f := held()
	a := serve(t, f, WithConfig(Config{MaxEvents: 3, MaxInFlight: 1}))
	appendAll(t, f, a, ev("a"), ev("b"), ev("c"), ev("d"), ev("e"))
	var sizes []int
	for _, c := range f.callIDs() {
		sizes = append(sizes, len(c))
	}
	if diff := cmp.Diff(sizes, []int{1, 3, 2}); diff != "" {
		t.Errorf("request sizes (-got +want):\n%s", diff)
	}
}

// TestRefusedEventFailsOnlyItsCaller, against a service with per-event
// refusals and against an older one (which refuses the whole batch: the
// appender resends its events one by one).
func TestRefusedEventFailsOnlyItsCaller(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprint("legacy=", legacy), func(t *testing.T) {
			f := held()
			f.legacy = legacy
			a := serve(t, f, WithConfig(Config{MaxEvents: 100, MaxInFlight: 1}))
			out := appendAll(t, f, a, ev("a"), invalid("bad"), ev("b"), ev("c"))
			var errs []string
			for _, o := range out {
				errs = append(errs, o.ID+":"+o.Err)
			}
			want := []string{"a:", "bad:" + ErrRefused.Error(), "b:", "c:"}
			if diff := cmp.Diff(errs, want); diff != "" {
				t.Errorf("outcomes (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(f.recorded(), []string{"a", "b", "c", "plug"}); diff != "" {
				t.Errorf("recorded (-got +want):\n%s", diff)
			}
			wantCalls := 2
			if legacy {
				wantCalls = 2 + 4 // the refused batch, then each event alone
			}
			if got := len(f.callIDs()); got != wantCalls {
				t.Errorf("%d calls, want %d", got, wantCalls)
			}
		})
	}
}

func TestRefusalMessageNamesTheField(t *testing.T) {
	a := serve(t, &fakeAudit{})
	_, err := a.Append(context.Background(), invalid("x"))
	if !errors.Is(err, ErrRefused) || err.Error() != "audit refused the event x: events[0].reason: looks like a secret (InvalidArgument)" {
		t.Errorf("Append = %v", err)
	}
}

// TestBatchOfOneCallerFailsAsAWhole: AppendBatch answers for all its
// events; a refused one fails the call, the others are still recorded.
func TestBatchOfOneCallerFailsAsAWhole(t *testing.T) {
	f := &fakeAudit{}
	a := serve(t, f)
	res, err := a.AppendBatch(context.Background(), []*auditv1.Event{ev("a"), invalid("b"), ev("c")})
	if !errors.Is(err, ErrRefused) || res != nil {
		t.Errorf("AppendBatch = %v, %v; want ErrRefused and no results", res, err)
	}
	res, err = a.AppendBatch(context.Background(), []*auditv1.Event{ev("d"), ev("e")})
	if err != nil || len(res) != 2 || res[0].GetId() != "d" || res[1].GetId() != "e" {
		t.Errorf("AppendBatch = %v, %v", res, err)
	}
	if _, err := a.AppendBatch(context.Background(), make([]*auditv1.Event, MaxEventsPerAppend+1)); err == nil {
		t.Error("AppendBatch of 1001 events succeeded")
	}
}

// TestCancelledCallerIsStillRecorded: the rule for cancelled callers. The
// caller gets its context's error at once; its event is recorded anyway.
func TestCancelledCallerIsStillRecorded(t *testing.T) {
	f := held()
	a := serve(t, f, WithConfig(Config{MaxEvents: 100, MaxInFlight: 1}))
	plug := make(chan error, 1)
	go func() { _, err := a.Append(context.Background(), ev("plug")); plug <- err }()
	<-f.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // gone before its event is even queued
	if _, err := a.Append(ctx, ev("gone")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append = %v, want context.Canceled", err)
	}
	close(f.gate)
	if err := <-plug; err != nil {
		t.Fatal(err)
	}
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(f.recorded(), []string{"gone", "plug"}); diff != "" {
		t.Errorf("recorded (-got +want):\n%s", diff)
	}
}

func TestUnavailable(t *testing.T) {
	f := &fakeAudit{fail: status.Error(codes.Unavailable, "store down")}
	a := serve(t, f)
	_, err := a.Append(context.Background(), ev("x"))
	if !errors.Is(err, ErrUnavailable) || status.Code(err) != codes.Unavailable {
		t.Errorf("Append = %v, want ErrUnavailable wrapping the UNAVAILABLE status", err)
	}
}

func TestUnreachable(t *testing.T) {
	conn, err := grpc.NewClient("passthrough:///127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = New(conn).Append(context.Background(), ev("x"))
	if !errors.Is(err, ErrUnavailable) || status.Code(err) != codes.Unavailable {
		t.Errorf("Append = %v, want ErrUnavailable / UNAVAILABLE", err)
	}
}

func TestOverloadIsRetried(t *testing.T) {
	f := &fakeAudit{overload: 2}
	a := serve(t, f)
	var waits []time.Duration
	a.sleep = func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
	if _, err := a.Append(context.Background(), ev("x")); err != nil {
		t.Fatalf("Append: %v", err)
	}
	if diff := cmp.Diff(waits, []time.Duration{time.Hour, time.Hour}); diff != "" {
		t.Errorf("waits (-got +want): the advised retry delay\n%s", diff)
	}
}

func TestOverloadUntilTimeout(t *testing.T) {
	f := &fakeAudit{overload: 1 << 30}
	a := serve(t, f, WithTimeout(time.Second))
	a.sleep = func(ctx context.Context, _ time.Duration) error { <-ctx.Done(); return ctx.Err() }
	_, err := a.Append(context.Background(), ev("x"))
	if !errors.Is(err, ErrUnavailable) || status.Code(err) != codes.ResourceExhausted {
		t.Errorf("Append = %v, want ErrUnavailable wrapping RESOURCE_EXHAUSTED", err)
	}
}

func TestQueueIsBounded(t *testing.T) {
	f := held()
	a := serve(t, f, WithConfig(Config{MaxEvents: 100, MaxInFlight: 1}), WithMaxQueued(MaxEventsPerAppend))
	go a.Append(context.Background(), ev("plug"))
	<-f.entered
	full := make([]*auditv1.Event, MaxEventsPerAppend)
	for i := range full {
		full[i] = ev(fmt.Sprint(i))
	}
	done := make(chan error, 1)
	go func() { _, err := a.AppendBatch(context.Background(), full); done <- err }()
	waitQueued(t, a, MaxEventsPerAppend)
	if _, err := a.Append(context.Background(), ev("one-too-many")); !errors.Is(err, ErrOverloaded) {
		t.Errorf("Append to a full queue = %v, want ErrOverloaded", err)
	}
	close(f.gate)
	if err := <-done; err != nil {
		t.Errorf("queued batch: %v", err)
	}
}

func TestCloseWaitsForAcceptedEvents(t *testing.T) {
	f := held()
	a := serve(t, f, WithConfig(Config{MaxEvents: 100, MaxInFlight: 1}))
	ctx, cancel := context.WithCancel(context.Background())
	go a.Append(ctx, ev("in-flight"))
	<-f.entered
	go a.Append(ctx, ev("queued"))
	waitQueued(t, a, 1)
	cancel() // both callers gave up
	closed := make(chan error, 1)
	go func() { closed <- a.Close(context.Background()) }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v with events outstanding", err)
	default:
	}
	close(f.gate)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(f.recorded(), []string{"in-flight", "queued"}); diff != "" {
		t.Errorf("recorded (-got +want):\n%s", diff)
	}
	if _, err := a.Append(context.Background(), ev("late")); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		ok   bool
	}{
		{"valid/default", DefaultConfig(), true},
		{"valid/one", Config{MaxEvents: 1, MaxInFlight: 1}, true},
		{"invalid/zero-events", Config{MaxEvents: 0, MaxInFlight: 1}, false},
		{"invalid/too-many-events", Config{MaxEvents: 1001, MaxInFlight: 1}, false},
		{"invalid/zero-in-flight", Config{MaxEvents: 10}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.c.Validate(); (err == nil) != tc.ok {
				t.Errorf("Validate() = %v", err)
			}
		})
	}
}
