//go:build cluster

package clustertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"sigs.k8s.io/yaml"

	"github.com/credmatrix/credmatrix/deploy/internal/svcproc"
	"github.com/credmatrix/credmatrix/deploy/internal/testissuer"
	"github.com/credmatrix/credmatrix/deploy/internal/testpki"
	"github.com/credmatrix/credmatrix/platform/auditappend"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/pgtest"
	"github.com/credmatrix/credmatrix/services/broker/awssts/awstest"
)

const (
	operatorID       = "spiffe://credmatrix.test/operator"
	keyguardAudience = "credmatrix-keyguard"
	region           = "eu-west-1"
	accounts         = 10 // acct-0 … acct-9, 10 roles each: 100 roles
	rolesPerAccount  = 10
	// IAM accepts this many calls a second per account after a burst of
	// as many (AWS does not publish IAM's rates; these are of the order
	// seen from IAM's mutating APIs).
	iamRate, iamBurst = 20, 20
)

// accountID is the id of acct-a.
func accountID(a int) string { return fmt.Sprintf("%012d", 100000000000+a) }

// env is what every stack shares: binaries, PKI, PostgreSQL, local-kms,
// the OIDC issuer and the in-process STS/IAM endpoint.
type env struct {
	t      *testing.T
	dir    string
	bin    string
	ca     *testpki.CA
	opCert string
	opKey  string
	pg     *pgtest.Cluster
	issuer *testissuer.Issuer
	aws    *awstest.Endpoint
	awsURL string
	kmsURL string
	kmsPID int
	hmac   string // audit HMAC key file
	mac    string // awskms MAC key file
	policy string // broker policy file
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir()}
	if _, err := os.Stat("/usr/bin/aws"); err != nil {
		pgtest.MissingDependency(t, "AWS CLI v2 (/usr/bin/aws)", "install it (scripts/setup.sh does)")
	}
	kms := localKMSBinary(t)
	e.pg = pgtest.Start(t)
	e.bin = svcproc.Build(t, "./services/audit/cmd/audit", "./services/broker/cmd/broker", "./services/keyguard/cmd/keyguard")
	e.ca = testpki.New(t, "credmatrix cluster test CA")
	e.opCert, e.opKey = e.ca.Issue("operator", operatorID)
	e.issuer = testissuer.Start(t)
	e.aws = awstest.New(awstest.Options{IAMRate: iamRate, IAMBurst: iamBurst})
	srv := httptest.NewServer(e.aws)
	t.Cleanup(srv.Close)
	e.awsURL = srv.URL
	e.hmac = writeFile(t, filepath.Join(e.dir, "keys", "audit-hmac"), randomHex(32)+"\n")
	e.mac = writeFile(t, filepath.Join(e.dir, "keys", "awskms-mac"), randomHex(32)+"\n")
	e.policy = filepath.Join(e.dir, "policy.yaml")
	e.writePolicy(false)
	e.startLocalKMS(t, kms)
	return e
}

func localKMSBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CREDMATRIX_LOCAL_KMS"); p != "" {
		return p
	}
	p := filepath.Join(svcproc.RepoRoot(t), "bin", "local-kms")
	if _, err := os.Stat(p); err != nil {
		pgtest.MissingDependency(t, "local-kms", "run `make tools` (builds bin/local-kms) or set CREDMATRIX_LOCAL_KMS")
	}
	return p
}

// startLocalKMS runs local-kms and creates the key ring's KMS key with the
// AWS CLI.
func (e *env) startLocalKMS(t *testing.T, bin string) {
	port := svcproc.FreePort(t)
	cmd := exec.Command(bin)
	cmd.Env = append(svcproc.CleanEnv(), "PORT="+port, "KMS_REGION="+region, "KMS_ACCOUNT_ID=111122223333", "KMS_DATA_PATH="+t.TempDir())
	logf, err := os.Create(filepath.Join(e.dir, "local-kms.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	e.kmsPID = cmd.Process.Pid
	e.kmsURL = "http://127.0.0.1:" + port
	awsCLI := func(args ...string) string {
		deadline := time.Now().Add(30 * time.Second)
		for {
			c := exec.Command("/usr/bin/aws", append([]string{"--endpoint-url", e.kmsURL, "--region", region, "--output", "text"}, args...)...)
			c.Env = append(svcproc.CleanEnv(), "AWS_ACCESS_KEY_ID=AKIDLOCALKMS", "AWS_SECRET_ACCESS_KEY=local-kms-secret",
				"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null")
			out, err := c.CombinedOutput()
			if err == nil {
				return strings.TrimSpace(string(out))
			}
			if time.Now().After(deadline) {
				t.Fatalf("aws %v: %v\n%s", args, err, out)
			}
			time.Sleep(200 * time.Millisecond) // local-kms still starting
		}
	}
	keyID := awsCLI("kms", "create-key", "--description", "credmatrix cluster test", "--query", "KeyMetadata.KeyId")
	awsCLI("kms", "create-alias", "--alias-name", "alias/confidential", "--target-key-id", keyID)
}

// writePolicy writes the broker's trust policy: 10 accounts of 10 roles,
// acme's repositories may assume them; withReloadProbe adds a rule for
// the reload probe's repository owner.
func (e *env) writePolicy(withReloadProbe bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\nissuers:\n  - name: ci\n    url: %s\n    audiences: [credmatrix]\naccounts:\n", e.issuer.URL())
	var roles, accts []string
	for a := range accounts {
		fmt.Fprintf(&b, "  - id: \"%s\"\n    name: acct-%d\n    ou: /root/acct-%d\n    region: %s\n", accountID(a), a, a, region)
		accts = append(accts, fmt.Sprintf("acct-%d", a))
	}
	b.WriteString("roles:\n")
	for a := range accounts {
		for r := range rolesPerAccount {
			fmt.Fprintf(&b, "  - name: role-%d\n    account: acct-%d\n    max_duration: 1h\n", r, a)
		}
	}
	for r := range rolesPerAccount {
		roles = append(roles, fmt.Sprintf("role-%d", r))
	}
	fmt.Fprintf(&b, "rules:\n  - name: acme\n    issuer: ci\n    roles: [%s]\n    accounts: [%s]\n    claims:\n      repository_owner: acme\n",
		strings.Join(roles, ", "), strings.Join(accts, ", "))
	if withReloadProbe {
		b.WriteString("  - name: reload-probe\n    issuer: ci\n    roles: [role-0]\n    accounts: [acct-0]\n    claims:\n      repository_owner: reload-probe\n")
	}
	tmp := e.policy + ".tmp"
	writeFile(e.t, tmp, b.String())
	if err := os.Rename(tmp, e.policy); err != nil {
		e.t.Fatal(err)
	}
}

// dial connects to addrs (one or a list) as the operator.
func (e *env) dial(t *testing.T, addrs []string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpcclient.Dial(grpcclient.Config{Target: strings.Join(addrs, ","), CAFile: e.ca.File, CertFile: e.opCert, KeyFile: e.opKey, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// proc is one service process, restartable with the same configuration.
type proc struct {
	name, kind string
	bin, cfg   string
	environ    []string
	addr       string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	logf   *os.File
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(p.bin, "--config="+p.cfg)
	cmd.Env = p.environ
	cmd.Stdout, cmd.Stderr = p.logf, p.logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	p.cmd, p.exited = cmd, exited
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// stop ends the process gracefully (SIGTERM, SIGKILL after 15 s).
func (p *proc) stop() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// tail is the end of the process's log.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.logf.Name())
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// waitServing waits until the process answers health checks (for service
// svc; "" for the whole server) with SERVING, failing the test if it
// exits or a minute passes.
func (e *env) waitServing(t *testing.T, p *proc, svc string) {
	t.Helper()
	conn := e.dial(t, []string{p.addr})
	client := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		res, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		cancel()
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			conn.Close()
			return
		}
		p.mu.Lock()
		exited := p.exited
		p.mu.Unlock()
		select {
		case <-exited:
			t.Fatalf("%s exited before serving; its log:\n%s", p.name, p.tail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not serving %q within a minute (%v); its log:\n%s", p.name, svc, err, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stackOpts shapes one stack.
type stackOpts struct {
	name              string
	audits            int    // audit replicas (postgres), or 0 for one on SQLite
	brokers, keyguard int    // replicas
	state             string // "postgres" or "sqlite" for broker and keyguard
}

// stack is a running set of services.
type stack struct {
	e                          *env
	audits, brokers, keyguards []*proc
}

func (e *env) startStack(t *testing.T, o stackOpts) *stack {
	t.Helper()
	s := &stack{e: e}
	dir := filepath.Join(e.dir, o.name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	dsn := map[string]string{}
	if o.audits > 0 {
		dsn["audit"] = e.pg.NewDatabase(t)
	}
	if o.state == "postgres" {
		dsn["broker"], dsn["keyguard"] = e.pg.NewDatabase(t), e.pg.NewDatabase(t)
	}
	newProc := func(kind string, i int, cfg map[string]any, environ []string) *proc {
		name := fmt.Sprintf("%s-%d", kind, i+1)
		cert, key := e.ca.Issue(o.name+"-"+name, "spiffe://credmatrix.test/"+kind, "localhost", "127.0.0.1")
		addr := "127.0.0.1:" + svcproc.FreePort(t)
		cfg["server"] = map[string]any{"listen_addr": addr, "tls": map[string]any{"cert_file": cert, "key_file": key, "client_ca_file": e.ca.File}}
		cfg["log_level"] = "warn"
		if kind != "audit" {
			cfg["audit"] = map[string]any{"target": strings.Join(addrs(s.audits), ","), "ca_file": e.ca.File, "cert_file": cert, "key_file": key, "server_name": "localhost"}
			cfg["audit_hmac_key_file"] = e.hmac
		}
		b, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		p := &proc{name: name, kind: kind, bin: filepath.Join(e.bin, kind), cfg: writeFile(t, filepath.Join(dir, name+".yaml"), string(b)),
			environ: environ, addr: addr, logf: logf}
		t.Cleanup(func() {
			p.stop()
			if t.Failed() {
				t.Logf("%s/%s log (tail):\n%s", o.name, name, p.tail())
			}
			logf.Close()
		})
		return p
	}

	// Audit: one SQLite replica, or replicas on PostgreSQL sharing one
	// signing key (the first creates it).
	checkpointKey := filepath.Join(dir, "checkpoint.key")
	n := max(o.audits, 1)
	for i := range n {
		cfg := map[string]any{
			"append_principals": []string{"spiffe://credmatrix.test/broker", "spiffe://credmatrix.test/keyguard"},
			"read_principals":   []string{operatorID},
			"checkpoint": map[string]any{"key_file": checkpointKey, "generate_key": i == 0,
				"kept_file": filepath.Join(dir, fmt.Sprintf("audit-%d.kept", i+1))},
		}
		if o.audits > 0 {
			cfg["store"], cfg["postgres"] = "postgres", map[string]any{"dsn": dsn["audit"]}
		} else {
			cfg["store"], cfg["db_path"] = "sqlite", filepath.Join(dir, "audit.db")
		}
		p := newProc("audit", i, cfg, svcproc.CleanEnv())
		p.start(t)
		e.waitServing(t, p, "")
		s.audits = append(s.audits, p)
	}

	awsEnv := svcproc.CleanEnv("AWS_ACCESS_KEY_ID=AKIDCLUSTERTEST", "AWS_SECRET_ACCESS_KEY=cluster-test-secret", "AWS_REGION=us-east-1",
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_EC2_METADATA_DISABLED=true")
	state := func(kind string) map[string]any {
		if o.state == "postgres" {
			return map[string]any{"driver": "postgres", "postgres_dsn": dsn[kind]}
		}
		return map[string]any{"driver": "sqlite", "sqlite_path": filepath.Join(dir, kind+"-state.db")}
	}
	for i := range o.brokers {
		p := newProc("broker", i, map[string]any{
			"policy_file": e.policy, "policy_reload_interval": "0s",
			"admin_principals": []string{operatorID},
			"state":            state("broker"),
			"provider":         "aws",
			"aws":              map[string]any{"mode": "assume-role", "revoker_role_name": "credmatrix-revoker", "sts_endpoint": e.awsURL, "iam_endpoint": e.awsURL},
		}, awsEnv)
		s.brokers = append(s.brokers, p)
	}
	keyring := writeFile(t, filepath.Join(dir, "keyring.yaml"), fmt.Sprintf(`rings:
  - {data_class: confidential, region: %s, kms_key: alias/confidential}
grants:
  - {id: load, principal: "%s#%s", data_class: confidential, operations: [encrypt, decrypt], regions: [%s]}
`, region, e.issuer.URL(), testissuer.Subject, region))
	for i := range o.keyguard {
		st := state("keyguard")
		p := newProc("keyguard", i, map[string]any{
			"keyring_file": keyring, "state": st, "admins": []string{operatorID},
			"backend": "awskms", "awskms": map[string]any{"mac_key_file": e.mac, "endpoint": e.kmsURL},
			"oidc": map[string]any{"issuers": []string{e.issuer.URL()}, "audience": keyguardAudience},
		}, awsEnv)
		s.keyguards = append(s.keyguards, p)
	}
	// Start replicas one at a time the first time (migrations, the first
	// key version), then they are peers.
	for _, p := range append(append([]*proc{}, s.brokers...), s.keyguards...) {
		p.start(t)
		e.waitServing(t, p, "")
	}
	return s
}

func addrs(ps []*proc) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.addr)
	}
	return out
}

// sequencer returns the audit replica that appends now.
func (s *stack) sequencer(t *testing.T) (seq, follower *proc) {
	t.Helper()
	for _, p := range s.audits {
		conn := s.e.dial(t, []string{p.addr})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: auditappend.AppendHealthService})
		cancel()
		conn.Close()
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			seq = p
		} else {
			follower = p
		}
	}
	if seq == nil {
		t.Fatal("no audit replica is the sequencer")
	}
	return seq, follower
}

func writeFile(t testing.TB, path, body string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// cpuSeconds is the CPU time (user and system) a process has used; with
// children, also that of its children, living or waited for (PostgreSQL's
// postmaster and its backends).
func cpuSeconds(pid int, children bool) float64 {
	fields := func(pid int) []string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return nil
		}
		s := string(b)
		return strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	}
	ticks := func(f []string, idx ...int) float64 {
		var sum float64
		for _, i := range idx {
			if i < len(f) {
				v, _ := strconv.ParseFloat(f[i], 64)
				sum += v
			}
		}
		return sum
	}
	// Fields after the command: state(0) ppid(1) … utime(11) stime(12)
	// cutime(13) cstime(14); clock ticks are 100 a second on Linux.
	f := fields(pid)
	if !children {
		return ticks(f, 11, 12) / 100
	}
	total := ticks(f, 11, 12, 13, 14)
	entries, _ := os.ReadDir("/proc")
	for _, d := range entries {
		child, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cf := fields(child)
		if len(cf) > 1 && cf[1] == strconv.Itoa(pid) {
			total += ticks(cf, 11, 12)
		}
	}
	return total / 100
}

// postmasterPID finds the PostgreSQL server listening on port.
func postmasterPID(t *testing.T, port int) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "postgres" {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-p" && args[i+1] == strconv.Itoa(port) {
				return pid
			}
		}
	}
	t.Fatalf("no postgres process listens on port %d", port)
	return 0
}
