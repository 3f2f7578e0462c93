// Package server assembles the audit service: store (SQLite or PostgreSQL),
// checkpoint signer, log, gRPC API and the shared gRPC server plumbing.
// cmd/audit runs it; the local stack and end-to-end tests start it
// in-process.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/platform/auditappend"
	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/metrics"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/auditmetrics"
	"github.com/credmatrix/credmatrix/services/audit/grpcapi"
	"github.com/credmatrix/credmatrix/services/audit/keptfile"
	"github.com/credmatrix/credmatrix/services/audit/postgres"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
	"github.com/credmatrix/credmatrix/services/audit/tiles"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Config is the whole configuration of the audit service.
type Config struct {
	Server           grpcserver.Config `cfg:"server"`
	Store            string            `cfg:"store" help:"where the log is kept: sqlite (one file, embedded default) or postgres (replicas; one sequencer at a time)"`
	DBPath           string            `cfg:"db_path" help:"SQLite database file of the audit log (created when missing); store=sqlite"`
	Postgres         PostgresConfig    `cfg:"postgres"`
	AppendPrincipals []string          `cfg:"append_principals" help:"mTLS identities (certificate URI SANs) allowed to append: the broker and keyguard"`
	ReadPrincipals   []string          `cfg:"read_principals" help:"mTLS identities allowed to query and subscribe: operators"`
	ResidencyZone    string            `cfg:"residency_zone" help:"the one data-residency zone whose events this log keeps (each zone's log has its own store, checkpoint key and origin); events of another zone, or of none, are refused. Empty: events of every zone"`
	LogLevel         string            `cfg:"log_level" help:"trace, debug, info, warn or error"`
	Checkpoint       CheckpointConfig  `cfg:"checkpoint"`
	Commit           CommitConfig      `cfg:"commit"`
	StartupVerify    string            `cfg:"startup_verify" help:"what start-up checks: bounded (load the Merkle tree from the latest checkpoint that carries its compact range, checked against its signature, and re-hash only the events after it: seconds whatever the log's size) or full (re-hash every event, check every row's columns and rebuild and compare every stored tile: minutes per ten million events; for an operator who suspects the store — 'audit verify --db' does the same offline)"`
	TileCache        int               `cfg:"tile_cache" help:"stored Merkle tree tiles (8 KiB each) kept in memory for proofs and query checks"`
	Adopt            string            `cfg:"adopt" help:"adopt, exactly as it is, a store the service refused for reasons an operator may accept (events no checkpoint signs, columns that disagree with their events): the token the refusal printed; the events are then signed and the adoption recorded in the log. Check the store first (audit verify --db)."`
	Metrics          metrics.Config    `cfg:"metrics"`
}

// PostgresConfig locates the PostgreSQL database of store=postgres.
type PostgresConfig struct {
	DSN            string        `cfg:"dsn" help:"PostgreSQL connection string (libpq form or URL); prefer dsn_file, a DSN may hold a password"`
	DSNFile        string        `cfg:"dsn_file" help:"file holding the PostgreSQL connection string (e.g. a mounted Secret)"`
	FollowInterval time.Duration `cfg:"follow_interval" help:"how often a replica that is not the sequencer reads and checks what the sequencer appended (it also does before serving a checkpoint)"`
}

// CheckpointConfig says how checkpoints are signed.
type CheckpointConfig struct {
	KeyFile     string        `cfg:"key_file" help:"signed-note Ed25519 private key (PRIVATE+KEY+<origin>+...) that signs checkpoints; its public key is written beside it as <key_file>.pub"`
	GenerateKey bool          `cfg:"generate_key" help:"development only: create key_file with a fresh key when it is missing"`
	Origin      string        `cfg:"origin" help:"unique log origin; names a generated key (empty: credmatrix.local/audit/<random>) and must match a loaded key's name when set"`
	KeptFile    string        `cfg:"kept_file" help:"file where the service keeps its latest signed checkpoint outside the store (empty: <key_file>.kept); start-up refuses a store that does not extend it. Keep it where the database's writers cannot write"`
	KeptEvery   time.Duration `cfg:"kept_interval" help:"how often, at most, the kept checkpoint is rewritten while the log grows (and once at shutdown)"`
}

// CommitConfig tunes group commit.
type CommitConfig struct {
	QueueLimit int           `cfg:"queue_limit" help:"events that may wait for a commit before appends get RESOURCE_EXHAUSTED"`
	MaxEvents  int           `cfg:"max_events" help:"most events in one group commit (one transaction, one fsync)"`
	Window     time.Duration `cfg:"window" help:"how long a commit waits for more appends (0: commit what is waiting at once)"`
	RetryAfter time.Duration `cfg:"retry_after" help:"retry delay advised with RESOURCE_EXHAUSTED"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	c := Config{
		Server:        grpcserver.DefaultConfig(),
		Store:         "sqlite",
		DBPath:        "credmatrix-audit.db",
		LogLevel:      "info",
		StartupVerify: "bounded",
		TileCache:     tiles.DefaultCacheTiles,
		Checkpoint: CheckpointConfig{
			KeyFile:   "credmatrix-audit-checkpoint.key",
			KeptEvery: audit.DefaultKeptInterval,
		},
		Postgres: PostgresConfig{FollowInterval: time.Second},
		Commit: CommitConfig{
			QueueLimit: audit.DefaultQueueLimit,
			MaxEvents:  audit.DefaultCommitMaxEvents,
			RetryAfter: audit.DefaultRetryAfter,
		},
	}
	c.Server.ListenAddr = "127.0.0.1:7403"
	return c
}

// Validate checks the fields the audit service adds; Server validates
// itself.
func (c Config) Validate() error {
	var errs []error
	switch c.Store {
	case "sqlite":
		if c.DBPath == "" {
			errs = append(errs, &config.FieldError{Field: "db_path", Msg: "required"})
		}
	case "postgres":
		if (c.Postgres.DSN == "") == (c.Postgres.DSNFile == "") {
			errs = append(errs, &config.FieldError{Field: "postgres.dsn", Msg: "give postgres.dsn or postgres.dsn_file (exactly one) with store=postgres"})
		}
	default:
		errs = append(errs, &config.FieldError{Field: "store", Msg: fmt.Sprintf("%q: want sqlite or postgres", c.Store)})
	}
	switch c.StartupVerify {
	case "bounded", "full":
	default:
		errs = append(errs, &config.FieldError{Field: "startup_verify", Msg: fmt.Sprintf("%q: want bounded or full", c.StartupVerify)})
	}
	if c.TileCache < 1 || c.TileCache > 1<<20 {
		errs = append(errs, &config.FieldError{Field: "tile_cache", Msg: "out of range (1 to 1048576 tiles)"})
	}
	if c.ResidencyZone != "" && !auditevent.ValidZone(c.ResidencyZone) {
		errs = append(errs, &config.FieldError{Field: "residency_zone", Msg: "must be a zone name (1 to 32 of [a-z0-9-], starting with a letter)"})
	}
	if c.Checkpoint.KeyFile == "" {
		errs = append(errs, &config.FieldError{Field: "checkpoint.key_file", Msg: "required: the key that signs checkpoints"})
	}
	if c.Checkpoint.Origin != "" && !validOrigin(c.Checkpoint.Origin) {
		errs = append(errs, &config.FieldError{Field: "checkpoint.origin", Msg: "must be printable, without spaces or '+'"})
	}
	for _, f := range []struct {
		name string
		ok   bool
	}{
		{"checkpoint.kept_interval", c.Checkpoint.KeptEvery > 0},
		{"postgres.follow_interval", c.Postgres.FollowInterval > 0},
		{"commit.queue_limit", c.Commit.QueueLimit >= audit.MaxBatch},
		{"commit.max_events", c.Commit.MaxEvents >= 1},
		{"commit.window", c.Commit.Window >= 0 && c.Commit.Window <= time.Second},
		{"commit.retry_after", c.Commit.RetryAfter > 0},
	} {
		if !f.ok {
			errs = append(errs, &config.FieldError{Field: f.name, Msg: "out of range (see --help)"})
		}
	}
	errs = append(errs, metrics.CheckSeparate(c.Metrics.ListenAddr, c.Server.ListenAddr))
	// With TLS on, an empty list would let any certificate the CA signed
	// write to (or read) the log: refuse rather than guess.
	if !c.Server.DevPlaintext {
		if len(c.AppendPrincipals) == 0 {
			errs = append(errs, &config.FieldError{Field: "append_principals", Msg: "required with TLS: name the broker's and keyguard's certificate identities"})
		}
		if len(c.ReadPrincipals) == 0 {
			errs = append(errs, &config.FieldError{Field: "read_principals", Msg: "required with TLS: name the operators' certificate identities"})
		}
	}
	errs = append(errs, checkPrincipals("append_principals", c.AppendPrincipals), checkPrincipals("read_principals", c.ReadPrincipals))
	return errors.Join(errs...)
}

// checkPrincipals refuses a principal that is not a strict SPIFFE ID: the
// identity interceptor gives no caller any other identity, so it could
// never match.
func checkPrincipals(field string, ps []string) error {
	var errs []error
	for i, p := range ps {
		if err := grpcserver.CheckSPIFFEID(p); err != nil {
			errs = append(errs, &config.FieldError{Field: fmt.Sprintf("%s[%d]", field, i), Msg: "not a SPIFFE ID: " + err.Error()})
		}
	}
	return errors.Join(errs...)
}

// Server is a running audit service.
type Server struct {
	grpc    *grpcserver.Server
	metrics *metrics.Server // nil when metrics are off
	log     *audit.Log
	store   audit.Store
	raw     audit.Store // store without decorators
}

// openStore is the one place that picks the backend. where names the store
// for messages (never the DSN, which may hold a password).
func openStore(ctx context.Context, cfg Config) (audit.Store, string, error) {
	switch cfg.Store {
	case "postgres":
		dsn := cfg.Postgres.DSN
		if cfg.Postgres.DSNFile != "" {
			b, err := os.ReadFile(cfg.Postgres.DSNFile)
			if err != nil {
				return nil, "postgres", fmt.Errorf("postgres.dsn_file: %w", err)
			}
			dsn = strings.TrimSpace(string(b))
		}
		s, err := postgres.Open(ctx, dsn)
		if err != nil {
			return nil, "postgres", fmt.Errorf("open audit store (postgres): %w", err)
		}
		return s, "postgres", nil
	default:
		s, err := sqlite.Open(ctx, cfg.DBPath)
		if err != nil {
			return nil, cfg.DBPath, fmt.Errorf("open audit store %s: %w", cfg.DBPath, err)
		}
		return s, cfg.DBPath, nil
	}
}

// New opens the store and starts listening. Serve starts answering.
func New(ctx context.Context, cfg Config, logger hclog.Logger, opts ...grpcserver.Option) (*Server, error) {
	if err := errors.Join(cfg.Validate(), cfg.Server.Validate(), cfg.Metrics.Validate()); err != nil {
		return nil, err
	}
	signer, err := LoadSigner(cfg.Checkpoint)
	if err != nil {
		return nil, err
	}
	store, where, err := openStore(ctx, cfg)
	raw := store
	if err != nil {
		return nil, err
	}
	var m *auditmetrics.Metrics
	var reg *prometheus.Registry
	if cfg.Metrics.Enabled() {
		reg = metrics.NewRegistry()
		m = auditmetrics.New(reg, cfg.Store)
		store = m.Store(ctx, store)
		opts = append([]grpcserver.Option{grpcserver.WithMetrics(reg)}, opts...)
	}
	kept := keptfile.New(cfg.Checkpoint.keptFile())
	logOpts := []audit.Option{
		audit.WithSigner(signer),
		audit.WithKept(kept, cfg.Checkpoint.KeptEvery),
		audit.WithGroupCommit(cfg.Commit.QueueLimit, cfg.Commit.MaxEvents, cfg.Commit.Window, cfg.Commit.RetryAfter),
		audit.WithErrorLog(logger.Error),
		audit.WithAdoption(cfg.Adopt),
		audit.WithTileCache(cfg.TileCache),
	}
	if cfg.StartupVerify == "full" {
		logOpts = append(logOpts, audit.WithFullVerification())
	}
	if cfg.ResidencyZone != "" {
		logOpts = append(logOpts, audit.WithResidencyZone(cfg.ResidencyZone))
	}
	if cfg.Store == "postgres" {
		logOpts = append(logOpts, audit.WithFollow(cfg.Postgres.FollowInterval))
	}
	if note, err := kept.Load(); err == nil && note == nil {
		logger.Warn("no kept checkpoint yet: trusting the store's own latest checkpoint this once", "kept_file", kept.Path())
	}
	log, err := audit.Open(ctx, store, logOpts...)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("audit store %s: %w", where, err)
	}
	if a := log.Adopted(); a != nil {
		logger.Warn("an operator adopted the audit store as it was; the adoption is recorded in the log", "token", a.Token, "sequence", a.Sequence, "findings", len(a.Findings))
		for _, f := range a.Findings {
			logger.Warn("adopted", "finding", f.String())
		}
	}
	oi := log.OpenInfo()
	logger.Info("audit log open", "origin", signer.Origin(), "key_id", signer.KeyID(), "size", log.Size(), "kept_file", kept.Path(),
		"startup_verify", cfg.StartupVerify, "tree_loaded_at", oi.Loaded, "events_checked", oi.Checked, "tiles_rebuilt", oi.TilesRebuilt)
	var metricsSrv *metrics.Server
	if m != nil {
		m.ObserveLog(log)
		if metricsSrv, err = metrics.Listen(cfg.Metrics, reg, logger); err != nil {
			log.Close()
			store.Close()
			return nil, err
		}
	}
	gs, err := grpcserver.New(cfg.Server, logger, opts...)
	if err != nil {
		metricsSrv.Close()
		log.Close()
		store.Close()
		return nil, err
	}
	auditv1.RegisterAuditServiceServer(gs, grpcapi.New(log,
		grpcapi.WithIdentity(grpcserver.PeerIdentity),
		grpcapi.WithAppendPrincipals(cfg.AppendPrincipals),
		grpcapi.WithReadPrincipals(cfg.ReadPrincipals),
		grpcapi.WithLogger(logger),
	))
	return &Server{grpc: gs, metrics: metricsSrv, log: log, store: store, raw: raw}, nil
}

// Addr is where the service listens.
func (s *Server) Addr() net.Addr { return s.grpc.Addr() }

// MetricsAddr is where the Prometheus endpoint listens, or nil when
// metrics are off.
func (s *Server) MetricsAddr() net.Addr { return s.metrics.Addr() }

// Serve answers until ctx is cancelled, then ends open subscriptions, drains
// in-flight appends and closes the store.
func (s *Server) Serve(ctx context.Context) error {
	serveCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	go func() {
		<-ctx.Done()
		// Subscribe streams never end by themselves: end them so the
		// graceful stop does not wait for its whole drain timeout.
		s.log.Close()
		cancel()
	}()
	merr := make(chan error, 1)
	go func() { merr <- s.metrics.Serve(serveCtx) }()
	reported := make(chan struct{})
	go func() {
		defer close(reported)
		s.reportAppendHealth(serveCtx)
	}()
	err := s.grpc.Serve(serveCtx)
	s.log.Close() // drains the committer and signs a last checkpoint
	cancel()
	<-reported
	return errors.Join(err, <-merr, s.store.Close())
}

// sequencer is a store of which one replica at a time appends.
type sequencer interface {
	IsSequencer() bool
	Sequencing() <-chan struct{}
}

// sequencerPoll is how often a sequencer checks it still is one.
const sequencerPoll = 200 * time.Millisecond

// reportAppendHealth keeps auditappend.AppendHealthService SERVING while
// this replica can append (a PostgreSQL replica only while it is the
// sequencer), so that producers route appends to it and away from it when
// another replica takes over.
func (s *Server) reportAppendHealth(ctx context.Context) {
	h := s.grpc.Health()
	seq, ok := s.raw.(sequencer)
	if !ok {
		h.SetServingStatus(auditappend.AppendHealthService, healthpb.HealthCheckResponse_SERVING)
		return
	}
	t := time.NewTicker(sequencerPoll)
	defer t.Stop()
	for {
		h.SetServingStatus(auditappend.AppendHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
		select {
		case <-ctx.Done():
			return
		case <-seq.Sequencing():
		}
		h.SetServingStatus(auditappend.AppendHealthService, healthpb.HealthCheckResponse_SERVING)
		for seq.IsSequencer() {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}
}

// Stop stops at once: in-flight RPCs are cancelled. Tests use it to take
// audit down under the other services.
func (s *Server) Stop() {
	s.log.Close()
	s.grpc.Stop()
	s.metrics.Close()
	s.store.Close()
}

// keptFile is the kept checkpoint's path: kept_file, or beside the key.
func (c CheckpointConfig) keptFile() string {
	if c.KeptFile != "" {
		return c.KeptFile
	}
	return c.KeyFile + ".kept"
}

// LoadSigner reads the checkpoint signing key from cfg.KeyFile, creating it
// (with a unique origin) when it is missing and cfg.GenerateKey is set, and
// writes the public key beside it as <key_file>.pub for investigators.
func LoadSigner(cfg CheckpointConfig) (*checkpoint.Signer, error) {
	b, err := os.ReadFile(cfg.KeyFile)
	switch {
	case errors.Is(err, os.ErrNotExist) && cfg.GenerateKey:
		origin := cfg.Origin
		if origin == "" {
			if origin, err = checkpoint.NewOrigin("credmatrix.local/audit"); err != nil {
				return nil, err
			}
		}
		skey, _, err := checkpoint.GenerateKey(origin)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(cfg.KeyFile, []byte(skey+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("checkpoint.key_file: write %s: %w", cfg.KeyFile, err)
		}
		b = []byte(skey)
	case errors.Is(err, os.ErrNotExist):
		return nil, &config.FieldError{Field: "checkpoint.key_file", Msg: fmt.Sprintf("%s does not exist (set checkpoint.generate_key to create one in development)", cfg.KeyFile)}
	case err != nil:
		return nil, fmt.Errorf("checkpoint.key_file: read %s: %w", cfg.KeyFile, err)
	}
	signer, err := checkpoint.NewSigner(string(b))
	if err != nil {
		return nil, &config.FieldError{Field: "checkpoint.key_file", Msg: err.Error()}
	}
	if cfg.Origin != "" && signer.Origin() != cfg.Origin {
		return nil, &config.FieldError{Field: "checkpoint.origin", Msg: fmt.Sprintf("%q does not match the key's origin %q", cfg.Origin, signer.Origin())}
	}
	pub := cfg.KeyFile + ".pub"
	if old, err := os.ReadFile(pub); err != nil || strings.TrimSpace(string(old)) != signer.PublicKey() {
		if err := os.WriteFile(pub, []byte(signer.PublicKey()+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("checkpoint.key_file: write public key %s: %w", pub, err)
		}
	}
	return signer, nil
}

func validOrigin(s string) bool {
	for _, r := range s {
		if r <= ' ' || r == '+' || r > '~' {
			return false
		}
	}
	return true
}
