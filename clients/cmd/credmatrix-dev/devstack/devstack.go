// Package devstack runs the whole credmatrix stack in one process on
// loopback with embedded defaults: a generated development CA and mTLS
// certificates, a development OIDC issuer, and the audit, broker and
// keyguard services. `credmatrix dev`, `make demo` and the end-to-end tests
// use it. Nothing in it is meant for production: the issuer mints any token
// its mint secret asks for.
package devstack

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/credmatrix/credmatrix/platform/auditappend"
	"github.com/credmatrix/credmatrix/platform/devpki"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/keyfile"
	"github.com/credmatrix/credmatrix/platform/logging"
	auditserver "github.com/credmatrix/credmatrix/services/audit/server"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	brokerserver "github.com/credmatrix/credmatrix/services/broker/server"
	keyguardserver "github.com/credmatrix/credmatrix/services/keyguard/server"
	"github.com/hashicorp/go-hclog"
)

//go:embed policy.yaml
var defaultPolicy string

//go:embed keyguard.yaml
var defaultKeyguard string

// DefaultPolicy returns the local stack's sample trust policy with its
// issuer set to issuerURL, for tests that run the services as processes.
func DefaultPolicy(issuerURL string) string {
	return renderPolicy(defaultPolicy, issuerURL)
}

// renderPolicy fills the issuer URL into a policy's values; comments keep
// the placeholder's name (they describe the template, not this file).
func renderPolicy(policy, issuerURL string) string {
	lines := strings.Split(policy, "\n")
	for i, l := range lines {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			lines[i] = strings.ReplaceAll(l, IssuerURLPlaceholder, issuerURL)
		}
	}
	return strings.Join(lines, "\n")
}

// DefaultKeyguardConfig returns the local stack's key rings and grants
// (keyguard's keyring file), for tests that run keyguard as a process.
func DefaultKeyguardConfig() string { return defaultKeyguard }

// KeyguardAudience is the audience keyguard requires of the dev issuer's
// bearer tokens: a token minted for the broker is refused by keyguard.
const KeyguardAudience = "credmatrix-keyguard"

// IssuerURLPlaceholder in a policy is replaced by the dev issuer's URL.
const IssuerURLPlaceholder = "${DEV_ISSUER_URL}"

// MintPath is the dev issuer's token endpoint (POST a MintRequest with the
// mint secret as bearer token).
const MintPath = "/dev/mint"

// Ports are the listen addresses of the stack's parts. The *Public
// addresses are the broker's and keyguard's public listeners (TLS without
// client certificates, the token as the credential; empty: off); the
// *Metrics addresses are the services' Prometheus endpoints (empty: off).
type Ports struct {
	Audit, Broker, Keyguard, Issuer              string
	BrokerPublic, KeyguardPublic                 string
	AuditMetrics, BrokerMetrics, KeyguardMetrics string
}

// DefaultPorts are the fixed loopback ports of `credmatrix-dev`.
func DefaultPorts() Ports {
	return Ports{
		Broker: "127.0.0.1:7401", Keyguard: "127.0.0.1:7402", Audit: "127.0.0.1:7403", Issuer: "127.0.0.1:7404",
		BrokerPublic: "127.0.0.1:7405", KeyguardPublic: "127.0.0.1:7406",
		BrokerMetrics: "127.0.0.1:7411", KeyguardMetrics: "127.0.0.1:7412", AuditMetrics: "127.0.0.1:7413",
	}
}

// EphemeralPorts lets the kernel pick free loopback ports.
func EphemeralPorts() Ports {
	return Ports{
		Broker: "127.0.0.1:0", Keyguard: "127.0.0.1:0", Audit: "127.0.0.1:0", Issuer: "127.0.0.1:0",
		BrokerPublic: "127.0.0.1:0", KeyguardPublic: "127.0.0.1:0",
		BrokerMetrics: "127.0.0.1:0", KeyguardMetrics: "127.0.0.1:0", AuditMetrics: "127.0.0.1:0",
	}
}

// Config configures a stack.
type Config struct {
	// StateDir holds certificates, keys, the audit database and the key
	// store. Created when missing. Keys and data persist across restarts;
	// certificates are made anew each start.
	StateDir string
	// Ports are the listen addresses.
	Ports Ports
	// Log receives every service's JSON log lines (io.Discard if nil).
	Log io.Writer
	// LogLevel of the services ("info" if empty).
	LogLevel string
	// Policy is the broker's trust policy YAML; empty means the embedded
	// development policy.
	Policy string
	// AuditOptions are extra server options of the audit service (tests
	// use an interceptor to hold appends so batches provably form).
	AuditOptions []grpcserver.Option
	// AuditBatch, when set, tunes the audit appenders of the broker and
	// keyguard instead of their defaults.
	AuditBatch *auditappend.Config
	// Zones, when set, give each data-residency zone an audit log of its
	// own (own database, checkpoint key and origin) beside the global one;
	// the broker and keyguard send each event to its zone's log.
	Zones []Zone
}

// Zone is one data-residency zone of the stack.
type Zone struct {
	// Name is the zone, as the trust policy's accounts name it ("eu").
	Name string
	// Regions are keyguard's region patterns of the zone ("eu-*").
	Regions []string
}

// Stack is a running local stack.
type Stack struct {
	pki       *devpki.Bundle
	issuer    *devissuer.Issuer
	httpSrv   *http.Server
	issuerURL string
	mintFile  string

	auditPublicKeyFile string // verifier key of the audit checkpoints
	hmacKeyFile        string // the audit HMAC key of broker and keyguard

	audit    *auditserver.Server
	zones    map[string]*auditserver.Server // by zone
	zoneKeys map[string]string              // verifier key file of each zone's checkpoints
	broker   *brokerserver.Server
	keyguard *keyguardserver.Server

	lock *stateLock // held on the state directory while the stack runs

	wg    sync.WaitGroup
	mu    sync.Mutex
	errs  []error
	stops map[string]context.CancelFunc
	dones map[string]chan struct{}
}

// Start brings up the stack; every service is serving when it returns.
//
// It touches nothing in the state directory until it holds the directory's
// lock (another stack using it is an *InUseError) and has checked that every
// fixed port is free, so a failed start leaves a running stack's
// certificates and keys as they were. A failed start stops whatever it
// started.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	if cfg.StateDir == "" {
		return nil, errors.New("devstack: StateDir is required")
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	if cfg.Policy == "" {
		cfg.Policy = defaultPolicy
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devstack: state dir: %w", err)
	}
	s := &Stack{stops: map[string]context.CancelFunc{}, dones: map[string]chan struct{}{}}
	if s.lock, err = lockStateDir(dir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := checkPorts(cfg.Ports); err != nil {
		return nil, err
	}

	s.pki, err = devpki.Generate(filepath.Join(dir, "pki"), "audit", "broker", "keyguard", "cli")
	if err != nil {
		return nil, fmt.Errorf("devstack: dev PKI: %w", err)
	}
	if err := s.startIssuer(cfg.Ports.Issuer, filepath.Join(dir, "mint-secret")); err != nil {
		return nil, err
	}
	s.hmacKeyFile = filepath.Join(dir, "audit-hmac.key")
	if err := PrepareFiles(dir, cfg.Policy, s.issuerURL); err != nil {
		return nil, err
	}
	logger := func(name string) hclog.Logger { return logging.New(cfg.Log, name, cfg.LogLevel) }
	cfgs := NewConfigs(dir, s.pki, cfg.Ports, s.issuerURL, "")
	s.auditPublicKeyFile = cfgs.Audit.Checkpoint.KeyFile + ".pub"
	if cfg.AuditBatch != nil {
		cfgs.Broker.AuditBatch, cfgs.Keyguard.AuditBatch = *cfg.AuditBatch, *cfg.AuditBatch
	}

	// audit first: the others refuse to issue without it.
	if s.audit, err = auditserver.New(ctx, cfgs.Audit, logger("audit"), cfg.AuditOptions...); err != nil {
		return nil, fmt.Errorf("devstack: audit: %w", err)
	}
	s.serve("audit", s.audit.Serve)
	auditAddr := s.audit.Addr().String()
	cfgs.Broker.Audit.Target, cfgs.Keyguard.Audit.Target = auditAddr, auditAddr

	// One more audit service per zone, keeping that zone's events only.
	s.zones, s.zoneKeys = map[string]*auditserver.Server{}, map[string]string{}
	for _, z := range cfg.Zones {
		zc := ZoneAuditConfig(cfgs.Audit, dir, z.Name)
		srv, err := auditserver.New(ctx, zc, logger("audit-"+z.Name), cfg.AuditOptions...)
		if err != nil {
			return nil, fmt.Errorf("devstack: audit of zone %s: %w", z.Name, err)
		}
		s.zones[z.Name], s.zoneKeys[z.Name] = srv, zc.Checkpoint.KeyFile+".pub"
		s.serve("audit-"+z.Name, srv.Serve)
		cfgs.Broker.AuditZones = append(cfgs.Broker.AuditZones, z.Name+"="+srv.Addr().String())
		for _, r := range z.Regions {
			cfgs.Keyguard.ResidencyZones = append(cfgs.Keyguard.ResidencyZones, z.Name+"="+r)
		}
	}
	cfgs.Keyguard.AuditZones = cfgs.Broker.AuditZones

	if s.broker, err = brokerserver.New(ctx, cfgs.Broker, logger("broker")); err != nil {
		return nil, fmt.Errorf("devstack: broker: %w", err)
	}
	s.serve("broker", s.broker.Serve)

	if s.keyguard, err = keyguardserver.New(ctx, cfgs.Keyguard, logger("keyguard")); err != nil {
		return nil, fmt.Errorf("devstack: keyguard: %w", err)
	}
	s.serve("keyguard", s.keyguard.Serve)
	return s, nil
}

// PrepareFiles writes into the state directory dir what the services read
// besides the PKI: the keys (made once, kept across restarts), the trust
// policy (policy with its issuer set to issuerURL; the embedded
// development policy when empty) and keyguard's rings and grants.
func PrepareFiles(dir, policy, issuerURL string) error {
	if policy == "" {
		policy = defaultPolicy
	}
	for _, name := range []string{"audit-hmac.key", "local-sts.key", "keyguard-root.key"} {
		if _, err := keyfile.Ensure(filepath.Join(dir, name), 32); err != nil {
			return fmt.Errorf("devstack: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(renderPolicy(policy, issuerURL)), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "keyguard.yaml"), []byte(defaultKeyguard), 0o600)
}

// Configs are the configurations of the stack's three services.
type Configs struct {
	Audit    auditserver.Config
	Broker   brokerserver.Config
	Keyguard keyguardserver.Config
}

// NewConfigs returns the services' configurations for a state directory
// prepared by PrepareFiles, the PKI in it, the listen addresses in ports,
// the dev issuer at issuerURL, and audit reached at auditTarget. Start runs
// them in this process; the same configurations run the real binaries as
// separate processes (see package procstack), so both measure and test one
// stack.
func NewConfigs(dir string, pki *devpki.Bundle, ports Ports, issuerURL, auditTarget string) Configs {
	hmacKey := filepath.Join(dir, "audit-hmac.key")
	publicConfig := func(addr, name string) grpcserver.PublicConfig {
		if addr == "" {
			return grpcserver.PublicConfig{}
		}
		f := pki.Files(name)
		return grpcserver.PublicConfig{ListenAddr: addr, TLS: grpcserver.PublicTLSFiles{CertFile: f.CertFile, KeyFile: f.KeyFile}}
	}

	ac := auditserver.DefaultConfig()
	ac.Server.ListenAddr = ports.Audit
	ac.Metrics.ListenAddr = ports.AuditMetrics
	ac.Server.TLS = pki.Files("audit")
	ac.DBPath = filepath.Join(dir, "audit.db")
	// The checkpoint signing key is generated on first start and kept;
	// its public half (audit-checkpoint.key.pub) is what verify trusts.
	ac.Checkpoint.KeyFile = filepath.Join(dir, "audit-checkpoint.key")
	ac.Checkpoint.GenerateKey = true
	ac.AppendPrincipals = []string{devpki.SPIFFEID("broker"), devpki.SPIFFEID("keyguard")}
	ac.ReadPrincipals = []string{devpki.SPIFFEID("cli")}

	bc := brokerserver.DefaultConfig()
	bc.Server.ListenAddr = ports.Broker
	bc.Metrics.ListenAddr = ports.BrokerMetrics
	bc.Server.TLS = pki.Files("broker")
	bc.Public = publicConfig(ports.BrokerPublic, "broker")
	bc.PolicyFile = filepath.Join(dir, "policy.yaml")
	bc.Audit = pki.Client("broker", auditTarget)
	bc.AuditHMACKeyFile = hmacKey
	bc.LocalSTS.SigningKeyFile = filepath.Join(dir, "local-sts.key")
	bc.State.SQLitePath = filepath.Join(dir, "broker-state.db")
	bc.AdminPrincipals = []string{devpki.SPIFFEID("cli")}

	kc := keyguardserver.DefaultConfig()
	kc.Server.ListenAddr = ports.Keyguard
	kc.Metrics.ListenAddr = ports.KeyguardMetrics
	kc.Server.TLS = pki.Files("keyguard")
	kc.Public = publicConfig(ports.KeyguardPublic, "keyguard")
	kc.Audit = pki.Client("keyguard", auditTarget)
	kc.AuditHMACKeyFile = hmacKey // one key for the stack: investigators recompute every ref with it
	kc.KeyringFile = filepath.Join(dir, "keyguard.yaml")
	kc.Local.KeystoreFile = filepath.Join(dir, "keyguard-keystore.json")
	kc.Local.RootKeyFile = filepath.Join(dir, "keyguard-root.key")
	kc.State.SQLitePath = filepath.Join(dir, "keyguard-state.db")
	kc.OIDC.Issuers = []string{issuerURL}
	kc.OIDC.Audience = KeyguardAudience
	kc.Admins = []string{devpki.SPIFFEID("cli")}
	return Configs{Audit: ac, Broker: bc, Keyguard: kc}
}

// ZoneAuditConfig is the configuration of the audit log of one residency
// zone beside the global log ac: its own database, checkpoint key (so its
// own origin) and listen address, refusing events of any other zone.
func ZoneAuditConfig(ac auditserver.Config, dir, zone string) auditserver.Config {
	zc := ac
	zc.Server.ListenAddr, zc.Metrics.ListenAddr = "127.0.0.1:0", ""
	zc.DBPath = filepath.Join(dir, "audit-"+zone+".db")
	zc.Checkpoint.KeyFile = filepath.Join(dir, "audit-checkpoint-"+zone+".key")
	zc.Checkpoint.KeptFile = ""
	zc.ResidencyZone = zone
	return zc
}

// serve runs one service until Close or Stop.
func (s *Stack) serve(name string, serve func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.mu.Lock()
	s.stops[name], s.dones[name] = cancel, done
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(done)
		if err := serve(ctx); err != nil {
			s.mu.Lock()
			s.errs = append(s.errs, fmt.Errorf("%s: %w", name, err))
			s.mu.Unlock()
		}
	}()
}

// StopAudit takes the audit service down at once (in-flight requests are
// cancelled) and leaves the others running: tests use it to check that the
// broker and keyguard fail closed.
func (s *Stack) StopAudit() {
	s.audit.Stop()
	s.mu.Lock()
	stop, done := s.stops["audit"], s.dones["audit"]
	s.mu.Unlock()
	stop()
	<-done
}

// StopZoneAudit takes the audit service of one zone down at once, leaving
// the others running: tests check that only that zone fails closed.
func (s *Stack) StopZoneAudit(zone string) {
	s.zones[zone].Stop()
	s.mu.Lock()
	stop, done := s.stops["audit-"+zone], s.dones["audit-"+zone]
	s.mu.Unlock()
	stop()
	<-done
}

// ZoneAuditAddrs returns the listen address of each zone's audit service.
func (s *Stack) ZoneAuditAddrs() map[string]string {
	out := map[string]string{}
	for z, srv := range s.zones {
		out[z] = srv.Addr().String()
	}
	return out
}

// ZoneAuditPublicKeyFiles returns the file of each zone's checkpoint
// verifier key.
func (s *Stack) ZoneAuditPublicKeyFiles() map[string]string { return maps.Clone(s.zoneKeys) }

// Addrs returns the services' listen addresses.
func (s *Stack) Addrs() (audit, broker, keyguard string) {
	return s.audit.Addr().String(), s.broker.Addr().String(), s.keyguard.Addr().String()
}

// PublicAddrs returns the broker's and keyguard's public listener
// addresses, "" for one that is off.
func (s *Stack) PublicAddrs() (broker, keyguard string) {
	str := func(a net.Addr) string {
		if a == nil {
			return ""
		}
		return a.String()
	}
	return str(s.broker.PublicAddr()), str(s.keyguard.PublicAddr())
}

// RunnerEnv returns NAME=value pairs that point the credmatrix CLI at the
// public listeners the way a CI runner is set up: addresses and the CA
// bundle only, no client certificate (the OIDC token is the credential).
func (s *Stack) RunnerEnv() []string {
	broker, keyguard := s.PublicAddrs()
	return []string{
		"CREDMATRIX_BROKER_ADDR=" + broker,
		"CREDMATRIX_KEYGUARD_ADDR=" + keyguard,
		"CREDMATRIX_CA_FILE=" + s.pki.CAFile,
	}
}

// MetricsURLs returns the services' Prometheus endpoints
// (http://host:port/metrics), "" for a service whose metrics are off.
func (s *Stack) MetricsURLs() (audit, broker, keyguard string) {
	url := func(a net.Addr) string {
		if a == nil {
			return ""
		}
		return "http://" + a.String() + "/metrics"
	}
	return url(s.audit.MetricsAddr()), url(s.broker.MetricsAddr()), url(s.keyguard.MetricsAddr())
}

// AuditAppenders returns the audit appenders of the broker and keyguard,
// for tests that watch events queue.
func (s *Stack) AuditAppenders() (broker, keyguard *auditappend.Appender) {
	return s.broker.AuditAppender(), s.keyguard.AuditAppender()
}

// AuditHMACKeyFile is the file of the audit HMAC key the broker and
// keyguard name secrets with.
func (s *Stack) AuditHMACKeyFile() string { return s.hmacKeyFile }

// IssuerURL is the dev OIDC issuer's URL.
func (s *Stack) IssuerURL() string { return s.issuerURL }

// Issuer is the dev OIDC issuer, for tests that mint tokens directly.
func (s *Stack) Issuer() *devissuer.Issuer { return s.issuer }

// PKI is the dev certificate bundle.
func (s *Stack) PKI() *devpki.Bundle { return s.pki }

// Env returns NAME=value pairs that point the credmatrix CLI at the stack
// with the "cli" certificate (an operator on the mTLS service ports), and
// the public listeners' addresses (see RunnerEnv).
func (s *Stack) Env() []string {
	audit, broker, keyguard := s.Addrs()
	brokerPublic, keyguardPublic := s.PublicAddrs()
	cli := s.pki.Client("cli", "")
	env := []string{
		"CREDMATRIX_BROKER_PUBLIC_ADDR=" + brokerPublic,
		"CREDMATRIX_KEYGUARD_PUBLIC_ADDR=" + keyguardPublic,
		"CREDMATRIX_BROKER_ADDR=" + broker,
		"CREDMATRIX_KEYGUARD_ADDR=" + keyguard,
		"CREDMATRIX_AUDIT_ADDR=" + audit,
		"CREDMATRIX_AUDIT_PUBLIC_KEY_FILE=" + s.auditPublicKeyFile,
		"CREDMATRIX_CA_FILE=" + cli.CAFile,
		"CREDMATRIX_CERT_FILE=" + cli.CertFile,
		"CREDMATRIX_KEY_FILE=" + cli.KeyFile,
		"CREDMATRIX_DEV_ISSUER=" + s.issuerURL,
		"CREDMATRIX_DEV_MINT_SECRET_FILE=" + s.mintFile,
	}
	am, bm, km := s.MetricsURLs()
	for _, e := range []struct{ name, url string }{
		{"CREDMATRIX_BROKER_METRICS_URL", bm}, {"CREDMATRIX_KEYGUARD_METRICS_URL", km}, {"CREDMATRIX_AUDIT_METRICS_URL", am},
	} {
		if e.url != "" {
			env = append(env, e.name+"="+e.url)
		}
	}
	// With zones, the audit commands read every zone's log too.
	if len(s.zones) > 0 {
		var addrs, keys []string
		for _, z := range slices.Sorted(maps.Keys(s.zones)) {
			addrs = append(addrs, z+"="+s.zones[z].Addr().String())
			keys = append(keys, z+"="+s.zoneKeys[z])
		}
		env = append(env, "CREDMATRIX_AUDIT_ZONES="+strings.Join(addrs, ","), "CREDMATRIX_AUDIT_ZONE_PUBLIC_KEY_FILES="+strings.Join(keys, ","))
	}
	return env
}

// WriteEnvFile writes Env as shell exports, atomically, so a reader that
// sees the file sees all of it.
func (s *Stack) WriteEnvFile(path string) error {
	var b strings.Builder
	b.WriteString("# credmatrix dev stack: source this file\n")
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "export %s=%s\n", k, strconv.Quote(v))
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Close stops every service (graceful drain) and the issuer, and releases
// the state directory. It is safe on a stack that failed to start.
func (s *Stack) Close() error {
	if s == nil {
		return nil
	}
	defer s.lock.release()
	// Reverse order: the callers of audit go first.
	names := []string{"keyguard", "broker", "audit"}
	for z := range s.zones {
		names = append(names, "audit-"+z)
	}
	for _, name := range names {
		s.mu.Lock()
		stop, done := s.stops[name], s.dones[name]
		s.mu.Unlock()
		if stop != nil {
			stop()
			<-done
		}
	}
	s.wg.Wait()
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.httpSrv.Shutdown(ctx)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

// MintRequest asks the dev issuer for a token with GitHub Actions-style
// claims. Empty fields take defaults.
type MintRequest struct {
	Repository string            `json:"repository"`
	Ref        string            `json:"ref"`
	EventName  string            `json:"event_name"`
	Subject    string            `json:"sub"`
	Audience   string            `json:"aud"`
	TTL        string            `json:"ttl"`
	Claims     map[string]string `json:"claims"`
}

// Claims turns the request into token claims.
func (r MintRequest) claimsMap(runID string) (map[string]any, time.Duration, error) {
	repo, ref, aud := r.Repository, r.Ref, r.Audience
	if repo == "" {
		repo = "acme/app"
	}
	if ref == "" {
		ref = "refs/heads/main"
	}
	if aud == "" {
		aud = "credmatrix"
	}
	ttl := 5 * time.Minute
	if r.TTL != "" {
		d, err := time.ParseDuration(r.TTL)
		if err != nil || d <= 0 || d > time.Hour {
			return nil, 0, fmt.Errorf("ttl %q: want a duration between 1s and 1h", r.TTL)
		}
		ttl = d
	}
	claims := devissuer.GitHubActionsClaims(repo, ref, runID, aud)
	if r.EventName != "" {
		claims["event_name"] = r.EventName
	}
	if r.Subject != "" {
		claims["sub"] = r.Subject
	}
	for k, v := range r.Claims {
		switch k {
		case "iss", "exp", "iat", "nbf":
			return nil, 0, fmt.Errorf("claim %q is set by the issuer", k)
		}
		claims[k] = v
	}
	return claims, ttl, nil
}

// startIssuer serves the dev OIDC issuer (discovery, JWKS) plus the mint
// endpoint, guarded by a random secret written to secretFile (0600).
func (s *Stack) startIssuer(addr, secretFile string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("devstack: issuer listen %s: %w", addr, err)
	}
	s.issuerURL = "http://" + lis.Addr().String()
	s.issuer, err = devissuer.New(devissuer.WithURL(s.issuerURL))
	if err != nil {
		lis.Close()
		return err
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		lis.Close()
		return err
	}
	secretHex := hex.EncodeToString(secret)
	if err := os.WriteFile(secretFile, []byte(secretHex+"\n"), 0o600); err != nil {
		lis.Close()
		return err
	}
	s.mintFile = secretFile
	mux := http.NewServeMux()
	mux.Handle("/", s.issuer.Handler())
	mux.HandleFunc("POST "+MintPath, func(w http.ResponseWriter, r *http.Request) {
		got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if subtle.ConstantTimeCompare([]byte(got), []byte(secretHex)) != 1 {
			http.Error(w, "mint secret required", http.StatusUnauthorized)
			return
		}
		var req MintRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
			http.Error(w, "bad mint request: "+err.Error(), http.StatusBadRequest)
			return
		}
		run := make([]byte, 4)
		_, _ = rand.Read(run)
		claims, ttl, err := req.claimsMap(strconv.FormatUint(uint64(run[0])<<24|uint64(run[1])<<16|uint64(run[2])<<8|uint64(run[3]), 10))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		tok, err := s.issuer.Mint(claims, ttl)
		if err != nil {
			http.Error(w, "mint failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, tok+"\n")
	})
	s.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go s.httpSrv.Serve(lis)
	return nil
}
