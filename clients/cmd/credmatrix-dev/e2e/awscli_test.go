package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/platform/benchload"
	"github.com/credmatrix/credmatrix/platform/pgtest"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// procEnv is a clean environment for child processes: the stack's
// settings, a private HOME, cache and AWS config, and nothing else of ours.
func procEnv(stack *devstack.Stack, extra ...string) []string {
	env := []string{"PATH=" + os.Getenv("PATH")}
	env = append(env, stack.Env()...)
	return append(env, extra...)
}

func issuances(t *testing.T, stack *devstack.Stack) []string {
	t.Helper()
	auditAddr, _, _ := stack.Addrs()
	resp, err := auditv1.NewAuditServiceClient(dialAs(t, stack, "cli", auditAddr)).Query(context.Background(), &auditv1.QueryRequest{
		Kinds: []auditv1.Kind{auditv1.Kind_KIND_SESSION_ISSUE}, Decision: auditv1.Decision_DECISION_ALLOW,
	})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, ev := range resp.GetEvents() {
		keys = append(keys, ev.GetSession().GetAccessKeyId())
	}
	return keys
}

// TestAWSCLICredentialProcess has the real AWS CLI v2 load credentials
// through a profile written by `credmatrix creds --output aws-profile`, and
// checks the cache: a second call and a burst of concurrent calls make no
// new issuance.
func TestAWSCLICredentialProcess(t *testing.T) {
	const awsCLI = "/usr/bin/aws"
	if _, err := os.Stat(awsCLI); err != nil {
		pgtest.MissingDependency(t, "AWS CLI v2 at /usr/bin/aws", "apt-get install awscli (make setup)")
	}
	bin := credmatrixBinary(t)
	stack, _, _ := startStack(t)
	home := t.TempDir()
	awsConfig := filepath.Join(home, ".aws", "config")
	token, err := stack.Issuer().Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "7", "credmatrix"), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	env := procEnv(stack, "HOME="+home, "AWS_CONFIG_FILE="+awsConfig, "AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(home, "credentials"),
		"CREDMATRIX_OIDC_TOKEN="+token, "CREDMATRIX_CACHE_DIR="+filepath.Join(home, "cache"))
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
		}
		if strings.Contains(stderr.String(), token) {
			t.Fatalf("%s wrote the OIDC token to stderr", name)
		}
		return stdout.String()
	}

	run(bin, "creds", "--target", "deploy@sandbox=ci-deploy", "--output", "aws-profile", "--token-source", "env")
	cfg, _ := os.ReadFile(awsConfig)
	if !strings.Contains(string(cfg), "[profile ci-deploy]") || !strings.Contains(string(cfg), "credential_process = "+bin) ||
		strings.Contains(string(cfg), token) || strings.Contains(strings.ToLower(string(cfg)), "aws_secret_access_key") {
		t.Fatalf("AWS config:\n%s", cfg)
	}

	export := func() credentialProcess {
		t.Helper()
		var c credentialProcess
		out := run(awsCLI, "configure", "export-credentials", "--profile", "ci-deploy", "--format", "process")
		if err := json.Unmarshal([]byte(out), &c); err != nil {
			t.Fatalf("aws configure export-credentials: %v\n%s", err, out)
		}
		return c
	}
	first := export()
	if !strings.HasPrefix(first.AccessKeyID, "ASIA") || first.SecretAccessKey == "" || first.SessionToken == "" {
		t.Fatalf("the AWS CLI loaded %+v", first.AccessKeyID)
	}
	if got := issuances(t, stack); len(got) != 1 || got[0] != first.AccessKeyID {
		t.Fatalf("issuances after the first call: %v, want [%s]", got, first.AccessKeyID)
	}
	if second := export(); second.AccessKeyID != first.AccessKeyID {
		t.Fatalf("second call got %s, want the cached %s", second.AccessKeyID, first.AccessKeyID)
	}
	if got := issuances(t, stack); len(got) != 1 {
		t.Fatalf("the second call issued again: %v", got)
	}

	// A burst of concurrent credential_process calls on an empty cache
	// (another role, so another key) makes one issuance.
	var wg sync.WaitGroup
	keys := make([]string, 8)
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(bin, "creds", "--role", "deploy", "--account", "sandbox", "--region", "eu-central-1", "--output", "credential-process", "--token-source", "env")
			cmd.Env = env
			out, err := cmd.Output()
			if err != nil {
				t.Error(err)
				return
			}
			var c credentialProcess
			if err := json.Unmarshal(out, &c); err != nil {
				t.Error(err)
			}
			keys[i] = c.AccessKeyID
		}()
	}
	wg.Wait()
	for _, k := range keys {
		if k != keys[0] || k == "" {
			t.Fatalf("concurrent calls got different sessions: %v", keys)
		}
	}
	if got := issuances(t, stack); len(got) != 2 {
		t.Fatalf("issuances after the burst: %d, want 2 (one per cache key)", len(got))
	}

	// serve-credentials: the AWS CLI, run as the wrapped command, finds the
	// session through AWS_CONTAINER_CREDENTIALS_FULL_URI (no profile, no
	// static keys anywhere).
	out := run(bin, "serve-credentials", "--role", "deploy", "--account", "sandbox", "--token-source", "env", "--",
		awsCLI, "configure", "export-credentials", "--format", "process")
	var served credentialProcess
	if err := json.Unmarshal([]byte(out), &served); err != nil {
		t.Fatalf("serve-credentials | aws: %v\n%s", err, out)
	}
	got := issuances(t, stack)
	if len(got) != 3 || served.AccessKeyID != got[2] {
		t.Fatalf("the AWS CLI got %s through serve-credentials; issuances %v", served.AccessKeyID, got)
	}
}

// BenchmarkCredentialProcess measures a whole `credmatrix creds --output
// credential-process` process, as the AWS CLI runs it: cached (the common
// case) and uncached (a fresh cache each time, so one issuance per run).
// The CLI is built as released (its build tags); CREDMATRIX_BENCH_CLI=FILE
// measures another build of it instead (dist/credmatrix-linux-amd64, an
// older one).
//
//	go test -run '^$' -bench CredentialProcess ./clients/cmd/credmatrix-dev/e2e
func BenchmarkCredentialProcess(b *testing.B) {
	bin := credmatrixBinary(b)
	if other := os.Getenv("CREDMATRIX_BENCH_CLI"); other != "" {
		bin = other
	}
	dir := b.TempDir()
	stack, err := devstack.Start(context.Background(), devstack.Config{StateDir: dir, Ports: devstack.EphemeralPorts()})
	if err != nil {
		b.Fatal(err)
	}
	defer stack.Close()
	token, _ := stack.Issuer().Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "7", "credmatrix"), time.Hour)
	for _, cached := range []bool{true, false} {
		name := "uncached"
		if cached {
			name = "cached"
		}
		b.Run(name, func(b *testing.B) {
			cacheDir := filepath.Join(b.TempDir(), "cache")
			var lat, cpu []time.Duration
			for i := 0; b.Loop(); i++ {
				cd := cacheDir
				if !cached {
					cd = filepath.Join(cacheDir, strings.Repeat("x", 1+i%50), time.Now().Format("150405.000000000"))
				}
				cmd := exec.Command(bin, "creds", "--role", "deploy", "--account", "sandbox", "--output", "credential-process", "--token-source", "env")
				cmd.Env = procEnv(stack, "CREDMATRIX_OIDC_TOKEN="+token, "CREDMATRIX_CACHE_DIR="+cd)
				start := time.Now()
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%v\n%s", err, out)
				}
				lat = append(lat, time.Since(start))
				cpu = append(cpu, cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime())
			}
			reportLatency(b, lat)
			// CPU time of the process (user + system): what start-up
			// costs, less sensitive than wall time to a busy machine.
			slices.Sort(cpu)
			b.ReportMetric(benchload.Percentile(cpu, 0.50), "p50-cpu-ms")
		})
	}
}
