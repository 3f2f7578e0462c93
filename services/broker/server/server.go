// Package server assembles the broker: trust policy (reloaded on file
// change, SIGHUP or RPC), OIDC verifier, the state store (SQLite or
// PostgreSQL), the local STS provider, the audit client and the gRPC API
// on the shared server plumbing. cmd/broker runs it; the local stack and
// end-to-end tests start it in-process.
package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/credmatrix/credmatrix/platform/auditappend"
	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/keyfile"
	"github.com/credmatrix/credmatrix/platform/metrics"
	"github.com/credmatrix/credmatrix/platform/pgnotify"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/awssts"
	"github.com/credmatrix/credmatrix/services/broker/brokermetrics"
	"github.com/credmatrix/credmatrix/services/broker/grpcapi"
	"github.com/credmatrix/credmatrix/services/broker/localsts"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/credmatrix/credmatrix/services/broker/postgres"
	"github.com/credmatrix/credmatrix/services/broker/sqlite"
	"github.com/hashicorp/go-hclog"
)

// LocalSTSConfig configures the local provider.
type LocalSTSConfig struct {
	SigningKeyFile string `cfg:"signing_key_file" help:"file holding the 32-byte hex key that signs local session tokens"`
}

// AWSConfig configures the aws provider. The broker's own AWS identity
// comes from the standard SDK chain (IRSA, instance role, AWS_* env).
type AWSConfig struct {
	Mode                     string        `cfg:"mode" help:"assume-role (the broker's identity assumes the target role) or web-identity (the caller's token is passed to AssumeRoleWithWebIdentity)"`
	HubRoleARN               string        `cfg:"hub_role_arn" help:"role assumed first; target roles are assumed from it (sessions capped at 1h by role chaining)"`
	RevokerRoleName          string        `cfg:"revoker_role_name" help:"role assumed in each account to put revocation deny policies through IAM; empty uses the broker's identity"`
	STSEndpoint              string        `cfg:"sts_endpoint" help:"override of the regional STS endpoint (VPC endpoint, tests)"`
	IAMEndpoint              string        `cfg:"iam_endpoint" help:"override of the IAM endpoint"`
	MaxAttempts              int           `cfg:"max_attempts" help:"STS calls per request, retrying throttling with jittered backoff inside the caller's deadline"`
	CallTimeout              time.Duration `cfg:"call_timeout" help:"deadline of one STS or IAM call"`
	MaxRevocationPolicyBytes int           `cfg:"max_revocation_policy_bytes" help:"size budget of a role's inline revocation policy (IAM allows 10240 characters for all of a role's inline policies); past it the oldest revocations are compacted into a deny of every session issued before a cutoff"`
}

// StateConfig configures the broker's state store (single-use token ids,
// revocations, freezes).
type StateConfig struct {
	Driver      string `cfg:"driver" help:"state store: sqlite (one replica, embedded) or postgres (shared by replicas: a freeze, revocation or reload at one binds every replica's next decision)"`
	SQLitePath  string `cfg:"sqlite_path" help:"SQLite file of the state store (driver sqlite)"`
	PostgresDSN string `cfg:"postgres_dsn" help:"PostgreSQL connection string (driver postgres); prefer the environment variable for its password"`
}

// OIDCConfig bounds how long issuers' signing keys are trusted.
type OIDCConfig struct {
	KeyRefreshMin      time.Duration `cfg:"key_refresh_min" help:"shortest interval between scheduled refetches of an issuer's signing keys (the issuer's Cache-Control max-age is honoured between min and max)"`
	KeyRefreshMax      time.Duration `cfg:"key_refresh_max" help:"longest interval between scheduled refetches of an issuer's signing keys: a key the issuer withdraws stops verifying within it"`
	KeyGrace           time.Duration `cfg:"key_grace" help:"how long past their refresh time cached keys keep verifying while the issuer cannot be reached; then its tokens are refused UNAVAILABLE"`
	KeyRefreshCooldown time.Duration `cfg:"key_refresh_cooldown" help:"least time between refetches not due to the schedule (unknown kid, known kid failing to verify, retry after a failure)"`
}

// LimitsConfig configures rate limits; 0 disables one.
type LimitsConfig struct {
	PerSubject        float64 `cfg:"per_subject" help:"sustained issuances per second per caller (issuer and subject); 0 disables"`
	SubjectBurst      int     `cfg:"subject_burst" help:"issuances a caller may make at once"`
	PerRole           float64 `cfg:"per_role" help:"sustained issuances per second per role and account, whoever asks; 0 disables"`
	RoleBurst         int     `cfg:"role_burst" help:"issuances per role at once"`
	ExplainPerSubject float64 `cfg:"explain_per_subject" help:"sustained ExplainDecision calls per second per caller (each reveals policy, each is audited); 0 disables"`
	ExplainBurst      int     `cfg:"explain_burst" help:"ExplainDecision calls a caller may make at once"`
}

// Config is the whole configuration of the broker.
type Config struct {
	Server               grpcserver.Config       `cfg:"server"`
	Public               grpcserver.PublicConfig `cfg:"public"`
	PolicyFile           string                  `cfg:"policy_file" help:"trust policy YAML (issuers, accounts, roles, rules)"`
	PolicyReloadInterval time.Duration           `cfg:"policy_reload_interval" help:"how often the policy file is checked for changes (reloaded atomically; a bad file keeps the old policy); 0 disables. SIGHUP and the ReloadPolicy RPC reload too"`
	Audit                grpcclient.Config       `cfg:"audit"`
	AuditHMACKeyFile     string                  `cfg:"audit_hmac_key_file" help:"file holding the 32-byte hex key of the HMACs that name secrets in audit events"`
	AuditZones           []string                `cfg:"audit_zones" help:"zone=target entries: the audit log of each data-residency zone (own store, checkpoint key and origin); an event about an account of a zone goes to that zone's log only (audit's TLS settings apply), events about no single zone to audit.target. Empty: every event to audit.target"`
	AuditBatch           auditappend.Config      `cfg:"audit_batch"`
	AdminPrincipals      []string                `cfg:"admin_principals" help:"mTLS identities (certificate URI SANs) allowed to revoke, freeze and reload"`
	State                StateConfig             `cfg:"state"`
	Limits               LimitsConfig            `cfg:"limits"`
	OIDC                 OIDCConfig              `cfg:"oidc"`
	Provider             string                  `cfg:"provider" help:"STS provider: local (embedded, development) or aws"`
	LocalSTS             LocalSTSConfig          `cfg:"local_sts"`
	AWS                  AWSConfig               `cfg:"aws"`
	LogLevel             string                  `cfg:"log_level" help:"trace, debug, info, warn or error"`
	Metrics              metrics.Config          `cfg:"metrics"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	c := Config{
		Server: grpcserver.DefaultConfig(), Provider: "local", LogLevel: "info",
		PolicyReloadInterval: 5 * time.Second,
		State:                StateConfig{Driver: "sqlite"},
		Limits:               LimitsConfig{SubjectBurst: 20, RoleBurst: 100, ExplainPerSubject: 1, ExplainBurst: 10},
		AuditBatch:           auditappend.DefaultConfig(),
		AWS:                  AWSConfig{Mode: awssts.ModeAssumeRole, MaxAttempts: 5, CallTimeout: 5 * time.Second, MaxRevocationPolicyBytes: awssts.DefaultMaxRevocationPolicyBytes},
		OIDC: OIDCConfig{
			KeyRefreshMin: oidc.DefaultKeyLifetime.MinRefresh, KeyRefreshMax: oidc.DefaultKeyLifetime.MaxRefresh,
			KeyGrace: oidc.DefaultKeyLifetime.Grace, KeyRefreshCooldown: oidc.DefaultKeyLifetime.Cooldown,
		},
	}
	c.Server.ListenAddr = "127.0.0.1:7401"
	c.Audit.Target = "127.0.0.1:7403"
	c.Audit.HealthService = auditappend.AppendHealthService
	return c
}

// Validate checks the fields the broker adds; nested configs validate
// themselves.
func (c Config) Validate() error {
	var errs []error
	req := func(field, val, msg string) {
		if val == "" {
			errs = append(errs, &config.FieldError{Field: field, Msg: msg})
		}
	}
	req("policy_file", c.PolicyFile, "required: the trust policy")
	req("audit.target", c.Audit.Target, "required: the broker records every issuance before returning it")
	req("audit_hmac_key_file", c.AuditHMACKeyFile, "required")
	switch c.State.Driver {
	case "sqlite":
		req("state.sqlite_path", c.State.SQLitePath, "required with state.driver sqlite")
	case "postgres":
		req("state.postgres_dsn", c.State.PostgresDSN, "required with state.driver postgres")
	default:
		errs = append(errs, &config.FieldError{Field: "state.driver", Msg: fmt.Sprintf("unknown driver %q (want sqlite or postgres)", c.State.Driver)})
	}
	if c.PolicyReloadInterval < 0 {
		errs = append(errs, &config.FieldError{Field: "policy_reload_interval", Msg: "must not be negative"})
	}
	if c.Limits.PerSubject < 0 || c.Limits.PerRole < 0 || c.Limits.SubjectBurst < 0 || c.Limits.RoleBurst < 0 || c.Limits.ExplainPerSubject < 0 || c.Limits.ExplainBurst < 0 {
		errs = append(errs, &config.FieldError{Field: "limits", Msg: "rates and bursts must not be negative"})
	}
	for i, p := range c.AdminPrincipals {
		if err := grpcserver.CheckSPIFFEID(p); err != nil {
			errs = append(errs, &config.FieldError{Field: fmt.Sprintf("admin_principals[%d]", i), Msg: "not a SPIFFE ID: " + err.Error()})
		}
	}
	if err := c.OIDC.lifetime().Validate(); err != nil {
		errs = append(errs, &config.FieldError{Field: "oidc", Msg: err.Error()})
	}
	errs = append(errs, metrics.CheckSeparate(c.Metrics.ListenAddr, c.Server.ListenAddr))
	switch c.Provider {
	case "local":
		req("local_sts.signing_key_file", c.LocalSTS.SigningKeyFile, "required with provider local")
	case "aws":
		if c.AWS.Mode != awssts.ModeAssumeRole && c.AWS.Mode != awssts.ModeWebIdentity {
			errs = append(errs, &config.FieldError{Field: "aws.mode", Msg: "want assume-role or web-identity"})
		}
		if c.AWS.MaxRevocationPolicyBytes < 512 || c.AWS.MaxRevocationPolicyBytes > 10240 {
			errs = append(errs, &config.FieldError{Field: "aws.max_revocation_policy_bytes", Msg: "must be 512 to 10240"})
		}
		if c.AWS.MaxAttempts < 1 || c.AWS.CallTimeout <= 0 {
			errs = append(errs, &config.FieldError{Field: "aws.max_attempts", Msg: "max_attempts must be at least 1 and call_timeout positive"})
		}
	default:
		errs = append(errs, &config.FieldError{Field: "provider", Msg: fmt.Sprintf("unknown provider %q (want local or aws)", c.Provider)})
	}
	return errors.Join(errs...)
}

// PublicMethods are the RPCs the public listener serves: the caller RPCs,
// whose credential is the OIDC token in the request. Revocation, freezes,
// reloads and session introspection need mutual TLS on the service port.
var PublicMethods = []string{
	brokerv1.BrokerService_IssueSession_FullMethodName,
	brokerv1.BrokerService_ListRoles_FullMethodName,
	brokerv1.BrokerService_ExplainDecision_FullMethodName,
}

// Server is a running broker.
type Server struct {
	grpc     *grpcserver.Server
	metrics  *metrics.Server       // nil when metrics are off
	audit    func() error          // closes the audit connections
	appender *auditappend.Appender // the global log's
	zones    *auditappend.Zones
	store    broker.Store
	svc      *broker.Service
	log      hclog.Logger
	cfg      Config
	lastSeen string // sha256 of the policy file last acted on
}

func (c OIDCConfig) lifetime() oidc.KeyLifetime {
	return oidc.KeyLifetime{MinRefresh: c.KeyRefreshMin, MaxRefresh: c.KeyRefreshMax, Grace: c.KeyGrace, Cooldown: c.KeyRefreshCooldown}
}

// loadPolicy reads the policy file and builds the verifier of its
// issuers.
func loadPolicy(ctx context.Context, path string, keys oidc.KeyLifetime) (*policy.Policy, broker.TokenVerifier, error) {
	pol, err := policy.Load(path)
	if err != nil {
		return nil, nil, err
	}
	v, err := broker.NewVerifier(ctx, pol, oidc.WithKeyLifetime(keys))
	if err != nil {
		return nil, nil, fmt.Errorf("oidc verifier: %w", err)
	}
	return pol, v, nil
}

// newProvider is the one place a provider is chosen.
func newProvider(ctx context.Context, cfg Config) (broker.Provider, error) {
	switch cfg.Provider {
	case "aws":
		base, err := awsconfig.LoadDefaultConfig(ctx)
		if err != nil {
			return nil, fmt.Errorf("aws: load the broker's AWS identity: %w", err)
		}
		return awssts.New(base, awssts.Config{
			Mode: cfg.AWS.Mode, HubRoleARN: cfg.AWS.HubRoleARN, RevokerRoleName: cfg.AWS.RevokerRoleName,
			STSEndpoint: cfg.AWS.STSEndpoint, IAMEndpoint: cfg.AWS.IAMEndpoint,
			MaxAttempts: cfg.AWS.MaxAttempts, CallTimeout: cfg.AWS.CallTimeout, MaxRevocationPolicyBytes: cfg.AWS.MaxRevocationPolicyBytes,
		})
	default:
		key, err := keyfile.Read(cfg.LocalSTS.SigningKeyFile, localsts.KeySize)
		if err != nil {
			return nil, fmt.Errorf("local_sts.signing_key_file: %w", err)
		}
		return localsts.New(key)
	}
}

func openStore(ctx context.Context, cfg StateConfig) (broker.Store, error) {
	switch cfg.Driver {
	case "postgres":
		return postgres.Open(ctx, cfg.PostgresDSN)
	default:
		return sqlite.Open(ctx, cfg.SQLitePath)
	}
}

// New loads the policy and keys, opens the state store, connects to
// audit and starts listening.
func New(ctx context.Context, cfg Config, log hclog.Logger, opts ...grpcserver.Option) (*Server, error) {
	if err := errors.Join(cfg.Validate(), cfg.Server.Validate(), cfg.Audit.Validate(), cfg.AuditBatch.Validate(), cfg.Metrics.Validate()); err != nil {
		return nil, err
	}
	store, err := openStore(ctx, cfg.State)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	failEarly := func(err error) (*Server, error) {
		store.Close()
		return nil, err
	}
	// The reload requests the policy file read next reflects.
	shared, err := store.LoadState(ctx, time.Now())
	if err != nil {
		return failEarly(fmt.Errorf("state: %w", err))
	}
	pol, verifier, err := loadPolicy(ctx, cfg.PolicyFile, cfg.OIDC.lifetime())
	if err != nil {
		return failEarly(err)
	}
	hmacKey, err := keyfile.Read(cfg.AuditHMACKeyFile, auditevent.MinKeyBytes)
	if err != nil {
		return failEarly(fmt.Errorf("audit_hmac_key_file: %w", err))
	}
	hasher, err := auditevent.NewHasher(hmacKey)
	if err != nil {
		return failEarly(err)
	}
	provider, err := newProvider(ctx, cfg)
	if err != nil {
		return failEarly(err)
	}
	// grpc.NewClient connects lazily: an audit service that is down now
	// makes requests fail UNAVAILABLE, not the start-up.
	zoneTargets, err := auditappend.ParseZoneTargets(cfg.AuditZones)
	if err != nil {
		return failEarly(err)
	}
	zones, appender, closeAudit, err := auditappend.DialZones(cfg.Audit, zoneTargets, auditappend.WithConfig(cfg.AuditBatch))
	if err != nil {
		return failEarly(err)
	}
	if len(zoneTargets) > 0 {
		for _, a := range pol.Accounts() {
			if _, ok := zoneTargets[a.Residency]; a.Residency != "" && !ok {
				log.Warn("an account's residency zone has no audit log: its requests will fail (audit unavailable) until audit_zones names one", "account", a.Name, "zone", a.Residency)
			}
		}
	}
	var auditor broker.Auditor = zones
	var metricsSrv *metrics.Server
	if cfg.Metrics.Enabled() {
		reg := metrics.NewRegistry()
		m := brokermetrics.New(reg)
		provider, auditor = m.Provider(provider), m.Auditor(auditor)
		opts = append([]grpcserver.Option{grpcserver.WithMetrics(reg), grpcserver.WithUnaryInterceptors(brokermetrics.IssueTimer(m))}, opts...)
		if metricsSrv, err = metrics.Listen(cfg.Metrics, reg, log); err != nil {
			closeAudit()
			store.Close()
			return nil, err
		}
	}
	svc, err := broker.New(broker.Config{
		Policy: pol, Verifier: verifier, Provider: provider, Auditor: auditor, Hasher: hasher,
		Store: store, Admins: cfg.AdminPrincipals,
		Reload: func(ctx context.Context) (*policy.Policy, broker.TokenVerifier, error) {
			return loadPolicy(ctx, cfg.PolicyFile, cfg.OIDC.lifetime())
		},
		KeyEventLog: func(ev oidc.KeyEvent, auditErr error) {
			args := []any{"issuer", ev.Issuer, "event", ev.Kind.String()}
			if ev.Err != nil {
				args = append(args, "cause", ev.Err)
			}
			if auditErr != nil {
				args = append(args, "audit_error", auditErr)
			}
			switch {
			case auditErr != nil || ev.Kind == oidc.KeysUnavailable:
				log.Error("issuer signing keys", args...)
			case ev.Kind == oidc.KeysRefreshFailed:
				log.Warn("issuer signing keys", args...)
			default:
				log.Info("issuer signing keys", args...)
			}
		},
		ReloadGeneration: shared.ReloadGeneration,
		Limits: broker.Limits{PerSubject: cfg.Limits.PerSubject, SubjectBurst: cfg.Limits.SubjectBurst, PerRole: cfg.Limits.PerRole, RoleBurst: cfg.Limits.RoleBurst,
			ExplainPerSubject: cfg.Limits.ExplainPerSubject, ExplainBurst: cfg.Limits.ExplainBurst},
	})
	if err != nil {
		metricsSrv.Close()
		closeAudit()
		store.Close()
		return nil, err
	}
	gs, err := grpcserver.New(cfg.Server, log, append(opts, grpcserver.WithPublic(cfg.Public, PublicMethods...))...)
	if err != nil {
		metricsSrv.Close()
		closeAudit()
		store.Close()
		return nil, err
	}
	brokerv1.RegisterBrokerServiceServer(gs, grpcapi.New(svc,
		grpcapi.WithIdentity(grpcserver.PeerIdentity),
		grpcapi.WithLogger(log),
	))
	log.Info("trust policy loaded", "file", cfg.PolicyFile, "sha256", pol.SHA256(), "rules", len(pol.Rules()), "provider", provider.Name(), "state", cfg.State.Driver)
	return &Server{grpc: gs, metrics: metricsSrv, audit: closeAudit, appender: appender, zones: zones, store: store, svc: svc, log: log, cfg: cfg, lastSeen: pol.SHA256()}, nil
}

// Addr is where the broker listens for mTLS callers.
func (s *Server) Addr() net.Addr { return s.grpc.Addr() }

// PublicAddr is where the public listener listens, or nil without one.
func (s *Server) PublicAddr() net.Addr { return s.grpc.PublicAddr() }

// MetricsAddr is where the Prometheus endpoint listens, or nil when
// metrics are off.
func (s *Server) MetricsAddr() net.Addr { return s.metrics.Addr() }

// Service is the broker domain service, for in-process callers (tests).
func (s *Server) Service() *broker.Service { return s.svc }

// AuditAppender is the broker's audit appender, for in-process observers
// (tests that hold the audit service and wait for events to queue).
func (s *Server) AuditAppender() *auditappend.Appender { return s.appender }

// Serve answers until ctx is cancelled, then drains. Meanwhile it
// reloads the policy when its file changes (every
// policy_reload_interval) and on SIGHUP.
func (s *Server) Serve(ctx context.Context) error {
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.watch(wctx)
	}()
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		if f, ok := s.store.(follower); ok {
			pgnotify.Refresh(wctx, f.Follow, s.svc.RefreshState, s.log)
		}
	}()
	merr := make(chan error, 1)
	go func() { merr <- s.metrics.Serve(wctx) }()
	err := s.grpc.Serve(ctx)
	stop()
	<-done
	<-followed
	// Events of callers that went away are still queued or in flight:
	// they are recorded before the connection closes.
	actx, cancel := context.WithTimeout(context.Background(), auditappend.DefaultTimeout)
	defer cancel()
	return errors.Join(err, <-merr, s.zones.Close(actx), s.audit(), s.store.Close())
}

// follower is a store that announces changes made by other replicas.
type follower interface {
	Follow(ctx context.Context, changed func(), onError func(error))
}

// watch reloads on file changes and SIGHUP until ctx ends.
func (s *Server) watch(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var tick <-chan time.Time
	if s.cfg.PolicyReloadInterval > 0 {
		t := time.NewTicker(s.cfg.PolicyReloadInterval)
		defer t.Stop()
		tick = t.C
	}
	// pending is a changed file content seen once: it is reloaded only when
	// the next poll sees the same bytes, so a file caught half-written (a
	// truncate-then-write editor, a slow copy) is not parsed, refused and
	// audited as a broken policy.
	var pending string
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			s.reload(ctx, "signal")
		case <-tick:
			data, err := os.ReadFile(s.cfg.PolicyFile)
			if err != nil {
				continue // reported by the next reload that can read it
			}
			sum := sha256.Sum256(data)
			switch sha := hex.EncodeToString(sum[:]); {
			case sha == s.lastSeen:
				pending = ""
			case sha != pending:
				pending = sha // changed: let it settle for one interval
			default:
				s.lastSeen, pending = sha, ""
				s.reload(ctx, "file")
			}
		}
	}
}

// reload reloads and logs the outcome; the Service audits it.
func (s *Server) reload(ctx context.Context, trigger string) {
	res, err := s.svc.Reload(ctx, trigger)
	if err != nil {
		s.log.Error("trust policy reload refused; the policy in force stays", "trigger", trigger, "error", err)
		return
	}
	s.log.Info("trust policy reloaded", "trigger", trigger, "sha256", res.SHA256, "rules", res.Rules, "changed", res.Changed)
}

// Stop stops at once.
func (s *Server) Stop() {
	s.grpc.Stop()
	s.metrics.Close()
	s.audit()
	s.store.Close()
}
