// Package procstack runs the local stack as separate processes of the real
// binaries (audit, broker, keyguard, as `make build` makes them) with the
// configuration credmatrix-dev uses in process: the same generated PKI,
// trust policy, key rings, keys and development OIDC issuer (which runs in
// the calling process). `make bench` and `make soak` measure it; nothing
// in it is for production.
package procstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/platform/devpki"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	auditserver "github.com/credmatrix/credmatrix/services/audit/server"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// Services are the stack's services, in start order.
var Services = []string{"audit", "broker", "keyguard"}

// Config configures a stack of processes.
type Config struct {
	// BinDir holds the audit, broker and keyguard binaries.
	BinDir string
	// StateDir holds certificates, keys, configuration files, databases
	// and each service's log (<name>.log). Created when missing.
	StateDir string
	// LogLevel of the services ("warn" if empty).
	LogLevel string
	// StartTimeout bounds the wait for each service to report SERVING
	// (one minute if zero): a busy machine starts slowly, a broken
	// configuration never starts.
	StartTimeout time.Duration
	// Adjust, if set, changes the configurations before they are written.
	Adjust func(*devstack.Configs)
	// Policy is the broker's trust policy YAML (the development policy if
	// empty).
	Policy string
	// Zones, when set, run one more audit process per residency zone
	// ("audit-<zone>", its own database, checkpoint key and origin); the
	// broker and keyguard send each zone's events to it (see
	// devstack.Config.Zones).
	Zones []devstack.Zone
}

// Stack is the running stack.
type Stack struct {
	// Procs are the services' processes by name.
	Procs map[string]*Proc
	// Configs are the configurations the processes run with.
	Configs devstack.Configs
	// ZoneAudits are the configurations of the zones' audit processes.
	ZoneAudits map[string]auditserver.Config
	// PKI is the development certificate bundle (clients dial as "cli",
	// "broker" or "keyguard").
	PKI *devpki.Bundle
	// Issuer is the development OIDC issuer the broker and keyguard trust.
	Issuer *devissuer.Issuer

	dir string
}

// Proc is one running service.
type Proc struct {
	Name string
	// Addr is the service (mTLS) port; MetricsURL its Prometheus endpoint.
	Addr, MetricsURL string
	// LogFile holds what the process wrote.
	LogFile string

	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	err    error // of Wait, once exited
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// ExitErr is the process's exit status once it has exited (nil before,
// and after a clean exit).
func (p *Proc) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Start prepares the state directory and starts audit, then the broker and
// keyguard, each on free loopback ports, and returns once every service
// reports SERVING. A failed start stops what it started and returns the
// failing service's log tail.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	if cfg.BinDir == "" || cfg.StateDir == "" {
		return nil, errors.New("procstack: BinDir and StateDir are required")
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "warn"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = time.Minute
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	bin, err := filepath.Abs(cfg.BinDir)
	if err != nil {
		return nil, err
	}
	for _, name := range Services {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			return nil, fmt.Errorf("procstack: binary %s: %w (make build puts it in bin/)", name, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("procstack: state dir: %w", err)
	}
	s := &Stack{Procs: map[string]*Proc{}, dir: dir}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.PKI, err = devpki.Generate(filepath.Join(dir, "pki"), "audit", "broker", "keyguard", "cli"); err != nil {
		return nil, fmt.Errorf("procstack: dev PKI: %w", err)
	}
	if s.Issuer, err = devissuer.New(); err != nil {
		return nil, err
	}
	issuerURL, err := s.Issuer.Start("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if err := devstack.PrepareFiles(dir, cfg.Policy, issuerURL); err != nil {
		return nil, err
	}
	ports, err := freePorts()
	if err != nil {
		return nil, err
	}
	s.Configs = devstack.NewConfigs(dir, s.PKI, ports, issuerURL, ports.Audit)
	s.Configs.Audit.LogLevel, s.Configs.Broker.LogLevel, s.Configs.Keyguard.LogLevel = cfg.LogLevel, cfg.LogLevel, cfg.LogLevel
	s.ZoneAudits = map[string]auditserver.Config{}
	for _, z := range cfg.Zones {
		zp, err := freePorts()
		if err != nil {
			return nil, err
		}
		zc := devstack.ZoneAuditConfig(s.Configs.Audit, dir, z.Name)
		zc.Server.ListenAddr, zc.Metrics.ListenAddr = zp.Audit, zp.AuditMetrics
		s.ZoneAudits[z.Name] = zc
		s.Configs.Broker.AuditZones = append(s.Configs.Broker.AuditZones, z.Name+"="+zp.Audit)
		for _, r := range z.Regions {
			s.Configs.Keyguard.ResidencyZones = append(s.Configs.Keyguard.ResidencyZones, z.Name+"="+r)
		}
	}
	s.Configs.Keyguard.AuditZones = s.Configs.Broker.AuditZones
	if cfg.Adjust != nil {
		cfg.Adjust(&s.Configs)
	}
	files := map[string]string{}
	configs := map[string][2]any{
		"audit":    {s.Configs.Audit, defaultsOf("audit")},
		"broker":   {s.Configs.Broker, defaultsOf("broker")},
		"keyguard": {s.Configs.Keyguard, defaultsOf("keyguard")},
	}
	addrs := map[string][2]string{
		"audit":    {s.Configs.Audit.Server.ListenAddr, s.Configs.Audit.Metrics.ListenAddr},
		"broker":   {s.Configs.Broker.Server.ListenAddr, s.Configs.Broker.Metrics.ListenAddr},
		"keyguard": {s.Configs.Keyguard.Server.ListenAddr, s.Configs.Keyguard.Metrics.ListenAddr},
	}
	binaries := map[string]string{"audit": "audit", "broker": "broker", "keyguard": "keyguard"}
	first := []string{"audit"}
	for z, zc := range s.ZoneAudits {
		name := "audit-" + z
		configs[name], addrs[name], binaries[name] = [2]any{zc, defaultsOf("audit")}, [2]string{zc.Server.ListenAddr, zc.Metrics.ListenAddr}, "audit"
		first = append(first, name)
	}
	for name, pair := range configs {
		b, err := MarshalConfig(pair[0], pair[1])
		if err != nil {
			return nil, fmt.Errorf("procstack: %s config: %w", name, err)
		}
		files[name] = filepath.Join(dir, name+"-config.yaml") // keyguard.yaml is its key rings
		if err := os.WriteFile(files[name], b, 0o600); err != nil {
			return nil, err
		}
	}
	// audit first (every zone's too): the others refuse to record
	// anything without it.
	for _, group := range [][]string{first, {"broker", "keyguard"}} {
		for _, name := range group {
			p, err := s.start(filepath.Join(bin, binaries[name]), name, files[name], addrs[name])
			if err != nil {
				return nil, err
			}
			s.Procs[name] = p
		}
		for _, name := range group {
			if err := s.waitServing(ctx, s.Procs[name], cfg.StartTimeout); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// Dir is the state directory.
func (s *Stack) Dir() string { return s.dir }

// Dial connects to a service's mTLS port with the development certificate
// of identity ("cli" for an operator, "broker" or "keyguard" for the
// producers audit accepts appends from).
func (s *Stack) Dial(service, identity string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	p, ok := s.Procs[service]
	if !ok {
		return nil, fmt.Errorf("procstack: no service %q", service)
	}
	return grpcclient.Dial(s.PKI.Client(identity, p.Addr), opts...)
}

// ZoneAuditPublicKeyFile is the verifier key of a zone's audit log.
func (s *Stack) ZoneAuditPublicKeyFile(zone string) string {
	return s.ZoneAudits[zone].Checkpoint.KeyFile + ".pub"
}

// AuditPublicKeyFile is the verifier key of the audit log's checkpoints.
func (s *Stack) AuditPublicKeyFile() string { return s.Configs.Audit.Checkpoint.KeyFile + ".pub" }

// Close stops the services (SIGTERM, then SIGKILL after 15 s), the
// broker and keyguard before audit, and the issuer. It reports a service
// that had exited before it was asked to, or did not exit cleanly.
func (s *Stack) Close() error {
	if s == nil {
		return nil
	}
	var errs []error
	names := []string{"keyguard", "broker", "audit"}
	for z := range s.ZoneAudits {
		names = append(names, "audit-"+z)
	}
	for _, name := range names {
		p := s.Procs[name]
		if p == nil {
			continue
		}
		select {
		case <-p.exited:
			errs = append(errs, fmt.Errorf("%s exited early: %v\n%s", name, p.ExitErr(), Tail(p.LogFile, 20)))
			continue
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
			if err := p.ExitErr(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %v\n%s", name, err, Tail(p.LogFile, 20)))
			}
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
			errs = append(errs, fmt.Errorf("%s did not stop within 15s of SIGTERM (killed)", name))
		}
	}
	if s.Issuer != nil {
		_ = s.Issuer.Close()
	}
	return errors.Join(errs...)
}

// start runs one binary with its configuration file; its output goes to
// <state>/<name>.log.
func (s *Stack) start(path, name, cfgFile string, addrs [2]string) (*Proc, error) {
	logFile := filepath.Join(s.dir, name+".log")
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child holds its own copy
	cmd := exec.Command(path, "--config="+cfgFile)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("procstack: start %s: %w", name, err)
	}
	p := &Proc{Name: name, Addr: addrs[0], LogFile: logFile, cmd: cmd, exited: make(chan struct{})}
	if addrs[1] != "" {
		p.MetricsURL = "http://" + addrs[1] + "/metrics"
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.exited)
	}()
	return p, nil
}

// waitServing asks p's health service until it answers SERVING; it fails
// when p exits first or timeout passes, with p's log tail.
func (s *Stack) waitServing(ctx context.Context, p *Proc, timeout time.Duration) error {
	conn, err := s.Dial(p.Name, "cli")
	if err != nil {
		return err
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := client.Check(cctx, &healthpb.HealthCheckRequest{})
		ccancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		last = err
		select {
		case <-p.exited:
			return fmt.Errorf("procstack: %s exited before it was SERVING (%v); its log:\n%s", p.Name, p.ExitErr(), Tail(p.LogFile, 40))
		case <-ctx.Done():
			return fmt.Errorf("procstack: %s not SERVING within %s (last health check: %v); its log:\n%s", p.Name, timeout, last, Tail(p.LogFile, 40))
		case <-tick.C:
		}
	}
}

// Tail returns the last n lines of a file (for error messages).
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cleanEnv is this process's environment without CREDMATRIX_*, OTEL_* and
// AWS_* variables: the services read only their configuration files.
func cleanEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "CREDMATRIX_") && !strings.HasPrefix(e, "OTEL_") && !strings.HasPrefix(e, "AWS_") {
			env = append(env, e)
		}
	}
	return env
}

// freePorts picks the services' listen addresses: loopback ports that were
// free a moment ago (all held open together, so they differ). Public
// listeners stay off: callers use the mTLS ports, as the benchmarks of the
// issue's table did.
func freePorts() (devstack.Ports, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	next := func() (string, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		ls = append(ls, l)
		return l.Addr().String(), nil
	}
	var p devstack.Ports
	for _, f := range []*string{&p.Audit, &p.Broker, &p.Keyguard, &p.AuditMetrics, &p.BrokerMetrics, &p.KeyguardMetrics} {
		a, err := next()
		if err != nil {
			return p, fmt.Errorf("procstack: pick a free port: %w", err)
		}
		*f = a
	}
	return p, nil
}
