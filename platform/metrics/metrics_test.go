package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/metrics"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

func fieldOf(err error) string {
	var fe *config.FieldError
	if errors.As(err, &fe) {
		return fe.Field
	}
	if err != nil {
		return "<not a field error: " + err.Error() + ">"
	}
	return ""
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name, addr, wantField string
		pprof                 bool
	}{
		{"ok/off", "", "", false},
		{"ok/loopback", "127.0.0.1:9090", "", false},
		{"ok/all-interfaces", ":9090", "", false},
		{"ok/ephemeral", "127.0.0.1:0", "", false},
		{"ok/pprof-loopback", "127.0.0.1:9090", "", true},
		{"ok/pprof-localhost", "localhost:9090", "", true},
		{"ok/pprof-ipv6-loopback", "[::1]:9090", "", true},
		{"bad/no-port", "127.0.0.1", "listen_addr", false},
		{"bad/port-range", "127.0.0.1:70000", "listen_addr", false},
		{"bad/port-name", "127.0.0.1:http", "listen_addr", false},
		{"bad/pprof-all-interfaces", ":9090", "pprof", true},
		{"bad/pprof-routable", "10.0.0.1:9090", "pprof", true},
		{"bad/pprof-metrics-off", "", "pprof", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := fieldOf(metrics.Config{ListenAddr: tc.addr, Pprof: tc.pprof}.Validate())
			if diff := cmp.Diff(got, tc.wantField); diff != "" {
				t.Errorf("field (-got +want):\n%s", diff)
			}
		})
	}
}

func TestCheckSeparate(t *testing.T) {
	tests := []struct {
		name, metrics, grpc, wantField string
	}{
		{"ok/off", "", "127.0.0.1:8443", ""},
		{"ok/other-port", "127.0.0.1:9090", "127.0.0.1:8443", ""},
		{"ok/both-ephemeral", "127.0.0.1:0", "127.0.0.1:0", ""},
		{"ok/same-port-other-host", "10.0.0.1:8443", "127.0.0.2:8443", ""},
		{"attack/same-address", "127.0.0.1:8443", "127.0.0.1:8443", "metrics.listen_addr"},
		{"attack/wildcard-over-grpc", ":8443", "127.0.0.1:8443", "metrics.listen_addr"},
		{"attack/grpc-wildcard", "127.0.0.1:8443", "0.0.0.0:8443", "metrics.listen_addr"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := fieldOf(metrics.CheckSeparate(tc.metrics, tc.grpc))
			if diff := cmp.Diff(got, tc.wantField); diff != "" {
				t.Errorf("field (-got +want):\n%s", diff)
			}
		})
	}
}

// panicky is a test service whose EmptyCall panics.
type panicky struct {
	testgrpc.UnimplementedTestServiceServer
}

func (panicky) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	panic("boom")
}

// TestGRPCServerMetricsOverHTTP runs a real gRPC server with
// grpcserver.WithMetrics and scrapes the metrics endpoint: OK, NotFound,
// Unimplemented and a recovered panic (Internal) are each counted under
// their code, and the histogram saw every call.
func TestGRPCServerMetricsOverHTTP(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := metrics.NewRegistry()
	cfg := grpcserver.DefaultConfig()
	cfg.ListenAddr, cfg.DevPlaintext = "127.0.0.1:0", true
	gs, err := grpcserver.New(cfg, nil, grpcserver.WithMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(gs, panicky{})
	ms, err := metrics.Listen(metrics.Config{ListenAddr: "127.0.0.1:0"}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 2)
	go func() { served <- gs.Serve(ctx) }()
	go func() { served <- ms.Serve(ctx) }()

	conn, err := grpcclient.Dial(grpcclient.Config{Target: gs.Addr().String(), DevPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	test := testgrpc.NewTestServiceClient(conn)
	var got []codes.Code
	for _, call := range []func() error{
		func() error { _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); return err },
		func() error { _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); return err },
		func() error {
			_, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"})
			return err
		},
		func() error { _, err := test.EmptyCall(ctx, &testgrpc.Empty{}); return err },
		func() error { _, err := test.UnaryCall(ctx, &testgrpc.SimpleRequest{}); return err },
	} {
		got = append(got, status.Code(call()))
	}
	if diff := cmp.Diff(got, []codes.Code{codes.OK, codes.OK, codes.NotFound, codes.Internal, codes.Unimplemented}); diff != "" {
		t.Fatalf("codes (-got +want):\n%s", diff)
	}

	resp, err := http.Get("http://" + ms.Addr().String() + metrics.Path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	const health1, test1 = `grpc_service="grpc.health.v1.Health"`, `grpc_service="grpc.testing.TestService"`
	for _, want := range []string{
		`credmatrix_grpc_server_requests_total{grpc_code="OK",grpc_method="Check",` + health1 + `} 2`,
		`credmatrix_grpc_server_requests_total{grpc_code="NotFound",grpc_method="Check",` + health1 + `} 1`,
		`credmatrix_grpc_server_requests_total{grpc_code="Internal",grpc_method="EmptyCall",` + test1 + `} 1`,
		`credmatrix_grpc_server_requests_total{grpc_code="Unimplemented",grpc_method="UnaryCall",` + test1 + `} 1`,
		`credmatrix_grpc_server_request_duration_seconds_count{grpc_method="Check",` + health1 + `} 3`,
		`go_goroutines `,
		`process_start_time_seconds `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if n := testutil.CollectAndCount(reg, metrics.GRPCRequestsTotal); n != 4 {
		t.Errorf("%d request series, want 4", n)
	}

	for _, tc := range []struct {
		name, method, path string
		want               int
	}{
		{"other-path", http.MethodGet, "/", http.StatusNotFound},
		{"debug-path", http.MethodGet, "/debug/pprof/", http.StatusNotFound},
		{"post", http.MethodPost, metrics.Path, http.StatusMethodNotAllowed},
	} {
		t.Run("endpoint/"+tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "http://"+ms.Addr().String()+tc.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
			}
		})
	}

	cancel()
	for range 2 {
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
}

// TestNilServer checks that a nil *Server (metrics off) is safe to use.
func TestNilServer(t *testing.T) {
	var s *metrics.Server
	if s.Addr() != nil || s.Serve(context.Background()) != nil || s.Close() != nil {
		t.Error("nil Server is not inert")
	}
}

func TestListenRefusesEmptyAndBusy(t *testing.T) {
	if _, err := metrics.Listen(metrics.Config{}, metrics.NewRegistry(), nil); err == nil {
		t.Error("Listen with no address succeeded")
	}
	a, err := metrics.Listen(metrics.Config{ListenAddr: "127.0.0.1:0"}, metrics.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := metrics.Listen(metrics.Config{ListenAddr: a.Addr().String()}, metrics.NewRegistry(), nil); err == nil {
		t.Error("Listen on a busy port succeeded")
	}
}

// TestPprof: profiles are served only when asked for, a CPU profile
// for the seconds requested within the bound, in pprof's format.
func TestPprof(t *testing.T) {
	get := func(t *testing.T, url string) (int, []byte) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	start := func(t *testing.T, pprof bool) string {
		t.Helper()
		s, err := metrics.Listen(metrics.Config{ListenAddr: "127.0.0.1:0", Pprof: pprof}, metrics.NewRegistry(), nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return "http://" + s.Addr().String()
	}
	t.Run("off", func(t *testing.T) {
		base := start(t, false)
		for _, p := range []string{"heap", "goroutine", "profile?seconds=1"} {
			if code, _ := get(t, base+metrics.PprofPath+p); code != http.StatusNotFound {
				t.Errorf("%s with pprof off: HTTP %d, want 404", p, code)
			}
		}
	})
	t.Run("on", func(t *testing.T) {
		base := start(t, true)
		for _, p := range []string{"heap", "goroutine", "allocs", "profile?seconds=1"} {
			code, body := get(t, base+metrics.PprofPath+p)
			// pprof's format is gzipped protobuf.
			if code != http.StatusOK || len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
				t.Errorf("%s: HTTP %d, %d bytes: want a gzipped profile", p, code, len(body))
			}
		}
		if code, body := get(t, base+metrics.PprofPath+"goroutine?debug=1"); code != http.StatusOK || !strings.Contains(string(body), "goroutine profile:") {
			t.Errorf("goroutine?debug=1: HTTP %d, %.80q", code, body)
		}
		for _, p := range []string{"nope", "profile?seconds=0", "profile?seconds=999", "profile?seconds=x"} {
			if code, _ := get(t, base+metrics.PprofPath+p); code != http.StatusNotFound && code != http.StatusBadRequest {
				t.Errorf("%s: HTTP %d, want 404 or 400", p, code)
			}
		}
		if code, _ := get(t, base+metrics.Path); code != http.StatusOK {
			t.Errorf("metrics beside pprof: HTTP %d", code)
		}
	})
}
