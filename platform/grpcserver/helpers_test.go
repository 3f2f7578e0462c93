package grpcserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/logging"
)

// syncBuffer is a log sink safe to read while server goroutines write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lines decodes the JSON log lines written so far.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// find returns the first log line whose @message is msg and whose method (if
// method is not "") matches.
func (s *syncBuffer) find(t *testing.T, msg, method string) map[string]any {
	t.Helper()
	for _, l := range s.lines(t) {
		if l["@message"] == msg && (method == "" || l["method"] == method) {
			return l
		}
	}
	return nil
}

// testService implements the TestService methods the tests need with
// function fields.
type testService struct {
	testgrpc.UnimplementedTestServiceServer
	unary  func(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error)
	stream func(*testgrpc.StreamingOutputCallRequest, grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error
}

func (s *testService) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return s.unary(ctx, req)
}

func (s *testService) StreamingOutputCall(req *testgrpc.StreamingOutputCallRequest, ss grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
	return s.stream(req, ss)
}

// identityService answers UnaryCall with the caller's mTLS identity.
func identityService() *testService {
	return &testService{unary: func(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
		id, _ := grpcserver.PeerIdentity(ctx)
		return &testgrpc.SimpleResponse{Username: id}, nil
	}}
}

// running is a server started by startServer.
type running struct {
	srv    *grpcserver.Server
	cancel context.CancelFunc
	done   chan struct{} // closed when Serve returns
	err    error         // Serve's result, valid after done is closed
	logs   *syncBuffer
}

// startServer builds a server from cfg, registers svc and serves until the
// test ends (or cancel is called).
func startServer(t *testing.T, cfg grpcserver.Config, svc *testService, opts ...grpcserver.Option) *running {
	t.Helper()
	logs := &syncBuffer{}
	srv, err := grpcserver.New(cfg, logging.New(logs, "test", "debug"), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if svc != nil {
		testgrpc.RegisterTestServiceServer(srv, svc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: srv, cancel: cancel, done: make(chan struct{}), logs: logs}
	go func() {
		r.err = srv.Serve(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return after cancel")
			srv.Stop()
		}
	})
	return r
}

// waitServe waits for Serve's result, failing the test after a generous
// deadline.
func (r *running) waitServe(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func dial(t *testing.T, cfg grpcclient.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpcclient.Dial(cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// poll calls cond until it holds or the deadline passes.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}
