package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestDriveCountsTheWindowOnly: units and latencies come from calls made
// inside the measured window; warm-up calls are made but not counted.
func TestDriveCountsTheWindowOnly(t *testing.T) {
	var made atomic.Int64
	m := drive(context.Background(), 4, 100*time.Millisecond, 300*time.Millisecond, func(context.Context, int) (int, error) {
		made.Add(1)
		time.Sleep(time.Millisecond) // a call takes time
		return 3, nil
	})
	if m.err != nil || m.errs != 0 {
		t.Fatalf("errors: %d, %v", m.errs, m.err)
	}
	if m.calls == 0 || int64(m.calls) >= made.Load() {
		t.Fatalf("counted %d of %d calls made: want some, and fewer than all (warm-up)", m.calls, made.Load())
	}
	if m.units != int64(3*m.calls) || len(m.lat) != m.calls {
		t.Fatalf("units %d, latencies %d for %d calls", m.units, len(m.lat), m.calls)
	}
	if got, want := m.perSecond(), float64(m.units)/0.3; got != want {
		t.Fatalf("perSecond %v, want %v (units over the window)", got, want)
	}
	for i := 1; i < len(m.lat); i++ {
		if m.lat[i] < m.lat[i-1] {
			t.Fatal("latencies not sorted")
		}
	}
}

// TestDriveStopsACallerAtItsFirstError: the error is counted and kept,
// and the other callers go on.
func TestDriveStopsACallerAtItsFirstError(t *testing.T) {
	boom := errors.New("boom")
	m := drive(context.Background(), 3, 0, 50*time.Millisecond, func(_ context.Context, c int) (int, error) {
		time.Sleep(time.Millisecond)
		if c == 1 {
			return 0, boom
		}
		return 1, nil
	})
	if m.errs != 1 || !errors.Is(m.err, boom) {
		t.Fatalf("errs %d, err %v: want one boom", m.errs, m.err)
	}
	if m.calls == 0 {
		t.Fatal("the callers without errors made no counted call")
	}
}

func TestQuantile(t *testing.T) {
	m := measured{}
	for i := 1; i <= 100; i++ {
		m.lat = append(m.lat, time.Duration(i)*time.Millisecond)
	}
	if got := m.quantile(0.5); got != 50 {
		t.Errorf("p50 = %v, want 50", got)
	}
	if got := m.quantile(0.99); got != 99 {
		t.Errorf("p99 = %v, want 99", got)
	}
	if got := (measured{}).quantile(0.99); got != 0 {
		t.Errorf("p99 of nothing = %v, want 0", got)
	}
}

func TestSizeOfNote(t *testing.T) {
	for _, tc := range []struct {
		note string
		want uint64
	}{
		{"credmatrix.local/audit/x\n1234\nAAAA=\n\n— sig\n", 1234},
		{"origin\n", 0},
		{"origin\nnot-a-number\nroot\n", 0},
	} {
		if got := sizeOfNote([]byte(tc.note)); got != tc.want {
			t.Errorf("sizeOfNote(%q) = %d, want %d", tc.note, got, tc.want)
		}
	}
}

func TestGoroutinesFromMetrics(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics":
			fmt.Fprint(w, "# HELP go_goroutines Number of goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 42\ngo_threads 9\n")
		case "/none":
			fmt.Fprint(w, "go_threads 9\n")
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	if g, err := goroutines(context.Background(), srv.URL+"/metrics"); err != nil || g != 42 {
		t.Fatalf("goroutines = %d, %v; want 42", g, err)
	}
	if _, err := goroutines(context.Background(), srv.URL+"/none"); err == nil || !strings.Contains(err.Error(), "no go_goroutines") {
		t.Fatalf("endpoint without the gauge: %v", err)
	}
	if _, err := goroutines(context.Background(), srv.URL+"/missing"); err == nil {
		t.Fatal("404: no error")
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{"nope"}, {"-only", "bogus"}, {"soak", "-rate", "0"}, {"extra-arg-after", "-x"}} {
		var out, errw strings.Builder
		if code := run(context.Background(), args, &out, &errw, func(string) string { return "" }); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage); stderr %s", args, code, errw.String())
		}
	}
	var out, errw strings.Builder
	if code := run(context.Background(), nil, &out, &errw, func(k string) string {
		if k == "BENCH_DURATION" {
			return "soon"
		}
		return ""
	}); code != 2 || !strings.Contains(errw.String(), "BENCH_DURATION") {
		t.Errorf("bad BENCH_DURATION: exit %d, stderr %s", code, errw.String())
	}
}
