// Package credserver serves AWS container credentials on a loopback address
// (AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN),
// which every AWS SDK and the AWS CLI read. It re-mints credentials from a
// fresh ID token before they expire, so jobs longer than one session keep
// working without any SDK-specific code.
package credserver

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/credmatrix/credmatrix/clients/credcache"
)

// Path is where credentials are served.
const Path = "/credentials"

// Fetch mints a new session.
type Fetch func(ctx context.Context) (credcache.Entry, error)

// Server serves one session, refreshed ahead of expiry.
type Server struct {
	fetch  Fetch
	token  string
	window time.Duration
	now    func() time.Time
	logf   func(format string, args ...any)

	mu  sync.Mutex // one fetch at a time; callers wait for it
	cur credcache.Entry

	srv *http.Server
	lis net.Listener
}

// Option configures a Server.
type Option func(*Server)

// WithWindow sets how long before expiry credentials are re-minted.
func WithWindow(d time.Duration) Option { return func(s *Server) { s.window = d } }

// WithClock replaces time.Now.
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// WithLogf reports refreshes and failures (never secrets).
func WithLogf(f func(format string, args ...any)) Option { return func(s *Server) { s.logf = f } }

// New returns a server with a fresh random authorization token.
func New(fetch Fetch, opts ...Option) (*Server, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	s := &Server{fetch: fetch, token: hex.EncodeToString(b), window: credcache.DefaultWindow, now: time.Now, logf: func(string, ...any) {}}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// AuthToken is the value clients must send in the Authorization header
// (AWS_CONTAINER_AUTHORIZATION_TOKEN). Secret.
func (s *Server) AuthToken() string { return s.token }

// Env returns the variables that point AWS SDKs at url.
func (s *Server) Env(url string) []string {
	return []string{
		"AWS_CONTAINER_CREDENTIALS_FULL_URI=" + url,
		"AWS_CONTAINER_AUTHORIZATION_TOKEN=" + s.token,
	}
}

// Start listens on addr, which must be a loopback address (the SDKs accept
// plain HTTP only there, and nothing else should reach the credentials).
// It returns the credentials URL.
func (s *Server) Start(addr string) (string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("listen address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("listen address %q: must be a loopback IP (127.0.0.1 or ::1)", addr)
	}
	s.lis, err = net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go s.srv.Serve(s.lis)
	return "http://" + s.lis.Addr().String() + Path, nil
}

// Close stops serving.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.srv.Shutdown(ctx)
}

// Handler serves GET Path.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path, func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(s.token)) != 1 {
			writeError(w, http.StatusUnauthorized, "Unauthorized", "missing or wrong authorization token")
			return
		}
		e, err := s.current(r.Context())
		if err != nil {
			s.logf("credmatrix serve-credentials: refresh failed: %v", err)
			writeError(w, http.StatusServiceUnavailable, "CredentialsUnavailable", "could not mint credentials; see serve-credentials output")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(map[string]string{
			"AccessKeyId": e.AccessKeyID, "SecretAccessKey": e.SecretAccessKey, "Token": e.SessionToken,
			"Expiration": e.Expiration.UTC().Format(time.RFC3339),
		})
	})
	return mux
}

// Prime mints the first session now, so a denial or an outage shows before
// anything relies on the endpoint.
func (s *Server) Prime(ctx context.Context) error {
	_, err := s.current(ctx)
	return err
}

// current returns credentials valid beyond the window, minting new ones
// when needed.
func (s *Server) current(ctx context.Context) (credcache.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.AccessKeyID != "" && s.now().Add(s.window).Before(s.cur.Expiration) {
		return s.cur, nil
	}
	e, err := s.fetch(ctx)
	if err != nil {
		// Still-valid credentials beat none while the broker is down.
		if s.cur.AccessKeyID != "" && s.now().Before(s.cur.Expiration) {
			return s.cur, nil
		}
		return credcache.Entry{}, err
	}
	if !s.now().Before(e.Expiration) {
		return credcache.Entry{}, errors.New("minted credentials are already expired")
	}
	s.cur = e
	s.logf("credmatrix serve-credentials: minted %s, expires %s", e.AccessKeyID, e.Expiration.UTC().Format(time.RFC3339))
	return e, nil
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"code": code, "message": msg})
}
