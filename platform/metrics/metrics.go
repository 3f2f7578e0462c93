// Package metrics is the Prometheus side of credmatrix's observability:
// the configuration and HTTP server of each service's /metrics endpoint
// (its own listen address, never the gRPC port), a registry per service,
// and the gRPC server request metrics that platform/grpcserver installs.
//
// Every metric is named credmatrix_<area>_<what>[_unit], and every label
// value is bounded and non-secret: gRPC method names come from registered
// services, roles, accounts, data classes and regions from configuration,
// kinds and decisions from enums. Subjects, token hashes, session ids and
// free-text reasons are never labels.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/internal/loopback"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Path is where the endpoint serves metrics.
const Path = "/metrics"

// PprofPath is where the endpoint serves Go runtime profiles when
// Config.Pprof is set (net/http/pprof's paths: heap, goroutine, profile …).
const PprofPath = "/debug/pprof/"

// MaxProfileSeconds is the longest CPU profile or trace the endpoint can
// serve (its write timeout is a little longer).
const MaxProfileSeconds = 12

// LatencyBuckets are the histogram buckets, in seconds, of every latency
// metric: from half a millisecond (a local KEK wrap) to ten seconds (an
// upstream call retried inside the caller's deadline).
var LatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Config is the metrics part of a service's configuration; embed it under a
// "metrics" key.
type Config struct {
	ListenAddr string `cfg:"listen_addr" help:"host:port of the Prometheus endpoint (plain HTTP, path /metrics; port 0 picks a free port); must differ from the gRPC address; empty turns metrics off"`
	// Pprof serves the Go runtime's profiles for diagnosis (make bench
	// profiles the real binaries with it). Profiles hold code locations
	// and sizes, not memory contents, but they are nobody's business off
	// the machine: loopback only.
	Pprof bool `cfg:"pprof" help:"diagnosis: also serve Go runtime profiles (net/http/pprof) under /debug/pprof/ on this endpoint; refused unless listen_addr is loopback"`
}

// Enabled reports whether an endpoint is configured.
func (c Config) Enabled() bool { return c.ListenAddr != "" }

// Validate checks c and returns every problem as a *config.FieldError
// relative to c ("listen_addr").
func (c Config) Validate() error {
	if c.ListenAddr == "" {
		if c.Pprof {
			return &config.FieldError{Field: "pprof", Msg: "needs listen_addr (profiles are served on the metrics endpoint)"}
		}
		return nil
	}
	_, port, err := net.SplitHostPort(c.ListenAddr)
	if err != nil {
		return &config.FieldError{Field: "listen_addr", Msg: "must be host:port (e.g. 127.0.0.1:9090), or empty to turn metrics off"}
	}
	if _, perr := strconv.ParseUint(port, 10, 16); perr != nil {
		return &config.FieldError{Field: "listen_addr", Msg: fmt.Sprintf("port %q must be a number from 0 to 65535", port)}
	}
	if c.Pprof && !loopback.HostPort(c.ListenAddr) {
		return &config.FieldError{Field: "pprof", Msg: fmt.Sprintf("refused: listen_addr %q is not loopback (use 127.0.0.1, ::1 or localhost)", c.ListenAddr)}
	}
	return nil
}

// CheckSeparate reports, as a field error on "metrics.listen_addr", a
// metrics address equal to the gRPC address: metrics are plain HTTP and
// must never share the gRPC port. Port 0 never clashes.
func CheckSeparate(metricsAddr, grpcAddr string) error {
	if metricsAddr == "" {
		return nil
	}
	mh, mp, err1 := net.SplitHostPort(metricsAddr)
	gh, gp, err2 := net.SplitHostPort(grpcAddr)
	if err1 != nil || err2 != nil || mp == "0" || mp != gp {
		return nil
	}
	if mh == gh || mh == "" || gh == "" || mh == "0.0.0.0" || gh == "0.0.0.0" || mh == "::" || gh == "::" {
		return &config.FieldError{Field: "metrics.listen_addr", Msg: fmt.Sprintf("%q is the gRPC address; serve metrics on a port of their own", metricsAddr)}
	}
	return nil
}

// NewRegistry returns a registry holding the Go runtime and process
// collectors; each service builds its own, so several services in one
// process (the local stack) keep their metrics apart.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Server serves a registry on /metrics.
type Server struct {
	lis  net.Listener
	http *http.Server
	log  hclog.Logger
}

// Listen starts listening on cfg.ListenAddr, so the address (and a port
// chosen for ":0") is known before Serve. log nil discards logs.
func Listen(cfg Config, gatherer prometheus.Gatherer, log hclog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.Enabled() {
		return nil, errors.New("metrics: listen_addr is empty")
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	lis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", cfg.ListenAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog:            promLogger{log},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	if cfg.Pprof {
		mux.HandleFunc("GET "+PprofPath+"profile", serveCPUProfile)
		mux.HandleFunc("GET "+PprofPath+"{name}", serveProfile)
	}
	return &Server{
		lis: lis,
		log: log,
		http: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      15 * time.Second,
			MaxHeaderBytes:    8 << 10,
		},
	}, nil
}

// serveCPUProfile writes a CPU profile of ?seconds= (default 5, at most
// MaxProfileSeconds) in pprof's format.
func serveCPUProfile(w http.ResponseWriter, r *http.Request) {
	sec := 5
	if v := r.URL.Query().Get("seconds"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxProfileSeconds {
			http.Error(w, fmt.Sprintf("seconds: want 1 to %d", MaxProfileSeconds), http.StatusBadRequest)
			return
		}
		sec = n
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := pprof.StartCPUProfile(w); err != nil {
		// Another profile is running: say so before anything is written.
		http.Error(w, "a CPU profile is already running", http.StatusConflict)
		return
	}
	t := time.NewTimer(time.Duration(sec) * time.Second)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
	pprof.StopCPUProfile()
}

// serveProfile writes a named runtime profile (heap, allocs, goroutine,
// mutex, block, threadcreate) in pprof's format, or as text with
// ?debug=1 or 2.
func serveProfile(w http.ResponseWriter, r *http.Request) {
	p := pprof.Lookup(r.PathValue("name"))
	if p == nil {
		http.Error(w, "unknown profile", http.StatusNotFound)
		return
	}
	debug, _ := strconv.Atoi(r.URL.Query().Get("debug"))
	if debug > 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	_ = p.WriteTo(w, debug) // a failed write means the client went away
}

// Addr is where the endpoint listens; nil for a nil Server (metrics off).
func (s *Server) Addr() net.Addr {
	if s == nil {
		return nil
	}
	return s.lis.Addr()
}

// Serve serves until ctx is cancelled, then shuts down (waiting at most
// five seconds for scrapes in progress). It returns nil after a clean
// shutdown. A nil Server (metrics off) returns nil at once.
func (s *Server) Serve(ctx context.Context) error {
	if s == nil {
		return nil
	}
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(s.lis) }()
	s.log.Info("serving metrics", "addr", "http://"+s.Addr().String()+Path)
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("metrics: serve on %s: %w", s.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.http.Shutdown(sctx); err != nil {
		_ = s.http.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serve on %s: %w", s.Addr(), err)
	}
	return nil
}

// Close stops at once. A nil Server does nothing.
func (s *Server) Close() error {
	if s == nil {
		return nil
	}
	err := s.http.Close()
	_ = s.lis.Close() // already closed if Serve ran
	return err
}

type promLogger struct{ log hclog.Logger }

func (l promLogger) Println(v ...any) { l.log.Warn("metrics: " + fmt.Sprint(v...)) }
