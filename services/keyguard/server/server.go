// Package server assembles keyguard: the key-ring and grant file, the KEK
// backend (local or awskms), the state store, the audit client and the gRPC API on the shared server
// plumbing. cmd/keyguard runs it; the local stack and end-to-end tests
// start it in-process.
package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"strings"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/credmatrix/credmatrix/platform/auditappend"
	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/keyfile"
	"github.com/credmatrix/credmatrix/platform/metrics"
	"github.com/credmatrix/credmatrix/platform/pgnotify"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/awskms"
	"github.com/credmatrix/credmatrix/services/keyguard/grpcapi"
	"github.com/credmatrix/credmatrix/services/keyguard/keyguardmetrics"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"
	"github.com/credmatrix/credmatrix/services/keyguard/oidcauth"
	"github.com/credmatrix/credmatrix/services/keyguard/postgres"
	"github.com/credmatrix/credmatrix/services/keyguard/sqlite"
	"github.com/hashicorp/go-hclog"
	"gopkg.in/yaml.v3"
)

// LocalConfig configures the local KEK backend.
type LocalConfig struct {
	KeystoreFile string `cfg:"keystore_file" help:"keystore of the local backend (created when missing)"`
	RootKeyFile  string `cfg:"root_key_file" help:"file holding the 32-byte hex root key that seals the keystore"`
}

// AWSKMSConfig configures the awskms backend. Each ring's key versions
// (the KMS key ARNs) are kept in the state store, authenticated with the
// MAC key.
type AWSKMSConfig struct {
	MACKeyFile string `cfg:"mac_key_file" help:"file holding the 32-byte hex key that authenticates the key version records in the state store (the same for every replica)"`
	Endpoint   string `cfg:"endpoint" help:"KMS endpoint URL override (local-kms in tests); empty means the AWS endpoint of each ring's region"`
}

// StateConfig configures the state store: grants created through the API,
// ring state, usage counts and (backend awskms) key versions.
type StateConfig struct {
	Driver          string `cfg:"driver" help:"state store: sqlite (one keyguard process) or postgres (shared by replicas)"`
	SQLitePath      string `cfg:"sqlite_path" help:"SQLite file of the state (driver sqlite; created when missing)"`
	PostgresDSN     string `cfg:"postgres_dsn" help:"PostgreSQL connection string (driver postgres); prefer postgres_dsn_file or the environment variable, a DSN may hold a password"`
	PostgresDSNFile string `cfg:"postgres_dsn_file" help:"file holding the PostgreSQL connection string (driver postgres), e.g. a mounted Secret"`
}

// OIDCConfig configures OIDC bearer-token callers.
type OIDCConfig struct {
	Issuers  []string `cfg:"issuers" help:"issuer URLs whose tokens identify callers as <issuer>#<sub> (empty: certificates only)"`
	Audience string   `cfg:"audience" help:"audience (aud) the tokens must carry"`
}

// Config is the whole configuration of keyguard.
type Config struct {
	Server           grpcserver.Config       `cfg:"server"`
	Public           grpcserver.PublicConfig `cfg:"public"`
	Audit            grpcclient.Config       `cfg:"audit"`
	AuditHMACKeyFile string                  `cfg:"audit_hmac_key_file" help:"file holding the 32-byte hex key of the HMACs that stand for secret-shaped values callers put in audit events (it may be the broker's key)"`
	AuditZones       []string                `cfg:"audit_zones" help:"zone=target entries: the audit log of each data-residency zone (own store, checkpoint key and origin); an operation on a ring of a zone is recorded in that zone's log only (audit's TLS settings apply), events about no single zone at audit.target. Empty: every event at audit.target"`
	ResidencyZones   []string                `cfg:"residency_zones" help:"zone=region entries (the region may be a pattern, e.g. eu=eu-*): the residency zone of each ring's region, which decides the audit log of its events; a region no entry matches has no zone"`
	AuditBatch       auditappend.Config      `cfg:"audit_batch"`
	KeyringFile      string                  `cfg:"keyring_file" help:"YAML file of key rings (data class x region, rotation policy) and static grants"`
	State            StateConfig             `cfg:"state"`
	Admins           []string                `cfg:"admins" help:"principals (certificate URI SANs) allowed RotateKey, SetMinDecryptVersion and the grant RPCs"`
	RotationCheck    time.Duration           `cfg:"rotation_check" help:"how often rings are checked for rotation by age and usage counters are saved"`
	Backend          string                  `cfg:"backend" help:"KEK backend: local or awskms"`
	Local            LocalConfig             `cfg:"local"`
	AWSKMS           AWSKMSConfig            `cfg:"awskms"`
	OIDC             OIDCConfig              `cfg:"oidc"`
	LogLevel         string                  `cfg:"log_level" help:"trace, debug, info, warn or error"`
	Metrics          metrics.Config          `cfg:"metrics"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	c := Config{Server: grpcserver.DefaultConfig(), Backend: "local", LogLevel: "info", RotationCheck: time.Minute, State: StateConfig{Driver: "sqlite"}, AuditBatch: auditappend.DefaultConfig()}
	c.Server.ListenAddr = "127.0.0.1:7402"
	c.Audit.Target = "127.0.0.1:7403"
	c.Audit.HealthService = auditappend.AppendHealthService
	return c
}

// Validate checks the fields keyguard adds; nested configs validate
// themselves.
func (c Config) Validate() error {
	var errs []error
	req := func(field, val, msg string) {
		if val == "" {
			errs = append(errs, &config.FieldError{Field: field, Msg: msg})
		}
	}
	req("keyring_file", c.KeyringFile, "required: the key rings and grants")
	switch c.State.Driver {
	case "sqlite":
		req("state.sqlite_path", c.State.SQLitePath, "required with state.driver sqlite")
	case "postgres":
		if (c.State.PostgresDSN == "") == (c.State.PostgresDSNFile == "") {
			errs = append(errs, &config.FieldError{Field: "state.postgres_dsn", Msg: "give state.postgres_dsn or state.postgres_dsn_file (exactly one) with state.driver postgres"})
		}
	default:
		errs = append(errs, &config.FieldError{Field: "state.driver", Msg: fmt.Sprintf("unknown driver %q (want sqlite or postgres)", c.State.Driver)})
	}
	req("audit.target", c.Audit.Target, "required: keyguard records every operation before returning its result")
	req("audit_hmac_key_file", c.AuditHMACKeyFile, "required: secret-shaped values callers send are recorded only as HMACs")
	if c.RotationCheck < time.Second {
		errs = append(errs, &config.FieldError{Field: "rotation_check", Msg: "must be at least 1s"})
	}
	// Admins are certificate identities only: an administrative RPC needs
	// mutual TLS, never a bearer token.
	for i, a := range c.Admins {
		if err := grpcserver.CheckSPIFFEID(a); err != nil {
			errs = append(errs, &config.FieldError{Field: fmt.Sprintf("admins[%d]", i), Msg: "not a SPIFFE ID: " + err.Error()})
		}
	}
	if len(c.OIDC.Issuers) > 0 {
		req("oidc.audience", c.OIDC.Audience, "required with oidc.issuers")
	}
	if c.Public.Enabled() && len(c.OIDC.Issuers) == 0 {
		errs = append(errs, &config.FieldError{Field: "public.listen_addr", Msg: "needs oidc.issuers: on the public listener a bearer token is the only credential"})
	}
	errs = append(errs, metrics.CheckSeparate(c.Metrics.ListenAddr, c.Server.ListenAddr))
	switch c.Backend {
	case "local":
		req("local.keystore_file", c.Local.KeystoreFile, "required with backend local")
		req("local.root_key_file", c.Local.RootKeyFile, "required with backend local")
	case "awskms":
		req("awskms.mac_key_file", c.AWSKMS.MACKeyFile, "required with backend awskms: it authenticates the key version records")
	default:
		errs = append(errs, &config.FieldError{Field: "backend", Msg: fmt.Sprintf("unknown backend %q (want local or awskms)", c.Backend)})
	}
	return errors.Join(errs...)
}

// keyringFile is the YAML document of rings and grants.
type keyringFile struct {
	Rings []struct {
		DataClass         string        `yaml:"data_class"`
		Region            string        `yaml:"region"`
		RotationPeriod    time.Duration `yaml:"rotation_period"`
		MaxEncryptions    uint64        `yaml:"max_encryptions"`
		MinDecryptVersion uint32        `yaml:"min_decrypt_version"`
		KMSKey            string        `yaml:"kms_key"`
	} `yaml:"rings"`
	Grants []struct {
		ID              string            `yaml:"id"`
		Principal       string            `yaml:"principal"`
		DataClass       string            `yaml:"data_class"`
		Operations      []string          `yaml:"operations"`
		Regions         []string          `yaml:"regions"`
		RequiredContext map[string]string `yaml:"required_context"`
		ExpireTime      time.Time         `yaml:"expire_time"`
	} `yaml:"grants"`
}

// Keyrings is the content of the keyring file.
type Keyrings struct {
	// Rings are the configured rings.
	Rings []keyguard.Ring
	// Policies are their rotation and retirement policies.
	Policies []keyguard.RingPolicy
	// Grants are the static grants.
	Grants []keyguard.Grant
	// KMSKeys are the KMS key ids (or aliases) of the rings, for the
	// awskms backend.
	KMSKeys map[keyguard.Ring]string
}

// LoadKeyrings reads the rings and grants file. Unknown fields and
// operations are errors naming the file and field; the domain validates the
// values.
func LoadKeyrings(path string) (Keyrings, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Keyrings{}, fmt.Errorf("keyring file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f keyringFile
	if err := dec.Decode(&f); err != nil {
		return Keyrings{}, fmt.Errorf("keyring file %s: %w", path, err)
	}
	k := Keyrings{KMSKeys: map[keyguard.Ring]string{}}
	for _, r := range f.Rings {
		ring := keyguard.Ring{DataClass: r.DataClass, Region: r.Region}
		k.Rings = append(k.Rings, ring)
		if r.KMSKey != "" {
			k.KMSKeys[ring] = r.KMSKey
		}
		k.Policies = append(k.Policies, keyguard.RingPolicy{Ring: ring, RotationPeriod: r.RotationPeriod, MaxEncryptions: r.MaxEncryptions, MinDecryptVersion: r.MinDecryptVersion})
	}
	for i, g := range f.Grants {
		kg := keyguard.Grant{ID: g.ID, Principal: g.Principal, DataClass: g.DataClass, Regions: g.Regions, RequiredContext: g.RequiredContext, ExpireTime: g.ExpireTime}
		for j, op := range g.Operations {
			o, ok := keyguard.ParseOperation(op)
			if !ok {
				return Keyrings{}, fmt.Errorf("keyring file %s: grants[%d].operations[%d]: unknown operation %q (want encrypt, decrypt, generate-data-key, rewrap or describe)", path, i, j, op)
			}
			kg.Operations = append(kg.Operations, o)
		}
		k.Grants = append(k.Grants, kg)
	}
	return k, nil
}

// PublicMethods are the RPCs the public listener serves: the data-plane
// operations, whose caller is identified by its bearer OIDC token and
// authorised by grants. Rotation, the grant RPCs and SetMinDecryptVersion
// are administrative and need mutual TLS on the service port.
var PublicMethods = []string{
	keyguardv1.KeyguardService_Encrypt_FullMethodName,
	keyguardv1.KeyguardService_Decrypt_FullMethodName,
	keyguardv1.KeyguardService_BatchEncrypt_FullMethodName,
	keyguardv1.KeyguardService_BatchDecrypt_FullMethodName,
	keyguardv1.KeyguardService_GenerateDataKey_FullMethodName,
	keyguardv1.KeyguardService_Rewrap_FullMethodName,
	keyguardv1.KeyguardService_DescribeKeyRing_FullMethodName,
}

// Server is a running keyguard.
type Server struct {
	grpc     *grpcserver.Server
	metrics  *metrics.Server       // nil when metrics are off
	audit    func() error          // closes the audit connections
	appender *auditappend.Appender // the global log's
	zones    *auditappend.Zones
	svc      *keyguard.Service
	store    stateStore
	log      hclog.Logger
	period   time.Duration
	// staticPending: the static grants are not in the audit log yet
	// (audit was unreachable at start); Serve keeps trying.
	staticPending bool
}

// staticRecordTimeout bounds the attempt at start-up to record the static
// grants; after it, Serve keeps trying in the background.
const staticRecordTimeout = 5 * time.Second

// stateStore is a keyguard.Store the server can close; the postgres one
// also follows other replicas' changes.
type stateStore interface {
	keyguard.Store
	Close() error
}

// follower is a store that announces changes made by other replicas.
type follower interface {
	Follow(ctx context.Context, changed func(), onError func(error))
}

// openStore is the one place a state store is chosen.
func openStore(ctx context.Context, cfg StateConfig) (stateStore, error) {
	switch cfg.Driver {
	case "postgres":
		dsn := cfg.PostgresDSN
		if cfg.PostgresDSNFile != "" {
			b, err := os.ReadFile(cfg.PostgresDSNFile)
			if err != nil {
				return nil, fmt.Errorf("state.postgres_dsn_file: %w", err)
			}
			dsn = strings.TrimSpace(string(b))
		}
		s, err := postgres.Open(ctx, dsn)
		if err != nil {
			return nil, fmt.Errorf("state (postgres): %w", err)
		}
		return s, nil
	default:
		s, err := sqlite.Open(ctx, cfg.SQLitePath)
		if err != nil {
			return nil, fmt.Errorf("state.sqlite_path: %w", err)
		}
		return s, nil
	}
}

// New opens the backend and the state store, ensures every configured ring
// exists, connects to audit and starts listening.
func New(ctx context.Context, cfg Config, log hclog.Logger, opts ...grpcserver.Option) (*Server, error) {
	if err := errors.Join(cfg.Validate(), cfg.Server.Validate(), cfg.Audit.Validate(), cfg.AuditBatch.Validate(), cfg.Metrics.Validate()); err != nil {
		return nil, err
	}
	k, err := LoadKeyrings(cfg.KeyringFile)
	if err != nil {
		return nil, err
	}
	hmacKey, err := keyfile.Read(cfg.AuditHMACKeyFile, auditevent.MinKeyBytes)
	if err != nil {
		return nil, fmt.Errorf("audit_hmac_key_file: %w", err)
	}
	hasher, err := auditevent.NewHasher(hmacKey)
	clear(hmacKey)
	if err != nil {
		return nil, fmt.Errorf("audit_hmac_key_file: %w", err)
	}
	store, err := openStore(ctx, cfg.State)
	if err != nil {
		return nil, err
	}
	backend, backendID, err := openBackend(ctx, cfg, k, store)
	if err != nil {
		store.Close()
		return nil, err
	}
	zoneTargets, err := auditappend.ParseZoneTargets(cfg.AuditZones)
	if err != nil {
		store.Close()
		return nil, err
	}
	zoneOf, err := parseResidencyZones(cfg.ResidencyZones)
	if err != nil {
		store.Close()
		return nil, err
	}
	zones, appender, closeAudit, err := auditappend.DialZones(cfg.Audit, zoneTargets, auditappend.WithConfig(cfg.AuditBatch))
	if err != nil {
		store.Close()
		return nil, err
	}
	if len(zoneTargets) > 0 {
		for _, r := range k.Rings {
			if z := zoneOf(r.Region); z != "" && zoneTargets[z] == "" {
				log.Warn("a key ring's residency zone has no audit log: its operations will fail (audit unavailable) until audit_zones names one", "ring", r.String(), "zone", z)
			}
		}
	}
	var auditor keyguard.Auditor = zones
	var metricsSrv *metrics.Server
	fail := func(err error) (*Server, error) {
		metricsSrv.Close()
		closeAudit()
		store.Close()
		return nil, err
	}
	if cfg.Metrics.Enabled() {
		reg := metrics.NewRegistry()
		m := keyguardmetrics.New(reg, k.Rings)
		backend, auditor = m.Backend(cfg.Backend, backend), m.Auditor(auditor)
		opts = append([]grpcserver.Option{grpcserver.WithMetrics(reg)}, opts...)
		if metricsSrv, err = metrics.Listen(cfg.Metrics, reg, log); err != nil {
			return fail(err)
		}
	}
	svc, err := keyguard.New(ctx, keyguard.Config{
		Backend: backend, BackendName: cfg.Backend, ZoneOf: zoneOf, Auditor: auditor, Hasher: hasher, Store: store,
		Rings: k.Rings, RingPolicies: k.Policies, Grants: k.Grants, Admins: cfg.Admins,
	})
	if err != nil {
		return fail(fmt.Errorf("keyring file %s: %w", cfg.KeyringFile, err))
	}
	gs, err := grpcserver.New(cfg.Server, log, append(opts, grpcserver.WithPublic(cfg.Public, PublicMethods...))...)
	if err != nil {
		return fail(err)
	}
	apiOpts := []grpcapi.Option{grpcapi.WithIdentity(grpcserver.PeerIdentity), grpcapi.WithLogger(log)}
	if len(cfg.OIDC.Issuers) > 0 {
		v, err := oidcauth.New(cfg.OIDC.Issuers, cfg.OIDC.Audience)
		if err != nil {
			gs.Stop()
			return fail(fmt.Errorf("oidc: %w", err))
		}
		apiOpts = append(apiOpts, grpcapi.WithBearer(v.Verify))
	}
	keyguardv1.RegisterKeyguardServiceServer(gs, grpcapi.New(svc, apiOpts...))
	log.Info("key rings ready", "rings", len(k.Rings), "grants", len(k.Grants), "backend", cfg.Backend, "backend_id", backendID, "state", cfg.State.Driver, "state_version", svc.StateVersion())
	// The static grants go into the audit log, so a replay of the log
	// knows what was in force; no API call ever records them.
	rctx, cancel := context.WithTimeout(ctx, staticRecordTimeout)
	err = svc.RecordStaticGrants(rctx)
	cancel()
	if err != nil {
		log.Warn("static grants not recorded in the audit log yet; retrying in the background", "error", err)
	}
	return &Server{grpc: gs, metrics: metricsSrv, audit: closeAudit, appender: appender, zones: zones, svc: svc, store: store, log: log, period: cfg.RotationCheck, staticPending: err != nil}, nil
}

// openBackend opens the configured KEK backend and makes sure every ring
// has a key. backendID identifies it in the log (never secret).
func openBackend(ctx context.Context, cfg Config, k Keyrings, store keyguard.Store) (keyguard.KeyBackend, string, error) {
	switch cfg.Backend {
	case "awskms":
		var rks []awskms.RingKey
		clients := map[string]awskms.KMS{}
		for _, r := range k.Rings {
			id := k.KMSKeys[r]
			if id == "" {
				return nil, "", fmt.Errorf("keyring file %s: ring %s: kms_key required with backend awskms", cfg.KeyringFile, r)
			}
			rks = append(rks, awskms.RingKey{Ring: r, KeyID: id})
			if clients[r.Region] != nil {
				continue
			}
			awsCfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(r.Region))
			if err != nil {
				return nil, "", fmt.Errorf("awskms: AWS configuration for %s: %w", r.Region, err)
			}
			clients[r.Region] = kms.NewFromConfig(awsCfg, func(o *kms.Options) {
				if cfg.AWSKMS.Endpoint != "" {
					o.BaseEndpoint = &cfg.AWSKMS.Endpoint
				}
			})
		}
		macKey, err := keyfile.Read(cfg.AWSKMS.MACKeyFile, awskms.MACKeySize)
		if err != nil {
			return nil, "", fmt.Errorf("awskms.mac_key_file: %w", err)
		}
		b, err := awskms.Open(ctx, store, macKey, rks, clients)
		clear(macKey)
		if err != nil {
			return nil, "", fmt.Errorf("awskms: %w", err)
		}
		return b, "awskms, versions in the " + cfg.State.Driver + " state store", nil
	default:
		rootKey, err := keyfile.Read(cfg.Local.RootKeyFile, localkms.RootKeySize)
		if err != nil {
			return nil, "", fmt.Errorf("local.root_key_file: %w", err)
		}
		b, err := localkms.Open(cfg.Local.KeystoreFile, rootKey)
		clear(rootKey)
		if err != nil {
			return nil, "", fmt.Errorf("local.keystore_file: %w", err)
		}
		for _, r := range k.Rings {
			if err := b.EnsureRing(ctx, r.DataClass, r.Region); err != nil {
				return nil, "", fmt.Errorf("key ring %s: %w", r, err)
			}
		}
		return b, "root key " + b.RootKeyID(), nil
	}
}

// Addr is where keyguard listens for mTLS callers.
func (s *Server) Addr() net.Addr { return s.grpc.Addr() }

// AuditAppender is keyguard's audit appender, for in-process observers
// (tests that hold the audit service and wait for events to queue).
func (s *Server) AuditAppender() *auditappend.Appender { return s.appender }

// PublicAddr is where the public listener listens, or nil without one.
func (s *Server) PublicAddr() net.Addr { return s.grpc.PublicAddr() }

// MetricsAddr is where the Prometheus endpoint listens, or nil when
// metrics are off.
func (s *Server) MetricsAddr() net.Addr { return s.metrics.Addr() }

// Serve answers until ctx is cancelled, then drains. Beside the gRPC
// server it runs the rotation loop: rings due by age or usage are rotated,
// and usage counters saved, every rotation_check and whenever a ring
// reaches its usage limit; with the postgres store it also follows the
// other replicas' changes.
func (s *Server) Serve(ctx context.Context) error {
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.rotationLoop(loopCtx)
	}()
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		if f, ok := s.store.(follower); ok {
			pgnotify.Refresh(loopCtx, f.Follow, s.svc.Refresh, s.log)
		}
	}()
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		if s.staticPending {
			s.recordStaticGrants(loopCtx)
		}
	}()
	merr := make(chan error, 1)
	go func() { merr <- s.metrics.Serve(loopCtx) }()
	err := s.grpc.Serve(ctx)
	cancel()
	<-done
	<-followed
	<-recorded
	err = errors.Join(err, <-merr)
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelFlush()
	// Events of callers that went away are recorded before the
	// connection closes.
	return errors.Join(err, s.svc.Flush(flushCtx), s.zones.Close(flushCtx), s.audit(), s.store.Close())
}

// recordStaticGrants retries recording the static grants, with backoff,
// until it succeeds or ctx ends.
func (s *Server) recordStaticGrants(ctx context.Context) {
	wait := time.Second
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, staticRecordTimeout)
		err := s.svc.RecordStaticGrants(rctx)
		cancel()
		if err == nil {
			s.log.Info("static grants recorded in the audit log")
			return
		}
		s.log.Warn("static grants not recorded in the audit log yet", "error", err, "retry_in", wait)
		wait = min(2*wait, 30*time.Second)
	}
}

func (s *Server) rotationLoop(ctx context.Context) {
	t := time.NewTicker(s.period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.svc.RotationKick():
		}
		refs, err := s.svc.RotateDue(ctx)
		for _, r := range refs {
			s.log.Info("key ring rotated", "data_class", r.DataClass, "region", r.Region, "version", r.Version)
		}
		if err != nil {
			s.log.Error("automatic rotation failed", "error", err)
		}
		if err := s.svc.Flush(ctx); err != nil {
			s.log.Error("saving ring state failed", "error", err)
		}
	}
}

// Stop stops at once.
func (s *Server) Stop() {
	s.grpc.Stop()
	s.metrics.Close()
	s.audit()
	s.store.Close()
}

// parseResidencyZones reads residency_zones ("zone=region-pattern"
// entries, a zone may have several) into the function that names a
// region's zone: the first entry that matches.
func parseResidencyZones(entries []string) (func(region string) string, error) {
	type entry struct{ zone, pattern string }
	var es []entry
	for i, e := range entries {
		zone, pattern, ok := strings.Cut(e, "=")
		if !ok || pattern == "" {
			return nil, &config.FieldError{Field: fmt.Sprintf("residency_zones[%d]", i), Msg: fmt.Sprintf("%q: want zone=region (a pattern such as eu-* allowed)", e)}
		}
		if !auditevent.ValidZone(zone) {
			return nil, &config.FieldError{Field: fmt.Sprintf("residency_zones[%d]", i), Msg: fmt.Sprintf("%q is not a zone name", zone)}
		}
		if _, err := path.Match(pattern, ""); err != nil {
			return nil, &config.FieldError{Field: fmt.Sprintf("residency_zones[%d]", i), Msg: fmt.Sprintf("bad region pattern %q", pattern)}
		}
		es = append(es, entry{zone, pattern})
	}
	return func(region string) string {
		for _, e := range es {
			if ok, _ := path.Match(e.pattern, region); ok {
				return e.zone
			}
		}
		return ""
	}, nil
}
